"""Configuration: one TOML file, every key overridable by a GATEWAY_* variable, validated at start-up.

Every setting is declared once in SETTINGS; the sample file, the environment names and the
validation all come from that table. Profiles live under [profiles.NAME] and are validated by
shared_ca.profiles.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from est.auth import ProxyNetwork, parse_trusted_proxies
from shared_ca.identity import IdentityRule
from shared_ca.profiles import DEFAULT_PROFILES, Profile, ProfileError, profile_from_mapping
from shared_ca.storage.db import sqlite_url, validate_database_url

ENV_PREFIX = "GATEWAY_"
CONFIG_FILE_NAME = "config.toml"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key (and where it came from)."""


@dataclass(frozen=True)
class Setting:
    key: str  # dotted: section.name
    kind: str  # str | int | bool | hostport | url | path | choice | networks | identity | fingerprints
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.replace(".", "_").upper()


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "database_url",
        "str",
        "",
        "SQLAlchemy URL; empty means SQLite in the data directory (gateway.db). "
        "For several nodes: postgresql+psycopg://USER:PASSWORD@HOST/DB",
    ),
    Setting(
        "public_base_url",
        "url",
        "",
        "Base URL written into certificates for CRL, OCSP and CA issuers; empty means http://<listen.http>",
    ),
    Setting("default_profile", "str", "default", "Profile used when a request names none"),
    Setting("listen.http", "hostport", "127.0.0.1:8080", "Plain-HTTP listener (SCEP, CRL, OCSP, CA certificate)"),
    Setting("listen.https", "hostport", "127.0.0.1:8443", "HTTPS listener (EST, SCEP, admin, CRL, OCSP)"),
    Setting("listen.workers", "int", 2, "gunicorn worker processes per listener", minimum=1, maximum=64),
    Setting(
        "listen.threads",
        "int",
        4,
        "Deprecated and ignored: each connection is a greenlet of the gevent worker, not a thread",
        minimum=1,
        maximum=256,
    ),
    Setting(
        "listen.connections",
        "int",
        2000,
        "Connections one worker holds at once (idle and slow ones included)",
        minimum=10,
        maximum=100000,
    ),
    Setting(
        "listen.max_connections_per_address",
        "int",
        128,
        "Connections one client address may hold per worker (trusted proxies exempt)",
        minimum=1,
        maximum=100000,
    ),
    Setting(
        "listen.tls_handshake_timeout_seconds",
        "int",
        10,
        "A TLS handshake not finished within this is dropped",
        minimum=1,
        maximum=300,
    ),
    Setting(
        "listen.header_timeout_seconds",
        "int",
        15,
        "A request head not received in full within this (and a kept-alive connection idle this long) is closed",
        minimum=1,
        maximum=300,
    ),
    Setting(
        "listen.body_timeout_seconds",
        "int",
        30,
        "A request body not received in full within this gets 408; also the limit of any single read or write",
        minimum=1,
        maximum=3600,
    ),
    Setting("listen.timeout_seconds", "int", 30, "a worker silent for this long is restarted", minimum=5, maximum=3600),
    Setting(
        "listen.trusted_proxies",
        "networks",
        "",
        "Reverse proxies and load balancers (comma-separated addresses or CIDRs) whose Forwarded / "
        "X-Forwarded-For / X-Forwarded-Proto headers are believed, on both listeners; empty: nobody's",
    ),
    Setting(
        "admission.max_in_flight",
        "int",
        16,
        "Protocol operations one worker runs at once; more wait for a slot (0 would refuse all: at least 1)",
        minimum=1,
        maximum=10000,
    ),
    Setting(
        "admission.queue_wait_ms",
        "int",
        2000,
        "How long a request waits for a slot; then a SCEP enrollment is deferred (PENDING), an EST one gets "
        "202, anything else 503, all with Retry-After",
        minimum=0,
        maximum=600000,
    ),
    Setting(
        "admission.retry_after_seconds",
        "int",
        10,
        "Retry-After of a deferred or shed request, and of a rate-limited one",
        minimum=1,
        maximum=86400,
    ),
    Setting(
        "admission.device_rate_per_minute",
        "int",
        60,
        "Requests per minute one device may make per worker (0: no limit); over it EST answers 429 and SCEP a "
        "signed FAILURE",
        minimum=0,
        maximum=1000000,
    ),
    Setting(
        "admission.address_rate_per_minute",
        "int",
        0,
        "Requests per minute one client address may make per worker (0: no limit). Off by default: a fleet "
        "behind one NAT or balancer shares an address",
        minimum=0,
        maximum=1000000,
    ),
    Setting(
        "admission.deferred_check_seconds",
        "int",
        1,
        "How often each worker looks for deferred requests to issue with a slot it has to spare; a longer "
        "interval leaves more of a storm's capacity to the requests arriving",
        minimum=1,
        maximum=3600,
    ),
    Setting(
        "admission.burst",
        "int",
        30,
        "Requests one device, or one client address, may make at once before its rate applies",
        minimum=1,
        maximum=1000000,
    ),
    Setting("tls.cert", "path", "tls/server.crt", "HTTPS server certificate chain (PEM), relative to the data dir"),
    Setting("tls.key", "path", "tls/server.key", "HTTPS server private key (PEM)"),
    Setting("tls.min_version", "choice", "1.2", "Lowest TLS version accepted", choices=("1.2", "1.3")),
    Setting(
        "tls.client_certificates",
        "choice",
        "optional",
        "Ask TLS clients for a certificate (EST, admin); 'none' never asks",
        choices=("optional", "none"),
    ),
    Setting(
        "est.trusted_proxies",
        "networks",
        "",
        "Deprecated: use listen.trusted_proxies (this is read only while that is empty)",
    ),
    Setting(
        "est.proxy_cert_header",
        "str",
        "X-SSL-Client-Cert",
        "Header carrying the client certificate from a trusted proxy (URL-encoded PEM, as nginx's "
        "$ssl_client_escaped_cert)",
    ),
    Setting(
        "est.proxy_verify_header",
        "str",
        "X-SSL-Client-Verify",
        "Header in which a trusted proxy says it verified the client certificate (must be SUCCESS)",
    ),
    Setting(
        "est.kek_dir",
        "path",
        "est/keks",
        "Pre-shared key-encryption keys for EST serverkeygen (DecryptKeyIdentifier): files <hex id>.key",
    ),
    Setting(
        "migration.identity",
        "identity",
        "cn",
        "Which part of a certificate names the device, for imports and live enrollments alike: cn, "
        "san:dns|email|uri|ip|upn, serialNumber, or regex:PATTERN over the subject (group 'id')",
    ),
    Setting(
        "migration.est_url",
        "url",
        "",
        "EST base URL handed to devices (map files, sunset refusals); empty: https://<listen.https>/.well-known/est",
    ),
    Setting(
        "migration.silent_days",
        "int",
        14,
        "A mapped device silent on EST for this many days is reported as silent",
        minimum=1,
        maximum=3650,
    ),
    Setting(
        "migration.retire_after_days",
        "int",
        30,
        "A device whose certificate expired this many days ago (or is revoked) is retired",
        minimum=0,
        maximum=3650,
    ),
    Setting(
        "admin.client_cert_fingerprints",
        "fingerprints",
        "",
        "TLS client certificates (SHA-256 fingerprints, hex, comma-separated) accepted as admin "
        "credentials for the migration dashboard and its API; empty: admin tokens only",
    ),
    Setting("ca.name", "str", "ca", "Issuer name of the signing CA (URL path of its CRL: /crl/<name>.crl)"),
    Setting("ca.cert", "path", "ca/ca.crt", "CA certificate, followed by its own issuers if any (PEM)"),
    Setting("ca.key", "path", "ca/ca.key", "CA private key (PEM)"),
    Setting("ra.cert", "path", "ra/ra.crt", "SCEP RA certificate (PEM)"),
    Setting("ra.key", "path", "ra/ra.key", "SCEP RA private key (PEM)"),
    Setting("next_ca.cert", "path", "ca-next/ca.crt", "Next CA certificate (PEM), made by `gateway ca rollover`"),
    Setting("next_ca.key", "path", "ca-next/ca.key", "Next CA private key (PEM)"),
    Setting("next_ra.cert", "path", "ra-next/ra.crt", "SCEP RA certificate issued by the next CA (PEM)"),
    Setting("next_ra.key", "path", "ra-next/ra.key", "Private key of the next SCEP RA (PEM)"),
    Setting(
        "crl.validity_hours",
        "int",
        24,
        "nextUpdate of each CRL, in hours after thisUpdate",
        minimum=1,
        maximum=24 * 366,
    ),
    Setting(
        "crl.refresh_minutes",
        "int",
        60,
        "A new CRL is published this often even without revocations",
        minimum=1,
        maximum=60 * 24 * 365,
    ),
    Setting(
        "ocsp.validity_minutes",
        "int",
        60,
        "nextUpdate of each OCSP response, in minutes",
        minimum=1,
        maximum=60 * 24 * 7,
    ),
    Setting(
        "keys.passphrase_file",
        "path",
        "",
        "File holding the passphrase of the encrypted keys "
        "(or set GATEWAY_KEY_PASSPHRASE); empty: keys are not encrypted",
    ),
    Setting("log.format", "choice", "text", "Log format: text for people, json for machines", choices=("text", "json")),
    Setting("log.level", "choice", "info", "Log level", choices=("debug", "info", "warning", "error")),
)
_BY_KEY = {s.key: s for s in SETTINGS}
SECTIONS = tuple(dict.fromkeys(s.key.split(".")[0] for s in SETTINGS if "." in s.key))


