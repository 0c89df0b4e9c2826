"""The operator HTTP endpoint over real loopback TCP (port 0)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog.testing
from prometheus_client.parser import text_string_to_metric_families

from voiceline.config import HttpSettings
from voiceline.telemetry.http import PROMETHEUS_CONTENT_TYPE, TelemetryServer
from voiceline.telemetry.metrics import Metrics

TOKEN = "s3cret-token-value"
DASHBOARD = Path(__file__).resolve().parents[2] / "monitoring" / "grafana-dashboard.json"


class Probe:
    """Health and readiness callbacks the tests can steer."""

    def __init__(self) -> None:
        self.ready = True
        self.checks: dict[str, Any] = {"ari": "connected", "audiosocket": "listening"}
        self.fail: Exception | None = None

    def health(self) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        return {"active_calls": 2, "config_hash": "abc123"}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self.fail is not None:
            raise self.fail
        return self.ready, dict(self.checks)


ServerFactory = Callable[..., Any]


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    servers: list[TelemetryServer] = []

    async def start(token: str = "", metrics: Metrics | None = None, probe: Probe | None = None) -> tuple[str, Probe]:
        probe = probe or Probe()
        settings = HttpSettings(host="127.0.0.1", port=0, bearer_token=token)
        server = TelemetryServer(settings, metrics=metrics or Metrics(), health=probe.health,
                                 ready=probe.readiness)
        await server.start()
        servers.append(server)
        assert server.bound_port
        return f"http://127.0.0.1:{server.bound_port}", probe

    yield start
    for server in servers:
        await server.stop()


async def fetch(url: str, method: str = "GET", token: str | None = None) -> tuple[int, dict[str, str], str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.text()


# ---- endpoints --------------------------------------------------------------------------


async def test_live_answers_ok(serve):
    base, _ = await serve()
    assert (await fetch(f"{base}/live"))[::2] == (200, "ok")


async def test_ready_is_200_with_checks_when_ready_and_503_when_not(serve):
    base, probe = await serve()
    status, headers, body = await fetch(f"{base}/ready")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {"ready": True, "checks": {"ari": "connected", "audiosocket": "listening"}}
    probe.ready, probe.checks["ari"] = False, "reconnecting"
    status, _, body = await fetch(f"{base}/ready")
    assert status == 503
    assert json.loads(body)["checks"]["ari"] == "reconnecting"


async def test_health_carries_the_report_and_a_status(serve):
    base, probe = await serve()
    status, _, body = await fetch(f"{base}/health")
    assert status == 200
    assert json.loads(body) == {"active_calls": 2, "config_hash": "abc123", "status": "ok"}
    probe.ready = False
    assert json.loads((await fetch(f"{base}/health"))[2])["status"] == "not_ready"


async def test_failing_callbacks_are_logged_and_reported_not_hidden(serve):
    base, probe = await serve()
    probe.fail = RuntimeError("store gone")
    with structlog.testing.capture_logs() as logs:
        ready_status, _, ready_body = await fetch(f"{base}/ready")
        health_status, _, health_body = await fetch(f"{base}/health")
    assert ready_status == 503 and "store gone" in json.loads(ready_body)["error"]
    assert health_status == 500 and json.loads(health_body)["status"] == "error"
    assert {e["event"] for e in logs} >= {"readiness check raised", "health report raised"}


async def test_metrics_exposition(serve):
    metrics = Metrics()
    metrics.call_started("deepgram")
    metrics.first_frame_latency.observe(0.12)
    base, _ = await serve(metrics=metrics)
    status, headers, body = await fetch(f"{base}/metrics")
    assert status == 200
    assert headers["Content-Type"] == PROMETHEUS_CONTENT_TYPE
    families = {f.name: f for f in text_string_to_metric_families(body)}
    calls = families["ai_agent_calls"].samples
    assert any(s.name == "ai_agent_calls_total" and s.labels == {"provider": "deepgram"} and s.value == 1
               for s in calls)
    assert families["ai_agent_active_calls"].samples[0].value == 1


async def test_unknown_path_is_404_and_other_methods_405(serve):
    base, _ = await serve()
    assert (await fetch(f"{base}/nope"))[0] == 404
    for method in ("POST", "PUT", "DELETE", "HEAD"):
        assert (await fetch(f"{base}/metrics", method=method))[0] == 405, method


# ---- bearer token ------------------------------------------------------------------------


async def test_token_guards_everything_but_live(serve):
    base, _ = await serve(token=TOKEN)
    assert (await fetch(f"{base}/live"))[0] == 200
    for path in ("/ready", "/health", "/metrics", "/nope", "/console/live", "/console/api/live"):
        status, headers, _ = await fetch(f"{base}{path}")
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert (await fetch(f"{base}{path}", token="wrong"))[0] == 401, path
    assert (await fetch(f"{base}/ready", token=TOKEN))[0] == 200
    assert (await fetch(f"{base}/health", token=TOKEN))[0] == 200
    assert (await fetch(f"{base}/metrics", token=TOKEN))[0] == 200
    assert (await fetch(f"{base}/nope", token=TOKEN))[0] == 404
    assert (await fetch(f"{base}/console/api/live", token=TOKEN))[0] == 200


async def test_token_is_never_logged(serve):
    with structlog.testing.capture_logs() as logs:
        base, _ = await serve(token=TOKEN)
        await fetch(f"{base}/metrics", token=TOKEN + "x")
        await fetch(f"{base}/metrics", token=TOKEN)
    assert any(e["event"].startswith("http request rejected") for e in logs)
    assert TOKEN not in repr(logs)


# ---- lifecycle -----------------------------------------------------------------------------


async def test_binds_the_configured_host_only():
    server = TelemetryServer(HttpSettings(host="127.0.0.1", port=0), metrics=Metrics(),
                             health=dict, ready=lambda: (True, {}))
    await server.start()
    try:
        port = server.bound_port
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=1):
            pass
    finally:
        await server.stop()
    assert server.bound_port is None


async def test_disabled_server_does_not_listen():
    server = TelemetryServer(HttpSettings(enabled=False, port=0), metrics=Metrics(),
                             health=dict, ready=lambda: (True, {}))
    await server.start()
    assert server.bound_port is None
    await server.stop()


# ---- the shipped dashboard queries metrics the engine exposes ---------------------------------------


async def test_dashboard_only_uses_exposed_metric_names(serve):
    metrics = Metrics()
    # Labelled series appear once a label value was used; per-call ones only while a call lives.
    metrics.call_started("echo")
    metrics.provider_error("echo")
    metrics.provider_fallback("nope")
    metrics.audiosocket_refused("peer")
    metrics.barge_in("call-1", "local", 0.1)
    metrics.call_gauges_open("call-1")
    base, _ = await serve(metrics=metrics)
    exposed = {s.name for f in text_string_to_metric_families((await fetch(f"{base}/metrics"))[2])
               for s in f.samples}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bai_agent_[a-z_]+", expr)}
    assert used and used <= exposed, sorted(used - exposed)
