"""Engine worker processes each write their calls to one SQLite history: concurrent
writers wait for each other's transaction (SQLite's busy timeout), none fails and no
record is lost. Each writer has its own HistoryStore (own connection), as a worker does."""

from __future__ import annotations

import threading

from voiceline.telemetry.history import HistoryStore, record_to_row

WRITERS = 4
RECORDS_EACH = 40


def test_concurrent_writers_to_one_sqlite_file_lose_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'calls.db'}"
    HistoryStore(url).ensure_schema()  # as the supervisor does before starting workers
    errors: list[BaseException] = []
    start = threading.Barrier(WRITERS)

    def writer(index: int) -> None:
        store = HistoryStore(url)
        try:
            start.wait()
            for n in range(RECORDS_EACH):
                store.write([record_to_row({"call_id": f"w{index}-{n}", "started_at": 1_700_000_000 + n,
                                            "metrics": {"payload": "x" * 2000}})])
        except BaseException as exc:  # reported below: the test is that there are none
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = HistoryStore(url)
    ids = {row["call_id"] for row in store.list_calls(limit=WRITERS * RECORDS_EACH + 10)}
    store.close()
    assert ids == {f"w{i}-{n}" for i in range(WRITERS) for n in range(RECORDS_EACH)}
