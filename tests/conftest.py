"""Fixtures and markers shared by every test directory.

* ``@pytest.mark.espeak`` marks a test that needs the ``espeak-ng`` binary (real
  synthesized speech). Where it is missing the test FAILS with the fix, it is never
  skipped: a green run must mean the speech paths were exercised.
* ``fake_clock``: a monotonic seconds clock that only moves when the test moves it,
  for the pure cores and the pacer (time is injected, tests never sleep).
* ``loop_errors``: everything that reaches the running loop's exception handler
  (an exception nobody retrieved, a task destroyed while pending) during the test.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

ESPEAK = "espeak-ng"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"espeak: needs {ESPEAK} for real synthesized speech; fails (never skips) where it is missing",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("espeak") is not None and shutil.which(ESPEAK) is None:
        pytest.fail(
            f"{item.nodeid} needs {ESPEAK}, which is not on PATH (apt-get install espeak-ng)",
            pytrace=False,
        )


class FakeClock:
    """Monotonic seconds that only move when told: ``clock()`` reads, ``clock.t = x``
    or ``clock.advance(dt)`` moves it (never backwards)."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = start

    def __call__(self) -> float:
        return self._t

    @property
    def t(self) -> float:
        return self._t

    @t.setter
    def t(self, value: float) -> None:
        if value < self._t:
            raise ValueError(f"a monotonic clock cannot go back from {self._t} to {value}")
        self._t = value

    def advance(self, dt: float) -> float:
        self.t = self._t + dt
        return self._t


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


class LoopErrors(list[dict[str, Any]]):
    """Contexts the loop's exception handler received."""

    def assert_clean(self) -> None:
        gc.collect()  # surfaces "Task exception was never retrieved" from dropped tasks
        assert not self, [c.get("message") or repr(c.get("exception")) for c in self]


@pytest.fixture
async def loop_errors() -> AsyncIterator[LoopErrors]:
    loop = asyncio.get_running_loop()
    errors = LoopErrors()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)
