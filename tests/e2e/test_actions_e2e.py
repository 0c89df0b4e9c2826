"""Agents that act on the call, on the real lab Asterisk: the model's function calls go
through the engine's one function-call path to Asterisk (transfer, hangup) or to an HTTP
service, and the caller hears the result."""

from __future__ import annotations

import numpy as np

import labkit
from conftest import assert_nothing_left_in_asterisk, derived_config, history_rows, history_url, wait_until
from voiceline.sim.sim_intents import TRANSFER_LINE

TRANSFER_ACTION = (
    "        enabled: false\n        description: null      # null: the built-in text\n        targets: []"
)
OPERATOR = (
    "        enabled: true\n        description: null\n"
    "        targets: [{name: operator, context: voiceline, extension: operator}]"
)


def _caller_audio(tmp_path, text: str, at_s: float, total_s: float):
    lead = labkit.make_silence_ulaw(at_s, tmp_path / "lead.ulaw").read_bytes()
    words = labkit.make_speech_ulaw(text, tmp_path / "words.ulaw").read_bytes()
    tail = labkit.make_silence_ulaw(total_s - at_s - len(words) / 8000, tmp_path / "tail.ulaw").read_bytes()
    path = tmp_path / "caller.ulaw"
    path.write_bytes(lead + words + tail)
    return path


def _tone_seconds(samples, freq: float = 440.0, rate: int = 8000) -> float:
    """Seconds of received audio (100 ms windows) dominated by a tone at ``freq``."""
    x = np.asarray(samples, dtype=float)
    n = rate // 10
    hits = 0
    for i in range(0, len(x) - n, n):
        window = x[i:i + n]
        if np.sqrt(np.mean(window ** 2)) < 300:
            continue
        spectrum = np.abs(np.fft.rfft(window * np.hanning(n)))
        peak = np.fft.rfftfreq(n, 1 / rate)[int(np.argmax(spectrum))]
        hits += abs(peak - freq) <= 20
    return hits / 10


def test_deepgram_caller_asks_for_the_operator_and_lands_on_the_lab_extension(
        swept_asterisk, engine, deepgram_sim, tmp_path):
    # The simulator has no speech recognition: what it "hears" is its transcript.
    url = deepgram_sim("--speed", "1.5") + "?transcript=Please+connect+me+to+an+operator"
    config = derived_config(tmp_path, {TRANSFER_ACTION: OPERATOR})
    proc = engine(mode="ari", provider="deepgram", config=config, DEEPGRAM_URL=url, DEEPGRAM_API_KEY="sim-key")
    audio = _caller_audio(tmp_path, "Please connect me to an operator.", at_s=3.0, total_s=18.0)
    result = labkit.place_call("stasis", audio, duration_s=18.0)
    assert result.ok, result.errors()

    call_id = proc.wait_for("call_started")[0]["call_id"]
    said = [t["text"] for t in proc.events("transcript", call_id=call_id, role="assistant")]
    assert TRANSFER_LINE in said, said
    function_call = proc.wait_for("function_call", function="transfer")[0]
    assert function_call["ok"] and function_call["delivered"]
    proc.wait_for("call_transferred", call_id=call_id)
    ended = proc.wait_for("call_ended", call_id=call_id)[0]
    assert ended["reason"] == "transferred to voiceline,operator,1"

    # The caller heard the agent's line, then the operator extension (its 440 Hz tone),
    # and the operator extension (not the engine) hung up.
    assert _tone_seconds(result.received.samples) >= 2.0
    assert result.hangup == "remote"
    # The engine's leg (externalMedia channel, bridge) is gone; so is the caller by now.
    assert_nothing_left_in_asterisk(swept_asterisk)
    url = history_url(tmp_path)
    record = wait_until(lambda: history_rows(url).get(call_id), 15, "the call's history record")
    assert record["end_reason"].startswith("transferred")


# ---- OpenAI Realtime simulator through the lab ------------------------------------------------

import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

import pytest  # noqa: E402
from conftest import REPO, free_port  # noqa: E402

