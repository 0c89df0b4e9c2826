from pathlib import Path

import pytest
import yaml

from voiceline.cli import main
from voiceline.config import ConfigError, Settings, expand_env, load_settings, parse_settings
from voiceline.wiring import build_parts, build_stream_params

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


def stream_problem(streaming: dict, **sections) -> str:
    settings, _ = parse_settings({"streaming": streaming, **sections}, env={})
    with pytest.raises(ConfigError) as err:
        build_stream_params(settings)
    assert len(err.value.problems) == 1
    return err.value.problems[0]


def test_cross_field_rules_of_the_streaming_core_are_reported_with_the_key():
    assert stream_problem({"low_watermark_ms": 200}).startswith(
        "streaming.low_watermark_ms: low_watermark_ms (200) must be below min_start_ms (120)")
    assert stream_problem({"max_buffer_ms": 100, "min_start_ms": 200, "low_watermark_ms": 40}).startswith(
        "streaming.max_buffer_ms: max_buffer_ms (100) must be >= min_start_ms (200)")
    assert stream_problem({"chunk_size_ms": 25}).startswith(
        "streaming.chunk_size_ms: chunk_size_ms must be a multiple of 10")
    assert stream_problem({"fallback_timeout_ms": 100}).startswith("streaming.fallback_timeout_ms:")


def test_stream_params_are_built_from_the_streaming_section_and_the_streaming_log_level():
    settings, _ = parse_settings({
        "streaming": {"min_start_ms": 200, "low_watermark_ms": 40, "max_buffer_ms": 5000},
        "logging": {"level": "WARNING", "levels": {"streaming": "DEBUG"}},
    }, env={})
    params = build_stream_params(settings)
    assert (params.min_start_ms, params.low_watermark_ms, params.max_buffer_ms) == (200, 40, 5000)
    assert params.logging_level == "DEBUG"
    # Without its own level the streaming core follows the root level.
    settings, _ = parse_settings({"logging": {"level": "ERROR"}}, env={})
    assert build_stream_params(settings).logging_level == "ERROR"


def test_check_config_reports_a_streaming_combination_by_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("streaming:\n  low_watermark_ms: 200\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["check-config", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid configuration in {bad}" in err
    assert "streaming.low_watermark_ms: low_watermark_ms (200) must be below" in err


def test_broken_script_rule_is_reported_with_its_key():
    settings, _ = parse_settings(
        {"providers": {"local": {"llm": {"rules": [{"match": ["ok"], "reply": "Fine."},
                                                   {"match": ["re:(unclosed"], "reply": "Broken."}]}}}},
        env={})
    with pytest.raises(ConfigError) as err:
        build_parts(settings)
    assert err.value.problems[0].startswith("providers.local.llm.rules[1].match[0]: 're:(unclosed'")


def test_old_key_names_still_work_with_a_deprecation_warning():
    settings, warnings = parse_settings(
        {"streaming": {"jitter_buffer_ms": 9000, "logging_level": "DEBUG"}}, env={})
    assert settings.streaming.max_buffer_ms == 9000
    assert settings.logging.levels == {"streaming": "DEBUG"}
    assert warnings == [
        "streaming.jitter_buffer_ms is deprecated: it is now streaming.max_buffer_ms (same meaning); rename it",
        "streaming.logging_level is deprecated: it is now logging.levels.streaming (same meaning); rename it",
    ]
    assert build_stream_params(settings).logging_level == "DEBUG"


def test_old_and_new_key_together_is_an_error():
    with pytest.raises(ConfigError) as err:
        parse_settings({"streaming": {"jitter_buffer_ms": 9000, "max_buffer_ms": 8000,
                                      "logging_level": "DEBUG"},
                        "logging": {"levels": {"streaming": "INFO"}}}, env={})
    assert err.value.problems == [
        "streaming.jitter_buffer_ms: renamed to streaming.max_buffer_ms, which is set too; keep only"
        " streaming.max_buffer_ms",
        "streaming.logging_level: renamed to logging.levels.streaming, which is set too; keep only"
        " logging.levels.streaming",
    ]


def test_shutdown_drain_timeout():
    assert Settings().shutdown.drain_timeout_s == 30.0
    settings, _ = parse_settings({"shutdown": {"drain_timeout_s": 5}}, env={})
    assert settings.shutdown.drain_timeout_s == 5.0
    with pytest.raises(ConfigError, match="shutdown.drain_timeout_s: Input should be greater than or equal to 0"):
        parse_settings({"shutdown": {"drain_timeout_s": -1}}, env={})
    with pytest.raises(ConfigError, match="shutdown.grace: unknown key"):
        parse_settings({"shutdown": {"grace": 1}}, env={})


def test_shipped_file_documents_exactly_the_model_defaults():
    # Defaults live in the models; the shipped file lists them for the operator.
    # With no environment set, the two must agree key for key.
    settings, _ = load_settings(SHIPPED, env={})
    assert settings.masked() == Settings().masked()
    assert settings.digest() == Settings().digest()


def test_cli_override_errors_are_named(tmp_path, capsys):
    path = tmp_path / "engine.yaml"
    path.write_text("mode: audiosocket\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--config", str(path), "--provider", "nope"])
    assert exit_info.value.code == 2
    assert "default_provider: unknown provider 'nope'" in capsys.readouterr().err


