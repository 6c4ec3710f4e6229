"""Every example in README.md runs as written, against a started app, so the README cannot drift.

Shell lines starting with `.venv/bin/python` or `curl` and every ```python block are run from the
repository root; the app's port 7860 in them is replaced by the test app's port. Lines that start
long-running servers or need what CI lacks (a GPU, the network, a model download) are listed in
NOT_RUN with the reason; the two set-up commands at the top are what the test suite itself runs.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from conftest import PYTHON, ROOT, start_app, stop_app

README = ROOT / "README.md"
NOT_RUN = {
    "./run.sh": "starts the server (the suite starts the same app.py)",
    "./monitor.sh": "starts the watchdog (tests/integration/test_monitor.py)",
    "tail -f": "follows the log forever",
    "--device cuda": "needs a GPU",
    "cosyvoice download": "needs the network",
    "pip install": "installs packages",
    "bench/": "benchmarks take minutes (run by hand; figures below)",
    "deploy/": "needs nginx/kubectl (tests/deploy/)",
    "docker": "needs a Docker engine",
    "kubectl": "needs a cluster",
    "pytest": "is the test suite itself",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def shell_commands() -> list[str]:
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith((".venv/bin/python", "curl")) and not any(skip in line for skip in NOT_RUN):
                commands.append(line)
    return commands


def test_readme_has_examples_to_run():
    assert len(shell_commands()) >= 3 and len(blocks("python")) >= 1


@pytest.fixture(scope="module")
def readme_app(tmp_path_factory):
    app = start_app(tmp_path_factory.mktemp("readme_app"), "--engine", "lite")
    yield app
    stop_app(app)


@pytest.mark.parametrize("command", shell_commands())
def test_shell_example_runs(readme_app, command):
    command = command.replace("7860", str(readme_app.port))
    if command.startswith("curl"):
        command = command.replace("curl ", "curl -fsS ", 1)        # an HTTP error fails the example
    result = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            executable="/bin/bash")
    assert result.returncode == 0, f"{command}\n{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_example_runs_and_prints(readme_app, index):
    code = blocks("python")[index].replace("7860", str(readme_app.port))
    result = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{code}\n{result.stderr[-2000:]}"
    assert result.stdout.strip(), "the example prints nothing a user could see"
