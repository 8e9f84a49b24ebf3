"""`batcher campaigns`: which payout campaign ids `--payouts --campaign ID` can use."""

from __future__ import annotations

import json
from pathlib import Path

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import batcher, cli_env
from tests.e2e.test_gifq_run import ACTIVE_CAMPAIGN, PAUSED_CAMPAIGN, gifq, gifq_env


def test_campaigns_are_listed_with_their_status(tmp_path: Path) -> None:
    with running_sandbox("gifq") as sandbox:
        env = gifq_env(sandbox, tmp_path / "state")
        listed = batcher(["campaigns", *gifq(sandbox), "--json"], env)
        assert listed.returncode == 0, listed.stderr
        document = json.loads(listed.stdout)
        assert document["schema"] == "batcher.campaigns/1"
        status = {c["campaign_id"]: c["status"] for c in document["campaigns"]}
        assert status[ACTIVE_CAMPAIGN] == "active" and status[PAUSED_CAMPAIGN] == "paused"
        assert all(c["brands"] for c in document["campaigns"] if c["status"] == "active")

        table = batcher(["campaigns", *gifq(sandbox)], env)
        assert table.returncode == 0 and ACTIVE_CAMPAIGN in table.stdout


def test_a_provider_without_campaigns_says_so(tmp_path: Path) -> None:
    with running_sandbox("ugiftme") as sandbox:
        done = batcher(["campaigns"], cli_env(sandbox, tmp_path / "state"))
        assert done.returncode == 2
        assert "no payout campaigns" in done.stderr and "--provider gifq" in done.stderr
