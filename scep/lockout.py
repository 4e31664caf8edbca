"""The SCEP challenge lockout: refuse guessers without refusing the fleet.

A wrong challenge counts against four keys of the `challenge_failures` table:

- `challenge:<sha256 of the presented password>`: the value guessed (a stolen one-time challenge
  replayed for other devices, a stale static challenge on many devices);
- `device:<sha256 of profile and device identity>`: the device the CSR names, from any address
  (guessing one device's challenge from many addresses);
- `address:<profile>:<client>`: the real client address (trusted-proxy aware), an IPv6 client by
  its /64 (one subscriber's prefix; a new address in it is no new guesser); `unknown` when a trusted
  proxy chain left the address unknown;
- `profile:<profile>`: every wrong challenge of the profile, from anywhere (untargeted guessing of the
  profile's static challenge), with its own, higher threshold.

Keys are at most 255 characters (the column); a longer one is replaced by its SHA-256.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from scep.challenges import (
    LOCKED,
    AnyOf,
    ChallengeAccepted,
    ChallengeKind,
    ChallengeNotVerifiable,
    ChallengeRequest,
    ChallengeValidator,
    OneTimeChallenge,
    StaticChallenge,
    StoredChallenges,
    WebhookChallenge,
)
from shared_ca.authority import Clock, utcnow
from shared_ca.errors import Unauthorized
from shared_ca.profiles import Profile
from shared_ca.storage.enrollment import FailureCount

log = logging.getLogger(__name__)
KEY_MAX = 255
IPV6_PREFIX = 64
UNKNOWN_ADDRESS = "unknown"


def address_bucket(address: str | None) -> str:
    """What the address counter counts: an IPv4 address, an IPv6 address's /64, or 'unknown'."""
    if not address:
        return UNKNOWN_ADDRESS
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return address.strip()[:100] or UNKNOWN_ADDRESS  # not an IP address (a UNIX socket): as given
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, IPV6_PREFIX), strict=False))
    return str(parsed)


def _bounded(prefix: str, rest: str) -> str:
    key = prefix + rest
    return key if len(key) <= KEY_MAX else prefix + hashlib.sha256(rest.encode("utf-8")).hexdigest()


class FailureCounters(Protocol):
    """The lockout storage a Lockout uses (shared_ca.storage.enrollment)."""

    def locks(self, keys: Iterable[str], now: dt.datetime) -> dict[str, dt.datetime]: ...
    def count_failures(
        self, thresholds: Mapping[str, int], now: dt.datetime, *, window: dt.timedelta, lock_for: dt.timedelta
    ) -> dict[str, FailureCount]: ...


class ChallengeStorage(StoredChallenges, FailureCounters, Protocol):
    """What a profile's challenge check reads and writes."""


@dataclass(frozen=True)
class LockoutKeys:
    """The counters of one request."""

    value: str | None  # None when no challenge was presented
    device: str | None  # None when the CSR names no device
    address: str
    profile: str

    @property
    def per_request(self) -> tuple[str, ...]:
        """The keys whose lock refuses the request outright."""
        return tuple(key for key in (self.value, self.device, self.address) if key is not None)


def lockout_keys(
    profile: str, challenge_password: str | None, device_id: str | None, client_address: str | None
) -> LockoutKeys:
    """The counters a request for `profile` counts against when its challenge is refused."""
    value = None
    if challenge_password is not None:
        value = "challenge:" + hashlib.sha256(challenge_password.encode("utf-8")).hexdigest()
    device = None
    if device_id:
        device = "device:" + hashlib.sha256(f"{profile}\0{device_id}".encode()).hexdigest()
    return LockoutKeys(
        value=value,
        device=device,
        address=_bounded("address:", f"{profile}:{address_bucket(client_address)}"),
        profile=_bounded("profile:", profile),
    )


