"""The two exceptions a front door has to know: a user-facing problem, and a user's cancel."""
from __future__ import annotations


class SegXAIError(Exception):
    """A problem with the user's input or setup, worded as one line that says what to do.

    Front doors (CLI, Slicer module) print ``str(err)`` and exit non-zero; they never show a traceback.
    """


class Cancelled(SegXAIError):
    """The user asked to stop; raised between sliding windows or training steps."""

    def __init__(self, message: str = "cancelled by the user") -> None:
        super().__init__(message)
