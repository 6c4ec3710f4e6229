"""The canary-rollback webhook works from any checkout: deploy/prometheus/render-hooks.sh writes the hooks
file with the paths of the checkout it lives in (issue: a hard-coded /opt/cosyvoice-studio made the
automatic rollback answer HTTP 500 everywhere else). The hook is run exactly as webhook runs it
(execute-command with its arguments, in command-working-directory) against a real nginx."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import httpx
import pytest

from conftest import ROOT, free_port
from test_deploy_nginx import NGINX, Nginx


def test_no_deploy_file_names_a_fixed_install_path():
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_file() and "node_modules" not in path.parts:
            assert "/opt/cosyvoice" not in path.read_text(errors="replace"), path


@pytest.mark.deploy
def test_rendered_hook_rolls_the_canary_back_from_a_checkout_elsewhere(tmp_path):
    assert os.path.exists(NGINX), "Debian nginx is required: .ci/install-deploy-deps.sh"
    checkout = tmp_path / "somewhere else" / "cosyvoice"        # a space in the path, too
    shutil.copytree(ROOT / "deploy", checkout / "deploy", ignore=shutil.ignore_patterns("node_modules"))
    nginx = Nginx(checkout / ".run" / "nginx", free_port())
    env = {k: v for k, v in os.environ.items() if k != "NGINX_CONF_DIR"}
    subprocess.run([str(checkout / "deploy" / "nginx" / "render.sh"), str(nginx.conf_dir)], check=True,
                   capture_output=True, env={**env, "STABLE": "127.0.0.1:9", "CANARY": "127.0.0.1:10",
                                              "LISTEN": f"127.0.0.1:{nginx.port}", "WORKERS": "1",
                                              "CANARY_WEIGHT": "25",
                                              **({"NGINX_USER": "root"} if os.geteuid() == 0 else {})})
    nginx.start()
    try:
        assert httpx.get(f"{nginx.url}/lb/weight", timeout=5).text.strip() == "25"
        rendered = subprocess.run([str(checkout / "deploy" / "prometheus" / "render-hooks.sh")], cwd=tmp_path,
                                  env=env, capture_output=True, text=True, check=True)
        hooks_file = checkout / ".run" / "webhook" / "hooks.json"
        assert str(hooks_file) in rendered.stdout
        [hook] = json.loads(hooks_file.read_text())
        assert hook["command-working-directory"] == str(checkout)
        args = [a["name"] for a in hook["pass-arguments-to-command"]]
        ran = subprocess.run([hook["execute-command"], *args], cwd=hook["command-working-directory"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert "-> 0 %" in ran.stdout
        assert httpx.get(f"{nginx.url}/lb/weight", timeout=5).text.strip() == "0"
    finally:
        nginx.stop()
