"""The one error type of the HTTP API: a status, a short machine-readable code and a message.

Every error the server answers has the JSON body ``{"detail": MESSAGE, "error": CODE}``:
FastAPI's own ``detail`` key (so generic clients show the message) plus a stable code that
programs can branch on.
"""

from __future__ import annotations


class ServeError(Exception):
    """An error answered as ``status`` with ``{"detail": message, "error": code}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, str]:
        return {"detail": self.message, "error": self.code}
