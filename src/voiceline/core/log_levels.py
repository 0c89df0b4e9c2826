"""Log-level names the streaming core accepts, and the one "is debug on?" check.

Components take their own level (``streaming.logging_level``, the pacer's) so that
per-event debug lines can be enabled for one part without flooding the rest; the
hot path only tests a bool computed once from it.
"""

from __future__ import annotations

import logging

__all__ = ["LOG_LEVELS", "is_debug"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def is_debug(level: str) -> bool:
    """Whether ``level`` (a name such as "debug" or "INFO") lets DEBUG lines through."""
    value = logging.getLevelName(level.upper())
    return isinstance(value, int) and value <= logging.DEBUG
