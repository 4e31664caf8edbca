"""SqliteWriterGate: SQLite writers queue on a thread lock and an flock instead of polling."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from shared_ca.storage.db import SqliteWriterGate


def test_a_second_process_waits_for_the_flock(tmp_path: Path) -> None:
    database = str(tmp_path / "gateway.db")
    gate = SqliteWriterGate(database)
    with gate:
        probe = os.open(f"{database}-writers.lock", os.O_RDWR)
        try:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held_elsewhere = False
            except BlockingIOError:
                held_elsewhere = True
        finally:
            os.close(probe)
    assert held_elsewhere  # another open file description (another process) is kept out
    probe = os.open(f"{database}-writers.lock", os.O_RDWR)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit: no BlockingIOError
    finally:
        os.close(probe)


def test_threads_queue_and_the_gate_is_reentrant(tmp_path: Path) -> None:
    gate = SqliteWriterGate(str(tmp_path / "gateway.db"))
    inside = 0
    most = 0
    guard = threading.Lock()

    def writer() -> None:
        nonlocal inside, most
        for _ in range(50):
            with gate, gate:  # re-entered by the same thread, as nested writes would
                with guard:
                    inside += 1
                    most = max(most, inside)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1


def test_without_a_lock_file_only_threads_queue(tmp_path: Path) -> None:
    for database in (None, ":memory:", str(tmp_path / "missing-dir" / "gateway.db")):
        gate = SqliteWriterGate(database)
        with gate:
            pass
    assert not (tmp_path / "missing-dir").exists()
