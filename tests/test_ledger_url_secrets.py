"""A PostgreSQL ledger URL's password never reaches an error, whatever shape the URL
has: libpq quotes the URL, the password, or the piece of a password it took for a
host or a port, and psycopg names the host it could not resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.core.errors import BatcherError, ConfigError, ExitCode
from batcher.ledger.backend import connect
from batcher.ledger.location import LedgerLocation, mask_url, parse_ledger_url
from tests.e2e.runkit import batcher, cli_env
from tests.pg import PgCluster

#: two halves, so a message that quotes half of the password is caught too
PIECES = ("Quokka", "Zebra7731")


def _leaks(text: str) -> list[str]:
    return [piece for piece in PIECES if piece in text]


# Port 1 on 127.0.0.1: nothing listens, so a URL libpq can parse fails to connect.
URLS = {
    "plain": "postgresql://batcher:QuokkaZebra7731@127.0.0.1:1/ledger",
    "slash": "postgresql://batcher:Quokka/Zebra7731@127.0.0.1:1/ledger",
    "two @": "postgresql://batcher:Quokka@Zebra7731@127.0.0.1:1/ledger",
    "bad %": "postgresql://batcher:Quokka%zzZebra7731@127.0.0.1:1/ledger",
    "%00": "postgresql://batcher:Quokka%00Zebra7731@127.0.0.1:1/ledger",
    "space": "postgresql://batcher:Quokka Zebra7731@127.0.0.1:1/ledger",
    "?#": "postgresql://batcher:Quokka?#Zebra7731@127.0.0.1:1/ledger",
    "broken ipv6": "postgresql://batcher:QuokkaZebra7731@[::1/ledger",
    "query": "postgresql://batcher@127.0.0.1:1/ledger?password=QuokkaZebra7731",
    "query bad %": "postgresql://batcher@127.0.0.1:1/ledger?password=Quokka%zzZebra7731",
    "query &": "postgresql://batcher@127.0.0.1:1/ledger?password=Quokka&Zebra7731",
    "sslpassword": "postgresql://batcher@127.0.0.1:1/ledger?sslpassword=Quokka%zzZebra7731",
}


@pytest.mark.parametrize("url", URLS.values(), ids=URLS.keys())
def test_no_error_and_no_shown_url_holds_the_password(url: str) -> None:
    assert not _leaks(mask_url(url))
    try:  # as the CLI reads it
        location = parse_ledger_url(url)
    except ConfigError as exc:
        assert not _leaks(str(exc)), str(exc)
        location = LedgerLocation("postgresql", url)  # built by hand: the driver checks too
    assert not _leaks(location.shown) and not _leaks(repr(location))
    with pytest.raises(BatcherError) as info:
        connect(location).close()
    assert info.value.exit_code == ExitCode.CANNOT_START
    assert not _leaks(str(info.value)), str(info.value)
    # no driver exception travels along (a traceback under BATCHER_DEBUG=1 shows none)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_a_password_that_libpq_would_split_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        parse_ledger_url(URLS["slash"], where="batcher.toml: ledger")
    text = str(info.value)
    assert text.startswith("batcher.toml: ledger: the PostgreSQL ledger URL ")
    assert "postgresql://batcher:***@127.0.0.1:1/ledger" in text
    assert "%40" in text and "%2F" in text


def test_the_servers_own_messages_still_name_what_is_wrong(pg_cluster: PgCluster) -> None:
    """Masking keeps what the operator needs: the database and role the server names,
    even when the password contains the role's name."""
    port = pg_cluster.port
    missing_db = f"postgresql://postgres:QuokkaZebra7731@127.0.0.1:{port}/no_such_ledger"
    with pytest.raises(BatcherError) as info:
        connect(parse_ledger_url(missing_db)).close()
    assert '"no_such_ledger" does not exist' in str(info.value)
    assert not _leaks(str(info.value))

    role = f"postgresql://nobody_here:nobody_here-QuokkaZebra7731@127.0.0.1:{port}/postgres"
    with pytest.raises(BatcherError) as info:
        connect(parse_ledger_url(role)).close()
    assert 'role "nobody_here" does not exist' in str(info.value)
    assert not _leaks(str(info.value))


@pytest.mark.parametrize("name", ["slash", "two @", "bad %", "space", "broken ipv6", "query &"])
def test_the_cli_never_prints_the_password(
    name: str, tmp_path: Path, ugiftme_sandbox: object
) -> None:
    env = cli_env(ugiftme_sandbox, tmp_path / "state")
    for args in (["status", "--ledger", URLS[name]], ["ledger", "migrate", "--ledger", URLS[name]]):
        done = batcher(args, env)
        assert done.returncode == ExitCode.CANNOT_START, done.stderr
        assert "Traceback" not in done.stderr
        assert not _leaks(done.stdout + done.stderr), done.stderr
        assert "ledger" in done.stderr
