"""batcher.toml through BATCHER_CONFIG or --config: a limit read from it is named as such."""

from __future__ import annotations

from pathlib import Path

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import batcher, cli_env, make_rows, sandbox_orders, write_sheet

FAST = {"rate_limit": 100_000, "rate_window_seconds": 60, "async_delay_seconds": 0.05}


def test_a_config_limit_is_reported_as_the_configs(tmp_path: Path) -> None:
    config = tmp_path / "ops.toml"
    config.write_text('[limits.max_total]\nGBP = "1.00"\n', encoding="utf-8")
    with running_sandbox("ugiftme", **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "limited.csv", make_rows(3))
        env = cli_env(sandbox, tmp_path / "state")
        args = ["run", str(sheet), "--yes", "--report-dir", str(tmp_path / "reports")]

        by_env = batcher(args, {**env, "BATCHER_CONFIG": str(config)})
        assert by_env.returncode == 2, by_env.stderr
        assert f"set by {config} [limits.max_total]" in by_env.stderr
        assert "--max-total" not in by_env.stderr.split("exit 2")[-1]

        by_flag = batcher(["--config", str(config), *args], env)
        assert by_flag.returncode == 2 and f"set by {config}" in by_flag.stderr

        overridden = batcher(["--config", str(config), *args, "--max-total", "GBP=2.00"], env)
        assert overridden.returncode == 2 and "set by --max-total" in overridden.stderr
        assert sandbox_orders(sandbox) == []

        missing = batcher(["--config", str(tmp_path / "absent.toml"), *args], env)
        assert missing.returncode == 2 and "does not exist" in missing.stderr
