"""The stall witness process reports a stall when it really is held up (here: SIGSTOP)."""

from __future__ import annotations

import os
import signal
import time

from stallwitness import StallWitness


def test_witness_reports_the_time_it_was_stopped():
    with StallWitness() as witness:
        time.sleep(0.3)
        before = witness.stalls
        os.kill(witness.pid, signal.SIGSTOP)
        stopped_at = time.time()
        time.sleep(0.08)
        os.kill(witness.pid, signal.SIGCONT)
        deadline = time.monotonic() + 2
        while len(witness.stalls) == len(before) and time.monotonic() < deadline:
            time.sleep(0.01)
        new = witness.stalls[len(before):]
    assert new, "the witness reported nothing after being stopped for 80 ms"
    longest = max(new, key=lambda s: s.duration_ms)
    assert 70 <= longest.duration_ms <= 200
    assert abs(longest.start - stopped_at) < 0.01
