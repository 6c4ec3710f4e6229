"""Many instances sharing jobs (issue 20): every pod template takes the job database URL from a Secret
(never from its command line) and keeps job files on one ReadWriteMany volume; the app reads that URL
from COSYVOICE_JOBS_DB and never writes its password to the log."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import yaml

from conftest import ROOT
from cosyvoice.jobs.router import runtime_from_config
from cosyvoice.ops.log import masked_argv
from cosyvoice.settings import configs_from

JOBS_DB_ENV = "COSYVOICE_JOBS_DB"

K8S = ROOT / "deploy" / "k8s"


def k8s_docs() -> list[dict]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def test_every_pod_takes_the_jobs_database_from_a_secret_and_shares_one_rwx_jobs_volume():
    claims = {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == "PersistentVolumeClaim"}
    templates = [d["spec"]["template"]["spec"] for d in k8s_docs() if d["kind"] in ("Deployment", "Rollout")]
    assert len(templates) == 2
    for pod in templates:
        container = pod["containers"][0]
        args = container["args"]
        assert "--jobs-db" not in args and not any("postgresql" in a for a in args)    # no password in argv
        env = {e["name"]: e for e in container["env"]}
        secret = env[JOBS_DB_ENV]["valueFrom"]["secretKeyRef"]
        assert secret["name"] and secret["key"] and not secret.get("optional")   # no silent SQLite per pod
        jobs_dir = args[args.index("--jobs-dir") + 1]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == jobs_dir)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert not mount.get("readOnly")


def test_the_app_reads_the_jobs_database_url_from_the_environment(tmp_path):
    service = SimpleNamespace(admission=SimpleNamespace(width=2),
                              config=SimpleNamespace(max_text_chars=300, outputs_dir=tmp_path / "outputs"))
    shared = tmp_path / "shared.db"
    environ = {JOBS_DB_ENV: f"sqlite:///{shared}"}
    config = configs_from(["--jobs-dir", str(tmp_path / "jobs")], environ).jobs
    runtime = runtime_from_config(service, config)
    assert runtime.store.url == f"sqlite:///{shared}" and shared.is_file()
    assert not (tmp_path / "jobs" / "jobs.db").exists()
    flagged = configs_from(["--jobs-db", f"sqlite:///{tmp_path / 'flag.db'}"], environ).jobs   # the flag wins
    assert runtime_from_config(service, flagged).store.url.endswith("flag.db")


def test_a_database_password_on_the_command_line_never_reaches_the_log():
    shown = " ".join(masked_argv(["--jobs-db", "postgresql://studio:s3cret-Pw@db:5432/jobs",
                                  "--jobs-db=postgresql+psycopg://u:p%40ss@h/db", "--port", "7860"]))
    assert "s3cret" not in shown and "p%40ss" not in shown
    assert "postgresql://studio:***@db:5432/jobs" in shown and "7860" in shown


def test_readme_and_deploy_readme_document_the_many_instance_setup():
    for doc in (ROOT / "README.md", ROOT / "deploy" / "README.md"):
        text = Path(doc).read_text(encoding="utf-8")
        assert JOBS_DB_ENV in text and "ReadWriteMany" in text and "cosyvoice-jobs-db" in text, doc
