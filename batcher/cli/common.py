"""Pieces every command shares: provider options and turning errors into exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from batcher.cli.terminal import echo
from batcher.config import (
    PROFILES,
    ProviderSettings,
    account_settings,
    config_path_from,
    load_file_config,
    provider_settings,
)
from batcher.core.errors import BatcherError, ConfigError, ExitCode, UsageError
from batcher.intake.xlsx_limits import IntakeLimits, intake_limits
from batcher.providers.base import ProviderOptions

if TYPE_CHECKING:  # validate opens no ledger
    from batcher.ledger.location import LedgerLocation

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    """Print one line to stderr and exit; never a traceback."""
    echo(f"batcher: error: {message}", err=True)
    sys.exit(int(code))


def handle_errors(func: F) -> F:
    """Turn BatcherError into a one-line message and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BatcherError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", ExitCode.INCOMPLETE)
        except Exception as exc:  # a bug: say so in one line; the ledger keeps the state
            from batcher.ledger.backend import (  # sqlite3: not for validate
                is_database_error,
                is_permission_error,
            )

            detail = " ".join(str(exc).split())[:300]
            if is_permission_error(exc):  # a right the role or file lacks: not damage
                fail(
                    f"the ledger refused access ({detail}): the refused statement changed "
                    "nothing. Give the database role (or the user running batcher, for a "
                    "SQLite file) the rights it needs: `batcher ledger migrate` needs a role "
                    "that may create tables, runs need one that may read and write them",
                    ExitCode.CANNOT_START,
                )
            if is_database_error(exc):  # the ledger failed under us: never call it intact
                fail(
                    f"the ledger could not be read or written ({detail}); if this repeats, "
                    "the ledger may be damaged: restore it from backup (see README)",
                    ExitCode.CANNOT_START,
                )
            if os.environ.get("BATCHER_DEBUG"):
                raise
            fail(
                f"internal error ({type(exc).__name__}); the ledger is intact, rerun to "
                "continue, or set BATCHER_DEBUG=1 to see the traceback",
                ExitCode.INCOMPLETE,
            )

    return wrapper  # type: ignore[return-value]


class OptionGroup:
    """Options that always go together, as one decorator: --help lists them in the order given."""

    def __init__(self, *options: Callable[[Any], Any]) -> None:
        self._options = options

    def __call__(self, func: F) -> F:
        for option in reversed(self._options):
            func = option(func)
        return func


def provider_choice(help: str) -> Callable[[F], F]:
    """--provider: one of the connection profiles, UGiftMe unless told."""
    return click.option(
        "--provider",
        type=click.Choice(sorted(PROFILES), case_sensitive=False),
        default="ugiftme",
        show_default=True,
        help=help,
    )


#: --provider and --base-url. The API key is read from the environment only.
provider_options = OptionGroup(
    provider_choice("Gift-card provider."),
    click.option(
        "--base-url",
        default=None,
        help="API root, e.g. https://api-stage.ugift.me/api/v1/business "
        "(or UGIFTME_BASE_URL / GIFQ_BASE_URL). A bare host gets the API path appended.",
    ),
)


#: --sheet, --map, --allow-duplicates and --skip-hidden: how a sheet is read, everywhere.
sheet_options = OptionGroup(
    click.option(
        "--sheet",
        "sheet_name",
        default=None,
        metavar="NAME",
        help="Worksheet of an .xlsx file (default: the first visible one).",
    ),
    click.option(
        "--map",
        "mapping",
        multiple=True,
        metavar="FIELD=HEADER",
        help="Read FIELD from the column HEADER, e.g. --map amount='Card value'. Repeatable.",
    ),
    click.option(
        "--allow-duplicates",
        is_flag=True,
        help="Accept identical rows (same recipient, product, amount) as separate orders.",
    ),
    click.option(
        "--skip-hidden",
        is_flag=True,
        help="Leave out an .xlsx file's hidden rows and columns (by default they are read, "
        "with a warning).",
    ),
)


#: --payouts, --campaign and --expires-in-days (GIFQ payouts mode).
payout_options = OptionGroup(
    click.option(
        "--payouts", is_flag=True, help="GIFQ payouts mode: recipients choose their card."
    ),
    click.option("--campaign", default=None, help="Payout campaign id (with --payouts)."),
    click.option(
        "--expires-in-days",
        type=click.IntRange(1, 3650),
        default=None,
        help="How long recipients have to choose (with --payouts; default 30).",
    ),
)


def state_dir_option(func: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(path_type=Path, file_okay=False),
        envvar="BATCHER_STATE_DIR",
        default=None,
        help="Folder of the ledger (ledger.sqlite) and batch locks; also BATCHER_STATE_DIR. "
        "Default: state_dir in batcher.toml, else $XDG_STATE_HOME/batcher "
        "(~/.local/state/batcher).",
    )(func)


#: --state-dir and --ledger: every command that opens the ledger takes both.
ledger_options = OptionGroup(
    state_dir_option,
    click.option(
        "--ledger",
        "ledger_url",
        envvar="BATCHER_LEDGER",
        default=None,
        metavar="URL",
        help="Where the ledger lives: sqlite:///path/ledger.sqlite or "
        "postgresql://user@host/db; also BATCHER_LEDGER or ledger in batcher.toml. "
        "Default: ledger.sqlite in the state folder. Keep passwords out of the URL "
        "(PGPASSWORD or ~/.pgpass).",
    ),
)


