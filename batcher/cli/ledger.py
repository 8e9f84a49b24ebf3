"""`batcher ledger backup`: a consistent copy of the ledger, safe while a run writes."""

from __future__ import annotations

from pathlib import Path

import click

from batcher.cli.common import handle_errors, state_dir_option
from batcher.cli.terminal import echo
from batcher.core.errors import ConfigError
from batcher.ledger.store import Ledger


@click.group()
def ledger() -> None:
    """Look after the ledger (the SQLite file every run records its work in)."""


@ledger.command()
@click.argument("target", type=click.Path(path_type=Path, dir_okay=False))
@state_dir_option
@handle_errors
def backup(target: Path, state_dir: Path) -> None:
    """Copy the ledger to TARGET with SQLite's online backup.

    The copy is consistent even while a run is writing, and it is checked before
    it takes TARGET's name. Run it nightly, after the batch job, to another disk.
    """
    source = state_dir / "ledger.sqlite"
    if not source.is_file() or source.stat().st_size == 0:
        raise ConfigError(f"there is no ledger at {source} to back up")
    opened = Ledger(source)  # refuses a damaged ledger: a backup of one would hide it
    try:
        pages = opened.backup(target)
    finally:
        opened.close()
    echo(f"ledger {source} backed up to {target} ({pages} pages, checked)")
