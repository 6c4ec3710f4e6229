"""The deployment files validate offline: Kubernetes manifests against the Kubernetes 1.37 schemas
(kubernetes-validate, strict), envoy.yaml against Envoy's v3 API types (envoy-data-plane), the Dockerfile
through Docker's own parser (the `dockerfile` package), and the Argo Rollouts / Istio resources for the
fields the canary relies on (no offline schema exists for those CRDs; see deploy/README.md)."""
from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.37.0"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_docs() -> list[tuple[str, dict]]:
    return [(f"{p.name}:{d['kind']}/{d['metadata']['name']}", d) for p in sorted((DEPLOY / "k8s").glob("*.yaml"))
            for d in docs(p)]


def recording_rules() -> set[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


@pytest.mark.parametrize("name,doc", [d for d in k8s_docs() if not d[1]["apiVersion"].startswith("argoproj.io/")],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_kubernetes_manifests_match_the_schema(name, doc):
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_misspelled_field_is_rejected():
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    deployment = next(d for _, d in k8s_docs() if d["kind"] == "Deployment")
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready", "port": "http"}}
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def pod_specs() -> list[tuple[str, dict]]:
    """Every pod template (Deployment and Rollout), each also checked as a core/v1 PodTemplate."""
    out = []
    for name, doc in k8s_docs():
        if doc["kind"] in ("Deployment", "Rollout"):
            out.append((name, doc["spec"]["template"]))
    return out


@pytest.mark.parametrize("name,template", pod_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_pods_take_one_gpu_probe_ready_and_health_and_mount_the_model_read_only(name, template):
    import kubernetes_validate

    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"},
                                  "template": template}, K8S_VERSION, strict=True)
    container = template["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 300
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    assert {"outputs", "logs", "voices"} <= set(mounts)


def test_hpa_scales_on_the_queue_depth_the_adapter_serves():
    hpa = next(d for _, d in k8s_docs() if d["kind"] == "HorizontalPodAutoscaler")
    adapter = yaml.safe_load(next(d for _, d in k8s_docs() if d["kind"] == "ConfigMap")["data"]["config.yaml"])
    served = {rule["name"]["as"] for rule in adapter["rules"]}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] in served


def test_argo_rollout_steps_weights_and_analysis_use_the_prometheus_rules():
    rollout = next(d for _, d in k8s_docs() if d["kind"] == "Rollout")
    template = next(d for _, d in k8s_docs() if d["kind"] == "AnalysisTemplate")
    canary = rollout["spec"]["strategy"]["canary"]
    weights = [s["setWeight"] for s in canary["steps"] if "setWeight" in s]
    assert weights == sorted(weights) and weights[0] == 10 and all(0 < w < 100 for w in weights)
    assert canary["analysis"]["templates"][0]["templateName"] == template["metadata"]["name"]
    queries = " ".join(m["provider"]["prometheus"]["query"] for m in template["spec"]["metrics"])
    used = set(re.findall(r"track:cosyvoice_[a-z0-9_:]+", queries))
    assert used and used <= recording_rules(), used - recording_rules()
    services = {d["metadata"]["name"] for _, d in k8s_docs() if d["kind"] == "Service"}
    assert {canary["canaryService"], canary["stableService"]} <= services


def test_istio_pair_matches_the_rollout_and_retries_only_before_an_answer():
    vs, dr = docs(DEPLOY / "istio" / "cosyvoice.yaml")
    assert (vs["kind"], dr["kind"]) == ("VirtualService", "DestinationRule")
    rollout = next(d for _, d in k8s_docs() if d["kind"] == "Rollout")
    istio = rollout["spec"]["strategy"]["canary"]["trafficRouting"]["istio"]
    assert istio["virtualService"]["name"] == vs["metadata"]["name"]
    assert istio["destinationRule"]["name"] == dr["metadata"]["name"]
    routes = {r["name"]: r for r in vs["spec"]["http"]}
    primary = routes[istio["virtualService"]["routes"][0]]
    assert sum(d["weight"] for d in primary["route"]) == 100
    subsets = {s["name"] for s in dr["spec"]["subsets"]}
    assert {istio["destinationRule"]["canarySubsetName"], istio["destinationRule"]["stableSubsetName"]} == subsets
    for route in vs["spec"]["http"]:
        assert route["retries"]["perTryTimeout"] == "30s" and "5xx" not in route["retries"]["retryOn"]
        assert set(route["retries"]["retryOn"].split(",")) <= {"connect-failure", "reset", "refused-stream"}
    policy = dr["spec"]["trafficPolicy"]
    assert policy["outlierDetection"]["consecutive5xxErrors"] >= 1
    assert policy["loadBalancer"]["consistentHash"]["httpCookie"]["name"] == "cv_route"


def envoy_bootstrap(text: str, monkeypatch):
    import betterproto2

    # betterproto2 snake-cases keys again ("consecutive_5xx" -> "consecutive_5_xx"); Envoy's YAML already
    # uses the proto field names, so keep lower-case keys as they are.
    original = betterproto2.safe_snake_case
    monkeypatch.setattr(betterproto2, "safe_snake_case", lambda key: key if key == key.lower() else original(key))
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

    for type_url in set(re.findall(r"type\.googleapis\.com/([\w.]+)", text)):   # register typed_config types
        importlib.import_module("envoy_data_plane." + type_url.rsplit(".", 1)[0])
    return Bootstrap.from_dict(yaml.safe_load(text))


def test_envoy_config_parses_as_a_v3_bootstrap_with_the_policies(monkeypatch):
    boot = envoy_bootstrap((DEPLOY / "envoy" / "envoy.yaml").read_text(), monkeypatch)
    clusters = {c.name: c for c in boot.static_resources.clusters}
    for name in ("cosyvoice_stable", "cosyvoice_canary"):
        assert clusters[name].outlier_detection.consecutive_5xx >= 1
        assert clusters[name].circuit_breakers.thresholds[0].max_pending_requests > 0
    text = (DEPLOY / "envoy" / "envoy.yaml").read_text()
    assert "envoy.tracers.opentelemetry" in text and "json_format" in text
    assert text.count("per_try_timeout: 30s") == 2 and "5xx" not in re.findall(r"retry_on: (.*)", text)[0]


def test_envoy_validation_rejects_an_unknown_field(monkeypatch):
    text = (DEPLOY / "envoy" / "envoy.yaml").read_text().replace("max_pending_requests", "max_pending_requestz", 1)
    with pytest.raises(KeyError, match="max_pending_requestz"):
        envoy_bootstrap(text, monkeypatch)


KNOWN_INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                      "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def test_dockerfile_parses_and_follows_the_house_rules():
    import dockerfile

    commands = dockerfile.parse_file(str(DEPLOY / "docker" / "Dockerfile"))
    assert {c.cmd for c in commands} <= KNOWN_INSTRUCTIONS
    base = commands[0]
    assert base.cmd == "FROM" and re.fullmatch(r"nvidia/cuda:[0-9.]+-[a-z-]*runtime-ubuntu[0-9.]+", base.value[0])
    users = [c.value[0] for c in commands if c.cmd == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(c.cmd == "HEALTHCHECK" and "/health" in " ".join(c.value) for c in commands)
    assert all("apt-get install" not in " ".join(c.value) or "--no-install-recommends" in " ".join(c.value)
               for c in commands if c.cmd == "RUN")
    ignored = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {"pretrained_models", ".venv", "outputs", "logs"} <= set(ignored)


def test_compose_gives_each_instance_its_own_gpu_and_the_model_read_only():
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    services = {n: s for n, s in compose["services"].items()}
    gpus = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in services.values()]
    assert len(services) >= 2 and sorted(g[0] for g in gpus) == [str(i) for i in range(len(services))]
    for service in services.values():
        assert any(v.endswith(":/models:ro") for v in service["volumes"])
        assert len({v.split(":")[0] for v in service["volumes"] if "/data/" in v}) == 2   # own outputs + logs


def render_nginx(conf_dir: Path, **env) -> None:
    import os
    import subprocess

    settings = {"STABLE": "127.0.0.1:7861 127.0.0.1:7862", "CANARY": "127.0.0.1:7863", "LISTEN": "127.0.0.1:18080",
                **env}
    subprocess.run([str(DEPLOY / "nginx" / "render.sh"), str(conf_dir)], env={**os.environ, **settings},
                   check=True, capture_output=True)


def nginx_test(conf_dir: Path):
    import shutil
    import subprocess

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "Debian nginx is required: .ci/install-deploy-deps.sh"
    return subprocess.run([nginx, "-t", "-p", str(conf_dir), "-c", str(conf_dir / "nginx.conf")],
                          capture_output=True, text=True)


@pytest.mark.deploy
def test_rendered_nginx_config_passes_nginx_t_and_canary_sh_edits_only_the_weights(tmp_path):
    import subprocess

    render_nginx(tmp_path, NGINX_USER="root")
    assert nginx_test(tmp_path).returncode == 0, nginx_test(tmp_path).stderr
    upstreams = (tmp_path / "upstreams.conf").read_text()
    assert upstreams.count("hash $route_key consistent;") == 2 and upstreams.count("least_conn;") == 2
    assert "max_fails=2 fail_timeout=30s" in upstreams
    conf = (tmp_path / "nginx.conf").read_text()
    assert "proxy_buffering off;" in conf and "non_idempotent" not in conf.split("proxy_next_upstream ", 1)[1].split(";")[0]
    # Only synthesis POSTs are re-sent, only for failures before a response byte (never after a 5xx answer).
    synthesis = conf.split("location ~ ^/v1/audio/(speech|dialogue)$ {", 1)[1].split("}", 1)[0]
    assert "proxy_next_upstream error timeout non_idempotent;" in synthesis
    assert conf.count("non_idempotent;") == 1
    assert upstreams.count("keepalive 16;") == 2 and upstreams.count("keepalive_timeout 4s;") == 2
    before = {p.name: p.read_text() for p in tmp_path.glob("*.conf") if p.name != "canary-weight.conf"}
    canary = DEPLOY / "nginx" / "canary.sh"
    out = subprocess.run([str(canary), "--conf-dir", str(tmp_path), "set-weight", "25"], capture_output=True, text=True)
    assert out.returncode == 0 and "not running" in out.stdout, out.stderr
    assert "25% canary;" in (tmp_path / "canary-weight.conf").read_text()
    assert {p.name: p.read_text() for p in tmp_path.glob("*.conf") if p.name != "canary-weight.conf"} == before
    assert "canary weight: 25 %" in subprocess.run([str(canary), "--conf-dir", str(tmp_path), "status"],
                                                   capture_output=True, text=True).stdout
    bad = subprocess.run([str(canary), "--conf-dir", str(tmp_path), "set-weight", "-3"], capture_output=True, text=True)
    assert bad.returncode != 0 and "25% canary;" in (tmp_path / "canary-weight.conf").read_text()


VALIDATE = Path(__file__).resolve().parents[2] / "deploy" / "validate"


def _crd_check(*files: Path) -> subprocess.CompletedProcess:
    assert (VALIDATE / "node_modules").is_dir(), "run .ci/install-deploy-deps.sh (npm install in deploy/validate)"
    return subprocess.run(["node", str(VALIDATE / "crds.mjs"), *map(str, files)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.deploy
def test_argo_rollout_and_istio_objects_match_their_crd_schemas(tmp_path):
    root = VALIDATE.parent
    result = _crd_check(root / "k8s" / "rollout.yaml", root / "istio" / "cosyvoice.yaml")
    assert result.returncode == 0, result.stderr
    for kind in ("Rollout", "AnalysisTemplate", "VirtualService", "DestinationRule"):
        assert f": {kind} " in result.stdout
    broken = tmp_path / "rollout.yaml"
    broken.write_text((root / "k8s" / "rollout.yaml").read_text().replace("setWeight: ", "setWeight: x", 1))
    refused = _crd_check(broken)
    assert refused.returncode == 1 and "setWeight" in refused.stderr
