"""``graphopt explain SRC PASS [--node NAME]``: for each candidate site of a pass, did it fire, and if not, why.

The sentences come from the pass itself (:func:`graphopt.rewrite.explain.explain`):
for rule-based passes, from the pattern matcher's own failure at that site,
e.g. ``FusedBatchNormV3 'bn3' not folded: its Conv2D 'conv3' also feeds 'branch/relu'``.
Nothing is written; the model on disk is only read.
"""

from __future__ import annotations

from graphopt.cli.commands.inspect import add_load_arguments, load_from_args

HELP = "say, for each candidate site of a pass (a rule or fold), whether it fired and why not"


def configure(parser) -> None:
    parser.add_argument("src", metavar="SRC", help="model: SavedModel/Hub folder, .pb, .pbtxt, .keras, .h5, "
                                                   "checkpoint prefix or .meta, or a TF Hub handle")
    parser.add_argument("pass_spec", metavar="PASS",
                        help="one pass, with options if any: fold_pad_into_conv, 'strip_debug_ops(op=Assert)'")
    parser.add_argument("--node", metavar="NAME", help="only the sites named NAME (in the graph or a function)")
    parser.add_argument("--json", action="store_true", help="print the explanations as JSON")
    add_load_arguments(parser)


def run(args, ctx) -> int:
    from graphopt.cli.render import render_explanations, render_json
    from graphopt.rewrite.explain import explain

    model = load_from_args(args.src, args)
    report = explain(model, args.pass_spec, node=args.node, host=ctx.host)
    if args.json:
        render_json(ctx.console, report.to_dict())
        return 0
    if report.note:
        ctx.console.print(report.note, highlight=False, markup=False, soft_wrap=True)
        return 0
    if not report.explanations:
        ctx.console.print(f"{report.pass_name}: no candidate site in this model", highlight=False, markup=False)
        return 0
    render_explanations(ctx.console, report.explanations, title=report.spec)
    return 0
