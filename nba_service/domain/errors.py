"""The data plane's errors: what a caller did wrong or what could not be done.

Plain domain exceptions (no gRPC or HTTP codes); the API maps each to a status
code in one table (``nba_service.api.errors``)::

    ValueError
     └── ValidationError         a request field the service refuses (nba_service.domain.validation)
    LookupError
     └── NotFoundError           an unknown or expired decision
    RuntimeError
     ├── NoPolicyError           nothing published yet
     └── StoreUnavailableError   Redis could not be reached; nothing was written
"""

from __future__ import annotations

__all__ = ["NoPolicyError", "NotFoundError", "StoreUnavailableError"]


class NotFoundError(LookupError):
    """The thing asked for does not exist (or has expired)."""


class NoPolicyError(RuntimeError):
    """No policy set has been published yet."""


class StoreUnavailableError(RuntimeError):
    """Redis could not be reached; nothing was written."""
