"""Fixtures: a database per test (SQLite always; PostgreSQL when GATEWAY_TEST_DATABASE_URL is set),
a store, a CA over it, an initialised data directory, the Flask app and the CLI runner."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from gateway.app import create_app
from gateway.config import GatewayConfig, load_config
from gateway.initdir import InitOptions, initialise
from shared_ca.authority import CertificateAuthority, PublicUrls
from shared_ca.ca_material import create_root_ca, register_issuer
from shared_ca.keys import KeyType, generate_private_key
from shared_ca.storage.db import create_store_engine, migrate_to_head, sqlite_url
from shared_ca.storage.repositories import Storage
from tests.support import SettableClock

PG_URL = os.environ.get("GATEWAY_TEST_DATABASE_URL", "")
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    *([pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)] if PG_URL else []),
]
BASE_URL = "http://127.0.0.1:8080"
# Tests that need PostgreSQL itself (not a backend choice): collected in CI's PostgreSQL pass (.ci/run).
collect_ignore = [] if PG_URL else ["test_database_outage_serve.py", "test_kill9_pg_serve.py"]


def pg_schema_url(schema: str) -> str:
    """The PostgreSQL test URL confined to one schema (every test gets its own)."""
    separator = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "test.db")
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield pg_schema_url(schema)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture
def store(database_url: str) -> Iterator[Storage]:
    engine = create_store_engine(database_url)
    migrate_to_head(engine)
    try:
        yield Storage.open(engine)
    finally:
        engine.dispose()


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
def authority(store: Storage, clock: SettableClock) -> CertificateAuthority:
    """A P-256 root CA registered in `store` (fast to create), on a settable clock."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    material = create_root_ca(generate_private_key(KeyType.P256), name, 3650, clock())
    issuer = register_issuer(store.issuers, "ca", material.certificate, kind="ca", actor="test", now=clock())
    return CertificateAuthority(
        store.certificates, issuer, material.certificate, material.chain, material.key, PublicUrls(BASE_URL), clock
    )


@pytest.fixture
def data_dir(tmp_path: Path, database_url: str) -> Path:
    """A data directory made by `gateway init` (P-256 CA for speed), on the test's database."""
    directory = tmp_path / "data"
    external = None if database_url.startswith("sqlite") else database_url
    initialise(
        InitOptions(data_dir=directory, ca_key_type=KeyType.P256, database_url=external, scep_challenge="s3cret")
    )
    return directory


@pytest.fixture
def gateway_config(data_dir: Path) -> GatewayConfig:
    return load_config(data_dir, environ={})


@pytest.fixture
def app(gateway_config: GatewayConfig) -> Iterator[Flask]:
    application = create_app(gateway_config)
    yield application
    application.extensions["gateway"].get().storage.db.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
