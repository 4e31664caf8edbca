"""The import rules of DESIGN.md: dependencies point one way, towards shared_ca."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"gateway", "scep", "est", "shared_ca", "migration_tools", "wsgi"}
WEB = {"flask", "werkzeug", "gunicorn", "click"}
SQL = {"sqlalchemy", "alembic", "psycopg"}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (absolute imports; we use no relative ones)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            names.add(node.module.split(".")[0])
    return names


ALLOWED_OURS = {
    "shared_ca": {"shared_ca"},
    "scep": {"scep", "shared_ca"},
    "est": {"est", "shared_ca"},
    "migration_tools": {"migration_tools", "shared_ca"},
    "gateway": OURS - {"wsgi"},
}


@pytest.mark.parametrize("package", sorted(ALLOWED_OURS))
def test_package_imports_only_what_design_allows(package: str) -> None:
    offences = []
    for path in _modules(package):
        imported = _imports(path)
        for name in sorted((imported & OURS) - ALLOWED_OURS[package]):
            offences.append(f"{path.relative_to(ROOT)} imports {name}")
        web = imported & WEB
        if package == "shared_ca" and web:
            offences.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(web))}")
        if package in ("scep", "est", "migration_tools") and "flask" in imported and path.name != "views.py":
            offences.append(f"{path.relative_to(ROOT)} imports flask outside views.py")
        sql = imported & SQL
        storage = ROOT / "shared_ca" / "storage"
        if sql and storage not in path.parents:
            offences.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(sql))} outside shared_ca/storage")
    assert offences == []


def test_nothing_but_wsgi_imports_gateway() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("shared_ca", "scep", "est", "migration_tools")
        for path in _modules(package)
        if "gateway" in _imports(path)
    ]
    assert offenders == []
    assert _imports(ROOT / "wsgi.py") & OURS == {"gateway"}


def test_the_rule_catches_an_offence(tmp_path: Path) -> None:
    """The checker itself sees a forbidden import (so the tests above can fail)."""
    sample = tmp_path / "bad.py"
    sample.write_text("from gateway.app import create_app\nimport sqlalchemy\n", encoding="utf-8")
    assert _imports(sample) == {"gateway", "sqlalchemy"}
