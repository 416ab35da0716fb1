"""The forest's errors, each carrying one sentence meant for a person.

    ForestError                      anything the forest refuses or cannot do
    ├── ForestConfigError            a bad forest.yaml, script, prompt or component spec
    │   │                            (names the file, the component and the field)
    │   └── MissingVariable          an environment variable it needs is not set here
    ├── ComponentNotFound            a name this node's forest does not have
    └── FlowError                    input the River refuses (bad subject, not JSON, too big)

Errors raised while one event is handled are not ForestErrors; see `EventError` below
(`BadEvent` and `Refused` end the event at once, `RetryLater` sets the next attempt's delay).
"""

from __future__ import annotations

from nimsforest.forest.model import ComponentRef


class ForestError(Exception):
    """Base class; str(err) is one plain sentence."""


class ForestConfigError(ForestError):
    """A configuration problem, located as precisely as we can. `ref` is the component at
    fault, when it is one (branch on it, not on the text)."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        component: ComponentRef | str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.file = file
        self.line = line  # the line in the script or prompt named by `field`, when known
        self.ref = component if isinstance(component, ComponentRef) else None
        self.component = str(component) if component is not None else None
        self.field = field
        self.reason = message.rstrip(".")
        where = []
        if file:
            where.append(str(file))
        if self.component:
            where.append(self.component)
        if field:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {self.reason}." if prefix else f"{self.reason}.")


class MissingVariable(ForestConfigError):
    """An environment variable the component needs (`${VAR}`, a brain's key) is not set
    on this node; `variable` names it."""

    def __init__(
        self,
        variable: str,
        *,
        file: str | None = None,
        component: ComponentRef | str | None = None,
        field: str | None = None,
    ) -> None:
        self.variable = variable
        super().__init__(f"environment variable {variable} is not set", file=file,
                         component=component, field=field)


class ComponentNotFound(ForestError):
    pass


class FlowError(ForestError):
    """The River refused an input; `status` is the HTTP status that fits, `retry_after`
    (seconds) is set when asking again soon may succeed."""

    def __init__(self, message: str, status: int = 400, *, retry_after: int | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class EventError(Exception):
    """One event failed in one component. The event is retried (nak with backoff) until
    the consumer's max_deliver, then terminated and reported as dead."""


class BadEvent(EventError):
    """The event itself is malformed (not a leaf, not JSON): retrying cannot help, so it is
    terminated at once and reported as dead."""


class Refused(EventError):
    """The far side refused the event for good (an output's 4xx other than 408 and 429):
    it is terminated at once and reported as dead."""


class RetryLater(EventError):
    """The attempt failed and the next one should wait `delay` seconds (a Retry-After, or
    the component's own backoff) instead of the runner's default."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


__all__ = [
    "BadEvent",
    "Refused",
    "RetryLater",
    "ComponentNotFound",
    "EventError",
    "FlowError",
    "ForestConfigError",
    "ForestError",
    "MissingVariable",
]
