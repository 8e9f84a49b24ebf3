"""Two `batcher run` processes on one UGiftMe key and one PostgreSQL ledger share the
key's rate limit: together they get no 429 and still use most of the limit.

The sandbox is a fixed window of 60 requests per 6 s (the 600/60 limit, ten times
faster), orders are answered at once (no polls), and every row is its own order, so
each process always has a request waiting. `make bench` (`shared_rate`) runs the
full 600/60 window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batcher.core.errors import ExitCode
from tests.e2e.shared_rate_kit import run_two_on_one_key


def test_two_runs_on_one_key_share_its_limit_with_no_429(
    tmp_path: Path, make_ugiftme_sandbox: Any, pg_url: str
) -> None:
    sandbox = make_ugiftme_sandbox(async_mode=False, rate_limit=60, rate_window_seconds=6.0)
    result = run_two_on_one_key(sandbox, pg_url, tmp_path, rows_each=100, timeout=300)
    assert result.exit_codes == (ExitCode.OK, ExitCode.OK), result.stderr
    assert result.requests >= 140  # every order, and the reads around them
    assert result.too_many == 0, f"{result.too_many} answers were 429"
    assert result.percent_of_limit >= 85.0, f"{result.percent_of_limit:.1f}% of the limit"
