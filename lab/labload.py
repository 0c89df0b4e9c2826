"""Call load for end-to-end tests on the lab Asterisk, on top of ``labkit``.

    place_call_load(exten, audio_path, duration_s, calls, rate, limit, ...) -> LoadResult
        many calls from one SIPp process (rate, concurrency limit; no capture);
        also the multi-node lab's callers (another target, inside a network namespace)
    CallInBackground(exten, audio_path, duration_s, **place_call_kwargs)
        ``labkit.place_call`` in a thread; ``.result(timeout)``; a context manager
        that waits for the call at exit
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Self

from labkit import (
    LAB_DIR,
    SIP_PORT,
    SIPP_RTP_PORT,
    SIPP_SIP_PORT,
    CallResult,
    LabError,
    need_tool,
    place_call,
    run_tool,
    tail_lines,
    ulaw_out_args,
)


@dataclasses.dataclass
class LoadResult:
    """Many calls from one SIPp process (``place_call_load``)."""

    exten: str
    returncode: int  # 0: every call succeeded
    calls: int  # asked for
    successful: int  # SIPp's SuccessfulCall(C)
    failed: int  # SIPp's FailedCall(C)
    hangups: dict[str, int]  # "local" (we sent BYE) / "remote" (the other side did) -> count
    call_dir: Path
    duration_s: float  # wall time of the SIPp run
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.successful == self.calls and self.failed == 0

    def errors(self) -> str:
        path = self.call_dir / "errors.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return tail_lines(text + self.stderr, 30)


def _scenario_for(audio_path: str | os.PathLike[str], duration_s: float, work: Path) -> Path:
    """The UAC scenario with its two placeholders filled in (see lab/sipp/uac_pcmu.xml)."""
    ulaw = work / "audio.ulaw"
    src = Path(audio_path)
    if src.suffix.lower() in (".ulaw", ".ul", ".pcmu", ".mulaw", ".raw"):
        shutil.copyfile(src, ulaw)
    else:
        run_tool([need_tool("sox"), str(src)] + ulaw_out_args(ulaw))
    xml = (LAB_DIR / "sipp" / "uac_pcmu.xml").read_text()
    xml = xml.replace("__AUDIO_FILE__", str(ulaw)).replace("__DURATION_MS__", str(int(duration_s * 1000)))
    scenario = work / "scenario.xml"
    scenario.write_text(xml)
    return scenario


def _sipp_stat(path: Path, column: str) -> int:
    """The last value of a cumulative column of SIPp's -trace_stat CSV (0 before SIPp wrote any)."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    if len(lines) < 2:
        return 0
    header, values = lines[0].split(";"), lines[-1].split(";")
    if column not in header:
        raise LabError(f"SIPp statistics {path} have no column {column!r}")
    return int(values[header.index(column)])


def place_call_load(
    exten: str,
    audio_path: str | os.PathLike[str],
    duration_s: float,
    calls: int,
    rate: float,
    limit: int,
    *,
    sip_port: int = SIPP_SIP_PORT,
    rtp_port: int = SIPP_RTP_PORT,
    call_dir: str | os.PathLike[str] | None = None,
    timeout_s: float | None = None,
    target: str = f"127.0.0.1:{SIP_PORT}",
    local_addr: str = "127.0.0.1",
    netns: str | None = None,
) -> LoadResult:
    """``calls`` calls from one SIPp process: ``rate`` new calls per second, at most
    ``limit`` at once, each streaming ``audio_path`` and lasting ``duration_s`` unless
    the other side hangs up first. No capture (the RTP of hundreds of calls is not kept).
    Each call uses its own RTP port, counted up from ``rtp_port``. SIPp calls ``target``
    (the lab Asterisk by default) from ``local_addr``, inside network namespace ``netns``
    when given (the multi-node lab's hub)."""
    if call_dir is None:
        call_dir = new_call_dir(f"load-{exten}")
    work = Path(call_dir)
    work.mkdir(parents=True, exist_ok=True)
    scenario = _scenario_for(audio_path, duration_s, work)
    expected_s = calls / rate + duration_s
    run_timeout = timeout_s if timeout_s is not None else expected_s * 2 + 30
    cmd = [
        need_tool("sipp"), target,
        "-sf", str(scenario), "-s", exten,
        "-m", str(calls), "-r", f"{rate:g}", "-rp", "1000", "-l", str(limit),
        "-i", local_addr, "-p", str(sip_port), "-mi", local_addr, "-mp", str(rtp_port),
        "-nostdin", "-timeout", f"{math.ceil(run_timeout)}s", "-timeout_error",
        "-trace_err", "-error_file", str(work / "errors.log"),
        "-trace_logs", "-log_file", str(work / "logs.log"),
        "-trace_stat", "-stf", str(work / "stat.csv"), "-fd", "1",
    ]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    (work / "command.txt").write_text(" ".join(cmd) + "\n")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=run_timeout + 30, check=False)
    elapsed = time.monotonic() - t0
    logs = (work / "logs.log").read_text(errors="replace") if (work / "logs.log").exists() else ""
    hangups = {kind: len(re.findall(rf"hangup: {kind}\b", logs)) for kind in ("local", "remote")}
    stat = work / "stat.csv"
    return LoadResult(
        exten=exten,
        returncode=proc.returncode,
        calls=calls,
        successful=_sipp_stat(stat, "SuccessfulCall(C)"),
        failed=_sipp_stat(stat, "FailedCall(C)"),
        hangups=hangups,
        call_dir=work,
        duration_s=elapsed,
        stdout=proc.stdout,
        stderr=proc.stderr,
    )


class CallInBackground:
    """``place_call`` in a thread, for tests that act on the engine or Asterisk while
    the call is up: ``call = CallInBackground(...); ...; result = call.result()``."""

    def __init__(self, exten: str, audio_path: str | os.PathLike[str], duration_s: float, **kwargs: Any) -> None:
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(
            target=self._run, args=(exten, audio_path, duration_s, kwargs), daemon=True,
            name=f"call-{exten}",
        )
        self._thread.start()

    def _run(self, exten: str, audio_path: Any, duration_s: float, kwargs: dict[str, Any]) -> None:
        try:
            self._outcome["result"] = place_call(exten, audio_path, duration_s, **kwargs)
        except BaseException as exc:  # handed to the test thread by result()
            self._outcome["error"] = exc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        # A test that failed half-way still waits for its caller, so SIPp's ports are
        # free for the next test.
        self._thread.join(120.0)

    def result(self, timeout: float = 120.0) -> CallResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise LabError(f"call did not finish within {timeout:.0f} s")
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["result"]