@dataclass(frozen=True)
class GatewayConfig:
    """The validated configuration of one gateway (all nodes of a cluster share it)."""

    data_dir: Path
    values: Mapping[str, Any]
    profiles: Mapping[str, Profile]
    source: Path | None
    deprecations: tuple[str, ...] = ()  # one line per deprecated setting in use, logged at start-up

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def path(self, key: str) -> Path:
        """A path setting, resolved against the data directory."""
        value = self.values[key]
        return (self.data_dir / value) if value else Path()

    @property
    def database_url(self) -> str:
        return str(self.values["database_url"]) or sqlite_url(self.data_dir / "gateway.db")

    @property
    def public_base_url(self) -> str:
        value = str(self.values["public_base_url"])
        if value:
            return value.rstrip("/")
        return f"http://{self.values['listen.http']}"

    @property
    def trusted_proxies(self) -> tuple[ProxyNetwork, ...]:
        """The networks whose forwarding headers are believed: listen.trusted_proxies, else the
        deprecated est.trusted_proxies."""
        return parse_trusted_proxies(self.values["listen.trusted_proxies"] or self.values["est.trusted_proxies"])

    @property
    def identity_rule(self) -> IdentityRule:
        return IdentityRule.parse(self.values["migration.identity"])

    @property
    def est_url(self) -> str:
        """The EST base URL devices are told to use."""
        if self.values["migration.est_url"]:
            return str(self.values["migration.est_url"]).rstrip("/")
        host, port = parse_hostport(self.values["listen.https"])
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{port}/.well-known/est"

    @property
    def default_profile(self) -> Profile:
        return self.profiles[self.values["default_profile"]]


