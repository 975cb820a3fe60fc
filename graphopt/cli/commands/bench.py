"""``graphopt bench``: several models side by side (size, nodes, cold start, warm latency, memory), or a live server."""

from __future__ import annotations

import json

from graphopt.cli.allow import add_allow_arguments, allowed_ops
from graphopt.errors import UsageError

HELP = "benchmark models side by side: size, nodes, cold start, warm latency, peak memory (or a server under load)"


def configure(parser) -> None:
    parser.add_argument("sources", nargs="*", metavar="SRC", help="models to compare; ratios are against the first")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per model first (default 3)")
    parser.add_argument("--signature", metavar="KEY", help="signature key (default serving_default)")
    parser.add_argument("--label", action="append", metavar="NAME", help="a name per SRC, in order")
    parser.add_argument("--sample", metavar="FILE.npz", help="inputs to run (default: generated from the signature)")
    parser.add_argument("--batch", type=int, default=1, help="size of unknown batch dimensions (default 1)")
    parser.add_argument("--dynamic", type=int, default=32, help="size of other unknown dimensions (default 32)")
    parser.add_argument("--grappler", default="full", metavar="MODE[,MODE...]",
                        help="runtime Grappler in the sessions: full (TF Serving's default), off, constfold, or "
                             "shipped (the session_config.pbtxt shipped with the model); one for all or one per "
                             "SRC, e.g. full,shipped")
    parser.add_argument("--no-cold", action="store_true", help="skip the fresh-process cold-start measurement")
    parser.add_argument("--cold-repeats", type=int, default=1, help="fresh processes per model (median)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="exports of targets (BASE written by optimize --target/--serving-dir): alternating "
                             "rounds of --runs calls, each runtime in its own process (default 3)")
    add_allow_arguments(parser, what="load and benchmark")
    srv = parser.add_argument_group("against a running PredictionService (TF Serving or graphopt serve)")
    srv.add_argument("--server", action="append", metavar="HOST:PORT", help="gRPC endpoint (repeat to compare)")
    srv.add_argument("--model", action="append", metavar="NAME[:VERSION]", help="model name (repeat to compare)")
    srv.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    srv.add_argument("--requests", type=int, default=200, help="requests per target (default 200)")
    srv.add_argument("--rest", action="store_true", help="HOST:PORT is the REST port (default: gRPC)")


def _grappler_flags(text: str, n: int) -> str | list[str]:
    modes = {"on": "full", "true": "full", "full": "full", "off": "off", "false": "off", "constfold": "constfold",
             "remap": "remap", "shipped": "shipped"}
    parts = [p.strip().lower() for p in text.split(",")]
    if any(p not in modes for p in parts):
        raise UsageError(f"--grappler takes full, off, constfold, remap or shipped (or a list of them), not {text!r}")
    if len(parts) == 1:
        return modes[parts[0]]
    if len(parts) != n:
        raise UsageError(f"--grappler lists {len(parts)} values for {n} models")
    return [modes[p] for p in parts]


def run(args, ctx) -> int:
    if args.server or args.model:
        return _run_server(args, ctx)
    if not args.sources:
        raise UsageError("give at least one model (SRC) or --server/--model", where="graphopt bench")
    from graphopt.targets.timing import is_export

    if any(is_export(s) for s in args.sources):  # exports of runtime targets: one worker process per runtime
        return _run_targets(args, ctx)
    from graphopt.bench import bench

    allow = allowed_ops(args)
    with ctx.err.status(f"benchmarking {len(args.sources)} model(s)..."):
        report = bench(args.sources, labels=args.label, runs=args.runs, warmup=args.warmup,
                       grappler=_grappler_flags(args.grappler, len(args.sources)), cold=not args.no_cold,
                       cold_repeats=args.cold_repeats, signature=args.signature, samples=args.sample,
                       batch=args.batch, dynamic=args.dynamic, allow_unsafe=allow)
    if args.json:
        ctx.console.print_json(json.dumps(report.to_dict()))
        return 0
    ctx.console.print(render_report(report))
    for note in report.notes:
        ctx.err.print(f"[yellow]note:[/] {note}", highlight=False)
    return 0


