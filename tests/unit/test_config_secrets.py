"""Config errors name the key and the problem, never a secret or an unknown key's value."""

from __future__ import annotations

import pytest

from voiceline.cli import main
from voiceline.config import ConfigError, parse_settings


def problems_of(data: dict, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        parse_settings(data, env=env or {})
    return str(err.value)


@pytest.mark.parametrize(
    ("data", "secret", "path"),
    [
        ({"asterisk": {"password": 123456}}, "123456", "asterisk.password"),
        ({"asterisk": {"password": ["hunter2"]}}, "hunter2", "asterisk.password"),
        ({"http": {"bearer_token": {"token": "tok-9f8e7d"}}}, "tok-9f8e7d", "http.bearer_token"),
        ({"http": {"bearer_token": 987654321}}, "987654321", "http.bearer_token"),
        ({"history": {"url": 31337}}, "31337", "history.url"),
        ({"providers": {"deepgram": {"api_key": 424242}}}, "424242", "providers.deepgram.api_key"),
        ({"providers": {"local": {"llm": {"api_key": 777111}}}}, "777111", "providers.local.llm.api_key"),
    ],
)
def test_invalid_secret_is_named_but_never_shown(data: dict, secret: str, path: str) -> None:
    text = problems_of(data)
    assert f"{path}:" in text
    assert secret not in text


@pytest.mark.parametrize(
    ("data", "value", "path"),
    [
        ({"providers": {"deepgram": {"apikey": "sk-live-123"}}}, "sk-live-123", "providers.deepgram.apikey"),
        ({"providers": {"openai_realtime": {"key": "sk-proj-abc"}}}, "sk-proj-abc", "providers.openai_realtime.key"),
        ({"providers": {"local": {"llm": {"token": "tok-local"}}}}, "tok-local", "providers.local.llm.token"),
        ({"asterisk": {"pasword": "hunter2"}}, "hunter2", "asterisk.pasword"),
        ({"nonsense": {"secret": "s3cr3t"}}, "s3cr3t", "nonsense"),
    ],
)
def test_unknown_key_is_named_without_its_value(data: dict, value: str, path: str) -> None:
    text = problems_of(data)
    assert f"{path}: unknown key" in text
    assert value not in text


def test_value_from_the_environment_is_not_echoed() -> None:
    # A secret put into the wrong (non-secret) field by mistake: the message points at
    # the variable, not at its value.
    text = problems_of({"providers": {"deepgram": {"url": "${DEEPGRAM_API_KEY}"}}},
                       env={"DEEPGRAM_API_KEY": "dg-secret-55"})
    assert "providers.deepgram.url:" in text and "${DEEPGRAM_API_KEY}" in text
    assert "dg-secret-55" not in text


def test_plain_values_are_still_shown() -> None:
    text = problems_of({"streaming": {"provider_grace_ms": -5}})
    assert "streaming.provider_grace_ms" in text and "-5" in text


def test_check_config_never_prints_secrets(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "asterisk:\n  password: 123456\n"
        "http:\n  bearer_token: [tok-abc]\n"
        "providers:\n  deepgram:\n    apikey: sk-live-123\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["check-config", str(bad)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    for path in ("asterisk.password", "http.bearer_token", "providers.deepgram.apikey"):
        assert path in text
    for secret in ("123456", "tok-abc", "sk-live-123"):
        assert secret not in text


def test_shown_config_masks_secret_headers_of_functions() -> None:
    settings, _ = parse_settings({"providers": {"deepgram": {"functions": [
        {"name": "lookup", "endpoint": {"url": "https://crm.example/lookup",
                                        "headers": {"Authorization": "Bearer crm-key-1", "Accept": "json"}}},
    ]}}}, env={})
    headers = settings.masked()["providers"]["deepgram"]["functions"][0]["endpoint"]["headers"]
    assert headers == {"Authorization": "***", "Accept": "json"}
    # The provider still gets the real value.
    assert settings.providers.deepgram.functions[0].endpoint["headers"]["Authorization"] == "Bearer crm-key-1"


@pytest.fixture
def log_stream():
    """configure_logging into a buffer; the previous logging setup is restored after."""
    import io
    import logging

    import structlog

    from voiceline.telemetry.logging import configure_logging

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_config = structlog.get_config()
    stream = io.StringIO()
    configure_logging("INFO", "json", {}, stream=stream)
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    structlog.configure(**saved_config)


def test_log_lines_never_carry_url_passwords_or_secret_fields(log_stream) -> None:
    import logging

    import structlog

    structlog.get_logger("voiceline.test").warning(
        "history_unreachable", url="postgresql+psycopg://calls:pw-93jd@db.example/calls", api_key="sk-zz")
    try:
        raise ConnectionError("cannot reach postgresql://calls:pw-93jd@db.example/calls")
    except ConnectionError:
        logging.getLogger("voiceline.test").exception("stdlib line with a traceback")
    text = log_stream.getvalue()
    assert "history_unreachable" in text and "stdlib line with a traceback" in text
    assert "postgresql+psycopg://calls:***@db.example/calls" in text
    assert "pw-93jd" not in text and "sk-zz" not in text
