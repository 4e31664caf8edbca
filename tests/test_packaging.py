"""Packaging: the systemd unit (checked by systemd's own tools), the sysusers and tmpfiles files, and the
wheel and sdist installed into a clean venv that initialises, serves and reports status.

`systemd-analyze verify` checks the unit as systemd would load it, including the existence of
ExecStart's program: the checks run on a copy whose ExecStart names this venv's `gateway`. It only
warns (exit status 0) about an unknown key or a value it cannot parse, so every line it prints about
our files counts as a failure; deliberately broken copies show that each way of failing is caught.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.serve import serve
from gateway.supervisor import GRACEFUL_SECONDS
from tests.test_serve import REPO, child_env, fetch, free_ports

PACKAGING = REPO / "packaging"
UNIT = PACKAGING / "gateway.service"
LOW_PORTS = PACKAGING / "gateway.service.d" / "low-ports.conf"
SYSUSERS = PACKAGING / "gateway.sysusers"
TMPFILES = PACKAGING / "gateway.tmpfiles"
INSTALLED_GATEWAY = "/opt/gateway/venv/bin/gateway"
DATA_DIR = "/var/lib/gateway"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
EXPOSURE_THRESHOLD = 2.0  # systemd-analyze security: 0 (locked down) to 10 (exposed); "OK" is below 4.5
PACKAGES = ("gateway", "scep", "est", "shared_ca", "migration_tools")
TOOL_SECONDS = 60


# -- the unit as systemd reads it --------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given, in order (systemd lets a key repeat; an empty one resets)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} is outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service_section(path: Path) -> dict[str, list[str]]:
    return parse_unit(path.read_text())["Service"]


def only(values: dict[str, list[str]], key: str) -> str:
    assert len(values.get(key, [])) == 1, f"{key} should be set exactly once: {values.get(key)}"
    return values[key][0]


def this_venv_gateway() -> Path:
    found = Path(sys.executable).parent / "gateway"
    assert found.is_file(), f"the `gateway` script of this venv is missing: {found}"
    return found


def copy_for_verify(directory: Path, unit_text: str | None = None, drop_in: str | None = None) -> Path:
    """The unit (and its low-ports drop-in) in `directory`, ExecStart pointing at this venv's gateway."""
    text = UNIT.read_text() if unit_text is None else unit_text
    unit = directory / "gateway.service"
    unit.write_text(text.replace(INSTALLED_GATEWAY, str(this_venv_gateway())))
    dropins = directory / "gateway.service.d"
    dropins.mkdir()
    (dropins / "low-ports.conf").write_text(LOW_PORTS.read_text() if drop_in is None else drop_in)
    return unit


def systemd_tool(*args: str) -> subprocess.CompletedProcess[str]:
    assert Path(SYSTEMD_ANALYZE).is_file(), "systemd-analyze is missing: install the Debian package systemd"
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=TOOL_SECONDS, check=False, cwd="/"
    )


def verify_problems(unit: Path) -> list[str]:
    """What `systemd-analyze verify` objects to in our files: its failure, or any line naming them."""
    done = systemd_tool("verify", "--man=no", str(unit))
    ours = [line for line in (done.stdout + done.stderr).splitlines() if str(unit.parent) in line or "gateway" in line]
    if done.returncode != 0:
        ours.append(f"exit status {done.returncode}: {done.stderr.strip()}")
    return ours


def test_the_unit_and_its_drop_in_verify_clean(tmp_path: Path) -> None:
    assert verify_problems(copy_for_verify(tmp_path)) == []


