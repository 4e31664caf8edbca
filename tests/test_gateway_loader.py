"""A worker's gateway opened on first use and again after a failure (gateway.runtime.GatewayLoader), and
the app over it: 503 with Retry-After while it cannot be opened, liveness and readiness regardless."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from flask import Flask

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.rollover import RolloverOptions, rollover
from gateway.runtime import Gateway, GatewayLoader, open_gateway
from migration_tools.legacy_issuers import new_legacy_issuer
from shared_ca.authority import fingerprint
from shared_ca.errors import KeyMaterialError, Unavailable
from shared_ca.keys import KeyType
from tests.test_migration_import import LegacyCA


class Opener:
    """open_gateway that fails while `down`, counting its attempts."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.attempts = 0
        self.opened: list[Gateway] = []

    def __call__(self, config: GatewayConfig) -> Gateway:
        self.attempts += 1
        if self.failure is not None:
            raise self.failure
        gateway = open_gateway(config)
        self.opened.append(gateway)
        return gateway

    def close(self) -> None:
        for gateway in self.opened:
            gateway.storage.engine.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def loader_for(config: GatewayConfig, opener: Callable[[GatewayConfig], Gateway], clock: Clock) -> GatewayLoader:
    return GatewayLoader(config, opener=opener, retry_seconds=2.0, clock=clock)


def test_a_failure_is_kept_for_the_retry_interval_then_tried_again(gateway_config: GatewayConfig) -> None:
    opener, clock = Opener(Unavailable("the database is unavailable", detail="connection refused")), Clock()
    loader = loader_for(gateway_config, opener, clock)
    try:
        for _ in range(3):
            with pytest.raises(Unavailable, match="unavailable"):
                loader.get()
        assert opener.attempts == 1 and loader.loaded is None  # answered from the kept failure
        clock.now += 2.0
        opener.failure = None  # the database is back
        gateway = loader.get()
        assert opener.attempts == 2 and loader.loaded is gateway and loader.get() is gateway
        assert opener.attempts == 2  # opened once, kept
    finally:
        opener.close()


def test_key_material_that_does_not_load_is_no_outage(gateway_config: GatewayConfig) -> None:
    opener, clock = Opener(KeyMaterialError("the CA key cannot be read")), Clock()
    loader = loader_for(gateway_config, opener, clock)
    for _ in range(2):
        with pytest.raises(KeyMaterialError):
            loader.get()
    assert opener.attempts == 2  # no retry interval: it is a configuration error, said every time


@pytest.fixture
def lazy_app(gateway_config: GatewayConfig) -> tuple[Flask, Opener, Clock]:
    opener, clock = Opener(Unavailable("the database is unavailable", detail="connection refused")), Clock()
    return create_app(loader=loader_for(gateway_config, opener, clock)), opener, clock


def test_the_app_answers_503_with_retry_after_until_the_gateway_opens(
    lazy_app: tuple[Flask, Opener, Clock],
) -> None:
    app, opener, clock = lazy_app
    client = app.test_client()
    try:
        for path in ("/scep?operation=GetCACaps", "/ca.pem", "/crl/ca.crl"):
            reply = client.get(path)
            assert reply.status_code == 503 and reply.headers["Retry-After"] == "5", path
            assert reply.get_data(as_text=True) == "the database is unavailable\n"  # no cause for the client
        est = client.get("/.well-known/est/cacerts", base_url="https://localhost")
        assert est.status_code == 503
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json is not None
        assert ready.json["checks"]["keys"].startswith("not loaded")
        opener.failure = None
        clock.now += 2.0
        assert client.get("/scep?operation=GetCACaps").status_code == 200  # open now: served
        assert client.get("/readyz").json["checks"]["database"] == "ok"  # type: ignore[index]
    finally:
        opener.close()


# -- following the issuers in the database (GatewayLoader.refresh) ----------------------------------


def test_refresh_follows_a_new_legacy_issuer_and_keeps_the_gateway_until_then(gateway_config: GatewayConfig) -> None:
    opener, clock = Opener(), Clock()
    loader = loader_for(gateway_config, opener, clock)
    try:
        first = loader.get()
        now = dt.datetime.now(dt.UTC)
        assert [fingerprint(c) for c in loader.refresh(now)] == [fingerprint(first.authority.certificate)]
        assert loader.loaded is first  # nothing changed: nothing rebuilt
        legacy = LegacyCA(name="Refreshed Legacy CA")
        register = first.storage.inventory.register_legacy_issuer
        register(new_legacy_issuer(legacy.certificate, now + dt.timedelta(days=30)), "test", now)
        trusted = loader.refresh(now)
        assert fingerprint(legacy.certificate) in {fingerprint(c) for c in trusted}
        rebuilt = loader.loaded
        assert rebuilt is not None and rebuilt is not first
        assert rebuilt.admission is first.admission and rebuilt.storage is first.storage  # the worker's own
        assert loader.refresh(now) == trusted and loader.loaded is rebuilt
    finally:
        opener.close()


def test_refresh_serves_a_rollover_and_keeps_the_old_gateway_when_the_new_one_does_not_load(
    gateway_config: GatewayConfig,
) -> None:
    opener, clock = Opener(), Clock()
    loader = loader_for(gateway_config, opener, clock)
    try:
        first = loader.get()
        app = create_app(loader=loader)
        assert app.test_client().get("/scep?operation=GetNextCACert").status_code == 404
        rollover(gateway_config, RolloverOptions(ca_key_type=KeyType.P256))
        next_ca = gateway_config.path("next_ca.cert")
        kept = next_ca.read_bytes()
        next_ca.write_text("not a certificate")  # registered in the database, its file broken: cannot load
        with pytest.raises(KeyMaterialError):
            loader.refresh(dt.datetime.now(dt.UTC))
        assert loader.loaded is first  # still serving what it had
        next_ca.write_bytes(kept)
        loader.refresh(dt.datetime.now(dt.UTC))
        assert loader.loaded is not first
        assert app.test_client().get("/scep?operation=GetNextCACert").status_code == 200
    finally:
        opener.close()
