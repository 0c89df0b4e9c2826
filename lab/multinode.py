"""Multi-node lab: Kamailio's dispatcher in front of two Asterisk + voiceline nodes
sharing one PostgreSQL call history, each node in its own network namespace.

Topology (all addresses in a private subnet that exists only between the
namespaces this module creates; nothing is added to the machine's own network)::

    namespace vlmn-hub                         namespace vlmn-n1 / vlmn-n2
    bridge vlmn-br 10.77.0.1/24                eth0 10.77.0.11/24 | 10.77.0.12/24
      Kamailio   udp 10.77.0.1:5060  --SIP-->    Asterisk  udp :5060, http 127.0.0.1:8088
      PostgreSQL tcp 10.77.0.1:5432  <--SQL--    voiceline serve --mode ari
      SIPp (the callers) 10.77.0.1:5070+ <-RTP->   telemetry http <node>:9091 (scraped from the hub)

Each node's Asterisk runs chrooted in an overlay of the lab root (lab/.cache/root,
built by lab/setup.sh) with its own upper layer, so /etc/asterisk and /var of the two
nodes are separate and the lab root itself is never written. The test process talks to
PostgreSQL over its Unix socket and to everything else with ``ip netns exec``.

    with Multinode(work_dir) as mn:       # network, PostgreSQL, Kamailio, both nodes
        mn.place_calls(20, audio, 3.0, rate=5, limit=10)
        mn.scrape(mn.nodes[0])            # Prometheus text of node 1's /metrics

Needs root, iproute2, kamailio, postgresql, sipp (scripts/setup.sh installs them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Self

import labkit
import yaml
from labload import LoadResult, place_call_load
from pgserver import PostgresServer

HUB = "vlmn-hub"
BRIDGE = "vlmn-br"
SUBNET_PREFIX = "10.77.0"
HUB_ADDR = f"{SUBNET_PREFIX}.1"
SIP_PORT = 5060
CALLER_SIP_PORT = 5070
HTTP_PORT = 9091
ARI_PASSWORD = "voiceline-lab"
KAMAILIO_CFG = labkit.LAB_DIR / "kamailio" / "kamailio.cfg"
# A node that does not answer an INVITE at all costs a caller this long.
FR_TIMER_MS = 2000
PING_INTERVAL_S = 2


class MultinodeError(RuntimeError):
    """A step of the multi-node lab failed; the message carries the tool's output."""