HTTP_ACTIONS = "      http: []                 # [{name, description, parameters, url, headers, timeout_s, max_response_bytes}]"
GREETING = "Thank you for calling the test line. " * 4


class _TimeService(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _TimeService.requests.append(json.loads(body or b"{}"))
        reply = json.dumps({"time": "10:42"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        return


@pytest.fixture
def time_service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TimeService)
    _TimeService.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/time"
    server.shutdown()
    server.server_close()


@pytest.fixture
def openai_sim(tmp_path):
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> tuple[str, object]:
        port = free_port()
        log_path = tmp_path / f"openai-sim-{port}.log"
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "python"), "-m", "voiceline.sim.openai_sim", "--port", str(port), *args],
            cwd=REPO, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        wait_until(lambda: "listening" in log_path.read_text() or proc.poll() is not None, 15, "the simulator")
        assert proc.poll() is None, log_path.read_text()
        return f"ws://127.0.0.1:{port}/v1/realtime", log_path

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(5)


def test_openai_realtime_greets_is_interrupted_and_answers_with_an_http_function(
        swept_asterisk, engine, openai_sim, time_service, tmp_path):
    url, sim_log = openai_sim("--reply", GREETING, "--transcript", "What time is it?")
    config = derived_config(tmp_path, {
        "    greeting: null\n    audio_format: g711_ulaw": '    greeting: "Hello."\n    audio_format: g711_ulaw',
        HTTP_ACTIONS: f"      http: [{{name: get_time, description: the time now, url: '{time_service}'}}]",
    })
    proc = engine(mode="ari", provider="openai_realtime", config=config,
                  OPENAI_REALTIME_URL=url, OPENAI_API_KEY="sk-sim")
    # The caller talks over the greeting: barge-in; what the simulator "hears" is its transcript.
    audio = _caller_audio(tmp_path, "What time is it?", at_s=2.5, total_s=12.0)
    result = labkit.place_call("stasis", audio, duration_s=12.0)
    assert result.ok, result.errors()

    call_id = proc.wait_for("call_started")[0]["call_id"]
    barge_in = proc.wait_for("barge_in", call_id=call_id)[0]
    interrupt = proc.wait_for("openai_realtime.interrupt")[0]
    assert "conversation.item.truncate" in interrupt["sent"]
    truncates = re.findall(r"sim truncate\s+accepted=(\w+) audio_end_ms=(\d+)", sim_log.read_text())
    assert truncates and truncates[0][0] == "True", sim_log.read_text()[-2000:]
    # Truncated at the millisecond the caller had heard (the simulator delivers faster
    # than real time, so its item holds more audio than that).
    assert int(truncates[0][1]) == int(barge_in["played_ms"])
    function_call = proc.wait_for("function_call", function="get_time")[0]
    assert function_call["ok"] and function_call["delivered"]
    assert _TimeService.requests == [{"zone": "UTC"}]
    said = [t["text"] for t in proc.events("transcript", call_id=call_id, role="assistant")]
    assert "It is 10:42 right now." in said, said
    proc.wait_for("call_ended", call_id=call_id, timeout=20)
    assert_nothing_left_in_asterisk(swept_asterisk)


# ---- the local agent ---------------------------------------------------------------------

HANGUP_ACTION = "      hangup: {enabled: false, description: null}"


def test_local_agent_answers_a_pressed_digit(swept_asterisk, engine):
    proc = engine(mode="ari", provider="local")
    # A Local channel pair: one half enters Stasis as the call, the other sends DTMF 5.
    swept_asterisk.cli("channel originate Local/stasis@voiceline extension keypad-caller@voiceline")
    call_id = proc.wait_for("call_started")[0]["call_id"]
    proc.wait_for("transcript", call_id=call_id, role="assistant", text="You pressed 5.", timeout=20)
    # One digit, delivered once (ARI ChannelDtmfReceived and the media leg must not both count it).
    keys = proc.events("dtmf", call_id=call_id)
    assert [e["count"] for e in keys] == [1], keys
    assert all("digit" not in e for e in keys), "a pressed digit reached an INFO log line"
    proc.wait_for("call_ended", call_id=call_id, timeout=20)
    assert_nothing_left_in_asterisk(swept_asterisk)


