"""Configuration: one TOML file, every key overridable by a GATEWAY_* variable, validated at start-up.

Every setting is declared once in gateway.settings.SETTINGS; the sample file, the environment
names and the validation all come from that table. Profiles live under [profiles.NAME] and are
validated by shared_ca.profiles.
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
from gateway.settings import ENV_PREFIX, PROFILE_HELP, SETTINGS, TOKEN_KEY_SETTINGS, Setting
from shared_ca.identity import IdentityRule
from shared_ca.kms import KmsUriError, is_token_key, parse_key_uri, parse_token_uri
from shared_ca.profiles import DEFAULT_PROFILES, Profile, ProfileError, profile_from_mapping
from shared_ca.storage.db import sqlite_url, validate_database_url

CONFIG_FILE_NAME = "config.toml"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key (and where it came from)."""


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
    if setting.kind in ("kms", "path"):
        _check_token_reference(setting, value, where)
    if setting.kind == "url" and value:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"{where}: expected an http:// or https:// URL, got {value!r}")
    return value


def _check_token_reference(setting: Setting, value: str, where: str) -> None:
    """keys.kms must be a usable token URI; a key setting may name a key in it (shared_ca.kms)."""
    try:
        if setting.kind == "kms" and value:
            parse_token_uri(value)
        elif setting.kind == "path" and is_token_key(value):
            if setting.key not in TOKEN_KEY_SETTINGS:
                allowed = ", ".join(sorted(TOKEN_KEY_SETTINGS))
                raise ConfigError(f"{where}: only {allowed} may name a key in a token (pkcs11:); this must be a file")
            parse_key_uri(value)
    except KmsUriError as exc:
        raise ConfigError(f"{where}: {exc}") from None


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
    for key, help_text in PROFILE_HELP.items():
        value = getattr(default, key)
        profile_lines.append(f"# {help_text}")
        profile_lines.append(f"{key} = {_toml_value(list(value) if isinstance(value, tuple) else value)}")
    return render_config({}, {}, commented=True) + "\n".join(profile_lines) + "\n"
