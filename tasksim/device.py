"""The one place that decides which torch device tasksim computes on."""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_device"]


def resolve_device(preference: str | None = None) -> torch.device:
    """``auto`` (default, or ``$TASKSIM_DEVICE``) picks CUDA when present, else CPU."""
    choice = (preference or os.environ.get("TASKSIM_DEVICE") or "auto").lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)
