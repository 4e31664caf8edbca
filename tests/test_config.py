"""Configuration: defaults < file < GATEWAY_* environment < command line, every refusal naming its key,
the sample file, and the `gateway config` commands."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509

from est.auth import parse_trusted_proxies
from gateway.cli import main
from gateway.config import ConfigError, load_config, sample_config
from gateway.settings import SETTINGS
from shared_ca.profiles import DEFAULT_PROFILES, Profile
from shared_ca.storage.db import sqlite_url

BY_KEY = {s.key: s for s in SETTINGS}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ: a GATEWAY_* variable of the developer's shell must not leak in."""
    for name in list(os.environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


def toml_text(values: dict[str, Any], extra: str = "") -> str:
    """A config file holding `values` (dotted keys), written without the product's renderer."""
    top: list[str] = []
    sections: dict[str, list[str]] = {}
    for key, value in values.items():
        literal = json.dumps(value)
        if "." in key:
            section, name = key.split(".", 1)
            sections.setdefault(section, []).append(f"{name} = {literal}")
        else:
            top.append(f"{key} = {literal}")
    lines = list(top)
    for section, entries in sections.items():
        lines += ["", f"[{section}]", *entries]
    return "\n".join(lines) + "\n" + extra


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def assert_clean_failure(result: Any, *fragments: str) -> None:
    """A CLI refusal: exit status != 0, one 'Error:' line holding every fragment, no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.output
    for fragment in fragments:
        assert fragment in error_lines[0], result.output


# -- precedence --------------------------------------------------------------------------------------

# key: (value in the file, text of its GATEWAY_* variable, command-line value); each differs from
# the one it must beat.
PRECEDENCE: dict[str, tuple[Any, str, Any]] = {
    "database_url": ("sqlite:////var/lib/gw/file.db", "postgresql+psycopg://env@db.example/gw", "sqlite:////cli.db"),
    "public_base_url": ("https://file.example", "https://env.example:8443", "http://cli.example"),
    "default_profile": ("kiosk", "tls-server", "default"),
    "listen.http": ("0.0.0.0:80", "[::1]:8080", "localhost:9080"),
    "listen.https": ("0.0.0.0:443", "[::]:8443", "127.0.0.1:9443"),
    "listen.workers": (3, "5", 7),
    "listen.threads": (8, "16", 32),
    "listen.connections": (500, "800", 1200),
    "listen.max_connections_per_address": (10, "20", 30),
    "listen.tls_handshake_timeout_seconds": (4, "5", 6),
    "listen.header_timeout_seconds": (7, "8", 9),
    "listen.body_timeout_seconds": (40, "50", 60),
    "admission.max_in_flight": (4, "6", 8),
    "admission.queue_wait_ms": (100, "200", 300),
    "admission.retry_after_seconds": (11, "12", 13),
    "admission.device_rate_per_minute": (30, "40", 50),
    "admission.address_rate_per_minute": (300, "400", 500),
    "admission.burst": (5, "6", 7),
    "admission.deferred_check_seconds": (2, "3", 4),
    "listen.timeout_seconds": (60, "90", 120),
    "listen.trusted_proxies": ("10.0.0.2", "10.2.0.0/16, ::1", "192.168.1.6"),
    "tls.cert": ("file/tls.crt", "env/tls.crt", "cli/tls.crt"),
    "tls.key": ("file/tls.key", "env/tls.key", "cli/tls.key"),
    "tls.min_version": ("1.3", "1.2", "1.3"),
    "tls.client_certificates": ("none", "optional", "none"),
    "est.trusted_proxies": ("10.0.0.1", "10.1.0.0/16, ::1", "192.168.1.5"),
    "est.proxy_cert_header": ("X-File-Cert", "X-Env-Cert", "X-Cli-Cert"),
    "est.proxy_verify_header": ("X-File-Verify", "X-Env-Verify", "X-Cli-Verify"),
    "est.kek_dir": ("file/keks", "env/keks", "cli/keks"),
    "migration.identity": ("san:dns", "serialNumber", "regex:CN=(?P<id>dev-[0-9]+)"),
    "migration.est_url": ("https://file.example/est", "https://env.example/est", "https://cli.example/est"),
    "migration.silent_days": (7, "10", 21),
    "migration.retire_after_days": (5, "6", 9),
    "admin.client_cert_fingerprints": ("a" * 64, "b" * 64 + ", " + "c" * 64, "d" * 64),
    "ca.name": ("file-ca", "env-ca", "cli-ca"),
    "ca.cert": ("file/ca.crt", "env/ca.crt", "cli/ca.crt"),
    "ca.key": ("file/ca.key", "env/ca.key", "cli/ca.key"),
    "ra.cert": ("file/ra.crt", "env/ra.crt", "cli/ra.crt"),
    "ra.key": ("file/ra.key", "env/ra.key", "cli/ra.key"),
    "ra.encryption_cert": ("file/ra-enc.crt", "env/ra-enc.crt", "cli/ra-enc.crt"),
    "ra.encryption_key": ("file/ra-enc.key", "env/ra-enc.key", "cli/ra-enc.key"),
    "next_ca.cert": ("file/next-ca.crt", "env/next-ca.crt", "cli/next-ca.crt"),
    "next_ca.key": ("file/next-ca.key", "env/next-ca.key", "cli/next-ca.key"),
    "next_ra.cert": ("file/next-ra.crt", "env/next-ra.crt", "cli/next-ra.crt"),
    "next_ra.key": ("file/next-ra.key", "env/next-ra.key", "cli/next-ra.key"),
    "ra.renew_before_days": (10, "20", 45),
    "crl.validity_hours": (48, "72", 96),
    "crl.refresh_minutes": (30, "45", 50),
    "ocsp.validity_minutes": (30, "120", 240),
    "keys.passphrase_file": ("/etc/gw/file-pw", "/run/secrets/env-pw", "/cli-pw"),
    "keys.kms": (
        "pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=file?pin-source=file:///etc/gw/pin",
        "pkcs11:token=env?module-path=/opt/hsm/lib.so&pin-source=/run/pin",
        "pkcs11:module-path=/cli.so;serial=42?pin-value=1234",
    ),
    "metrics.allowed_addresses": ("10.0.0.3", "10.3.0.0/16, ::1", ""),
    "audit.node": ("gw-file", "gw-env", "gw-cli"),
    "audit.syslog": ("/dev/log", "udp://10.0.0.9:514", "udp://syslog.example:1514"),
    "log.format": ("json", "text", "json"),
    "log.level": ("debug", "warning", "error"),
}
KIOSK_PROFILE = '\n[profiles.kiosk]\ndescription = "Kiosks"\n'


def env_value(key: str) -> Any:
    text = PRECEDENCE[key][1]
    return int(text) if BY_KEY[key].kind == "int" else text


def precedence_file(tmp_path: Path) -> Path:
    return write(tmp_path / "gateway.toml", toml_text({k: v[0] for k, v in PRECEDENCE.items()}, KIOSK_PROFILE))


def test_precedence_table_covers_every_setting() -> None:
    assert set(PRECEDENCE) == set(BY_KEY)


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={})
    assert cfg.source is None
    assert dict(cfg.values) == {s.key: s.default for s in SETTINGS}
    assert dict(cfg.profiles) == DEFAULT_PROFILES
    assert cfg.default_profile is cfg.profiles["default"]
    assert cfg.database_url == sqlite_url(tmp_path / "gateway.db")
    assert cfg.public_base_url == "http://127.0.0.1:8080"
    assert cfg.path("ca.key") == tmp_path / "ca" / "ca.key"
    assert cfg.path("keys.passphrase_file") == Path()


def test_file_values(tmp_path: Path) -> None:
    config_file = precedence_file(tmp_path)
    cfg = load_config(tmp_path, config_file, environ={})
    assert cfg.source == config_file
    assert {k: cfg[k] for k in PRECEDENCE} == {k: v[0] for k, v in PRECEDENCE.items()}
    assert cfg.default_profile.name == "kiosk"
    assert cfg.default_profile.description == "Kiosks"
    assert cfg.database_url == "sqlite:////var/lib/gw/file.db"
    assert cfg.public_base_url == "https://file.example"
    assert cfg.path("ca.key") == tmp_path / "file" / "ca.key"
    assert cfg.path("keys.passphrase_file") == Path("/etc/gw/file-pw")


def test_config_toml_in_data_dir_is_found(tmp_path: Path) -> None:
    write(tmp_path / "config.toml", "[listen]\nworkers = 9\n")
    cfg = load_config(tmp_path, environ={})
    assert cfg.source == tmp_path / "config.toml"
    assert cfg["listen.workers"] == 9


def test_public_base_url_trailing_slash_is_dropped(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={"GATEWAY_PUBLIC_BASE_URL": "https://pki.example/gw/"})
    assert cfg.public_base_url == "https://pki.example/gw"


@pytest.mark.parametrize("key", list(PRECEDENCE), ids=[f"env/{k}" for k in PRECEDENCE])
def test_environment_beats_file(tmp_path: Path, key: str) -> None:
    setting = BY_KEY[key]
    cfg = load_config(tmp_path, precedence_file(tmp_path), environ={setting.env: PRECEDENCE[key][1]})
    assert cfg[key] == env_value(key)
    assert cfg[key] != PRECEDENCE[key][0]
    assert {k: cfg[k] for k in PRECEDENCE if k != key} == {k: v[0] for k, v in PRECEDENCE.items() if k != key}


@pytest.mark.parametrize("key", list(PRECEDENCE), ids=[f"cli/{k}" for k in PRECEDENCE])
def test_command_line_beats_environment(tmp_path: Path, key: str) -> None:
    environ = {BY_KEY[k].env: v[1] for k, v in PRECEDENCE.items()}
    cfg = load_config(tmp_path, precedence_file(tmp_path), environ=environ, overrides={key: PRECEDENCE[key][2]})
    assert cfg[key] == PRECEDENCE[key][2]
    assert cfg[key] != env_value(key)
    assert {k: cfg[k] for k in PRECEDENCE if k != key} == {k: env_value(k) for k in PRECEDENCE if k != key}


def test_override_of_none_means_not_given(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={"GATEWAY_LISTEN_WORKERS": "6"}, overrides={"listen.workers": None})
    assert cfg["listen.workers"] == 6


def test_environment_override_through_the_cli(runner: CliRunner, data_dir: Path) -> None:
    result = runner.invoke(
        main,
        ["config", "show", "--data-dir", str(data_dir)],
        env={"GATEWAY_LISTEN_WORKERS": "7", "GATEWAY_LOG_LEVEL": "debug"},
    )
    assert result.exit_code == 0, result.output
    shown = tomllib.loads(result.stdout)
    assert shown["listen"]["workers"] == 7
    assert shown["log"]["level"] == "debug"


def test_command_line_flag_beats_environment_through_the_cli(runner: CliRunner, data_dir: Path) -> None:
    # `serve --http` is validated before anything starts: the refusal names the command line as the source.
    # The bad CRL setting makes sure nothing starts even if the flag were ignored in favour of the variable.
    result = runner.invoke(
        main,
        ["serve", "--data-dir", str(data_dir), "--http", "no-port-here"],
        env={"GATEWAY_LISTEN_HTTP": "127.0.0.1:18080", "GATEWAY_CRL_REFRESH_MINUTES": "100000"},
    )
    assert_clean_failure(result, "listen.http (command line)", "expected HOST:PORT")


# -- profiles from the environment -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "profile", "field", "expected"),
    [
        pytest.param("GATEWAY_PROFILES_DEFAULT_VALIDITY_DAYS", "30", "default", "validity_days", 30, id="ok/int"),
        pytest.param(
            "GATEWAY_PROFILES_TLS_SERVER_KEY_TYPES", "ec, rsa", "tls-server", "key_types", ("ec", "rsa"), id="ok/list"
        ),
        pytest.param("GATEWAY_PROFILES_DEFAULT_CN_AS_DNS_SAN", "yes", "default", "cn_as_dns_san", True, id="ok/bool"),
        pytest.param("GATEWAY_PROFILES_KIOSK_MAX_SANS", "2", "kiosk", "max_sans", 2, id="ok/file-profile"),
        pytest.param(
            "GATEWAY_PROFILES_DEFAULT_SCEP_CHALLENGE",
            "env-secret",
            "default",
            "scep_challenge",
            "env-secret",
            id="ok/str",
        ),
    ],
)
def test_profile_environment_override(
    tmp_path: Path, variable: str, value: str, profile: str, field: str, expected: Any
) -> None:
    config_file = write(
        tmp_path / "c.toml",
        '[profiles.default]\nvalidity_days = 90\nscep_challenge = "file-secret"\n' + KIOSK_PROFILE,
    )
    cfg = load_config(tmp_path, config_file, environ={variable: value})
    assert getattr(cfg.profiles[profile], field) == expected


def test_profile_file_value_applies_without_environment(tmp_path: Path) -> None:
    config_file = write(tmp_path / "c.toml", "[profiles.default]\nvalidity_days = 90\n")
    cfg = load_config(tmp_path, config_file, environ={})
    assert cfg.profiles["default"].validity_days == 90
    assert cfg.profiles["tls-server"] == DEFAULT_PROFILES["tls-server"]


@pytest.mark.parametrize(
    ("variable", "value", "fragments"),
    [
        pytest.param(
            "GATEWAY_PROFILES_DEFAULT_VALIDITY_DAYS",
            "ninety",
            ["profiles.default.validity_days (environment GATEWAY_PROFILES_DEFAULT_VALIDITY_DAYS)", "whole number"],
            id="fail/int",
        ),
        pytest.param(
            "GATEWAY_PROFILES_DEFAULT_VALIDITY_DAYS",
            "0",
            ["profiles.default.validity_days (environment GATEWAY_PROFILES_DEFAULT_VALIDITY_DAYS)", "between 1"],
            id="fail/int-range",
        ),
        pytest.param(
            "GATEWAY_PROFILES_DEFAULT_ALLOW_KEY_REUSE",
            "ture",
            [
                "profiles.default.allow_key_reuse (environment GATEWAY_PROFILES_DEFAULT_ALLOW_KEY_REUSE)",
                "true or false",
            ],
            id="fail/bool",
        ),
        pytest.param(
            "GATEWAY_PROFILES_TLS_SERVER_KEY_TYPES",
            "rsa,dsa",
            ["profiles.tls-server.key_types (environment GATEWAY_PROFILES_TLS_SERVER_KEY_TYPES)", "'dsa'"],
            id="fail/list",
        ),
    ],
)
def test_profile_environment_error_names_key_and_variable(
    tmp_path: Path, variable: str, value: str, fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={variable: value})
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("false", False, id="ok/false"),
        pytest.param("0", False, id="ok/zero"),
        pytest.param("OFF", False, id="ok/off"),
        pytest.param("true", True, id="ok/true"),
        pytest.param(" 1 ", True, id="ok/one"),
    ],
)
def test_profile_environment_bool_spellings(tmp_path: Path, value: str, expected: bool) -> None:
    file_value = "false" if expected else "true"  # the variable must beat the opposite file value
    config_file = write(tmp_path / "c.toml", f"[profiles.default]\nrevoke_on_renewal = {file_value}\n")
    cfg = load_config(tmp_path, config_file, environ={"GATEWAY_PROFILES_DEFAULT_REVOKE_ON_RENEWAL": value})
    assert cfg.profiles["default"].revoke_on_renewal is expected


# -- every refusal names its key ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "environ", "fragments"),
    [
        pytest.param('[listen]\nhttp = "localhost"\n', {}, ["listen.http", "expected HOST:PORT"], id="fail/no-port"),
        pytest.param(
            '[listen]\nhttps = "127.0.0.1:70000"\n', {}, ["listen.https", "out of range"], id="fail/port-range"
        ),
        pytest.param(
            '[listen]\nhttp = "[1:2:3:4:5:6:7:8:9]:80"\n',
            {},
            ["listen.http", "not an IPv6 address"],
            id="fail/bad-ipv6",
        ),
        pytest.param('[listen]\nhttp = "127.0.0.1:0"\n', {}, ["listen.http", "out of range"], id="fail/port-zero"),
        pytest.param("[listen]\nworkers = 0\n", {}, ["listen.workers", "at least 1"], id="fail/int-below"),
        pytest.param("[listen]\nworkers = 65\n", {}, ["listen.workers", "at most 64"], id="fail/int-above"),
        pytest.param('[listen]\nthreads = "many"\n', {}, ["listen.threads", "whole number"], id="fail/int-text"),
        pytest.param("[listen]\nthreads = true\n", {}, ["listen.threads", "whole number"], id="fail/int-bool"),
        pytest.param(
            "",
            {"GATEWAY_LISTEN_WORKERS": "lots"},
            ["listen.workers (environment GATEWAY_LISTEN_WORKERS)", "whole number"],
            id="fail/env-int",
        ),
        pytest.param(
            "",
            {"GATEWAY_OCSP_VALIDITY_MINUTES": "0"},
            ["ocsp.validity_minutes (environment GATEWAY_OCSP_VALIDITY_MINUTES)", "at least 1"],
            id="fail/env-int-range",
        ),
        pytest.param('colour = "red"\n', {}, ["colour", "unknown setting"], id="fail/unknown-key"),
        pytest.param("[listen]\nport = 80\n", {}, ["listen.port", "unknown setting"], id="fail/unknown-section-key"),
        pytest.param("[colours]\nred = 1\n", {}, ["colours", "unknown setting"], id="fail/unknown-section"),
        pytest.param('listen = "x"\n', {}, ["listen", "expected a [listen] table"], id="fail/section-not-table"),
        pytest.param('[tls]\nmin_version = "1.1"\n', {}, ["tls.min_version", "one of 1.2, 1.3"], id="fail/choice"),
        pytest.param(
            "",
            {"GATEWAY_LOG_FORMAT": "xml"},
            ["log.format (environment GATEWAY_LOG_FORMAT)", "text, json"],
            id="fail/env-choice",
        ),
        pytest.param("[ca]\nname = 5\n", {}, ["ca.name", "expected a string"], id="fail/not-a-string"),
        pytest.param(
            'public_base_url = "ftp://pki.example"\n',
            {},
            ["public_base_url", "http:// or https://"],
            id="fail/url-scheme",
        ),
        pytest.param(
            'public_base_url = "pki.example"\n', {}, ["public_base_url", "http:// or https://"], id="fail/url-no-scheme"
        ),
        pytest.param(
            'database_url = "mysql://u@db.example/gw"\n',
            {},
            ["database_url", "unsupported database driver"],
            id="fail/db-driver",
        ),
        pytest.param(
            'database_url = "postgresql://u@db.example/gw"\n',
            {},
            ["database_url", "unsupported database driver 'postgresql'"],
            id="fail/db-driver-psycopg2",
        ),
        pytest.param(
            'database_url = "not a url"\n', {}, ["database_url", "is not a database URL"], id="fail/db-not-url"
        ),
        pytest.param(
            'default_profile = "kiosk"\n',
            {},
            ["default_profile", "no profile named 'kiosk'"],
            id="fail/default-profile-unknown",
        ),
        pytest.param(
            "[profiles.default]\nvalidity_days = 0\n",
            {},
            ["profiles.default.validity_days"],
            id="fail/profile-validity",
        ),
        pytest.param(
            "[profiles.kiosk]\ncolour = 1\n",
            {},
            ["profiles.kiosk.colour", "unknown profile setting"],
            id="fail/profile-unknown-key",
        ),
        pytest.param(
            '[profiles.default]\nkey_types = ["dsa"]\n',
            {},
            ["profiles.default.key_types", "'dsa'"],
            id="fail/profile-list-value",
        ),
        pytest.param(
            "[profiles.default]\nrsa_min_bits = 1024\n",
            {},
            ["profiles.default.rsa_min_bits"],
            id="fail/profile-rsa-floor",
        ),
        pytest.param(
            '[profiles.tls-server]\nextended_key_usage = ["bogus"]\n',
            {},
            ["profiles.tls-server.extended_key_usage"],
            id="fail/profile-eku",
        ),
        pytest.param(
            '[profiles.default]\ncn_pattern = "("\n', {}, ["profiles.default.cn_pattern"], id="fail/profile-regex"
        ),
        pytest.param("[profiles.Kiosk]\n", {}, ["profiles.Kiosk.name"], id="fail/profile-name"),
        pytest.param('profiles = "x"\n', {}, ["profiles", "[profiles.NAME]"], id="fail/profiles-not-tables"),
        pytest.param(
            "[crl]\nvalidity_hours = 1\nrefresh_minutes = 60\n",
            {},
            ["crl.refresh_minutes", "shorter than crl.validity_hours"],
            id="fail/crl-refresh-equal",
        ),
        pytest.param(
            "[crl]\nvalidity_hours = 2\n",
            {"GATEWAY_CRL_REFRESH_MINUTES": "600"},
            ["crl.refresh_minutes", "shorter than crl.validity_hours"],
            id="fail/crl-refresh-longer",
        ),
        pytest.param(
            '[listen]\nhttp = "0.0.0.0:8080"\n', {}, ["public_base_url", "must be set"], id="fail/all-addresses-v4"
        ),
        pytest.param(
            "", {"GATEWAY_LISTEN_HTTP": "[::]:8080"}, ["public_base_url", "must be set"], id="fail/all-addresses-v6"
        ),
        pytest.param("[listen\n", {}, ["not valid TOML"], id="fail/not-toml"),
    ],
)
def test_refusal_names_the_key(
    runner: CliRunner, tmp_path: Path, text: str, environ: dict[str, str], fragments: list[str]
) -> None:
    config_file = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, config_file, environ=environ)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    result = runner.invoke(
        main, ["config", "check", "--data-dir", str(tmp_path), "--config", str(config_file)], env=environ
    )
    assert_clean_failure(result, *fragments)


def test_file_origin_is_named(tmp_path: Path) -> None:
    config_file = write(tmp_path / "c.toml", "[listen]\nworkers = 0\n")
    with pytest.raises(ConfigError, match=rf"listen\.workers \({config_file}\)"):
        load_config(tmp_path, config_file, environ={})


def test_public_base_url_given_allows_all_addresses(tmp_path: Path) -> None:
    cfg = load_config(
        tmp_path, environ={"GATEWAY_LISTEN_HTTP": "0.0.0.0:8080", "GATEWAY_PUBLIC_BASE_URL": "http://pki.example"}
    )
    assert cfg.public_base_url == "http://pki.example"


# -- the config file itself ---------------------------------------------------------------------------


def test_missing_config_file(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path, missing, environ={})
    result = runner.invoke(main, ["config", "check", "--data-dir", str(tmp_path), "--config", str(missing)])
    assert_clean_failure(result, str(missing), "does not exist")


def test_config_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "c.toml").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, tmp_path / "c.toml", environ={})


def test_config_file_that_is_not_text(runner: CliRunner, tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path, config_file, environ={})
    result = runner.invoke(main, ["config", "check", "--data-dir", str(tmp_path), "--config", str(config_file)])
    assert_clean_failure(result, str(config_file), "not UTF-8")


def test_data_dir_without_config_file(runner: CliRunner, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gateway init"):
        load_config(tmp_path, environ={}, require_file=True)
    result = runner.invoke(main, ["config", "show", "--data-dir", str(tmp_path)])
    assert_clean_failure(result, f"no config.toml in {tmp_path}", "gateway init")


def test_config_file_from_environment(runner: CliRunner, tmp_path: Path) -> None:
    config_file = write(tmp_path / "elsewhere.toml", "[listen]\nworkers = 11\n")
    result = runner.invoke(
        main, ["config", "show", "--data-dir", str(tmp_path)], env={"GATEWAY_CONFIG": str(config_file)}
    )
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.stdout)["listen"]["workers"] == 11


# -- config sample / show / check ---------------------------------------------------------------------


def test_sample_has_every_key_and_loads(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["config", "sample"])
    assert result.exit_code == 0, result.output
    assert result.stdout == sample_config()
    parsed = tomllib.loads(result.stdout)
    for setting in SETTINGS:
        node: Any = parsed
        for part in setting.key.split("."):
            assert part in node, f"{setting.key} missing from the sample"
            node = node[part]
        assert node == setting.default, setting.key
        assert setting.env in result.stdout
    profile_fields = {f.name for f in fields(Profile)} - {"name"}
    assert set(parsed["profiles"]["default"]) == profile_fields

    config_file = write(tmp_path / "sample.toml", result.stdout)
    cfg = load_config(tmp_path, config_file, environ={})
    assert dict(cfg.values) == {s.key: s.default for s in SETTINGS}
    assert cfg.profiles["default"] == DEFAULT_PROFILES["default"]


def test_show_masks_the_database_password(runner: CliRunner, data_dir: Path) -> None:
    url = "postgresql+psycopg://gateway:hunter2@db.example/gw"
    result = runner.invoke(main, ["config", "show", "--data-dir", str(data_dir)], env={"GATEWAY_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert tomllib.loads(result.stdout)["database_url"] == "postgresql+psycopg://gateway:***@db.example/gw"


def test_show_masks_the_scep_challenge(runner: CliRunner, data_dir: Path) -> None:
    result = runner.invoke(main, ["config", "show", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    shown = tomllib.loads(result.stdout)
    assert shown["profiles"]["default"]["scep_challenge"] == "********"
    assert shown["profiles"]["tls-server"]["scep_challenge"] == ""
    assert set(shown["profiles"]["default"]) == {f.name for f in fields(Profile)} - {"name"}
    assert shown["listen"]["http"] == "127.0.0.1:8080"
    assert shown["ca"]["name"] == "ca"
    # The masked output is itself a loadable configuration.
    cfg = load_config(data_dir, write(data_dir.parent / "shown.toml", result.stdout), environ={})
    assert cfg.profiles["default"].scep_challenge == "********"


def test_check_succeeds_on_an_initialised_directory(runner: CliRunner, data_dir: Path) -> None:
    result = runner.invoke(main, ["config", "check", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    ca = x509.load_pem_x509_certificate((data_dir / "ca" / "ca.crt").read_bytes())
    assert result.stdout == f"ok: {data_dir / 'config.toml'}; CA {ca.subject.rfc4514_string()}\n"


def test_check_refuses_a_database_without_the_schema(runner: CliRunner, data_dir: Path, tmp_path: Path) -> None:
    empty = sqlite_url(tmp_path / "empty.db")
    result = runner.invoke(main, ["config", "check", "--data-dir", str(data_dir)], env={"GATEWAY_DATABASE_URL": empty})
    assert_clean_failure(result, "database schema is not current", "gateway db upgrade")


def test_check_refuses_an_unreachable_database(runner: CliRunner, data_dir: Path) -> None:
    unreachable = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"
    result = runner.invoke(
        main, ["config", "check", "--data-dir", str(data_dir)], env={"GATEWAY_DATABASE_URL": unreachable}
    )
    assert_clean_failure(result, "the database is unavailable")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("10.0.0.300", "'10.0.0.300' is not an IP address", id="fail/bad-address"),
        pytest.param("10.0.0.0/8, proxy.example", "'proxy.example' is not an IP address", id="fail/host-name"),
        pytest.param("10.0.0.0/33", "'10.0.0.0/33'", id="fail/bad-prefix"),
        pytest.param("10.0.0.1/8", "'10.0.0.1/8'", id="fail/host-bits-set"),
    ],
)
def test_trusted_proxies_name_the_bad_entry(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"est\.trusted_proxies") as caught:
        load_config(tmp_path, environ={"GATEWAY_EST_TRUSTED_PROXIES": text})
    assert fragment in str(caught.value)


def test_trusted_proxies_parse_addresses_and_networks(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={"GATEWAY_EST_TRUSTED_PROXIES": " 10.0.0.1 , 192.168.0.0/24,::1,"})
    assert [str(n) for n in parse_trusted_proxies(config["est.trusted_proxies"])] == [
        "10.0.0.1/32",
        "192.168.0.0/24",
        "::1/128",
    ]


def test_channel_binding_needs_tls_12(tmp_path: Path) -> None:
    source = write(tmp_path / "gateway.toml", '[tls]\nmin_version = "1.3"\n[profiles.linked]\nest_pop_linking = true\n')
    with pytest.raises(ConfigError, match=r"profiles\.linked\.est_pop_linking: needs TLS 1\.2"):
        load_config(tmp_path, source, environ={})


def test_admin_fingerprints_must_be_sha256(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"admin\.client_cert_fingerprints .*'abc' is not a SHA-256 fingerprint"):
        load_config(tmp_path, environ={"GATEWAY_ADMIN_CLIENT_CERT_FINGERPRINTS": "abc"})
    colons = ":".join(["AB"] * 32)
    assert load_config(tmp_path, environ={"GATEWAY_ADMIN_CLIENT_CERT_FINGERPRINTS": colons})


def test_listen_threads_is_deprecated_only_when_set(tmp_path: Path, runner: CliRunner, data_dir: Path) -> None:
    assert load_config(tmp_path, environ={}).deprecations == ()
    from_env = load_config(tmp_path, environ={"GATEWAY_LISTEN_THREADS": "4"})  # even set to its default
    assert len(from_env.deprecations) == 1 and "listen.threads is deprecated and ignored" in from_env.deprecations[0]
    with (data_dir / "config.toml").open("a") as config:
        config.write("\n[listen]\nthreads = 8\n")
    checked = runner.invoke(main, ["config", "check", "--data-dir", str(data_dir)])
    assert checked.exit_code == 0, checked.output
    assert "warning: listen.threads is deprecated and ignored" in checked.stderr
