"""The counters of the SCEP challenge lockout (scep.challenges.Lockout): what a refusal counts against.

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

import hashlib
import ipaddress
from dataclasses import dataclass

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
