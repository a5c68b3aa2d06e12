"""What the drift tests know of the reference, fitted once per reference and cached (npz, no
pickle): its principal axes and out-of-fold reconstruction residual, standardisation, random
Fourier features for the MMD, and a softmax model of p(y|x) for the label-prior and concept tests.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tasksim.config import DriftConfig
from tasksim.drift.columns import _as_matrix, pca_components
from tasksim.drift.verdict import RFF_DIM, _labels_array
from tasksim.errors import DataError

log = logging.getLogger(__name__)


#: The monitored column of embedding rows' energy outside the reference's principal subspace
#: (mean squared PCA reconstruction error): pixel noise, blur and other diffuse input shifts move it
#: while leaving the leading components nearly unchanged.
RESIDUAL = "pc_residual"

#: The monitored column of embedding rows' share of exact zeros, kept when at least
#: ``ZERO_SHARE_MIN`` of the reference's entries are exactly zero (sparse inputs: image
#: backgrounds, ReLU features). Noise on such inputs lifts the zeros long before it moves any
#: principal component or the residual (pixel noise of sd 0.03 on Fashion-MNIST: under half a
#: standard error of a 100-row window on the residual).
ZERO_SHARE = "pc_zero_share"
ZERO_SHARE_MIN = 0.01


def _residual(x: np.ndarray, mean: np.ndarray, pcs: np.ndarray) -> np.ndarray:
    centred = x - mean
    return np.maximum((centred * centred).sum(axis=1) - (pcs * pcs).sum(axis=1), 0.0) / x.shape[1]


def _pca_folds(n: int, seed: int, folds: int = 5) -> np.ndarray:
    """The fold of each reference row for the fold bases (shared by the residual and the classifier)."""
    return np.random.default_rng(seed + 3).permutation(n) % folds


def _out_of_fold_residual(x: np.ndarray, k: int, seed: int, folds: int = 5
                          ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The reference rows' residual, each from a basis fitted without it (5 folds), and the fold
    bases (means, axes). In-sample residuals are biased low (the basis was fitted to those rows),
    which made every new window look drifted (30 false alarms in 80 quiet Fashion-MNIST windows).
    A new row's residual under the full basis is in turn slightly *smaller* than these (that basis
    saw 100% of the reference, not 80%): a shift of -0.4 (Fashion-MNIST) to -0.8 (MiniLM) standard
    errors per 100-row window, which the tests accumulated over windows turned into false alarms.
    So new rows are scored with the fold bases too (:meth:`DriftReference.project`)."""
    n = len(x)
    if n < 2 * folds:
        mean, axes = pca_components(torch.as_tensor(x), k)
        return _residual(x, mean.numpy(), (x - mean.numpy()) @ axes.numpy().T), None, None
    fold = _pca_folds(n, seed, folds)
    out = np.empty(n)
    means, bases = [], []
    for f in range(folds):
        train, test = fold != f, fold == f
        mean, axes = pca_components(torch.as_tensor(x[train]), k)
        m, a = mean.numpy(), axes.numpy()
        out[test] = _residual(x[test], m, (x[test] - m) @ a.T)
        means.append(m)
        bases.append(a)
    width = min(b.shape[0] for b in bases)
    return out, np.stack(means), np.stack([b[:width] for b in bases])


def _fold_rotations(fold_axes: np.ndarray, axes: np.ndarray, k: int) -> np.ndarray:
    """Per fold, the orthogonal ``k x k`` map from fold f's first ``k`` component scores to the full
    basis's (orthogonal Procrustes: ``fold_axes[f][:k].T @ R`` closest to ``axes[:k].T``), so that
    ``pcI`` means the same direction whichever basis scored a row (signs and near-tied components
    differ between bases fitted on different rows)."""
    out = []
    for a in fold_axes:
        u, _, vt = np.linalg.svd(a[:k] @ axes[:k].T)
        out.append(u @ vt)
    return np.stack(out)


