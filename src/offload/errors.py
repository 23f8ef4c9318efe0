"""The project's exception hierarchy: one base, one subclass per kind of failure."""

from __future__ import annotations


class OffloadError(Exception):
    """Base of every error offload raises on purpose."""


class QueueUnavailable(OffloadError):
    """Redis could not be reached (or answered READONLY); the caller may retry later."""


class ConfigError(OffloadError):
    """A setting is missing or malformed."""


class UnknownJobType(OffloadError):
    """No handler is registered for the job type."""


class SliceFailed(OffloadError):
    """A slice of work failed. ``retryable`` says whether another attempt may succeed."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class DispatchFailed(OffloadError):
    """The compute function could not be invoked for a slice."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class CallbackRejected(OffloadError):
    """A callback failed authentication (bad, expired or foreign token, bad signature)."""
