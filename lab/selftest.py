#!/usr/bin/env python3
"""Self-test of the lab: run as root, ``python3 lab/selftest.py``.

Builds/configures the lab if needed, starts Asterisk, and checks:
  * ARI answers and the swagger (rest-api) files exist in the root;
  * an `echo` call: Asterisk -> caller RTP has ~150 packets for a 3 s
    phrase, no loss, and carries the audio that was sent;
  * the `audiosocket` extension connects to 127.0.0.1:<port> and opens with
    a kind 0x01 / length 16 / UUID frame, a fresh UUID per call;
  * the `stasis` extension is in the dialplan.
Stops Asterisk afterwards (unless it was already running) and checks that
nothing stays mounted. Exit code 0 when every check passed.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labkit as lab

FAILURES: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("  ok    " if cond else "  FAIL  ") + what, flush=True)
    if not cond:
        FAILURES.append(what)


class AudioSocketListener(threading.Thread):
    """Accept one AudioSocket connection, keep its first frame and count audio."""

    def __init__(self, port: int, hold_s: float) -> None:
        super().__init__(daemon=True)
        self.hold_s = hold_s
        self.srv = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.srv.settimeout(15)
        self.first: bytes = b""
        self.audio_frames = 0
        self.accepted_after: float | None = None
        self.t0 = time.monotonic()

    def run(self) -> None:
        try:
            conn, _ = self.srv.accept()
        except OSError:
            return
        self.accepted_after = time.monotonic() - self.t0
        conn.settimeout(5)
        buf = b""
        end = time.monotonic() + self.hold_s
        try:
            while time.monotonic() < end:
                data = conn.recv(4096)
                if not data:
                    break
                buf += data
                if not self.first and len(buf) >= 19:
                    self.first = buf[:19]
                    buf = buf[19:]
                while self.first and len(buf) >= 3:
                    n = int.from_bytes(buf[1:3], "big")
                    if len(buf) < 3 + n:
                        break
                    if buf[0] == 0x10:
                        self.audio_frames += 1
                        conn.sendall(buf[: 3 + n])  # echo the audio back
                    buf = buf[3 + n :]
        except OSError:
            pass
        finally:
            conn.close()
            self.srv.close()


def main() -> int:
    reason = lab.lab_unavailable_reason()
    if reason:
        print(f"lab unavailable: {reason}")
        return 2
    t = time.monotonic()
    lab.ensure_lab()
    print(f"ensure_lab: {time.monotonic() - t:.1f}s")
    work = Path(tempfile.mkdtemp(prefix="lab-selftest-"))

    with lab.AsteriskLab() as ast:
        print("ARI / root")
        info = ast.ari_get("asterisk/info")
        check(
            bool(info.get("system", {}).get("version")),
            f"ARI asterisk/info: {info['system']['version']}",
        )
        swagger = sorted(
            p.name for p in (ast.root / "usr/share/asterisk/rest-api").glob("*.json")
        )
        check(
            {"channels.json", "bridges.json", "events.json"} <= set(swagger),
            f"swagger files: {', '.join(swagger)}",
        )

        print("echo call")
        audio = lab.make_speech_ulaw(
            "The quick brown fox jumps over the lazy dog.", work / "fox.ulaw", seconds=3
        )
        call = lab.place_call("echo", audio, 3)
        rx, tx = call.received, call.sent
        check(call.ok, f"sipp exit code {call.returncode} (hangup: {call.hangup})")
        check(145 <= tx.packets <= 152, f"caller->Asterisk packets: {tx.packets}")
        check(145 <= rx.packets <= 152, f"Asterisk->caller packets: {rx.packets}")
        check(
            rx.lost == 0 and rx.tshark_lost in (0, None),
            f"Asterisk->caller lost: {rx.lost} (tshark {rx.tshark_lost})",
        )
        check(
            rx.max_delta_ms < 60,
            f"Asterisk->caller max delta {rx.max_delta_ms:.1f} ms, "
            f"jitter mean {rx.mean_jitter_ms:.3f} ms (tshark {rx.tshark_mean_jitter_ms})",
        )
        lag, peak = lab.correlate_delay(lab.read_ulaw(audio), rx.samples)
        check(
            peak > 0.9 and abs(lag) <= 100,
            f"echo correlates: lag {lag:.1f} ms, peak {peak:.3f}",
        )

        print("audiosocket")
        uuids = []
        for i in range(2):
            listener = AudioSocketListener(ast.audiosocket_port, hold_s=1.5)
            listener.start()
            offset = ast.log_offset()
            call = lab.place_call("audiosocket", audio, 3, capture=False)
            listener.join(10)
            first = listener.first
            check(
                len(first) == 19 and first[0] == 0x01 and first[1:3] == b"\x00\x10",
                f"call {i + 1}: first frame {first.hex()} (kind 0x01, length 16)",
            )
            if len(first) == 19:
                u = str(uuid.UUID(bytes=first[3:]))
                uuids.append(u)
                check(
                    u in ast.log_text(offset),
                    f"call {i + 1}: uuid {u} is the one in the dialplan log",
                )
            check(
                listener.audio_frames > 0,
                f"call {i + 1}: {listener.audio_frames} audio frames (0x10)",
            )
            check(
                call.ok and call.hangup == "remote",
                f"call {i + 1}: Asterisk hung up after the socket closed (hangup: {call.hangup})",
            )
        check(len(set(uuids)) == 2, "a fresh uuid per call")

        print("stasis")
        plan = ast.cli("dialplan show stasis@voiceline")
        check("Stasis(voiceline)" in plan, "stasis extension present")

    mounts = [
        line
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if str(lab.LAB_ROOT) in line
    ]
    check(not mounts, "nothing left mounted under the root")
    print("FAILED: " + "; ".join(FAILURES) if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
