"""What the SCEP→EST mapping (migration_tools.mapping) reads and writes, declared as Protocols that
shared_ca.storage.repositories.Storage satisfies."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from migration_tools.importer import AuditWriter
from shared_ca.storage.certificates import CertificateRecord
from shared_ca.storage.devices import DeviceRecord
from shared_ca.storage.est_users import EstUserRecord
from shared_ca.trust import CertificateByFingerprint, IssuerById


class DeviceList(Protocol):
    def devices(
        self,
        *,
        state: str | None = None,
        group: str | None = None,
        limit: int | None = None,
        after_id: int = 0,
    ) -> list[DeviceRecord]: ...


class MappedDevices(DeviceList, Protocol):
    def set_mapping(
        self, identity: str, mode: str, est_credential: str | None, now: dt.datetime, *, label: str | None = None
    ) -> DeviceRecord: ...


class UserByName(Protocol):
    def est_user(self, name: str) -> EstUserRecord | None: ...


class BootstrapUsers(UserByName, Protocol):
    def add_est_user(
        self,
        name: str,
        secret_hash: str,
        *,
        kind: str,
        created_by: str,
        now: dt.datetime,
        labels: tuple[str, ...] = (),
        device_identity: str | None = None,
        uses_left: int | None = None,
        expires_at: dt.datetime | None = None,
    ) -> EstUserRecord: ...
    def disable_est_user(self, name: str, *, actor: str, now: dt.datetime) -> EstUserRecord: ...


class HeldCertificates(CertificateByFingerprint, Protocol):
    def certificate_by_id(self, cert_id: int) -> CertificateRecord | None: ...


class CertificateStorage(Protocol):
    """What judging a device's current certificate reads."""

    @property
    def certificates(self) -> HeldCertificates: ...
    @property
    def issuers(self) -> IssuerById: ...


class MappingStorage(CertificateStorage, Protocol):
    """What mapping devices reads and writes."""

    @property
    def devices(self) -> MappedDevices: ...
    @property
    def est_users(self) -> BootstrapUsers: ...
    @property
    def audit(self) -> AuditWriter: ...
