"""How the simulated Deepgram delivers agent audio, as a pure plan of (chunk size, send time).

Patterns mimic the ways a real provider's network delivery differs (``steady``,
``burst``, ``jitter``, ``stall``, ``tiny``, ``odd``); every pattern delivers exactly the
same bytes in the same order. Faults (``FAULTS``) are the ways a real session goes
wrong; the server (``deepgram_server``) acts them out.
"""

from __future__ import annotations

import random

PATTERNS = ("steady", "burst", "jitter", "stall", "tiny", "odd")

# close-mid-turn: the connection drops (no close handshake) ~1 s into the first answer
#   turn's audio, before its AgentAudioDone.
# malformed-json: every AgentAudioDone goes out as truncated, unparsable JSON text.
# error: an Error message once the greeting is done (or right after SettingsApplied when
#   there is no greeting); the session goes on.
# no-welcome: the connection is accepted but Welcome is never sent.
FAULTS = ("close-mid-turn", "malformed-json", "error", "no-welcome")
CLOSE_MID_TURN_AFTER_S = 1.0
MALFORMED_AUDIO_DONE = '{"type": "AgentAudioDo'


def delivery_plan(
    total: int,
    pattern: str,
    *,
    bytes_per_sample: int,
    sample_rate: int,
    speed: float = 1.2,
    stall_s: float = 3.0,
    rng: random.Random | None = None,
) -> list[tuple[int, float]]:
    """How to send ``total`` bytes: (chunk size, send time in seconds from the start).

    Sizes always sum to ``total``. Send times follow real time divided by ``speed``
    (``burst`` sends everything at once).
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; one of {PATTERNS}")
    if speed <= 0:
        raise ValueError("speed must be positive")
    rng = rng or random.Random(0)
    bytes_per_s = sample_rate * bytes_per_sample

    def ms_bytes(ms: float) -> int:
        return max(bytes_per_sample, int(sample_rate * ms / 1000) * bytes_per_sample)

    def at(offset: int) -> float:
        return offset / bytes_per_s / speed

    plan: list[tuple[int, float]] = []
    offset = 0
    last_at = 0.0
    stalled = False
    while offset < total:
        if pattern in ("steady", "stall"):
            size = ms_bytes(20)
        elif pattern == "burst":
            size = ms_bytes(1000)
        elif pattern == "jitter":
            size = ms_bytes(rng.uniform(10, 200))
        elif pattern == "tiny":
            size = rng.randint(1, 7)
        else:  # odd
            size = rng.randrange(33, 1000, 2)
        size = min(size, total - offset)
        if pattern == "burst":
            when = 0.0
        elif pattern == "jitter":
            # Each chunk goes out up to 120 ms early, never late: average >= speed.
            when = max(last_at, at(offset) - rng.uniform(0.0, 0.12))
        else:
            when = at(offset)
        if pattern == "stall":
            if not stalled and offset >= total // 2 and offset > 0:
                stalled = True
            if stalled:
                when += stall_s
        plan.append((size, max(0.0, when)))
        last_at = when
        offset += size
    return plan
