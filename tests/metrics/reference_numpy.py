"""Independent numpy / scipy / scikit-learn references for the transferability measures.

Written from the papers' formulas with dense linear algebra (no shared code with
``tasksim.metrics.transfer``); slow but simple. Labels are assumed to be ``0..C-1``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.spatial.distance
import scipy.stats
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler


def logme_dense(f: np.ndarray, y: np.ndarray, eps: float = 1e-5, tol: float = 1e-12, max_iter: int = 2000) -> float:
    """LogME (You et al. 2021, Alg. 1) with dense matrices: A = alpha I + beta F^T F, m = beta A^-1 F^T y,
    log|A| by slogdet over all D dimensions (so N < D is handled)."""
    f = np.asarray(f, dtype=np.float64)
    n, d = f.shape
    ftf = f.T @ f
    sigma = np.linalg.eigvalsh(ftf)
    sigma = np.clip(sigma, 0.0, None)
    evidences = []
    for c in range(int(y.max()) + 1):
        yc = (y == c).astype(np.float64)
        fty = f.T @ yc
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            a = alpha * np.eye(d) + beta * ftf
            m = beta * np.linalg.solve(a, fty)
            gamma = np.sum(beta * sigma / (alpha + beta * sigma))
            m2 = m @ m
            res2 = np.sum((f @ m - yc) ** 2)
            alpha_new = gamma / (m2 + eps)
            beta_new = (n - gamma) / (res2 + eps)
            done = abs(alpha_new / beta_new - alpha / beta) <= tol * (alpha / beta)
            alpha, beta = alpha_new, beta_new
            if done:
                break
        a = alpha * np.eye(d) + beta * ftf
        m = beta * np.linalg.solve(a, fty)
        m2 = m @ m
        res2 = np.sum((f @ m - yc) ** 2)
        logdet = np.linalg.slogdet(a)[1]
        ev = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * logdet - beta / 2 * res2 - alpha / 2 * m2
              - n / 2 * np.log(2 * np.pi))
        evidences.append(ev / n)
    return float(np.mean(evidences))


def logme_thuml(f: np.ndarray, y: np.ndarray) -> float:
    """Port of thuml/LogME ``LogME._fit_fixed_point`` (classification), including its N < D bug:
    only k = min(N, D) (rank) eigenvalues enter log|A| (issue #23)."""
    f = np.asarray(f, dtype=np.float64)
    n, d = f.shape
    if n > d:
        _, s2, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(s2)
        u_times_sigma = f @ vh.T
        k = int(np.sum(s > 1e-10))
        s = s[:k].reshape(-1, 1)
        u = u_times_sigma[:, :k] / s.reshape(1, -1)
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        s = s.reshape(-1, 1)
    sigma = s**2
    evidences = []
    for i in range(int(y.max()) + 1):
        y_ = (y == i).astype(np.float64).reshape(-1, 1)
        x = u.T @ y_
        x2 = x**2
        res_x2 = (y_**2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            t_ = alpha / beta
            if abs(t_ - t) / t <= 1e-3:
                break
        evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
                    - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def hscore(f: np.ndarray, y: np.ndarray, rcond: float | None = None) -> float:
    """Bao et al. 2019: tr(pinv(cov f) cov(E[f|y])), population covariances."""
    n, d = f.shape
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    cov_f = np.cov(f, rowvar=False, bias=True).reshape(d, d)
    cov_g = np.cov(g, rowvar=False, bias=True).reshape(d, d)
    rc = max(n, d) * np.finfo(np.float64).eps if rcond is None else rcond
    return float(np.trace(np.linalg.pinv(cov_f, rcond=rc, hermitian=True) @ cov_g))


def hscore_regularized(f: np.ndarray, y: np.ndarray) -> float:
    """Ibrahim et al. 2022: tr(LW_cov^-1 (1 - a) cov(E[f|y])) with scikit-learn's Ledoit-Wolf."""
    f = f - f.mean(0)
    lw = LedoitWolf(assume_centered=False).fit(f)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    cov_g = np.cov(g, rowvar=False, bias=True).reshape(f.shape[1], -1)
    return float(np.trace(np.linalg.solve(lw.covariance_, (1 - lw.shrinkage_) * cov_g)))


def transrate(f: np.ndarray, y: np.ndarray, eps: float = 1e-4) -> float:
    """Huang et al. 2022: R(Z) - sum_c n_c/n R(Z_c), R(Z) = 1/2 logdet(I + Z^T Z / (n eps)), Z centred."""
    z = f - f.mean(0)

    def rate(m: np.ndarray) -> float:
        nn, d = m.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + m.T @ m / (nn * eps))[1]

    n = z.shape[0]
    return float(rate(z) - sum((y == c).sum() / n * rate(z[y == c]) for c in np.unique(y)))


def gbc(f: np.ndarray, y: np.ndarray, pca_dim: int | None = 64) -> float:
    """Pandy et al. 2022 (google-research stable_transfer/transferability/gbc.py), diagonal Gaussians."""
    if pca_dim is not None and pca_dim < f.shape[1]:
        f = PCA(n_components=pca_dim, svd_solver="full").fit_transform(f)
    classes = np.unique(y)
    stats = {c: (f[y == c].mean(0), np.maximum(f[y == c].var(0), 1e-4)) for c in classes}
    total = 0.0
    for c1 in classes:
        for c2 in classes:
            if c1 == c2:
                continue
            (m1, v1), (m2, v2) = stats[c1], stats[c2]
            avg = (v1 + v2) / 2
            db = np.sum((m1 - m2) ** 2 / avg) / 8 + 0.5 * (np.sum(np.log(avg)) - 0.5 * np.sum(np.log(v1))
                                                           - 0.5 * np.sum(np.log(v2)))
            total += np.exp(-db)
    return float(-total)


def leep(theta: np.ndarray, y: np.ndarray) -> float:
    """Nguyen et al. 2020, Eq. (1)-(2), with explicit loops."""
    n, z = theta.shape
    c = int(y.max()) + 1
    joint = np.zeros((c, z))
    for i in range(n):
        joint[y[i]] += theta[i] / n
    cond = joint / joint.sum(0, keepdims=True)
    return float(np.mean([np.log(np.sum(cond[y[i]] * theta[i])) for i in range(n)]))


def nce(z: np.ndarray, y: np.ndarray) -> float:
    """Tran et al. 2019: -H(Y|Z) = sum P(y,z) log P(y|z) from counts."""
    total = 0.0
    for zz in np.unique(z):
        pz = np.mean(z == zz)
        for yy in np.unique(y):
            pyz = np.mean((z == zz) & (y == yy))
            if pyz > 0:
                total += pyz * np.log(pyz / pz)
    return float(total)


def sfda(x: np.ndarray, y: np.ndarray) -> float:
    """Shao et al. 2022, following the authors' procedure: shrinkage LDA from the generalised
    eigenproblem eigh(Sb, Sw_reg) (all directions), softmax softening, ConfMix, refit, mean posterior."""
    x = np.array(x, dtype=np.float64)
    classes = np.unique(y)
    c = len(classes)
    n, d = x.shape
    assert n == len(y)
    priors = np.bincount(y) / n

    def fit_predict(xx: np.ndarray, shrink: float | None):
        means = np.stack([xx[y == k].mean(0) for k in classes])
        sw = sum(priors[k] * np.cov(xx[y == k].T, bias=True).reshape(d, d) for k in classes)
        if shrink is None:
            shrink = max(np.exp(-5 * scipy.linalg.eigvalsh(sw)[-1]), 1e-10)
        st = np.cov(xx.T, bias=True).reshape(d, d)
        st = (1 - shrink) * st + shrink * np.trace(st) / d * np.eye(d)
        sw_s = (1 - shrink) * sw + shrink * np.trace(sw) / d * np.eye(d)
        sb = st - sw_s
        _, evecs = scipy.linalg.eigh(sb, sw_s)
        coef = means @ evecs @ evecs.T
        intercept = -0.5 * np.diag(means @ coef.T) + np.log(priors)
        s = xx @ coef.T + intercept
        s = s - s.max(1, keepdims=True)
        p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
        return p, means, shrink

    prob, means, shrink = fit_predict(x, None)
    prob = np.exp(prob) / np.exp(prob).sum(1, keepdims=True)
    outer = np.stack([(means.sum(0) - means[k]) / (c - 1) for k in classes])
    xm = x.copy()
    for k in classes:
        idx = np.where(y == k)[0]
        py = prob[idx, k][:, None]
        xm[idx] = py * x[idx] + (1 - py) * outer[k]
    prob2, _, _ = fit_predict(xm, shrink)
    return float(np.mean(prob2[np.arange(n), y]))


def parc(f: np.ndarray, y: np.ndarray, pca_dim: int | None = 32, idx: np.ndarray | None = None,
         correlation: str = "spearman") -> float:
    """Bolya et al. 2021 (dbolya/parc methods.py PARC): PCA (fitted on all rows), StandardScaler,
    1 - corrcoef RDMs of features and one-hot labels, Spearman of the upper triangles, x100."""
    if pca_dim is not None and pca_dim < f.shape[1]:
        f = PCA(n_components=pca_dim, svd_solver="full").fit(f).transform(f)
    c = int(y.max()) + 1
    if idx is not None:
        f, y = f[idx], y[idx]
    f = StandardScaler().fit_transform(f)
    onehot = np.eye(c)[y]
    rdm1 = 1 - np.corrcoef(f)
    # Rounded: the published code ranks 1 - corrcoef(one-hot) whose exact ties (0 and 1 + 1/(C-1))
    # are split by floating-point noise, which changes the Spearman ranks.
    rdm2 = np.round(1 - np.corrcoef(onehot), 12)
    iu = np.triu_indices(f.shape[0], 1)
    if correlation == "spearman":
        return float(scipy.stats.spearmanr(rdm1[iu], rdm2[iu])[0] * 100)
    return float(scipy.stats.pearsonr(rdm1[iu], rdm2[iu])[0] * 100)


def knn_loo_accuracy(f: np.ndarray, y: np.ndarray, k: int, metric: str = "cosine",
                     queries: np.ndarray | None = None) -> float:
    """Leave-one-out kNN with a full distance matrix; majority vote, ties to the nearest tied class."""
    dist = scipy.spatial.distance.cdist(f, f, metric="cosine" if metric == "cosine" else "sqeuclidean")
    np.fill_diagonal(dist, np.inf)
    qs = np.arange(len(y)) if queries is None else queries
    correct = 0
    for i in qs:
        nb = np.argsort(dist[i], kind="stable")[:k]
        labs = y[nb]
        counts = np.bincount(labs, minlength=int(y.max()) + 1)
        tied = set(np.flatnonzero(counts == counts.max()))
        pred = next(lab for lab in labs if lab in tied)
        correct += int(pred == y[i])
    return correct / len(qs)


def logme_svd(f: np.ndarray, y: np.ndarray, *, iters: int = 100000, stop: float = 1e-13,
              corrected: bool = True) -> float:
    """LogME by the thin SVD of F (the reference algorithm), iterating the fixed point ``iters``
    times at most or until ``alpha/beta`` changes by less than ``stop``. ``corrected`` adds the
    ``-(D - k)/2 log alpha`` that the reference code drops when k = rank < D (issue #23);
    ``iters=11, stop=1e-3`` reproduces the reference code's early stop."""
    f = np.asarray(f, dtype=np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max() * max(n, d) * np.finfo(np.float64).eps
    u, sigma = u[:, keep], (s[keep] ** 2).reshape(-1, 1)
    k = sigma.shape[0]
    evidences = []
    for i in range(int(y.max()) + 1):
        yc = (y == i).astype(np.float64).reshape(-1, 1)
        x2 = (u.T @ yc) ** 2
        res_x2 = (yc**2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(iters):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= stop:
                break
        t = alpha / beta
        m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
        res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
        ev = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
              - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * np.log(2 * np.pi))
        if corrected:
            ev -= (d - k) / 2.0 * np.log(alpha)
        evidences.append(ev / n)
    return float(np.mean(evidences))
