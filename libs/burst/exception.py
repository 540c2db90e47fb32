"""Burst's errors. Class names follow Modal's, so ``except modal.exception.X`` ports over.

Every error the API can return has a *type* (the category a caller can act on) and one
HTTP status; :data:`ERROR_TYPES` is the single table from type to status and class, used
by the gateway to answer and by the SDK to raise.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every Burst error."""

    #: API error type (see ERROR_TYPES); subclasses override.
    type: str = "Internal"
    #: Whether retrying the same request later may succeed.
    retryable: bool = False


class InvalidError(Error):
    """The request or definition is invalid; the message names the bad value."""

    type = "InvalidInput"


class NotFoundError(Error):
    type = "NotFound"


class AuthError(Error):
    """Missing or wrong token, or a token without the needed permission."""

    type = "Unauthenticated"


class PermissionDeniedError(AuthError):
    type = "PermissionDenied"


class ConflictError(Error):
    type = "Conflict"


class ResourceExhaustedError(Error):
    type = "ResourceExhausted"
    retryable = True


class BudgetExceededError(ResourceExhaustedError):
    type = "BudgetExceeded"
    retryable = False


class PayloadTooLargeError(InvalidError):
    type = "PayloadTooLarge"


class IdempotencyKeyReusedError(InvalidError):
    """An ``Idempotency-Key`` sent again with a different request than the one it was
    first used for (another body); the message names the key."""

    type = "IdempotencyKeyReused"


class UnavailableError(Error):
    """The cluster (or a part of it) is not reachable right now."""

    type = "Unavailable"
    retryable = True


class InternalError(Error):
    type = "Internal"


class RemoteError(Error):
    """A remote exception whose class could not be recreated in the caller."""

    type = "RemoteError"


class ExecutionError(Error):
    """The function's container failed while running the call (crash, out of memory)."""

    type = "ExecutionError"


class InputCancellation(Error):
    """The call was cancelled before it finished."""

    type = "Cancelled"


class FunctionTimeoutError(TimeoutError, Error):
    """The call's last attempt ran past the function's timeout."""

    type = "FunctionTimeout"


#: type -> (HTTP status, exception class)
ERROR_TYPES: dict[str, tuple[int, type[Error]]] = {
    "InvalidInput": (400, InvalidError),
    "Unauthenticated": (401, AuthError),
    "BudgetExceeded": (402, BudgetExceededError),
    "PermissionDenied": (403, PermissionDeniedError),
    "NotFound": (404, NotFoundError),
    "Conflict": (409, ConflictError),
    "PayloadTooLarge": (413, PayloadTooLargeError),
    "IdempotencyKeyReused": (422, IdempotencyKeyReusedError),
    "ResourceExhausted": (429, ResourceExhaustedError),
    "Internal": (500, InternalError),
    "Unavailable": (503, UnavailableError),
    "RemoteError": (500, RemoteError),
    "ExecutionError": (500, ExecutionError),
    "FunctionTimeout": (504, FunctionTimeoutError),
    "Cancelled": (409, InputCancellation),
}


def from_api(type_: str, message: str) -> Error:
    """The exception for an API error body ``{"error": {"type", "message"}}``."""
    cls = ERROR_TYPES.get(type_, (500, Error))[1]
    return cls(message)
