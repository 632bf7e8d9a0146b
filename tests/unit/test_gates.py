"""`shiftscore eval`'s gates and JUnit files on plain summaries (the CLI runs them against the stack
in tests/integration/test_ci_gates.py)."""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET

import pytest

from shiftscore import junit
from shiftscore.eval_command import UsageError, _check_usage, add_eval_parser, gate, wants_early_exit

BASELINE = {"id": "base", "summary": {"consistency": 0.80, "worst_case_accuracy": 0.50, "flip_rate": 0.10,
                                      "mean_accuracy": 0.9, "clean_accuracy": 0.99}}


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", "--model-id", "m", *argv])


def test_a_drop_beyond_its_bound_fails_and_flip_rate_drops_by_rising():
    summary = {**BASELINE["summary"], "consistency": 0.77, "worst_case_accuracy": 0.52, "flip_rate": 0.16}
    gates = gate(summary, args("--baseline", "base", "--max-drop", "consistency=0.02",
                               "--max-drop", "worst_case_accuracy=0", "--max-drop", "flip_rate=0.05"), BASELINE)
    assert [(g["metric"], round(g["drop"], 6), g["passed"]) for g in gates] == [
        ("consistency", 0.03, False), ("worst_case_accuracy", -0.02, True), ("flip_rate", 0.06, False)]
    assert "exceeds --max-drop 0.02" in gates[0]["message"] and "within" in gates[1]["message"]


def test_a_metric_without_a_value_cannot_pass():
    gates = gate({**BASELINE["summary"], "flip_rate": None}, args("--baseline", "b", "--max-drop", "flip_rate=1"),
                 BASELINE)
    assert gates[0]["passed"] is False and "cannot be compared" in gates[0]["message"]


@pytest.mark.parametrize("bound", ["consistency", "consistency=", "accuracy=0.1", "consistency=2", "consistency=x"])
def test_malformed_max_drop_is_a_usage_error(bound):
    with pytest.raises(UsageError, match="METRIC=X"):
        gate(BASELINE["summary"], args("--baseline", "b", "--max-drop", bound), BASELINE)


def test_junit_counts_failures_and_errors(tmp_path):
    gates = gate({**BASELINE["summary"], "consistency": 0.5},
                 args("--min-consistency", "0.6", "--min-mean-accuracy", "0.8"))
    junit.write_gates(tmp_path / "g.xml", "m v1 on digits", {"id": "e", "summary": BASELINE["summary"]}, gates, 1.5)
    root = ET.parse(tmp_path / "g.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "0")
    failure = root.find("testsuite/testcase/failure")
    assert failure.get("message") == "consistency 0.5000 is below --min-consistency 0.6"
    junit.write_error(tmp_path / "e.xml", "m on digits", 4, "Evaluation failed: boom", 0.1)
    root = ET.parse(tmp_path / "e.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("1", "0", "1")
    assert root.find("testsuite/testcase/error").get("message") == "Evaluation failed: boom"


@pytest.mark.parametrize(("argv", "expected"), [
    (["--min-worst-case", "0.5"], True),
    (["--min-worst-case", "0.5", "--min-consistency", "0.9"], False),
    (["--min-worst-case", "0.5", "--baseline", "b", "--max-drop", "consistency=0.1"], False),
    (["--min-worst-case", "0.5", "--no-early-exit"], False),
    (["--min-consistency", "0.9"], False),
    (["--early-exit"], True),
    ([], False),
])
def test_early_exit_by_default_only_for_a_lone_worst_case_gate(argv, expected):
    assert wants_early_exit(args(*argv)) is expected


def test_a_clean_accuracy_below_the_declared_figure_fails_and_names_the_likely_causes():
    # The README's model with its mean and std left out: 0.714 clean, far above chance (0.1), no warning.
    normalized_wrong = {**BASELINE["summary"], "clean_accuracy": 0.714}
    gates = gate(normalized_wrong, args("--min-clean-accuracy", "0.98", "--min-consistency", "0.2"))
    assert [(g["metric"], g["passed"]) for g in gates] == [("clean_accuracy", False), ("consistency", True)]
    assert gates[0]["message"].startswith("clean_accuracy 0.7140 is below --min-clean-accuracy 0.98: ")
    assert "mean and std (on the [0, 1] scale)" in gates[0]["message"]
    assert "RGB vs BGR" not in gates[1]["message"]
    passed = gate(BASELINE["summary"], args("--min-clean-accuracy", "0.98"))[0]
    assert passed["passed"] and passed["message"] == "clean_accuracy 0.9900 meets --min-clean-accuracy 0.98"


def test_a_clean_accuracy_gate_turns_early_exit_off_and_must_be_a_fraction():
    assert wants_early_exit(args("--min-worst-case", "0.5", "--min-clean-accuracy", "0.9")) is False
    with pytest.raises(UsageError, match="--min-clean-accuracy must be between 0 and 1"):
        _check_usage(args("--min-clean-accuracy", "98"))
