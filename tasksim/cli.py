"""The front door: ``tasksim serve | run | trigger | rank | experiment | history | explain | demo | validate``.

Bad input (a config, data or state problem) prints one line to stderr and exits with code 2;
an unexpected error exits with code 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasksim import __version__
from tasksim.config import load_config
from tasksim.errors import ConfigError, TasksimError

__all__ = ["format_cycle", "format_experiment", "main"]

EXIT_BAD_INPUT = 2


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_cycle(summary: dict[str, Any]) -> str:
    """A readable report of one cycle (the JSON of ``tasksim run --format json`` in words)."""
    lines = []
    window = summary["window"]
    lines.append(f"cycle {summary.get('cycle_id')}: {summary['status']} in {summary['duration_seconds']:.1f}s"
                 f" on {summary.get('device')}")
    lines.append(f"window {window['start']} .. {window['end']}: {window['rows_sampled']} rows sampled of "
                 f"{window['rows_total']}, {window['rows_dropped_invalid']} invalid rows dropped")
    if summary.get("error"):
        lines.append(f"note: {summary['error']}")
    for skipped in window.get("files_skipped") or []:
        lines.append(f"skipped file {skipped['path']}: {skipped['reason']}")
    if summary.get("measures_not_computable"):
        lines.append(f"not computable for this window: {', '.join(summary['measures_not_computable'])}")
    drift = summary.get("drift")
    if drift and drift.get("tested") is False:
        lines.append("drift: not tested: " + "; ".join(drift.get("notes") or ["no test could run"]))
    elif drift:
        drifted = [c["column"] for c in drift.get("columns", []) if c.get("drifted")]
        verdict = f"DRIFT ({drift.get('kind', 'input')})" if drift.get("detected") else "no drift"
        fired = [t["name"] for t in drift.get("tests", []) if t.get("fired")]
        lines.append(f"drift: {verdict} ({len(drifted)}/{len(drift.get('columns', []))} columns, share "
                     f"{drift.get('share', 0):.2f}, method {drift.get('method')})"
                     + (f": {', '.join(drifted[:10])}" if drifted else "")
                     + (f"; tests fired: {', '.join(fired)}" if fired else ""))
    ranking = summary.get("ranking")
    sources = {s["source"]: s for s in summary.get("sources", [])}
    if ranking:
        keys = ["logme", "knn_accuracy", "mmd2", "frechet", "otdd", "label_shift"]
        keys = [k for k in keys if any(k in sources[r["source"]]["measures"] for r in ranking)]
        header = f"{'rank':>4}  {'source':<24} {'score':>6}  " + "  ".join(f"{k:>12}" for k in keys)
        lines.append("ranking:")
        lines.append(header)
        for r in ranking:
            m = sources[r["source"]]["measures"]
            lines.append(f"{r['rank']:>4}  {r['source']:<24} {r['score']:>6.3f}  "
                         + "  ".join(f"{_fmt(m[k]) if k in m else '-':>12}" for k in keys))
    for name, s in sources.items():
        if s["status"] != "ok":
            lines.append(f"source {name}: {s['status'].upper()}: {s['error']}")
    for name, why in (summary.get("excluded") or {}).items():
        if name not in sources or sources[name]["status"] == "ok":
            lines.append(f"source {name}: EXCLUDED: {why}")
    rec = summary.get("recommendation")
    if rec:
        lines.append(f"recommendation: {rec['action'].upper()} "
                     f"(deployed {rec['deployed_source']}, recommended {rec['recommended_source']})")
        lines.append(f"  why: {rec['rationale']}")
        plan = rec.get("fine_tune")
        if plan:
            lines.append(f"  fine-tune: {plan['strategy']} ({plan['trainable']}), lr {plan['learning_rate']:g}, "
                         f"weight decay {plan['weight_decay']:g}, {plan['regularisation']}"
                         + (", adapters" if plan["adapters"] else ""))
            for reason in plan["reasons"]:
                lines.append(f"    - {reason}")
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # before the heavy imports: a bad config fails fast
    from tasksim.cycle import run_cycle

    now = datetime.fromisoformat(args.now).replace(tzinfo=timezone.utc) if args.now else None
    result = run_cycle(config, now=now)
    summary = result.to_dict()
    if args.format == "text":
        print(format_cycle(summary), flush=True)
    auto = _auto_experiment(config, args, now)
    if args.format == "json":
        print(json.dumps({**summary, "automatic_experiment": auto} if auto else summary, indent=2, default=str))
    return 0


def _auto_experiment(config: Any, args: argparse.Namespace, now: datetime | None) -> dict[str, Any] | None:
    """After ``tasksim run``'s cycle: the automatic experiment (``experiment.auto``, the daemon's rule
    and debounce, ``autoexp.claim``) runs here, in process, once the cycle's summary is out. Without
    ``experiment.auto.enabled`` (or with ``--no-experiment``) a cycle that calls for one only says how
    to run it. Returns what was done, or None when nothing called for an experiment."""
    from tasksim import autoexp
    from tasksim.report import recorded_cycles

    auto = config.experiment.auto
    text = args.format == "text"
    command = f"tasksim experiment --config {args.config}"
    if not auto.enabled or args.no_experiment:
        k = max(auto.drift_windows, 1)
        latest = autoexp.signals(recorded_cycles(config.state_dir)[-(k + 5):])
        reason = autoexp.trigger_reason(latest, auto)
        if reason is None:
            return None
        why = "--no-experiment" if args.no_experiment else "experiment.auto.enabled is false"
        if text:
            print(f"\n{reason}: no automatic experiment ({why}); to test it with fine-tuning trials run: {command}")
        return {"started": False, "reason": reason, "why_not": why, "command": command}
    decision = autoexp.claim(config)
    if not decision.start:
        if text and decision.cycle_id is not None:
            print(f"\nautomatic experiment not started: {decision.reason}")
        return None if decision.cycle_id is None else {"started": False, "reason": decision.reason}
    from tasksim.experiment import run_experiment

    if text:
        print(f"\nautomatic experiment: {decision.reason}; running it now (budget "
              f"{config.experiment.budget.total_seconds():g}s; Ctrl-C stops it, the next run marks it interrupted)",
              flush=True)
    try:
        result = run_experiment(config, trigger=f"auto: {decision.reason}"[:200], now=now)
    except TasksimError as exc:  # the cycle succeeded: its exit status stays 0, the reason is printed
        print(f"tasksim: automatic experiment not run: {exc}", file=sys.stderr)
        return {"started": False, "reason": decision.reason, "error": str(exc)}
    if text:
        from tasksim.store import Store

        with Store(config.state_dir, readonly=True) as store:
            print(format_experiment(store.experiment(result.experiment_id)))
    return {"started": True, "reason": decision.reason, "experiment_id": result.experiment_id,
            "verdict": result.verdict, "tau": result.tau}


def _cmd_serve(args: argparse.Namespace) -> int:
    from tasksim.daemon import serve

    config = load_config(args.config)
    if args.metrics_host is not None:
        config = config.model_copy(update={"metrics": config.metrics.model_copy(update={"host": args.metrics_host})})
    serve(config, cycles=args.cycles, run_now=not args.no_run_now)
    return 0


def _cmd_trigger(args: argparse.Namespace) -> int:
    from tasksim.daemon import trigger

    outcome = trigger(load_config(args.config), wait=args.wait, experiment=args.experiment)
    if args.format == "json":
        print(json.dumps(outcome, indent=2))
    else:
        print(f"flow run {outcome['flow_run_name']} ({outcome['flow_run_id']}) of {outcome['deployment']}: "
              f"{outcome['state_name']}")
    return 0 if outcome["state"] in ("COMPLETED", "SCHEDULED", "PENDING", "RUNNING") else 1


def format_experiment(e: dict[str, Any], *, source: str | None = None) -> str:
    """One experiment (``Store.experiment``) in words: preregistration, trials (mean over seeds),
    outcome; with ``source``, that source's trials only."""
    pre = e["preregistration"]
    out = e.get("outcome") or {}
    when = datetime.fromtimestamp(e["created_at"], timezone.utc).strftime("%Y-%m-%d %H:%MZ")
    lines = [f"experiment {e['id']} ({e['trigger']}, {when}): {e['status']}"
             + (f", {e['verdict']}" if e.get("verdict") else "")
             + (f", weighted tau {e['tau']:.2f}" if e.get("tau") is not None else "")]
    lines.append(f"  predicted: {' > '.join(pre['predicted_order'])}; {pre['action']} -> "
                 f"{e['recommended_source']} with {e['advised_strategy']}")
    lines.append(f"  split {e['split_hash']} ({pre['split']['train']}/{pre['split']['validation']}/"
                 f"{pre['split']['test']} rows), {pre['seeds']} seed(s), code {pre['code_version']}")
    if out.get("outcome_order"):
        advised = ("best" if out.get("advised_best") else
                   "within 1 point" if out.get("advised_within_one_point") else "not within 1 point")
        lines.append(f"  outcome: {' > '.join(out['outcome_order'])}; best strategy for {e['recommended_source']}: "
                     f"{out.get('best_strategy')} (advised {e['advised_strategy']}: {advised})")
    if e["status"] == "interrupted":
        lines.append(f"  interrupted: {out.get('reason')}")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in e["trials"]:
        if source is None or t["source"] == source:
            groups.setdefault((t["source"], t["strategy"]), []).append(t)
    for (src, strategy), trials in groups.items():
        scores = [t["score"] for t in trials if t["status"] == "ok" and t["score"] is not None]
        if scores:
            mean = sum(scores) / len(scores)
            lines.append(f"  {src:<20} {strategy:<16} accuracy {mean:.3f} over {len(scores)} seed(s)"
                         + (f" (+{len(trials) - len(scores)} not ok)" if len(trials) > len(scores) else ""))
        else:
            lines.append(f"  {src:<20} {strategy:<16} {trials[0]['status']}: {trials[0].get('error')}")
    return "\n".join(lines)