BROKEN: dict[str, tuple[Callable[[str], str], str | None]] = {
    "unknown-key": (lambda t: t.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"), None),
    "bad-boolean": (lambda t: t.replace("PrivateTmp=yes", "PrivateTmp=perhaps"), None),
    "bad-syscall-group": (lambda t: t.replace("@system-service", "@no-such-group"), None),
    "missing-program": (lambda t: t.replace(INSTALLED_GATEWAY, "/nonexistent/bin/gateway"), None),
    "broken-drop-in": (lambda t: t, "[Service]\nAmbientCapability=CAP_NET_BIND_SERVICE\n"),
}


@pytest.mark.parametrize("breakage", list(BROKEN))
def test_a_broken_unit_fails_verification(tmp_path: Path, breakage: str) -> None:
    """The check above can fail: each way of breaking the unit is reported."""
    edit, drop_in = BROKEN[breakage]
    broken = edit(UNIT.read_text())
    assert broken != UNIT.read_text() or drop_in is not None, "the breakage no longer applies to the unit"
    assert verify_problems(copy_for_verify(tmp_path, broken, drop_in)) != []


def exposure(unit: Path) -> subprocess.CompletedProcess[str]:
    threshold = round(EXPOSURE_THRESHOLD * 10)  # systemd-analyze counts tenths: 20 is 2.0
    return systemd_tool("security", "--offline=yes", f"--threshold={threshold}", "--no-pager", str(unit))


def test_the_sandbox_scores_as_locked_down(tmp_path: Path) -> None:
    done = exposure(copy_for_verify(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    level = re.search(r"Overall exposure level for gateway\.service: ([\d.]+)", done.stdout)
    assert level is not None and float(level.group(1)) <= EXPOSURE_THRESHOLD, done.stdout[-500:]


def test_the_score_check_fails_an_unsandboxed_unit(tmp_path: Path) -> None:
    bare = "[Unit]\nDescription=bare\n\n[Service]\nUser=gateway\nExecStart=/opt/gateway/venv/bin/gateway serve\n"
    done = exposure(copy_for_verify(tmp_path, bare))
    assert done.returncode != 0, done.stdout[-500:]


def test_sandbox_directives() -> None:
    service = service_section(UNIT)
    expected = {
        "Type": "simple",
        "User": "gateway",
        "Group": "gateway",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ReadWritePaths": DATA_DIR,
        "StateDirectory": Path(DATA_DIR).name,
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "KillMode": "mixed",
        "KillSignal": "SIGTERM",
        "Restart": "on-failure",
    }
    assert {key: only(service, key) for key in expected} == expected
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert int(only(service, "LimitNOFILE")) >= 8192  # listen.connections per worker, and more


def test_exec_start_runs_serve_on_the_data_directory_it_may_write() -> None:
    command = only(service_section(UNIT), "ExecStart").split()
    assert command[:2] == [INSTALLED_GATEWAY, "serve"]
    assert command[command.index("--data-dir") + 1] == DATA_DIR
    options = {opt for param in serve.params for opt in param.opts}
    assert {arg for arg in command[2:] if arg.startswith("--")} <= options


def test_systemd_waits_longer_than_the_supervisor_drains() -> None:
    """The supervisor kills its arbiters GRACEFUL_SECONDS + 10 s after SIGTERM; systemd must not kill first."""
    assert int(only(service_section(UNIT), "TimeoutStopSec")) > GRACEFUL_SECONDS + 10


def test_low_ports_drop_in_grants_one_capability_only() -> None:
    sections = parse_unit(LOW_PORTS.read_text())
    assert sections == {
        "Service": {
            "CapabilityBoundingSet": ["CAP_NET_BIND_SERVICE"],
            "AmbientCapabilities": ["CAP_NET_BIND_SERVICE"],
        }
    }


# -- the user and the directories ---------------------------------------------------------------------


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    done = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=TOOL_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [entry] = [line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()]
    assert (entry[0], entry[5], entry[6]) == ("gateway", DATA_DIR, "/usr/sbin/nologin")
    assert 0 < int(entry[2]) < 1000  # a system user


def test_tmpfiles_creates_the_data_directory_private(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], check=True, capture_output=True)
    done = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(TMPFILES)],
        capture_output=True,
        text=True,
        timeout=TOOL_SECONDS,
        check=False,
    )
    problems = done.stderr.splitlines()
    if os.geteuid() != 0:  # only root may hand the directories to the user: everything else must work
        problems = [p for p in problems if not re.search(r"fchownat\(\) of .* failed: Operation not permitted", p)]
    else:
        assert done.returncode == 0, done.stderr
    assert problems == []
    uid = next(int(line.split(":")[2]) for line in (tmp_path / "etc/passwd").read_text().splitlines())
    data = tmp_path / DATA_DIR.lstrip("/")
    assert data.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "etc/gateway").stat().st_mode & 0o777 == 0o750
    if os.geteuid() == 0:
        assert data.stat().st_uid == uid


# -- wheel and sdist -----------------------------------------------------------------------------------


