"""The pure parts of engine worker processes (voiceline.workers): the shared port, the
restart policy, the merged health, and the `workers` setting."""

from __future__ import annotations

import json
import socket

import pytest

from voiceline.config import ConfigError, Settings, load_settings, parse_settings
from voiceline.telemetry.call_sink import TelemetrySink
from voiceline.telemetry.metrics import Metrics
from voiceline.workers.health import WorkerState, merged_health, merged_readiness
from voiceline.workers.policy import Action, RestartPolicy
from voiceline.workers.ports import resolve_port, reuse_port_socket

from test_config import SHIPPED


# ---- the port ------------------------------------------------------------------------------


def test_a_configured_port_is_used_as_is_and_nothing_is_held():
    assert resolve_port("127.0.0.1", 9092) == (9092, None)


def test_port_zero_is_picked_once_and_held_for_workers_only():
    port, holder = resolve_port("127.0.0.1", 0)
    assert holder is not None
    try:
        assert port > 0 and holder.getsockname()[1] == port
        # A worker (SO_REUSEPORT) binds and listens on the held port and takes connections...
        worker = reuse_port_socket("127.0.0.1", port)
        worker.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            conn, _ = worker.accept()
            conn.close()
        worker.close()
        # ...and while it is held, no other program (no SO_REUSEPORT) can take the port.
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
    finally:
        holder.close()


def test_the_held_socket_takes_no_connections():
    port, holder = resolve_port("127.0.0.1", 0)
    assert holder is not None
    with holder, socket.socket() as caller:
        assert caller.connect_ex(("127.0.0.1", port)) != 0  # refused: nothing listens yet


# ---- restart policy ------------------------------------------------------------------------


def test_exits_while_stopping_are_left_alone():
    policy = RestartPolicy()
    policy.came_up(0)
    assert policy.on_exit(0, started_at=0.0, now=1.0, stopping=True).action is Action.LEAVE


def test_a_worker_that_never_came_up_is_not_retried():
    decision = RestartPolicy().on_exit(1, started_at=0.0, now=0.5, stopping=False)
    assert decision.action is Action.GIVE_UP and "ever ready" in decision.reason


