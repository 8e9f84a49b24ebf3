"""Errors that reach the operator as one clear line and a defined exit code."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    SOME_FAILED = 1
    USAGE = 2  # usage or validation error; nothing was sent
    INCOMPLETE = 3  # deadline, interrupt or funds ran out; rerun to continue
    CANNOT_START = 4  # auth, configuration, connectivity, or the batch is locked


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
