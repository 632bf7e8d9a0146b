"""The OpenAPI document against the real API: complete, generated from the request schemas, fuzzed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import requests

from api import create_app
from api.http.schemas import EvaluationCreate, EvaluationFilter, ModelUpload
from api.routes.docs import SWAGGER_UI
from core.settings import Settings
from tests.stack import ROOT

pytestmark = pytest.mark.integration
# Longer hunts: SHIFTSCORE_FUZZ_SECONDS=600 SHIFTSCORE_FUZZ_CHECKS=all pytest -k schemathesis
FUZZ_BUDGET_S = int(os.environ.get("SHIFTSCORE_FUZZ_SECONDS", "60"))
# Every response must be no 5xx, and a declared status with the declared type and shape.
FUZZ_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
               "response_schema_conformance")


@pytest.fixture(scope="module")
def document(pg_stack) -> dict:
    response = requests.get(pg_stack.url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    return response.json()


@pytest.fixture(scope="module")
def fuzz_token(pg_stack) -> str:
    return pg_stack.token("fuzzer")


def _local_rules() -> list[tuple[str, str]]:
    """(path, method) of every route of an app built here, in OpenAPI's path syntax."""
    app = create_app(Settings.from_env({"SHIFTSCORE_HOME": "/tmp/shiftscore-openapi-test"}))
    return [
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules() if not rule.endpoint.endswith("static")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    ]


def test_every_route_is_documented(document):
    rules = _local_rules()
    assert any(path.startswith("/v1/evaluations") for path, _ in rules)
    for path, method in rules:
        op = document["paths"].get(path, {}).get(method)
        if path.startswith("/v1"):
            assert op is not None, f"{method.upper()} {path} is missing from /openapi.json"
        if op is not None:
            assert not op.get("x-undocumented"), f"{method.upper()} {path} has no @operation(...) decorator"
            assert op["summary"] and op["responses"]


