"""The SCEP challenge lockout through the real server, behind a trusted proxy (127.0.0.1).

Every device reaches the gateway through the same proxy address, as behind an HTTP load balancer;
`listen.trusted_proxies = 127.0.0.1` makes the X-Forwarded-For address the one that is counted. A
guesser locks out only its own address (and the devices it names), never the fleet behind the same
proxy; one device's challenge guessed from many addresses locks that device. Nothing is issued for
any refusal. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.config import load_config
from gateway.runtime import open_storage
from scep.asn1 import FailInfo, PkiStatus
from scep.challenges import LOCKED, REFUSED
from shared_ca.storage.repositories import Storage
from tests.support import rsa_key
from tests.test_proxies_serve import ScepAnswer, scep_enroll, scep_event
from tests.test_serve import Server, child_env, free_ports, init_data_dir, start_server, stop_server

pytestmark = pytest.mark.slow

SECRET = "lockout-serve-static-challenge"
THRESHOLD = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("lockout")
    data_dir = workdir / "data"
    (http_port,) = free_ports(1)
    init_data_dir(data_dir, http_port)
    env = child_env(
        GATEWAY_LISTEN_TRUSTED_PROXIES="127.0.0.1",
        GATEWAY_PROFILES_DEFAULT_SCEP_CHALLENGE=SECRET,
        GATEWAY_PROFILES_DEFAULT_SCEP_LOCKOUT_THRESHOLD=str(THRESHOLD),
    )
    started = start_server(data_dir, workdir, env=env, http_port=http_port)
    try:
        yield started
    finally:
        stop_server(started)


@pytest.fixture(scope="module")
def store(server: Server) -> Iterator[Storage]:
    opened = open_storage(load_config(server.data_dir, environ={}))
    try:
        yield opened
    finally:
        opened.engine.dispose()


def refused(
    server: Server,
    store: Storage,
    cn: str,
    challenge: str,
    client: str,
    text: str,
    forwarded_for: str | None = None,
) -> ScepAnswer:
    """A PKCSReq through the proxy for `client` (X-Forwarded-For `forwarded_for`, else `client`) that must
    be refused with `text`, issuing nothing, its event naming `client`."""
    before = store.certificates.count_certificates()
    answer = scep_enroll(server, cn, challenge, {"X-Forwarded-For": forwarded_for or client})
    assert answer.reply.status is PkiStatus.FAILURE, (cn, client)
    assert (answer.reply.fail_info, answer.reply.fail_info_text) == (FailInfo.BAD_REQUEST, text), (cn, client)
    assert store.certificates.count_certificates() == before
    event = scep_event(store, answer)
    assert (event.outcome, event.client_address) == ("failure:badRequest", client)
    return answer


def enrolled(server: Server, store: Storage, cn: str, client: str) -> None:
    before = store.certificates.count_certificates()
    answer = scep_enroll(server, cn, SECRET, {"X-Forwarded-For": client}, key=rsa_key(fresh=True))
    assert answer.reply.status is PkiStatus.SUCCESS, answer.reply.fail_info_text
    assert store.certificates.count_certificates() == before + 1
    assert scep_event(store, answer).client_address == client


def test_a_guessing_address_locks_itself_and_the_fleet_behind_the_proxy_enrolls(server: Server, store: Storage) -> None:
    guesser = "198.51.100.7"
    for n in range(THRESHOLD):  # a new device name and a new guess each time: only its address counts up
        refused(server, store, f"guessed-{n}", f"guess-{n}", guesser, REFUSED)
    refused(server, store, "guesser-own", SECRET, guesser, LOCKED)  # even the right secret, from there
    enrolled(server, store, "good-device", "198.51.100.8")  # the same proxy, another client


def test_forging_left_entries_does_not_make_a_new_address(server: Server, store: Storage) -> None:
    """Through the proxy the rightmost X-Forwarded-For entry is the client's real address; what the
    client writes to its left changes nothing."""
    for n in range(THRESHOLD):
        refused(server, store, f"forger-{n}", f"g-{n}", "198.51.100.20", REFUSED, f"10.66.0.{n}, 198.51.100.20")
    answer = scep_enroll(server, "forger-x", SECRET, {"X-Forwarded-For": "10.66.0.99, 198.51.100.20"})
    assert answer.reply.fail_info_text == LOCKED
    assert scep_event(store, answer).client_address == "198.51.100.20"


def test_one_device_guessed_from_many_addresses_is_locked(server: Server, store: Storage) -> None:
    victim = "victim-device"
    for n in range(THRESHOLD):
        refused(server, store, victim, f"victim-guess-{n}", f"203.0.113.{n + 1}", REFUSED)
    refused(server, store, victim, SECRET, "203.0.113.200", LOCKED)  # the device, from a fresh address
    enrolled(server, store, "bystander", "203.0.113.1")  # the guessing addresses are not locked themselves


def test_an_ipv6_client_is_counted_by_its_64(server: Server, store: Storage) -> None:
    for n in range(THRESHOLD):
        refused(server, store, f"v6-guess-{n}", f"v6-{n}", f"2001:db8:5:6::{n + 1}", REFUSED)
    refused(server, store, "v6-next", SECRET, "2001:db8:5:6:ffff::1", LOCKED)
    enrolled(server, store, "v6-neighbour", "2001:db8:5:7::1")
