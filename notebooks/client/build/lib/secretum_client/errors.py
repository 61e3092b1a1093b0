"""Exceptions mapping the API's error codes (``{"error": {"code", "message", "rule"}}``)."""

from __future__ import annotations

from typing import Optional


class SecretumError(Exception):
    """Any error answer from the server."""

    def __init__(self, status: int, code: str, message: str, rule: Optional[str] = None) -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.rule = rule


class Malformed(SecretumError):
    """400: the request itself is wrong (a field, a value, JSON)."""


class Unauthorized(SecretumError):
    """401: no token, or a bad or revoked one."""


class Forbidden(SecretumError):
    """403: the account's role may not do this."""


class NotFound(SecretumError):
    """404: no such project, or not one you belong to."""


class Conflict(SecretumError):
    """409: the project's state does not allow this."""


class ProjectNotActive(Conflict):
    """409: the project is pending, suspended, expired, rejected or closed."""


class BudgetExhausted(Conflict):
    """409: the project's budget (or the warehouse-wide per-patient cap) cannot pay for this."""


class PayloadTooLarge(SecretumError):
    """413: the request body is over the server's limit."""


class SqlRefused(SecretumError):
    """422: the privacy rules refused the SQL; ``rule`` names the rule."""


class RateLimited(SecretumError):
    """429: too many requests, even after retrying."""


class ServerError(SecretumError):
    """5xx: the server failed (a query that failed after its debit stays charged)."""


_BY_CODE = {
    "malformed": Malformed,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "project_not_active": ProjectNotActive,
    "budget_exhausted": BudgetExhausted,
    "payload_too_large": PayloadTooLarge,
    "sql_refused": SqlRefused,
    "rate_limited": RateLimited,
}


def error_for(status: int, body: object) -> SecretumError:
    """The exception for an error answer."""
    code, message, rule = "error", "", None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code", code))
        message = str(err.get("message", ""))
        rule = err.get("rule")
    elif isinstance(body, str):
        message = body[:500]
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = ServerError if status >= 500 else SecretumError
    return cls(status, code, message, rule)