def test_bad_values_listed_together():
    with pytest.raises(ConfigError) as err:
        parse_settings({"mode": "sip", "audiosocket": {"port": 70000, "allowed_peers": ["nonsense"]}})
    problems = err.value.problems
    assert any(p.startswith("mode:") for p in problems)
    assert any(p.startswith("audiosocket.port:") for p in problems)
    assert any(p.startswith("audiosocket.allowed_peers:") and "nonsense" in p for p in problems)


def test_unknown_default_provider():
    with pytest.raises(ConfigError, match=r"default_provider: unknown provider 'nope'; one of \['deepgram', 'echo', 'local', 'openai_realtime'\]"):
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


def _missing_keys(model: type, written: dict, path: str = "") -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        if name not in written:
            missing.append(key)
            continue
        nested = [a for a in (getattr(field.annotation, "__args__", None) or (field.annotation,))
                  if isinstance(a, type) and hasattr(a, "model_fields")]
        if nested and isinstance(written[name], dict):
            missing.extend(_missing_keys(nested[0], written[name], key))
    return missing


def test_shipped_file_lists_every_key():
    # The shipped file is the operator's reference: every field of the contract is in it.
    written = yaml.safe_load(SHIPPED.read_text())
    assert _missing_keys(Settings, written) == []


def test_rate_choices_in_the_config_are_the_ones_the_engine_supports():
    """The config may not import the audio package (layers), so its rate choices are
    literals: they must stay equal to the tables the engine actually uses."""
    from typing import get_args

    from voiceline.audio.formats import SLIN_RATES
    from voiceline.audio.vad import VAD_RATES
    from voiceline.config.engine import AudioSocketSettings
    from voiceline.config.local_agent import LocalProviderSettings

    assert set(get_args(AudioSocketSettings.model_fields["sample_rate"].annotation)) == set(SLIN_RATES)
    assert set(get_args(LocalProviderSettings.model_fields["sample_rate"].annotation)) == set(VAD_RATES)


def test_realtime_priority_is_on_by_default_zero_turns_it_off_and_the_range_is_named():
    assert Settings().streaming.realtime_priority == 5
    settings, _ = parse_settings({"streaming": {"realtime_priority": 0}}, env={})
    assert settings.streaming.realtime_priority == 0
    for bad in (-1, 100):
        with pytest.raises(ConfigError) as err:
            parse_settings({"streaming": {"realtime_priority": bad}}, env={})
        assert "streaming.realtime_priority" in str(err.value) and str(bad) in str(err.value)
