"""Tests for tasksim.cache: hits and misses, atomic writes, corrupt entries, pruning."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tasksim.cache import CacheKey, EmbeddingCache


def _compute(value: torch.Tensor, calls: list[int]):
    def compute() -> torch.Tensor:
        calls.append(1)
        return value
    return compute


def test_miss_then_hit_and_persisted(tmp_path: Path) -> None:
    x = torch.randn(7, 5)
    calls: list[int] = []
    cache = EmbeddingCache(tmp_path / "c")
    kw = {"data_fingerprint": "d1", "encoder_fingerprint": "e1", "layer": "output"}
    first = cache.get_or_compute(**kw, compute=_compute(x, calls))
    second = cache.get_or_compute(**kw, compute=_compute(x, calls))
    assert torch.equal(first, x) and torch.equal(second, x) and second.dtype == torch.float32
    assert (cache.hits, cache.misses, len(calls)) == (1, 1, 1)
    again = EmbeddingCache(tmp_path / "c")  # a new process sees the same files
    assert torch.equal(again.get_or_compute(**kw, compute=_compute(x, calls)), x) and again.hits == 1
    for other in ({"layer": "layers.0"}, {"encoder_fingerprint": "e2"}, {"data_fingerprint": "d2"}):
        cache.get_or_compute(**{**kw, **other}, compute=_compute(torch.zeros(2, 3), calls))
    assert cache.misses == 4 and len(cache.entries()) == 4
    assert not list((tmp_path / "c").rglob(".tmp-*"))


def test_stored_as_fixed_size_list_float32_parquet(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    x = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    out = cache.get_or_compute(data_fingerprint="d", encoder_fingerprint="e", layer="output", compute=lambda: x)
    assert out.dtype == torch.float32
    table = pq.read_table(cache.path_for(("d", "e", "output")))
    t = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(t) and t.list_size == 3 and t.value_type == pa.float32()
    assert table.schema.metadata[b"tasksim.layer"] == b"output"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong-key"])
def test_corrupt_entries_are_recomputed(tmp_path: Path, damage: str) -> None:
    cache = EmbeddingCache(tmp_path)
    x = torch.randn(50, 8)
    calls: list[int] = []
    kw = {"data_fingerprint": "d", "encoder_fingerprint": "e", "layer": "output"}
    cache.get_or_compute(**kw, compute=_compute(x, calls))
    path = cache.path_for(CacheKey("d", "e", "output"))
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not parquet" * 100)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid file for another key under this key's name
        cache.get_or_compute(data_fingerprint="other", encoder_fingerprint="e", layer="output",
                             compute=lambda: torch.ones(2, 2))
        path.write_bytes(cache.path_for(("other", "e", "output")).read_bytes())
    out = cache.get_or_compute(**kw, compute=_compute(x, calls))
    assert torch.equal(out, x) and len(calls) == 2 and cache.hits == 0
    assert torch.equal(cache.get_or_compute(**kw, compute=_compute(x, calls)), x) and cache.hits == 1


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = EmbeddingCache(tmp_path)

    def boom(table, where, **kwargs):
        Path(where).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    x = torch.randn(3, 2)
    out = cache.get_or_compute(data_fingerprint="d", encoder_fingerprint="e", layer="o", compute=lambda: x)
    assert torch.equal(out, x)  # the cycle goes on without caching
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_compute_must_return_a_matrix(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(ValueError, match=r"shape \(3,\); expected \(N, D\)"):
        cache.get_or_compute(data_fingerprint="d", encoder_fingerprint="e", layer="o", compute=lambda: torch.ones(3))
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        cache.get_or_compute(data_fingerprint="d", encoder_fingerprint="e", layer="o", compute=lambda: [1, 2])
    empty = cache.get_or_compute(data_fingerprint="d", encoder_fingerprint="e", layer="o",
                                 compute=lambda: torch.zeros(0, 4))
    assert empty.shape == (0, 4)
    assert cache.get_or_compute(data_fingerprint="d", encoder_fingerprint="e", layer="o",
                                compute=lambda: torch.zeros(9, 9)).shape == (0, 4)  # cached hit


def test_prune_by_keep_and_by_size(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    keys = [CacheKey(f"d{i}", "e", "output") for i in range(5)]
    for i, k in enumerate(keys):
        cache.get_or_compute(data_fingerprint=k.data_fingerprint, encoder_fingerprint="e", layer="output",
                             compute=lambda: torch.randn(200, 16))
        os.utime(cache.path_for(k), ns=(10**18 + i, 10**18 + i))  # d0 oldest ... d4 newest
    stale = tmp_path / "ab" / ".tmp-dead.parquet"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))
    assert cache.prune(keep={keys[0], keys[1], keys[3], keys[4]}) == 1
    assert not stale.exists() and not cache.path_for(keys[2]).exists()
    one = cache.path_for(keys[4]).stat().st_size
    assert cache.prune(max_bytes=3 * one + one // 2) == 1  # least recently used (d0) goes first
    assert [p.name for p in cache.entries()] == sorted(cache.path_for(k).name for k in (keys[1], keys[3], keys[4]))
    assert cache.prune(keep=[("d4", "e", "output")]) == 2 and len(cache.entries()) == 1
    assert cache.size_bytes() == cache.path_for(keys[4]).stat().st_size