def parse_hostport(text: str) -> tuple[str, int]:
    """'127.0.0.1:8080', '[::1]:8443', 'localhost:80' → (host, port); ValueError if malformed."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text)
    if not match:
        raise ValueError(f"expected HOST:PORT (IPv6 as [ADDR]:PORT), got {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    return host, port


def _convert(setting: Setting, value: Any, origin: str) -> Any:
    where = f"{setting.key} ({origin})"
    if setting.kind == "int":
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ConfigError(f"{where}: expected a whole number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        if setting.minimum is not None and value < setting.minimum:
            raise ConfigError(f"{where}: must be at least {setting.minimum}, got {value}")
        if setting.maximum is not None and value > setting.maximum:
            raise ConfigError(f"{where}: must be at most {setting.maximum}, got {value}")
        return value
    if setting.kind == "bool":
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if setting.kind == "choice" and value not in setting.choices:
        raise ConfigError(f"{where}: must be one of {', '.join(setting.choices)}, got {value!r}")
    if setting.kind == "fingerprints":
        for entry in (e.strip().lower().replace(":", "") for e in value.split(",")):
            if entry and not re.fullmatch(r"[0-9a-f]{64}", entry):
                raise ConfigError(f"{where}: {entry!r} is not a SHA-256 fingerprint (64 hex digits)")
    if setting.kind == "identity":
        try:
            IdentityRule.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if setting.kind == "networks":
        try:
            parse_trusted_proxies(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if setting.kind == "hostport":
        try:
            parse_hostport(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if setting.kind == "url" and value:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"{where}: expected an http:// or https:// URL, got {value!r}")
    return value


def _coerce_profile_env(value: str, default: Any) -> Any:
    if isinstance(default, bool):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return value  # not silently false: profile_from_mapping names the key and the bad value
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            return value  # profile_from_mapping names the key and the bad value
    if isinstance(default, tuple):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _flatten(data: Mapping[str, Any], origin: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a parsed TOML document into flat settings and the raw [profiles] table."""
    flat: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    for key, value in data.items():
        if key == "profiles":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(f"profiles ({origin}): expected [profiles.NAME] tables")
            profiles = value
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key} ({origin}): expected a [{key}] table")
            for sub, subvalue in value.items():
                dotted = f"{key}.{sub}"
                if dotted not in _BY_KEY:
                    raise ConfigError(f"{dotted} ({origin}): unknown setting")
                flat[dotted] = subvalue
        elif key in _BY_KEY:
            flat[key] = value
        else:
            raise ConfigError(f"{key} ({origin}): unknown setting")
    return flat, profiles


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML file with a one-line error for each way it can fail."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_config(
    data_dir: Path,
    config_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    require_file: bool = False,
) -> GatewayConfig:
    """Defaults < config file < GATEWAY_* environment < `overrides` (command-line flags)."""
    env = os.environ if environ is None else environ
    source = config_file
    if source is None and (data_dir / CONFIG_FILE_NAME).exists():
        source = data_dir / CONFIG_FILE_NAME
    if source is None and require_file:
        raise ConfigError(f"no {CONFIG_FILE_NAME} in {data_dir}: run `gateway init --data-dir {data_dir}` first")
    file_values, file_profiles = _flatten(read_config_file(source), str(source)) if source else ({}, {})

    values: dict[str, Any] = {}
    given: set[str] = set()  # the keys set anywhere but the defaults
    for setting in SETTINGS:
        given.add(setting.key)
        if overrides and overrides.get(setting.key) is not None:
            values[setting.key] = _convert(setting, overrides[setting.key], "command line")
        elif setting.env in env:
            values[setting.key] = _convert(setting, env[setting.env], f"environment {setting.env}")
        elif setting.key in file_values:
            values[setting.key] = _convert(setting, file_values[setting.key], str(source))
        else:
            values[setting.key] = setting.default
            given.discard(setting.key)

    profiles = _load_profiles(file_profiles, env, str(source))
    if values["default_profile"] not in profiles:
        raise ConfigError(
            f"default_profile: no profile named {values['default_profile']!r} (have: {', '.join(sorted(profiles))})"
        )
    if values["database_url"]:
        problem = validate_database_url(values["database_url"])
        if problem:
            raise ConfigError(f"database_url: {problem}")
    if not values["public_base_url"]:
        host, _port = parse_hostport(values["listen.http"])
        if host in ("0.0.0.0", "::"):  # noqa: S104 - detecting, not binding
            raise ConfigError("public_base_url: must be set when listen.http listens on all addresses")
    if values["crl.refresh_minutes"] >= values["crl.validity_hours"] * 60:
        raise ConfigError("crl.refresh_minutes: must be shorter than crl.validity_hours")
    linking = sorted(name for name, p in profiles.items() if p.est_pop_linking)
    if linking and values["tls.min_version"] == "1.3":
        # tls-unique (RFC 5929) exists only up to TLS 1.2, and Python's ssl offers no tls-exporter.
        raise ConfigError(
            f"profiles.{linking[0]}.est_pop_linking: needs TLS 1.2 for the tls-unique channel binding, "
            "but tls.min_version is 1.3"
        )
    return GatewayConfig(
        data_dir=data_dir,
        values=values,
        profiles=profiles,
        source=source,
        deprecations=_deprecations(values, given),
    )


