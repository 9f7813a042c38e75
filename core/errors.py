"""Errors that Depot expects and reports to clients.

Every error a client may see on purpose is a :class:`DepotError`; its ``code``
travels to GraphQL clients as ``extensions.code``. Anything else that escapes a
resolver is a bug: it is logged with its traceback and masked as
``INTERNAL_SERVER_ERROR``.

    DepotError                 base class; never raised directly
    ├── Unauthenticated        no valid credentials were presented
    ├── Forbidden              signed in, but not allowed to do this
    │   └── EmailNotVerified   not until the account's address is verified
    ├── NotFound               no such object, or it belongs to someone else
    ├── BadUserInput           an argument is invalid; ``field`` names it
    ├── BadRequest             the request itself is malformed or did not arrive whole
    │   ├── RequestTimeout     its body stopped arriving (HTTP 408)
    │   └── PayloadTooLarge    it, or a part of it, is over a size or count limit (413)
    ├── Conflict               the change clashes with existing state
    ├── QuotaExceeded          the change would exceed a storage quota
    ├── RateLimited            too many attempts; ``retry_after`` says when to retry
    ├── Unavailable            a shared resource stayed busy (SQLite's lock); nothing was changed
    └── FeatureDisabled        this installation has the feature switched off (no mail server)
"""

from __future__ import annotations

from typing import ClassVar


class DepotError(Exception):
    """Base class of every error that Depot reports to its clients on purpose."""

    code: ClassVar[str] = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def extensions(self) -> dict[str, object]:
        """What goes into the GraphQL error's ``extensions``."""
        return {"code": self.code}


class Unauthenticated(DepotError):
    """Raised when an operation needs a signed-in user and none is known."""

    code = "UNAUTHENTICATED"


class Forbidden(DepotError):
    """Raised when the signed-in user may not perform the operation."""

    code = "FORBIDDEN"


class EmailNotVerified(Forbidden):
    """Raised when an unverified account uploads or starts a job where that needs a verified
    address (``DEPOT_UNVERIFIED_MAY_UPLOAD``)."""

    code = "EMAIL_NOT_VERIFIED"


class NotFound(DepotError):
    """Raised for a missing object, and for another user's object alike."""

    code = "NOT_FOUND"


class BadUserInput(DepotError):
    """Raised when an argument is invalid; ``field`` names the argument."""

    code = "BAD_USER_INPUT"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def extensions(self) -> dict[str, object]:
        extensions = super().extensions()
        if self.field is not None:
            extensions["field"] = self.field
        return extensions


class BadRequest(DepotError):
    """Raised when the request itself was malformed or did not arrive whole (multipart)."""

    code = "BAD_REQUEST"


class RequestTimeout(BadRequest):
    """Raised when a request body stopped arriving before it was whole (HTTP 408)."""

    code = "REQUEST_TIMEOUT"


class PayloadTooLarge(BadRequest):
    """Raised when a request, or a part of it, is over its size or count limit (HTTP 413)."""

    code = "PAYLOAD_TOO_LARGE"


class Conflict(DepotError):
    """Raised when a change clashes with existing state (a taken email or path)."""

    code = "CONFLICT"


class QuotaExceeded(DepotError):
    """Raised when a change would take a user over their storage quota."""

    code = "QUOTA_EXCEEDED"


class RateLimited(DepotError):
    """Raised when a client made too many attempts; retry after ``retry_after`` s."""

    code = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def extensions(self) -> dict[str, object]:
        return {**super().extensions(), "retryAfter": self.retry_after}


class Unavailable(DepotError):
    """Raised when the change could not be made for now (the database stayed locked by other
    writers) and nothing of it was kept; try again after ``retry_after`` s."""

    code = "SERVICE_UNAVAILABLE"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def extensions(self) -> dict[str, object]:
        return {**super().extensions(), "retryAfter": self.retry_after}


class FeatureDisabled(DepotError):
    """Raised by a feature this installation cannot offer, such as mail without an SMTP server."""

    code = "FEATURE_DISABLED"
