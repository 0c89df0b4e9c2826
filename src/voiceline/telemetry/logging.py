"""Structured logging: JSON in production, readable key=value in a terminal.

Every component logs through ``structlog.get_logger("voiceline.<component>")``;
levels come from ``logging.level`` with per-component overrides in
``logging.levels`` (``logging.levels.streaming`` is the streaming core's; the
config still accepts its old name ``streaming.logging_level``).

Secrets never reach a log line: values of keys named like a secret are replaced
by ``***``, and so is the password part of any ``scheme://user:password@`` URL
in a string value (a database URL in an error message, say).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping

import structlog

_SECRET_KEYS = ("password", "api_key", "apikey", "token", "authorization", "secret")
# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+@")


def _redact_secrets(_logger: object, _name: str, event: dict) -> dict:
    for key, value in list(event.items()):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "***"
        elif isinstance(value, str) and "@" in value:
            event[key] = _URL_PASSWORD.sub(r"\1***@", value)
    return event


def configure_logging(level: str, fmt: str, component_levels: Mapping[str, str], stream=None) -> None:
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    # again: a formatted traceback is a new string that may quote a URL
                    _redact_secrets, renderer],
        foreign_pre_chain=shared,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel("WARNING")
    for component, component_level in component_levels.items():
        name = component if component.startswith("voiceline.") else f"voiceline.{component}"
        logging.getLogger(name).setLevel(component_level)
