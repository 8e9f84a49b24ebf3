"""A right the ledger's role or file lacks is reported as such, never as damage.

`handle_errors` tells the operator a ledger "may be damaged" when its database
fails under a command. A role without the privilege a statement needs (a
PostgreSQL role that may not create tables running `batcher ledger migrate`, a
read-only SQLite file) is a setup matter: the message says what was refused and
which rights each command needs.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest

from batcher.cli.common import handle_errors
from batcher.core.errors import ExitCode
from batcher.ledger.backend import is_database_error, is_permission_error
from tests.e2e.runkit import batcher
from tests.pg import PgCluster


def _read_only_write_error(tmp_path: Path) -> sqlite3.Error:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db.execute("INSERT INTO meta VALUES ('k', 'v')")
    except sqlite3.Error as exc:
        return exc
    finally:
        db.close()
    raise AssertionError("a read-only connection accepted a write")


def test_a_read_only_sqlite_file_is_a_refused_right(tmp_path: Path) -> None:
    error = _read_only_write_error(tmp_path)
    assert is_permission_error(error)
    assert is_database_error(error)


def test_damage_and_bugs_are_not_refused_rights() -> None:
    assert not is_permission_error(sqlite3.DatabaseError("database disk image is malformed"))
    assert not is_permission_error(sqlite3.OperationalError("disk I/O error"))
    assert not is_permission_error(ValueError("a bug"))
    assert not is_permission_error(psycopg.errors.DataCorrupted("index is corrupt"))
    moved = sqlite3.OperationalError("attempt to write a readonly database")
    moved.sqlite_errorcode = sqlite3.SQLITE_READONLY_DBMOVED  # the file went away mid-run
    assert not is_permission_error(moved)


def test_the_cli_names_a_refused_right_and_not_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = _read_only_write_error(tmp_path)

    @handle_errors
    def command() -> None:
        raise error

    with pytest.raises(SystemExit) as exited:
        command()
    assert exited.value.code == ExitCode.CANNOT_START
    said = capsys.readouterr().err
    assert "the ledger refused access (attempt to write a readonly database)" in said
    assert "damaged" not in said


def test_migrate_by_a_role_that_may_not_create_tables(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    name = pg_cluster.fresh_database(migrated=False)
    role = f"r_{uuid.uuid4().hex[:10]}"
    with pg_cluster.admin() as db:
        db.execute(f"CREATE ROLE {role} LOGIN")
    with psycopg.connect(pg_cluster.url(name), autocommit=True) as db:
        db.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # PostgreSQL < 15 grants it
    url = f"postgresql://{role}@127.0.0.1:{pg_cluster.port}/{name}"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("UGIFTME_", "GIFQ_", "BATCHER_"))
    }
    env["BATCHER_STATE_DIR"] = str(tmp_path / "state")
    done = batcher(["ledger", "migrate", "--ledger", url], env, timeout=60)
    assert done.returncode == ExitCode.CANNOT_START, done.stderr
    assert "the ledger refused access" in done.stderr
    assert "permission denied" in done.stderr
    assert "may create tables" in done.stderr
    assert "damaged" not in done.stderr
    assert "Traceback" not in done.stderr
