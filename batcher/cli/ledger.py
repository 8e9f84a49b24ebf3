"""`batcher ledger backup` and `batcher ledger migrate`: looking after the ledger."""

from __future__ import annotations

from pathlib import Path

import click

from batcher.cli.common import handle_errors, ledger_options, resolve_ledger
from batcher.cli.terminal import echo
from batcher.core.errors import ConfigError
from batcher.ledger.schema import SCHEMA_VERSION
from batcher.ledger.store import Ledger


@click.group()
def ledger() -> None:
    """Look after the ledger (the database every run records its work in)."""


@ledger.command()
@click.argument("target", type=click.Path(path_type=Path, dir_okay=False))
@ledger_options
@handle_errors
def backup(target: Path, state_dir: Path | None, ledger_url: str | None) -> None:
    """Copy the ledger to TARGET with SQLite's online backup.

    The copy is consistent even while a run is writing, and it is checked before
    it takes TARGET's name. Run it nightly, after the batch job, to another disk.
    A PostgreSQL ledger is backed up with pg_dump (see the README).
    """
    _, location = resolve_ledger(state_dir, ledger_url)
    source = location.path
    if source is not None and (not source.is_file() or source.stat().st_size == 0):
        raise ConfigError(f"there is no ledger at {source} to back up")
    opened = Ledger(location)  # refuses a damaged ledger: a backup of one would hide it
    try:
        pages = opened.backup(target)
    finally:
        opened.close()
    echo(f"ledger {location.shown} backed up to {target} ({pages} pages, checked)")


@ledger.command()
@ledger_options
@handle_errors
def migrate(state_dir: Path | None, ledger_url: str | None) -> None:
    """Create the ledger's tables, or bring them up to this batcher's schema.

    Needed once per PostgreSQL database (and after each upgrade of batcher that
    changes the schema), with a role that may create tables. A SQLite ledger is
    migrated when it is opened; running this on one is harmless.
    """
    _, location = resolve_ledger(state_dir, ledger_url)
    opened = Ledger(location, migrate=True)
    found = opened.migrated_from
    opened.close()
    if found == SCHEMA_VERSION:
        echo(f"ledger {location.shown} is already at schema {SCHEMA_VERSION}")
    else:
        was = "a new ledger" if found is None else f"schema {found}"
        echo(f"ledger {location.shown} migrated from {was} to schema {SCHEMA_VERSION}")
