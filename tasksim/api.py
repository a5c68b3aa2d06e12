"""The Python API, for notebooks and scripts: ``tasksim.open(config_path)``.

>>> import tasksim
>>> monitor = tasksim.open("demo-workspace/tasksim.yaml")      # doctest: +SKIP
>>> cycle = monitor.run()          # one cycle now, in process, recorded in the store like `tasksim run`
>>> cycle.action, cycle.top_source  # doctest: +SKIP
>>> monitor.rank().to_pandas()     # the ranking against the current window (nothing is recorded)
>>> monitor.history().to_pandas()  # the decision log, newest first

A ``Monitor`` keeps its encoder loaded between calls (a notebook pays the model load once). Results are
frozen dataclasses; ``to_pandas()`` turns each into a DataFrame. Bad input raises a
``tasksim.errors.TasksimError`` subclass naming the file and field, as the CLI does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasksim.config import Config, load_config

if TYPE_CHECKING:
    import pandas as pd

    from tasksim.embed import Encoder

__all__ = ["CycleReport", "Decision", "History", "Monitor", "RankedSource", "RankingResult", "open"]


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass(frozen=True)
class RankedSource:
    """One source against the window: its rank (None when not ranked), score and raw measures."""

    source: str
    status: str  # ok | failed | excluded
    rank: int | None
    score: float | None
    top1_probability: float | None
    flags: tuple[str, ...] = ()
    measures: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def _sources_frame(sources: tuple[RankedSource, ...]) -> pd.DataFrame:
    import pandas as pd

    rows = [{"rank": s.rank, "source": s.source, "status": s.status, "score": s.score,
             "top1_probability": s.top1_probability, "flags": ",".join(s.flags), "error": s.error,
             **{k: _clean(v) for k, v in s.measures.items()}} for s in sources]
    frame = pd.DataFrame(rows, columns=None if rows else ["rank", "source", "status", "score", "top1_probability",
                                                          "flags", "error"])
    return frame.astype({"rank": "Int64"}).set_index("source")


@dataclass(frozen=True)
class RankingResult:
    """The ranking of every source against one production window (``Monitor.rank()``)."""

    window_start: datetime | None
    window_end: datetime | None
    rows: int
    sources: tuple[RankedSource, ...]
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def top_source(self) -> str | None:
        return next((s.source for s in self.sources if s.rank == 1), None)

    def to_pandas(self) -> pd.DataFrame:
        """One row per source (index ``source``), best first: rank, score, top-1 probability, flags, measures."""
        return _sources_frame(self.sources)


@dataclass(frozen=True)
class CycleReport:
    """What one cycle did (``Monitor.run()``); ``raw`` is the JSON of ``tasksim run --format json``."""

    cycle_id: int | None
    status: str  # success | no_data | failed
    window_start: str | None
    window_end: str | None
    drift_detected: bool | None
    drift_share: float | None
    top_source: str | None
    action: str | None  # keep | switch | insufficient_data
    recommended_source: str | None
    rationale: str | None
    duration_seconds: float
    sources: tuple[RankedSource, ...]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def to_pandas(self) -> pd.DataFrame:
        """The cycle's ranking: one row per source (index ``source``), best first, with its measures."""
        return _sources_frame(self.sources)


@dataclass(frozen=True)
class Decision:
    """One row of the decision log."""

    cycle_id: int
    window_start: str | None
    window_end: str | None
    deployed_source: str
    recommended_source: str | None
    action: str
    changed: bool
    drift_detected: bool
    rationale: str


@dataclass(frozen=True)
class History:
    """The decision log, newest first (``Monitor.history()``)."""

    decisions: tuple[Decision, ...]

    def __len__(self) -> int:
        return len(self.decisions)

    def to_pandas(self) -> pd.DataFrame:
        """One row per decision (index ``cycle_id``), newest first."""
        import pandas as pd

        columns = list(Decision.__dataclass_fields__)
        frame = pd.DataFrame([d.__dict__ for d in self.decisions], columns=columns)
        return frame.set_index("cycle_id")


