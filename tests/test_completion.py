"""`gateway completion bash|zsh|fish`: the scripts, and completion answered by the real `gateway` command
through click's protocol (the shell runs `gateway` with _GATEWAY_COMPLETE and the words typed so far)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.cli.completion import COMPLETE_VAR
from tests.test_serve import child_env

GATEWAY = Path(sys.executable).parent / "gateway"  # the console script: what a shell completes
BASH = shutil.which("bash") or "/bin/bash"


def script(shell: str) -> str:
    result = CliRunner().invoke(main, ["completion", shell], prog_name="gateway")
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_script_calls_gateway_with_the_completion_variable(shell: str) -> None:
    text = script(shell)
    assert f"{COMPLETE_VAR}={shell}_complete" in text
    assert "_gateway_completion" in text


def test_the_bash_script_is_valid_bash() -> None:
    done = subprocess.run([BASH, "-n"], input=script("bash"), capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_an_unknown_shell_is_refused_in_one_line() -> None:
    result = CliRunner().invoke(main, ["completion", "tcsh"], prog_name="gateway")
    assert result.exit_code == 2
    assert "Invalid value for '{bash|zsh|fish}': 'tcsh' is not one of 'bash', 'zsh', 'fish'." in result.output
    assert "Traceback" not in result.output


def protocol_env(words: str, shell: str = "bash") -> dict[str, str]:
    """What a shell sets to ask for the completions of the last of `words` (bash and zsh protocol)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    return {COMPLETE_VAR: f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}


def complete(words: str) -> list[str]:
    """The answer of the command's own entry point, in-process (what the process test below runs)."""
    result = CliRunner().invoke(main, [], env=protocol_env(words), prog_name="gateway")
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("gateway st", ["plain,status"]),
        ("gateway completion ", ["plain,bash", "plain,zsh", "plain,fish"]),
        ("gateway status --format ", ["plain,table", "plain,json", "plain,csv"]),
        ("gateway req", ["plain,request"]),  # the hidden alias `requests` is not offered
    ],
    ids=["status", "shell", "choice", "no-hidden-alias"],
)
def test_completion_protocol(words: str, expected: list[str]) -> None:
    assert complete(words) == expected


def test_completion_through_the_installed_command() -> None:
    env = child_env(**protocol_env("gateway ad"))
    done = subprocess.run([str(GATEWAY)], capture_output=True, text=True, timeout=30, check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["plain,admin-token"]


def test_bash_completes_with_the_printed_script(tmp_path: Path) -> None:
    """The printed script, sourced by bash, fills COMPREPLY by asking the command (the whole round trip)."""
    source = tmp_path / "gateway.bash"
    source.write_text(script("bash"))
    program = (
        f"source {source}; COMP_WORDS=(gateway admin-token a); COMP_CWORD=2; "
        f'_gateway_completion {GATEWAY}; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    done = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["add"]
