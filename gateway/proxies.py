"""Who the client is and whether its connection was HTTPS, for every listener and every consumer.

The socket says it: the peer address, and TLS or not. Forwarding headers (`Forwarded`, RFC 7239;
`X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Ssl`) are read only when the socket peer is a
configured trusted proxy (`listen.trusted_proxies`); from anyone else they are ignored, whatever
they say. The chain is walked from the right: each entry was written by the hop to its right, so
entries are believed only while that hop is a trusted proxy, and the rightmost entry that is not a
trusted proxy is the client (entries further left were written by the client and prove nothing).

Fail closed: a scheme is HTTPS only when every statement the trusted chain makes about the client's
connection says so; an entry that is not an IP address ("unknown", an obfuscated name, garbage)
leaves the client address unknown; `Forwarded` and `X-Forwarded-For` that disagree about the client
leave it unknown too (one of them was written by the client, and nothing says which).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from est.auth import ProxyNetwork, peer_is_trusted

MAX_HOPS = 32  # entries of a forwarding header walked at most; a longer chain is cut (fail closed)
MAX_NODE = 100  # characters of one node ("[2001:db8::1]:443" is 17); longer is not an address
_PORT = re.compile(r"\d{1,5}|_[A-Za-z0-9._-]+")  # RFC 7239 §6: node-port, or an obfuscated port
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 token


@dataclass(frozen=True)
class Transport:
    """The resolved facts of one request's connection."""

    scheme: str  # "https" or "http": the client's own connection
    client_address: str | None  # canonical IP address; None when a trusted chain leaves it unknown
    via_proxy: bool  # the socket peer is a trusted proxy
    note: str | None = None  # why forwarding headers were (partly) disbelieved, for the log


@dataclass(frozen=True)
class _Hop:
    """One forwarding entry: the node a proxy received the request from, and over what."""

    node: str | None  # the raw node ("for" of RFC 7239, an X-Forwarded-For entry); None: not stated
    proto: str | None  # the scheme that proxy received it over, as stated; None: not stated


@dataclass(frozen=True)
class _ChainEnd:
    """What one header family says about the client."""

    address_stated: bool
    address: str | None
    proto: str | None