def test_quick_deaths_back_off_doubling_up_to_the_cap_per_worker():
    policy = RestartPolicy(initial_delay_s=0.5, max_delay_s=3.0, stable_after_s=60.0)
    policy.came_up(0)
    policy.came_up(1)
    delays = [policy.on_exit(0, started_at=t, now=t + 1.0, stopping=False).delay_s for t in (0.0, 10.0, 20.0, 30.0, 40.0)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    # another worker has its own backoff
    assert policy.on_exit(1, started_at=0.0, now=1.0, stopping=False).delay_s == 0.5


def test_a_worker_that_ran_long_enough_restarts_at_once_and_resets_its_backoff():
    policy = RestartPolicy(initial_delay_s=0.5, max_delay_s=10.0, stable_after_s=60.0)
    policy.came_up(0)
    for t in (0.0, 2.0, 4.0):
        policy.on_exit(0, started_at=t, now=t + 1.0, stopping=False)
    stable = policy.on_exit(0, started_at=100.0, now=200.0, stopping=False)
    assert (stable.action, stable.delay_s) == (Action.RESTART, 0.0)
    assert policy.on_exit(0, started_at=200.0, now=201.0, stopping=False).delay_s == 0.5


# ---- merged health -------------------------------------------------------------------------


def _report(*call_ids: str, pending: int = 0, failing: bool = False) -> dict:
    return {
        "calls": [{"call_id": c, "state": "active"} for c in call_ids],
        "pacer": {"max_lateness_ms": 1.0},
        "history": {"backend": "sqlite", "pending": pending, "written": 3, "dropped": 0,
                    "failing": failing, "last_error": "locked" if failing else None},
    }


def test_health_sums_calls_and_history_and_says_which_worker_has_which_call():
    states = [WorkerState(0, pid=10, up=True), WorkerState(1, pid=11, up=True),
              WorkerState(2, pid=None, up=False, exit_code=-9, restarts=1)]
    body = merged_health(states, {0: _report("a", "b"), 1: _report("c", pending=2, failing=True),
                                  2: "not running"}, mode="audiosocket", config_hash="h", draining=False)
    assert body["active_calls"] == 3 and body["workers_up"] == 2
    assert {(c["call_id"], c["worker"]) for c in body["calls"]} == {("a", 0), ("b", 0), ("c", 1)}
    assert [w["active_calls"] for w in body["workers"][:2]] == [2, 1]
    assert body["workers"][2] == {"index": 2, "pid": None, "up": False, "exit_code": -9, "restarts": 1,
                                  "report_error": "not running"}
    assert body["history"]["pending"] == 2 and body["history"]["written"] == 6
    assert body["history"]["failing"] is True and body["history"]["last_error"] == "locked"
    json.dumps(body)  # served as JSON as it is


def test_ready_while_one_worker_is_up_and_not_draining():
    provider = {"name": "echo", "usable": True, "detail": "ok"}
    one_up = [WorkerState(0, up=True), WorkerState(1, up=False)]
    ready, checks = merged_readiness(one_up, draining=False, default_provider=provider)
    assert ready and checks["workers"]["detail"] == "1 of 2 up"
    assert not merged_readiness([WorkerState(0), WorkerState(1)], draining=False, default_provider=provider)[0]
    ready, checks = merged_readiness(one_up, draining=True, default_provider=provider)
    assert not ready and checks["taking_calls"]["detail"] == "draining"


# ---- the setting ---------------------------------------------------------------------------


def test_workers_default_to_one_process():
    assert Settings().workers == 1
    assert load_settings(SHIPPED, env={})[0].workers == 1


def test_workers_come_from_the_environment_in_the_shipped_file():
    settings, _ = load_settings(SHIPPED, env={"VOICELINE_MODE": "audiosocket", "VOICELINE_WORKERS": "4"})
    assert settings.workers == 4


def test_several_workers_in_ari_mode_are_refused_naming_the_key_and_why():
    with pytest.raises(ConfigError) as err:
        parse_settings({"mode": "ari", "workers": 2}, env={})
    (problem,) = err.value.problems
    assert problem.startswith("workers:") and "audiosocket" in problem and "ARI events websocket" in problem
    assert parse_settings({"mode": "ari", "workers": 1}, env={})[0].workers == 1


@pytest.mark.parametrize("value", [0, 65, "many"])
def test_out_of_range_workers_name_the_key(value):
    with pytest.raises(ConfigError) as err:
        parse_settings({"mode": "audiosocket", "workers": value}, env={})
    assert [p.split(":")[0] for p in err.value.problems] == ["workers"]


def test_the_settings_a_worker_gets_validate_to_the_same_config_secrets_included():
    settings, _ = load_settings(SHIPPED, env={"VOICELINE_MODE": "audiosocket", "VOICELINE_WORKERS": "2",
                                              "ARI_PASSWORD": "pw", "DEEPGRAM_API_KEY": "dg"})
    again = Settings.model_validate(json.loads(json.dumps(settings.revealed())))
    assert again.digest() == settings.digest()
    assert again.providers.deepgram.api_key.get_secret_value() == "dg"


# ---- metrics in a worker -------------------------------------------------------------------


def test_without_per_call_series_a_call_leaves_no_call_id_label():
    metrics = Metrics(per_call_series=False)
    sink = TelemetrySink(metrics)
    sink.call_started("c1", "echo")
    call = sink.for_call("c1", "echo", 0.0)
    call.buffer_depth(3, True, 0.1)
    call.barge_in("vad", 0.1)
    metrics.gating_changed("c1", False)
    text = metrics.render().decode()
    assert "call_id" not in text
    assert 'ai_agent_calls_total{provider="echo"} 1.0' in text and "ai_agent_active_calls 1.0" in text
    sink.call_ended("c1", "echo")
    assert "ai_agent_active_calls 0.0" in metrics.render().decode()
