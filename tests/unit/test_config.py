from pathlib import Path

import pytest

from voiceline.cli import main
from voiceline.config import ConfigError, expand_env, load_settings, parse_settings

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "ai-agent.yaml"


def test_shipped_config_is_valid_and_masks_secrets():
    env = {"ARI_PASSWORD": "s3cret", "DEEPGRAM_API_KEY": "dg", "OPENAI_API_KEY": "oa"}
    settings, missing = load_settings(SHIPPED, env=env)
    assert missing == []
    assert settings.asterisk.password.get_secret_value() == "s3cret"
    masked = settings.masked()
    assert masked["asterisk"]["password"] == "***"
    assert "s3cret" not in repr(masked)


def test_shipped_config_reports_unset_secret():
    _, missing = load_settings(SHIPPED, env={})
    assert any("asterisk.password" in m and "ARI_PASSWORD" in m for m in missing)


def test_env_expansion_with_defaults():
    env = {"A": "1", "EMPTY": ""}
    missing: list[str] = []
    out = expand_env({"x": "${A}", "y": ["${B:-two}", "p${EMPTY:-d}q"], "z": "${C}"}, env, missing=missing)
    assert out == {"x": "1", "y": ["two", "pdq"], "z": ""}
    assert missing == ["z: environment variable C is not set"]


def test_typo_key_is_named():
    with pytest.raises(ConfigError) as err:
        parse_settings({"asterisk": {"pasword": "x"}})
    assert "asterisk.pasword: unknown key" in str(err.value)


def test_negative_duration_is_named_with_value():
    with pytest.raises(ConfigError) as err:
        parse_settings({"streaming": {"provider_grace_ms": -5}})
    text = str(err.value)
    assert "streaming.provider_grace_ms" in text and "-5" in text and "greater than or equal to 0" in text


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="streaming: low_watermark_ms \\(200\\) must be below min_start_ms \\(120\\)"):
        parse_settings({"streaming": {"low_watermark_ms": 200}})
    with pytest.raises(ConfigError, match="jitter_buffer_ms"):
        parse_settings({"streaming": {"jitter_buffer_ms": 100, "min_start_ms": 200, "low_watermark_ms": 40}})
    with pytest.raises(ConfigError, match="streaming: chunk_size_ms must be a multiple of 10"):
        parse_settings({"streaming": {"chunk_size_ms": 25}})


def test_bad_values_listed_together():
    with pytest.raises(ConfigError) as err:
        parse_settings({"mode": "sip", "audiosocket": {"port": 70000, "allowed_peers": ["nonsense"]}})
    problems = err.value.problems
    assert any(p.startswith("mode:") for p in problems)
    assert any(p.startswith("audiosocket.port:") for p in problems)
    assert any(p.startswith("audiosocket.allowed_peers:") and "nonsense" in p for p in problems)


def test_unknown_default_provider():
    with pytest.raises(ConfigError, match="default_provider 'nope' is not one of"):
        parse_settings({"default_provider": "nope"})


def test_ari_url_shape():
    with pytest.raises(ConfigError, match="asterisk.ari_url"):
        parse_settings({"asterisk": {"ari_url": "http://127.0.0.1:8088/"}})


def test_check_config_cli_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("streaming:\n  min_start_ms: -1\nasterisk:\n  usernme: x\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["check-config", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "streaming.min_start_ms" in err and "asterisk.usernme" in err

    good = tmp_path / "good.yaml"
    good.write_text("asterisk:\n  password: hunter2\n")
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "password: '***'" in out


def test_yaml_syntax_error_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("streaming: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_settings(bad)