def _run_targets(args, ctx) -> int:
    from graphopt.cli.target_views import render_target_bench
    from graphopt.targets.timing import bench_exports

    with ctx.err.status(f"benchmarking {len(args.sources)} export(s), one worker process each..."):
        report = bench_exports(args.sources, labels=args.label, runs=args.runs, rounds=args.rounds,
                               warmup=args.warmup, cold_repeats=args.cold_repeats, samples=args.sample,
                               batch=args.batch, dynamic=args.dynamic)
    if args.json:
        ctx.console.print_json(json.dumps(report.to_dict(), default=str))
        return 0
    ctx.console.print(render_target_bench(report))
    for note in report.notes:
        ctx.err.print(f"[yellow]note:[/] {note}", highlight=False)
    return 0


def _mb(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}" if abs(n) >= 1e5 else f"{n / 1e6:.4f}"


def _ratio(r: float | None) -> str:
    if r is None:
        return ""
    style = "green" if r < 0.995 else "red" if r > 1.005 else "dim"
    return f" [{style}]{r:.2f}x[/]"


def render_report(report):
    """A rich table: one column per model, one row per figure, ratio to the first model beside each value."""
    from rich.table import Table

    m = report.machine
    title = (f"graphopt bench: {report.runs} interleaved runs after {report.warmup} warm-up; "
             f"{m.get('cpu')}, {m.get('cores')} cores; inputs {report.input_source}")
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for res in report.models:
        table.add_column(res.label, justify="right")
    rows = [
        ("size on disk MB", "disk_bytes", _mb),
        ("nodes", "nodes", lambda v: f"{v:,}"),
        ("constants MB", "const_bytes", _mb),
        ("cold: load s", "load_s", lambda v: f"{v:.3f}"),
        ("cold: first inference s", "first_run_s", lambda v: f"{v:.3f}"),
        ("cold: total s", "cold_s", lambda v: f"{v:.3f}"),
        ("peak memory MB (above TF)", "peak_rss_bytes", _mb),
        ("warm median ms", "median_ms", lambda v: f"{v:.2f}"),
        ("warm p90 ms", "p90_ms", lambda v: f"{v:.2f}"),
    ]
    for title_, name, fmt in rows:
        cells = []
        for res in report.models:
            v = res.value(name)
            cells.append("-" if v is None else fmt(v) + (_ratio(res.ratios.get(name)) if res is not report.models[0]
                                                          else ""))
        table.add_row(title_, *cells)
    table.add_row("runtime Grappler", *(r.grappler for r in report.models))
    table.add_row("format", *(r.format for r in report.models))
    return table


def _run_server(args, ctx) -> int:
    from graphopt.bench import bench_server

    servers = args.server or []
    models = args.model or []
    if not servers or not models:
        raise UsageError("--server HOST:PORT and --model NAME are both needed", where="graphopt bench",
                         hint="repeat --server or --model to compare targets side by side")
    if args.sources:
        raise UsageError("give either model files (SRC) or --server/--model, not both", where="graphopt bench")
    targets = [(s, m) for s in servers for m in models]
    with ctx.err.status(f"load testing {len(targets)} target(s)..."):
        rows = bench_server(targets, concurrency=args.concurrency, requests=args.requests,
                            signature=args.signature or "serving_default", samples=args.sample, batch=args.batch,
                            dynamic=args.dynamic, rest=args.rest)
    if args.json:
        ctx.console.print_json(json.dumps(rows, default=str))
        return 0
    ctx.console.print(render_server(rows, args.requests, args.concurrency, several_servers=len(servers) > 1))
    return 0


def render_server(rows: list[dict], requests: int, concurrency: int, *, several_servers: bool = False):
    """p50/p90/p99 and throughput per target, ratios against the first."""
    from rich.table import Table

    table = Table(title=f"graphopt bench --server: {requests} requests, concurrency {concurrency}",
                  title_justify="left")
    table.add_column("")
    for row in rows:
        table.add_column(f"{row['model']}\n{row['server']}" if several_servers else row["model"], justify="right")

    def figure(row: dict, key: str):
        return row.get("throughput_rps") if key == "throughput" else (row.get("latency_ms") or {}).get(key)

    first = rows[0]
    for label, key in [("p50 ms", "p50"), ("p90 ms", "p90"), ("p99 ms", "p99"), ("throughput req/s", "throughput")]:
        cells = []
        for row in rows:
            v, base = figure(row, key), figure(first, key)
            text = "-" if v is None else f"{v:.2f}"
            if v is not None and base and row is not first:
                text += _ratio(v / base)
            cells.append(text)
        table.add_row(label, *cells)
    table.add_row("ok / errors", *(f"{r.get('ok', '-')} / {r.get('errors', '-')}" for r in rows))
    return table
