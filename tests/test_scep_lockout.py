"""The SCEP challenge lockout's key rule (scep.lockout).

Guessers are stopped where they guess: one device's challenge from many addresses (device counter),
many devices from one address (address counter, an IPv6 client by its /64), one value anywhere
(value counter), and the profile's static challenge from everywhere (the profile guard, which
suspends that secret alone). A lock never refuses a request that does not share its key.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from typing import Any

import pytest

from scep.challenges import (
    LOCKED,
    REFUSED,
    AnyOf,
    ChallengeKind,
    ChallengeRequest,
    OneTimeChallenge,
    StaticChallenge,
    new_one_time_challenge,
)
from scep.lockout import KEY_MAX, Lockout, address_bucket, lockout_keys
from shared_ca.errors import Unauthorized
from shared_ca.storage.enrollment import Enrollments
from shared_ca.storage.repositories import Storage
from tests.support import SettableClock

SECRET = "s3cret-static"
REQUEST = ChallengeRequest(
    profile="default",
    challenge_password=SECRET,
    subject="CN=device1",
    device_id="device1",
    transaction_id="t-1",
    client_address="192.0.2.7",
    csr_der=b"\x30\x00",
)
WINDOW = dt.timedelta(minutes=15)


@pytest.fixture
def enrollments(store: Storage) -> Enrollments:
    return store.enrollments


def guarded(
    enrollments: Enrollments, clock: SettableClock, *, threshold: int = 3, profile_threshold: int | None = 6
) -> Lockout:
    inner = AnyOf([StaticChallenge(SECRET), OneTimeChallenge(enrollments, clock)])
    return Lockout(
        inner,
        enrollments,
        threshold=threshold,
        window=WINDOW,
        lock_for=WINDOW,
        profile_threshold=profile_threshold,
        clock=clock,
    )


def answer(lockout: Lockout, **changes: Any) -> str:
    """'accepted', or the public message of the refusal."""
    try:
        lockout.validate(replace(REQUEST, **changes))
    except Unauthorized as exc:
        return exc.public_message
    return "accepted"


# -- the keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        pytest.param("192.0.2.7", "192.0.2.7", id="ipv4"),
        pytest.param("::ffff:192.0.2.7", "192.0.2.7", id="ipv4-mapped"),
        pytest.param("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64", id="ipv6-per-64"),
        pytest.param("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64", id="ipv6-same-64"),
        pytest.param("2001:db8:1:3::1", "2001:db8:1:3::/64", id="ipv6-next-64"),
        pytest.param("[2001:db8:1:2::1]", "2001:db8:1:2::/64", id="ipv6-brackets"),
        pytest.param(None, "unknown", id="unknown"),
        pytest.param("", "unknown", id="empty"),
    ],
)
def test_address_bucket(address: str | None, bucket: str) -> None:
    assert address_bucket(address) == bucket


def test_keys_name_what_is_guessed_and_who_guesses() -> None:
    keys = lockout_keys("default", SECRET, "device1", "2001:db8:1:2::99")
    assert keys.value is not None and keys.value.startswith("challenge:") and SECRET not in keys.value
    assert keys.device is not None and keys.device.startswith("device:") and "device1" not in keys.device
    assert keys.address == "address:default:2001:db8:1:2::/64"
    assert keys.profile == "profile:default"
    assert keys.per_request == (keys.value, keys.device, keys.address)
    other_profile = lockout_keys("kiosk", SECRET, "device1", "2001:db8:1:2::99")
    assert other_profile.device != keys.device and other_profile.address != keys.address
    assert other_profile.value == keys.value  # a value is the same secret whichever profile it is tried on
    bare = lockout_keys("default", None, None, None)
    assert (bare.value, bare.device, bare.per_request) == (None, None, ("address:default:unknown",))
    long = lockout_keys("p" * 64, "x" * 5000, "d" * 5000, "not an address " * 30)
    assert all(len(key) <= KEY_MAX for key in (*long.per_request, long.profile))


# -- the rules --------------------------------------------------------------------------------------


def test_one_address_guessing_many_devices_locks_only_that_address(
    enrollments: Enrollments, clock: SettableClock
) -> None:
    lockout = guarded(enrollments, clock)
    for n in range(3):
        assert answer(lockout, challenge_password=f"guess-{n}", device_id=f"victim-{n}") == REFUSED
    assert answer(lockout) == LOCKED  # even the right secret, from that address
    assert answer(lockout, client_address="192.0.2.8") == "accepted"  # the device itself is not locked
    clock.advance(minutes=15)
    assert answer(lockout) == "accepted"


def test_one_device_guessed_from_many_addresses_is_locked(enrollments: Enrollments, clock: SettableClock) -> None:
    lockout = guarded(enrollments, clock)
    for n in range(3):
        assert answer(lockout, challenge_password=f"guess-{n}", client_address=f"198.51.100.{n}") == REFUSED
    assert answer(lockout, client_address="198.51.100.77") == LOCKED  # that device, from a new address
    assert answer(lockout, client_address="198.51.100.0", device_id="device2") == "accepted"  # others enroll


def test_an_ipv6_client_counts_by_its_64(enrollments: Enrollments, clock: SettableClock) -> None:
    lockout = guarded(enrollments, clock)
    for n in range(3):  # a new address of the same /64, a new device, a new guess each time
        assert answer(lockout, challenge_password=f"g{n}", device_id=f"v{n}", client_address=f"2001:db8:1:2::{n}") == (
            REFUSED
        )
    assert answer(lockout, client_address="2001:db8:1:2:abcd::1") == LOCKED
    assert answer(lockout, client_address="2001:db8:1:3::1") == "accepted"


def test_mapped_and_plain_ipv4_are_one_address(enrollments: Enrollments, clock: SettableClock) -> None:
    lockout = guarded(enrollments, clock)
    for n, address in enumerate(["192.0.2.9", "::ffff:192.0.2.9", "192.0.2.9"]):
        assert answer(lockout, challenge_password=f"g{n}", device_id=f"v{n}", client_address=address) == REFUSED
    assert answer(lockout, client_address="::ffff:192.0.2.9") == LOCKED


def test_a_noisy_device_locks_its_address_and_itself_not_its_neighbours(
    enrollments: Enrollments, clock: SettableClock
) -> None:
    """The address counter locks requests from that address only; a device key locks only that device."""
    lockout = guarded(enrollments, clock, threshold=3)
    retries = [answer(lockout, challenge_password="stale", client_address="192.0.2.20") for _ in range(5)]
    assert retries == [REFUSED] * 3 + [LOCKED] * 2  # one misconfigured device retrying
    assert answer(lockout, client_address="192.0.2.21", device_id="neighbour") == "accepted"
    assert answer(lockout, client_address="192.0.2.20", device_id="neighbour") == LOCKED  # its address


def test_the_profile_guard_suspends_the_static_challenge_alone(
    enrollments: Enrollments, clock: SettableClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Untargeted guessing: every guess from a new address, for a new device, with a new value."""
    lockout = guarded(enrollments, clock, threshold=3, profile_threshold=6)
    secret = new_one_time_challenge(
        enrollments, "otp-device", "default", dt.timedelta(hours=1), created_by="mdm", now=clock()
    )
    with caplog.at_level(logging.WARNING, logger="scep.lockout"):
        for n in range(6):
            fresh = {"device_id": f"bot-{n}", "client_address": f"203.0.113.{n}"}
            assert answer(lockout, challenge_password=f"guess-{n}", **fresh) == REFUSED
    assert "SCEP profile 'default': 6 wrong challenges" in caplog.text
    assert [r.levelno for r in caplog.records if "SCEP profile" in r.getMessage()] == [logging.ERROR]
    # The right and a wrong static secret now get one answer, from fresh addresses and devices.
    assert answer(lockout, device_id="new-a", client_address="198.51.100.1") == LOCKED
    assert answer(lockout, challenge_password="wrong", device_id="new-b", client_address="198.51.100.2") == LOCKED
    # One-time challenges still work, and so would renewals (they never reach the lockout).
    otp = {"challenge_password": secret, "device_id": "otp-device", "client_address": "198.51.100.3"}
    assert answer(lockout, **otp) == "accepted"
    # Devices presenting the right secret during the suspension neither lock it nor prolong the suspension.
    clock.advance(minutes=10)
    for n in range(10):
        assert answer(lockout, device_id=f"fleet-{n}", client_address=f"192.0.2.{100 + n}") == LOCKED
    clock.advance(minutes=5)  # the suspension lifts scep_lockout_minutes after it began
    assert answer(lockout, device_id="fleet-0", client_address="192.0.2.100") == "accepted"


