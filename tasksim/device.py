"""The one place that decides which torch device tasksim computes on."""

from __future__ import annotations

import os
import re

import torch

from tasksim.errors import ConfigError

__all__ = ["resolve_device"]

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def resolve_device(preference: str | None = None) -> torch.device:
    """``auto`` (default, or ``$TASKSIM_DEVICE``) picks CUDA when present, else CPU.

    An unknown name, or CUDA / MPS asked for on a machine without it, raises ``ConfigError`` naming
    ``device`` (the config validates the spelling; availability is only known on the machine that runs)."""
    from_env = not preference and bool(os.environ.get("TASKSIM_DEVICE"))
    choice = (preference or os.environ.get("TASKSIM_DEVICE") or "auto").strip().lower()
    field = "$TASKSIM_DEVICE" if from_env else "device"
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _DEVICE.match(choice):
        raise ConfigError(f"{field}: expected 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps', got {choice!r}")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{field}: {choice!r} was requested but CUDA is not available on this machine "
                              "(use 'auto' or 'cpu')")
        index = int(choice.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{field}: {choice!r} was requested but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    if choice == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{field}: 'mps' was requested but MPS is not available on this machine (use 'auto' or 'cpu')")
    return torch.device(choice)
