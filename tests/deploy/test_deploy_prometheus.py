"""deploy/prometheus/: the scrape config loads, the rules parse, and promtool's unit tests prove each alert
(error ratio, p95, queue, instance down, restarts, GPU memory, canary vs stable) fires on synthetic series.
Tests that run promtool or prometheus are marked `deploy` (Debian's prometheus package)."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT

PROM = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL, "promtool is required: apt-get install prometheus (.ci/install-deploy-deps.sh)"
    return subprocess.run([PROMTOOL, *args], cwd=PROM, capture_output=True, text=True, timeout=60)


@pytest.mark.deploy
def test_scrape_config_and_rules_are_valid():
    out = promtool("check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.deploy
def test_alert_rules_pass_their_unit_tests():
    out = promtool("test", "rules", "tests.yml")
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_every_alert_has_a_unit_test_and_canary_alerts_name_the_rollback():
    rules = yaml.safe_load((PROM / "rules.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for case in yaml.safe_load((PROM / "tests.yml").read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert set(alerts) <= tested, set(alerts) - tested
    canary = [a for name, a in alerts.items() if name.startswith("CosyVoiceCanary")]
    assert len(canary) == 3
    for alert in canary:
        assert "deploy/nginx/canary.sh rollback" in alert["annotations"]["description"]
        assert alert["labels"]["rollback"] == "true"


@pytest.mark.deploy
def test_broken_rule_makes_promtool_fail(tmp_path):
    """The unit tests really check the thresholds: loosen one and they fail."""
    shutil.copy(PROM / "tests.yml", tmp_path / "tests.yml")
    text = (PROM / "rules.yml").read_text().replace("(2 * track:cosyvoice_request_errors", "(20 * track:cosyvoice_request_errors")
    (tmp_path / "rules.yml").write_text(text)
    out = subprocess.run([PROMTOOL, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and "CosyVoiceCanaryErrorRatioHigh" in out.stdout + out.stderr


def test_alertmanager_recipe_routes_canary_alerts_to_the_rollback_hook(tmp_path):
    am = yaml.safe_load((PROM / "alertmanager.yml").read_text())
    route = next(r for r in am["route"]["routes"] if r["receiver"] == "canary-rollback")
    assert route["matchers"] == ['rollback="true"']
    subprocess.run([str(PROM / "render-hooks.sh"), str(tmp_path / "hooks.json")], check=True, capture_output=True)
    hook = json.loads((tmp_path / "hooks.json").read_text())[0]
    receiver = next(r for r in am["receivers"] if r["name"] == "canary-rollback")
    assert receiver["webhook_configs"][0]["url"].endswith("/hooks/" + hook["id"])
    assert hook["execute-command"] == str(ROOT / "deploy" / "nginx" / "canary.sh")
    assert hook["pass-arguments-to-command"][-1]["name"] == "rollback"


@pytest.mark.slow
@pytest.mark.deploy
def test_a_real_prometheus_scrapes_an_instance_and_evaluates_the_rules(tmp_path, lite_app):
    """The Debian prometheus server, on loopback, with deploy/prometheus's scrape job and rules."""
    import time

    import httpx
    from gradio_client import handle_file

    from conftest import ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, free_port

    server = shutil.which("prometheus")
    assert server, "apt-get install prometheus (.ci/install-deploy-deps.sh)"
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config.pop("alerting")
    config["rule_files"] = [str(PROM / "rules.yml")]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{lite_app.port}"],
                                                      "labels": {"track": "stable"}}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen([server, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))

    def query(expr: str) -> list[dict]:
        answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr}, timeout=5).json()
        return answer["data"]["result"]

    def wait_for(expr: str, check, timeout: float = 60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                result = query(expr)
                if check(result):
                    return result
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"{expr} never satisfied; last: {result if 'result' in locals() else None}; "
                             f"{(tmp_path / 'prometheus.log').read_text()[-1500:]}")

    try:
        before = wait_for('sum(cosyvoice_requests_total{outcome="ok"})', lambda r: r)   # scraped once, before the requests
        start = float(before[0]["value"][1])
        client = lite_app.client()
        for i in range(5):
            client.predict(f"第{i}句。", "zero_shot", handle_file(str(ZERO_SHOT_PROMPT)), ZERO_SHOT_TRANSCRIPT,
                           "", 0, 1.0, False, True, "", api_name="/synthesize")
        wait_for('sum(cosyvoice_requests_total{outcome="ok"})',
                 lambda r: r and float(r[0]["value"][1]) - start == 5)
        rate = wait_for('track:cosyvoice_requests:rate5m{track="stable"}', lambda r: r and float(r[0]["value"][1]) > 0)
        assert rate[0]["metric"]["track"] == "stable"
        info = wait_for("cosyvoice_build_info", lambda r: r)
        assert info[0]["metric"]["engine"] == "lite"
        assert query('up{job="cosyvoice"}')[0]["value"][1] == "1"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
