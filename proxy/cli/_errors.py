"""What can go wrong for a CLI user: one exception per kind, each shown as one line."""

from __future__ import annotations

import click


class CliError(click.ClickException):
    """A one-line error for the user; exit code 1."""


class ApiError(CliError):
    """The gateway answered with an error status."""

    def __init__(self, message: str, status: int, code: str | None = None) -> None:
        detail = f"{status} {code}" if code else f"HTTP {status}"
        super().__init__(f"{message} ({detail})")
        self.reason = message
        self.status = status
        self.code = code
