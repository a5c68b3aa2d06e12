"""One error hierarchy for everything tasksim raises on purpose."""

from __future__ import annotations

__all__ = [
    "TasksimError",
    "ConfigError",
    "DataError",
    "SourceError",
    "MetricInputError",
    "StoreError",
]


class TasksimError(Exception):
    """Base class: every error tasksim raises deliberately subclasses this."""


class ConfigError(TasksimError):
    """The configuration file is missing or invalid (exit code 2)."""


class DataError(TasksimError):
    """Production or reference data cannot be read or has the wrong shape."""


class SourceError(TasksimError):
    """One portfolio source cannot be used; the cycle isolates it and goes on."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"source {source!r}: {message}")
        self.source = source
        self.reason = message


class MetricInputError(TasksimError, ValueError):
    """A similarity measure received inputs it cannot score (NaN, one class, mismatched lengths...)."""


class StoreError(TasksimError):
    """The state store cannot be opened or written."""
