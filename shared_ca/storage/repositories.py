"""The repositories of one database, for the composition root to hand out."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy import Engine

from shared_ca.storage.admin import AdminTokens
from shared_ca.storage.approvals import Approvals
from shared_ca.storage.audit import AuditLog
from shared_ca.storage.certificates import Certificates
from shared_ca.storage.crls import Crls
from shared_ca.storage.database import Database
from shared_ca.storage.devices import Devices
from shared_ca.storage.enrollment import Enrollments
from shared_ca.storage.est_users import EstUsers
from shared_ca.storage.inventory import InventoryRecords
from shared_ca.storage.issuers import Issuers
from shared_ca.storage.leases import Leases
from shared_ca.storage.migration_report import MigrationReportQueries


@dataclass(frozen=True)
class Storage:
    """One repository per kind of record, all on one Database. Thread-safe; holds no state of its own."""

    db: Database
    audit: AuditLog
    issuers: Issuers
    certificates: Certificates
    crls: Crls
    enrollments: Enrollments
    devices: Devices
    est_users: EstUsers
    admin_tokens: AdminTokens
    approvals: Approvals
    inventory: InventoryRecords
    migration_report: MigrationReportQueries
    leases: Leases

    @classmethod
    def open(cls, engine: Engine) -> Storage:
        db = Database(engine)
        return cls(
            db=db,
            audit=AuditLog(db),
            issuers=Issuers(db),
            certificates=Certificates(db),
            crls=Crls(db),
            enrollments=Enrollments(db),
            devices=Devices(db),
            est_users=EstUsers(db),
            admin_tokens=AdminTokens(db),
            approvals=Approvals(db),
            inventory=InventoryRecords(db),
            migration_report=MigrationReportQueries(db),
            leases=Leases(db),
        )

    @property
    def engine(self) -> Engine:
        return self.db.engine

    def look_ups(self) -> AbstractContextManager[None]:
        """One read scope for the look-ups of one request (Database.reading: see its rule)."""
        return self.db.reading()
