"""Models have a name and a version; a name stands for its latest ready version wherever an id is taken;
datasets answer to their name too. Through the real API, worker and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch
from alembic import command
from torch import nn

from db.migrate import alembic_config
from tests.models import DIGITS_INPUT, digits_arrays, save_torchscript
from tests.stack import create_pg_database, drop_pg_database

pytestmark = pytest.mark.integration
SWEEP = {"shifts": {"dx": [-1, 1], "dy": [-1, 1]}, "max_samples": 100}


def constant_classifier(label: int) -> nn.Module:
    """Answers `label` for every image (bytes differ per label)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.nn.functional.one_hot(torch.tensor(label), 10).float())
    return model.eval()


def post_model(session, path: Path, name: str, spec: dict = DIGITS_INPUT):
    with path.open("rb") as handle:
        return session.post("/v1/models", files={"file": handle},
                            data={"name": name, "format": "torchscript", "input": json.dumps(spec)})


def post_dataset(session, path: Path, name: str):
    with path.open("rb") as handle:
        return session.post("/v1/datasets", files={"file": handle}, data={"name": name})


def assert_problem(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert fragment in response.json()["detail"], response.json()


@pytest.fixture(scope="module")
def olga(pg_stack):
    return pg_stack.session("identity-olga")


def test_the_same_upload_returns_the_model_new_bytes_make_the_next_version(olga, tmp_path):
    zero = save_torchscript(constant_classifier(0), tmp_path / "zero.pt")
    one = save_torchscript(constant_classifier(1), tmp_path / "one.pt")

    first = post_model(olga, zero, "const")
    assert first.status_code == 201, first.text
    v1 = first.json()
    assert v1["version"] == 1 and first.headers["Location"] == f"/v1/models/{v1['id']}"
    again = post_model(olga, zero, "const")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == v1["id"] and again.json()["version"] == 1

    v2 = post_model(olga, one, "const")
    assert v2.status_code == 201 and v2.json()["version"] == 2
    renormalized = post_model(olga, zero, "const", {**DIGITS_INPUT, "mean": [0.4]})
    assert renormalized.status_code == 201 and renormalized.json()["version"] == 3
    elsewhere = post_model(olga, zero, "const-copy")
    assert elsewhere.status_code == 201 and elsewhere.json()["version"] == 1

    for model in (v1, v2.json(), renormalized.json()):
        assert olga.wait_model(model["id"])["status"] == "ready"
    by_name = olga.get("/v1/models/const").json()
    assert (by_name["id"], by_name["version"]) == (renormalized.json()["id"], 3)
    listed = olga.get("/v1/models", params={"name": "const"}).json()["items"]
    assert sorted(m["version"] for m in listed) == [1, 2, 3] and {m["name"] for m in listed} == {"const"}

    # Deleting the latest version makes the name mean the one before; its number is never reused.
    assert olga.delete("/v1/models/const").status_code == 204
    assert olga.get("/v1/models/const").json()["version"] == 2
    readded = post_model(olga, zero, "const", {**DIGITS_INPUT, "mean": [0.4]})
    assert readded.status_code == 201 and readded.json()["version"] == 4


def test_names_work_wherever_an_id_is_taken(pg_stack, olga, tmp_path):
    path = save_torchscript(constant_classifier(3), tmp_path / "three.pt")
    model = olga.wait_model(post_model(olga, path, "named-const").json()["id"])
    images, labels = digits_arrays()
    npz = tmp_path / "part.npz"
    np.savez(npz, images=images[:150], labels=labels[:150])
    dataset = post_dataset(olga, npz, "digits-part")
    assert dataset.status_code in (201, 202), dataset.text
    olga.wait_dataset(dataset.json()["id"])
    same = post_dataset(olga, npz, "digits-part")
    assert same.status_code == 200 and same.json()["id"] == dataset.json()["id"]
    assert olga.get("/v1/datasets/digits-part").json()["id"] == dataset.json()["id"]
    assert [d["id"] for d in olga.get("/v1/datasets", params={"name": "digits-part"}).json()["items"]] == \
        [dataset.json()["id"]]

    submitted = olga.post("/v1/evaluations", json={"model_id": "named-const", "dataset_id": "digits-part", **SWEEP})
    assert submitted.status_code == 202, submitted.text
    done = olga.wait_evaluation(submitted.json()["id"])
    assert done["status"] == "succeeded", done
    assert (done["model_id"], done["dataset_id"]) == (model["id"], dataset.json()["id"])

    by_name = olga.get("/v1/evaluations", params={"model_id": "named-const", "dataset_id": "digits-part"}).json()
    assert [e["id"] for e in by_name["items"]] == [done["id"]]
    by_all_versions = olga.get("/v1/evaluations", params={"model_name": "named-const"}).json()
    assert [e["id"] for e in by_all_versions["items"]] == [done["id"]]
    assert olga.get("/v1/evaluations", params={"model_name": "const"}).json()["items"] == []
    board = olga.get("/v1/leaderboard", params={"dataset_id": "digits-part"}).json()
    [entry] = board["sweeps"][0]["items"]
    assert (entry["model_name"], entry["model_version"], entry["model_id"]) == ("named-const", 1, model["id"])

    assert_problem(olga.post("/v1/evaluations", json={"model_id": "no-such-name", "dataset_id": "digits", **SWEEP}),
                   404, "no model with id or name 'no-such-name'")
    assert_problem(olga.post("/v1/evaluations", json={"model_id": "named-const", "dataset_id": "nope", **SWEEP}),
                   404, "no dataset with id or name 'nope'")
    assert_problem(post_dataset(olga, npz, "digits"), 422, "built-in dataset")
    # Another tenant's names are not visible.
    assert_problem(pg_stack.session("identity-other").get("/v1/models/named-const"), 404, "no model")


def test_the_migration_numbers_existing_copies_in_upload_order():
    url = create_pg_database()
    try:
        config = alembic_config(url)
        command.upgrade(config, "0001")
        plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute("INSERT INTO tenants (id, name, webhook_secret, created_at) VALUES ('t', 't', 's', now())")
            conn.execute("INSERT INTO blobs (sha256, size, data, created_at) VALUES ('b', 1, 'x', now())")
            for model_id, minute, name in (("m3", 3, "a"), ("m1", 1, "a"), ("m2", 2, "a"), ("n1", 5, "b")):
                conn.execute(
                    "INSERT INTO models (id, tenant_id, name, format, task, sha256, architecture_options, "
                    "input_spec, status, created_at) VALUES (%s, 't', %s, 'torchscript', 'classification', "
                    "'b', '{}', '{}', 'ready', now() + %s * interval '1 minute')", (model_id, name, minute))
        command.upgrade(config, "heads")
        with psycopg.connect(plain, autocommit=True) as conn:
            versions = dict(conn.execute("SELECT id, version FROM models").fetchall())
            assert versions == {"m1": 1, "m2": 2, "m3": 3, "n1": 1}
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute("UPDATE models SET version = 1 WHERE id = 'm2'")
    finally:
        drop_pg_database(url)