def normalise_address(text: str | None) -> str | None:
    """An IP address as a socket or a forwarding header gives it, in canonical form; None if it is none.

    Accepts '192.0.2.1', '192.0.2.1:8080', '2001:DB8::1', '[2001:db8::1]', '[2001:db8::1]:443'
    (RFC 7239 §6 nodes, ports may be obfuscated); '::ffff:192.0.2.1' (a dual-stack socket's IPv4
    peer) becomes '192.0.2.1'. 'unknown', obfuscated names ('_hidden') and garbage are None.
    """
    if text is None:
        return None
    node = text.strip()
    if not node or len(node) > MAX_NODE:
        return None
    host = node
    if node.startswith("["):
        end = node.find("]")
        if end < 0:
            return None
        host, rest = node[1:end], node[end + 1 :]
        if rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:])):
            return None
    elif node.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has at least two colons
        host, port = node.split(":")
        if not _PORT.fullmatch(port):
            return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if node.startswith("[") and address.version != 6:
        return None  # brackets hold IPv6 only
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _split_outside_quotes(text: str, separator: str) -> list[str] | None:
    """`text` split at `separator` where it is not inside a quoted-string; None if a quote is open."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted or escaped:
        return None
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str | None:
    """A token, or the content of a quoted-string (RFC 9110 §5.6.4); None when it is neither."""
    if _TOKEN.fullmatch(value):
        return value
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return None


def parse_forwarded(value: str) -> list[dict[str, str]] | None:
    """The elements of a `Forwarded` header (RFC 7239 §4), parameter names lower-cased; None when
    the header is malformed (an open quote, a pair without '=', a repeated parameter)."""
    elements = _split_outside_quotes(value, ",")
    if elements is None:
        return None
    parsed: list[dict[str, str]] = []
    for element in elements:
        pairs: dict[str, str] = {}
        for raw_pair in _split_outside_quotes(element, ";") or []:
            pair = raw_pair.strip()
            if not pair:
                continue  # RFC 7239 allows empty pairs and empty elements
            name, equals, raw = pair.partition("=")
            name = name.strip().lower()
            unquoted = _unquote(raw.strip())
            if not equals or not _TOKEN.fullmatch(name) or unquoted is None or name in pairs:
                return None
            pairs[name] = unquoted
        if pairs:
            parsed.append(pairs)
    return parsed


def _forwarded_hops(value: str) -> list[_Hop] | None:
    elements = parse_forwarded(value)
    if elements is None:
        return None
    return [_Hop(element.get("for"), element.get("proto")) for element in elements]


def _x_forwarded_hops(forwarded_for: str, forwarded_proto: str | None) -> list[_Hop]:
    """X-Forwarded-For entries paired with X-Forwarded-Proto entries aligned from the right (each proxy
    appends to both); where the proto list is shorter, its rightmost entry (the nearest proxy's word)."""
    nodes = [entry.strip() for entry in forwarded_for.split(",")]
    protos = [entry.strip() for entry in forwarded_proto.split(",")] if forwarded_proto else []
    hops = []
    for offset, node in enumerate(reversed(nodes)):
        proto = protos[-1 - offset] if offset < len(protos) else (protos[-1] if protos else None)
        hops.append(_Hop(node, proto))
    hops.reverse()
    return hops


def _walk(peer: str | None, hops: Sequence[_Hop], trusted: Sequence[ProxyNetwork]) -> _ChainEnd:
    """From the (trusted) peer leftwards, while the hop that wrote an entry is a trusted proxy."""
    address = peer
    proto: str | None = None
    stated = False
    for hop in list(reversed(hops))[:MAX_HOPS]:
        proto = hop.proto
        if hop.node is None:  # a Forwarded element without "for": nothing said about the address
            return _ChainEnd(stated, address if stated else None, proto)
        stated = True
        address = normalise_address(hop.node)
        if address is None or not peer_is_trusted(address, trusted):
            return _ChainEnd(True, address, proto)
    if len(hops) > MAX_HOPS:
        return _ChainEnd(True, None, None)  # a chain longer than any real one: nothing believed
    return _ChainEnd(stated, address, proto)


def _header(environ: Mapping[str, object], name: str) -> str | None:
    value = environ.get(name)
    return value if isinstance(value, str) and value.strip() else None


def resolve(environ: Mapping[str, object], socket_scheme: str, trusted: Sequence[ProxyNetwork]) -> Transport:
    """The scheme and client address of a request, from its WSGI environ and the socket's scheme."""
    peer = _header(environ, "REMOTE_ADDR")
    peer_address = normalise_address(peer)
    if not peer_is_trusted(peer_address, trusted):
        return Transport(socket_scheme, peer_address if peer_address is not None else peer, via_proxy=False)
    ends: dict[str, _ChainEnd] = {}
    notes: list[str] = []
    forwarded = _header(environ, "HTTP_FORWARDED")
    if forwarded is not None:
        hops = _forwarded_hops(forwarded)
        if hops is None:
            notes.append(f"malformed Forwarded header {forwarded[:200]!r}")
            ends["Forwarded"] = _ChainEnd(True, None, "invalid")
        else:
            ends["Forwarded"] = _walk(peer_address, hops, trusted)
    forwarded_for = _header(environ, "HTTP_X_FORWARDED_FOR")
    forwarded_proto = _header(environ, "HTTP_X_FORWARDED_PROTO")
    if forwarded_for is not None:
        ends["X-Forwarded-For"] = _walk(peer_address, _x_forwarded_hops(forwarded_for, forwarded_proto), trusted)
    elif forwarded_proto is not None:  # a proxy that says only the scheme: its rightmost word
        ends["X-Forwarded-Proto"] = _ChainEnd(False, None, forwarded_proto.split(",")[-1].strip())

    addresses = {end.address for end in ends.values() if end.address_stated}
    client: str | None = peer_address
    if len(addresses) == 1:
        client = addresses.pop()
    elif len(addresses) > 1:
        client = None
        said = (forwarded or "")[:200], (forwarded_for or "")[:200]
        notes.append(f"Forwarded {said[0]!r} and X-Forwarded-For {said[1]!r} name different clients")
    statements = [end.proto.strip().lower() for end in ends.values() if end.proto is not None]
    forwarded_ssl = _header(environ, "HTTP_X_FORWARDED_SSL")
    if forwarded_ssl is not None:
        statements.append("https" if forwarded_ssl.strip().lower() == "on" else "http")
    scheme = socket_scheme
    if statements:
        scheme = "https" if all(statement == "https" for statement in statements) else "http"
    return Transport(scheme, client, via_proxy=True, note="; ".join(notes) or None)
