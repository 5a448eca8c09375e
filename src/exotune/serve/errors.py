"""The one error type routes raise; the app turns it into a JSON answer."""

from __future__ import annotations


class ApiError(Exception):
    """An HTTP refusal: ``status``, a short machine-readable ``code`` and a message for people.

    Messages say what was wrong with the request; they never carry server internals.
    """

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after
