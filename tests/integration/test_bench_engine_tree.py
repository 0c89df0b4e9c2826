"""bench/pacing_run.py measures the engine as its whole process tree (a supervisor and its
worker processes with --engine-workers N): every descendant counts, nothing else does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def pacing_run(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import pacing_run

    return pacing_run


def test_the_tree_holds_children_and_grandchildren_and_sums_their_memory(pacing_run):
    # a child that starts a grandchild, both waiting on stdin (no sleeps, no timing)
    code = ("import subprocess, sys; g = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
            " stdin=subprocess.PIPE); print(g.pid, flush=True); sys.stdin.read(); g.stdin.close(); g.wait()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sibling = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        grandchild = int(child.stdout.readline())
        tree = pacing_run.process_tree(child.pid)
        assert sorted(tree) == sorted([child.pid, grandchild])
        assert sibling.pid not in tree and os.getpid() not in tree
        status = pacing_run.engine_status(child.pid)
        assert status["processes"] == 2
        one = pacing_run.proc_status(child.pid)["VmRSS"] + pacing_run.proc_status(grandchild)["VmRSS"]
        assert abs(status["VmRSS"] - one) < 0.1 * one  # the sum (both are alive, memory may move a little)
        def both() -> float:
            return pacing_run.proc_cpu_s(child.pid) + pacing_run.proc_cpu_s(grandchild)

        before = both()  # the grandchild's start-up CPU is in it: leaving it out would come in below
        sample = pacing_run.sample_with_engine_tree({"engine": child.pid}, child.pid)
        assert before <= sample.cpu["engine"] <= both()
    finally:
        for proc in (child, sibling):
            proc.stdin.close()
            proc.wait(10)