def run(cmd: list[str], timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise MultinodeError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    return proc


def in_ns(ns: str, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def http_get(ns: str, url: str, timeout: float = 3.0, user: str | None = None) -> tuple[int, str]:
    """GET from inside namespace ``ns`` (curl); (status, body), 0 when nothing answered."""
    auth = ["-u", user] if user else []
    proc = run(in_ns(ns, ["curl", "-s", *auth, "--max-time", f"{timeout:g}", "-w", "\n%{http_code}", url]),
               timeout=timeout + 10, check=False)
    body, _, code = proc.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def namespace_pids(ns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def kill_and_wait(pids: list[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Running, not a zombie: a killed child of ours stays in /proc until it is reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Network:
    """The hub namespace with a bridge, and one namespace per node linked to it."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes  # namespace names

    @property
    def namespaces(self) -> list[str]:
        return [HUB, *self.nodes]

    def create(self) -> None:
        self.destroy()  # leftovers of an interrupted run
        for ns in self.namespaces:
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", HUB, "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "-n", HUB, "addr", "add", f"{HUB_ADDR}/24", "dev", BRIDGE])
        run(["ip", "-n", HUB, "link", "set", BRIDGE, "up"])
        for index, ns in enumerate(self.nodes, start=1):
            hub_end = f"vlmn-p{index}"
            # Created inside the hub with its peer moved straight into the node: the
            # pair never exists in the machine's own namespace, and deleting the
            # namespaces deletes it.
            run(["ip", "-n", HUB, "link", "add", hub_end, "type", "veth", "peer", "name", "eth0", "netns", ns])
            run(["ip", "-n", HUB, "link", "set", hub_end, "master", BRIDGE, "up"])
            run(["ip", "-n", ns, "addr", "add", f"{node_addr(index)}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def destroy(self) -> None:
        existing = run(["ip", "netns", "list"], check=False).stdout
        names = {line.split()[0] for line in existing.splitlines() if line.strip()}
        for ns in self.namespaces:
            if ns in names:
                kill_and_wait(namespace_pids(ns))
                run(["ip", "netns", "del", ns], check=False)


def node_addr(index: int) -> str:
    return f"{SUBNET_PREFIX}.{10 + index}"


class AsteriskNode:
    """One node's Asterisk: an overlay of the lab root, configured for the node's address."""

    def __init__(self, index: int, work: Path) -> None:
        self.index = index
        self.name = f"n{index}"
        self.ns = f"vlmn-{self.name}"
        self.addr = node_addr(index)
        self.dir = work / self.name
        self.root = self.dir / "root"
        self.out_path = self.dir / "asterisk.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def prepare(self) -> None:
        self.unmount()
        if self.dir.exists():
            shutil.rmtree(self.dir)
        for sub in ("upper", "work", "root"):
            (self.dir / sub).mkdir(parents=True)
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={labkit.LAB_ROOT},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}",
             str(self.root)])
        env = dict(os.environ, LAB_ROOT=str(self.root), LAB_ARI_PASSWORD=ARI_PASSWORD)
        proc = subprocess.run(["bash", str(labkit.LAB_DIR / "configure.sh")], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise MultinodeError(f"configure.sh for {self.name} failed: {(proc.stdout + proc.stderr)[-2000:]}")
        self._write_node_config()
        run(["mount", "-t", "proc", "proc", str(self.root / "proc")])
        if run(["test", "-c", str(self.root / "dev/urandom")], check=False).returncode != 0:
            run(["mount", "--bind", "/dev", str(self.root / "dev")])
        for sub in ("var/lib/asterisk/keys", "var/spool/asterisk", "var/log/asterisk", "run/asterisk",
                    "var/cache/asterisk", "var/lib/asterisk/sounds/voiceline"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _write_node_config(self) -> None:
        etc = self.root / "etc/asterisk"
        header = "; Written by voiceline lab/multinode.py for a multi-node lab node.\n"
        (etc / "pjsip.conf").write_text(header + f"""
[transport-udp]
type = transport
protocol = udp
bind = {self.addr}:{SIP_PORT}

; Calls come from the balancer (Kamailio), recognised by its address; media goes
; straight to the caller. The caller's Contact is kept as it is: Kamailio stays in
; the dialog through Record-Route.
[balancer]
type = endpoint
transport = transport-udp
context = voiceline
allow = !all,ulaw
direct_media = no
rtp_symmetric = yes
force_rport = yes
rewrite_contact = no
media_address = {self.addr}
bind_rtp_to_media_address = yes
identify_by = ip
dtmf_mode = rfc4733

[balancer-identify]
type = identify
endpoint = balancer
match = {HUB_ADDR}
""")
        (etc / "extensions.conf").write_text(header + """
[general]
static = yes
writeprotect = yes

[voiceline]
; Stasis() returns without the engine having answered when the engine is draining
; (it hands new callers back here) or not running at all (the application is not
; registered): refuse with cause 34, which PJSIP sends as 503, so the balancer
; tries another node. A call the engine answered just ends.
exten => stasis,1,NoOp(voiceline: ${CHANNEL} -> Stasis(voiceline))
 same => n,Stasis(voiceline)
 same => n,GotoIf($["${CHANNEL(state)}" = "Up"]?done)
 same => n,NoOp(voiceline: not taken by the engine (${STASISSTATUS}), refusing with 503)
 same => n,Hangup(34)
 same => n(done),Hangup()
""")

    def start(self, timeout: float = 30.0) -> None:
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                in_ns(self.ns, ["chroot", str(self.root), "/usr/sbin/asterisk", "-f", "-n", "-U", "root",
                                "-G", "root"]),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MultinodeError(f"Asterisk of {self.name} exited: {self.out_path.read_text()[-2000:]}")
            status, _ = http_get(self.ns, "http://127.0.0.1:8088/ari/asterisk/info", timeout=1,
                                 user=f"{labkit.ARI_USER}:{ARI_PASSWORD}")
            if status == 200:
                return
            time.sleep(0.3)
        raise MultinodeError(f"ARI of {self.name} did not answer within {timeout:g} s")

    def cli(self, command: str) -> str:
        return run(["chroot", str(self.root), "/usr/sbin/asterisk", "-rx", command]).stdout

    def pids(self) -> list[int]:
        """Processes whose root is this node's root (Asterisk and anything it spawned)."""
        found = []
        want = str(self.root)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "root") == want:
                        found.append(int(entry.name))
                except OSError:
                    continue  # exited while we looked, or a kernel thread
        return found

    def kill(self) -> None:
        """SIGKILL: the node's Asterisk dies as a crashed machine's would."""
        kill_and_wait(self.pids())
        if self.proc is not None:
            self.proc.wait(5)

    def stop(self) -> None:
        if self.pids():
            run(["chroot", str(self.root), "/usr/sbin/asterisk", "-rx", "core stop now"], timeout=15, check=False)
            deadline = time.monotonic() + 10
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            self.kill()
        self.unmount()

    def unmount(self) -> None:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        root = str(self.root)
        for mount in sorted((m for m in mounts if m == root or m.startswith(root + "/")), reverse=True):
            if run(["umount", mount], check=False).returncode != 0:
                run(["umount", "-l", mount], check=False)


class NodeEngine:
    """`voiceline serve --mode ari --provider echo` inside a node's namespace; its JSON
    log lines are collected as dicts."""

    def __init__(self, node: AsteriskNode, history_url: str, config: Path, log_path: Path) -> None:
        env = dict(os.environ)
        env.update({
            "ARI_PASSWORD": ARI_PASSWORD,
            "VOICELINE_FALLBACK_DIR": str(node.root / "var/lib/asterisk/sounds/voiceline"),
            "VOICELINE_HISTORY_URL": history_url,
            "VOICELINE_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        })
        self.node = node
        self.log_path = log_path
        self.records: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            in_ns(node.ns, [str(labkit.REPO_ROOT / ".venv/bin/voiceline"), "serve", "--config", str(config),
                            "--mode", "ari", "--provider", "echo"]),
            cwd=labkit.REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"engine-{node.name}")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "a") as sink:
            for line in self.proc.stdout:
                sink.write(line)
                sink.flush()
                with self._lock:
                    self.raw.append(line)
                    if line.startswith("{"):
                        with contextlib.suppress(json.JSONDecodeError):  # partial line: kept in raw
                            self.records.append(json.loads(line))

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r.get("event") == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None and len(self.events(name)) < count:
                break
            time.sleep(0.05)
        raise MultinodeError(f"engine of {self.node.name} logged no {count}x {name!r} within {timeout:g} s "
                             f"(exit={self.proc.poll()}):\n" + "".join(self.raw[-30:]))

    def kill(self) -> None:
        """SIGKILL: the engine dies without draining or flushing anything."""
        self.proc.kill()
        self.proc.wait(5)
        self._reader.join(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


def engine_config(path: Path, node: AsteriskNode) -> Path:
    """config/ai-agent.yaml with the telemetry server on the node's address, so the
    hub can scrape it (the shipped default listens on loopback only)."""
    config = yaml.safe_load((labkit.REPO_ROOT / "config/ai-agent.yaml").read_text())
    config["http"]["host"] = node.addr
    config["recording"]["enabled"] = False
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Kamailio:
    def __init__(self, work: Path, nodes: list[AsteriskNode]) -> None:
        self.dir = work / "kamailio"
        self.nodes = nodes
        self.log_path = self.dir / "kamailio.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        dispatcher = self.dir / "dispatcher.list"
        dispatcher.write_text("# setid destination flags priority attributes\n" + "".join(
            f"1 sip:{n.addr}:{SIP_PORT} 0 0 node={n.name}\n" for n in self.nodes))
        cfg = KAMAILIO_CFG.read_text()
        for key, value in {"__LISTEN_ADDR__": HUB_ADDR, "__LISTEN_PORT__": str(SIP_PORT),
                           "__DISPATCHER_LIST__": str(dispatcher), "__FR_TIMER_MS__": str(FR_TIMER_MS),
                           "__PING_INTERVAL_S__": str(PING_INTERVAL_S)}.items():
            cfg = cfg.replace(key, value)
        (self.dir / "kamailio.cfg").write_text(cfg)
        run(["kamailio", "-c", "-f", str(self.dir / "kamailio.cfg")])  # syntax check, clear error
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                in_ns(HUB, ["kamailio", "-DD", "-E", "-f", str(self.dir / "kamailio.cfg"),
                            "-Y", str(self.dir), "-P", str(self.dir / "kamailio.pid"), "-w", str(self.dir)]),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MultinodeError(f"Kamailio exited: {self.log_path.read_text()[-2000:]}")
            if f"{HUB_ADDR}:{SIP_PORT}" in run(in_ns(HUB, ["ss", "-lun"])).stdout:
                return
            time.sleep(0.2)
        raise MultinodeError(f"Kamailio did not listen within {timeout:g} s")

    def routed(self) -> list[tuple[str, str]]:
        """(SIP Call-ID, node address) for every INVITE sent to a node, in order."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return re.findall(r"voiceline-lb: call (\S+) to sip:([\d.]+):\d+", text)

    def refusals(self) -> list[tuple[str, str, int]]:
        """(SIP Call-ID, node address, reply code) for every call a node refused (503) or
        never answered (408, Kamailio's own timeout), each moved to the next node."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [(call, addr, int(code)) for call, addr, code in
                re.findall(r"voiceline-lb: call (\S+) refused by sip:([\d.]+):\d+ \((\d+)\)", text)]

    def node_events(self) -> list[tuple[str, str]]:
        """(node address, "up" | "down") as the dispatcher's probing saw them, in order."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return re.findall(r"voiceline-lb: node sip:([\d.]+):\d+ (up|down)", text)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class Multinode:
    """The whole topology; ``with Multinode(work) as mn:`` starts and always tears down."""

    def __init__(self, work: Path, node_count: int = 2) -> None:
        self.work = Path(work)
        self.nodes = [AsteriskNode(i, self.work) for i in range(1, node_count + 1)]
        self.network = Network([n.ns for n in self.nodes])
        self.postgres = PostgresServer(self.work / "postgres", listen=(HUB_ADDR,), netns=HUB,
                                       allow_from=f"{SUBNET_PREFIX}.0/24")
        self.kamailio = Kamailio(self.work, self.nodes)
        self.engines: dict[str, NodeEngine] = {}
        self.all_engines: list[NodeEngine] = []  # every engine process started, restarted ones too

    def start(self) -> Self:
        # Leftovers of an interrupted run first: processes in the namespaces, mounts,
        # then the old work directory (logs are per run).
        self.network.destroy()
        for node in self.nodes:
            node.unmount()
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.work.chmod(0o711)  # the postgres user reaches its data directory below
        self.network.create()
        self.postgres.start()
        for node in self.nodes:
            node.prepare()
            node.start()
        for node in self.nodes:
            self.start_engine(node)
        self.kamailio.start()
        return self

    def start_engine(self, node: AsteriskNode) -> NodeEngine:
        config = engine_config(self.work / f"{node.name}-ai-agent.yaml", node)
        engine = NodeEngine(node, self.postgres.url(HUB_ADDR), config,
                            self.work / f"engine-{node.name}-{len(self.all_engines)}.log")
        self.engines[node.name] = engine
        self.all_engines.append(engine)
        engine.wait_for("voiceline_started")
        engine.wait_for("ari.events.connected")
        return engine

    def stop(self) -> None:
        errors: list[str] = []
        steps = [self.kamailio.stop, *(e.stop for e in self.all_engines), *(n.stop for n in self.nodes),
                 self.postgres.stop, self.network.destroy]
        for step in steps:
            try:
                step()
            except Exception as exc:  # every step runs; the failures are reported together
                errors.append(f"{getattr(step, '__qualname__', step)}: {exc}")
        if errors:
            raise MultinodeError("multi-node lab teardown: " + "; ".join(errors))

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException as exc:
            try:
                self.stop()
            except MultinodeError as teardown:
                exc.add_note(str(teardown))  # the start-up failure stays the one raised
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access ---------------------------------------------------------------------

    def node_by_addr(self, addr: str) -> AsteriskNode:
        return next(n for n in self.nodes if n.addr == addr)

    def http(self, node: AsteriskNode, path: str) -> tuple[int, str]:
        """GET on a node's telemetry server from the hub (as Prometheus would)."""
        return http_get(HUB, f"http://{node.addr}:{HTTP_PORT}{path}")

    def scrape(self, node: AsteriskNode) -> str:
        status, body = self.http(node, "/metrics")
        if status != 200:
            raise MultinodeError(f"scraping {node.name}: HTTP {status}")
        return body

    def place_calls(self, calls: int, audio: Path, duration_s: float, rate: float, limit: int,
                    name: str, sip_port: int = CALLER_SIP_PORT, rtp_port: int = 6000) -> LoadResult:
        """``calls`` SIPp calls from the hub to the balancer, ``rate`` a second, at most
        ``limit`` at once, each streaming ``audio`` (raw 8 kHz mu-law) and lasting
        ``duration_s`` unless the node hangs up first. Each call uses its own RTP port,
        counted up from ``rtp_port``."""
        return place_call_load(
            "stasis", audio, duration_s, calls, rate, limit, sip_port=sip_port, rtp_port=rtp_port,
            call_dir=self.work / "calls" / name, timeout_s=int(calls / rate + duration_s) + 60,
            target=f"{HUB_ADDR}:{SIP_PORT}", local_addr=HUB_ADDR, netns=HUB,
        )