def test_local_agent_hangs_up_after_its_goodbye(swept_asterisk, engine, tmp_path):
    config = derived_config(tmp_path, {HANGUP_ACTION: "      hangup: {enabled: true, description: null}"})
    proc = engine(mode="ari", provider="local", config=config)
    audio = _caller_audio(tmp_path, "Goodbye.", at_s=5.0, total_s=25.0)
    result = labkit.place_call("stasis", audio, duration_s=25.0)
    assert result.ok, result.errors()

    call_id = proc.wait_for("call_started")[0]["call_id"]
    proc.wait_for("transcript", call_id=call_id, role="assistant", text="Goodbye! Thank you for calling.")
    function_call = proc.wait_for("function_call", function="hangup")[0]
    assert function_call["ok"] and function_call["delivered"]
    assert proc.wait_for("call_ended", call_id=call_id)[0]["reason"] == "hangup by agent"
    # The engine hung up, well before the caller would have, after the goodbye was heard:
    # the caller received speech after its own words ended, and the call ended within
    # the settle time after that speech.
    assert result.hangup == "remote" and result.duration_s < 20
    x = np.asarray(result.received.samples, dtype=float)
    windows = np.array([np.sqrt(np.mean(x[i:i + 800] ** 2)) for i in range(0, len(x) - 800, 800)])
    loud = np.flatnonzero(windows > 300)
    words_end_s = 5.0 + 1.0
    assert (loud > words_end_s * 10).sum() >= 10, "the caller did not hear the goodbye"
    last_speech_s = loud[-1] / 10
    assert len(windows) / 10 - last_speech_s < 3.0, "the call went on long after the goodbye"
    assert_nothing_left_in_asterisk(swept_asterisk)


class _GarbageService(_TimeService):
    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        reply = b"<html>502 upstream</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


def test_deepgram_function_returning_garbage_gets_an_apology_and_the_call_goes_on(
        swept_asterisk, engine, deepgram_sim, tmp_path):
    from voiceline.sim.sim_intents import APOLOGY

    server = ThreadingHTTPServer(("127.0.0.1", 0), _GarbageService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = deepgram_sim("--speed", "1.5") + "?transcript=What+time+is+it"
        service = f"http://127.0.0.1:{server.server_address[1]}/time"
        config = derived_config(tmp_path, {HTTP_ACTIONS: f"      http: [{{name: get_time, url: '{service}'}}]"})
        proc = engine(mode="ari", provider="deepgram", config=config, DEEPGRAM_URL=url, DEEPGRAM_API_KEY="sim-key")
        audio = _caller_audio(tmp_path, "What time is it?", at_s=3.0, total_s=13.0)
        result = labkit.place_call("stasis", audio, duration_s=13.0)
        assert result.ok, result.errors()
    finally:
        server.shutdown()
        server.server_close()

    call_id = proc.wait_for("call_started")[0]["call_id"]
    function_call = proc.wait_for("function_call", function="get_time")[0]
    assert not function_call["ok"] and "not JSON" in function_call["error"] and function_call["delivered"]
    said = [t["text"] for t in proc.events("transcript", call_id=call_id, role="assistant")]
    assert APOLOGY in said, said
    # The caller heard the apology (speech after its question) and hung up itself.
    x = np.asarray(result.received.samples, dtype=float)
    windows = np.array([np.sqrt(np.mean(x[i:i + 800] ** 2)) for i in range(0, len(x) - 800, 800)])
    assert (windows[int(5.5 * 10):] > 300).sum() >= 15, "the caller did not hear the apology"
    assert result.hangup == "local"
    assert not proc.wait_for("call_ended", call_id=call_id)[0]["reason"].startswith(("hangup", "provider"))
    assert_nothing_left_in_asterisk(swept_asterisk)
