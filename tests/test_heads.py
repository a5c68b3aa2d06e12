"""Source heads: deterministic, cached atomically, and source-specific views."""

from __future__ import annotations

from pathlib import Path

import torch

from tasksim.heads import fit_source_head, load_or_fit_head


def blobs(n: int = 300, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, d, generator=g) + 3.0 * torch.nn.functional.one_hot(y, d).float()
    return x, [f"c{int(v)}" for v in y]


def test_head_learns_and_is_deterministic() -> None:
    x, y = blobs()
    a = fit_source_head(x, y, seed=1)
    b = fit_source_head(x, y, seed=1)
    assert torch.equal(a.weights["w1"], b.weights["w1"])
    pred = a.probs(x).argmax(1)
    acc = (torch.tensor([a.classes[i] == v for i, v in zip(pred.tolist(), y)])).float().mean()
    assert acc > 0.9
    assert a.hidden(x).shape == (300, 128)
    assert torch.allclose(a.probs(x).sum(1), torch.ones(300))


def test_heads_differ_between_sources() -> None:
    x1, y1 = blobs(seed=0)
    x2, y2 = blobs(seed=5)
    h1, h2 = fit_source_head(x1, y1), fit_source_head(x2[:, torch.randperm(8)], y2)
    assert not torch.allclose(h1.hidden(x1), h2.hidden(x1))


def test_cache_roundtrip_and_corruption(tmp_path: Path) -> None:
    x, y = blobs()
    first = load_or_fit_head(tmp_path, "key", x, y)
    files = list(tmp_path.glob("head-*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    again = load_or_fit_head(tmp_path, "key", x, y)
    assert torch.equal(first.weights["w2"], again.weights["w2"]) and first.classes == again.classes
    files[0].write_bytes(b"garbage")
    refit = load_or_fit_head(tmp_path, "key", x, y)
    assert torch.allclose(refit.probs(x), first.probs(x), atol=1e-5)