def test_the_profile_guard_counts_distinct_guesses_not_one_stale_value(
    enrollments: Enrollments, clock: SettableClock
) -> None:
    """A fleet still sending an old static secret locks that value after `threshold` tries; later tries
    are refused unseen and never reach the profile counter."""
    lockout = guarded(enrollments, clock, threshold=3, profile_threshold=6)
    for n in range(20):
        answer(lockout, challenge_password="last-years-secret", device_id=f"d{n}", client_address=f"192.0.2.{n}")
    assert answer(lockout, device_id="new", client_address="198.51.100.9") == "accepted"


def test_without_a_profile_threshold_there_is_no_profile_guard(enrollments: Enrollments, clock: SettableClock) -> None:
    lockout = guarded(enrollments, clock, threshold=3, profile_threshold=None)
    for n in range(20):
        answer(lockout, challenge_password=f"g{n}", device_id=f"d{n}", client_address=f"203.0.113.{n}")
    assert answer(lockout, device_id="new", client_address="198.51.100.9") == "accepted"
    assert enrollments.locks(["profile:default"], clock()) == {}


def test_the_suspended_static_challenge_is_not_even_compared() -> None:
    suspended = replace(REQUEST, suspended=frozenset({ChallengeKind.STATIC}))
    with pytest.raises(Unauthorized) as caught:
        StaticChallenge(SECRET).validate(suspended)
    assert caught.value.public_message == REFUSED and "suspended" in caught.value.detail


def test_thresholds_are_checked(enrollments: Enrollments, clock: SettableClock) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        guarded(enrollments, clock, profile_threshold=0)
    with pytest.raises(ValueError, match="at least 1"):
        enrollments.count_failures({"profile:x": 0}, clock(), window=WINDOW, lock_for=WINDOW)


def test_locks_reads_any_number_of_keys(enrollments: Enrollments, clock: SettableClock) -> None:
    keys = [f"address:default:192.0.2.{n}" for n in range(7)]
    enrollments.count_failures({key: 1 for key in keys[::2]}, clock(), window=WINDOW, lock_for=WINDOW)
    assert enrollments.locks(keys, clock()) == dict.fromkeys(keys[::2], clock() + WINDOW)
    assert enrollments.locks([], clock()) == {}