class Lockout:
    """Refuses guessers without refusing the fleet: counts wrong challenges on four keys
    (`lockout_keys`) and refuses while one of the request's own keys is locked.

    - The presented value, the device the CSR names (from any address) and the real client address
      (an IPv6 client by its /64) each lock after `threshold` wrong challenges within `window`, for
      `lock_for`. A lock refuses only requests with that same key: a noisy address behind a
      trusted proxy locks itself, never the devices behind the same proxy.
    - The profile counter counts every wrong challenge of the profile, from anywhere. At
      `profile_threshold` it logs an error and suspends the profile's static challenge for
      `lock_for`: the one shared secret is the only thing untargeted guessing from many addresses
      and device names can find, so it alone stops being accepted; one-time challenges, the webhook
      and renewals go on. While it is suspended a request's failure is not counted against its
      value or the profile (a device with the right secret must not lock the right secret, nor
      prolong the suspension), but still against its device and address.

    A locked request is refused before the inner validator runs, so it learns nothing and spends
    nothing; during a suspension the static challenge is refused without being compared, so a
    right and a wrong secret get the same answer. Counters lapse `window` after their first failure;
    success resets none (a correct secret never fails, and resetting the address counter would hand
    a guesser sharing a NAT with a good device fresh attempts).
    """

    def __init__(
        self,
        inner: ChallengeValidator,
        counters: FailureCounters,
        *,
        threshold: int,
        window: dt.timedelta,
        lock_for: dt.timedelta,
        profile_threshold: int | None = None,
        clock: Clock = utcnow,
    ) -> None:
        if threshold < 1 or (profile_threshold is not None and profile_threshold < 1):
            raise ValueError("the lockout threshold is at least 1")
        self.inner = inner
        self.counters = counters
        self.threshold = threshold
        self.profile_threshold = profile_threshold
        self.window = window
        self.lock_for = lock_for
        self.clock = clock

    @staticmethod
    def keys(request: ChallengeRequest) -> LockoutKeys:
        """The counters a request's failure counts against."""
        return lockout_keys(request.profile, request.challenge_password, request.device_id, request.client_address)

    def validate(self, request: ChallengeRequest) -> ChallengeAccepted:
        keys = self.keys(request)
        guarded = self.profile_threshold is not None
        locks = self.counters.locks([*keys.per_request, keys.profile] if guarded else keys.per_request, self.clock())
        held = sorted((key.split(":", 1)[0], until) for key, until in locks.items() if key in keys.per_request)
        if held:
            kinds = ", ".join(kind for kind, _until in held)
            until = max(until for _kind, until in held)
            cause = f"locked out until {until.isoformat()} (counter: {kinds}; client {request.client_address})"
            log.warning("SCEP transaction %s: %s", request.transaction_id, cause)
            raise Unauthorized(LOCKED, detail=cause)
        suspended = keys.profile in locks
        if suspended:
            request = replace(request, suspended=request.suspended | {ChallengeKind.STATIC})
        try:
            return self.inner.validate(request)
        except ChallengeNotVerifiable:
            raise
        except Unauthorized as exc:
            self._count(request, keys, suspended)
            if suspended:
                lifts = locks[keys.profile].isoformat()
                raise Unauthorized(LOCKED, detail=f"{exc.detail} (profile guard until {lifts})") from exc
            raise

    def _count(self, request: ChallengeRequest, keys: LockoutKeys, suspended: bool) -> None:
        thresholds = {key: self.threshold for key in keys.per_request if not (suspended and key == keys.value)}
        if self.profile_threshold is not None and not suspended:
            thresholds[keys.profile] = self.profile_threshold
        counts = self.counters.count_failures(thresholds, self.clock(), window=self.window, lock_for=self.lock_for)
        for key, count in counts.items():
            if count.failures == thresholds[key]:  # this failure locked it
                self._locked_now(request, key, count)

    def _locked_now(self, request: ChallengeRequest, key: str, count: FailureCount) -> None:
        kind = key.split(":", 1)[0]
        until = count.locked_until.isoformat() if count.locked_until else "?"
        minutes = int(self.window.total_seconds() // 60)
        if kind == "profile":
            log.error(
                "SCEP profile %r: %d wrong challenges within %d minutes from any address; possible guessing of "
                "its challenge: its static challenge (if any) is refused until %s (one-time challenges, the "
                "webhook and renewals still work). Consider rotating it or using one-time challenges.",
                request.profile,
                count.failures,
                minutes,
                until,
            )
        elif kind == "address":
            log.warning(
                "SCEP transaction %s: client %s locked out until %s after %d wrong challenges (if this is a "
                "load balancer or proxy, list it in listen.trusted_proxies)",
                request.transaction_id,
                request.client_address,
                until,
                count.failures,
            )
        else:
            what = f"device {request.device_id!r}" if kind == "device" else "the presented challenge"
            log.warning(
                "SCEP transaction %s: %s locked out until %s after %d wrong challenges",
                request.transaction_id,
                what,
                until,
                count.failures,
            )


def challenge_check(profile: Profile, storage: ChallengeStorage, clock: Clock) -> Lockout:
    """The profile's challenge check: static, one-time and webhook, under a lockout (with the
    profile-wide guard of its static challenge, when it has one)."""
    validators: list[ChallengeValidator] = []
    if profile.scep_challenge:
        validators.append(StaticChallenge(profile.scep_challenge))
    validators.append(OneTimeChallenge(storage, clock))
    if profile.scep_webhook_url:
        validators.append(
            WebhookChallenge(
                profile.scep_webhook_url,
                profile.scep_webhook_secret.encode("utf-8"),
                float(profile.scep_webhook_timeout_seconds),
            )
        )
    window = dt.timedelta(minutes=profile.scep_lockout_minutes)
    return Lockout(
        AnyOf(validators),
        storage,
        threshold=profile.scep_lockout_threshold,
        window=window,
        lock_for=window,
        profile_threshold=profile.scep_lockout_profile_threshold if profile.scep_challenge else None,
        clock=clock,
    )
