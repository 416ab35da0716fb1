"""Errors raised by the stack; each message is one plain sentence.

    StackError
    ├── ManifestInvalid     a manifest (or the set of them) cannot be run: nothing starts
    └── StackRunning        a second supervisor for the same root
"""

from __future__ import annotations


class StackError(Exception):
    """Base class of every stack error; the message is one plain sentence."""


class ManifestInvalid(StackError):
    pass


class StackRunning(StackError):
    def __init__(self, message: str, pid: int) -> None:
        super().__init__(message)
        self.pid = pid