class Monitor:
    """One configuration and its state store; see the module docstring. Use as a context manager or
    call ``close()`` (it releases the encoder)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._encoder: Encoder | None = None

    def _cycle(self, now: datetime | None = None) -> Any:
        from tasksim.cycle import Cycle

        return Cycle(self.config, now=now, encoder=self._encoder)

    def _keep_encoder(self, cycle: Any) -> None:
        self._encoder = cycle._encoder  # built (or not) by the stages that needed it

    def run(self, *, now: datetime | None = None) -> CycleReport:
        """Run one cycle now, in process (sample, embed, drift, profile, rank, recommend), record it in
        the store and return it. ``now`` pretends the current time is that (``window.mode: latest``)."""
        cycle = self._cycle(now)
        try:
            result = cycle.run()
        finally:
            self._keep_encoder(cycle)
            cycle.store.close()
        summary = result.to_dict()
        measures = {s["source"]: s for s in summary.get("sources", [])}
        ranked = {r["source"]: r for r in summary.get("ranking") or []}
        sources = tuple(sorted(
            (RankedSource(source=name, status=s["status"], rank=ranked.get(name, {}).get("rank"),
                          score=ranked.get(name, {}).get("score"),
                          top1_probability=ranked.get(name, {}).get("top1_probability"),
                          flags=tuple(ranked.get(name, {}).get("flags", ())), measures=dict(s.get("measures", {})),
                          error=s.get("error"))
             for name, s in measures.items()),
            key=lambda r: (r.rank is None, r.rank or 0, r.source)))
        drift = summary.get("drift") or {}
        rec = summary.get("recommendation") or {}
        return CycleReport(
            cycle_id=summary.get("cycle_id"), status=summary["status"], window_start=summary["window"]["start"],
            window_end=summary["window"]["end"], drift_detected=drift.get("detected") if drift else None,
            drift_share=drift.get("share") if drift else None,
            top_source=next((s.source for s in sources if s.rank == 1), None), action=rec.get("action"),
            recommended_source=rec.get("recommended_source"), rationale=rec.get("rationale"),
            duration_seconds=float(summary["duration_seconds"]), sources=sources, raw=summary)

    def rank(self, *, now: datetime | None = None) -> RankingResult:
        """Rank every source against the current production window; nothing is recorded (like
        ``tasksim rank``). Raises ``DataError`` when the window has no valid rows."""
        cycle = self._cycle(now)
        try:
            ranked = cycle.rank_now()
            sampled, profiles, ranking = ranked.sampled, ranked.profiles, ranked.ranking
        finally:
            self._keep_encoder(cycle)
            cycle.store.close()
        rows = []
        for p in profiles:
            entry = ranking.entry(p.source) if ranking else None
            rows.append(RankedSource(
                source=p.source, status=p.status, rank=entry.rank if entry else None,
                score=entry.score if entry else None, top1_probability=entry.top1_probability if entry else None,
                flags=tuple(entry.flags) if entry else (), measures=dict(p.measures), error=p.error))
        rows.sort(key=lambda r: (r.rank is None, r.rank or 0, r.source))
        return RankingResult(window_start=sampled.start, window_end=sampled.end,
                             rows=sampled.window.table.num_rows, sources=tuple(rows),
                             weights=dict(ranking.weights) if ranking else {})

    def history(self, limit: int = 20) -> History:
        """The last ``limit`` decisions, newest first."""
        from tasksim.store import Store

        with Store(self.config.state_dir) as store:
            records = store.decisions(limit=limit)
        return History(tuple(
            Decision(cycle_id=int(r["cycle_id"]), window_start=r.get("window_start"), window_end=r.get("window_end"),
                     deployed_source=r["deployed_source"], recommended_source=r.get("recommended_source"),
                     action=r["action"], changed=bool(r.get("changed")), drift_detected=bool(r.get("drift_detected")),
                     rationale=r.get("rationale", ""))
            for r in records))

    def report(self, out: str | Path = "report.html", *, cycle: int | None = None) -> Path:
        """Write the HTML report (``tasksim report``) and return its path."""
        from tasksim.report import write_report

        return write_report(self.config.state_dir, out, cycle=cycle)

    def close(self) -> None:
        self._encoder = None

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Monitor({str(self.config.config_path)!r}, deployed={self.config.deployed_source!r})"


def open(config_path: str | Path) -> Monitor:  # shadows the builtin on purpose: tasksim.open is the entry point
    """Load and validate ``config_path`` (one ``ConfigError`` naming the file and field when it is
    bad) and return a ``Monitor`` for it."""
    return Monitor(load_config(config_path))
