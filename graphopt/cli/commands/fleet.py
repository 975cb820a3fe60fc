"""``graphopt fleet models.config --out NEW_ROOT``: re-optimize, verify and benchmark every model a TF Serving config serves.

Maps flags onto :func:`graphopt.tuning.fleet.fleet`, shows one line per finished
model version, and prints the per-model summary table (docs/guide/scaling.md).
"""

from __future__ import annotations

import json
from typing import Any

HELP = "re-optimize every model and version of a TF Serving models.config, verified and benchmarked, into a new root"


def configure(parser) -> None:
    from graphopt.cli.allow import add_allow_arguments

    parser.add_argument("config", metavar="MODELS_CONFIG", help="TF Serving --model_config_file (text "
                                                               "ModelServerConfig, as graphopt serving-config writes)")
    parser.add_argument("--out", required=True, metavar="NEW_ROOT",
                        help="new repository: NEW_ROOT/<model>/<version>/ and NEW_ROOT/models.config")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--tune", action="store_true", help="search each model like graphopt tune")
    how.add_argument("--preset", metavar="P", help="apply this preset to every model (default: serving)")
    parser.add_argument("--runtime-optimizer", choices=("off", "remap", "constfold", "full"), default="full",
                        help="the server-wide runtime Grappler mode every model is verified, measured and served with "
                             "(default full, TF Serving's own; TF Serving has one session config per server)")
    parser.add_argument("--budget", type=float, metavar="MINUTES", help="with --tune: budget per model version")
    parser.add_argument("--tolerance", type=float, metavar="X", help="accepted relative output difference")
    parser.add_argument("--objective", choices=("latency", "size", "cold-start"), default="latency",
                        help="with --tune: what to minimise")
    parser.add_argument("--pipeline", action="append", metavar="SPEC", help="with --tune: pipelines to try (repeat)")
    parser.add_argument("--max-workers", type=int, metavar="N", help="candidates per heat, anchor included")
    parser.add_argument("--ray", metavar="ADDRESS", help="run each model version as a Ray task on a benchmark node "
                                                         "of its own: auto, HOST:PORT or local")
    parser.add_argument("--restart", action="store_true", help="discard the fleet log and start over")
    parser.add_argument("--no-retry", action="store_true", help="on a rerun, leave failed model versions failed")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_allow_arguments(parser, what="run")


def run(args, ctx) -> int:
    from graphopt.cli.allow import allowed_ops
    from graphopt.tuning.engine import make_engine
    from graphopt.tuning.fleet import FleetInterrupted, fleet
    from graphopt.tuning.search import TuneOptions

    options = TuneOptions(tolerance=args.tolerance, budget_minutes=args.budget, objective=args.objective,
                          allow_unsafe=allowed_ops(args), max_workers=args.max_workers)
    engine = make_engine(args.ray)
    try:
        with FleetProgress(ctx.err) as progress:
            result = fleet(args.config, args.out, tune=args.tune, preset=args.preset, options=options,
                           pipelines=args.pipeline, runtime_optimizer=args.runtime_optimizer, restart=args.restart,
                           retry=not args.no_retry, engine=engine, host=ctx.host, on_event=progress.event)
    except FleetInterrupted as stop:
        render_fleet(ctx.console, stop.result)
        ctx.err.print(f"[yellow]interrupted:[/] finished model versions are kept; run the same command again to "
                      f"resume ({stop.result.report.parent})", highlight=False)
        return 130
    finally:
        engine.close()
    if args.json:
        ctx.console.print_json(json.dumps(result.to_dict(), default=str))
    else:
        render_fleet(ctx.console, result)
    return 1 if any(j["status"] == "failed" for j in result.jobs) else 0


class FleetProgress:
    def __init__(self, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.task: Any = None

    def __enter__(self) -> "FleetProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        from rich.markup import escape

        if kind == "fleet":
            self.task = self.progress.add_task(f"{data['models']} model(s): model versions", total=max(data["jobs"], 1))
            if data.get("done"):
                self.console.print(f"  resuming: {data['done']} model version(s) already done", highlight=False)
        elif kind == "job_done":
            style = {"ok": "green", "kept": "cyan"}.get(data["status"], "red")
            new = data.get("new") or {}
            ratio = f"{new['ratio']:.3f}x the served version" if new.get("ratio") is not None else ""
            err = (data.get("error") or {}).get("message", "")
            self.console.print(f"  [{style}]{data['status']:6}[/] {escape(data['model'])} v{data['version']} "
                               f"{escape(new.get('label', ''))} {ratio} {escape(err)[:160]}", highlight=False)
            if self.task is not None:
                self.progress.advance(self.task)


def _mb(n: Any) -> str:
    return f"{n / 1e6:.3g}" if n else "-"


def render_fleet(console, result) -> None:
    """One row per model version: what runs now, what was exported, size and latency before -> after."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"fleet: {result.mode}, runtime Grappler {result.runtime.get('optimizer')} "
                        "(MB, ms: the new version; vs served: latency ratio, same heats)", title_justify="left",
                  show_edge=False, pad_edge=False)
    for col, kw in (("model", {"overflow": "fold", "min_width": 8}), ("v", {"justify": "right"}), ("status", {}),
                    ("variant", {"overflow": "fold", "min_width": 14}), ("MB", {"justify": "right"}),
                    ("ms", {"justify": "right"}), ("vs served", {"justify": "right"}), ("err", {"justify": "right"})):
        table.add_column(col, no_wrap=col not in ("model", "variant"), **kw)
    for j in result.jobs:
        new = j.get("new") or {}
        style = {"ok": "green", "kept": "cyan", "failed": "red"}.get(j["status"], "dim")
        spread = new.get("spread")
        ratio = (f"{new['ratio']:.3f}" + (f"±{spread:.2f}" if spread is not None and spread == spread else "")
                 if new.get("ratio") is not None else "-")
        err = new.get("max_rel")
        table.add_row(escape(j["model"]), str(j.get("version") or "-"), f"[{style}]{j['status']}[/]",
                      escape(new.get("label", "-")), _mb(new.get("disk_bytes")),
                      f"{new['median']:.3g}" if new.get("median") else "-", ratio,
                      "-" if err is None else ("0" if float(err) == 0 else f"{float(err):.0e}"))
    console.print(table)
    for j in result.jobs:
        if j["status"] != "ok":
            console.print(f"[{'cyan' if j['status'] == 'kept' else 'red'}]{escape(j['model'])} v{j.get('version') or '-'}:[/] "
                          f"{escape(str((j.get('error') or {}).get('message')))}", highlight=False, soft_wrap=True)
    counts = ", ".join(f"{n} {s}" for s, n in result.counts().items())
    console.print(f"{len(result.jobs)} model version(s): {counts}; {result.seconds:.0f} s, engine "
                  f"{result.engine.get('engine')}", highlight=False)
    for note in result.notes:
        console.print(f"[dim]{escape(note)}[/]", highlight=False, soft_wrap=True)
    if result.models_config:
        console.print(f"new config: {escape(str(result.models_config))} (with "
                      f"{', '.join(escape(p.name) for p in result.server_files[1:])})", highlight=False, soft_wrap=True)
    console.print(f"[dim]report {escape(str(result.report))}[/]", highlight=False, soft_wrap=True)
