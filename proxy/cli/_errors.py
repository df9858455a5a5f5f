"""What can go wrong for a CLI user: one exception per kind, each shown as one line.

CliError                     anything the user must fix or know (exit 1)
└── ApiError                 the gateway answered with an error status
    ├── CredentialRejected   401: the API key or service token is wrong, expired or revoked
    └── PermissionDenied     403: a valid credential whose policy does not allow this
"""

from __future__ import annotations

import click


class CliError(click.ClickException):
    """A one-line error for the user; exit code 1."""


class ApiError(CliError):
    """The gateway answered with an error status."""

    def __init__(self, message: str, status: int, code: str | None = None) -> None:
        self.reason = message
        self.status = status
        self.code = code
        super().__init__(self.describe())

    def describe(self) -> str:
        """The line shown to the user."""
        detail = f"{self.status} {self.code}" if self.code else f"HTTP {self.status}"
        return f"{self.reason} ({detail})"


class CredentialRejected(ApiError):
    """401: the gateway does not accept the credential (wrong, expired or revoked)."""

    def __init__(
        self, message: str, status: int, code: str | None = None, key_origin: str | None = None
    ) -> None:
        self.key_origin = key_origin
        super().__init__(message, status, code)

    def describe(self) -> str:
        # The gateway's message tells an HTTP client which header to send; a CLI user needs to know
        # which credential failed ($JUNCTION_API_KEY overrides a login) and how to get one that works.
        return (
            f"{self.key_origin or 'the credential'} is invalid, expired or revoked ({self.status} {self.code or 'unauthorized'}); "
            "use a valid API key, or mint a new service token with `junction auth token`"
        )


class PermissionDenied(ApiError):
    """403: the credential is valid, but its policy does not allow this request."""

    def describe(self) -> str:
        return f"permission denied: {self.reason}"