def test_v1_routes_need_a_bearer_token_and_answer_problems(document):
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        **document["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    for path, item in document["paths"].items():
        for method, op in item.items():
            errors = {s: r for s, r in op["responses"].items() if s.startswith(("4", "5"))}
            if path.startswith("/v1"):
                for status, response in errors.items():
                    if status == "414":  # answered by gunicorn, before the app
                        continue
                    assert list(response["content"]) == ["application/problem+json"], (path, method, status)
                assert op["security"] == [{"bearerAuth": []}], (path, method)
                assert "401" in errors, (path, method)
                if "{" in path:
                    assert "404" in errors, (path, method)


def test_request_schemas_are_the_validating_classes(document):
    schemas = document["components"]["schemas"]
    body = document["paths"]["/v1/evaluations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EvaluationCreate"}
    generated = EvaluationCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    assert schemas["EvaluationCreate"]["properties"] == generated["properties"]
    assert schemas["EvaluationCreate"]["required"] == generated["required"]
    # shifts is optional (another axis may stand alone): a range or a list, or null.
    shifts = schemas["EvaluationCreate"]["properties"]["shifts"]["anyOf"]
    assert {"type": "null"} in shifts
    assert {"$ref": "#/components/schemas/RangeShifts"} in next(s["oneOf"] for s in shifts if "oneOf" in s)
    query = {p["name"]: p for p in document["paths"]["/v1/evaluations"]["get"]["parameters"]}
    assert set(query) == set(EvaluationFilter.model_fields)
    assert query["limit"]["schema"]["maximum"] == EvaluationFilter.model_fields["limit"].metadata[1].le
    form = document["paths"]["/v1/models"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == set(ModelUpload.model_fields) | {"file"}
    assert form["properties"]["file"] == {"type": "string", "format": "binary"}
    assert set(form["required"]) == {"file", "name", "format", "input"}
    assert form["properties"]["format"]["enum"] == ["torchscript", "exported", "state_dict", "onnx"]


def test_docs_page_renders_offline(pg_stack, document):
    # What the page runs in a browser is tested in test_docs_page.py; here: every asset is ours.
    page = requests.get(pg_stack.url + "/docs", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "style-src 'self'"):
        assert directive in policy, policy  # the browser itself refuses any other origin
    assert "<script>" not in page.text and "<style" not in page.text
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert {"docs/swagger-ui/swagger-ui-bundle.js", "docs/swagger-ui/swagger-ui.css", "docs/assets/docs-init.js",
            "docs/assets/docs.css", "openapi.json", "docs/metrics"} <= set(assets)
    for asset in assets:
        assert not re.match(r"^(https?:)?//", asset), f"/docs loads {asset} from outside"
        response = requests.get(f"{pg_stack.url}/{asset}", timeout=10)
        assert response.status_code == 200, asset
        if asset.startswith("docs/swagger-ui/"):
            # Swagger UI as the pinned package ships it (its source mentions URLs it never loads here).
            assert response.content == (SWAGGER_UI / asset.rsplit("/", 1)[1]).read_bytes(), asset
        else:
            assert "http://" not in response.text and "https://" not in response.text, asset
    init = requests.get(pg_stack.url + "/docs/assets/docs-init.js", timeout=10).text
    assert "validatorUrl: null" in init  # Swagger UI's default would fetch a badge from swagger.io
    licence = requests.get(pg_stack.url + "/docs/swagger-ui/LICENSE", timeout=10)
    assert licence.status_code == 200 and "Apache License" in licence.text
    assert "/v1/evaluations" in document["paths"]


def test_schemathesis_finds_no_server_error(pg_stack, fuzz_token, tmp_path):
    # The CLI, not the pytest plugin: its --max-time bounds the run, and pytest 9 breaks the plugin's subtests.
    # One worker: with two threads, hypothesis' lambda-source cache parses ASTs concurrently and
    # CPython 3.11 now and then raises "AST constructor recursion depth mismatch" inside schemathesis.
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", pg_stack.url + "/openapi.json",
        "--header", f"Authorization: Bearer {fuzz_token}",
        "--checks", os.environ.get("SHIFTSCORE_FUZZ_CHECKS", ",".join(FUZZ_CHECKS)),
        "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--max-time", str(FUZZ_BUDGET_S),
        "--seed", "1", "--request-timeout", "30", "--continue-on-failure",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=FUZZ_BUDGET_S + 120)
    failures = run.stdout[run.stdout.find("FAILURES"):run.stdout.find("WARNINGS")]
    assert run.returncode == 0, failures[:8000] + run.stdout[-1500:] + run.stderr[-2000:]
    assert "/v1/evaluations" in run.stdout


def test_nul_characters_are_a_400_not_a_500(pg_stack, fuzz_token):
    # Found by schemathesis: PostgreSQL text cannot hold NUL, and the query used to fail with a 500.
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {fuzz_token}"
    created = session.post(pg_stack.url + "/v1/evaluations", timeout=10, json={
        "model_id": "a\u0000b", "dataset_id": "digits", "shifts": {"list": [[1, 0]]}})
    assert created.status_code == 400 and created.json()["errors"][0]["field"] == "model_id"
    for path in ("/v1/models/a%00b", "/v1/evaluations/a%00b/shifts", "/v1/datasets?cursor=a%00b"):
        response = session.get(pg_stack.url + path, timeout=10)
        assert response.status_code == 400, (path, response.text)
        assert response.headers["Content-Type"] == "application/problem+json"
        assert "NUL" in response.json()["detail"]


# The internal product spec is not shipped: the product's own docs must stand alone.
SPEC_REFERENCE = re.compile(r"SPEC\.md|SPEC §|shared/SPEC|\bSPEC's\b")


def test_docs_define_the_metrics_and_never_point_at_the_internal_spec(pg_stack, document):
    readme = (ROOT / "README.md").read_text()
    served = {path: requests.get(pg_stack.url + path, timeout=10) for path in (
        "/openapi.json", "/docs", "/docs/assets/docs-init.js", "/docs/metrics", "/dashboard/", "/dashboard/leaderboard")}
    texts = {"README.md": readme, **{f"docs/{p.name}": p.read_text() for p in (ROOT / "docs").glob("*.md")},
             **{path: response.text for path, response in served.items()}}
    for name, text in texts.items():
        assert not SPEC_REFERENCE.search(text), f"{name} refers to the internal spec: {SPEC_REFERENCE.search(text)[0]!r}"

    metrics = served["/docs/metrics"]
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    assert metrics.text == (ROOT / "docs" / "metrics.md").read_text()
    assert "](docs/metrics.md)" in readme and 'href="docs/metrics"' in served["/docs"].text
    assert "/docs/metrics" in document["info"]["description"]
    padding = document["components"]["schemas"]["EvaluationCreate"]["properties"]["padding"]["enum"]
    for name in (*padding, "fill", "step", "max_samples", "seed", *document["components"]["schemas"]["Summary"]["properties"]):
        assert f"`{name}`" in metrics.text, name
    for words in ("bilinear interpolation", "Zhang", "Azulay and Yair Weiss", "Engstrom", "relative to a baseline"):
        assert words in metrics.text, words
    # The [0, 1] scaling is said wherever a user declares `input`.
    for text in (metrics.text, readme, json.dumps(document["components"]["schemas"]["InputSpec"]),
                 json.dumps(document["components"]["schemas"]["ModelUpload"]["properties"]["input"])):
        assert "divided by 255" in text and "[0, 1]" in text
