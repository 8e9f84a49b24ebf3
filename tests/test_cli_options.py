"""Every command spells a shared option the same way and binds it to the same parameter."""

from __future__ import annotations

import click

from batcher.cli import cli

#: option flag -> the parameter name every command binds it to
SHARED = {
    "--provider": "provider",
    "--base-url": "base_url",
    "--sheet": "sheet_name",
    "--map": "mapping",
    "--allow-duplicates": "allow_duplicates",
    "--state-dir": "state_dir",
    "--report-dir": "report_dir",
    "--json": "as_json",
    "--payouts": "payouts",
    "--campaign": "campaign",
    "--expires-in-days": "expires_in_days",
}


def _commands() -> dict[str, click.Command]:
    ctx = click.Context(cli)
    found = {}
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None, name
        found[name] = command
    return found


def test_shared_options_bind_to_one_parameter_name() -> None:
    mismatches = []
    for name, command in _commands().items():
        for param in command.params:
            for flag in getattr(param, "opts", []):
                wanted = SHARED.get(flag)
                if wanted is not None and param.name != wanted:
                    mismatches.append(f"{name} {flag} -> {param.name} (want {wanted})")
    assert not mismatches, mismatches


def test_sheet_commands_share_their_sheet_options() -> None:
    commands = _commands()
    for name in ("validate", "run"):
        flags = {f for p in commands[name].params for f in getattr(p, "opts", [])}
        assert {"--sheet", "--map", "--allow-duplicates", "--payouts", "--campaign"} <= flags, name
