"""A throwaway PostgreSQL cluster for the tests: real server binaries, nothing mocked.

`PgCluster.start()` finds the server (`/usr/lib/postgresql/*/bin`, else
`pg_config --bindir`, else `apt-get install -y postgresql`), runs `initdb` and
`pg_ctl start` in a fresh temp folder with its unix socket in that folder and a
free TCP port on 127.0.0.1. `initdb` refuses to run as root, so as root the
server runs as the `postgres` system user, owning the temp folder. Each pytest
(xdist) worker starts its own cluster the first time a test asks for one, and
every test gets a fresh database cloned from a migrated template.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from batcher.ledger.location import LedgerLocation, parse_ledger_url
from batcher.ledger.store import Ledger

TEMPLATE = "batcher_template"
# fsync off: a test cluster dies with the session; durability is PostgreSQL's own promise.
SERVER_OPTIONS = "-c fsync=off -c full_page_writes=off -c shared_buffers=16MB -c max_connections=60"


def server_bin_dir() -> Path:
    """The folder of initdb and pg_ctl; installs PostgreSQL where it is missing."""
    for attempt in range(2):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
        if found:
            return Path(found[0]).parent
        if shutil.which("pg_config"):
            bindir = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, check=False
            ).stdout.strip()
            if bindir and Path(bindir, "initdb").exists():
                return Path(bindir)
        if attempt == 0 and os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "postgresql"],
                capture_output=True,
                check=False,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
    raise RuntimeError(
        "the PostgreSQL server binaries (initdb, pg_ctl) were not found under "
        "/usr/lib/postgresql/*/bin or by pg_config, and `apt-get install -y postgresql` "
        "did not bring them: install PostgreSQL to run the ledger tests"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    root: Path
    port: int
    bin_dir: Path

    @classmethod
    def start(cls) -> PgCluster:
        bin_dir = server_bin_dir()
        root = Path(tempfile.mkdtemp(prefix="batcher-pg-"))
        as_root = os.geteuid() == 0
        if as_root:
            shutil.chown(root, "postgres", "postgres")
        cluster = cls(root, _free_port(), bin_dir)
        cluster._run("initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust",
                     "--no-sync", "--encoding=UTF8", "--locale=C.UTF-8")  # fmt: skip
        for _ in range(5):
            try:
                cluster._run(
                    "pg_ctl", "-D", str(root / "data"), "-l", str(root / "server.log"), "-w",
                    "-t", "60", "start", "-o",
                    f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 {SERVER_OPTIONS}",
                )  # fmt: skip
                break
            except RuntimeError:  # the port was taken in between: another one
                cluster.port = _free_port()
        else:
            raise RuntimeError(f"PostgreSQL did not start: see {root / 'server.log'}")
        with cluster.admin() as db:
            db.execute(f"CREATE DATABASE {TEMPLATE}")
        Ledger(cluster.location(TEMPLATE), migrate=True).close()
        return cluster

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stderr.strip() or done.stdout.strip()}")

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def location(self, dbname: str) -> LedgerLocation:
        return parse_ledger_url(self.url(dbname))

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url("postgres"), autocommit=True)

    def fresh_database(self, *, migrated: bool = True) -> str:
        """A new database of its own: a copy of the migrated template, or empty."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        template = TEMPLATE if migrated else "template0"
        with self.admin() as db:
            db.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        return name

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
