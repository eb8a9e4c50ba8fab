"""Errors a user can cause, each with the exit code the command line documents."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_VALIDATION_FAILED = 3
EXIT_NOT_VALIDATED = 4


class LbylError(Exception):
    """Base of the errors with a one-line message for the user."""

    exit_code = EXIT_INTERNAL


class UsageError(LbylError):
    """Bad options, unreadable or invalid input, unusable output path (exit 2)."""

    exit_code = EXIT_USAGE


class RewriteError(LbylError):
    """The rewritten model failed the ONNX checker: a bug in the tool (exit 1)."""

    exit_code = EXIT_INTERNAL


class ValidationFailed(LbylError):
    """The pruned model does not load, does not run, or changed its outputs' form (exit 3)."""

    exit_code = EXIT_VALIDATION_FAILED

    def __init__(self, message: str, report=None) -> None:
        super().__init__(message)
        self.report = report


def first_line(error: BaseException | None) -> str:
    """The first line of an error's message (at most 300 characters), else its type."""
    text = str(error).strip().splitlines() if error else []
    return text[0][:300] if text else type(error).__name__