def _cmd_experiment(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.budget:
        update = {"budget": _duration(args.budget)}
        config = config.model_copy(update={"experiment": config.experiment.model_copy(update=update)})
    from tasksim.experiment import run_experiment
    from tasksim.store import Store

    now = datetime.fromisoformat(args.now).replace(tzinfo=timezone.utc) if args.now else None
    result = run_experiment(config, trigger="cli", now=now)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    with Store(config.state_dir, readonly=True) as store:
        print(format_experiment(store.experiment(result.experiment_id)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tasksim.daemon import serve
    from tasksim.demo import build_demo_workspace

    workspace = Path(args.workspace).resolve()
    config_path = workspace / "tasksim.yaml"
    if not config_path.exists() or args.rebuild:
        print(f"building the demo workspace in {workspace} ...", file=sys.stderr)
        shutil.rmtree(workspace / "state", ignore_errors=True)  # a rebuilt stream starts a new history
        config_path = build_demo_workspace(workspace, small=args.small)
    if args.prebuild:  # an install step: fill the first cycle's caches, then stop
        from tasksim.demo import prebuild

        stages = prebuild(config_path)
        print("demo caches prebuilt (" + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()) + ")",
              file=sys.stderr)
        return 0
    config = load_config(config_path)
    _demo_fresh_start(config.state_dir, resume=args.resume)
    overrides: dict[str, Any] = {}
    if args.interval:
        overrides["schedule"] = config.schedule.model_copy(update={"interval": _duration(args.interval)})
    if args.metrics_port is not None or args.metrics_host is not None:
        overrides["metrics"] = config.metrics.model_copy(update={
            k: v for k, v in (("port", args.metrics_port), ("host", args.metrics_host)) if v is not None})
    if args.prefect_port is not None:
        overrides["prefect"] = config.prefect.model_copy(update={"port": args.prefect_port})
    if overrides:
        config = config.model_copy(update=overrides)
    print(f"demo config: {config_path}\nmetrics: http://{config.metrics.host}:{config.metrics.port}/metrics",
          file=sys.stderr)
    serve(config, cycles=args.cycles, stop_when_exhausted=True)
    return 0


def _demo_fresh_start(state_dir: Path, *, resume: bool) -> None:
    """A rerun of the demo replays the stream from the start: the previous run's store and Prefect
    database go, the embedding cache stays (so the replay is fast). ``--resume`` keeps them."""
    from tasksim.store import STORE_FILENAME

    store = state_dir / STORE_FILENAME
    if not store.exists():
        return
    if resume:
        print(f"demo: resuming the previous run ({store}); drop --resume to replay from the start", file=sys.stderr)
        return
    print("demo: replaying the stream from the start (the previous run's history and Prefect runs are removed, "
          "the embedding cache is kept; `tasksim demo --resume` continues where it stopped)", file=sys.stderr)
    for path in [*state_dir.glob(f"{STORE_FILENAME}*"), *(state_dir / "prefect").glob("prefect.db*")]:
        path.unlink(missing_ok=True)


def _duration(text: str) -> Any:
    from tasksim.config import parse_duration

    return parse_duration(text)


@contextmanager
def _read_store(state_dir: Path) -> Iterator[Any]:
    """The state store opened read-only (readers never write or lock it), or None before the first cycle."""
    from tasksim.store import STORE_FILENAME, Store

    if not state_dir.exists() or (state_dir.is_dir() and not (state_dir / STORE_FILENAME).exists()):
        yield None
        return
    with Store(state_dir, readonly=True) as store:
        yield store


def _cmd_history(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _read_store(config.state_dir) as store:
        records = store.decisions(limit=args.limit) if store else []
        experiments = store.experiments(limit=args.limit) if store else []
    if args.format == "json":
        print(json.dumps(records if not experiments else {"decisions": records, "experiments": experiments},
                         indent=2, default=str))
        return 0
    if not records:
        print("no decisions recorded yet")
    for r in records:
        mark = "*" if r.get("changed") else " "
        print(f"{mark} cycle {r['cycle_id']:>5}  {r.get('window_start')} .. {r.get('window_end')}  "
              f"{r['action']:<17} recommended {r.get('recommended_source')}  ({r['rationale']})")
    if experiments:
        print("\nexperiments (newest first):")
        for e in experiments:
            print(format_experiment(e))
    return 0


def _cmd_rank(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from tasksim.cycle import rank_now
    from tasksim.rank import Ranking

    now = rank_now(config)
    sampled, ranking = now.sampled, now.ranking
    placed = ranking or Ranking(entries=(), weights={}, excluded={})  # no ranking: every source unranked
    rows = []
    for p in now.profiles:
        entry = placed.entry_dict(p.source)
        rows.append({"source": p.source, "status": p.status, "error": p.error,
                     **{k: entry[k] for k in ("rank", "score", "top1_probability", "flags", "pareto")},
                     "measures": p.measures})
    rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0, r["source"]))
    if args.format == "json":
        print(json.dumps({"window": {"start": str(sampled.start), "end": str(sampled.end)},
                          "weights": ranking.weights if ranking else {},
                          "reliability": ranking.reliability if ranking else {}, "sources": rows},
                         indent=2, default=str))
        return 0
    measures = sorted({k for r in rows for k in r["measures"]})
    print(f"window {sampled.start} .. {sampled.end}, {sampled.window.table.num_rows} rows")
    print(f"{'rank':>4} {'source':<22} {'score':>6} {'p(top1)':>7}  flags")
    for r in rows:
        rank = "-" if r["rank"] is None else str(r["rank"])
        score = "-" if r["score"] is None else f"{r['score']:.3f}"
        top1 = "-" if r["top1_probability"] is None else f"{r['top1_probability']:.2f}"
        flags = ",".join(r["flags"] + (["pareto"] if r["pareto"] else [])) or ("" if r["status"] == "ok"
                                                                               else f"{r['status']}: {r['error']}")
        print(f"{rank:>4} {r['source']:<22} {score:>6} {top1:>7}  {flags}")
    print("\nprofile (raw measures):")
    print(f"{'measure':<24}" + "".join(f"{r['source'][:14]:>15}" for r in rows))
    for m in measures:
        print(f"{m:<24}" + "".join(f"{_fmt(r['measures'][m]) if m in r['measures'] else '-':>15}" for r in rows))
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.source not in {s.name for s in config.sources}:
        raise ConfigError(f"{args.config}: source {args.source!r} is not in the portfolio "
                          f"{[s.name for s in config.sources]}")
    with _read_store(config.state_dir) as store:
        decisions = store.decisions(limit=1) if store else []
        history = store.source_history(args.source, limit=args.limit) if store else []
        experiments = [e for e in (store.experiments(limit=args.limit) if store else [])
                       if any(t["source"] == args.source for t in e["trials"])]
    if args.format == "json":
        trials = [{"experiment_id": e["id"], **t} for e in experiments for t in e["trials"]
                  if t["source"] == args.source]
        print(json.dumps({"source": args.source, "last_decision": decisions[0] if decisions else None,
                          "history": history, "trials": trials}, indent=2, default=str))
        return 0
    if not history:
        print(f"{args.source}: no cycle has profiled this source yet")
    if experiments:
        print(f"trials of {args.source} (newest experiment first):")
        for e in experiments:
            print(format_experiment(e, source=args.source))
    if not history:
        return 0
    last = history[0]
    print(f"{args.source} in cycle {last['cycle_id']} (window {last['window_start']} .. {last['window_end']}): "
          f"{last['status']}" + (f": {last['error']}" if last["error"] else ""))
    if decisions:
        d = decisions[0]
        entry = next((e for e in d.get("ranking", []) if e["source"] == args.source), None)
        if entry:
            interval = entry.get("rank_interval")
            print(f"rank {entry['rank']} of {len(d['ranking'])}, score {entry['score']:.3f}"
                  + (f", best with probability {entry['top1_probability']:.2f}"
                     if entry.get("top1_probability") is not None else "")
                  + (f", 90% rank interval {interval[0]}-{interval[1]}" if interval else "")
                  + (f", flags: {', '.join(entry['flags'])}" if entry.get("flags") else ""))
            if entry.get("missing"):
                print(f"missing criteria: {', '.join(entry['missing'])} (scored on the others; they carry "
                      f"{1 - entry['completeness']:.0%} of the weight, which lowers its confidence)")
            weights = d.get("weights", {})
            total = sum(weights.values()) or 1.0
            print("criterion contributions (normalised value x weight share; 1 = best among the sources):")
            for criterion, value in sorted(entry.get("contributions", {}).items(),
                                           key=lambda kv: -weights.get(kv[0], 0) * kv[1]):
                raw = last["similarity"].get(criterion)
                raw_text = f"raw {_fmt(raw)}" if raw is not None else ""
                print(f"  {criterion:<22} {value:5.2f} x {weights.get(criterion, 0) / total:4.2f}  {raw_text}")
        carried = ((d.get("profile") or {}).get(args.source) or {}).get("carried") or {}
        if carried:
            print("carried from an earlier cycle (unweighted measures, measured afresh every "
                  f"{config.ranking.unweighted_every} cycles and in drifted windows; ranking.unweighted_every):")
            for m, origin in sorted(carried.items()):
                print(f"  {m:<22} {_fmt(last['similarity'].get(m))}  measured in cycle {origin.get('cycle')} "
                      f"(window {origin.get('window_start')})")
        print(f"decision: {d['action']} (recommended {d.get('recommended_source')}): {d['rationale']}")
    print("history (newest first):")
    for h in history:
        rank = "-" if h["rank"] is None else h["rank"]
        score = "-" if h["score"] is None else f"{h['score']:.3f}"
        print(f"  cycle {h['cycle_id']:>5} {h['window_start']}  rank {rank:>2}  score {score}  {h['status']}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from tasksim.report import write_report

    config = load_config(args.config)
    out = write_report(config.state_dir, args.out, cycle=args.cycle)
    print(f"report written to {out}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from tasksim.preflight import check_data_files, check_model_files

    try:  # model files the config can only name: loaded and checked here, not first in a cycle
        check_model_files(config)
    except ConfigError as exc:
        raise ConfigError(f"{args.config}: {exc}") from exc
    problems, notes = check_data_files(config)
    for note in notes:
        print(f"tasksim: note: {args.config}: {note}", file=sys.stderr)
    if problems:  # every bad source at once, one line each (a cycle would isolate them one by one)
        for problem in problems:
            print(f"tasksim: error: {args.config}: {problem}", file=sys.stderr)
        return 2
    print(f"{args.config}: ok ({len(config.sources)} sources, deployed {config.deployed_source})")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tasksim", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"tasksim {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("--config", "-c", required=True, help="path to tasksim.yaml")
        return sp

    sp = with_config("run", "run one cycle now, in process, without a server")
    sp.add_argument("--format", choices=["text", "json"], default="text")
    sp.add_argument("--now", help="pretend the current time is this ISO timestamp (UTC)")
    sp.add_argument("--no-experiment", action="store_true",
                    help="do not run the automatic experiment (experiment.auto) after the cycle; say how to run it")
    sp.set_defaults(func=_cmd_run)

    sp = with_config("serve", "run the daemon: Prefect server, scheduled deployment, /metrics")
    sp.add_argument("--cycles", type=int, default=None, help="exit after this many cycles")
    sp.add_argument("--no-run-now", action="store_true", help="wait for the schedule instead of running at start")
    sp.add_argument("--metrics-host", default=None,
                    help="metrics address, overriding metrics.host (0.0.0.0 inside a container)")
    sp.set_defaults(func=_cmd_serve)

    sp = with_config("trigger", "ask the running daemon for an immediate cycle")
    sp.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the run (0: do not wait)")
    sp.add_argument("--experiment", action="store_true",
                    help="run a transfer experiment (deployment tasksim-experiment/<name>) instead of a cycle")
    sp.add_argument("--format", choices=["text", "json"], default="text")
    sp.set_defaults(func=_cmd_trigger)

    sp = with_config("experiment", "test the recommendation: budgeted fine-tuning trials of the candidate sources")
    sp.add_argument("--format", choices=["text", "json"], default="text")
    sp.add_argument("--budget", default=None, help="wall-time budget overriding experiment.budget, e.g. 10m")
    sp.add_argument("--now", help="pretend the current time is this ISO timestamp (UTC)")
    sp.set_defaults(func=_cmd_experiment)

    sp = with_config("history", "show the decision log and the experiments, newest first")
    sp.add_argument("--limit", type=int, default=20)
    sp.add_argument("--format", choices=["text", "json"], default="text")
    sp.set_defaults(func=_cmd_history)

    sp = with_config("rank", "rank the sources now against the current window, with the full profile table")
    sp.add_argument("--format", choices=["text", "json"], default="text")
    sp.set_defaults(func=_cmd_rank)

    sp = with_config("explain", "why a source ranks where it does: contributions, flags, history")
    sp.add_argument("source")
    sp.add_argument("--limit", type=int, default=10)
    sp.add_argument("--format", choices=["text", "json"], default="text")
    sp.set_defaults(func=_cmd_explain)

    sp = with_config("report", "write a self-contained HTML report (ranking, profiles, drift, recommendation)")
    sp.add_argument("--cycle", type=int, default=None, help="as of this cycle id (default: the latest)")
    sp.add_argument("--out", default="report.html", help="output file (default: report.html)")
    sp.set_defaults(func=_cmd_report)

    sp = with_config("validate", "check a config file and exit")
    sp.set_defaults(func=_cmd_validate)

    sp = sub.add_parser("demo", help="build a demo workspace on real packaged data and serve it")
    sp.add_argument("--workspace", default="demo-workspace")
    sp.add_argument("--cycles", type=int, default=None, help="exit after this many cycles")
    sp.add_argument("--interval", default=None, help="schedule interval, e.g. 10s")
    sp.add_argument("--metrics-port", type=int, default=None)
    sp.add_argument("--metrics-host", default=None,
                    help="metrics address (default 127.0.0.1; 0.0.0.0 inside a container)")
    sp.add_argument("--prefect-port", type=int, default=None)
    sp.add_argument("--small", action="store_true", help="a smaller, faster workspace")
    sp.add_argument("--rebuild", action="store_true", help="rebuild the workspace even if it exists")
    sp.add_argument("--prebuild", action="store_true",
                    help="build the workspace and fill the caches its first cycle needs (source embeddings, "
                         "heads), then exit: an install step, so that the first ranking comes quickly")
    sp.add_argument("--resume", action="store_true",
                    help="continue the previous run's stream instead of replaying it from the start")
    sp.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "urllib3", "sentence_transformers", "filelock", "evidently"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        return int(args.func(args))
    except TasksimError as exc:
        if args.debug:
            raise
        print(f"tasksim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the front door: any unexpected error becomes one line (traceback with --debug)
        if args.debug:
            raise
        print(f"tasksim: unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
