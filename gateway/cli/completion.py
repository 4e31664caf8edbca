"""`gateway completion bash|zsh|fish`: the shell completion script.

The script is click's: the shell calls `gateway` again with `_GATEWAY_COMPLETE=<shell>_complete` and
the words typed so far, and click answers with the commands, options and choices that fit. Hidden
aliases (names kept for one release) are not offered.
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

PROG_NAME = "gateway"
COMPLETE_VAR = "_GATEWAY_COMPLETE"  # what click derives from PROG_NAME; the scripts call the command with it
SHELLS = ("bash", "zsh", "fish")


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script of `gateway` for SHELL.

    \b
    bash   eval "$(gateway completion bash)"      in ~/.bashrc (bash 4.4 or newer)
    zsh    eval "$(gateway completion zsh)"       in ~/.zshrc, after compinit
    fish   gateway completion fish > ~/.config/fish/completions/gateway.fish
    """
    completer = get_completion_class(shell)
    assert completer is not None  # every name in SHELLS is one of click's
    root = click.get_current_context().find_root().command
    click.echo(completer(root, {}, PROG_NAME, COMPLETE_VAR).source(), nl=False)
