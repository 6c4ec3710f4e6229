"""The README's test command passes on a machine with only python3-venv: the tests that drive Debian
packages (nginx, promtool/prometheus, node with deploy/validate's npm schemas, chromium) are marked `deploy`
and left to `pytest -m deploy` (CI runs it after .ci/install-deploy-deps.sh), never skipped or failing in
the default run. Checked by running the deployment test files with those programs removed from PATH."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from conftest import PYTHON, ROOT

SYSTEM_TOOLS = {"nginx", "promtool", "prometheus", "node", "nodejs", "npm", "chromium", "chromium-browser"}
FILES = ["tests/deploy/test_deploy_prometheus.py", "tests/deploy/test_deploy_manifests.py", "tests/deploy/test_deploy_hooks.py"]


def path_without_system_tools(tmp: Path) -> str:
    """A PATH with every program of the current one except SYSTEM_TOOLS (symlinked into one folder)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            target = Path(folder) / name
            if name not in SYSTEM_TOOLS and not (bin_dir / name).exists() and os.access(target, os.X_OK):
                (bin_dir / name).symlink_to(target)
    return str(bin_dir)


def run_pytest(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path_without_system_tools(tmp)}
    env.pop("CI", None)
    return subprocess.run([PYTHON, "-m", "pytest", "-q", "-rs", *args, *FILES], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_default_run_needs_no_system_packages_and_skips_nothing(tmp_path):
    default = run_pytest(tmp_path)
    assert default.returncode == 0, default.stdout[-3000:]
    assert "SKIPPED" not in default.stdout and " skipped" not in default.stdout, default.stdout[-3000:]
    deselected = int(re.search(r"(\d+) deselected", default.stdout).group(1))
    assert deselected >= 6, default.stdout[-500:]          # 5 deploy tests + the slow Prometheus one


def test_deploy_suite_really_needs_those_packages(tmp_path):
    """Without the programs the deploy tests fail loudly (so the mark is needed, and nothing hides)."""
    without = run_pytest(tmp_path, "-m", "deploy and not slow")
    assert without.returncode == 1, without.stdout[-3000:]
    assert "promtool is required" in without.stdout
    assert "SKIPPED" not in without.stdout
