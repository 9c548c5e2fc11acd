"""One exception hierarchy for studypub.

Database errors are translated at the store boundary; the API maps these classes to HTTP
statuses in one place and the CLI turns them into one-line messages.
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


class Conflict(StudypubError):
    """The request conflicts with the current state (e.g. a duplicate)."""

    code = "conflict"


class StaleVersion(StudypubError):
    """Optimistic concurrency: the caller's version is not the current one."""

    code = "stale_version"

    def __init__(self, detail: Any = None, *, current_version: int | None = None) -> None:
        super().__init__(detail)
        self.current_version = current_version


class ResetRequired(StudypubError):
    """A feed cursor is below the floor or from another epoch: restart from 0."""

    code = "reset_required"


class DatabaseUnavailable(StudypubError):
    """The database cannot be reached."""

    code = "database_unavailable"


class SchemaNotMigrated(StudypubError):
    """The database schema is missing or older than this code expects."""

    code = "schema_not_migrated"
