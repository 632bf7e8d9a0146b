"""The README's tutorial, run exactly as it is printed: its sh blocks, in order, in bash, after the
`export` lines that `shiftscore up` printed, against that running embedded default."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests

from tests.stack import ROOT, free_port

pytestmark = pytest.mark.integration
README = (ROOT / "README.md").read_text()


def tutorial_section() -> str:
    start = README.index("\n## Your first sweep\n")
    return README[start:README.index("\n## ", start + 1)]


def sh_blocks(section: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", section, re.M | re.S)


def documented_summary() -> dict:
    """The summary of the README's example evaluation ("A succeeded evaluation looks like this")."""
    example = re.search(r'"summary": (\{.*?\})', tutorial_section(), re.S).group(1)
    return json.loads(example)


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    """`shiftscore up --port N` in a fresh SHIFTSCORE_HOME; yields its printed lines."""
    home = tmp_path_factory.mktemp("tutorial-up")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTSCORE_")}
    env.update({"SHIFTSCORE_HOME": str(home), "PYTHONPATH": f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"})
    log = (home / "up.log").open("w+")
    process = subprocess.Popen([sys.executable, "-m", "shiftscore.cli", "up", "--port", str(port)], cwd=ROOT,
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    output = ""
    while "export SHIFTSCORE_TOKEN=" not in output:
        assert process.poll() is None and time.monotonic() < deadline, output[-3000:]
        time.sleep(0.3)
        output = Path(log.name).read_text()
    try:
        yield output, f"http://127.0.0.1:{port}", env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def test_up_prints_the_export_lines_and_the_dashboard(up):
    output, url, _ = up
    token = re.search(r"^token: (\S+)$", output, re.M).group(1)
    assert f"export SHIFTSCORE_URL={url}\n" in output and f"export SHIFTSCORE_TOKEN={token}\n" in output
    assert re.search(rf"^dashboard: {re.escape(url)}/dashboard/ \(it asks for the token", output, re.M)
    assert requests.get(f"{url}/dashboard/", timeout=10).status_code == 200


def test_the_readme_tutorial_runs_as_printed(up, tmp_path):
    output, url, env = up
    blocks = sh_blocks(tutorial_section())
    assert len(blocks) >= 5, "the tutorial's sh blocks were not found"
    exports = re.findall(r"^export SHIFTSCORE_\w+=\S+$", output, re.M)
    # The README's commands run from a checkout's root, where .venv is: here the venv running the tests.
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    script = tmp_path / "tutorial.sh"
    script.write_text("set -euo pipefail\n" + "\n".join(exports) + "\n" + "\n".join(blocks))
    run = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"stdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"
    (tmp_path / "tutorial.out").write_text(run.stdout + "\n--- stderr ---\n" + run.stderr)

    assert re.search(r"^model \S+ is ready$", run.stdout, re.M), run.stdout[-2000:]
    assert re.search(r"^evaluation \S+ is succeeded$", run.stdout, re.M)
    summary = json.loads(next(line for line in run.stdout.splitlines()
                              if line.startswith("{") and '"clean_accuracy"' in line))
    documented = documented_summary()
    assert {k: round(summary[k], 4) for k in documented} == documented
    # The gates say what the README says they say: pass, fail with 1, pass against the baseline.
    assert re.findall(r"^exit code (\d+)$", run.stdout, re.M) == ["0", "1", "0"], run.stdout[-3000:]
    assert "consistency 0.2428 is below --min-consistency 0.5" in run.stderr
    cases = ET.parse(tmp_path / "gates.xml").getroot().findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == ["clean_accuracy >= 0.98", "consistency >= 0.2", "mean_accuracy >= 0.15"]
    assert all(c.find("failure") is None for c in cases)

    # Uploading the same file under the same name (curl, then the CLI) kept one model.
    token = re.search(r"^export SHIFTSCORE_TOKEN=(\S+)$", output, re.M).group(1)
    models = requests.get(f"{url}/v1/models", params={"name": "digits-cnn"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=10).json()["items"]
    assert [m["version"] for m in models] == [1]