def _deprecations(values: Mapping[str, Any], given: set[str]) -> tuple[str, ...]:
    """What the configuration uses that a later version will drop, and what to do instead."""
    found = []
    if "listen.threads" in given:
        found.append(
            "listen.threads is deprecated and ignored: a connection is a greenlet of the gevent worker, not a "
            "thread (see listen.connections and listen.max_connections_per_address)"
        )
    if values["est.trusted_proxies"] and values["listen.trusted_proxies"]:
        found.append("est.trusted_proxies is deprecated and ignored: listen.trusted_proxies is set")
    elif values["est.trusted_proxies"]:
        found.append(
            "est.trusted_proxies is deprecated: rename it listen.trusted_proxies (it now applies to both "
            "listeners, and a proxy must send X-Forwarded-Proto: https or Forwarded: proto=https for EST and "
            "the admin paths)"
        )
    return tuple(found)


def _load_profiles(file_profiles: Mapping[str, Any], env: Mapping[str, str], origin: str) -> dict[str, Profile]:
    profiles: dict[str, Profile] = {}
    names = list(dict.fromkeys([*DEFAULT_PROFILES, *file_profiles]))
    for name in names:
        data = dict(file_profiles.get(name, {}))
        base = DEFAULT_PROFILES.get(name)
        template = base or Profile(name=name)
        env_name = f"{ENV_PREFIX}PROFILES_{name.upper().replace('-', '_')}_"
        from_env: dict[str, str] = {}
        for field_name in (f.name for f in fields(Profile) if f.name != "name"):
            variable = env_name + field_name.upper()
            if variable in env:
                data[field_name] = _coerce_profile_env(env[variable], getattr(template, field_name))
                from_env[field_name] = variable
        try:
            profiles[name] = profile_from_mapping(name, data, base)
        except ProfileError as exc:
            where = f"environment {from_env[exc.key]}" if exc.key in from_env else origin
            raise ConfigError(f"profiles.{name}.{exc.key} ({where}): {exc.message}") from None
    return profiles


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # A JSON string literal is a valid TOML basic string.
    return json.dumps(str(value))


