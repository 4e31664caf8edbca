"""The command names used before the CLI was made regular, kept hidden for one release: each still works.

`admin-token new|create` (now `add`), `challenge new` (now `challenge add`) and `requests` (now
`request`) are here; `scep` and `est` (now `client scep|est`) are tested beside their servers, in
tests/test_scep_client.py and tests/test_est_client.py. When the aliases go, these tests go with them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.config import GatewayConfig
from scep.challenges import challenge_sha256
from shared_ca.storage.db import create_store_engine
from shared_ca.storage.repositories import Storage


def run(runner: CliRunner, data_dir: Path, *args: str, code: int = 0) -> str:
    result = runner.invoke(main, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == code, result.output
    return result.output


def renamed(result: Result, old: str, new: str) -> None:
    """The alias ran and told the user, on stderr only, the name that replaces it."""
    assert f"DeprecationWarning: The command {old!r} is deprecated. Use `{new}`" in result.stderr
    assert "Deprecation" not in result.stdout


def listed(help_text: str) -> set[str]:
    """The command names a --help page lists."""
    commands = help_text.split("Commands:\n", 1)[1]
    return {m.group(1) for m in re.finditer(r"^  (\S+)", commands, re.MULTILINE)}


def test_the_old_names_are_hidden_from_help(runner: CliRunner) -> None:
    top = listed(runner.invoke(main, ["--help"]).output)
    assert {"request", "client"} <= top and not {"requests", "scep", "est"} & top
    assert listed(runner.invoke(main, ["admin-token", "--help"]).output) == {"add", "list", "disable"}
    assert listed(runner.invoke(main, ["challenge", "--help"]).output) == {"add", "list", "remove"}
    assert listed(runner.invoke(main, ["client", "--help"]).output) == {"scep", "est"}


def test_admin_token_create_is_an_alias_of_new(runner: CliRunner, data_dir: Path) -> None:
    result = runner.invoke(main, ["admin-token", "create", "mdm", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert len(token) >= 32 and "shown only now" in result.stderr
    listing = run(runner, data_dir, "admin-token", "list", "--format", "json")
    assert json.loads(listing)[0]["name"] == "mdm" and token not in listing
    duplicate = runner.invoke(main, ["admin-token", "new", "mdm", "--data-dir", str(data_dir)])
    assert duplicate.exit_code == 1
    renamed(result, "create", "gateway admin-token add")


def test_admin_token_new_still_adds_a_token(runner: CliRunner, data_dir: Path) -> None:
    result = runner.invoke(main, ["admin-token", "new", "intune", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert len(token) >= 32 and "admin token 'intune' created" in result.stderr
    [row] = json.loads(run(runner, data_dir, "admin-token", "list", "--format", "json"))
    assert (row["name"], row["status"]) == ("intune", "active")
    renamed(result, "new", "gateway admin-token add")


def test_challenge_new_still_adds_a_challenge(runner: CliRunner, data_dir: Path, gateway_config: GatewayConfig) -> None:
    result = runner.invoke(
        main, ["challenge", "new", "--device", "dev-old", "--uses", "2", "--data-dir", str(data_dir)]
    )
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{48}", secret)
    engine = create_store_engine(gateway_config.database_url)
    try:
        record = Storage.open(engine).enrollments.challenge(challenge_sha256(secret))
    finally:
        engine.dispose()
    assert record is not None and (record.device_id, record.uses_left) == ("dev-old", 2)
    renamed(result, "new", "gateway challenge add")


def test_requests_still_lists_approves_and_rejects(runner: CliRunner, data_dir: Path) -> None:
    old = runner.invoke(main, ["requests", "list", "--format", "json", "--data-dir", str(data_dir)])
    assert old.exit_code == 0, old.output
    assert json.loads(old.stdout) == []
    renamed(old, "requests", "gateway request")
    for verb in ("approve", "reject"):
        refused = runner.invoke(main, ["requests", verb, "7", "--data-dir", str(data_dir)])
        assert refused.exit_code == 1 and "Error: no request 7" in refused.stderr, refused.output
