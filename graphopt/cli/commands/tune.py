"""``graphopt tune SRC --out BASE``: search pipelines, targets, precisions and runtime settings for the best verified variant.

The command maps flags onto :func:`graphopt.tuning.tune`, shows its events as a
rich progress display on stderr, and prints the table of every trial. The search
itself is described in :mod:`graphopt.tuning.search` and docs/guide/tuning.md.
"""

from __future__ import annotations

import json
import math
from typing import Any

from graphopt.errors import UsageError

HELP = "search presets, targets, precisions and runtime settings for the fastest verified variant, and export it"


def configure(parser) -> None:
    from graphopt.cli.allow import add_allow_arguments

    parser.add_argument("src", metavar="SRC", help="the model (anything graphopt optimize reads)")
    parser.add_argument("--out", metavar="BASE", help="TF Serving / model-server base to export the winner to "
                                                      "(BASE/<version>/); the trial log goes to BASE/.graphopt-tune")
    parser.add_argument("--tolerance", type=float, metavar="X",
                        help="accepted relative output difference; without it only lossless variants are built")
    parser.add_argument("--sample", metavar="FILE.npz", help="verification (and int8 calibration) inputs")
    parser.add_argument("--budget", type=float, metavar="MINUTES",
                        help="wall-time budget (soft: the running step finishes; default: search everything)")
    parser.add_argument("--objective", choices=("latency", "size", "cold-start"), default="latency",
                        help="what to minimise among verified variants (default latency)")
    space = parser.add_argument_group("search space (default: everything the installed plugins offer)")
    space.add_argument("--pipeline", action="append", metavar="SPEC",
                       help="a preset or transform string to try (repeat; '' = no passes)")
    space.add_argument("--targets", metavar="A,B", help="targets to try (default: every registered target)")
    space.add_argument("--precisions", metavar="A,B", help="target precisions to try (default: all)")
    space.add_argument("--runtime-modes", metavar="A,B", help="TF Serving runtime Grappler modes "
                                                              "(default: off,remap,constfold,full)")
    space.add_argument("--threads", metavar="I/J,...", help="TF Serving intra/inter-op thread pairs "
                                                           "(default: 0/0, N/1 and N/2/1 for N cores)")
    run = parser.add_argument_group("how to run")
    run.add_argument("--ray", metavar="ADDRESS", help="run trials as Ray tasks: auto (a running cluster), "
                                                      "HOST:PORT, or local (needs pip install 'graphopt[ray]')")
    run.add_argument("--jobs", type=int, default=1, help="builds at a time on this machine (default 1)")
    run.add_argument("--max-workers", type=int, metavar="N",
                     help="candidates benchmarked side by side in one heat, anchor included (default: what memory "
                          "allows, at most 8)")
    run.add_argument("--workdir", metavar="DIR", help="trial log and artifacts (default BASE/.graphopt-tune)")
    run.add_argument("--version", type=int, metavar="N", help="version to export as (default: next free)")
    run.add_argument("--force", action="store_true", help="replace an existing version")
    run.add_argument("--restart", action="store_true", help="discard the trial log and start over")
    run.add_argument("--retry-failed", action="store_true", help="run failed builds again on resume")
    run.add_argument("--no-export", action="store_true", help="search and report only")
    run.add_argument("--keep-artifacts", action="store_true", help="keep every candidate's artifact")
    parser.add_argument("--signature", metavar="KEY", help="signature to load (default serving_default)")
    parser.add_argument("--inputs", metavar="A,B", help="input tensors or nodes (formats without a signature)")
    parser.add_argument("--outputs", metavar="X,Y", help="output tensors or nodes (formats without a signature)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_allow_arguments(parser, what="run")


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def parse_threads(text: str | None) -> list[tuple[int, int]] | None:
    if text is None:
        return None
    out = []
    for part in _split(text) or []:
        intra, sep, inter = part.partition("/")
        if not sep or not intra.isdigit() or not inter.isdigit():
            raise UsageError(f"bad thread pair {part!r}", where="--threads", hint="write INTRA/INTER, e.g. 0/0,2/1")
        out.append((int(intra), int(inter)))
    return out


def run(args, ctx) -> int:
    from graphopt.cli.allow import allowed_ops
    from graphopt.tuning import TuneInterrupted, TuneOptions, build_space, tune
    from graphopt.tuning.engine import make_engine

    if not args.out and not args.workdir:
        raise UsageError("nowhere to write", where="graphopt tune", hint="give --out BASE")
    if args.no_export and not args.workdir and not args.out:
        raise UsageError("--no-export needs --workdir or --out for the trial log")
    space = build_space(ctx.host, pipelines=args.pipeline, targets=_split(args.targets),
                        precisions=_split(args.precisions), runtime_modes=_split(args.runtime_modes),
                        threads=parse_threads(args.threads))
    options = TuneOptions(tolerance=args.tolerance, sample=args.sample, budget_minutes=args.budget,
                          objective=args.objective, signature=args.signature, inputs=_split(args.inputs),
                          outputs=_split(args.outputs), allow_unsafe=allowed_ops(args),
                          version=args.version, force=args.force, restart=args.restart,
                          retry_failed=args.retry_failed, export=not args.no_export, max_workers=args.max_workers,
                          keep_artifacts=args.keep_artifacts)
    engine = make_engine(args.ray, jobs=args.jobs)
    try:
        with TuneProgress(ctx.err) as progress:
            result = tune(args.src, args.out, options=options, space=space, workdir=args.workdir, engine=engine,
                          host=ctx.host, on_event=progress.event)
    except TuneInterrupted as stop:
        render_tune(ctx.console, stop.result)
        ctx.err.print(f"[yellow]interrupted:[/] what finished is in {stop.result.log}; run the same command again "
                      "to resume", highlight=False)
        return 130
    finally:
        engine.close()
    if args.json:
        ctx.console.print_json(json.dumps(result.to_dict(), default=str))
    else:
        render_tune(ctx.console, result)
    return 0 if result.winner is not None or args.no_export else 1


class TuneProgress:
    """A rich progress display fed by :func:`graphopt.tuning.tune`'s events (stderr, gone when done)."""

    def __init__(self, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.task: Any = None
        self.console = console

    def __enter__(self) -> "TuneProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def _task(self, description: str, total: int, completed: int = 0) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=max(total, 1), completed=completed)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        from rich.markup import escape

        if kind == "phase":
            self._task(f"{data['name']}", data.get("total", 1), data.get("done", 0))
        elif kind == "build_done":
            status = str(data.get("status"))
            style = {"ok": "green", "rejected": "yellow"}.get(status, "red")
            secs = data.get("seconds") or 0
            self.console.print(f"  [{style}]{status:8}[/] build {escape(data['label'])} ({secs:.0f} s)"
                               + (f": {escape(str((data.get('error') or {}).get('message', '')))[:120]}"
                                  if status == "failed" else ""), highlight=False)
            if self.task is not None:
                self.progress.advance(self.task)
        elif kind == "heats":
            self._task(f"{data['stage']}, rung {data['rung']}: {data['candidates']} candidate(s), "
                       f"{data['rounds']} rounds", data["heats"])
        elif kind == "round" and self.task is not None:
            self.progress.update(self.task, description=self.progress.tasks[-1].description.split(" [")[0]
                                 + f" [round {data['round']}/{data['rounds']}]")
        elif kind == "heat_done" and self.task is not None:
            self.progress.advance(self.task)
        elif kind == "pruned":
            self.console.print(f"  [dim]pruned  {escape(data['label'])}: {escape(data['reason'])}[/]", highlight=False)
        elif kind == "export":
            self.console.print(f"  [green]exported[/] {escape(data['label'])} to {escape(data['path'])}",
                               highlight=False)


_STYLE = {"winner": "bold green", "finalist": "cyan", "anchor": "bold", "pruned": "dim", "rejected": "yellow",
          "failed": "red", "not run": "dim"}


def _fmt_err(x: Any) -> str:
    if x is None:
        return "-"
    if x == "inf" or (isinstance(x, float) and math.isinf(x)):
        return "inf"
    return "0" if float(x) == 0 else f"{float(x):.1e}"


def render_tune(console, result) -> None:
    """The table of every trial, then what was exported and where the report is."""
    from rich.markup import escape
    from rich.table import Table

    unit = "s" if result.objective == "cold-start" else "ms"
    table = Table(title=f"tune {escape(str(result.source))} (objective: {result.objective})", title_justify="left",
                  show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("candidate", overflow="fold", min_width=20)
    table.add_column("err", justify="right", no_wrap=True)
    table.add_column("MB", justify="right", no_wrap=True)
    table.add_column(f"{'cold s' if unit == 's' else 'ms'} p10-p90", justify="right", no_wrap=True)
    table.add_column("vs exported", justify="right", no_wrap=True)
    for i, t in enumerate(result.trials, 1):
        f = t.figure
        size = f"{t.disk_bytes / 1e6:.2f}" if t.disk_bytes else "-"
        lat = f"{f.median:.3g} {f.p10:.3g}-{f.p90:.3g}" if f else "-"
        ratio = (f"{f.ratio:.3f}x" + (f" ±{f.spread:.3f}" if f.spread == f.spread else "")) if f else "-"
        table.add_row(str(i), f"[{_STYLE.get(t.status, '')}]{t.status}[/]", escape(t.candidate.label),
                      _fmt_err(t.max_rel), size, lat, ratio)
    console.print(table)
    # Reasons are sentences: below the table, one per trial, so the table stays readable at 80 columns.
    for i, t in enumerate(result.trials, 1):
        if t.reason:
            console.print(f"[dim]{i:>3}[/] {escape(t.reason)}", highlight=False, soft_wrap=True)
    counts = ", ".join(f"{n} {s}" for s, n in result.counts().items())
    console.print(f"{len(result.trials)} trials ({counts}) in {result.seconds:.0f} s, engine "
                  f"{result.engine.get('engine')}", highlight=False)
    if result.winner is not None:
        console.print(f"[bold green]winner:[/] {escape(result.winner.candidate.label)}", highlight=False)
    if result.exported is not None:
        console.print(f"exported to {escape(str(result.exported))}", highlight=False)
    for note in result.export_notes + result.notes:
        console.print(f"[dim]{escape(note)}[/]", highlight=False, soft_wrap=True)
    console.print(f"[dim]report {escape(str(result.report))}, Pareto plot {escape(str(result.plot))}, trial log "
                  f"{escape(str(result.log))}[/]", highlight=False, soft_wrap=True)
