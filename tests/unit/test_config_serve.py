"""`voiceline serve` refuses to start when it could only fail calls."""

from __future__ import annotations

import pytest

from voiceline import cli
from voiceline.app import App

CONFIG = """
mode: audiosocket
default_provider: deepgram
audiosocket: {port: 0}
http: {enabled: false}
history: {enabled: false}
providers:
  deepgram:
    api_key: ${DEEPGRAM_API_KEY}
"""


@pytest.fixture
def runs(monkeypatch) -> list[App]:
    """Replaces the serving loop: records the App that would have run, returns at once."""
    started: list[App] = []

    async def run_until_signalled(self: App) -> None:
        started.append(self)

    monkeypatch.setattr(App, "run_until_signalled", run_until_signalled)
    monkeypatch.setattr(cli, "_configure_logging", lambda settings: None)
    return started


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    path = tmp_path / "engine.yaml"
    path.write_text(CONFIG)
    return path


def test_serve_refuses_an_unusable_default_provider(config, runs, capsys) -> None:
    code = cli.main(["serve", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2
    assert runs == []
    assert "default provider 'deepgram'" in err
    assert "DEEPGRAM_API_KEY" in err and "--provider local" in err


def test_serve_starts_with_a_usable_override(config, runs) -> None:
    assert cli.main(["serve", "--config", str(config), "--provider", "echo"]) == 0
    assert len(runs) == 1 and runs[0].providers.default == "echo"


def test_serve_starts_when_the_key_is_set(config, runs, monkeypatch) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-key")
    assert cli.main(["serve", "--config", str(config)]) == 0
    assert len(runs) == 1 and runs[0].providers.default == "deepgram"


def test_serve_rejects_an_unknown_provider_override_by_key(config, runs, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--config", str(config), "--provider", "nope"])
    assert exit_info.value.code == 2
    assert "default_provider" in capsys.readouterr().err and runs == []


def test_serve_reports_a_renamed_key_on_stderr_and_in_the_log(tmp_path, runs, capsys) -> None:
    import structlog

    path = tmp_path / "old.yaml"
    path.write_text(CONFIG.replace("providers:", "streaming: {jitter_buffer_ms: 9000}\nproviders:"))
    with structlog.testing.capture_logs() as logs:
        assert cli.main(["serve", "--config", str(path), "--provider", "echo"]) == 0
    notice = "streaming.jitter_buffer_ms is deprecated: it is now streaming.max_buffer_ms"
    assert notice in capsys.readouterr().err
    assert any(e["event"] == "config_warning" and notice in e["detail"] for e in logs)
    assert runs[0].stream_params.max_buffer_ms == 9000
