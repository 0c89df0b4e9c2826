"""The cost of one caller frame on AudioSocket's inbound path, general vs streaming fast path.

Once a call streams, the media plane's tick reads each call's socket once per 20 ms
and hands the bytes to ``ConnectionRules``. Nearly every read is one or two whole
audio frames. This bench times, per frame, what the rules do with such a read:

* ``general``: ``receive_data`` (the decoder's buffer) then ``next_event`` until
  ``NEED_DATA`` (one event object per frame), as every read went before;
* ``fast``: ``take_audio``, which hands the frames back in one step.

Pure CPU in this process, no sockets: it isolates the parsing from the syscalls and
from the caller-audio handling that follows (the same on both paths).

    .venv/bin/python bench/inbound.py --out bench/results/inbound.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import FRAME_BYTES, git_info, machine_info  # noqa: E402

from voiceline.asterisk.audiosocket_codec import encode_audio, encode_uuid  # noqa: E402
from voiceline.asterisk.audiosocket_rules import NEED_DATA, ConnectionRules, UuidReceived  # noqa: E402


def streaming_rules() -> ConnectionRules:
    rules = ConnectionRules(started_at=0.0, uuid_timeout_s=5.0)
    rules.receive_data(encode_uuid("0f8fad5b-d9cb-469f-a165-70867728950e"))
    event = rules.next_event()
    assert isinstance(event, UuidReceived)
    rules.accept()
    return rules


def general(rules: ConnectionRules, data: bytes) -> int:
    rules.receive_data(data)
    frames = 0
    while rules.next_event() is not NEED_DATA:
        frames += 1
    return frames


def fast(rules: ConnectionRules, data: bytes) -> int:
    frames = rules.take_audio(data)
    assert frames is not None
    return len(frames)


def time_per_frame_us(path, frames_per_read: int, reads: int) -> float:  # type: ignore[no-untyped-def]
    rules = streaming_rules()
    data = encode_audio(bytes(FRAME_BYTES)) * frames_per_read
    started = time.perf_counter()
    delivered = 0
    for _ in range(reads):
        delivered += path(rules, data)
    elapsed = time.perf_counter() - started
    assert delivered == reads * frames_per_read
    return elapsed / delivered * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reads", type=int, default=50_000, help="reads per measurement")
    p.add_argument("--repeat", type=int, default=7, help="measurements per row (the median is reported)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()

    rows = []
    for frames_per_read in (1, 2):
        row: dict[str, object] = {"frames_per_read": frames_per_read}
        for name, path in (("general", general), ("fast", fast)):
            runs = [time_per_frame_us(path, frames_per_read, args.reads) for _ in range(args.repeat)]
            row[f"{name}_us"] = round(statistics.median(runs), 3)
            row[f"{name}_spread_us"] = round(max(runs) - min(runs), 3)
        row["saved_pct"] = round(100.0 * (1 - row["fast_us"] / row["general_us"]), 1)  # type: ignore[operator]
        rows.append(row)

    print("inbound parsing per caller frame (median of %d x %d reads, us)" % (args.repeat, args.reads))
    print(" frames/read | general (spread) |    fast (spread) | saved")
    for r in rows:
        print(
            f" {r['frames_per_read']:>11} | {r['general_us']:>7.2f} ({r['general_spread_us']:>5.2f}) |"
            f" {r['fast_us']:>7.2f} ({r['fast_spread_us']:>5.2f}) | {r['saved_pct']:>4.1f} %"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"bench": "inbound", "rows": rows, "machine": machine_info(), "git": git_info(),
                  "reads": args.reads, "repeat": args.repeat}
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
