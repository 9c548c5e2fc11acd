"""One exception hierarchy for studypub.

Database errors that are nobody's fault (:class:`TransientError`) are translated once, where
SQLAlchemy raises them (``studypub.db``); the API maps these classes to HTTP statuses in one
place and the CLI turns them into one-line messages.
"""

from __future__ import annotations

from typing import Any


class StudypubError(Exception):
    """Base of every error studypub raises on purpose."""

    code = "error"

    def __init__(self, detail: Any = None) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return str(self.detail) if self.detail is not None else self.code


class InvalidInput(StudypubError):
    """The caller sent something that is not allowed; the message says what is."""

    code = "invalid_input"


class NotFound(StudypubError):
    """The entity does not exist (or is deleted)."""

    code = "not_found"


class Unauthorized(StudypubError):
    """The request does not say who makes it, or says it with a token that does not hold
    (missing, expired, forged, signed with another key)."""

    code = "unauthorized"


class Forbidden(StudypubError):
    """The caller is who it says, but may not do or see this (a learner's token asking for
    a kind it does not allow, or for the server's metrics)."""

    code = "forbidden"


class Conflict(StudypubError):
    """The request is well-formed but the current state refuses it (a duplicate, a rule
    between the request and what is stored): the same request may succeed in another state.
    Input wrong in itself is :class:`InvalidInput`."""

    code = "conflict"


class MissingReference(Conflict):
    """The body refers to a row that does not exist or is deleted: the request is
    well-formed, the current state refuses it (the same request succeeds once the row
    exists). Not a 404, which would say the URL is wrong."""

    code = "missing_reference"


class StaleVersion(StudypubError):
    """Optimistic concurrency: the caller's version is not the current one."""

    code = "stale_version"

    def __init__(self, detail: Any = None, *, current_version: int | None = None) -> None:
        super().__init__(detail)
        self.current_version = current_version


class ResetRequired(StudypubError):
    """A feed cursor is below the floor or from another epoch: restart from 0."""

    code = "reset_required"


class TransientError(StudypubError):
    """The database cannot serve the request now, and it is nobody's input that is wrong:
    the same request may succeed later. Never counted against an outbox row; HTTP answers
    503 with ``Retry-After: retry_after_s``."""

    code = "database_unavailable"
    retry_after_s = 1


class FeedUnavailable(TransientError):
    """An edge server cannot answer for the feed now: NATS is away, nothing was published
    to it yet, or the stream is still loading. Its detail is for clients (no address)."""

    code = "feed_unavailable"
    retry_after_s = 2


class DatabaseUnavailable(TransientError):
    """The database cannot be reached: refused or lost connection, shutting down or starting
    up, out of connections."""

    code = "database_unavailable"
    retry_after_s = 5


class DatabaseUnreachable(DatabaseUnavailable):
    """No connection could be made at all: the server is down, or the URL is wrong."""


class DatabaseBusy(TransientError):
    """The database gave up on the statement for a reason of the moment: a statement or lock
    timeout, a deadlock, a serialization failure, or (SQLite) a writer holding the lock."""

    code = "database_busy"
    retry_after_s = 1


class SchemaNotMigrated(StudypubError):
    """The database schema is missing or older than this code expects."""

    code = "schema_not_migrated"


class ReplicaError(StudypubError):
    """A replica cannot go on for a reason retrying will not fix: the feed refused it (auth,
    a bad URL), its file is unusable, or another process writes the same file."""

    code = "replica_error"


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (of the driver's error for a database error), for
    logs and one-line CLI errors: never a traceback, never a multi-line SQL echo."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__
