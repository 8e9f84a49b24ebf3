"""Webhooks end to end over real HTTP: sandbox -> (lossy network) -> `batcher listen`
-> ledger -> `batcher run`, all as real processes and sockets."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import (
    batcher,
    cli_env,
    make_rows,
    orders_by_email,
    read_summary,
    start_batcher,
    write_sheet,
)
from tests.e2e.webhook_kit import (
    Listener,
    LossyProxy,
    files_text,
    free_port,
    ledger_bytes,
    serving,
    write_config,
)

ROWS = 2000


def test_async_run_settles_from_events_despite_drops_duplicates_and_a_listener_outage(
    tmp_path: Path,
) -> None:
    state, reports = tmp_path / "state", tmp_path / "reports"
    secret_file = tmp_path / "webhook-secret"
    # The margin outlasts the sandbox's fifth delivery attempt (about 49 s after the
    # first at this time scale), with room for a loaded machine: a delivery refused while
    # the listener is down (it can take seconds to start again) or dropped by the proxy
    # still arrives before the runner gives up waiting and polls. At 60 s a chunk of a
    # run on a busy CI machine polled now and then.
    config = write_config(tmp_path / "batcher.toml", secret_file, margin=120)
    sheet = write_sheet(tmp_path / "hooks.csv", make_rows(ROWS, seed=11))
    with running_sandbox(
        "ugiftme",
        async_mode=True,
        async_delay_seconds=0.2,
        rate_limit=240,  # 4 req/s: the run lasts long enough to take the listener down mid-way
        webhook_time_scale=0.01,  # retries after 0.6 s, 3 s, 9 s, ...
        # Duplicates are drawn only for delivered events; under load the outage can
        # leave few of the ~60 delivered by the time the run ends (one CI-class run
        # saw none at 0.1). At 0.3, even 20 delivered events give p(none) = 0.08%.
        webhook_duplicate_rate=0.3,
        webhook_jitter_seconds=0.05,
        seed=5,
        funding={"GBP": "1000000.00"},
    ) as sandbox:
        env = cli_env(sandbox, state, BATCHER_CONFIG=str(config))
        listener = Listener(env, state, free_port(), tmp_path / "listen")
        proxy = LossyProxy(listener.url, drop_rate=0.1, seed=3)
        with serving(proxy) as proxy_url:
            subscribed = batcher(
                ["webhooks", "subscribe", "--url", proxy_url + "/webhooks",
                 *_every_order_event(), "--secret-file", str(secret_file)], env,
            )  # fmt: skip
            assert subscribed.returncode == 0, subscribed.stderr
            secret = secret_file.read_text().strip()
            assert secret and (secret_file.stat().st_mode & 0o077) == 0
            tested = batcher(["webhooks", "list"], env)
            assert tested.returncode == 0 and proxy_url in tested.stdout
            listener.start()

            run = start_batcher(["run", str(sheet), "--yes", "--report-dir", str(reports)], env)
            # Down for part of the run, tied to the run's progress rather than the
            # clock (a loaded machine starts the run late): after the first events,
            # until deliveries have failed against it; those are retried later.
            if not _wait(lambda: _count(state, "accepted") >= 3, timeout=120):
                listener.stop()  # for its log: two loaded clean-clone runs recorded nothing
                raise AssertionError(
                    f"fewer than 3 events recorded in 120 s: dropped {proxy.dropped}, "
                    f"refused {proxy.refused}, forwarded {proxy.forwarded}; listener: "
                    + " | ".join(
                        line for text in listener.outputs for line in text.splitlines()[-8:]
                    )
                )
            down_at = time.monotonic()
            listener.stop()
            assert _wait(lambda: proxy.refused >= 2, timeout=60)
            listener.start()
            outage = time.monotonic() - down_at
            out, err = run.communicate(timeout=240)
            assert run.returncode == 0, err
            # let late duplicates land before the listener stops for good
            time.sleep(1.0)
            listener.stop()
        events = batcher(["webhooks", "events", "--state-dir", str(state)], env)
        orders = orders_by_email(sandbox)
        deliveries = sandbox.control("GET", "/webhooks/deliveries")

    summary = read_summary(reports, sheet.stem)
    requests = summary["requests"]
    # What a failure needs to be read: how long the listener was down, and how the
    # deliveries went (a poll is due when an event's attempts all fail for 120 s).
    listened = [line for text in listener.outputs for line in text.splitlines() if line]
    seen = {"outage_seconds": round(outage, 1), "dropped": proxy.dropped,
            "refused": proxy.refused, "timed_out": proxy.timed_out,
            "deliveries": _attempts(deliveries), "errors": _errors(deliveries), **requests,
            "listener_lines": len(listened), "listener_last": listened[-6:]}  # fmt: skip
    # as text: pytest cuts a dict shown as a message down to one line
    said = json.dumps(seen)
    assert requests["submits"] >= ROWS // 100
    assert requests["polls"] <= 0.05 * requests["submits"], said
    assert requests["settled_by_event"] >= ROWS // 100 - requests["polls"]
    # exactly once: one order per row at the provider, every row succeeded in the ledger
    assert orders == Counter({f"person{i}@example.com": 1 for i in range(ROWS)})
    with sqlite3.connect(state / "ledger.sqlite") as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM rows GROUP BY state").fetchall())
        repeats = db.execute("SELECT SUM(deliveries - 1) FROM webhook_events").fetchone()[0]
    assert states == {"succeeded": ROWS}
    # the hostility really happened
    duplicated = sum(
        a["duplicate"] for d in deliveries.get("deliveries", []) for a in d["attempts"]
    )
    assert proxy.dropped > 0 and proxy.refused > 0 and duplicated > 0, said
    assert "orphans" in events.stdout, events.stderr
    print(json.dumps({**seen, "duplicated": duplicated, "repeats": repeats}))

    # the signing secret never reaches any output, log, report or the ledger
    outputs = [out, err, subscribed.stdout, subscribed.stderr, events.stdout, *listener.outputs]
    assert all(secret not in text for text in outputs)
    assert secret.encode() not in ledger_bytes(state)
    assert secret not in files_text(reports)


def test_forged_unsigned_and_replayed_deliveries_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    secret_file = tmp_path / "webhook-secret"
    config = write_config(tmp_path / "batcher.toml", secret_file, margin=60)
    with running_sandbox("ugiftme", async_mode=True, async_delay_seconds=0.05) as sandbox:
        env = cli_env(sandbox, state, BATCHER_CONFIG=str(config))
        listener = Listener(env, state, free_port(), tmp_path / "listen")
        done = batcher(
            ["webhooks", "subscribe", "--url", listener.url, "--event", "wallet.updated",
             "--secret-file", str(secret_file)], env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        listener.start()
        try:
            sandbox.control("POST", "/wallets/GBP/fund", {"amount": "5.00"})  # a real event
            assert _wait(lambda: _count(state, "accepted") >= 1)
            answers = {
                kind: sandbox.control(
                    "POST", "/webhooks/forge", {"kind": kind, "url": listener.url}
                )
                for kind in ("bad-signature", "unsigned", "replay")
            }
        finally:
            listener.stop()
    assert {k: a["statusCode"] for k, a in answers.items()} == {
        "bad-signature": 401,
        "unsigned": 401,
        "replay": 401,
    }
    assert answers["replay"]["payload"]["replayed"] is True
    with sqlite3.connect(state / "ledger.sqlite") as db:
        reasons = sorted(
            r for (r,) in db.execute("SELECT reason FROM webhook_events WHERE verdict='rejected'")
        )
        accepted = db.execute("SELECT payload FROM webhook_events WHERE verdict='accepted'")
        assert all("replayed" not in json.loads(p) for (p,) in accepted)
    assert reasons == ["bad signature", "bad signature", "unsigned"]


def _every_order_event() -> list[str]:
    """queued and processing too: ~60 deliveries, so the proxy's 10% drop rate hits some."""
    events = ("order.queued", "order.processing", "order.succeeded", "order.failed")
    return [arg for event in events for arg in ("--event", event)]


