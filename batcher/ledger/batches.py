"""Batches and runs: which sheet and account a batch is, and when each run began and ended."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from batcher.core.clock import utc_now
from batcher.core.errors import ConfigError
from batcher.ledger.connection import LedgerConnection


class LedgerBatches(LedgerConnection):
    """Registering batches and runs."""

    def ensure_batch(
        self,
        batch: str,
        *,
        provider: str,
        account_id: str,
        source_path: str,
        source_sha256: str,
        sheet_headers: Sequence[str] = (),
        sheet_columns: dict[str, str] | None = None,
        allow_same_sheet: bool = True,
    ) -> bool:
        """Record the batch; True when it is new to this ledger.

        Unless `allow_same_sheet`, a sheet whose bytes another batch of the same
        account already ran (or is running) is refused, in the same transaction
        that records this batch, so two runs started at once cannot both pass.
        """
        now = utc_now()
        with self._tx() as db:
            existing = db.execute(
                "SELECT provider, account_id, source_sha256 FROM batches WHERE batch = ?",
                (batch,),
            ).fetchone()
            if existing and (existing["provider"], existing["account_id"]) != (
                provider,
                account_id,
            ):
                raise ConfigError(
                    f"batch {batch!r} belongs to provider {existing['provider']} account "
                    f"{existing['account_id']}",
                    hint="use another --batch name for a different provider or account",
                )
            rerun = existing is not None and existing["source_sha256"] == source_sha256
            if not allow_same_sheet and not rerun:
                twin = db.execute(
                    "SELECT batch FROM batches WHERE source_sha256 = ? AND provider = ?"
                    " AND account_id = ? AND batch != ? ORDER BY created_at LIMIT 1",
                    (source_sha256, provider, account_id, batch),
                ).fetchone()
                if twin is not None:
                    raise ConfigError(
                        f"this sheet (the same bytes) was already run as batch {twin[0]!r};"
                        f" running it as {batch!r} would order its rows again; nothing was sent",
                        hint=f"rerun it as --batch {twin[0]}, or pass --same-sheet-ok if a"
                        " second set of orders is really wanted",
                    )
            db.execute(
                "INSERT INTO batches(batch, provider, account_id, source_path, source_sha256,"
                " sheet_headers, sheet_columns, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(batch) DO UPDATE SET source_path = excluded.source_path,"
                " source_sha256 = excluded.source_sha256, sheet_headers = excluded.sheet_headers,"
                " sheet_columns = excluded.sheet_columns, updated_at = excluded.updated_at",
                (
                    batch,
                    provider,
                    account_id,
                    source_path,
                    source_sha256,
                    json.dumps(list(sheet_headers), ensure_ascii=False),
                    json.dumps(sheet_columns or {}, ensure_ascii=False),
                    now,
                    now,
                ),
            )
        return existing is None

    def start_run(self, batch: str, command: str) -> str:
        run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs(run_id, batch, command, pid, host, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, batch, command, os.getpid(), socket.gethostname(), utc_now()),
            )
            self.run_id = run_id
            self._event(batch, "run_started", command=command)
        return run_id

    def finish_run(self, run_id: str, batch: str, exit_code: int, summary: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, exit_code = ?, summary = ? WHERE run_id = ?",
                (utc_now(), exit_code, json.dumps(summary, default=str), run_id),
            )
            self._event(batch, "run_finished", exit_code=exit_code)
