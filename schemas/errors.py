"""Error codes carried on the wire and the exception tree that mirrors them.

Every failure a caller can see has a code here. Workers and the coordinator
put the code in replies; the client raises the matching :class:`ForgeError`
subclass. Nothing else (no nats-py or wasmtime exception) reaches a caller.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    PLUGIN_NOT_FOUND = "PLUGIN_NOT_FOUND"
    FUNCTION_NOT_FOUND = "FUNCTION_NOT_FOUND"
    NO_WORKERS = "NO_WORKERS"
    TIMEOUT = "TIMEOUT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    TRAP = "TRAP"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PLUGIN_ERROR = "PLUGIN_ERROR"
    REJECTED = "REJECTED"
    INPUT_TOO_LARGE = "INPUT_TOO_LARGE"
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
    OVERLOADED = "OVERLOADED"
    DENIED = "DENIED"
    PACKAGE_REJECTED = "PACKAGE_REJECTED"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class ForgeError(Exception):
    """Base of every error ForgeOne raises to its users."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}" if self.message else self.code.value


class BadRequest(ForgeError):
    """The request was malformed, oversized in a field, or failed validation."""

    code = ErrorCode.BAD_REQUEST


class PluginNotFound(ForgeError):
    """No deployment exists for the plugin (or the pinned version)."""

    code = ErrorCode.PLUGIN_NOT_FOUND


class FunctionNotFound(ForgeError):
    """The plugin's manifest does not export the function."""

    code = ErrorCode.FUNCTION_NOT_FOUND


class NoWorkers(ForgeError):
    """The plugin is deployed but no worker currently serves it."""

    code = ErrorCode.NO_WORKERS


class Timeout(ForgeError):
    """The call did not finish within its deadline."""

    code = ErrorCode.TIMEOUT


class DeadlineExceeded(ForgeError):
    """The deadline had passed before the call or job could start."""

    code = ErrorCode.DEADLINE_EXCEEDED


class Trap(ForgeError):
    """The guest trapped (unreachable, bad memory access, stack overflow, bad output)."""

    code = ErrorCode.TRAP


class OutOfMemory(ForgeError):
    """The guest reached its memory ceiling."""

    code = ErrorCode.OUT_OF_MEMORY


class PluginError(ForgeError):
    """The guest reported an error of its own (``set_error``)."""

    code = ErrorCode.PLUGIN_ERROR


class Rejected(ForgeError):
    """The guest rejected its input for good (``reject``): retrying cannot help."""

    code = ErrorCode.REJECTED


class InputTooLarge(ForgeError):
    """The input exceeds the plugin's or the worker's size cap."""

    code = ErrorCode.INPUT_TOO_LARGE


class OutputTooLarge(ForgeError):
    """The guest produced more output than its cap allows."""

    code = ErrorCode.OUTPUT_TOO_LARGE


class Overloaded(ForgeError):
    """The worker's bounded queue for the plugin is full; retry later."""

    code = ErrorCode.OVERLOADED


class Denied(ForgeError):
    """A permission was not granted, or the caller may not do this."""

    code = ErrorCode.DENIED


class PackageRejected(ForgeError):
    """A plugin package failed verification; the message says why."""

    code = ErrorCode.PACKAGE_REJECTED


class NotFound(ForgeError):
    """A named object (job, key, worker) does not exist."""

    code = ErrorCode.NOT_FOUND


class Unavailable(ForgeError):
    """A service needed for the request (NATS, the coordinator) cannot be reached."""

    code = ErrorCode.UNAVAILABLE


class InternalError(ForgeError):
    """An unexpected failure inside ForgeOne; the message has details."""

    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[ForgeError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        PluginNotFound,
        FunctionNotFound,
        NoWorkers,
        Timeout,
        DeadlineExceeded,
        Trap,
        OutOfMemory,
        PluginError,
        Rejected,
        InputTooLarge,
        OutputTooLarge,
        Overloaded,
        Denied,
        PackageRejected,
        NotFound,
        Unavailable,
        InternalError,
    )
}


def error_for(code: ErrorCode | str, message: str = "") -> ForgeError:
    """The exception for a wire error code (unknown codes become INTERNAL)."""
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except ValueError:
        return InternalError(f"unknown error code {code!r}: {message}")
    return cls(message)
