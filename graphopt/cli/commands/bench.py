"""``graphopt bench``: several models side by side (size, nodes, cold start, warm latency, memory), or a live server."""

from __future__ import annotations

import inspect
import json

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
    parser.add_argument("--allow-unsafe-ops", nargs="?", const=True, default=False, metavar="OP,OP",
                        help="run graphs holding file/Python/network ops (all, or only these)")
    srv = parser.add_argument_group("against a running PredictionService (TF Serving or graphopt serve)")
    srv.add_argument("--server", action="append", metavar="HOST:PORT", help="gRPC endpoint (repeat to compare)")
    srv.add_argument("--model", action="append", metavar="NAME[:VERSION]", help="model name (repeat to compare)")
    srv.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    srv.add_argument("--requests", type=int, default=200, help="requests per target (default 200)")


def _grappler_flags(text: str, n: int) -> str | list[str]:
    modes = {"on": "full", "true": "full", "full": "full", "off": "off", "false": "off", "constfold": "constfold",
             "shipped": "shipped"}
    parts = [p.strip().lower() for p in text.split(",")]
    if any(p not in modes for p in parts):
        raise UsageError(f"--grappler takes full, off, constfold or shipped (or a list of them), not {text!r}")
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
    from graphopt.bench import bench

    allow = args.allow_unsafe_ops
    if isinstance(allow, str):
        allow = [a.strip() for a in allow.split(",") if a.strip()]
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
    try:
        from graphopt.serving.loadtest import run_load
    except ImportError:
        raise UsageError("load testing a server needs graphopt.serving.loadtest, which this install lacks",
                         where="graphopt bench --server",
                         hint="update graphopt, or benchmark model files instead (graphopt bench SRC ...)") from None
    servers = args.server or []
    models = args.model or []
    if not servers or not models:
        raise UsageError("--server HOST:PORT and --model NAME are both needed", where="graphopt bench",
                         hint="repeat --server or --model to compare targets side by side")
    if args.sources:
        raise UsageError("give either model files (SRC) or --server/--model, not both", where="graphopt bench")
    targets = [(s, mdl) for s in servers for mdl in models]
    results = []
    with ctx.err.status(f"load testing {len(targets)} target(s)..."):
        for server, model in targets:
            results.append(_call_run_load(run_load, server, model, args))
    rows = [_as_dict(r) for r in results]
    if args.json:
        ctx.console.print_json(json.dumps([{"server": s, "model": m, **row} for (s, m), row in zip(targets, rows)],
                                          default=str))
        return 0
    from rich.table import Table

    table = Table(title=f"graphopt bench --server: {args.requests} requests, concurrency {args.concurrency}",
                  title_justify="left")
    table.add_column("")
    for server, model in targets:
        table.add_column(f"{model}\n{server}" if len(servers) > 1 else model, justify="right")
    first = rows[0]
    for label, keys, unit in [("p50 ms", ("p50_ms", "p50"), "ms"), ("p90 ms", ("p90_ms", "p90"), "ms"),
                              ("p99 ms", ("p99_ms", "p99"), "ms"),
                              ("throughput req/s", ("throughput", "throughput_rps", "rps"), "rps"),
                              ("errors", ("errors", "failed"), "")]:
        cells = []
        for row in rows:
            v = next((row[k] for k in keys if k in row), None)
            base = next((first[k] for k in keys if k in first), None)
            text = "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
            if v is not None and base and row is not first and unit:
                text += f" ({v / base:.2f}x)"
            cells.append(text)
        table.add_row(label, *cells)
    ctx.console.print(table)
    return 0


def _as_dict(result) -> dict:
    if hasattr(result, "to_dict"):
        return result.to_dict()
    if isinstance(result, dict):
        return result
    return dict(getattr(result, "__dict__", {}))


def _call_run_load(run_load, server: str, model: str, args):
    # Pass only what run_load accepts, so this keeps working as the load tester grows options.
    name, _, version = model.partition(":")
    wanted = {"server": server, "target": server, "address": server, "model": name, "model_name": name,
              "version": int(version) if version.isdigit() else None, "concurrency": args.concurrency,
              "requests": args.requests, "signature": args.signature or "serving_default",
              "signature_name": args.signature or "serving_default", "sample": args.sample, "samples": args.sample}
    params = inspect.signature(run_load).parameters
    kwargs = {k: v for k, v in wanted.items() if k in params and v is not None}
    return run_load(**kwargs)
