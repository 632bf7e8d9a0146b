"""`shiftscore eval` in CI: JUnit XML per gate, gates relative to a baseline, tqdm's progress; the CLI
as a subprocess against the real stack."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from shiftscore.eval_command import EXIT_BELOW_THRESHOLD, EXIT_OK, EXIT_USAGE
from tests.integration.test_model_identity import constant_classifier
from tests.models import DIGITS_INPUT, save_torchscript
from tests.stack import ROOT

pytestmark = pytest.mark.integration
SWEEP = ["--dx=-1:1", "--dy=-1:1", "--max-samples", "300", "--seed", "4"]


@pytest.fixture(scope="module")
def cli(pg_stack):
    token = pg_stack.token("ci-quinn")
    env = {**pg_stack.env, "SHIFTSCORE_URL": pg_stack.url, "SHIFTSCORE_TOKEN": token}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shiftscore.cli", "eval", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
    return run


def junit(path: Path) -> tuple[ET.Element, list[ET.Element]]:
    """The one test suite of a JUnit file, checked for the counts CI systems read, and its cases."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    cases = suite.findall("testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    errors = [c for c in cases if c.find("error") is not None]
    for element in (root, suite):
        assert (int(element.get("tests")), int(element.get("failures")), int(element.get("errors"))) == \
            (len(cases), len(failures), len(errors))
    assert all(c.get("name") and c.get("classname") for c in cases)
    return suite, cases


def test_junit_xml_has_one_case_per_threshold_with_its_figure(cli, digits_model_file, tmp_path):
    report = tmp_path / "gates.xml"
    run = cli(str(digits_model_file), "--name", "ci-cnn", "--input", json.dumps(DIGITS_INPUT), *SWEEP,
              "--min-consistency", "0.0", "--min-mean-accuracy", "0.999", "--junit-xml", str(report), "--json")
    assert run.returncode == EXIT_BELOW_THRESHOLD, run.stderr
    summary = json.loads(run.stdout)["summary"]
    assert summary["mean_accuracy"] < 0.999
    suite, cases = junit(report)
    assert [c.get("name") for c in cases] == ["consistency >= 0", "mean_accuracy >= 0.999"]
    passed, failed = cases
    assert passed.find("failure") is None and f"{summary['consistency']:.4f}" in passed.find("system-out").text
    message = failed.find("failure").get("message")
    assert f"mean_accuracy {summary['mean_accuracy']:.4f} is below --min-mean-accuracy 0.999" == message
    properties = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert properties["evaluation_id"] == json.loads(run.stdout)["evaluation"]["id"]
    assert float(properties["consistency"]) == summary["consistency"]
    # tqdm's bar: images done, rate; none of it with --quiet.
    assert "100%" in run.stderr and "img/s" in run.stderr


def test_baseline_gates_pass_on_the_same_model_and_fail_on_a_worse_next_version(cli, tmp_path):
    first = cli("--model-id", "ci-cnn", *SWEEP, "--json", "--quiet")
    assert first.returncode == EXIT_OK, first.stderr
    baseline = json.loads(first.stdout)["evaluation"]

    report = tmp_path / "same.xml"
    same = cli("--model-id", "ci-cnn", *SWEEP, "--baseline", "ci-cnn", "--max-drop", "consistency=0",
               "--max-drop", "worst_case_accuracy=0.05", "--junit-xml", str(report), "--quiet")
    assert same.returncode == EXIT_OK, same.stderr
    assert same.stderr == "" and f"vs baseline {baseline['summary']['consistency']:.4f}" in same.stdout
    _, cases = junit(report)
    assert [c.get("name") for c in cases] == ["consistency drop <= 0 vs baseline",
                                              "worst_case_accuracy drop <= 0.05 vs baseline"]
    assert all(c.find("failure") is None for c in cases)
    assert f"(evaluation {baseline['id']}): drop 0.0000 within" in cases[0].find("system-out").text

    # New bytes under the name make version 2; the baseline by name is the newest evaluation of any version.
    worse = save_torchscript(constant_classifier(0), tmp_path / "ci-cnn.pt")
    report = tmp_path / "worse.xml"
    run = cli(str(worse), "--name", "ci-cnn", "--input", json.dumps(DIGITS_INPUT), *SWEEP, "--quiet",
              "--baseline", "ci-cnn", "--max-drop", "mean_accuracy=0.05", "--junit-xml", str(report), "--json")
    assert run.returncode == EXIT_BELOW_THRESHOLD, run.stderr
    out = json.loads(run.stdout)
    [drop] = out["gates"]
    assert drop["passed"] is False and drop["baseline"] == baseline["summary"]["mean_accuracy"]
    assert drop["drop"] == pytest.approx(baseline["summary"]["mean_accuracy"] - out["summary"]["mean_accuracy"])
    _, [case] = junit(report)
    assert "exceeds --max-drop 0.05" in case.find("failure").get("message")

    by_id = cli("--model-id", "ci-cnn", *SWEEP, "--quiet", "--json", "--baseline", baseline["id"],
                "--max-drop", "mean_accuracy=0.05")
    assert by_id.returncode == EXIT_BELOW_THRESHOLD, by_id.stderr
    assert json.loads(by_id.stdout)["gates"][0]["baseline_id"] == baseline["id"]