def resolve_ledger(state_dir: Path | None, ledger_url: str | None) -> tuple[Path, LedgerLocation]:
    """The state folder (batch locks, and the default ledger) and the ledger's location:
    --ledger / BATCHER_LEDGER, else batcher.toml's `ledger`, else SQLite in the state folder."""
    from batcher.ledger.location import LedgerLocation, parse_ledger_url

    folder = resolve_state_dir(state_dir)
    if ledger_url:
        return folder, parse_ledger_url(ledger_url)
    configured = file_config().get("ledger")
    if configured is None:
        return folder, LedgerLocation.in_state_dir(folder)
    if not isinstance(configured, str):
        raise ConfigError("batcher.toml: ledger must be a URL (a string)")
    return folder, parse_ledger_url(configured, where="batcher.toml: ledger")


def config_file() -> Path:
    """The batcher.toml in use: `batcher --config FILE`, else $BATCHER_CONFIG, else ./batcher.toml."""
    ctx = click.get_current_context(silent=True)
    given = ctx.find_root().params.get("config") if ctx is not None else None
    return Path(given) if given else config_path_from()


def file_config() -> dict[str, Any]:
    return load_file_config(config_file())


def read_limits() -> IntakeLimits:
    """The XLSX size limits, from batcher.toml's [intake] table when it has one."""
    return intake_limits(file_config().get("intake", {}))


def resolve_state_dir(given: Path | None) -> Path:
    """--state-dir / BATCHER_STATE_DIR, else batcher.toml's state_dir, else the XDG state dir."""
    from batcher.services import default_state_dir  # services imports polars: load lazily

    if given is not None:
        return given
    chosen = default_state_dir(file_config())
    legacy = Path(".batcher")
    # Before the XDG default, the ledger lived in ./.batcher; starting elsewhere would
    # silently begin from an empty ledger, so say where the old one is instead.
    if (legacy / "ledger.sqlite").exists() and legacy.resolve() != chosen.resolve():
        raise ConfigError(
            f"found a ledger in {legacy.absolute()} (the old default), but the state folder "
            f"is now {chosen}",
            hint=f"pass --state-dir {legacy} (or set BATCHER_STATE_DIR or state_dir in "
            f"batcher.toml), or move {legacy}/* to {chosen}",
        )
    return chosen


def log_format_option(func: F) -> F:
    return click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        envvar="BATCHER_LOG_FORMAT",
        default=None,
        help="Log lines on stderr: text (timestamp, level, batch, run id) or json (one "
        "object per line). Default: text without a TTY, a live display on a TTY.",
    )(func)


def report_dir_option(func: F) -> F:
    return click.option(
        "--report-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("reports"),
        show_default=True,
        help="Folder the reports are written under (REPORT_DIR/BATCH/...).",
    )(func)


#: --provider, --base-url, --state-dir, --ledger and --report-dir: the commands that check the
#: ledger against the provider and write a workbook (report, statement).
report_options = OptionGroup(provider_options, ledger_options, report_dir_option)


def json_option(func: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON on stdout (schema in docs/operator.md)."
    )(func)


def echo_json(value: Any, schema: str | None = None) -> None:
    """Print `value` as JSON; `schema` (e.g. "batcher.run/1") goes first when given."""
    if schema is not None:
        value = {"schema": schema, **value}
    echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def parse_mappings(mappings: Sequence[str]) -> dict[str, str]:
    """['amount=Card value', ...] -> {'amount': 'Card value'}; the sheet reader checks the rest.

    `validate` and `run` both parse --map here, so a mapping one accepts the other does too.
    """
    parsed: dict[str, str] = {}
    for item in mappings:
        name, sep, header = item.partition("=")
        if not sep or not name.strip() or not header.strip():
            raise UsageError(f"--map {item!r} is not FIELD=HEADER", hint="e.g. --map amount=Value")
        key, header = name.strip().lower(), header.strip()
        if key in parsed:
            raise UsageError(
                f"--map {key} is given twice ({parsed[key]!r} and {header!r})",
                hint="map each field once",
            )
        for other, taken in parsed.items():
            if taken == header:
                raise UsageError(
                    f"--map {other}={taken} and --map {key}={header} name the same column",
                    hint="map each column to one field; for identical headers use "
                    "HEADER#2 or the column letter, e.g. @C",
                )
        parsed[key] = header
    return parsed


def resolve_settings(provider: str, base_url: str | None) -> ProviderSettings:
    return provider_settings(provider, base_url=base_url, config_path=config_file())


def resolve_settings_for(
    provider: str, base_url: str | None, account: str | None
) -> ProviderSettings:
    """--account NAME: the named account of batcher.toml (its provider, URL and key
    variable); else the provider's own settings. A --provider given on the command line
    that is not the account's is refused rather than silently overridden."""
    if account is None:
        return resolve_settings(provider, base_url)
    settings = account_settings(account, base_url=base_url, config_path=config_file())
    ctx = click.get_current_context(silent=True)
    given = ctx.get_parameter_source("provider") if ctx is not None else None
    if given == click.core.ParameterSource.COMMANDLINE and provider.lower() != settings.provider:
        raise UsageError(
            f"--provider {provider} does not match account {account!r} ({settings.provider})",
            hint="leave out --provider: the account names its provider",
        )
    return settings


def provider_mode(
    payouts: bool, campaign: str | None, expires_in_days: int | None
) -> ProviderOptions:
    if not payouts:
        if campaign or expires_in_days:
            raise UsageError("--campaign and --expires-in-days go with --payouts")
        return ProviderOptions()
    if not campaign:
        raise UsageError("--payouts needs --campaign ID", hint="list campaigns with the provider")
    return ProviderOptions(
        mode="payouts", campaign_id=campaign, expires_in_days=expires_in_days or 30
    )
