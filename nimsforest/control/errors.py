"""What the control plane refuses, each with one sentence and the HTTP status that fits.

    ControlError (400)              a request the control plane cannot take
    ├── Invalid (422)               a bad name, spec, script, prompt or subject
    ├── NotFound (404)              no such component
    ├── Conflict (409)              already exists, lost a race, file/API name clash
    ├── TooLarge (413)              a request body or component over the size limit
    ├── Unauthorized (401)          a token is required and was missing or wrong
    ├── RateLimited (429)           too many changes from one client; retry_after seconds
    └── Unavailable (503)           JetStream or the desired-state bucket cannot be reached

Nothing is changed when one of these is raised.
"""

from __future__ import annotations


class ControlError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(ControlError):
    status = 422


class NotFound(ControlError):
    status = 404


class Conflict(ControlError):
    status = 409


class TooLarge(ControlError):
    status = 413


class Unauthorized(ControlError):
    status = 401


class RateLimited(ControlError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ControlError):
    status = 503


__all__ = [
    "Conflict",
    "ControlError",
    "Invalid",
    "NotFound",
    "RateLimited",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
]
