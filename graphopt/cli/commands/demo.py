"""``graphopt demo``: the seed post's workflow, replayed offline on a detector built on the spot."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

HELP = "replay the seed workflow offline: build an SSD/MobileNetV2 TF1 Hub module, wrap, save, optimize, compare"

SEED_BEFORE_MB, SEED_AFTER_MB = 122, 58  # the post's saved_model.pb sizes
MAX_DIFF = 1e-4  # float rounding of folded batch norms; anything above means the graph changed meaning


def configure(parser) -> None:
    parser.add_argument("--workdir", metavar="DIR", help="work here and keep everything (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir and print where it is")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")


def run(args, ctx) -> int:
    from rich.markup import escape

    from graphopt.demo.workflow import SEED_TRANSFORMS, run_workflow
    from graphopt.errors import VerificationError
    from graphopt.passes import transform_string as transform_spec

    own_dir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="graphopt-demo-")) if own_dir else Path(args.workdir)
    out = ctx.err if args.json else ctx.console
    if not args.json:
        out.print("[bold]graphopt demo[/]: the seed post's workflow (TF1 + GTT, 2019), offline on TF 2.21\n"
                  "A TF1 Hub-format SSD/MobileNetV2 detector is built here (seeded weights,\n"
                  "no download), wrapped with a uint8 input_image and saved as-is, then\n"
                  "optimized with the seed's seven GTT transforms:", highlight=False)
        for spec in transform_spec.parse(SEED_TRANSFORMS):
            assert isinstance(spec, transform_spec.StepSpec)  # the seed's list has no repeat groups
            out.print(f"  [dim]{escape(transform_spec.format_step(spec.name, spec.args))}[/]", highlight=False)
        out.print()

    def progress(step) -> None:
        mark = "[green]✓[/]" if step.ok else "[red]✗[/]"
        out.print(f"  {mark} {escape(step.name.ljust(24))} {escape(step.detail)} [dim]({step.seconds:.1f}s)[/]",
                  highlight=False, soft_wrap=True)

    try:
        result = run_workflow(workdir, progress=progress)
    finally:
        if own_dir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        ctx.console.print_json(json.dumps(result.to_dict(), default=str))
    else:
        _render(ctx.console, result)
        if own_dir and args.keep or not own_dir:
            ctx.console.print(f"\nkept: {workdir} (module/, models/1 as-is, models/2.. optimized)", highlight=False)
    seed = result.seed
    if seed.max_diff > MAX_DIFF or not seed.classes_equal:
        # the seed's list is lossless: a real difference means a transform broke the graph
        raise VerificationError(f"the optimized detector answers differently (largest difference {seed.max_diff:.3g}, "
                                f"classes {'equal' if seed.classes_equal else 'differ'})",
                                where=f"pipeline {seed.pipeline}", hint="rerun with --workdir DIR and compare "
                                "DIR/models/1 and DIR/models/2 with graphopt diff")
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _render(console, result) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="\nas-is vs optimized (saved_model.pb as TF Serving loads it)", title_justify="left",
                  box=box.SIMPLE_HEAD)
    table.add_column("", no_wrap=True)
    table.add_column("as-is\nmodels/1", justify="right")
    opts = result.optimizations
    for o in opts:
        table.add_column(o.pipeline + ("\nmodels/" + Path(o.path).name if o.path else "\nfailed"), justify="right")
    base = result.as_is_saved_model_bytes

    def cells(fn) -> list[str]:
        return [fn(o) if not o.error else "-" for o in opts]

    table.add_row("saved_model.pb", _mb(base), *cells(lambda o: _mb(o.saved_model_bytes)))
    table.add_row("  ratio", "1.00x", *cells(lambda o: f"{o.saved_model_bytes / base:.2f}x"))
    table.add_row("variables/ files", str(result.as_is_variables_files), *cells(lambda o: str(o.variables_files)))
    table.add_row("nodes", str(result.as_is_nodes), *cells(lambda o: str(o.nodes)))
    for op in ("FusedBatchNorm", "Identity", "CheckNumerics", "Const", "Enter", "Exit", "NonMaxSuppressionV3"):
        table.add_row(op, str(result.as_is_ops[op]), *cells(lambda o, op=op: str(o.ops.get(op, 0))))
    table.add_row("max |difference|", "-", *cells(lambda o: f"{o.max_diff:.2g}"))
    table.add_row("classes equal", "-", *cells(lambda o: "yes" if o.classes_equal else "[red]NO[/]"))
    table.add_row("optimize time", "-", *[f"{o.seconds:.2f}s" for o in opts])
    console.print(table)
    console.print(f"graphopt.load froze models/1 to the {result.loaded_nodes} nodes its signature needs "
                  f"(of {result.as_is_nodes}: the training branch goes there, before strip_unused_nodes).",
                  highlight=False, soft_wrap=True)
    whole = result.whole_graph
    if whole:
        console.print(f"As the post ran it (TransformGraph on the whole graph): {whole['nodes_before']} -> "
                      f"{whole['nodes_after']} nodes, {_mb(whole['graph_bytes_before'])} -> "
                      f"{_mb(whole['graph_bytes_after'])}, strip_unused_nodes removed {whole['strip_unused_removed']}; "
                      f"largest |difference| {whole['max_diff']:.3g}, classes "
                      f"{'equal' if whole['classes_equal'] else 'DIFFER'}.", highlight=False, soft_wrap=True)

    seed = result.seed
    console.print(f"\n[bold]{seed.pipeline}[/], one line per transform:", highlight=False)
    for r in seed.records:
        delta = ", ".join(f"{op} {d:+d}" for op, d in sorted(r["ops_delta"].items(), key=lambda kv: kv[1])[:3])
        console.print(f"  {r['name']:<22} {r['status']:<9} {r['nodes_before']:>4} -> {r['nodes_after']:<4} nodes "
                      f"{r['size_after'] / 1e6:6.2f} MB {r['seconds']:5.2f}s  [dim]{delta}[/]",
                      highlight=False, soft_wrap=True)
    for o in opts:
        if o.error:
            why = " (it has no remove_attribute(attribute_name=_class))" if o.pipeline == "gtt-deploy" else ""
            console.print(f"\n[yellow]{o.pipeline} failed{why}:[/] {escape(o.error)}", highlight=False,
                          soft_wrap=True)
    console.print(f"\nsaved_model.pb: {_mb(base)} -> {_mb(seed.saved_model_bytes)} "
                  f"({seed.saved_model_bytes / base:.2f}x) with the seed's list; "
                  f"the post: {SEED_BEFORE_MB} MB -> {SEED_AFTER_MB} MB ({SEED_AFTER_MB / SEED_BEFORE_MB:.2f}x)",
                  highlight=False, soft_wrap=True)
    console.print(f"largest output difference on the same {'x'.join(map(str, result.image_shape))} image: "
                  f"{seed.max_diff:.3g} (classes {'equal' if seed.classes_equal else 'DIFFER'})",
                  highlight=False, soft_wrap=True)
