"""`voiceline serve` with `workers: 2` in audiosocket mode, as a process, against the Deepgram
simulator: calls spread over both workers, each a full engine; the supervisor's /metrics
and /health sum them; every call lands in the shared SQLite history; SIGTERM drains;
a killed worker is started again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from voiceline.sim.audiosocket_caller import CallerLeg
from voiceline.telemetry.history import HistoryStore

pytestmark = pytest.mark.espeak  # the simulator speaks with espeak-ng

REPO = Path(__file__).resolve().parents[2]
CALLS = 12  # spread by the kernel's hash: all on one worker has odds 2**-11
WAIT_S = 20.0


def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def async_wait_until(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a concurrent writer would show up as missing events below
    return events


def named(path: Path, event: str) -> list[dict[str, Any]]:
    return [e for e in log_events(path) if e.get("event") == event]


@dataclass
class Engine:
    proc: subprocess.Popen
    log: Path
    audiosocket_port: int
    http_port: int
    history_url: str

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def health(self) -> dict[str, Any]:
        return json.loads(self.get("/health")[1])


@pytest.fixture
def sim_url(tmp_path) -> Iterator[str]:
    out = tmp_path / "sim.log"
    with out.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "voiceline.sim.deepgram_sim", "--port", "0"],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        marker = "deepgram simulator on "
        line = wait_until(lambda: next((l for l in out.read_text().splitlines() if marker in l), None),
                          "the simulator to listen")
        yield line.split(marker, 1)[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def engine(tmp_path, sim_url) -> Iterator[Engine]:
    history_url = f"sqlite:///{tmp_path / 'calls.db'}"
    config = tmp_path / "engine.yaml"
    config.write_text(f"""
mode: audiosocket
default_provider: deepgram
workers: 2
audiosocket: {{port: 0}}
http: {{port: 0}}
history: {{url: "{history_url}"}}
logging: {{format: json}}
shutdown: {{drain_timeout_s: 10}}
providers:
  deepgram: {{url: "{sim_url}", api_key: test-key}}
""")
    log = tmp_path / "engine.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICELINE_")}
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "voiceline.cli", "serve", "--config", str(config)],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        started = wait_until(lambda: named(log, "voiceline_started") or proc.poll() is not None,
                             "voiceline_started")
        assert proc.poll() is None, log.read_text()
        (http,) = named(log, "http endpoint listening")
        port = int(started[0]["audiosocket"].rsplit(":", 1)[1])
        yield Engine(proc, log, port, int(http["port"]), history_url)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGTERM)  # the second: calls end at once
            proc.wait(20)


async def call_until_agent_speaks(port: int) -> CallerLeg:
    """One call: like Asterisk, caller audio every 20 ms; returns once agent speech arrived."""
    leg = CallerLeg("127.0.0.1", port)
    await leg.connect()
    talking = asyncio.create_task(leg.send_silence(WAIT_S))
    try:
        await async_wait_until(lambda: any(f.payload.strip(b"\x00") for f in leg.audio_frames()),
                               f"agent audio on call {leg.call_uuid}")
    finally:
        talking.cancel()
    return leg


def test_calls_spread_over_the_workers_counted_recorded_and_drained(engine: Engine):
    started = named(engine.log, "voiceline_started")[0]
    assert started["workers"] == 2 and len(set(started["worker_pids"])) == 2

    async def place_calls() -> list[CallerLeg]:
        legs = await asyncio.gather(*(call_until_agent_speaks(engine.audiosocket_port) for _ in range(CALLS)))
        for leg in legs:
            await leg.hangup()
        return list(legs)

    legs = asyncio.run(place_calls())
    call_ids = {leg.call_uuid for leg in legs}
    summaries = wait_until(lambda: (s := named(engine.log, "call_summary")) and len(s) >= CALLS and s,
                           "a call_summary per call")
    assert {s["call_id"] for s in summaries} == call_ids
    # both worker processes took calls, and every line of a call names its worker
    per_worker = Counter(s["worker"] for s in summaries)
    assert set(per_worker) == {0, 1}, per_worker
    assert all("worker" in e for e in log_events(engine.log) if e.get("call_id") in call_ids)
    health = engine.health()
    assert [(w["index"], w["pid"], w["up"]) for w in health["workers"]] == [
        (0, started["worker_pids"][0], True), (1, started["worker_pids"][1], True)]
    assert health["active_calls"] == 0 and health["status"] == "ok"

    # the supervisor's /metrics is the sum over the workers
    status, metrics = engine.get("/metrics")
    assert status == 200
    assert f'ai_agent_calls_total{{provider="deepgram"}} {float(CALLS)}' in metrics.splitlines()
    assert "ai_agent_active_calls 0.0" in metrics.splitlines()

    # every worker wrote its calls to the one history
    store = HistoryStore(engine.history_url)
    recorded = wait_until(lambda: (rows := store.list_calls(100)) and len(rows) >= CALLS and rows,
                          "the history records")
    assert {r["call_id"] for r in recorded} == call_ids
    store.close()

    # SIGTERM with calls live: not ready any more, the calls go on until they hang up, exit 0
    async def drain_with_live_calls() -> None:
        live = [await call_until_agent_speaks(engine.audiosocket_port) for _ in range(2)]
        engine.proc.send_signal(signal.SIGTERM)
        await async_wait_until(lambda: engine.get("/ready")[0] == 503, "/ready 503 while draining")
        assert json.loads(engine.get("/ready")[1])["checks"]["taking_calls"]["detail"] == "draining"
        heard = [len(leg.audio_frames()) for leg in live]
        await asyncio.gather(*(leg.send_silence(0.3) for leg in live))
        assert all(leg.closed_reason is None for leg in live)  # not cut off by the drain...
        assert all(len(leg.audio_frames()) > n for leg, n in zip(live, heard, strict=True))  # ...still served
        for leg in live:
            await leg.hangup()

    asyncio.run(drain_with_live_calls())
    assert engine.proc.wait(20) == 0
    assert {e["worker"] for e in named(engine.log, "worker_exited")} == {0, 1}
    assert all(e["exit_code"] == 0 for e in named(engine.log, "worker_exited"))
    assert len(named(engine.log, "call_summary")) == CALLS + 2


def test_a_killed_worker_is_logged_and_started_again(engine: Engine):
    old_pid = named(engine.log, "voiceline_started")[0]["worker_pids"][0]
    os.kill(old_pid, signal.SIGKILL)
    died = wait_until(lambda: named(engine.log, "worker_died"), "worker_died")
    assert (died[0]["worker"], died[0]["pid"], died[0]["exit_code"]) == (0, old_pid, -signal.SIGKILL)
    up = wait_until(lambda: [e for e in named(engine.log, "worker_up") if e.get("restarts") == 1], "the restart")
    new_pid = up[0]["pid"]
    assert new_pid != old_pid
    worker = engine.health()["workers"][0]
    assert (worker["pid"], worker["up"], worker["restarts"], worker["exit_code"]) == (new_pid, True, 1, -9)

    async def one_call() -> None:
        leg = await call_until_agent_speaks(engine.audiosocket_port)
        await leg.hangup()

    asyncio.run(one_call())  # calls still work after the restart