def render_config(values: Mapping[str, Any], profiles: Mapping[str, Mapping[str, Any]], *, commented: bool) -> str:
    """TOML text for `values` (and profile tables); with `commented`, every key with its help."""
    lines = ["# SCEP-to-EST gateway configuration. Every key can be overridden by GATEWAY_<SECTION>_<KEY>."]
    current_section = ""
    for setting in SETTINGS:
        if setting.key not in values and not commented:
            continue
        section = setting.key.split(".")[0] if "." in setting.key else ""
        if section != current_section:
            lines += ["", f"[{section}]"]
            current_section = section
        name = setting.key.split(".")[-1]
        if commented:
            lines.append(f"# {setting.help}  (env {setting.env})")
        value = values.get(setting.key, setting.default)
        lines.append(f"{name} = {_toml_value(value)}")
    for profile_name, data in profiles.items():
        lines += ["", f"[profiles.{profile_name}]"]
        for key, value in data.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def sample_config() -> str:
    """The commented sample printed by `gateway config sample`: every setting and every profile key."""
    default = DEFAULT_PROFILES["default"]
    profile_lines = [
        "",
        "# Profiles: [profiles.NAME]. 'default' and 'tls-server' exist built in; keys given here override them.",
        "# Env: GATEWAY_PROFILES_<NAME>_<KEY> (lists comma-separated).",
        "[profiles.default]",
    ]
    helps: dict[str, str] = {
        "description": "Shown in listings",
        "validity_days": "Certificate lifetime (capped by the CA's own expiry)",
        "backdate_minutes": "notBefore lies this far in the past, for clients with slow clocks",
        "key_usage": "digital_signature, content_commitment, key_encipherment, data_encipherment, key_agreement",
        "extended_key_usage": "client_auth, server_auth, code_signing, email_protection, ... or dotted OIDs",
        "key_types": "rsa, ec, ed25519",
        "rsa_min_bits": "Smallest RSA key accepted (never below 2048)",
        "rsa_max_bits": "Largest RSA key accepted",
        "ec_curves": "P-256, P-384, P-521",
        "subject_required": "Subject attributes a request must carry",
        "subject_allowed": "Subject attributes copied into certificates",
        "subject_unlisted": "A subject attribute not allowed: refuse the request, or drop the attribute",
        "subject_repeatable": "Subject attributes that may appear more than once (a repeated CN is refused)",
        "allow_multi_valued_rdns": "Accept multi-valued RDNs such as CN=a+O=b (relying parties read them differently)",
        "cn_pattern": "Regular expression the CN must match in full (empty: any)",
        "san_types": "subjectAltName types copied from requests: dns, ip, email, uri, upn, other, dirname",
        "san_unlisted": "A SAN of another type: refuse the request, or drop the SAN",
        "max_sans": "Most subjectAltNames in one certificate",
        "cn_as_dns_san": "Copy the CN into a DNS (or IP) subjectAltName",
        "revoke_on_renewal": "Revoke (superseded) the renewed certificate once the grace period ends",
        "renewal_grace_hours": "Hours the renewed certificate stays valid after its successor is issued",
        "allow_key_reuse": "Allow renewal with the same key",
        "renewal_window_days": "A certificate renews only this many days before it expires, or later (0: any time)",
        "protocols": "Protocols that may request this profile: scep, est. A profile that makes TLS server "
        "certificates (serverAuth, any or no EKU) has none unless set here; `gateway cert issue` ignores it",
        "scep_challenge": "Static SCEP challenge password of this profile (empty: none)",
        "approval": "auto: issue at once; manual: SCEP answers PENDING and EST 202 until `gateway requests approve`",
        "scep_ciphers": "SCEP envelope ciphers accepted (replies use the requester's): des, 3des, aes128, "
        "aes192, aes256, aes128-gcm, aes256-gcm",
        "scep_digests": "SCEP digests accepted: sha1, sha224, sha256, sha384, sha512; md5 only for a legacy fleet",
        "scep_renewal": "A request signed by a valid certificate of this CA renews without a challenge",
        "scep_webhook_url": "Ask this URL (HMAC-SHA256-signed JSON) whether to accept a SCEP request (empty: off)",
        "scep_webhook_secret": "HMAC key for the webhook's X-Gateway-Signature header",
        "scep_webhook_timeout_seconds": "Webhook timeout; no answer in time means refuse",
        "scep_signing_time_tolerance_minutes": "A SCEP message's signingTime, when sent, within this of the "
        "server's clock, else FAILURE badTime (0: not checked)",
        "scep_lockout_threshold": "Wrong challenges per presented value, device or client address (IPv6: per /64) "
        "before that one is locked out",
        "scep_lockout_minutes": "Length of a lockout, and the window the wrong attempts are counted in",
        "scep_lockout_profile_threshold": "Wrong challenges on the whole profile (any address, any device) that "
        "suspend its static challenge for scep_lockout_minutes; one-time challenges and renewals go on",
        "est_pop_linking": "EST: the CSR's challengePassword must carry the TLS channel binding (tls-unique; the "
        "HTTPS listener then negotiates TLS 1.2)",
        "est_csrattrs_enforce": "EST: refuse (400) a CSR that lacks what /csrattrs asks for",
        "est_required_san_types": "EST: subjectAltName types every CSR must carry (listed in /csrattrs)",
        "est_serverkeygen": "EST: allow /serverkeygen (the gateway generates the key and never stores it)",
        "est_retry_after_seconds": "EST: Retry-After of a 202 answer while a request awaits approval",
    }
    for key, help_text in helps.items():
        value = getattr(default, key)
        profile_lines.append(f"# {help_text}")
        profile_lines.append(f"{key} = {_toml_value(list(value) if isinstance(value, tuple) else value)}")
    return render_config({}, {}, commented=True) + "\n".join(profile_lines) + "\n"
