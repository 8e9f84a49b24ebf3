"""`batcher ledger backup`, `migrate` and `copy`: looking after the ledger."""

from __future__ import annotations

from pathlib import Path

import click

from batcher.cli.common import handle_errors, ledger_options, resolve_ledger
from batcher.cli.terminal import echo
from batcher.core.errors import ConfigError
from batcher.ledger.location import parse_ledger_url
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


@ledger.command()
@click.option("--from", "source_url", required=True, metavar="URL", help="The ledger to copy.")
@click.option("--to", "target_url", required=True, metavar="URL",
              help="The ledger to copy into (migrated first when it is new).")  # fmt: skip
@handle_errors
def copy(source_url: str, target_url: str) -> None:
    """Copy every batch, row, chunk, event and webhook delivery from one ledger to another.

    E.g. --from sqlite:///home/ops/.local/state/batcher/ledger.sqlite --to
    postgresql://batcher@db/batcher. One transaction at the target: all or nothing.
    Refuses, copying nothing, when the target already has one of the batches. Stop
    the runs on the source first, and point them at the target afterwards.
    """
    where = parse_ledger_url(source_url, where="--from")
    if where.path is not None and not where.path.is_file():
        raise ConfigError(f"there is no ledger at {where.path} to copy")
    source = Ledger(where)
    try:
        target = Ledger(parse_ledger_url(target_url, where="--to"), migrate=True)
        try:
            copied = source.copy_into(target)
        finally:
            target.close()
    finally:
        source.close()
    counts = ", ".join(f"{n} {table}" for table, n in copied.items())
    echo(f"copied {source.location.shown} to {target.location.shown}: {counts}")