def _fold_pcs(x: np.ndarray, fold_of_row: np.ndarray, means: np.ndarray, axes: np.ndarray,
              rotations: np.ndarray) -> np.ndarray:
    """Each row's first ``k`` component scores under the fold basis ``fold_of_row`` names, in the
    full basis's coordinates (``rotations``: :func:`_fold_rotations`)."""
    k = rotations.shape[1]
    out = np.empty((len(x), k))
    for f in range(len(axes)):
        rows = fold_of_row == f
        if rows.any():
            out[rows] = ((x[rows] - means[f]) @ axes[f][:k].T) @ rotations[f]
    return out


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    center = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[~(scale > 1e-12)] = 1.0
    return center, scale


def _softmax_fit(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (L2 on the weights) by L-BFGS (scipy); returns (W, b)."""
    from scipy.optimize import minimize

    n, d = x.shape
    onehot = np.zeros((n, classes))
    onehot[np.arange(n), y] = 1.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d * classes].reshape(d, classes), theta[d * classes:]
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        g = (np.exp(logp) - onehot) / n
        value = -(onehot * logp).sum() / n + l2 * (w * w).sum()
        return value, np.concatenate([(x.T @ g + 2 * l2 * w).ravel(), g.sum(axis=0)])

    res = minimize(loss, np.zeros(d * classes + classes), jac=True, method="L-BFGS-B", options={"maxiter": 300})
    return res.x[:d * classes].reshape(d, classes), res.x[d * classes:]


def _softmax_proba(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


@dataclass
class DriftReference:
    """Everything the window tests need from the reference, fitted once and cached (``save``/``load``).

    - ``frame``: the monitored reference columns (numeric scalar inputs under their names, and
      ``pc1..pcK``: principal components of the embeddings, basis fitted here once);
    - the multivariate test's space (standardised scalars and/or embeddings scaled to unit mean
      variance), its Gaussian-kernel bandwidth (median heuristic) and random Fourier features;
    - when the reference has labels of at least two classes: a multinomial logistic model on the
      scalars and ``classifier_components`` principal components, its cross-fitted (5-fold)
      predictions and losses on the reference (the null of the concept test, the confusion matrix
      of BBSE) and the class marginal.
    """

    scalar_columns: tuple[str, ...]
    pc_count: int
    constant_columns: tuple[str, ...]
    frame: pd.DataFrame
    pca_mean: np.ndarray | None
    pca_axes: np.ndarray | None
    scalar_center: np.ndarray
    scalar_scale: np.ndarray
    feature_center: np.ndarray | None
    feature_scale: float
    bandwidth: float
    rff_w: np.ndarray
    rff_b: np.ndarray
    phi: np.ndarray  # reference rows in RFF space (n x RFF_DIM), for calibration
    classes: tuple[str, ...] = ()
    ref_label_codes: np.ndarray | None = None  # -1 for unlabelled rows
    clf_w: np.ndarray | None = None
    clf_b: np.ndarray | None = None
    clf_center: np.ndarray | None = None
    clf_scale: np.ndarray | None = None
    cv_pred: np.ndarray | None = None
    cv_loss: np.ndarray | None = None
    fold_pca_mean: np.ndarray | None = None  # the 5 fold bases of the out-of-fold residual
    fold_pca_axes: np.ndarray | None = None
    fold_pc_rotation: np.ndarray | None = None  # fold f's monitored component scores -> the full basis's
    fold_w: np.ndarray | None = None  # the 5 cross-fitting models (folds x dims x classes)
    fold_b: np.ndarray | None = None
    fold_clf_center: np.ndarray | None = None  # their inputs' standardisation (folds x dims), on the fold bases
    fold_clf_scale: np.ndarray | None = None
    label_note: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return len(self.frame)

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)

    @property
    def pc_names(self) -> list[str]:
        return [f"pc{i + 1}" for i in range(self.pc_count)]

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def fit(cls, scalars: pd.DataFrame | None, features: Any, labels: Any, config: DriftConfig, *,
            seed: int = 0) -> DriftReference:
        """Fit from the reference's numeric scalar inputs (a frame, or None), its embeddings
        (rows x dims, or None for tabular-only inputs) and labels (None entries = unlabelled)."""
        scalars = scalars if scalars is not None else pd.DataFrame()
        n = len(scalars) if len(scalars.columns) else None
        x = None
        if features is not None:
            x = _as_matrix(features, "reference features").numpy()
            if n is not None and x.shape[0] != n:
                raise DataError(f"drift: {x.shape[0]} reference feature rows for {n} table rows")
            n = x.shape[0]
        if n is None or n == 0:
            raise DataError("drift: the reference window is empty or has no monitorable columns")
        notes: list[str] = []
        constant: list[str] = []
        kept: list[str] = []
        for c in scalars.columns:
            values = scalars[c].to_numpy(dtype=np.float64, na_value=np.nan)
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                raise DataError(f"drift: column {c!r} has no finite values in the reference window")
            if np.ptp(finite) == 0:
                constant.append(c)
                notes.append(f"column {c!r} not testable: constant ({finite[0]:g}) in the reference")
            else:
                kept.append(c)
        frame = scalars[kept].astype(np.float64).reset_index(drop=True)
        sc = frame.to_numpy()
        sc = np.where(np.isfinite(sc), sc, np.nan)
        scalar_center = np.nanmean(sc, axis=0) if kept else np.zeros(0)
        scalar_scale = np.nanstd(sc, axis=0) if kept else np.ones(0)
        scalar_scale[~(scalar_scale > 1e-12)] = 1.0
        std_scalars = np.nan_to_num((sc - scalar_center) / scalar_scale) if kept else np.zeros((n, 0))

        pca_mean = pca_axes = fold_pca_mean = fold_pca_axes = fold_pc_rotation = None
        pcs = np.zeros((n, 0))
        feature_center, feature_scale = None, 1.0
        pc_count = 0
        blocks = [std_scalars]
        if x is not None:
            k_total = max(config.embedding_components, config.classifier_components)
            mean, axes = pca_components(torch.as_tensor(x), k_total)
            pca_mean, pca_axes = mean.numpy(), axes.numpy()
            pcs = (x - pca_mean) @ pca_axes.T
            pc_count = min(config.embedding_components, pcs.shape[1])
            clash = sorted(({f"pc{i + 1}" for i in range(pc_count)} | {RESIDUAL, ZERO_SHARE}) & set(scalars.columns))
            if clash:
                raise DataError(f"drift: input column(s) {clash} clash with the principal-component names pc1..pcK, "
                                f"{RESIDUAL}, {ZERO_SHARE}")
            frame[RESIDUAL], fold_pca_mean, fold_pca_axes = _out_of_fold_residual(x, k_total, seed)
            monitored = pcs[:, :pc_count]
            if fold_pca_axes is not None and 0 < pc_count <= fold_pca_axes.shape[1]:
                # Out of fold, as the residual: a reference row's in-sample scores overstate the
                # variance of the trailing components (the basis was fitted to those rows), so
                # every new window looked drifted on them (a 300-row reference of 384-d features:
                # 16 false alarms in 30 quiet windows). Windows are scored the same way (project).
                fold_pc_rotation = _fold_rotations(fold_pca_axes, pca_axes, pc_count)
                monitored = _fold_pcs(x, _pca_folds(n, seed), fold_pca_mean, fold_pca_axes, fold_pc_rotation)
            for i in range(pc_count):
                frame[f"pc{i + 1}"] = monitored[:, i]
            if float(np.mean(x == 0)) >= ZERO_SHARE_MIN:
                frame[ZERO_SHARE] = np.mean(x == 0, axis=1)
            feature_center = x.mean(axis=0)
            feature_scale = float(np.sqrt(np.mean(x.var(axis=0)))) or 1.0
            blocks.append((x - feature_center) / feature_scale)
        if not len(frame.columns):
            raise DataError("drift: no testable columns (every numeric input column is constant in the reference "
                            "and there is no text/vector input)")
        mv = np.concatenate(blocks, axis=1)
        rng = np.random.default_rng(seed)
        sub = mv[rng.choice(n, size=min(n, 500), replace=False)]
        sq = (sub * sub).sum(axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * sub @ sub.T, 0.0)
        med = float(np.median(d2[np.triu_indices(len(sub), 1)])) if len(sub) > 1 else 1.0
        bandwidth = math.sqrt(med / 2) if med > 0 else 1.0
        rff_w = rng.normal(scale=1.0 / bandwidth, size=(mv.shape[1], RFF_DIM))
        rff_b = rng.uniform(0, 2 * math.pi, size=RFF_DIM)
        phi = math.sqrt(2.0 / RFF_DIM) * np.cos(mv @ rff_w + rff_b)

        ref = cls(scalar_columns=tuple(kept), pc_count=pc_count, constant_columns=tuple(constant), frame=frame,
                  pca_mean=pca_mean, pca_axes=pca_axes, scalar_center=scalar_center, scalar_scale=scalar_scale,
                  feature_center=feature_center, feature_scale=feature_scale, bandwidth=bandwidth,
                  rff_w=rff_w, rff_b=rff_b, phi=phi.astype(np.float32), notes=tuple(notes),
                  fold_pca_mean=fold_pca_mean, fold_pca_axes=fold_pca_axes, fold_pc_rotation=fold_pc_rotation)
        ref._fit_classifier(std_scalars, pcs[:, :config.classifier_components],
                            _labels_array(labels, n, "the reference"), config, seed, x=x)
        return ref

    def _fit_classifier(self, std_scalars: np.ndarray, pcs: np.ndarray, labels: list[str | None] | None,
                        config: DriftConfig, seed: int, x: np.ndarray | None = None) -> None:
        """The reference model (full reference) and its 5 cross-fitting models. With embeddings
        and fold bases, fold f's model reads principal components of fold f's basis (fitted
        without fold f's rows, the folds of the out-of-fold residual): on the full basis the
        held-out rows' components were in-sample, their losses optimistic against new rows'
        (a bias of about 0.003-0.004 in mean ``1 - p(label)`` on MiniLM text, 1,000 rows)."""
        if labels is None or all(v is None for v in labels):
            self.label_note = "the reference has no labels"
            return
        classes = sorted({v for v in labels if v is not None})
        if len(classes) < 2:
            self.label_note = f"the reference has a single class ({classes[0]!r})"
            return
        codes = np.array([-1 if v is None else classes.index(v) for v in labels])
        labelled = np.flatnonzero(codes >= 0)
        if len(labelled) < 5 * len(classes):
            self.label_note = f"the reference has {len(labelled)} labelled rows for {len(classes)} classes (< 5 a class)"
            return
        z = np.concatenate([std_scalars, pcs], axis=1)
        center, scale = _standardise(z[labelled])
        z = (z - center) / scale
        y = codes[labelled]
        on_fold_bases = x is not None and self.fold_pca_axes is not None and pcs.shape[1] > 0
        if on_fold_bases:
            row_fold = _pca_folds(len(codes), seed, len(self.fold_pca_axes))
            folds = row_fold[labelled]
            kc = min(pcs.shape[1], self.fold_pca_axes.shape[1])
        else:
            folds = np.random.default_rng(seed + 1).permutation(len(labelled)) % 5
        cv_pred = np.full(len(codes), -1)
        cv_loss = np.full(len(codes), np.nan)
        fold_w, fold_b, fold_center, fold_scale = [], [], [], []
        for f in range(len(self.fold_pca_axes) if on_fold_bases else 5):
            train, test = labelled[folds != f], labelled[folds == f]
            if on_fold_bases:
                m, a = self.fold_pca_mean[f], self.fold_pca_axes[f][:kc]
                zf = np.concatenate([std_scalars, (x - m) @ a.T], axis=1)
                c, s = _standardise(zf[train])
                zf = (zf - c) / s
                fold_center.append(c)
                fold_scale.append(s)
            else:
                zf = z
            w, b = _softmax_fit(zf[train], codes[train], len(classes))
            fold_w.append(w)
            fold_b.append(b)
            if len(test):
                p = _softmax_proba(zf[test], w, b)
                cv_pred[test] = p.argmax(axis=1)
                cv_loss[test] = 1.0 - p[np.arange(len(test)), codes[test]]
        self.fold_w, self.fold_b = np.stack(fold_w), np.stack(fold_b)
        if on_fold_bases:
            self.fold_clf_center, self.fold_clf_scale = np.stack(fold_center), np.stack(fold_scale)
        self.clf_w, self.clf_b = _softmax_fit(z[labelled], y, len(classes))
        self.clf_center, self.clf_scale = center, scale
        self.classes, self.ref_label_codes = tuple(classes), codes
        self.cv_pred, self.cv_loss = cv_pred, cv_loss

    def predict_proba(self, clf_x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """p(y|x) of window rows, each from one of the 5 cross-fitting models drawn at random: a
        window row is then predicted exactly as a reference row was (by a model fitted on 80% of
        the reference, never on the row itself), so predictions, losses and the reference's
        cross-fitted ones are exchangeable under no drift. The full-reference model is slightly
        better than the fold models, which biased every label test (more confident on new rows).
        ``clf_x`` from :meth:`project`: rows x inputs, or folds x rows x inputs when each fold
        model reads its own fold basis (row i, drawn fold f: ``clf_x[f, i]``)."""
        if self.fold_w is None:  # a reference fitted before the fold models were kept
            return _softmax_proba(clf_x, self.clf_w, self.clf_b)
        rows_n = clf_x.shape[-2]
        pick = rng.integers(0, len(self.fold_w), size=rows_n)
        out = np.empty((rows_n, self.fold_w.shape[2]))
        for f in range(len(self.fold_w)):
            rows = pick == f
            if rows.any():
                xf = clf_x[f, rows] if clf_x.ndim == 3 else clf_x[rows]
                out[rows] = _softmax_proba(xf, self.fold_w[f], self.fold_b[f])
        return out

    def _window_residual(self, x: np.ndarray, pcs: np.ndarray) -> np.ndarray:
        """Each window row's residual under one of the 5 fold bases (row i: fold i mod 5), as each
        reference row's was: exchangeable with the reference's out-of-fold residuals."""
        if self.fold_pca_axes is None:  # a small reference (or a cache from before the fold bases)
            return _residual(x, self.pca_mean, pcs)
        out = np.empty(len(x))
        folds = len(self.fold_pca_axes)
        for f in range(folds):
            rows = np.arange(f, len(x), folds)
            if len(rows):
                m, a = self.fold_pca_mean[f], self.fold_pca_axes[f]
                out[rows] = _residual(x[rows], m, (x[rows] - m) @ a.T)
        return out

    # -- projections ----------------------------------------------------------------------
    def project(self, scalars: pd.DataFrame | None, features: Any) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
        """(monitored frame, RFF features, classifier inputs) of a window, in the reference's bases."""
        scalars = scalars if scalars is not None else pd.DataFrame()
        missing = [c for c in self.scalar_columns if c not in scalars.columns]
        if missing:
            raise DataError(f"drift: the current window has no input column(s) {missing}")
        frame = scalars[list(self.scalar_columns)].astype(np.float64).reset_index(drop=True)
        n = len(frame) if self.scalar_columns else None
        x = None
        if self.pca_axes is not None:
            if features is None:
                raise DataError("drift: the current window has no features for the embedding components")
            x = _as_matrix(features, "current features").numpy()
            if n is not None and x.shape[0] != n:
                raise DataError(f"drift: {x.shape[0]} current feature rows for {n} table rows")
            if x.shape[1] != self.pca_axes.shape[1]:
                raise DataError(f"drift: reference features have {self.pca_axes.shape[1]} dims, current {x.shape[1]}")
            n = x.shape[0]
        if not n:
            raise DataError("drift: the current window is empty")
        if not self.scalar_columns:
            frame = pd.DataFrame(index=range(n))
        sc = frame.to_numpy(dtype=np.float64)
        std_scalars = np.nan_to_num((sc - self.scalar_center) / self.scalar_scale) if self.scalar_columns \
            else np.zeros((n, 0))
        blocks = [std_scalars]
        pcs = None
        if x is not None:
            pcs = (x - self.pca_mean) @ self.pca_axes.T
            monitored = pcs
            if self.fold_pc_rotation is not None and self.fold_pca_axes is not None:
                # row i under fold basis i mod 5, as each reference row was scored out of fold
                row_fold = np.arange(len(x)) % len(self.fold_pca_axes)
                monitored = _fold_pcs(x, row_fold, self.fold_pca_mean, self.fold_pca_axes, self.fold_pc_rotation)
            extra = {f"pc{i + 1}": monitored[:, i] for i in range(self.pc_count)}
            extra[RESIDUAL] = self._window_residual(x, pcs)
            extra[ZERO_SHARE] = np.mean(x == 0, axis=1)
            frame = pd.concat([frame, pd.DataFrame(extra)], axis=1) if len(frame.columns) else pd.DataFrame(extra)
            blocks.append((x - self.feature_center) / self.feature_scale)
        mv = np.concatenate(blocks, axis=1)
        phi = math.sqrt(2.0 / RFF_DIM) * np.cos(mv @ self.rff_w + self.rff_b)
        clf_x = None
        if self.clf_w is not None and self.fold_clf_center is not None and x is not None:
            # each fold model's inputs on its own fold basis (folds x rows x inputs)
            kc = self.fold_clf_center.shape[1] - std_scalars.shape[1]
            clf_x = np.stack([(np.concatenate([std_scalars, (x - self.fold_pca_mean[f]) @ self.fold_pca_axes[f][:kc].T],
                                              axis=1) - self.fold_clf_center[f]) / self.fold_clf_scale[f]
                              for f in range(len(self.fold_clf_center))])
        elif self.clf_w is not None:
            k = self.clf_center.shape[0] - std_scalars.shape[1]
            z = np.concatenate([std_scalars, pcs[:, :k] if pcs is not None else np.zeros((n, 0))], axis=1)
            clf_x = (z - self.clf_center) / self.clf_scale
        return frame[self.columns], phi, clf_x

    # -- persistence (npz, no pickle) -------------------------------------------------------
    _ARRAYS = ("pca_mean", "pca_axes", "scalar_center", "scalar_scale", "feature_center", "rff_w", "rff_b", "phi",
               "ref_label_codes", "clf_w", "clf_b", "clf_center", "clf_scale", "cv_pred", "cv_loss", "fold_w", "fold_b",
               "fold_pca_mean", "fold_pca_axes", "fold_pc_rotation", "fold_clf_center", "fold_clf_scale")

    def save(self, path: Path) -> None:
        """Write atomically (temporary file, then rename) as ``.npz``; read back without pickle."""
        meta = {"scalar_columns": list(self.scalar_columns), "pc_count": self.pc_count,
                "constant_columns": list(self.constant_columns), "columns": self.columns,
                "feature_scale": self.feature_scale, "bandwidth": self.bandwidth, "classes": list(self.classes),
                "label_note": self.label_note, "notes": list(self.notes), "version": 1}
        arrays = {k: getattr(self, k) for k in self._ARRAYS if getattr(self, k) is not None}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), frame=self.frame.to_numpy(dtype=np.float64), **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> DriftReference:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: (data[k] if k in data.files else None) for k in cls._ARRAYS}
            frame = pd.DataFrame(data["frame"], columns=meta["columns"])
        return cls(scalar_columns=tuple(meta["scalar_columns"]), pc_count=int(meta["pc_count"]),
                   constant_columns=tuple(meta["constant_columns"]), frame=frame,
                   feature_scale=float(meta["feature_scale"]), bandwidth=float(meta["bandwidth"]),
                   classes=tuple(meta["classes"]), label_note=meta["label_note"], notes=tuple(meta["notes"]),
                   **arrays)
