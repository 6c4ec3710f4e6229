"""Settings declared once: every config field a user can set shows in `python app.py --help` with its
default and environment variable, a variable is honoured and a flag beats it, and no module but
cosyvoice/settings.py touches the process environment."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from cosyvoice import settings
from cosyvoice.settings import EngineConfig, ServerConfig, ServiceConfig, StartupError, configs_from, flag_of

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = (ServerConfig, EngineConfig, ServiceConfig)


def declared():
    return [(config, f) for config in CONFIGS for f in fields(config) if "setting" in f.metadata]


@pytest.fixture(scope="module")
def help_text() -> str:
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=settings.child_env(COLUMNS="2000"))
    assert done.returncode == 0, done.stderr
    return done.stdout


def help_entry(help_text: str, flag: str) -> str:
    """The flag's block in --help: its line and the help lines under it, up to the next flag."""
    match = re.search(rf"^  {re.escape(flag)}\b.*?(?=^  -|\Z)", help_text, re.MULTILINE | re.DOTALL)
    assert match, f"{flag} is not in --help"
    return " ".join(match.group(0).split())


def test_every_setting_is_in_help_with_its_default_and_variable(help_text):
    assert len(declared()) >= 35
    for config, f in declared():
        entry = help_entry(help_text, flag_of(f))
        default = f.default
        shown = "none" if default in (None, ()) else str(default)
        assert f"default: {shown})" in entry, (flag_of(f), entry)
        env = f.metadata["setting"]["env"]
        if env:
            assert f"env: {env};" in entry, (flag_of(f), entry)


def test_todays_flags_keep_their_names_and_defaults():
    config = configs_from([], {})
    assert (config.server.host, config.server.port, config.server.grace_seconds) == ("127.0.0.1", 7860, 30.0)
    assert config.server.max_upload_mb == 25.0 and config.server.allow_origin == ()
    assert (config.engine.engine, config.engine.cuda_graphs, config.engine.batch_slots) == ("auto", True, None)
    assert (config.service.queue_size, config.service.workers, config.service.retention_days) == (8, None, 7.0)
    assert config.service.outputs_dir == ROOT / "outputs" and config.server.log_dir == ROOT / "logs"
    given = configs_from(["--concurrency", "3", "--outputs-retention-days", "2", "--loudness", "-16",
                          "--no-cuda-graphs", "--allow-origin", "https://a.example", "--allow-origin",
                          "https://b.example", "--public-metrics"], {})
    assert (given.service.workers, given.service.retention_days, given.service.loudness_lufs) == (3, 2.0, -16.0)
    assert given.engine.cuda_graphs is False and given.server.public_metrics is True
    assert given.server.allow_origin == ("https://a.example", "https://b.example")


def test_a_variable_is_honoured_and_a_flag_beats_it():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SERVICE_NAME": "tts-a",
           "COSYVOICE_INSTANCE": "gpu-3", "COSYVOICE_TEST_WARMUP_DELAY_S": "4", "COSYVOICE_AUTH": "ann:pw"}
    from_env = configs_from([], env).server
    assert (from_env.otlp_endpoint, from_env.otel_service_name, from_env.instance_name) == \
        ("http://collector:4318", "tts-a", "gpu-3")
    assert from_env.warmup_delay_s == 4.0 and from_env.auth == "ann:pw"
    flagged = configs_from(["--otel-service-name", "tts-b", "--test-warmup-delay-s", "0", "--auth", "bob:pw2"], env)
    assert (flagged.server.otel_service_name, flagged.server.warmup_delay_s, flagged.server.auth) == \
        ("tts-b", 0.0, "bob:pw2")
    assert any("--auth on the command line" in warning for warning in flagged.warnings)


def test_a_malformed_variable_stops_the_start_with_its_name():
    with pytest.raises(StartupError, match="COSYVOICE_TEST_WARMUP_DELAY_S='soon'"):
        configs_from([], {"COSYVOICE_TEST_WARMUP_DELAY_S": "soon"})


def test_the_configs_are_frozen():
    config = configs_from([], {})
    for part in (config.engine, config.service, config.server):
        with pytest.raises(AttributeError):
            part.__setattr__(fields(part)[0].name, None)


def environment_uses(path: Path) -> list[str]:
    """`os.environ`, `os.getenv`, `os.putenv` and `from os import environ/getenv` in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "environb", "getenv", "putenv", "unsetenv") \
                and isinstance(node.value, ast.Name) and node.value.id == "os":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} os.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [f"{path.relative_to(ROOT)}:{node.lineno} from os import {alias.name}" for alias in node.names
                      if alias.name in ("environ", "environb", "getenv", "putenv", "unsetenv")]
    return found


def test_no_module_but_settings_reads_the_environment():
    sources = sorted((ROOT / "cosyvoice").rglob("*.py")) + [ROOT / "app.py"]
    assert len(sources) > 40
    assert environment_uses(ROOT / "cosyvoice" / "settings.py"), "the check must see settings' own reads"
    offenders = [use for path in sources if path.name != "settings.py" or path.parent.name != "cosyvoice"
                 for use in environment_uses(path)]
    assert offenders == []


def test_the_readme_flags_paragraph_lists_every_flag_and_variable():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("  Flags (declared once in `cosyvoice/settings.py`")
    paragraph = readme[start:readme.index("\n- ", start)]
    for _, f in declared():
        assert re.search(rf"{re.escape(flag_of(f))}(?![\w-])", paragraph), f"README's flags miss {flag_of(f)}"
        env = f.metadata["setting"]["env"]
        assert env is None or f"${env}" in paragraph, f"README's flags miss ${env}"
