"""Past one machine: Kamailio's dispatcher in front of two Asterisk + voiceline nodes
(each in its own network namespace) with the call history in one shared PostgreSQL
server (lab/multinode.py, docs/deployment.md).

One test walks the operator's story: calls spread over both nodes; one node drains
(SIGTERM) and new calls go to the other while its live calls finish; the drained node
comes back and the other dies (SIGKILL, engine and Asterisk) and new calls go to the
survivor; in the end every call has exactly one record in the shared history, and
both nodes' /metrics, scraped from the balancer's side, agree with the engines' logs."""

from __future__ import annotations

import functools
import json
import shutil
import signal
import threading
import time

import conftest
import labkit
import labload
import multinode
import pytest
from prometheus_client.parser import text_string_to_metric_families

SPREAD_CALLS = 20
CALL_S = 3.0
LONG_CALLS = 4
LONG_CALL_S = 12.0
FAILOVER_CALLS = 6
KILL_CALLS = 4


@pytest.fixture
def cluster(lab_lock):
    reason = labkit.lab_unavailable_reason()
    if reason:
        pytest.fail(f"the multi-node lab cannot run here: {reason} (run the suite as root via scripts/test.sh)")
    labkit.ensure_lab()
    missing = [tool for tool in ("kamailio", "ip", "runuser", "curl") if shutil.which(tool) is None]
    assert not missing, f"missing {missing}: scripts/setup.sh installs them"
    started = time.monotonic()
    with multinode.Multinode(labkit.LAB_CACHE / "multinode") as mn:
        print(f"\nmulti-node lab up in {time.monotonic() - started:.1f} s")
        yield mn


def calls_total(mn: multinode.Multinode, node: multinode.AsteriskNode) -> float:
    """ai_agent_calls_total of one node, summed over its labels, from a Prometheus scrape."""
    families = {f.name: f for f in text_string_to_metric_families(mn.scrape(node))}
    # The parser names a counter family without its _total suffix.
    return sum(s.value for s in families["ai_agent_calls"].samples if s.name == "ai_agent_calls_total")


def summaries(engine: multinode.NodeEngine) -> list[dict]:
    return engine.events("call_summary")


def health(mn: multinode.Multinode, node: multinode.AsteriskNode) -> dict:
    status, body = mn.http(node, "/health")
    return json.loads(body) if status == 200 else {}


wait_until = functools.partial(conftest.wait_until, interval=0.2)


def assert_all_ok(result: labload.LoadResult, what: str) -> None:
    assert result.ok, f"{what}: SIPp {result.successful}/{result.calls} ok, {result.failed} failed: {result.errors()}"


