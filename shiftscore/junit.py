"""JUnit XML for `shiftscore eval --junit-xml`: one test case per gate, as CI systems ingest it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SUITE = "shiftscore"


def _suite(name: str, seconds: float, properties: dict[str, Any]) -> tuple[ET.Element, ET.Element]:
    root = ET.Element("testsuites", name=SUITE)
    suite = ET.SubElement(root, "testsuite", name=name, timestamp=datetime.now(timezone.utc).isoformat(
        timespec="seconds"), time=f"{seconds:.3f}")
    if properties:
        props = ET.SubElement(suite, "properties")
        for key, value in properties.items():
            ET.SubElement(props, "property", name=key, value="" if value is None else str(value))
    return root, suite


def _write(root: ET.Element, path: str | Path) -> None:
    cases = root.iter("testcase")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for case in cases:
        counts["tests"] += 1
        counts["failures"] += case.find("failure") is not None
        counts["errors"] += case.find("error") is not None
    for element in (root, *root.iter("testsuite")):
        for key, value in counts.items():
            if element.tag == "testsuite" or key != "skipped":
                element.set(key, str(value))
    tree = ET.ElementTree(root)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def write_gates(path: str | Path, name: str, evaluation: dict[str, Any], gates: list[dict[str, Any]],
                seconds: float) -> None:
    """One test case per gate (its figure in the message), or one for the sweep when no gate was set."""
    summary = evaluation.get("summary") or {}
    root, suite = _suite(name, seconds, {"evaluation_id": evaluation.get("id"), **summary})
    classname = f"{SUITE}.{name}"
    if not gates:
        case = ET.SubElement(suite, "testcase", classname=classname, name="sweep succeeded", time="0")
        ET.SubElement(case, "system-out").text = ", ".join(f"{k} {v}" for k, v in summary.items())
    for gate in gates:
        case = ET.SubElement(suite, "testcase", classname=classname, name=gate["name"], time="0")
        if gate["passed"]:
            ET.SubElement(case, "system-out").text = gate["message"]
        else:
            ET.SubElement(case, "failure", type="threshold", message=gate["message"]).text = gate["message"]
    _write(root, path)


def write_error(path: str | Path, name: str, exit_code: int, message: str, seconds: float) -> None:
    """The run could not be gated (usage, service, failed sweep): one test case in error."""
    root, suite = _suite(name, seconds, {"exit_code": exit_code})
    case = ET.SubElement(suite, "testcase", classname=f"{SUITE}.{name}", name="sweep succeeded", time="0")
    ET.SubElement(case, "error", type=f"exit {exit_code}", message=message).text = message
    _write(root, path)
