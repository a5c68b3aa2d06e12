"""Independent numpy / scipy / POT / scikit-learn references for the distance and representation measures.

Written from the papers' formulas with dense, direct linear algebra (no code shared with
``tasksim.metrics.distances`` or ``tasksim.metrics.representation``); slow but simple.
"""

from __future__ import annotations

import numpy as np
import ot
import scipy.linalg
import scipy.spatial.distance
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

# ------------------------------------------------------------------ MMD (Gretton et al. 2012)

def median_bandwidth_ref(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.median(scipy.spatial.distance.pdist(np.vstack([x, y]))))


def gaussian_gram(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    return np.exp(-scipy.spatial.distance.cdist(a, b, "sqeuclidean") / (2.0 * bandwidth**2))


def mmd2_unbiased_ref(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Eq. (3) of Gretton et al. (JMLR 2012): U-statistic, diagonals excluded."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = gaussian_gram(x, x, bandwidth), gaussian_gram(y, y, bandwidth), gaussian_gram(x, y, bandwidth)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def mmd_permutation_pvalue_ref(x: np.ndarray, y: np.ndarray, bandwidth: float, permutations: int,
                               seed: int) -> float:
    """Plain loop over random splits of the pooled sample."""
    rng = np.random.default_rng(seed)
    z = np.vstack([x, y])
    m = len(x)
    observed = mmd2_unbiased_ref(x, y, bandwidth)
    count = 0
    for _ in range(permutations):
        perm = rng.permutation(len(z))
        if mmd2_unbiased_ref(z[perm[:m]], z[perm[m:]], bandwidth) >= observed:
            count += 1
    return (1 + count) / (1 + permutations)


# ------------------------------------------------------------------ Frechet distance

def frechet_ref(x: np.ndarray, y: np.ndarray) -> float:
    """FID formula with scipy.linalg.sqrtm (Heusel et al. 2017 reference code)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False, ddof=1), np.cov(y, rowvar=False, ddof=1)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


# ------------------------------------------------------------------ OTDD (Alvarez-Melis & Fusi 2020)

def bures_w2_ref(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> float:
    r1 = np.real(scipy.linalg.sqrtm(s1))
    cross = np.real(scipy.linalg.sqrtm(r1 @ s2 @ r1))
    return float(max(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(cross), 0.0))


def class_gaussians_ref(x: np.ndarray, y: np.ndarray) -> dict:
    out = {}
    for c in np.unique(y):
        xc = x[y == c]
        cov = np.cov(xc, rowvar=False, ddof=1) if len(xc) > 1 else np.zeros((x.shape[1], x.shape[1]))
        out[c] = (xc.mean(0), np.atleast_2d(cov))
    return out


def otdd_cost_ref(x1: np.ndarray, y1: np.ndarray, g1: dict, x2: np.ndarray, y2: np.ndarray, g2: dict) -> np.ndarray:
    """c((x,y),(x',y')) = ||x-x'||^2 + W2^2(N(mu_y,S_y), N(mu_y',S_y')) for every sample pair."""
    labels = {(a, b): bures_w2_ref(*g1[a], *g2[b]) for a in g1 for b in g2}
    lab = np.array([[labels[(a, b)] for b in y2] for a in y1])
    return scipy.spatial.distance.cdist(x1, x2, "sqeuclidean") + lab


def entropic_ot_ref(cost: np.ndarray, eps: float) -> float:
    """OT_eps = <P, C> + eps KL(P | a x b) at the POT log-domain Sinkhorn plan (uniform weights)."""
    a = np.full(cost.shape[0], 1.0 / cost.shape[0])
    b = np.full(cost.shape[1], 1.0 / cost.shape[1])
    plan = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", numItermax=3000, stopThr=1e-9, warn=False)
    ab = np.outer(a, b)
    nz = plan > 0
    kl = np.sum(plan[nz] * np.log(plan[nz] / ab[nz])) - plan.sum() + 1.0
    return float(np.sum(plan * cost) + eps * kl)


def otdd_ref(xs, ys, xt, yt, eps: float | None = None, reg: float = 0.1, exact: bool = False) -> float:
    """Debiased Sinkhorn divergence (Feydy et al. 2019) on the OTDD ground cost, or exact OT (ot.emd2)."""
    gs, gt = class_gaussians_ref(xs, ys), class_gaussians_ref(xt, yt)
    c_st = otdd_cost_ref(xs, ys, gs, xt, yt, gt)
    if exact:
        a = np.full(len(xs), 1.0 / len(xs))
        b = np.full(len(xt), 1.0 / len(xt))
        return float(ot.emd2(a, b, c_st, numItermax=10_000_000))
    c_ss = otdd_cost_ref(xs, ys, gs, xs, ys, gs)
    c_tt = otdd_cost_ref(xt, yt, gt, xt, yt, gt)
    if eps is None:
        eps = reg * 0.5 * (c_ss.mean() + c_tt.mean())
    return entropic_ot_ref(c_st, eps) - 0.5 * (entropic_ot_ref(c_ss, eps) + entropic_ot_ref(c_tt, eps))


def otdd_sinkhorn2_ref(xs, ys, xt, yt, eps: float) -> float:
    """The same divergence but with ot.sinkhorn2's linear term <P, C> only (for a timing comparison)."""
    gs, gt = class_gaussians_ref(xs, ys), class_gaussians_ref(xt, yt)
    vals = []
    for (x1, y1, g1), (x2, y2, g2) in [((xs, ys, gs), (xt, yt, gt)), ((xs, ys, gs), (xs, ys, gs)),
                                        ((xt, yt, gt), (xt, yt, gt))]:
        c = otdd_cost_ref(x1, y1, g1, x2, y2, g2)
        vals.append(float(ot.sinkhorn2(np.full(len(x1), 1 / len(x1)), np.full(len(x2), 1 / len(x2)), c, eps,
                                       method="sinkhorn_log")))
    return vals[0] - 0.5 * (vals[1] + vals[2])


# ------------------------------------------------------------------ domain classifier

def stratified_folds_ref(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Same fold rule as documented: per class, shuffle with default_rng(seed), deal round-robin."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=int)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = np.arange(len(idx)) % folds
    return fold


def domain_auc_ref(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, c: float = 1.0) -> float:
    z = np.vstack([x, y])
    lab = np.r_[np.zeros(len(x), dtype=int), np.ones(len(y), dtype=int)]
    fold = stratified_folds_ref(lab, folds, seed)
    aucs = []
    for k in range(folds):
        tr, te = fold != k, fold == k
        scaler = StandardScaler().fit(z[tr])
        clf = LogisticRegression(C=c, tol=1e-12, max_iter=100000).fit(scaler.transform(z[tr]), lab[tr])
        aucs.append(roc_auc_score(lab[te], clf.decision_function(scaler.transform(z[te]))))
    return float(np.mean(aucs))


# ------------------------------------------------------------------ label shift

def label_shift_ref(ys, yt) -> float:
    values = sorted(set(ys) | set(yt), key=str)
    p = np.array([list(ys).count(v) for v in values], dtype=float)
    q = np.array([list(yt).count(v) for v in values], dtype=float)
    return float(scipy.spatial.distance.jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)


# ------------------------------------------------------------------ CKA (Kornblith et al. 2019)

def centering(n: int) -> np.ndarray:
    return np.eye(n) - np.ones((n, n)) / n


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    h = centering(len(k))
    return float(np.trace(k @ h @ l @ h))


def linear_cka_ref(x: np.ndarray, y: np.ndarray) -> float:
    k, l = x @ x.T, y @ y.T
    return hsic_biased(k, l) / np.sqrt(hsic_biased(k, k) * hsic_biased(l, l))


def kernel_cka_ref(x: np.ndarray, y: np.ndarray, sigma: float | None = None) -> float:
    def rbf(a: np.ndarray) -> np.ndarray:
        d2 = scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(a, "sqeuclidean"))
        s = np.median(scipy.spatial.distance.pdist(a)) if sigma is None else sigma
        return np.exp(-d2 / (2.0 * s * s))
    k, l = rbf(x), rbf(y)
    return hsic_biased(k, l) / np.sqrt(hsic_biased(k, k) * hsic_biased(l, l))


def hsic_unbiased_ref(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (JMLR 2012) Eq. (5), written out with explicit loops over the ones vector."""
    n = len(k)
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    return float((np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                  - 2.0 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3)))


def minibatch_cka_ref(batches) -> float:
    xy = xx = yy = 0.0
    for xb, yb in batches:
        k, l = xb @ xb.T, yb @ yb.T
        xy += hsic_unbiased_ref(k, l)
        xx += hsic_unbiased_ref(k, k)
        yy += hsic_unbiased_ref(l, l)
    return xy / np.sqrt(xx * yy)


# ------------------------------------------------------------------ CCA family (textbook covariance form)

def _inv_sqrt(s: np.ndarray) -> np.ndarray:
    return np.real(scipy.linalg.inv(scipy.linalg.sqrtm(s)))


def cca_ref(x: np.ndarray, y: np.ndarray):
    """Canonical correlations and X-side canonical variates from Sxx^{-1/2} Sxy Syy^{-1/2}."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    ix, iy = _inv_sqrt(sxx), _inv_sqrt(syy)
    u, rho, vt = np.linalg.svd(ix @ sxy @ iy, full_matrices=False)
    hx = xc @ (ix @ u)      # unit-norm canonical variates of x
    hy = yc @ (iy @ vt.T)
    return np.clip(rho, 0, 1), hx, hy, xc, yc


def svcca_ref(x: np.ndarray, y: np.ndarray, keep: float = 0.99) -> float:
    def reduce(a: np.ndarray) -> np.ndarray:
        ac = a - a.mean(0)
        u, s, _ = np.linalg.svd(ac, full_matrices=False)
        frac = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(frac, keep - 1e-12) + 1)
        return u[:, :k] * s[:k]
    rho, *_ = cca_ref(reduce(x), reduce(y))
    return float(np.mean(rho))


def pwcca_ref(x: np.ndarray, y: np.ndarray) -> float:
    rho, hx, hy, xc, yc = cca_ref(x, y)
    h, z = (hx, xc) if x.shape[1] <= y.shape[1] else (hy, yc)
    alpha = np.abs(h.T @ z).sum(1)
    alpha = alpha / alpha.sum()
    return float(np.sum(alpha * rho))
