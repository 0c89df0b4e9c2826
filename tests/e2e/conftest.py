"""End-to-end fixtures: the real lab Asterisk (built by lab/setup.sh) and the engine
running as the operator runs it (`voiceline serve`), in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

import labkit
from stallwitness import PacingVerdict, StallWitness, judge

ARI_PASSWORD = "voiceline-lab"


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def lab_lock():
    """One end-to-end session at a time on this machine: the lab Asterisk, its SIP and
    ARI ports and the engine's listeners are shared, so a second run waits here."""
    with labkit.lab_lock():
        yield


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


def log_epoch(record: dict) -> float:
    """When the engine wrote a JSON log record, as a Unix time."""
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


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
            # As deployed (docs/resilience.md): at normal priority; the engine's pacer
            # raises itself to real time (streaming.realtime_priority, below the lab
            # Asterisk's -p) for each tick's spin and writes, so that sipp, tshark, the
            # simulators and the suite on the same two cores cannot delay a frame.
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


# ---------------------------------------------------------------------------------------
# Fault-injection helpers: what every fault case checks once the dust has settled.

HTTP_URL = "http://127.0.0.1:9091"


def http_get(path: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET on the engine's telemetry server; (status, body), 503 included."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(HTTP_URL + path, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def ari_leftovers(lab) -> tuple[list[str], list[str]]:
    """(channels, bridges) Asterisk still has, as 'id name' strings (ARI GET)."""
    channels = [f"{c['id']} {c.get('name', '')}" for c in lab.ari_get("channels")]
    bridges = [f"{b['id']} {b.get('name', '')} channels={b.get('channels', [])}" for b in lab.ari_get("bridges")]
    return channels, bridges


def assert_nothing_left_in_asterisk(lab, timeout: float = 10.0) -> None:
    try:
        wait_until(lambda: ari_leftovers(lab) == ([], []), timeout, "Asterisk to have no channels and no bridges")
    except AssertionError:
        channels, bridges = ari_leftovers(lab)
        raise AssertionError(f"left in Asterisk after {timeout:g} s: channels {channels}, bridges {bridges}") from None


def history_url(tmp_path: Path) -> str:
    """The history database the ``engine`` fixture gives the engine."""
    return f"sqlite:///{tmp_path}/calls.db"


def history_rows(url: str) -> dict[str, dict]:
    from voiceline.telemetry.history import HistoryStore

    store = HistoryStore(url)
    try:
        return {row["call_id"]: row for row in store.list_calls(limit=100_000)}
    finally:
        store.close()


def proc_usage(pid: int) -> tuple[float, int]:
    """(resident set size in MiB, open file descriptors) of a process, from /proc."""
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return rss_kib / 1024.0, len(os.listdir(f"/proc/{pid}/fd"))


def fd_breakdown(pid: int, ari_port: int = 8088) -> dict[str, int]:
    """The process's open fds by kind: ``ari_pool`` (TCP connections to Asterisk's
    HTTP/ARI port: the HTTP client's keep-alive pool and the events websocket),
    ``tcp`` (other TCP sockets), ``other`` (files, pipes, epoll, ...)."""
    remote_of: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            remote_of[cols[9]] = int(cols[2].rsplit(":", 1)[1], 16)
    kinds = {"ari_pool": 0, "tcp": 0, "other": 0}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed while we looked
        inode = target[len("socket:["):-1] if target.startswith("socket:[") else None
        if inode is not None and inode in remote_of:
            kinds["ari_pool" if remote_of[inode] == ari_port else "tcp"] += 1
        else:
            kinds["other"] += 1
    return kinds


def assert_calls_ended_cleanly(proc: EngineProcess, lab, url: str, call_ids: list[str],
                               history_timeout: float = 15.0) -> dict[str, str]:
    """What every fault case asserts at its end: the engine still runs, each call
    ended with a logged reason, Asterisk holds nothing, /metrics has no per-call
    series left, and the history has a record of every call. Returns call -> reason."""
    assert proc.proc.poll() is None, "the engine process died:\n" + "".join(proc.raw[-40:])
    reasons = {}
    for call_id in call_ids:
        ended = proc.wait_for("call_ended", call_id=call_id, timeout=20)
        reason = ended[0].get("reason")
        assert isinstance(reason, str) and reason, f"call {call_id} ended without a reason: {ended[0]}"
        reasons[call_id] = reason
    assert_nothing_left_in_asterisk(lab)
    status, metrics = http_get("/metrics")
    assert status == 200
    left = sorted({line.split("{")[0] for line in metrics.splitlines() if 'call_id="' in line})
    assert not left, f"per-call metric series left after the calls: {left}"
    wait_until(lambda: not (set(call_ids) - set(history_rows(url))), history_timeout,
               "a history record of every call")
    return reasons


def derived_config(tmp_path: Path, replacements: dict[str, str], name: str = "ai-agent.yaml") -> str:
    """config/ai-agent.yaml with exact text replacements (each must match once)."""
    text = (REPO / "config" / "ai-agent.yaml").read_text()
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in config/ai-agent.yaml"
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def swept_asterisk(asterisk):
    """The lab Asterisk, swept clean after the test: a fault test that failed must not
    leave channels or bridges that fail the next one. What was swept is printed."""
    yield asterisk
    if asterisk.running():
        removed = asterisk.sweep()
        if removed:
            print(f"\nswept from Asterisk after the test: {removed}")
