"""End-to-end fixtures: the real lab Asterisk (built by lab/setup.sh) and the engine
running as the operator runs it (`voiceline serve`), in a subprocess."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

import labkit
from stallwitness import PacingVerdict, StallWitness, judge

ARI_PASSWORD = "voiceline-lab"
ENGINE_RT_PRIORITY = 5  # SCHED_RR; the lab Asterisk runs at 10 (asterisk -p)


def _realtime_priority() -> None:
    # RESET_ON_FORK: the engine's helpers (pocketsphinx workers, espeak-ng) run at
    # normal priority and cannot crowd out the event loop.
    os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(ENGINE_RT_PRIORITY))


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def lab_lock():
    """One end-to-end session at a time on this machine: the lab Asterisk, its SIP and
    ARI ports and the engine's listeners are shared, so a second run waits here."""
    path = REPO / "lab" / ".cache" / "e2e.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def asterisk(lab_lock):
    reason = labkit.lab_unavailable_reason()
    if reason:
        pytest.fail(f"the end-to-end lab cannot run here: {reason} (run the suite as root via scripts/test.sh)")
    labkit.ensure_lab()
    lab = labkit.AsteriskLab(ari_password=ARI_PASSWORD)
    lab.start()
    yield lab
    lab.stop()


@pytest.fixture
def stall_witness():
    """Records stalls of the whole machine for the test (lab/stallwitness.py), so
    timing assertions can tell them from late packets the engine sent."""
    with StallWitness() as witness:
        yield witness


def assert_paced(packets: list, witness: StallWitness, limit_ms: float = 25.0) -> PacingVerdict:
    """Every gap over ``limit_ms`` between packets the caller received is one the
    machine stalled for (the witness saw it), not one the engine caused. Prints how
    many gaps the stalls excused, so a pass that leaned on the witness says so."""
    arrivals = [p.time for p in packets]
    verdict = judge(arrivals, witness.stalls, limit_ms=limit_ms)
    for gap in verdict.excused + verdict.unexplained:
        print(f"gap before packet {gap.index}: {gap.delta_ms:.1f} ms, "
              f"stalls excuse {gap.explained_by_ms:.1f} ms of it")
    print(f"pacing: {len(packets)} packets, {verdict.describe()}")
    bad = verdict.unexplained
    assert not bad, (
        f"{len(bad)} inter-packet gap(s) over {limit_ms} ms that no machine stall explains: "
        + ", ".join(f"#{g.index} {g.delta_ms:.1f} ms (stalled {g.explained_by_ms:.1f})" for g in bad[:5])
    )
    return verdict


class EngineProcess:
    """`voiceline serve` in a subprocess; its JSON log lines are collected as dicts."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.records: list[dict] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "voiceline"), "serve", *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            # As deployed (docs/resilience.md): the engine's 20 ms clock runs at
            # real-time priority, below Asterisk's own (-p), so that sipp, tshark, the
            # simulators and the suite on the same two cores cannot delay a tick.
            preexec_fn=_realtime_priority,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log_path, "w") as sink:
            for line in self.proc.stdout:
                sink.write(line)
                sink.flush()
                with self._lock:
                    self.raw.append(line)
                    if line.startswith("{"):
                        try:
                            self.records.append(json.loads(line))
                        except json.JSONDecodeError:
                            pass  # a partial line is kept in `raw` for the failure message

    def events(self, name: str, **match) -> list[dict]:
        with self._lock:
            return [r for r in self.records if r.get("event") == name
                    and all(r.get(k) == v for k, v in match.items())]

    def wait_for(self, name: str, timeout: float = 15.0, count: int = 1, **match) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name, **match)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"engine log has no {count}x {name!r} {match or ''} within {timeout}s "
            f"(exit={self.proc.poll()}):\n" + "".join(self.raw[-40:])
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def engine(asterisk, tmp_path):
    """Start the engine: engine(mode, provider, **env) -> EngineProcess (stopped at teardown)."""
    started: list[EngineProcess] = []

    def start(mode: str = "ari", provider: str = "echo", config: str = "config/ai-agent.yaml",
              extra_args: tuple[str, ...] = (), **env_extra: str) -> EngineProcess:
        env = dict(os.environ)
        env.update({
            "ARI_PASSWORD": ARI_PASSWORD,
            "VOICELINE_FALLBACK_DIR": str(asterisk.root / "var/lib/asterisk/sounds/voiceline"),
            "VOICELINE_HISTORY_URL": f"sqlite:///{tmp_path}/calls.db",
            "VOICELINE_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(env_extra)
        proc = EngineProcess(["--config", config, "--mode", mode, "--provider", provider, *extra_args],
                             env, tmp_path / f"engine-{len(started)}.log")
        started.append(proc)
        proc.wait_for("voiceline_started")
        if mode == "ari":
            proc.wait_for("ari.events.connected")
        return proc

    yield start
    for proc in started:
        proc.stop()


def asterisk_channels(lab) -> int:
    """Active channels according to Asterisk itself."""
    out = lab.cli("core show channels count")
    for line in out.splitlines():
        if "active channel" in line:
            return int(line.split()[0])
    raise AssertionError(f"unexpected 'core show channels count' output: {out!r}")


def asterisk_bridges(lab) -> list[str]:
    out = lab.cli("bridge show all")
    return [line for line in out.splitlines() if line and not line.startswith(("Bridge-ID", "Bridge Id"))
            and "bridges" not in line.lower()]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def deepgram_sim(tmp_path):
    """Start the Deepgram protocol simulator in a subprocess: deepgram_sim(*args) -> ws URL."""
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> str:
        port = free_port()
        log = open(tmp_path / f"deepgram-sim-{port}.log", "w")
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "python"), "-m", "voiceline.sim.deepgram_sim", "--port", str(port), *args],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        import socket

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"deepgram simulator exited: {(tmp_path / f'deepgram-sim-{port}.log').read_text()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return f"ws://127.0.0.1:{port}/v1/agent/converse"
            time.sleep(0.1)
        raise AssertionError("deepgram simulator did not start listening")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
