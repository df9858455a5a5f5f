"""One exception tree for the whole gateway.

    JunctionError                 code            HTTP
    ├── ConfigError               config_error    500
    ├── BadRequest                bad_request     400
    │   ├── ValidationFailed      validation_error
    │   ├── InvalidJSON           invalid_json
    │   └── OAuthError            (RFC 6749's code: invalid_grant, invalid_client, ...) 400/401
    ├── PayloadTooLarge           payload_too_large 413
    ├── Unauthorized              unauthorized    401
    ├── Forbidden                 forbidden       403
    │   └── ForbiddenOrigin       forbidden_origin (an Origin header not allowed)
    ├── NotFound                  not_found       404
    ├── MethodNotAllowed          method_not_allowed 405
    ├── Conflict                  conflict        409
    ├── HeadersTooLarge           headers_too_large 431
    ├── ToolError                 tool_error      422
    ├── AuthRequired              auth_required   401 (JSON-RPC -32001: the user must authorize)
    ├── InputRequired             input_required  409 (JSON-RPC -32002: configuration is missing)
    └── UpstreamError             upstream_error  502
        ├── UpstreamTimeout       upstream_timeout 504
        ├── UpstreamUnavailable   upstream_unavailable 502
        └── UpstreamRefused       upstream_refused 400 (SSRF policy)

Each error maps once to an HTTP body `{error, message}` and to a JSON-RPC error.
Messages never contain credentials.
"""

from __future__ import annotations

from typing import Any, ClassVar


class JunctionError(Exception):
    """Base of every error the gateway raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    jsonrpc_code: ClassVar[int] = -32603

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, data: Any = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.data = data

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}


class ConfigError(JunctionError):
    code = "config_error"


class BadRequest(JunctionError):
    code = "bad_request"
    status = 400
    jsonrpc_code = -32602


class ValidationFailed(BadRequest):
    code = "validation_error"


class InvalidJSON(BadRequest):
    code = "invalid_json"
    jsonrpc_code = -32700


class OAuthError(BadRequest):
    """An error of the OAuth endpoints, in RFC 6749's shape (`error`, `error_description`; our
    `message` too): `error` is the RFC's code, such as invalid_grant or invalid_client."""

    code = "oauth_error"

    def __init__(self, error: str, message: str, *, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message, headers=headers)
        self.error = error
        self.status = status  # type: ignore[misc]

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.message, "message": self.message}


class PayloadTooLarge(JunctionError):
    code = "payload_too_large"
    status = 413
    jsonrpc_code = -32600


class Unauthorized(JunctionError):
    code = "unauthorized"
    status = 401
    jsonrpc_code = -32001


class Forbidden(JunctionError):
    code = "forbidden"
    status = 403
    jsonrpc_code = -32001


class ForbiddenOrigin(Forbidden):
    """A request carrying an `Origin` the gateway does not allow (the MCP DNS-rebinding rule)."""

    code = "forbidden_origin"


class NotFound(JunctionError):
    code = "not_found"
    status = 404
    jsonrpc_code = -32602

    @classmethod
    def connection(cls, namespace: str | None, connection_id: str | None) -> NotFound:
        """The one message for a connection that is missing, or hidden from the caller."""
        if connection_id is None:
            return cls("connection not found")
        return cls(f"connection {connection_id!r} not found in namespace {namespace!r}")


class MethodNotAllowed(JunctionError):
    code = "method_not_allowed"
    status = 405
    jsonrpc_code = -32600


class Conflict(JunctionError):
    code = "conflict"
    status = 409
    jsonrpc_code = -32600

    def __init__(self, message: str, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.headers.setdefault("x-should-retry", "false")


class HeadersTooLarge(JunctionError):
    code = "headers_too_large"
    status = 431
    jsonrpc_code = -32600


class ToolError(JunctionError):
    code = "tool_error"
    status = 422


class AuthRequired(JunctionError):
    """A connection's upstream needs the user to authorize the gateway (its OAuth tokens are
    missing, refused, or lack a scope). `status` is the connection status, with the `setupUrl`."""

    code = "auth_required"
    status = 401
    jsonrpc_code = -32001

    def __init__(self, status: dict[str, Any], message: str = ""):
        url = status.get("setupUrl")
        super().__init__(
            message or f"the connection needs authorization: send its user to {url}",
            data={"authorizationUrl": url, "setupUrl": url},
        )
        self.connection_status = status
        self.headers["x-should-retry"] = "false"

    def body(self) -> dict[str, Any]:
        return {**super().body(), "setupUrl": self.connection_status.get("setupUrl")}


class InputRequired(JunctionError):
    """A connection's server needs configuration it was not given (`status` says which fields)."""

    code = "input_required"
    status = 409
    jsonrpc_code = -32002

    def __init__(self, status: dict[str, Any]):
        missing = status.get("missing", {})
        names = [*missing.get("headers", []), *missing.get("query", [])]
        super().__init__(
            f"the connection needs configuration: {', '.join(names) or 'see setupUrl'}",
            data={k: status[k] for k in ("http", "missing", "setupUrl") if k in status},
        )
        self.connection_status = status
        self.headers["x-should-retry"] = "false"

    def body(self) -> dict[str, Any]:
        return {**super().body(), **self.data}


class UpstreamError(JunctionError):
    code = "upstream_error"
    status = 502
    jsonrpc_code = -32603


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"
    status = 504


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamRefused(UpstreamError):
    code = "upstream_refused"
    status = 400
    jsonrpc_code = -32602
