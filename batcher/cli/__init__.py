"""The `batcher` command: a thin Click shell over the library.

Each command group lives in its own module and is loaded lazily, so a slow
import (polars, openpyxl, uvicorn) is only paid by the command that needs it.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from batcher import __version__

#: command name -> ("module:attribute", one-line help). The line is repeated here so
#: `batcher --help` lists the commands without importing them (polars, httpx and
#: openpyxl are most of a command's start-up); a test keeps it equal to the real one.
_COMMANDS: dict[str, tuple[str, str]] = {
    "auth": (
        "batcher.cli.account:auth",
        "Check the API key and show which account it belongs to.",
    ),
    "catalog": ("batcher.cli.account:catalog", "List the products this account can order."),
    "wallet": (
        "batcher.cli.account:wallet",
        "Show wallet balances per currency, or the wallet's transactions.",
    ),
    "campaigns": (
        "batcher.cli.account:campaigns",
        "List the payout campaigns (GIFQ) that --payouts --campaign ID can use.",
    ),
    "validate": (
        "batcher.cli.validate:validate",
        "Check SHEET against the provider's catalog and wallets; order nothing.",
    ),
    "run": ("batcher.cli.run:run", "Order every valid row of SHEET exactly once; safe to rerun."),
    "status": (
        "batcher.cli.run:status",
        "Row counts by state and the last runs, read from the ledger (no network).",
    ),
    "report": (
        "batcher.cli.report:report",
        "Reconcile BATCH with the provider and write REPORT_DIR/BATCH/reconciliation.xlsx.",
    ),
    "sandbox": (
        "batcher.cli.sandbox:sandbox",
        "Local provider sandboxes to rehearse against (never a real provider).",
    ),
    "statement": (
        "batcher.cli.statement:statement",
        "Write REPORT_DIR/statements/statement-FROM-to-TO-<time>.xlsx for finance.",
    ),
    "webhooks": (
        "batcher.cli.webhooks:webhooks",
        "Webhook subscriptions at the provider, and the events `batcher listen` received.",
    ),
    "listen": (
        "batcher.cli.listen:listen",
        "Receive signed webhook deliveries and record them as evidence in the ledger.",
    ),
    "enqueue": (
        "batcher.cli.queue:enqueue",
        "Validate SHEET as `batcher run` would and queue it for `batcher worker`.",
    ),
    "worker": (
        "batcher.cli.queue:worker",
        "Claim queued batches from the PostgreSQL ledger and run them, one at a time.",
    ),
    "queue": (
        "batcher.cli.queue:queue_command",
        "The work queue's items, newest first: state, attempts, worker and outcome.",
    ),
    "ledger": (
        "batcher.cli.ledger:ledger",
        "Look after the ledger (the database every run records its work in).",
    ),
}


#: optional dependency -> the extra that installs it
_OPTIONAL = {"starlette": "sandbox", "uvicorn": "sandbox"}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS:
            module_name, attr = _COMMANDS[cmd_name][0].split(":")
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
            _imports_done()
            return command
        _imports_done()  # a command defined here: nothing more to import
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the table above: no command module is imported."""
        rows = []
        width = formatter.width - 6 - max(len(name) for name in _COMMANDS)
        for name in self.list_commands(ctx):
            if name in _COMMANDS:
                rows.append((name, _shorten(_COMMANDS[name][1], width)))
            else:
                command = super().get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(width)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _shorten(text: str, limit: int) -> str:
    """As Click shortens a command's help line for the list."""
    return click.Command("_", help=text).get_short_help_str(limit)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batcher")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="BATCHER_CONFIG",
    default=None,
    help="batcher.toml to read (also BATCHER_CONFIG; default: ./batcher.toml).",
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Turn spreadsheets of gift-card recipients into provider orders, exactly once per row."""
    # A missing BATCHER_CONFIG file is an empty configuration (config.py); a missing
    # --config, typed by hand, is a typo.
    source = ctx.get_parameter_source("config")
    explicit = source is not None and source.name == "COMMANDLINE"
    if explicit and config is not None and not config.exists():
        raise click.BadParameter(f"{config} does not exist", param_hint="--config")


#: True in the `batcher` program itself (`main`); never under a test's CliRunner,
#: where ending the process would end the test run
_program = False


def main() -> None:
    global _program
    _program = True
    # Importing a command (polars, httpx, ours) allocates hundreds of thousands
    # of objects and frees almost none: the cyclic collector, run every 700 allocations,
    # would walk them all again and again for nothing (about a tenth of the start-up of
    # `batcher validate`). It is off until the command is imported (`_imports_done`).
    gc.disable()
    cli(prog_name="batcher")


def _imports_done() -> None:
    """The command's modules are loaded: freeze them out of every later collection
    (they live as long as the process) and collect cyclic garbage from here on."""
    if _program and not gc.isenabled():
        gc.freeze()
        gc.enable()


def finish(code: int) -> NoReturn:
    """End a command that has written, closed and printed everything it had to.

    In the program itself the process ends at once: the interpreter's teardown
    (polars joining its thread pool, every module torn down) costs about 0.15 s, a
    quarter of a `batcher validate` of a small sheet. Elsewhere, an ordinary exit.
    """
    if not _program:
        sys.exit(code)
    import logging  # loaded by then whenever a handler could hold anything

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
