"""Configuration: frozen pydantic models loaded from one YAML file.

Validation happens here, at the boundary. Every problem becomes one ``ConfigError`` line that
names the file, the field path and what was expected, e.g.
``tasksim.yaml: sources[2].path: Field required``.
Relative paths are resolved against the directory of the YAML file, so a config can be moved
together with its data.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasksim.errors import ConfigError
from tasksim.metrics import catalog

__all__ = [
    "Config",
    "DriftConfig",
    "EncoderConfig",
    "ExperimentConfig",
    "MetricsConfig",
    "PrefectConfig",
    "ProductionConfig",
    "RankingConfig",
    "ReferenceConfig",
    "RetentionConfig",
    "SamplingConfig",
    "ScheduleConfig",
    "SourceConfig",
    "WindowConfig",
    "config_hash",
    "load_config",
    "parse_duration",
]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}

Modality = Literal["tabular", "text", "image", "embedding"]


def parse_duration(value: Any) -> timedelta:
    """``90``, ``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` or a timedelta -> timedelta (positive)."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = timedelta(seconds=float(value))
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        result = timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    else:
        raise ValueError(f"expected a duration such as 90, '30s', '15m', '1h' or '7d', got {value!r}")
    if result <= timedelta(0):
        raise ValueError(f"expected a positive duration, got {value!r}")
    return result


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EncoderConfig(_Frozen):
    """How raw columns become feature vectors.

    - ``identity``: numeric columns, or one fixed-size list column, used as they are.
    - ``tabular``: numeric columns standardised, categoricals one-hot encoded.
    - ``text``: a sentence-transformers model (default: the packaged offline all-MiniLM-L6-v2).
    - ``torchscript``: a TorchScript or ``torch.export`` (.pt2) module over a tensor column.
    - ``safetensors``: safetensors weights for an architecture registered in ``tasksim.embed``.
    """

    kind: Literal["identity", "tabular", "text", "torchscript", "safetensors"] = "identity"
    path: Path | None = None
    model: str | None = None
    architecture: str | None = None
    layers: tuple[str, ...] = ()
    batch_size: int = Field(default=256, ge=1)
    input_shape: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _needs_path(self) -> EncoderConfig:
        if self.kind in ("torchscript", "safetensors") and self.path is None:
            raise ValueError(f"path: an encoder of kind {self.kind!r} needs a model file path")
        if self.kind == "safetensors" and not self.architecture:
            raise ValueError("architecture: safetensors weights need a registered architecture name")
        return self


class InputColumns(_Frozen):
    """Columns that hold a dataset's inputs; which ones matter depends on the encoder."""

    feature_columns: tuple[str, ...] = ()
    text_column: str | None = None
    label_column: str | None = None
    # Class names for label codes ({0: cat, 1: dog}): integer codes are never matched by name, so
    # label semantics (class-name overlap, granularity) need the names. Unmapped codes stay codes.
    label_names: dict[str, str] | None = None

    @field_validator("label_names", mode="before")
    @classmethod
    def _label_names_as_text(cls, v: Any) -> Any:
        if isinstance(v, dict):
            bad = [k for k, name in v.items() if not isinstance(name, (str, int, float)) or not str(name).strip()]
            if bad:
                raise ValueError(f"expected a mapping of label code -> non-empty class name; bad entries for {bad}")
            return {str(k).strip(): str(name).strip() for k, name in v.items()}
        return v

    def named_labels(self, labels: list[str | None] | None) -> list[str | None] | None:
        """``labels`` with every code that ``label_names`` maps replaced by its class name."""
        if labels is None or not self.label_names:
            return labels
        names = self.label_names
        return [None if v is None else names.get(v, v) for v in labels]

    def input_columns(self) -> list[str]:
        cols = list(self.feature_columns)
        if self.text_column:
            cols.append(self.text_column)
        return cols

    def inferred_modality(self, encoder: EncoderConfig | None) -> Modality | None:
        """The declared ``modality``, else what the inputs and encoder show: a text column or a text
        encoder is text, a model over multi-dimensional inputs (``input_shape`` of rank >= 2) is
        image; anything else is unknown (numeric columns may be tabular data or embeddings)."""
        declared = getattr(self, "modality", None)
        if declared is not None:
            return declared
        if (self.text_column and not self.feature_columns) or (encoder is not None and encoder.kind == "text"):
            return "text"
        if encoder is not None and encoder.input_shape is not None and len(encoder.input_shape) >= 2:
            return "image"
        return None

    @model_validator(mode="after")
    def _has_inputs(self) -> InputColumns:
        if not self.feature_columns and not self.text_column:
            raise ValueError("feature_columns or text_column: name at least one input column")
        return self


class ProductionConfig(InputColumns):
    """Where production data lives: a Parquet file, directory (hive-partitioned or not), glob or fsspec URL."""

    path: str
    timestamp_column: str
    partitioning: Literal["hive"] | None = "hive"
    modality: Modality | None = None  # None: inferred (see InputColumns.inferred_modality)
    # A file in the window that cannot be read (corrupt, zero bytes while still being written, a
    # changed schema): ``skip`` leaves it out, names it in the log and the run JSON and counts it
    # (tasksim_window_files_skipped_total); ``fail`` (strict mode) fails the cycle with that line.
    on_bad_file: Literal["skip", "fail"] = "skip"


class WindowConfig(_Frozen):
    """Which slice of production data one cycle looks at.

    ``latest``: the ``length`` ending now. ``sequential``: consecutive windows from ``start``
    (default: the earliest timestamp), one per cycle, the cursor kept in the state store; this
    replays history and catches up after downtime without skipping data.
    """

    mode: Literal["latest", "sequential"] = "latest"
    length: timedelta = timedelta(hours=1)
    start: datetime | None = None

    _parse_length = field_validator("length", mode="before")(lambda cls, v: parse_duration(v))

    @field_validator("start")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=timezone.utc) if v is not None and v.tzinfo is None else v


class ReferenceConfig(_Frozen):
    """The reference window drift is measured against: a time range of the production data,
    or a separate dataset (``path``) with the same columns."""

    start: datetime | None = None
    end: datetime | None = None
    path: str | None = None

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=timezone.utc) if v is not None and v.tzinfo is None else v

    @model_validator(mode="after")
    def _one_kind(self) -> ReferenceConfig:
        if self.path is None and self.end is None:
            raise ValueError("reference: give either path (a reference dataset) or end (and optionally start)")
        if self.start and self.end and self.start >= self.end:
            raise ValueError(f"reference.start ({self.start}) must be before reference.end ({self.end})")
        return self


class SamplingConfig(_Frozen):
    """Bounded, seeded sampling of each window and each source."""

    max_rows: int = Field(default=5000, ge=10)
    source_max_rows: int = Field(default=5000, ge=10)
    seed: int = 0
    stratify_by_label: bool = False


class SourceConfig(InputColumns):
    """One candidate source in the portfolio: its data, its model files and its metadata."""

    name: str = Field(pattern=_NAME_PATTERN)
    path: str | None = None  # the source's dataset; None for a model-only source (a checkpoint)
    modality: Modality | None = None  # None: inferred (see InputColumns.inferred_modality)
    licence: str = "unknown"
    access: Literal["public", "internal", "restricted", "unavailable"] = "public"
    cost: float = Field(default=1.0, ge=0)
    provenance: str | None = None
    encoder: EncoderConfig | None = None
    head: Path | None = None

    @property
    def model_only(self) -> bool:
        """A pretrained checkpoint without a dataset: profiled through its model's view of the target."""
        return self.path is None

    @model_validator(mode="after")
    def _has_inputs(self) -> SourceConfig:
        """Three kinds: dataset + model, dataset only (``path`` and its input columns), model only
        (``encoder``, applied to the production rows; no input columns of its own)."""
        if self.path is None:
            if self.encoder is None:
                raise ValueError("path: give the source's dataset (path), its model (encoder), or both")
            return self
        if not self.feature_columns and not self.text_column:
            raise ValueError("feature_columns or text_column: name at least one input column")
        return self


def _check_with_prefect(cron: str, tz: str | None) -> None:
    """Validate a cron string and a time zone with Prefect's own ``CronSchedule`` model (what
    ``serve`` hands to Prefect), so what ``validate`` accepts, ``serve`` accepts; one ValueError line."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron, timezone=tz)
    except ValidationError as exc:
        loc = exc.errors()[0].get("loc") or ("cron",)
        if loc[0] == "timezone":
            raise ValueError(f"unknown time zone {tz!r} (expected an IANA name such as 'UTC' or "
                             "'Europe/Berlin')") from None
        raise ValueError(f"invalid cron expression {cron!r} (expected 5 fields: minute hour day-of-month "
                         "month day-of-week, e.g. '*/15 * * * *')") from None


class ScheduleConfig(_Frozen):
    """Exactly one of ``interval`` (a duration) or ``cron`` (five fields)."""

    interval: timedelta | None = None
    cron: str | None = None
    timezone: str = "UTC"

    @field_validator("interval", mode="before")
    @classmethod
    def _parse_interval(cls, v: Any) -> timedelta | None:
        return None if v is None else parse_duration(v)

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str | None) -> str | None:
        if v is not None and len(v.split()) != 5:
            raise ValueError(f"expected a cron expression with 5 fields, got {v!r}")
        if v is not None:
            _check_with_prefect(v, None)
        return v

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        if v != "UTC":  # the default needs no check (and importing Prefect costs 1-2 s)
            _check_with_prefect("* * * * *", v)
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> ScheduleConfig:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("schedule: give exactly one of interval or cron")
        return self

    def longest_gap(self, firings: int = 50) -> timedelta:
        """The longest expected time between two scheduled cycles: the interval, or for a cron
        schedule the largest gap among its next ``firings`` fire times (what staleness alerts scale by)."""
        if self.interval is not None:
            return self.interval
        from prefect.server.schemas.schedules import CronSchedule  # Prefect's own cron semantics

        dates = CronSchedule(cron=self.cron, timezone=self.timezone).get_dates(firings)
        if hasattr(dates, "__await__"):  # a coroutine in some Prefect versions
            import asyncio

            dates = asyncio.run(dates)
        gaps = [(b - a).total_seconds() for a, b in zip(dates, dates[1:])]
        return timedelta(seconds=max(gaps)) if gaps else timedelta(days=1)


class DriftConfig(_Frozen):
    """Drift tests and their calibration (``tasksim.drift``; docs/architecture.md, section Drift).

    Every window gets one verdict (drifted? which kind: input, label prior, concept) at a
    calibrated ``false_alarm_rate`` per window, split over five test families: a max-statistic
    over the monitored columns (Evidently per column: ``method``, ``auto`` = Evidently's choice)
    together with an MMD on the embeddings / all columns; the input evidence accumulated over
    windows (``cusum``: EWMAs whose null includes the reference's own sampling error); the label
    marginal (labels, or the reference model's predicted labels); the reference model's loss and
    p(predicted | label) on labelled rows (concept); and the label evidence over windows. Thresholds are measured by bootstrapping the reference against itself
    at the window's size bucket (``calibration_rounds``), and cached.

    Embeddings are monitored through their first ``embedding_components`` principal components
    (fitted once on the reference); the reference model uses ``classifier_components``. Label tests
    need ``min_labelled_rows`` labelled rows in the window (fewer: predicted labels, BBSE).
    ``max_columns`` (default: no limit) is a guard: more monitored columns is a configuration
    error, never a silent cut. ``calibrate: false`` leaves the input tests "not testable" (they
    have no valid threshold without calibration). ``threshold``, ``drift_share`` and
    ``calibration_control`` apply to the per-column report of ``tasksim.drift.detect_drift`` only.

    ``benign_offset_sd`` (in units of one row's standard deviation) is the accumulated tests'
    tolerance: their null counts, beside the windows' and the reference's sampling error, a
    persistent offset of the stream's mean from the reference population's with this standard
    deviation (variance ``W^2 benign_offset_sd^2`` in the EWMA's, with one row's covariance).
    Windows are never exact fresh draws of the reference's population: a stream drawn from a
    finite pool of N rows shares that pool's sampling error (``1 / sqrt(N)``: 0.016 for 4,000
    rows), and real periods differ slightly. 0 restores the i.i.d. null. Per-window tests are
    not affected (docs/benchmarks.md, "Accumulated tests on a reused pool").

    ``reference_delta`` (default None: off) bounds every family's null *given the reference*
    (``tasksim.drift.given_reference``): the reference's own sampling error, a fixed offset for one
    stream, is counted at its upper ``reference_delta`` quantile, so each family holds its share for
    about ``1 - reference_delta`` of references. Off by default: at 0.1 with three quarters of the
    budget instead of half it cut neither the streams above 1% nor the ramp delays; at 0.1 on top
    of the halved shares (what this option does) 3 of 30 MNIST streams were above 1% instead of
    4, but 35 of 120 Landsat and MNIST ramp delays were within 2 windows instead of 43; 0.05 with
    three quarters of the budget (a bench flag, not a setting) reached 1 of 30 at the same delay
    cost (docs/benchmarks.md, "Nulls given the reference", 2026-12-07).

    ``label_fast_lambda`` (default None: off; 0.6 was chosen for it) adds a fast EWMA of the class
    frequencies (labels, or predicted labels for BBSE) to the accumulated label test's slow one
    (weight 0.3), the two combined by min-p on the same null draws within the same share of the
    budget: a label-prior ramp's first windows weigh more. Off by default: on the benchmark's 8
    streams per ramp its label-prior ramps found within 2 windows went from 20 to 18 of 64 (62
    against 59 of 192 over 24 streams), false alarms unchanged, at about 15 ms more per window
    (docs/benchmarks.md, "A multi-scale accumulated label test", 2026-12-06).
    """

    method: str = "auto"
    threshold: float | None = Field(default=None, gt=0)
    drift_share: float = Field(default=0.5, gt=0, le=1)
    columns: tuple[str, ...] | None = None
    embedding_components: int = Field(default=8, ge=1, le=64)
    classifier_components: int = Field(default=32, ge=1, le=256)
    max_columns: int | None = Field(default=None, ge=1)
    calibrate: bool = True
    false_alarm_rate: float = Field(default=0.01, gt=0, lt=1)
    calibration_rounds: int = Field(default=600, ge=20, le=10000)
    calibration_control: Literal["any_column", "dataset"] = "dataset"
    calibration_max_reference_rows: int | None = Field(default=20000, ge=100)
    cusum: bool = True
    benign_offset_sd: float = Field(default=0.015, ge=0, le=1)
    min_labelled_rows: int = Field(default=10, ge=2)
    reference_delta: float | None = Field(default=None, gt=0, lt=0.5)
    # above tasksim.drift.sequential.EWMA_LAMBDA (0.3), the slow scale it is combined with
    label_fast_lambda: float | None = Field(default=None, gt=0.3, le=1)


class RankingConfig(_Frozen):
    """Multi-criteria ranking and switch policy.

    ``weights`` (criterion -> weight) are merged over ``tasksim.rank.DEFAULT_WEIGHTS``; each criterion
    is normalised across sources (``normalization``) and aggregated by ``method``.
    ``bootstrap_rounds`` resamples the target rows to give each source a probability of being best;
    with ``reliability_weighting``, the same rounds (and the standard errors the profile carries)
    scale each criterion's weight by the share of its spread across sources that is not noise;
    a switch needs the new best to lead by ``switch_margin`` with probability >= ``min_confidence``.
    ``unweighted_every``: the costly shared-space measures the composite does not weigh (weight 0:
    ``tasksim.profile.CARRIED_MEASURES``, e.g. the domain classifier and OTDD) are measured afresh for
    each source once every this many cycles (staggered across sources) and in every window with
    drift; in between, a source carries its last value, and ``explain`` and the run JSON say from
    which cycle and window (1: every measure in every cycle). Default 8 (was 4 until issue 15's
    sixth pass; these measures enter neither the composite, the top-1 probabilities nor the
    recommendation, so the longer cadence only lets a reported value be up to 7 cycles old in
    windows without drift: docs/benchmarks.md "Sixth pass").
    """

    weights: dict[str, float] = Field(default_factory=dict)
    method: Literal["weighted_sum", "topsis"] = "weighted_sum"
    normalization: Literal["minmax", "rank", "robust_z"] = "robust_z"
    negative_transfer_guard: bool = True
    switch_margin: float = Field(default=0.05, ge=0)
    min_confidence: float = Field(default=0.6, ge=0, le=1)
    bootstrap_rounds: int = Field(default=30, ge=0, le=10000)
    unweighted_every: int = Field(default=8, ge=1, le=1000)
    reliability_weighting: bool = True
    allowed_licences: tuple[str, ...] | None = None
    excluded_access: tuple[str, ...] = ("unavailable",)

    @field_validator("weights")
    @classmethod
    def _known_and_non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(k for k in v if k not in catalog.DIRECTIONS)
        if unknown:
            raise ValueError(f"unknown criteria {unknown}; known: {', '.join(sorted(catalog.DIRECTIONS))}")
        bad = {k: w for k, w in v.items() if w < 0}
        if bad:
            raise ValueError(f"weights must be >= 0, got {bad}")
        return v


class RetentionConfig(_Frozen):
    """What the state store keeps: the newest ``cycles`` cycles and those of the last ``days`` days
    (a cycle goes when either limit drops it; None: no limit). Pruned in each cycle's transaction.
    Counters stay monotone; decisions that changed the recommendation are kept (see tasksim.store)."""

    cycles: int | None = Field(default=None, ge=1)
    days: float | None = Field(default=None, gt=0)


class MetricsConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)


class PrefectConfig(_Frozen):
    """The Prefect server the daemon starts (unless ``$PREFECT_API_URL`` already points at one)."""

    host: str = "127.0.0.1"
    port: int = Field(default=4200, ge=1, le=65535)
    flow_timeout: timedelta = timedelta(minutes=30)
    retries: int = Field(default=1, ge=0, le=10)
    startup_timeout: timedelta = timedelta(seconds=120)

    _parse = field_validator("flow_timeout", "startup_timeout", mode="before")(lambda cls, v: parse_duration(v))


STRATEGIES = ("linear_probe", "lp_ft", "surgical_first", "surgical_middle", "surgical_last", "full", "lora")


class ExecutionConfig(_Frozen):
    """Where an experiment's trials run (``flows/experiment.py``): the default is Prefect's
    thread-pool task runner in the flow's process. ``dask``: a Dask scheduler address
    (``tcp://host:8786``) or a local-cluster spec (``{n_workers: 2, threads_per_worker: 1}``) puts
    the trials on prefect-dask's ``DaskTaskRunner`` (``pip install prefect-dask``)."""

    dask: str | dict[str, Any] | None = None

    @field_validator("dask")
    @classmethod
    def _dask(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(v, str) and "://" not in v:
            raise ValueError(f"expected a scheduler address such as tcp://127.0.0.1:8786, got {v!r}")
        if isinstance(v, dict):
            known = {"n_workers", "threads_per_worker", "processes", "memory_limit"}
            unknown = sorted(set(v) - known)
            if unknown:
                raise ValueError(f"unknown local-cluster keys {unknown}; known: {', '.join(sorted(known))}")
        return v


class AutoExperimentConfig(_Frozen):
    """Experiments started by the daemon without being asked (``tasksim.autoexp``): when a cycle
    recommends (or proposes, under ``require_validation``) a switch, or when drift persisted for
    ``drift_windows`` consecutive windows (0: never on drift). Debounced: not while an experiment
    runs, not within ``min_interval`` of the previous automatic request, and at most
    ``max_per_day`` automatic requests in any 24 hours. Each run is bounded by the experiment's own
    ``budget`` and ``max_trials``. The daemon starts it on the ``tasksim-experiment`` deployment and
    does not wait for it: the monitoring schedule goes on."""

    enabled: bool = False
    on_switch: bool = True
    drift_windows: int = Field(default=3, ge=0, le=1000)
    min_interval: timedelta = timedelta(hours=6)
    max_per_day: int = Field(default=2, ge=0, le=1000)

    _parse = field_validator("min_interval", mode="before")(lambda cls, v: parse_duration(v))


class ExperimentConfig(_Frozen):
    """Transfer experiments (``tasksim experiment``; ``tasksim.experiment``): budgeted fine-tuning
    trials of the deployed source and the ``top_k`` ranked sources on the labelled production rows.

    ``budget`` (wall time) and ``max_trials`` bound one experiment; ``seeds`` seeds per (source,
    strategy) when ``max_trials`` allows every pair that many times, else one. ``split`` is the
    train / validation / test share of the labelled rows (stratified, fixed for the experiment).
    ``learning_rates`` overrides the body learning rate per strategy. ``require_validation``: a
    switch is made only when the newest experiment on that switch validated it. ``refine_weights``:
    the ranking's weights are multiplied by factors in [0.5, 2] learnt from how well each measure
    predicted this deployment's trial outcomes (``tasksim.weightfit``). ``auto``: automatic runs.
    """

    top_k: int = Field(default=2, ge=1, le=20)
    strategies: tuple[Literal["linear_probe", "lp_ft", "surgical_first", "surgical_middle", "surgical_last",
                              "full", "lora"], ...] = STRATEGIES
    seeds: int = Field(default=3, ge=1, le=10)
    budget: timedelta = timedelta(minutes=20)
    max_trials: int = Field(default=200, ge=0)
    max_epochs: int = Field(default=20, ge=1, le=1000)
    patience: int = Field(default=3, ge=1, le=100)
    batch_size: int = Field(default=32, ge=1)
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    learning_rates: dict[str, float] = Field(default_factory=dict)
    require_validation: bool = False
    refine_weights: bool = True
    auto: AutoExperimentConfig = AutoExperimentConfig()

    _parse_budget = field_validator("budget", mode="before")(lambda cls, v: parse_duration(v))

    @field_validator("strategies")
    @classmethod
    def _some_strategies(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("name at least one strategy")
        if len(set(v)) != len(v):
            raise ValueError(f"strategies appear more than once: {list(v)}")
        return v

    @field_validator("split")
    @classmethod
    def _shares(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"expected three positive shares (train, validation, test) summing to 1, got {list(v)}")
        return v

    @field_validator("learning_rates")
    @classmethod
    def _known_rates(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(k for k in v if k not in STRATEGIES)
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
        bad = {k: r for k, r in v.items() if not r > 0}
        if bad:
            raise ValueError(f"learning rates must be > 0, got {bad}")
        return v


class Config(_Frozen):
    """The whole configuration of one tasksim deployment."""

    name: str = Field(default="tasksim", pattern=_NAME_PATTERN)
    state_dir: Path
    production: ProductionConfig
    window: WindowConfig = WindowConfig()
    reference: ReferenceConfig
    sampling: SamplingConfig = SamplingConfig()
    encoder: EncoderConfig = EncoderConfig()
    sources: tuple[SourceConfig, ...] = Field(min_length=1)
    deployed_source: str
    schedule: ScheduleConfig = ScheduleConfig(interval=timedelta(minutes=5))
    drift: DriftConfig = DriftConfig()
    ranking: RankingConfig = RankingConfig()
    metrics: MetricsConfig = MetricsConfig()
    prefect: PrefectConfig = PrefectConfig()
    retention: RetentionConfig = RetentionConfig()
    experiment: ExperimentConfig = ExperimentConfig()
    execution: ExecutionConfig = ExecutionConfig()
    device: str = "auto"
    config_path: Path | None = None

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not _DEVICE.match(v.strip().lower()):
            raise ValueError(f"expected 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps', got {v!r}")
        return v.strip().lower()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sources: names must be unique, {dupes} appear more than once")
        if self.deployed_source not in names:
            raise ValueError(f"deployed_source: {self.deployed_source!r} is not one of the sources {names}")
        return self

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)


def _format_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "_")):
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative local paths absolute against the config's directory (URLs stay as they are)."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and "://" not in value and not Path(value).is_absolute():
            return str((base / value).resolve())
        return value

    raw = dict(raw)
    if "state_dir" in raw:
        raw["state_dir"] = fix(raw["state_dir"])
    for section in ("production", "reference"):
        if isinstance(raw.get(section), dict) and "path" in raw[section]:
            raw[section] = {**raw[section], "path": fix(raw[section]["path"])}
    if isinstance(raw.get("encoder"), dict) and "path" in raw["encoder"]:
        raw["encoder"] = {**raw["encoder"], "path": fix(raw["encoder"]["path"])}
    if isinstance(raw.get("sources"), list):
        sources = []
        for src in raw["sources"]:
            if isinstance(src, dict):
                src = dict(src)
                for key in ("path", "head"):
                    if key in src:
                        src[key] = fix(src[key])
                if isinstance(src.get("encoder"), dict) and "path" in src["encoder"]:
                    src["encoder"] = {**src["encoder"], "path": fix(src["encoder"]["path"])}
            sources.append(src)
        raw["sources"] = sources
    return raw


def load_config(path: str | Path) -> Config:
    """Read and validate the YAML config at ``path``; raise ``ConfigError`` with one clear line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(raw).__name__}")
    raw = _resolve_paths(raw, path.resolve().parent)
    raw["config_path"] = str(path.resolve())
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _format_location(tuple(err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        received = ""
        if (err["type"] != "missing" and "input" in err and not isinstance(err["input"], dict)
                and repr(err["input"]) not in message):
            received = f" (received {err['input']!r})"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        # model-level validators name their own field ("deployed_source: ...")
        prefix = "" if where == "(top level)" and re.match(r"^[\w.\[\]]+: ", message) else f"{where}: "
        raise ConfigError(f"{path}: {prefix}{message}{received}{more}") from None


def config_hash(config: Config) -> str:
    """A stable short hash of the effective configuration, recorded with every decision."""
    payload = config.model_dump(mode="json", exclude={"config_path"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
