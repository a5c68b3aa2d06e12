"""Source heads: a small model fitted on a source's own data that stands in for its model.

A source that brings only data (no model files) still has to map the target the way *it* would:
an MLP fitted on the source's features and labels gives a hidden representation and class
probabilities of target samples, so transferability scores differ per source. Heads are cached
as safetensors keyed by the source's data and encoder fingerprints.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["SourceHead", "fit_source_head", "load_or_fit_head"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceHead:
    """``hidden(x)`` is the source's representation of ``x``; ``probs(x)`` its class probabilities."""

    weights: dict[str, torch.Tensor]
    classes: tuple[str, ...]

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights
        x = x.to(w["w1"].device, w["w1"].dtype)
        return torch.relu((x - w["mean"]) / w["scale"] @ w["w1"].T + w["b1"])

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights
        return torch.softmax(self.hidden(x) @ w["w2"].T + w["b2"], dim=1)


def fit_source_head(features: torch.Tensor, labels: list[str], *, hidden: int = 128, steps: int = 300,
                    weight_decay: float = 1e-4, seed: int = 0) -> SourceHead:
    """Full-batch Adam on a one-hidden-layer MLP (cross-entropy); deterministic for a seed."""
    classes = tuple(sorted(set(labels)))
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[v] for v in labels], device=features.device)
    x = features.to(torch.float32)
    mean = x.mean(0)
    scale = x.std(0).clamp_min(1e-6)
    xs = (x - mean) / scale
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d = x.shape[1]
    w1 = (torch.randn(hidden, d, generator=gen) * (2.0 / d) ** 0.5).to(x.device).requires_grad_()
    b1 = torch.zeros(hidden, device=x.device, requires_grad=True)
    w2 = (torch.randn(len(classes), hidden, generator=gen) * (1.0 / hidden) ** 0.5).to(x.device).requires_grad_()
    b2 = torch.zeros(len(classes), device=x.device, requires_grad=True)
    params = [w1, b1, w2, b2]
    opt = torch.optim.Adam(params, lr=1e-2, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            logits = torch.relu(xs @ w1.T + b1) @ w2.T + b2
            loss = torch.nn.functional.cross_entropy(logits, y)
            loss.backward()
            opt.step()
    weights = {"mean": mean, "scale": scale, "w1": w1.detach(), "b1": b1.detach(), "w2": w2.detach(),
               "b2": b2.detach()}
    return SourceHead(weights=weights, classes=classes)


def _cache_path(root: Path, key: str) -> Path:
    return root / f"head-{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"


def load_or_fit_head(root: Path, key: str, features: torch.Tensor, labels: list[str], *, seed: int = 0) -> SourceHead:
    """Reuse a cached head for ``key`` (data + encoder fingerprints) or fit and cache one atomically."""
    path = _cache_path(root, key)
    if path.exists():
        try:
            tensors = load_file(str(path))
            classes = tuple(bytes(tensors.pop("classes").tolist()).decode().split("\x1f"))
            if tuple(sorted(set(labels))) == classes:
                return SourceHead(weights={k: v.to(features.device) for k, v in tensors.items()}, classes=classes)
        except Exception as exc:  # any unreadable entry (truncated, garbled, foreign) is refitted, never trusted
            log.warning("%s: corrupt head cache entry refitted (%s: %s)", path, type(exc).__name__, exc)
    head = fit_source_head(features, labels, seed=seed)
    root.mkdir(parents=True, exist_ok=True)
    encoded = torch.tensor(list("\x1f".join(head.classes).encode()), dtype=torch.uint8)
    fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
    os.close(fd)
    try:
        save_file({**{k: v.detach().cpu().contiguous() for k, v in head.weights.items()}, "classes": encoded}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return head
