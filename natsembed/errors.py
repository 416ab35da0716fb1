"""Errors raised by natsembed.

    NatsEmbedError
    ├── NatsBinaryNotFound     no usable nats-server executable
    ├── ConfigInvalid          a rendered config was refused by `nats-server -t`
    ├── StartFailed            nats-server exited or never became ready while starting
    ├── ReloadRejected         nats-server kept its old config after SIGHUP
    ├── NotReady               an operation needs a ready server (reload before ready, ...)
    ├── SystemRequestFailed    a $JS.API / $SYS request returned an error
    │   └── SystemRequestUnanswered   ... or got no answer in time
    └── MonitorUnavailable     a monitoring endpoint did not answer, or not with 2xx JSON
"""

from __future__ import annotations


class NatsEmbedError(Exception):
    """Base class of every natsembed error; the message is one plain sentence."""


class NatsBinaryNotFound(NatsEmbedError):
    pass


class ConfigInvalid(NatsEmbedError):
    pass


class StartFailed(NatsEmbedError):
    def __init__(
        self, message: str, process: str | None = None, port_in_use: int | None = None
    ) -> None:
        super().__init__(message)
        self.process = process  # the nats-server that failed, when one did
        self.port_in_use = port_in_use  # the port it could not listen on, when that was why


class ReloadRejected(NatsEmbedError):
    pass


class NotReady(NatsEmbedError):
    pass


class SystemRequestFailed(NatsEmbedError):
    def __init__(self, message: str, err_code: int | None = None) -> None:
        super().__init__(message)
        self.err_code = err_code  # JetStream's err_code when the server answered with one


class SystemRequestUnanswered(SystemRequestFailed):
    """The request got no answer in time: the server may still have done what it asked."""


class MonitorUnavailable(NatsEmbedError):
    pass


def reason(exc: BaseException) -> str:
    """An exception as text for a log line: its message, or its type when it has none."""
    return str(exc) or type(exc).__name__