def test_a_baseline_that_does_not_exist_or_compare_is_a_usage_error(cli, tmp_path):
    report = tmp_path / "error.xml"
    other_sweep = cli("--model-id", "ci-cnn", "--dx=0:1", "--dy=0:0", "--max-samples", "50", "--quiet",
                      "--baseline", "ci-cnn", "--max-drop", "consistency=0.02", "--junit-xml", str(report))
    assert other_sweep.returncode == EXIT_USAGE
    assert "no succeeded evaluation" in other_sweep.stderr or "neither" in other_sweep.stderr
    _, [case] = junit(report)
    assert case.find("error").get("type") == "exit 2"

    baseline = json.loads(cli("--model-id", "ci-cnn", "--dx=0:1", "--dy=0:0", "--max-samples", "50", "--quiet",
                              "--json").stdout)["evaluation"]["id"]
    mismatch = cli("--model-id", "ci-cnn", *SWEEP, "--quiet", "--baseline", baseline, "--max-drop", "consistency=0.02")
    assert mismatch.returncode == EXIT_USAGE and "another dataset or another sweep" in mismatch.stderr
    lonely = cli("--model-id", "ci-cnn", *SWEEP, "--quiet", "--max-drop", "consistency=0.02")
    assert lonely.returncode == EXIT_USAGE and "--baseline and --max-drop go together" in lonely.stderr
    bad = cli("--model-id", "ci-cnn", *SWEEP, "--quiet", "--baseline", "ci-cnn", "--max-drop", "accuracy=0.1")
    assert bad.returncode == EXIT_USAGE and "METRIC=X" in bad.stderr


def test_a_clean_accuracy_gate_catches_a_wrong_input_that_no_warning_flags(cli, digits_model_file, tmp_path):
    # The README's model with mean and std left out: well above chance, so the evaluation carries no warning.
    unnormalized = {key: value for key, value in DIGITS_INPUT.items() if key not in ("mean", "std")}
    report = tmp_path / "clean.xml"
    run = cli(str(digits_model_file), "--name", "ci-unnormalized", "--input", json.dumps(unnormalized),
              "--max-shift", "0", "--min-clean-accuracy", "0.98", "--junit-xml", str(report), "--json")
    assert run.returncode == EXIT_BELOW_THRESHOLD, run.stderr
    out = json.loads(run.stdout)
    assert round(out["summary"]["clean_accuracy"], 3) == 0.714 and out["warnings"] == []
    _, [case] = junit(report)
    message = case.find("failure").get("message")
    assert message.startswith("clean_accuracy 0.7140 is below --min-clean-accuracy 0.98: ")
    assert "mean and std (on the [0, 1] scale)" in message and "RGB vs BGR" in message

    # Declared as trained, the same file passes the same gate.
    right = cli(str(digits_model_file), "--name", "ci-normalized", "--input", json.dumps(DIGITS_INPUT),
                "--max-shift", "0", "--min-clean-accuracy", "0.98", "--json", "--quiet")
    assert right.returncode == EXIT_OK, right.stderr
    assert json.loads(right.stdout)["summary"]["clean_accuracy"] >= 0.98
