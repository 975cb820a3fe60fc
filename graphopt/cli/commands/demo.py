"""``graphopt demo``: the seed post's workflow, replayed offline on a detector built on the spot."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

HELP = "replay the seed workflow offline: build an SSD/MobileNetV2 TF1 Hub module, wrap, save, optimize, compare"

SEED_BEFORE_MB, SEED_AFTER_MB = 122, 58  # the post's saved_model.pb sizes


def configure(parser) -> None:
    parser.add_argument("--workdir", metavar="DIR", help="work here and keep everything (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir and print where it is")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")


def run(args, ctx) -> int:
    from rich.markup import escape

    from graphopt import transform_spec
    from graphopt.demo.workflow import SEED_TRANSFORMS, run_workflow

    own_dir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="graphopt-demo-")) if own_dir else Path(args.workdir)
    out = ctx.err if args.json else ctx.console
    if not args.json:
        out.print("[bold]graphopt demo[/]: the seed post's workflow (TF1 + GTT, 2019), offline on TF 2.21\n"
                  "A TF1 Hub-format SSD/MobileNetV2 detector is built here (seeded weights,\n"
                  "no download), wrapped with a uint8 input_image and saved as-is, then\n"
                  "optimized with the seed's seven GTT transforms:", highlight=False)
        for spec in transform_spec.parse(SEED_TRANSFORMS):
            out.print(f"  [dim]{escape(transform_spec.format_step(spec.name, spec.args))}[/]", highlight=False)
        out.print()

    def progress(step) -> None:
        out.print(f"  [green]✓[/] {escape(step.name):<20} {escape(step.detail)} [dim]({step.seconds:.1f}s)[/]",
                  highlight=False, soft_wrap=True)

    try:
        result = run_workflow(workdir, progress=progress)
    finally:
        if own_dir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        ctx.console.print_json(json.dumps(result.to_dict(), default=str))
        return 0
    _render(ctx.console, result)
    if own_dir and args.keep or not own_dir:
        ctx.console.print(f"\nkept: {workdir} (module/, models/1 as-is, models/2.. optimized)", highlight=False)
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _render(console, result) -> None:
    from rich.table import Table

    table = Table(title="\nas-is vs optimized (saved_model.pb as TF Serving loads it)", title_justify="left")
    table.add_column("")
    table.add_column("as-is (models/1)", justify="right")
    for opt in result.optimizations:
        table.add_column(f"{opt.pipeline} ({Path(opt.path).name and 'models/' + Path(opt.path).name})",
                         justify="right")
    base = result.as_is_saved_model_bytes
    ok = [o for o in result.optimizations if not o.error]
    table.add_row("saved_model.pb", _mb(base),
                  *[f"{_mb(o.saved_model_bytes)} ({o.saved_model_bytes / base:.2f}x)" if not o.error else "failed"
                    for o in result.optimizations])
    table.add_row("variables/ files", str(result.as_is_variables_files), *[str(o.variables_files) if not o.error else "-" for o in result.optimizations])
    table.add_row("nodes", f"{result.as_is_nodes} ({result.loaded_nodes} after load)",
                  *[str(o.nodes) if not o.error else "-" for o in result.optimizations])
    for op in ("FusedBatchNorm", "Identity", "CheckNumerics", "Const", "Enter", "Exit", "NonMaxSuppressionV3"):
        table.add_row(op, str(result.as_is_ops[op]),
                      *[str(o.ops.get(op, 0)) if not o.error else "-" for o in result.optimizations])
    table.add_row("largest |difference|", "-",
                  *[f"{o.max_diff:.3g}" if not o.error else "-" for o in result.optimizations])
    table.add_row("classes equal", "-",
                  *[("yes" if o.classes_equal else "[red]NO[/]") if not o.error else "-" for o in result.optimizations])
    table.add_row("optimize time", "-", *[f"{o.seconds:.2f}s" for o in result.optimizations])
    console.print(table)

    seed = result.seed
    passes = Table(title=f"\n{seed.pipeline}: one line per transform (after graphopt.load)", title_justify="left")
    for col in ("pass", "status", "nodes", "graph bytes", "time", "ops changed"):
        passes.add_column(col, justify="right" if col in ("nodes", "graph bytes", "time") else "left",
                          no_wrap=col != "ops changed")
    for r in seed.records:
        delta = ", ".join(f"{op} {d:+d}" for op, d in sorted(r["ops_delta"].items(), key=lambda kv: kv[1])[:3])
        passes.add_row(r["name"], r["status"], f"{r['nodes_before']}->{r['nodes_after']}", f"{r['size_after']:,}",
                       f"{r['seconds']:.2f}s", delta)
    console.print(passes)
    for o in result.optimizations:
        if o.error:
            console.print(f"[yellow]{o.pipeline} failed:[/] {o.error}", highlight=False)
    if ok:
        console.print(f"\nsaved_model.pb: {_mb(base)} -> {_mb(seed.saved_model_bytes)} "
                      f"({seed.saved_model_bytes / base:.2f}x) with the seed's list; "
                      f"the post: {SEED_BEFORE_MB} MB -> {SEED_AFTER_MB} MB ({SEED_AFTER_MB / SEED_BEFORE_MB:.2f}x)",
                      highlight=False, soft_wrap=True)
        console.print(f"largest output difference on the same {'x'.join(map(str, result.image_shape))} image: "
                      f"{seed.max_diff:.3g} (classes {'equal' if seed.classes_equal else 'DIFFER'})",
                      highlight=False, soft_wrap=True)