def _source_copy(target: Path) -> Path:
    """The tree a release is built from, without the venv, caches and build leftovers (building in the
    repository itself would rewrite its egg-info)."""
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "mutants", "data")
    shutil.copytree(REPO, target, ignore=ignore)
    return target


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build`: the sdist, and the wheel built from it (as pip would)."""
    work = tmp_path_factory.mktemp("build")
    source = _source_copy(work / "source")
    out = work / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=child_env(),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _package_files() -> set[str]:
    """What the wheel must hold: every module of the packages, the migrations' template, wsgi.py."""
    found = {"wsgi.py", "shared_ca/storage/migrations/script.py.mako"}
    for package in PACKAGES:
        found.update(p.relative_to(REPO).as_posix() for p in (REPO / package).rglob("*.py"))
    return found


@pytest.mark.slow
def test_wheel_holds_every_module_and_nothing_else(dist: Path) -> None:
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = {n for n in archive.namelist() if ".dist-info/" not in n}
        entry_points = next(n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
        assert "gateway = gateway.cli:main" in archive.read(entry_points).decode()
    assert names == _package_files()


@pytest.mark.slow
def test_sdist_holds_what_a_build_and_an_operator_need(dist: Path) -> None:
    [sdist] = dist.glob("*.tar.gz")
    listing = subprocess.run(["tar", "tzf", str(sdist)], capture_output=True, text=True, check=True).stdout
    root = listing.split("/", 1)[0]
    names = {line.removeprefix(f"{root}/") for line in listing.splitlines()}
    needed = _package_files() | {
        "pyproject.toml",
        "README.md",
        "packaging/gateway.service",
        "packaging/gateway.service.d/low-ports.conf",
        "packaging/gateway.sysusers",
        "packaging/gateway.tmpfiles",
        "packaging/README.md",
    }
    assert needed - names == set()
    assert not {n for n in names if n.startswith(("tests/", "bench/", ".venv/"))}


@pytest.fixture(scope="module")
def clean_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with only the wheel and its dependencies (from the package index, through pip's cache),
    installed by this venv's pip (`--python`: seconds faster than a pip of its own)."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=TOOL_SECONDS, env=child_env()
    )
    [wheel] = dist.glob("*.whl")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, "install", "-q", "--no-compile", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def wheel_env(ports: list[int] | None = None) -> dict[str, str]:
    """No PYTHONPATH or venv of ours, no GATEWAY_* of the developer's; the listeners on `ports`."""
    env = {k: v for k, v in child_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if ports is not None:
        env.update(GATEWAY_LISTEN_HTTP=f"127.0.0.1:{ports[0]}", GATEWAY_LISTEN_HTTPS=f"127.0.0.1:{ports[1]}")
        env["GATEWAY_LISTEN_WORKERS"] = "1"
    return env


def installed(venv: Path, *args: str, cwd: Path, ports: list[int] | None = None) -> subprocess.CompletedProcess[str]:
    """The clean venv's `gateway`, run away from the repository (so nothing is imported from it)."""
    env = wheel_env(ports)
    return subprocess.run(
        [str(venv / "bin/gateway"), *args],
        capture_output=True,
        text=True,
        timeout=TOOL_SECONDS,
        check=False,
        cwd=cwd,
        env=env,
    )


@pytest.fixture
def served_from_the_wheel(clean_venv: Path, tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    """`gateway init` and `gateway serve` of the clean venv, on fresh ports; stopped afterwards."""
    data = tmp_path / "data"
    ports = free_ports(2)
    done = installed(clean_venv, "init", "--data-dir", str(data), "--ca-key-type", "p256", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(clean_venv / "bin/gateway"), "serve", "--data-dir", str(data)],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=wheel_env(ports),
        start_new_session=True,
    )
    try:
        yield data, ports
    finally:
        process.terminate()
        try:
            process.wait(timeout=GRACEFUL_SECONDS + 15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _wait_for_healthz(port: int, log: Path, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if fetch(port, "/healthz", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the wheel's `gateway serve` did not answer:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.mark.slow
def test_the_wheel_installs_initialises_serves_and_reports(
    clean_venv: Path, served_from_the_wheel: tuple[Path, list[int]], tmp_path: Path
) -> None:
    version = installed(clean_venv, "--version", cwd=tmp_path)
    assert version.returncode == 0 and re.fullmatch(r"gateway, version \S+\n", version.stdout), version
    data, ports = served_from_the_wheel
    _wait_for_healthz(ports[0], tmp_path / "serve.log")
    deadline = time.monotonic() + 20
    while True:  # both listeners and readiness: the arbiters start one after the other
        status = installed(clean_venv, "status", "--data-dir", str(data), "--format", "json", cwd=tmp_path, ports=ports)
        assert status.stdout.startswith("{"), status.stderr
        report: dict[str, Any] = json.loads(status.stdout)
        if status.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status.returncode == 0, (report["attention"], (tmp_path / "serve.log").read_text()[-3000:])
    assert [listener["up"] for listener in report["listeners"]] == [True, True]
    assert report["database"]["schema_at_head"] is True
    assert report["readiness"]["ready"] is True
    # The modules came from the clean venv, not from the repository.
    where = subprocess.run(
        [str(clean_venv / "bin/python"), "-c", "import gateway; print(gateway.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(clean_venv)), where