def test_calls_spread_and_fail_over_with_one_shared_history(cluster, tmp_path):
    mn = cluster
    n1, n2 = mn.nodes
    audio = labkit.make_tone_ulaw(440, CALL_S - 1, tmp_path / "tone.ulaw")
    placed = 0

    # 1. Spread: the balancer sends calls to both nodes.
    spread = mn.place_calls(SPREAD_CALLS, audio, CALL_S, rate=5, limit=10, name="spread")
    assert_all_ok(spread, "spread")
    placed += SPREAD_CALLS
    for engine in mn.engines.values():
        wait_until(lambda e=engine: len(summaries(e)) >= 1, 10, f"a call summary from {engine.node.name}")
    per_node = {name: len(summaries(e)) for name, e in mn.engines.items()}
    routed = {mn.node_by_addr(addr).name for _, addr in mn.kamailio.routed()}
    print(f"spread: {per_node} (Kamailio routed to {sorted(routed)})")
    assert sum(per_node.values()) == SPREAD_CALLS
    assert all(count >= SPREAD_CALLS // 4 for count in per_node.values()), per_node
    assert routed == {"n1", "n2"}
    scraped = {node.name: calls_total(mn, node) for node in mn.nodes}
    print(f"ai_agent_calls_total scraped: {scraped}")
    assert scraped == {name: float(count) for name, count in per_node.items()}
    for summary in summaries(mn.engines["n1"]) + summaries(mn.engines["n2"]):
        assert summary["frames_in"] > 0 and summary["frames_out"] > 0, summary
    assert health(mn, n1)["history"]["backend"] == "postgresql"

    # 2. Drain: long calls on both nodes, SIGTERM to one engine; its live calls
    # finish, new calls all go to the other node.
    drained_engine = mn.engines["n1"]
    other_before = len(summaries(mn.engines["n2"]))
    drained_before = len(summaries(drained_engine))
    outcome: dict = {}
    long_calls = threading.Thread(target=lambda: outcome.setdefault("r", mn.place_calls(
        LONG_CALLS, audio, LONG_CALL_S, rate=LONG_CALLS, limit=LONG_CALLS, name="long", sip_port=5071,
        rtp_port=6200)))
    long_calls.start()
    try:
        wait_until(lambda: health(mn, n1).get("active_calls", 0) + health(mn, n2).get("active_calls", 0)
                   == LONG_CALLS, 10, f"{LONG_CALLS} live calls")
        live = health(mn, n1)["active_calls"]
        assert live >= 1, "round robin left n1 without a live call"
        drained_engine.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: mn.http(n1, "/ready")[0] == 503, 5, "n1 /ready to turn 503")
        during = mn.place_calls(FAILOVER_CALLS, audio, CALL_S, rate=3, limit=FAILOVER_CALLS, name="during-drain")
        assert_all_ok(during, "calls during the drain")
        placed += FAILOVER_CALLS
        assert drained_engine.proc.poll() is None, "the drained engine exited before its live calls ended"
    finally:
        long_calls.join(LONG_CALL_S + 60)
    long_result = outcome["r"]
    assert_all_ok(long_result, "calls live during the drain")
    placed += LONG_CALLS
    assert long_result.hangups == {"local": LONG_CALLS, "remote": 0}, "a live call was cut by the drain"
    assert drained_engine.proc.wait(30) == 0
    drained_calls = len(summaries(drained_engine)) - drained_before
    other_calls = wait_until(
        lambda: (c := len(summaries(mn.engines["n2"])) - other_before) >= FAILOVER_CALLS + LONG_CALLS - live and c,
        10, "n2 to end its calls")
    refused = drained_engine.events("call_refused_draining")
    print(f"drain: n1 had {live} live call(s) and finished {drained_calls}; n2 took {other_calls} "
          f"(the {FAILOVER_CALLS} new ones among them); n1 refused {len(refused)} new caller(s), "
          f"Kamailio moved {len(mn.kamailio.refusals())} call(s) to the next node")
    # Each new caller the draining engine handed back was refused with 503 and moved on.
    assert refused, "no new call reached the draining node: the drain path did not run"
    assert [(addr, code) for _, addr, code in mn.kamailio.refusals()] == [(n1.addr, 503)] * len(refused)
    assert drained_calls == live, "the drained node took a new call or lost a live one"
    assert other_calls == FAILOVER_CALLS + LONG_CALLS - live
    assert drained_engine.events("drain_finished")[0]["ended_by_timeout"] == 0

    # 3. Kill: n1 back, then n2 dies in two steps, idle, after its records are written
    # (a killed engine loses what it still buffers: docs/deployment.md). First its
    # engine alone (SIGKILL; its Asterisk refuses with 503 as Stasis() fails), then its
    # Asterisk too, with its link down (a machine gone: no answer at all). New calls all
    # go to n1 either way.
    back = mn.start_engine(n1)
    victim = mn.engines["n2"]
    expected_n2 = len(summaries(victim))
    wait_until(lambda: (h := health(mn, n2).get("history", {})).get("written") == expected_n2
               and h.get("pending") == 0, 15, "n2 to have written its records")
    victim.kill()
    engine_gone = mn.place_calls(KILL_CALLS, audio, CALL_S, rate=3, limit=KILL_CALLS, name="engine-killed")
    assert_all_ok(engine_gone, "calls after n2's engine died")
    placed += KILL_CALLS
    refused_by_n2 = [code for _, addr, code in mn.kamailio.refusals() if addr == n2.addr]
    assert refused_by_n2 and set(refused_by_n2) == {503}, f"n2 with its engine dead answered {refused_by_n2}"
    # Its Asterisk still answers the probes: back in the set (so the next calls try it).
    wait_until(lambda: [e for e in mn.kamailio.node_events() if e[0] == n2.addr][-1:] == [(n2.addr, "up")],
               3 * multinode.PING_INTERVAL_S, "the probes to put n2 back")
    # The link first, so not even an ICMP "port unreachable" tells the balancer.
    multinode.run(["ip", "-n", n2.ns, "link", "set", "eth0", "down"])
    n2.kill()
    killed_at = time.monotonic()
    node_gone = mn.place_calls(KILL_CALLS, audio, CALL_S, rate=3, limit=KILL_CALLS, name="node-killed")
    assert_all_ok(node_gone, "calls after n2's Asterisk died")
    placed += KILL_CALLS
    assert mn.http(n2, "/metrics")[0] == 0, "n2 still answers after being killed"
    wait_until(lambda: len(summaries(back)) >= 2 * KILL_CALLS, 10, "the restarted n1 to end its calls")
    assert len(summaries(back)) == 2 * KILL_CALLS
    assert calls_total(mn, n1) == 2 * KILL_CALLS
    # Taken out of the set: by a failed call (ds_mark_dst) or by the OPTIONS probes
    # (within a ping interval plus the transaction timeout).
    wait_until(lambda: (n2.addr, "down") in mn.kamailio.node_events(), 10, "Kamailio to mark n2 down")
    timed_out = [code for _, addr, code in mn.kamailio.refusals() if addr == n2.addr][len(refused_by_n2):]
    # n2 was in the set when it vanished and a probe needs fr_timer (2 s) to give up on
    # it, while round robin sends it one of the first two calls (0.33 s apart): that
    # call got no answer and moved on after fr_timer.
    assert timed_out and set(timed_out) == {408}, f"calls sent to the vanished n2 ended {timed_out}"
    print(f"kill: all {2 * KILL_CALLS} calls went to n1; with its engine dead n2 refused "
          f"{len(refused_by_n2)} (503), once gone {len(timed_out)} call(s) timed out on it {timed_out} "
          f"(fr_timer {multinode.FR_TIMER_MS} ms) and moved on; node events {mn.kamailio.node_events()} "
          f"(checked {time.monotonic() - killed_at:.1f} s after the kill)")

    # 4. No record lost: exactly one row per call placed, the union of what the engines ended.
    logged = [s["call_id"] for e in mn.all_engines for s in summaries(e)]
    assert len(logged) == len(set(logged)) == placed
    from voiceline.telemetry.history import HistoryStore

    store = HistoryStore(mn.postgres.local_url())
    try:
        rows = wait_until(lambda: (r := store.list_calls(limit=10_000)) and len(r) >= placed and r, 15,
                          f"{placed} records in PostgreSQL")
    finally:
        store.close()
    ids = [row["call_id"] for row in rows]
    print(f"history: {len(rows)} records in PostgreSQL for {placed} calls placed")
    assert len(ids) == len(set(ids)) == placed
    assert set(ids) == set(logged)
    assert all(row["end_reason"] for row in rows)