def _count(state: Path, verdict: str) -> int:
    try:
        with sqlite3.connect(state / "ledger.sqlite") as db:
            return int(
                db.execute(
                    "SELECT COUNT(*) FROM webhook_events WHERE verdict = ?", (verdict,)
                ).fetchone()[0]
            )
    except sqlite3.OperationalError:
        return 0


def _wait(predicate: object, timeout: float = 10.0) -> bool:
    assert callable(predicate)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_subscription_lifecycle_over_the_cli(tmp_path: Path) -> None:
    """subscribe (secret shown once), list, test (a real signed delivery), update, delete."""
    state = tmp_path / "state"
    with running_sandbox("ugiftme") as sandbox:
        env = cli_env(sandbox, state)
        listener = Listener(env, state, free_port(), tmp_path / "listen")
        made = batcher(["webhooks", "subscribe", "--url", listener.url], env)
        assert made.returncode == 0, made.stderr
        hook_id, secret = made.stdout.split()[0], made.stdout.strip().splitlines()[-1]
        assert secret.startswith("whsec_") and "shown once" in made.stderr
        listed = batcher(["webhooks", "list", "--json"], env)
        [entry] = json.loads(listed.stdout)
        assert entry["events"] == ["order.succeeded", "order.failed"]
        assert secret not in listed.stdout + listed.stderr  # never shown again
        listener.env = {**env, "UGIFTME_WEBHOOK_SECRET": secret}
        listener.start()
        try:
            tested = batcher(["webhooks", "test", hook_id], env)
        finally:
            listener.stop()
        assert tested.returncode == 0 and "answered 200" in tested.stdout, tested.stderr
        assert _count(state, "accepted") == 1
        paused = batcher(["webhooks", "update", hook_id, "--inactive"], env)
        assert paused.returncode == 0 and "inactive" in paused.stdout, paused.stderr
        refused = batcher(["webhooks", "update", hook_id, "--event", "order.lost"], env)
        assert refused.returncode != 0 and "order.failed" in refused.stderr
        deleted = batcher(["webhooks", "delete", hook_id], env)
        assert deleted.returncode == 0, deleted.stderr
        assert json.loads(batcher(["webhooks", "list", "--json"], env).stdout) == []
    assert all(secret not in text for text in listener.outputs)


def _errors(deliveries: dict[str, Any]) -> dict[str, int]:
    """The failed attempts by their answer: a status code, or the error's kind."""
    tally: Counter[str] = Counter()
    for delivery in deliveries.get("deliveries", []):
        for attempt in delivery["attempts"]:
            status = attempt["statusCode"]
            if status is None or not 200 <= status < 300:
                tally[str(status) if status else str(attempt["error"]).split(":")[0]] += 1
    return dict(sorted(tally.items()))


def _attempts(deliveries: dict[str, Any]) -> dict[str, int]:
    """Deliveries by how they went: attempts made (first try and retries), and how many
    ended with a 2xx answer."""
    tally: Counter[str] = Counter()
    for delivery in deliveries.get("deliveries", []):
        tries = [a for a in delivery["attempts"] if not a["duplicate"]]
        ok = any(200 <= (a["statusCode"] or 0) < 300 for a in tries)
        tally[f"{len(tries)} attempt(s), {'delivered' if ok else 'not delivered'}"] += 1
    return dict(sorted(tally.items()))
