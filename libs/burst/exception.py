"""Burst's errors. Class names follow Modal's, so ``except modal.exception.X`` ports over.

Every error the API can return has a *type* (the category a caller can act on) and one
HTTP status. One table (``_TABLE``) holds both; :data:`ERROR_TYPES` (type to status and
class, the SDK raises with it) and :data:`STATUS_TYPES` (status to type, the gateway
answers with it) are derived from it. The type names are the wire contract: never rename
one.
"""

from __future__ import annotations

import builtins


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


class DeadlockError(Error):
    """A call from inside a container that could never start: every input slot of its
    function (``max_containers`` × inputs per container) is held by its own ancestors,
    which wait for it."""

    type = "Deadlock"


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


#: The one table of error types: each class (whose ``type`` is the name on the wire) with
#: the HTTP status it is answered with, and other statuses that mean it when the web
#: framework answers for the gateway (a wrong method, an unsupported body, a body FastAPI
#: cannot validate). Where several types share a status, the first row is the one a bare
#: status means. Everything below is derived from it.
_TABLE: tuple[tuple[type[Error], int, tuple[int, ...]], ...] = (
    (InvalidError, 400, (405, 415, 422)),
    (AuthError, 401, ()),
    (BudgetExceededError, 402, ()),
    (PermissionDeniedError, 403, ()),
    (NotFoundError, 404, ()),
    (ConflictError, 409, ()),
    (PayloadTooLargeError, 413, ()),
    (IdempotencyKeyReusedError, 422, ()),
    (ResourceExhaustedError, 429, ()),
    (InternalError, 500, ()),
    (UnavailableError, 503, ()),
    (RemoteError, 500, ()),
    (ExecutionError, 500, ()),
    (FunctionTimeoutError, 504, ()),
    (InputCancellation, 409, ()),
    (DeadlockError, 409, ()),
)

#: type -> (HTTP status, exception class)
ERROR_TYPES: dict[str, tuple[int, type[Error]]] = {cls.type: (status, cls)
                                                   for cls, status, _ in _TABLE}


def _status_types() -> dict[int, str]:
    out: dict[int, str] = {}
    for cls, status, _ in _TABLE:
        out.setdefault(status, cls.type)
    for cls, _, also in _TABLE:
        out.update((s, cls.type) for s in also)
    return out


#: HTTP status -> the error type a bare status (one the web framework answered) means.
STATUS_TYPES: dict[int, str] = _status_types()


def status_of(type_: str) -> int:
    """The HTTP status an error of ``type_`` is answered with (500 for a type not in the
    table)."""
    entry = ERROR_TYPES.get(type_)
    return 500 if entry is None else entry[0]


def type_of_status(status: int) -> str:
    """The error type an HTTP error with ``status`` and no type of its own is answered as
    (``Internal`` for a status not in the table)."""
    return STATUS_TYPES.get(status, InternalError.type)


def from_api(type_: str, message: str) -> Error:
    """The exception for an API error body ``{"error": {"type", "message"}}``."""
    cls = ERROR_TYPES.get(type_, (500, Error))[1]
    return cls(message)


#: Modal's ``modal.exception.TimeoutError``: here Python's own, which a timed-out call
#: (:class:`FunctionTimeoutError`) and a ``FunctionCall.get(timeout=)`` that ran out
#: both raise, so ``except modal.exception.TimeoutError`` catches what it does in Modal.
TimeoutError = builtins.TimeoutError  # noqa: A001 - Modal's name
