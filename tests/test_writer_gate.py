"""SqliteWriterGate: SQLite writers queue on a thread lock and an flock instead of polling."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

from shared_ca.storage.db import SqliteWriterGate

REPO = Path(__file__).resolve().parents[1]
# How long a contender that a broken gate lets straight in gets to show it. Only a broken gate is
# caught faster or slower by this; a working one passes whatever the machine's speed.
CHANCE_SECONDS = 1.0


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


def test_a_second_thread_stays_out_until_the_first_leaves(tmp_path: Path) -> None:
    """The contender records what it sees inside the gate: the holder must have left by then."""
    gate = SqliteWriterGate(str(tmp_path / "gateway.db"))
    holder = {"where": "outside"}
    seen: list[str] = []
    inside = threading.Event()

    def contender() -> None:
        with gate:
            seen.append(holder["where"])
            inside.set()

    thread = threading.Thread(target=contender)
    with gate:
        holder["where"] = "inside"
        thread.start()
        inside.wait(CHANCE_SECONDS)  # a gate that let it in would have let it in by now
        holder["where"] = "outside"
    thread.join(30)
    assert not thread.is_alive()
    assert seen == ["outside"]


CONTENDER = """
import sys
from pathlib import Path
from shared_ca.storage.db import SqliteWriterGate

database, state = sys.argv[1], Path(sys.argv[2])
gate = SqliteWriterGate(database)
print("ready", flush=True)
with gate:
    print(state.read_text(), flush=True)
"""


def _set(state: Path, text: str) -> None:
    """Replace the state file at once, so a reader sees the old text or the new, never a torn one."""
    fresh = state.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, state)


def test_a_second_process_stays_out_until_the_first_leaves(tmp_path: Path) -> None:
    """A real second process using the gate on the same database (what a second gunicorn worker is)."""
    database = str(tmp_path / "gateway.db")
    state = tmp_path / "holder"
    gate = SqliteWriterGate(database)
    with gate:
        _set(state, "inside")
        child = subprocess.Popen(
            [sys.executable, "-c", CONTENDER, database, str(state)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(CHANCE_SECONDS)  # a gate that let it in would have let it finish by now
            _set(state, "outside")
        except BaseException:
            child.kill()
            child.communicate()
            raise
    with child:  # closes its pipe and waits for it
        assert child.stdout is not None
        seen = child.stdout.read()  # what it printed inside the gate (it ends once it got in)
    assert child.returncode == 0
    assert seen.strip() == "outside"
