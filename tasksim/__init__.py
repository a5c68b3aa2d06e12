"""tasksim: continuous drift monitoring and source re-selection for fine-tuned models."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
