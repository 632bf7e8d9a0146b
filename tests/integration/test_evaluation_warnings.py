"""A clean accuracy near chance is flagged on the evaluation, in `shiftscore eval` and on the dashboard."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.test_dashboard import browser, screenshot, sign_in, wait_for  # noqa: F401 — fixture
from tests.integration.test_model_identity import constant_classifier
from tests.models import DIGITS_INPUT, save_torchscript
from tests.stack import ROOT

pytestmark = pytest.mark.integration
SWEEP = {"dataset_id": "digits", "shifts": {"dx": [-1, 1], "dy": [-1, 1]}, "max_samples": 400, "seed": 3}


@pytest.fixture(scope="module")
def pia(pg_stack):
    return pg_stack.session("warnings-pia")


@pytest.fixture(scope="module")
def swept(pia, digits_model_file, tmp_path_factory) -> dict[str, dict]:
    """The trained digits CNN and a model that answers 0 for every image, swept alike."""
    constant = save_torchscript(constant_classifier(0), tmp_path_factory.mktemp("warn") / "zero.pt")
    done = {}
    for key, path in (("trained", digits_model_file), ("constant", constant)):
        model = pia.wait_model(pia.upload_model(path, DIGITS_INPUT, name=f"warn-{key}")["id"])
        assert model["status"] == "ready", model
        done[key] = pia.wait_evaluation(pia.post("/v1/evaluations", json={**SWEEP, "model_id": model["id"]}).json()["id"])
        assert done[key]["status"] == "succeeded", done[key]
    return done


def test_near_chance_clean_accuracy_carries_a_warning_that_names_the_causes(pia, swept):
    constant, trained = swept["constant"], swept["trained"]
    assert constant["summary"]["clean_accuracy"] <= 1.5 / 10 < trained["summary"]["clean_accuracy"]
    [warning] = constant["warnings"]
    assert warning["code"] == "clean_accuracy_near_chance"
    assert f"{constant['summary']['clean_accuracy']:.4f}" in warning["detail"]
    assert "[0, 1] scale" in warning["detail"] and "RGB vs BGR" in warning["detail"]
    assert trained["warnings"] == []
    listed = {e["id"]: e["warnings"] for e in pia.get("/v1/evaluations").json()["items"]}
    assert listed[constant["id"]] == [warning] and listed[trained["id"]] == []


def test_the_cli_prints_the_warning_on_stderr(pg_stack, pia, swept):
    env = {**pg_stack.env, "SHIFTSCORE_URL": pg_stack.url,
           "SHIFTSCORE_TOKEN": pia.headers["Authorization"].removeprefix("Bearer ")}
    sweep = ["--dx=-1:1", "--dy=-1:1", "--max-samples", "400", "--seed", "3", "--quiet"]
    runs = {key: subprocess.run([sys.executable, "-m", "shiftscore.cli", "eval", "--model-id", f"warn-{key}", *sweep],
                                env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
            for key in ("constant", "trained")}
    assert runs["constant"].returncode == 0, runs["constant"].stderr
    assert "warning: clean accuracy" in runs["constant"].stderr and "mean and std" in runs["constant"].stderr
    assert "warning" not in runs["constant"].stdout
    assert runs["trained"].returncode == 0 and "warning" not in runs["trained"].stderr


def test_the_dashboard_shows_the_warning(pg_stack, pia, swept, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    sign_in(browser, pg_stack.url + "/dashboard/", pia.headers["Authorization"].removeprefix("Bearer "))
    browser.get(f"{pg_stack.url}/dashboard/evaluations/{swept['constant']['id']}")
    box = wait_for(browser, lambda d: d.find_element(By.ID, "evaluation-warnings").is_displayed()
                   and d.find_element(By.ID, "evaluation-warnings"))
    assert "near chance" in box.text and "RGB vs BGR" in box.text
    screenshot(browser, "evaluation-warning")
    browser.get(f"{pg_stack.url}/dashboard/evaluations/{swept['trained']['id']}")
    wait_for(browser, lambda d: d.find_element(By.ID, "results").is_displayed())
    assert not browser.find_element(By.ID, "evaluation-warnings").is_displayed()
