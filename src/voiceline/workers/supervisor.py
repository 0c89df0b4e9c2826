"""The supervising ``voiceline serve`` of N engine worker processes (``workers`` > 1).

It resolves the AudioSocket port once (``ports``), starts the workers (``child``) with a
control channel each and the Prometheus multiprocess directory in their environment,
waits until every one takes calls, logs ``voiceline_started``, and serves HTTP itself
(/live, /ready, /health, /metrics summed over the workers, the console). A worker that
dies is logged and started again (``policy``); its calls are lost. SIGTERM/SIGINT:
/ready turns 503, every worker drains as one ``serve`` would, the supervisor waits for
them and exits; a second signal is passed on (the workers end their calls at once).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import structlog

from voiceline.config import Settings
from voiceline.telemetry.history import CallHistory
from voiceline.telemetry.http import TelemetryServer
from voiceline.telemetry.metrics import AggregateMetrics
from voiceline.telemetry.recording import RecordingWriter
from voiceline.wiring import Parts
from voiceline.workers.control import ControlChannel
from voiceline.workers.health import WorkerState, merged_health, merged_readiness
from voiceline.workers.policy import Action, RestartPolicy
from voiceline.workers.ports import resolve_port

log = structlog.get_logger("voiceline.workers")

START_TIMEOUT_S = 60.0   # a worker imports, builds its providers and binds within this
HEALTH_TIMEOUT_S = 2.0   # a worker's answer to a health request
EXIT_FAILED = 1


class WorkerProcess:
    """One worker slot: its current process, control channel and outstanding requests."""

    def __init__(self, index: int) -> None:
        self.state = WorkerState(index)
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self._channel: ControlChannel | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[dict[str, Any] | None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0

    @property
    def index(self) -> int:
        return self.state.index

    async def start(self, python: str, env: dict[str, str], settings: dict[str, Any], now: float) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A new session: a terminal's Ctrl-C reaches the supervisor alone, which passes
            # it on once; the workers would otherwise get it twice (and end calls at once).
            self.process = await asyncio.create_subprocess_exec(
                python, "-m", "voiceline.workers.child", "--control-fd", str(child_end.fileno()),
                pass_fds=(child_end.fileno(),), env=env, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self.started_at = now
        self.state.pid = self.process.pid
        self.state.up = False
        self._ready = asyncio.get_running_loop().create_future()
        self._channel = await ControlChannel.over(parent_end)
        self._reader = asyncio.create_task(self._read(self._channel, self._ready),
                                           name=f"worker-{self.index}-control")
        await self._channel.send({"op": "start", "index": self.index, "settings": settings})

    async def wait_ready(self, timeout_s: float) -> bool:
        """True once the worker reported ready; False if it exited or timed out first."""
        assert self._ready is not None
        try:
            message = await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            return False
        self.state.up = message is not None
        return self.state.up

    async def _read(self, channel: ControlChannel, ready: asyncio.Future[dict[str, Any] | None]) -> None:
        try:
            while (message := await channel.receive()) is not None:
                if message.get("event") == "ready" and not ready.done():
                    ready.set_result(message)
                elif (future := self._pending.pop(message.get("id"), None)) is not None and not future.done():
                    future.set_result(message)
        except (ValueError, OSError):
            log.exception("worker control channel failed", worker=self.index, pid=self.state.pid)
        finally:
            if not ready.done():
                ready.set_result(None)
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            channel.close()

    async def health(self, timeout_s: float) -> dict[str, Any] | str:
        """The worker's health report, or why there is none."""
        if not self.state.up or self._channel is None:
            return "not running"
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._channel.send({"op": "health", "id": request_id})
            answer = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except (asyncio.CancelledError, OSError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not future.cancelled():
                raise  # the request itself was cancelled, not the worker gone
            return "worker gone"
        finally:
            self._pending.pop(request_id, None)
        report = answer.get("health")
        return report if isinstance(report, dict) else "malformed answer"

    def send_signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)

    async def wait_exit(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        self.state.up = False
        self.state.exit_code = code
        if self._reader is not None:
            await self._reader  # the channel reaches end of file with the process
        return code


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        parts: Parts,
        *,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        python: str = sys.executable,
    ) -> None:
        if settings.mode != "audiosocket":
            raise ValueError("engine worker processes run in audiosocket mode only")
        self.settings = settings
        self._parts = parts
        self._policy = policy or RestartPolicy()
        self._clock = clock
        self._python = python
        self.slots = [WorkerProcess(i) for i in range(settings.workers)]
        self.draining = False
        self._stop = asyncio.Event()
        self._abort = asyncio.Event()
        self._metrics: AggregateMetrics | None = None
        self._env: dict[str, str] = {}
        self._worker_settings: dict[str, Any] = {}

    async def run(self) -> int:
        """Serve until signalled; the exit status of ``voiceline serve``."""
        s = self.settings.audiosocket
        port, holder = resolve_port(s.host, s.port)
        metrics_dir = tempfile.mkdtemp(prefix="voiceline-metrics-")
        try:
            return await self._run(port, metrics_dir)
        finally:
            if holder is not None:
                holder.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    async def _run(self, port: int, metrics_dir: str) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        self._metrics = AggregateMetrics(metrics_dir)
        # Only the workers count into the files; this process reads them.
        self._env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        data = self.settings.revealed()
        data["audiosocket"]["port"] = port
        data["http"]["enabled"] = False  # this process serves HTTP for all of them
        self._worker_settings = data
        history = await self._history()
        if not await self._start_all():
            await self._stop_workers()
            return EXIT_FAILED
        http = TelemetryServer(self.settings.http, metrics=self._metrics, health=self.health, ready=self.readiness,
                               history=history, recordings=self._recordings())
        try:
            await http.start()
        except OSError:
            await self._stop_workers()
            raise
        watchers = [asyncio.create_task(self._watch(slot), name=f"worker-{slot.index}-watch") for slot in self.slots]
        log.info("voiceline_started", mode=self.settings.mode, default_provider=self.settings.default_provider,
                 audiosocket=f"{self.settings.audiosocket.host}:{port}", workers=len(self.slots),
                 worker_pids=[slot.state.pid for slot in self.slots], config_hash=self.settings.digest())
        await self._stop.wait()
        log.info("voiceline_stopping", workers_up=sum(1 for slot in self.slots if slot.state.up))
        self.draining = True
        for slot in self.slots:
            slot.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*watchers)
        await http.stop()
        failed = {slot.index: code for slot, code in zip(self.slots, codes, strict=True) if code not in (0, None)}
        if failed:
            log.error("voiceline_stopped", workers_failed=failed)
            return EXIT_FAILED
        log.info("voiceline_stopped")
        return 0

    def _on_signal(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            return
        # A second signal: pass it on, the workers end their remaining calls at once.
        self._abort.set()
        log.info("second stop signal: workers end their calls now")
        for slot in self.slots:
            slot.send_signal(signal.SIGTERM)

    async def _history(self) -> CallHistory | None:
        """The history the console reads. Its table is created here, once, before the
        workers write to it (several processes creating it at once would race)."""
        if not self.settings.history.enabled:
            return None
        history = CallHistory(self.settings.history.url.get_secret_value())
        try:
            await asyncio.to_thread(history.store.ensure_schema)
        except OSError as exc:
            log.warning("call history not reachable at start; the workers buffer their records",
                        error=f"{type(exc).__name__}: {exc}")
        return history

    def _recordings(self) -> RecordingWriter | None:
        r = self.settings.recording
        # Only its directory is used here: the console plays what the workers recorded.
        return RecordingWriter(r.dir, sample_rate=8000, max_seconds=r.max_seconds) if r.enabled else None

    async def _start_all(self) -> bool:
        for slot in self.slots:
            await slot.start(self._python, self._env, self._worker_settings, self._clock())
        ready = await asyncio.gather(*(slot.wait_ready(START_TIMEOUT_S) for slot in self.slots))
        for slot, ok in zip(self.slots, ready, strict=True):
            if ok:
                self._policy.came_up(slot.index)
                log.info("worker_up", worker=slot.index, pid=slot.state.pid)
            else:
                # Exited before its ready report (its own stderr says why), or too slow.
                log.error("worker did not start", worker=slot.index, pid=slot.state.pid,
                          ready_timeout_s=START_TIMEOUT_S)
        return all(ready)

    async def _stop_workers(self) -> None:
        for slot in self.slots:
            slot.send_signal(signal.SIGTERM)
        for slot in self.slots:
            if slot.process is not None:
                await slot.wait_exit()

    async def _watch(self, slot: WorkerProcess) -> int:
        """Wait for the slot's process to exit; start it again while not stopping.
        Returns the exit code of the last process (during shutdown)."""
        while True:
            pid = slot.state.pid
            code = await slot.wait_exit()
            assert self._metrics is not None and pid is not None
            self._metrics.process_exited(pid)
            decision = self._policy.on_exit(slot.index, started_at=slot.started_at, now=self._clock(),
                                            stopping=self._stop.is_set())
            if decision.action is Action.LEAVE:
                log.info("worker_exited", worker=slot.index, pid=pid, exit_code=code)
                return code
            log.error("worker_died", worker=slot.index, pid=pid, exit_code=code, reason=decision.reason,
                      action=decision.action.value, restart_in_s=decision.delay_s,
                      detail="its calls are lost; the other workers take new calls meanwhile")
            if decision.action is Action.GIVE_UP:
                self._stop.set()
                return code
            if await self._stopped_within(decision.delay_s):
                return code
            slot.state.restarts += 1
            await slot.start(self._python, self._env, self._worker_settings, self._clock())
            if await slot.wait_ready(START_TIMEOUT_S):
                log.info("worker_up", worker=slot.index, pid=slot.state.pid, restarts=slot.state.restarts)
            elif slot.process is not None and slot.process.returncode is None:
                log.error("restarted worker not ready in time, killing it", worker=slot.index,
                          pid=slot.state.pid, timeout_s=START_TIMEOUT_S)
                slot.send_signal(signal.SIGKILL)

    async def _stopped_within(self, delay_s: float) -> bool:
        try:
            await asyncio.wait_for(self._stop.wait(), delay_s)
        except TimeoutError:
            return False
        return True

    # ---- HTTP

    async def health(self) -> dict[str, Any]:
        answers = await asyncio.gather(*(slot.health(HEALTH_TIMEOUT_S) for slot in self.slots))
        reports = {slot.index: answer for slot, answer in zip(self.slots, answers, strict=True)}
        return merged_health([slot.state for slot in self.slots], reports, mode=self.settings.mode,
                             config_hash=self.settings.digest(), draining=self.draining)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        name = self.settings.default_provider
        provider = self._parts.providers.get(name)
        usable, detail = provider.availability() if provider is not None else (False, "not configured")
        return merged_readiness([slot.state for slot in self.slots], draining=self.draining,
                                default_provider={"name": name, "usable": usable, "detail": detail})
