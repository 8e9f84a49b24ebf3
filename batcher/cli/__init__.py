"""The `batcher` command: a thin Click shell over the library.

Each command group lives in its own module and is loaded lazily, so a slow
import (polars, openpyxl, uvicorn) is only paid by the command that needs it.
"""

from __future__ import annotations

import importlib

import click

from batcher import __version__

# command name -> "module:attribute"
_COMMANDS: dict[str, str] = {
    "auth": "batcher.cli.account:auth",
    "catalog": "batcher.cli.account:catalog",
    "wallet": "batcher.cli.account:wallet",
    "validate": "batcher.cli.validate:validate",
    "run": "batcher.cli.run:run",
    "status": "batcher.cli.run:status",
    "report": "batcher.cli.report:report",
    "ledger": "batcher.cli.ledger:ledger",
    "sandbox": "batcher.cli.sandbox:sandbox",
}


#: optional dependency -> the extra that installs it
_OPTIONAL = {"starlette": "sandbox", "uvicorn": "sandbox"}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS:
            module_name, attr = _COMMANDS[cmd_name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name in _OPTIONAL:
                    raise click.ClickException(
                        f"`batcher {cmd_name}` needs {exc.name}: "
                        f"pip install 'batcher[{_OPTIONAL[exc.name]}]'"
                    ) from None
                raise
            command: click.Command = getattr(module, attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batcher")
def cli() -> None:
    """Turn spreadsheets of gift-card recipients into provider orders, exactly once per row."""


def main() -> None:
    cli(prog_name="batcher")
