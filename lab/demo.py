"""The README demo: one real SIP call through the lab Asterisk to the engine.

A synthesized caller asks two spoken questions; the agent (the offline local
agent by default: no API key, no network) answers. Writes what the caller heard
(WAV), the transcript and the per-call summary under artifacts/demo/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import labkit  # noqa: E402

QUESTIONS = ("What are your opening hours?", "Where are you located?")
ARI_PASSWORD = "voiceline-lab"


def build_caller_audio(workdir: Path) -> tuple[Path, float]:
    """Greeting time, question one, time for the answer, question two, time for the answer."""
    parts = [labkit.make_silence_ulaw(5.0, workdir / "lead.ulaw").read_bytes()]
    for index, question in enumerate(QUESTIONS):
        parts.append(labkit.make_speech_ulaw(question, workdir / f"q{index}.ulaw").read_bytes())
        parts.append(labkit.make_silence_ulaw(7.0, workdir / f"gap{index}.ulaw").read_bytes())
    audio = workdir / "caller.ulaw"
    audio.write_bytes(b"".join(parts))
    return audio, len(audio.read_bytes()) / 8000


def write_wav(path: Path, samples: list[int]) -> None:
    import array

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(array.array("h", samples).tobytes())


def start_engine(provider: str, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, ARI_PASSWORD=ARI_PASSWORD, VOICELINE_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1",
               VOICELINE_HISTORY_URL=f"sqlite:///{log_path.parent}/calls.db")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(REPO / ".venv/bin/voiceline"), "serve", "--config", "config/ai-agent.yaml",
         "--mode", "ari", "--provider", provider],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"engine exited early; see {log_path}:\n{log_path.read_text()[-3000:]}")
        if "ari.events.connected" in log_path.read_text():
            return proc
        time.sleep(0.2)
    raise SystemExit(f"engine did not connect to ARI; see {log_path}")


def read_log(log_path: Path) -> list[dict]:
    records = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--provider", default="local", help="agent for the demo call (default: local)")
    parser.add_argument("--out", default=str(REPO / "artifacts" / "demo"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    labkit.ensure_lab()
    with labkit.AsteriskLab(ari_password=ARI_PASSWORD):
        engine_log = out / "engine.log"
        engine = start_engine(args.provider, engine_log)
        try:
            audio, seconds = build_caller_audio(out)
            print(f"demo: calling the agent ({args.provider}); the caller asks: {' / '.join(QUESTIONS)}")
            result = labkit.place_call("stasis", audio, duration_s=seconds + 0.5, call_dir=out / "call")
        finally:
            engine.send_signal(signal.SIGINT)
            engine.wait(15)

    records = read_log(engine_log)
    transcript = [r for r in records if r.get("event") == "transcript"]
    summaries = [r for r in records if r.get("event") == "call_summary"]
    write_wav(out / "caller_heard.wav", result.received.samples)
    (out / "transcript.txt").write_text("".join(f"{t['role']:>9}: {t['text']}\n" for t in transcript))
    (out / "summary.json").write_text(json.dumps(summaries[-1] if summaries else {}, indent=2))

    print(f"demo: sipp {'ok' if result.ok else 'FAILED'}; caller received {result.received.packets} RTP packets, "
          f"lost {result.received.lost}, max delta {result.received.max_delta_ms:.1f} ms")
    print("demo: transcript")
    for t in transcript:
        print(f"  {t['role']:>9}: {t['text']}")
    if summaries:
        hint = summaries[-1].get("tuning_hint")
        print(f"demo: per-call summary in {out / 'summary.json'}" + (f"; tuning hint: {hint}" if hint else ""))
    print(f"demo: what the caller heard: {out / 'caller_heard.wav'}")
    answered = sum(1 for t in transcript if t["role"] == "assistant") >= 3
    heard_questions = sum(1 for t in transcript if t["role"] == "user") >= 2
    ok = result.ok and answered and heard_questions and bool(summaries)
    print("demo: OK" if ok else "demo: FAILED (see the files above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
