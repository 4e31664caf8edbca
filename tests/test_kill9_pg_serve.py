"""kill -9 at a known point of a SCEP enrollment with a one-time challenge, on PostgreSQL (collected in
CI's PostgreSQL pass only: tests/conftest.py). The load tests of kill -9 are tests/test_kill9_serve.py."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select, text

from scep.asn1 import MessageType, PkiStatus
from shared_ca.storage.db import create_store_engine
from shared_ca.storage.schema import certificates, scep_challenges
from tests.test_kill9_serve import Fleet, at_full_strength, kill_workers, serving
from tests.test_serve import gateway_command
from tests.test_stays_up_serve import EVENTUALLY, eventually

pytestmark = pytest.mark.slow


# -- a one-time challenge and a worker killed while issuing -------------------------------------------


@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_a_worker_killed_while_issuing_for_a_one_time_challenge_leaves_the_challenge_unspent(
    tmp_path: Path, database_url: str
) -> None:
    """A SCEP device whose PKCSReq with a one-time challenge died with its worker sends the transaction
    again, as after any broken connection, and gets its certificate: nothing was issued, so nothing of
    the request may be kept, its challenge's use included (the use is spent in the transaction that
    issues: scep.challenges.OneTimeChallenge, NewScepTransaction.spends_challenge).

    The worker is killed at a known point: the challenge was accepted and the issuing transaction waits
    on a lock the test holds on the certificates table (PostgreSQL only: SQLite's one writer lock would
    hold the request back before it writes anything, though the window is the same there)."""
    with serving(tmp_path, database_url) as node:
        fleet = Fleet(node)
        made = gateway_command("challenge", "add", "--device", "kill9-one-time", "--data-dir", str(node.data_dir))
        assert made.returncode == 0, made.stderr
        device = fleet.device("kill9-one-time", challenge=made.stdout.strip())
        engine = create_store_engine(database_url)
        try:

            def uses_left() -> int:
                with engine.connect() as conn:
                    return int(conn.execute(select(scep_challenges.c.uses_left)).scalar_one())

            def waiting_for_the_lock() -> bool:
                with engine.connect() as conn:
                    waiting = conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND query ILIKE 'INSERT INTO certificates%'"
                        )
                    )
                    return int(waiting.scalar_one()) > 0

            with engine.connect() as locker, ThreadPoolExecutor(1) as pool, locker.begin():
                locker.execute(text("LOCK TABLE certificates IN EXCLUSIVE MODE"))  # reads go on, inserts wait
                sent = pool.submit(fleet.pki_operation, device, MessageType.PKCSReq, device.csr_der)
                eventually(waiting_for_the_lock, "the issuing transaction waiting on the lock")
                gone = kill_workers(node, "http")
                assert sent.result() is None, "the request was answered, not cut off by the kill"
                locker.rollback()
            eventually(lambda: at_full_strength(node, gone), "the killed workers replaced")
            with engine.connect() as conn:  # the kill left nothing issued and the challenge's use unspent
                issued = conn.execute(select(certificates.c.id).where(certificates.c.common_name == "kill9-one-time"))
                assert issued.all() == []
            assert uses_left() == 1
            deadline = time.monotonic() + EVENTUALLY
            while (reply := fleet.pki_operation(device, MessageType.PKCSReq, device.csr_der)) is None:
                assert time.monotonic() < deadline, "no answer to the retransmission"
            left = uses_left()
        finally:
            engine.dispose()
        assert reply.status is PkiStatus.SUCCESS, (
            f"the retransmitted transaction got {reply.status.name} ({reply.fail_info_text!r}), uses left: {left}"
        )
        assert left == 0  # the issuance spent it
