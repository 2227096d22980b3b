"""The one error hierarchy of the gateway; each error knows its HTTP status, gRPC code and parameter.

PromptwireError
 ├── InvalidRequest             400 INVALID_ARGUMENT   (bad or unknown parameter; `param` names it)
 │    ├── PromptTooLarge        400 INVALID_ARGUMENT   (prompt over the configured size limit)
 │    └── OptionNotAllowed      400 INVALID_ARGUMENT   (a stage/decoder option the operator forbids)
 ├── AuthenticationError        401 UNAUTHENTICATED
 ├── PermissionDenied           403 PERMISSION_DENIED  (key not allowed this model / stage)
 │    └── ConjugateNotAllowed   403 PERMISSION_DENIED  (key not granted this conjugate transform)
 ├── NotFound                   404 NOT_FOUND          (unknown model)
 ├── BodyTooLarge               413 INVALID_ARGUMENT
 ├── Overloaded                 429 RESOURCE_EXHAUSTED (too many in-flight requests; carries retry_after)
 ├── RequestTimeout             504 DEADLINE_EXCEEDED
 ├── NoBackend                  503 UNAVAILABLE        (model known but no provider can serve it)
 ├── ShuttingDown               503 UNAVAILABLE
 ├── AuditUnavailable           503 UNAVAILABLE        (the conjugate audit line cannot be written)
 ├── TranslatorFailed           503 UNAVAILABLE        (the conjugate translator failed at run time)
 └── UpstreamError              502 UNAVAILABLE        (upstream failed; wraps HTTP / transport errors)
      └── UpstreamStatusError   upstream's 4xx passed through with its status; 5xx → 502
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "AuditUnavailable",
    "AuthenticationError",
    "BodyTooLarge",
    "ConjugateNotAllowed",
    "InvalidRequest",
    "NoBackend",
    "NotFound",
    "OptionNotAllowed",
    "Overloaded",
    "PermissionDenied",
    "PromptTooLarge",
    "PromptwireError",
    "RequestTimeout",
    "ShuttingDown",
    "TranslatorFailed",
    "UpstreamError",
    "UpstreamStatusError",
]


class PromptwireError(Exception):
    """Base of every error the gateway reports to a client."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    error_type: str = "server_error"  # OpenAI's error.type
    code: str | None = None  # OpenAI's error.code

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        """The gateway's own words: what clients see and what the logs say."""
        self.param = param
        if code is not None:
            self.code = code
        self.detail = detail
        """Text from a third party (an upstream's own error message): added to what the client sees, never
        logged, because it may quote the request (validating servers echo the input, prompt included)."""

    @property
    def client_message(self) -> str:
        """The message the client gets: the gateway's, then the upstream's detail when there is one."""
        return f"{self.message}: {self.detail}" if self.detail else self.message

    @property
    def label(self) -> str:
        """The error's name in metrics and log fields: its OpenAI code, else its type."""
        return str(self.code or self.error_type)

    def to_openai(self) -> dict[str, Any]:
        """The body OpenAI's API returns for an error."""
        return {
            "error": {
                "message": self.client_message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(PromptwireError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    error_type = "invalid_request_error"


class PromptTooLarge(InvalidRequest):
    code = "prompt_too_large"


class OptionNotAllowed(InvalidRequest):
    code = "option_not_allowed"


class AuthenticationError(PromptwireError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(PromptwireError):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    error_type = "permission_error"


class ConjugateNotAllowed(PermissionDenied):
    code = "conjugate_not_allowed"


class NotFound(PromptwireError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    error_type = "invalid_request_error"
    code = "model_not_found"


class BodyTooLarge(PromptwireError):
    http_status = 413
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    error_type = "invalid_request_error"
    code = "body_too_large"


class Overloaded(PromptwireError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error_type = "rate_limit_error"
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: float = 1.0, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


class RequestTimeout(PromptwireError):
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    error_type = "timeout_error"
    code = "timeout"


class NoBackend(PromptwireError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    error_type = "server_error"
    code = "no_backend"


class ShuttingDown(PromptwireError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    error_type = "server_error"
    code = "shutting_down"


class AuditUnavailable(PromptwireError):
    """The conjugate audit line could not be written and synced: the answer is withheld."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    error_type = "server_error"
    code = "audit_unavailable"


class TranslatorFailed(PromptwireError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    error_type = "server_error"
    code = "translator_failed"


class UpstreamError(PromptwireError):
    http_status = 502
    grpc_code = grpc.StatusCode.UNAVAILABLE
    error_type = "upstream_error"
    code: str | None = "upstream_error"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status; 4xx keep their status and body."""

    def __init__(
        self, status: int, message: str, *, body: dict[str, Any] | None = None, retry_after: float | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, detail=detail)
        self.upstream_status = status
        self.body = body
        self.retry_after = retry_after  # the upstream's Retry-After (429 / 503), passed on to the client
        if 400 <= status < 500:
            self.http_status = status
            self.grpc_code = _GRPC_FOR_4XX.get(status, grpc.StatusCode.INVALID_ARGUMENT)
            self.error_type = "invalid_request_error"
            self.code = None
            if status == 429:
                self.error_type = "rate_limit_error"

    def to_openai(self) -> dict[str, Any]:
        if self.body and isinstance(self.body.get("error"), dict) and 400 <= self.upstream_status < 500:
            return self.body
        return super().to_openai()


_GRPC_FOR_4XX = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
