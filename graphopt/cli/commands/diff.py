"""``graphopt diff A B [--json]``: what changed between two models, node by node.

Both sides load through :func:`graphopt.loaders.load` with the same load flags
(``--signature``, ``--tags``, ``--inputs``, ``--outputs``); ``--b-signature`` etc.
override them for B. The diff is :func:`graphopt.analysis.diff.diff_models`; the JSON is
``GraphDiff.to_dict()`` (schema in docs/guide/analysis.md). Exit code 0 whether or not
the graphs differ; ``--exit-code`` makes a difference exit 1, like ``git diff``.
"""

from __future__ import annotations

from graphopt.cli.commands.inspect import add_load_arguments, load_from_args

HELP = "compare two models: nodes added, removed and changed, op histogram and size deltas"


def configure(parser) -> None:
    parser.add_argument("a", metavar="A", help="the model before (any format graphopt loads)")
    parser.add_argument("b", metavar="B", help="the model after")
    add_load_arguments(parser)
    add_load_arguments(parser, prefix="b-")
    parser.add_argument("--json", action="store_true", help="print the diff as JSON (docs/guide/analysis.md)")
    parser.add_argument("--by-name", action="store_true", help="match nodes by name only, not by structure")
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="rows per list in the rich view")
    parser.add_argument("--exit-code", action="store_true", help="exit 1 when the graphs differ")


def run(args, ctx) -> int:
    from graphopt.analysis.diff import diff_models
    from graphopt.cli.render import render_diff, render_json

    a = load_from_args(args.a, args)
    b_flags = any(getattr(args, f"b_{k}") is not None for k in ("signature", "tags", "inputs", "outputs"))
    b = load_from_args(args.b, args, prefix="b-" if b_flags else "")
    result = diff_models(a, b, a_label=args.a, b_label=args.b, structural=not args.by_name)
    if args.json:
        render_json(ctx.console, result.to_dict())
    else:
        render_diff(ctx.console, result, limit=max(1, args.limit))
    return 1 if args.exit_code and not result.identical else 0
