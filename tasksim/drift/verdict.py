"""The typed drift verdict: whether a window drifted, which kind of shift (input, label prior,
concept, or none), and the evidence of every test (statistic, calibrated threshold, p-value,
columns or components, or why it was not testable).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tasksim.drift.columns import ColumnDrift, _summary_method
from tasksim.errors import DataError

log = logging.getLogger(__name__)


#: The kinds of shift a verdict can name (``none`` when the window did not drift).
DRIFT_KINDS: tuple[str, ...] = ("input", "label_prior", "concept")


DriftKind = Literal["none", "input", "label_prior", "concept"]


#: Share of the per-window false-alarm budget held back for the reference's own sampling error.
#: Every family's null counts that error *on average over reference draws*, but a stream is
#: monitored against one reference, and its false-alarm rate given that reference is spread
#: around the average (30 MNIST references x 264 quiet windows at the full budget: mean 0.63%,
#: 8 of 30 streams above 1%, 90th percentile 1.89%). Halving every family's share, with the
#: input cut's Monte Carlo error bounded (``tasksim.drift.checks.tail_cut``), brought the same
#: windows to mean 0.35%, 4 of 30 above 1%, 90th percentile 1.17% (docs/benchmarks.md, 2026-12-07).
#: A null per family given the reference (``DriftConfig.reference_delta``) with three quarters of
#: the budget did no better at delta 0.1 (5 of 30 in a run); at 0.05 it reached 1 of 30 (Landsat 0
#: of 12, Fashion-MNIST still 1 of 10) but delayed ramps (35 of 120 within 2 windows, from 43):
#: this margin stays (docs/benchmarks.md, "Nulls given the reference").
REFERENCE_MARGIN = 0.5

#: Share of the per-window false-alarm budget (``drift.false_alarm_rate``) given to each test
#: family. The families are combined by a union bound (Bonferroni over five families), so the
#: window-level false-alarm rate is at most the budget when every family meets its share; the
#: shares sum to ``1 - REFERENCE_MARGIN`` (before 2026-12-07: 0.4, 0.2, 0.1, 0.15, 0.15, summing
#: to 1).
#: ``cusum`` and ``label_cusum`` are the evidence accumulated over windows (EWMAs whose null
#: includes the shared reference's sampling error: ``tasksim.drift.sequential``).
ALPHA_SHARES: dict[str, float] = {
    family: (1 - REFERENCE_MARGIN) * share
    for family, share in {"input": 0.4, "cusum": 0.2, "label_prior": 0.1, "concept": 0.15, "label_cusum": 0.15}.items()
}


#: Monte-Carlo draws for the label-prior and concept nulls (per window; resolution 1/draws). The
#: draws stop early once 10 of them reach the observed statistic (``mc_pvalue``), so a quiet
#: window costs a few dozen; only a window near or past its threshold pays for all of them. At the
#: halved shares the smallest threshold is 0.0375% (the confusion half of the concept test,
#: Bonferroni over two): 4,000 draws could reach it only with no exceedance at all, which delayed
#: concept ramps on Landsat by up to 5 windows; 20,000 resolve it. With the bounds given the
#: reference (``DriftConfig.reference_delta`` 0.1) the raw p-value a label test needs is about
#: 2x smaller again: a few exceedances of 20,000.
LABEL_NULL_DRAWS = 20000


#: Random Fourier features of the Gaussian kernel for the multivariate (MMD) test.
RFF_DIM = 256


#: Smallest pseudo-window the calibration uses; references below twice this are not testable.
MIN_CALIBRATION_ROWS = 20


_Z_CLIP = (-4.0, 8.0)


@dataclass(frozen=True)
class DriftTest:
    """One test family of a window verdict.

    ``name``: ``columns`` (calibrated max-statistic over the monitored columns, Evidently per
    column), ``mmd`` (kernel MMD on the embeddings / all columns), ``cusum`` (accumulated
    per-component evidence over windows), ``label_prior`` (labels, or ``bbse``: the reference
    model's predicted labels), ``concept`` (the reference model's loss on labelled rows).
    ``statistic`` and ``threshold`` are on the scale given by ``detail``; ``p_value`` where the
    test has one. ``not_testable`` says why the test could not run (then ``fired`` is False).
    """

    name: str
    kind: str
    fired: bool
    statistic: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    evidence: tuple[str, ...] = ()
    detail: str = ""
    not_testable: str | None = None


@dataclass(frozen=True)
class DriftVerdict:
    """What the drift stage concluded about one window.

    ``drifted``: any test family fired at the calibrated per-window false-alarm budget
    (``false_alarm_rate``). ``kind``: ``input`` (covariate shift that the label marginal does not
    explain), ``label_prior`` (the label marginal moved, and it explains any input shift),
    ``concept`` (the reference model's loss on labelled rows rose with inputs and label marginal
    unchanged), ``none``. ``columns``: the per-column Evidently results (``pcN`` are principal
    components of the embeddings). ``notes``: "not testable" reasons and calibration remarks.
    """

    drifted: bool
    kind: str
    tests: tuple[DriftTest, ...]
    columns: tuple[ColumnDrift, ...]
    reference_rows: int
    current_rows: int
    labelled_rows: int
    calibrated: bool
    false_alarm_rate: float
    calibration_rows: int | None = None
    notes: tuple[str, ...] = ()

    @classmethod
    def untested(cls, reason: str, *, reference_rows: int, current_rows: int, labelled_rows: int,
                 false_alarm_rate: float) -> DriftVerdict:
        """A window no test ran on (e.g. it lies in the reference period): not drifted, kind
        ``none``, no tests, ``reason`` as its note."""
        return cls(drifted=False, kind="none", tests=(), columns=(), reference_rows=reference_rows,
                   current_rows=current_rows, labelled_rows=labelled_rows, calibrated=False,
                   false_alarm_rate=false_alarm_rate, notes=(reason,))

    @property
    def detected(self) -> bool:
        return self.drifted

    @property
    def tested(self) -> bool:
        """Whether any test ran (False for an :meth:`untested` verdict; a per-column result stored
        before verdicts had tests counts as tested)."""
        return bool(self.tests or self.columns)

    @property
    def share(self) -> float:
        return sum(c.drifted for c in self.columns) / len(self.columns) if self.columns else 0.0

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        return tuple(c.column for c in self.columns if c.drifted)

    @property
    def method(self) -> str:
        return _summary_method([c.method for c in self.columns]) if self.columns else ""

    def test(self, name: str) -> DriftTest | None:
        return next((t for t in self.tests if t.name == name), None)

    def kinds_fired(self) -> tuple[str, ...]:
        return tuple(k for k in DRIFT_KINDS if any(t.fired and t.kind == k for t in self.tests))

    def summary(self) -> str:
        """One line: the verdict, its kind and the evidence of the tests that fired."""
        if not self.tested:
            return "not tested: " + (self.notes[0] if self.notes else "no test could run")
        if not self.drifted:
            return "no drift"
        parts = [f"{t.name}: {', '.join(t.evidence[:8]) or t.detail}" for t in self.tests if t.fired]
        return f"DRIFT ({self.kind}) " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["columns"] = [asdict(c) for c in self.columns]
        out["tests"] = [asdict(t) for t in self.tests]
        out["detected"] = self.drifted  # the key older readers (and dashboards) use
        out["tested"] = self.tested
        out["share"] = self.share
        out["method"] = self.method
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftVerdict:
        """Read a stored verdict; a per-column result stored before verdicts existed reads as kind
        ``input`` (it only tested inputs) when detected."""
        columns = tuple(ColumnDrift(column=str(c["column"]), score=float(c["score"]), threshold=float(c["threshold"]),
                                    drifted=bool(c["drifted"]), method=str(c.get("method", "")))
                        for c in data.get("columns", []))
        tests = tuple(DriftTest(name=str(t["name"]), kind=str(t["kind"]), fired=bool(t["fired"]),
                                statistic=t.get("statistic"), threshold=t.get("threshold"), p_value=t.get("p_value"),
                                evidence=tuple(t.get("evidence", ())), detail=str(t.get("detail", "")),
                                not_testable=t.get("not_testable"))
                      for t in data.get("tests", []))
        drifted = bool(data.get("drifted", data.get("detected", False)))
        kind = str(data.get("kind", "input" if drifted else "none"))
        return cls(drifted=drifted, kind=kind, tests=tests, columns=columns,
                   reference_rows=int(data.get("reference_rows", 0)), current_rows=int(data.get("current_rows", 0)),
                   labelled_rows=int(data.get("labelled_rows", 0)), calibrated=bool(data.get("calibrated", False)),
                   false_alarm_rate=float(data.get("false_alarm_rate", 0.0)),
                   calibration_rows=data.get("calibration_rows"), notes=tuple(data.get("notes", ())))


def as_verdict(drift: DriftVerdict | dict[str, Any] | None) -> DriftVerdict | None:
    """A verdict from a verdict, a stored dict or None."""
    if drift is None or isinstance(drift, DriftVerdict):
        return drift
    return DriftVerdict.from_dict(drift)


def _labels_array(labels: Any, n: int, which: str) -> list[str | None] | None:
    if labels is None:
        return None
    out = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in list(labels)]
    if len(out) != n:
        raise DataError(f"drift: {which} has {len(out)} labels for {n} rows")
    return out
