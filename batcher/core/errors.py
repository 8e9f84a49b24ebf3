"""The errors batcher raises, and the exit code each one means.

Two families, because they call for opposite reactions::

    Exception
    ├── BatcherError                 one clear line for the operator, and an exit code
    │   ├── UsageError               (2) a flag, a name or a mapping is wrong; nothing was sent
    │   ├── InputFileError           (2) the sheet cannot be read at all
    │   ├── ConfigError              (4) settings, files or folders; nothing was sent
    │   │   ├── ledger.LedgerDamaged     the ledger fails its integrity check: restore it
    │   │   └── ledger.LedgerDiskFull    SQLite could not commit: the disk is full
    │   ├── ProviderUnavailable      (4) the provider cannot be reached (GET retries spent)
    │   │   └── AuthError            (4) the provider refused the key
    │   └── BatchLocked              (4) another run holds the batch
    └── OutcomeUnknown               a POST may or may not have been acted on: the only
        └── providers.IncompleteResult   safe next step is the same key and the same bytes

A `BatcherError` stops the command; its message never holds a secret. An
`OutcomeUnknown` never reaches the operator as such: the runner records the chunk
as `unknown` and resolves it by a lookup or a byte-identical resend. No raw
transport error (httpx) leaves `batcher.transport`: it becomes one of these.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    SOME_FAILED = 1
    USAGE = 2  # usage or validation error; nothing was sent
    INCOMPLETE = 3  # deadline, interrupt or funds ran out; rerun to continue
    CANNOT_START = 4  # auth, configuration, connectivity, or the batch is locked
    HELD = 5  # finished, but rows are held as possible duplicates: a person decides


class BatcherError(Exception):
    """An error with a message fit for the operator and the exit code it implies.

    The message must never contain a secret: callers build it from facts they
    choose, never from a raw exception or request.
    """

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(BatcherError):
    exit_code = ExitCode.USAGE


class InputFileError(BatcherError):
    """A sheet that cannot be read at all (wrong format, empty, no header...)."""

    exit_code = ExitCode.USAGE


class ConfigError(BatcherError):
    exit_code = ExitCode.CANNOT_START


class ProviderUnavailable(BatcherError):
    """The provider cannot be reached, or refused our credentials."""

    exit_code = ExitCode.CANNOT_START


class AuthError(ProviderUnavailable):
    pass


class BatchLocked(BatcherError):
    exit_code = ExitCode.CANNOT_START


class OutcomeUnknown(Exception):
    """The request may or may not have been acted on (timeout, reset, 5xx, 409).

    The only safe next step is to resend the same key with the same bytes.
    `reason` is safe to log: it never contains a key or a payload.
    """

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
