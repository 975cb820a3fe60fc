"""``graphopt optimize SRC -o OUT``: load any model, run a pipeline of passes, save it for serving.

The command only wires things together: loading is :func:`graphopt.loaders.load`,
the pipeline :class:`graphopt.pipeline.Pipeline`, saving :func:`graphopt.savers.save`.
"""

from __future__ import annotations

import json
from pathlib import Path

from graphopt.errors import OutputError, UsageError

HELP = "load a model, run transforms and passes on it, and save it for TF Serving"


def configure(parser) -> None:
    parser.add_argument("src", metavar="SRC", help="model: SavedModel/Hub folder, .pb, .pbtxt, .keras, .h5, "
                                                   "checkpoint prefix or .meta, or a TF Hub handle")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="where to write the optimized model")
    parser.add_argument("--transforms", metavar="SPEC",
                        help="GTT-style transform string or preset (default: preset 'serving', else 'gtt-seed')")
    parser.add_argument("--config", metavar="FILE", help="read the pipeline from a TOML file ([tool.graphopt])")
    parser.add_argument("--inputs", metavar="A,B", help="input tensors or nodes (override the signature)")
    parser.add_argument("--outputs", metavar="X,Y", help="output tensors or nodes (override the signature)")
    parser.add_argument("--signature", metavar="KEY", help="signature to load (default serving_default)")
    parser.add_argument("--tags", metavar="T1,T2", help="meta graph tags of a TF1 SavedModel ('' for the empty set)")
    parser.add_argument("--format", choices=["saved_model", "pb", "pbtxt"],
                        help="output format (default: from OUT's extension, else saved_model)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--keep-going", action="store_true", help="roll back a failing pass and go on")
    parser.add_argument("--report", metavar="FILE.json", help="write the per-pass records as JSON")


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def default_spec(host) -> str:
    return "serving" if "serving" in host.registry.presets else "gtt-seed"


def build_pipeline(args, host):
    from graphopt.pipeline import Pipeline

    if args.config and args.transforms:
        raise UsageError("give --transforms or --config, not both", where="optimize")
    if args.config:
        return Pipeline.from_config(args.config, host=host)
    return Pipeline.parse(args.transforms or default_spec(host), host=host)


def render_records(err, result) -> None:
    """One line per pass record: name, status, nodes and size after it."""
    for r in result.records:
        it = f" #{r.iteration}" if r.iteration else ""
        line = f"{r.name}{it}: {r.status}, {r.nodes_after} nodes, {r.size_after:,} bytes ({r.seconds:.2f}s)"
        if r.error:
            line += f" - {r.error}"
        err.print(line, highlight=False, markup=False, soft_wrap=True)


def run(args, ctx) -> int:
    from graphopt.loaders import load
    from graphopt.savers import check_destination, format_for, save

    out = Path(args.output)
    fmt = format_for(out, args.format)
    pipeline = build_pipeline(args, ctx.host)  # bad transform strings fail before any loading
    tags = None if args.tags is None else _names(args.tags)
    if args.report and Path(args.report).exists() and not args.force:
        raise OutputError("the report file already exists", where=args.report, hint="pass --force to replace it")
    model = load(args.src, signature=args.signature, tags=tags, inputs=_names(args.inputs),
                 outputs=_names(args.outputs))
    check_destination(model, out.absolute(), args.force)  # fail before the (slow) pipeline runs
    ctx.err.print(f"loaded {args.src} ({model.format}): {model.node_count} nodes, {model.size_bytes:,} bytes",
                  highlight=False, markup=False, soft_wrap=True)
    result = pipeline.run(model, keep_going=args.keep_going)
    render_records(ctx.err, result)
    path = save(result.model, out, format=fmt, force=args.force)
    ctx.err.print(f"saved {fmt} to {path}: {result.model.node_count} nodes, {result.model.size_bytes:,} bytes",
                  highlight=False, markup=False, soft_wrap=True)
    if args.report:
        report = {"source": args.src, "output": str(path), "format": fmt,
                  "signature": result.model.signature.to_dict(), **result.to_dict()}
        Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    return 0
