"""``graphopt inspect SRC [--json]``: signature, node count, op histogram, sizes, constants, unreachable nodes.

Loading is :func:`graphopt.loaders.load`; the numbers are
:func:`graphopt.analysis.stats.analyze`; the view is :func:`graphopt.cli.render.render_inspect`.
The JSON is ``GraphStats.to_dict()`` (schema in docs/guide/analysis.md).
"""

from __future__ import annotations

from graphopt.cli.allow import add_allow_arguments, allowed_ops

HELP = "show a model's signature, op histogram, sizes, largest constants and unreachable nodes"


def add_load_arguments(parser, *, prefix: str = "") -> None:
    """The load flags every command that reads a model accepts (same meaning as in ``optimize``)."""
    parser.add_argument(f"--{prefix}signature", metavar="KEY", help="signature to load (default serving_default)")
    parser.add_argument(f"--{prefix}tags", metavar="T1,T2",
                        help="meta graph tags of a TF1 SavedModel ('' for the empty set)")
    parser.add_argument(f"--{prefix}inputs", metavar="A,B", help="input tensors or nodes (override the signature)")
    parser.add_argument(f"--{prefix}outputs", metavar="X,Y", help="output tensors or nodes (override the signature)")
    if not prefix:  # loading may run a model's init ops: the same per-op opt-in as every command that runs one
        add_allow_arguments(parser, what="load")


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def load_from_args(src: str, args, *, prefix: str = ""):
    """Load ``src`` with the load flags of ``args`` (see :func:`add_load_arguments`)."""
    from graphopt.loaders import load

    get = lambda key: getattr(args, prefix.replace("-", "_") + key, None)  # noqa: E731
    tags = get("tags")
    return load(src, signature=get("signature"), tags=None if tags is None else _names(tags),
                inputs=_names(get("inputs")), outputs=_names(get("outputs")), allow_ops=allowed_ops(args))


def configure(parser) -> None:
    parser.add_argument("src", metavar="SRC", help="model: SavedModel/Hub folder, .pb, .pbtxt, .keras, .h5, "
                                                   "checkpoint prefix or .meta, or a TF Hub handle")
    add_load_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON (docs/guide/analysis.md)")
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="rows per list in the rich view")


def run(args, ctx) -> int:
    from graphopt.analysis.stats import analyze
    from graphopt.cli.render import render_inspect, render_json

    model = load_from_args(args.src, args)
    stats = analyze(model)
    if args.json:
        render_json(ctx.console, stats.to_dict())
    else:
        render_inspect(ctx.console, stats, limit=max(1, args.limit))
    return 0
