"""``graphopt optimize SRC -o OUT``: load any model, run a pipeline of passes, verify, save it for serving.

The command only maps flags onto :func:`graphopt.optimizer.optimize` (the one
load -> pipeline -> verify -> write flow) and shows what it reports.
"""

from __future__ import annotations

from graphopt.errors import UsageError

HELP = "load a model, run transforms and passes on it, and save it for TF Serving"


def configure(parser) -> None:
    parser.add_argument("src", metavar="SRC", help="model: SavedModel/Hub folder, .pb, .pbtxt, .keras, .h5, "
                                                   "checkpoint prefix or .meta, or a TF Hub handle")
    parser.add_argument("-o", "--output", metavar="OUT", help="where to write the optimized model")
    parser.add_argument("--serving-dir", metavar="BASE",
                        help="also (or instead) export to BASE/<version>/ as TF Serving expects, with warm-up records")
    parser.add_argument("--version", type=int, metavar="N", help="version under --serving-dir (default: next free)")
    parser.add_argument("--no-warmup", action="store_true", help="write no assets.extra/tf_serving_warmup_requests")
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
    parser.add_argument("--report", metavar="FILE.json", help="write the per-pass records and verification as JSON")
    parser.add_argument("--no-verify", action="store_true", help="skip running both models to compare outputs")
    parser.add_argument("--tolerance", type=float, metavar="RTOL",
                        help="accepted relative difference (default: 1e-4, or the lossy passes' own)")
    parser.add_argument("--sample", metavar="FILE.npz", help="verification inputs, one array per input key")
    parser.add_argument("--allow-unsafe-ops", nargs="?", const=True, default=False, metavar="OPS",
                        help="run graphs holding file/Python/network ops for verification (all, or OP1,OP2)")


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def _allow(value) -> bool | list[str]:
    return value if isinstance(value, bool) else _names(value) or False


def run(args, ctx) -> int:
    from graphopt.cli.render import render_report
    from graphopt.optimizer import optimize

    if not args.output and not args.serving_dir:
        raise UsageError("nowhere to write the result", where="optimize", hint="give -o OUT and/or --serving-dir BASE")
    if args.config and args.transforms:
        raise UsageError("give --transforms or --config, not both", where="optimize")

    def say(line: str) -> None:
        ctx.err.print(line, highlight=False, markup=False, soft_wrap=True)

    def show_verification(verification) -> None:
        for i, line in enumerate(verification.lines()):
            style = ("green" if verification.passed else "bold red") if i == 0 else None
            ctx.console.print(line, style=style, highlight=False, markup=False, soft_wrap=True)

    optimize(args.src, args.output, transforms=args.transforms, config=args.config, format=args.format,
             serving_dir=args.serving_dir, version=args.version, warmup=not args.no_warmup, report=args.report,
             verify=not args.no_verify, tolerance=args.tolerance, sample=args.sample,
             allow_unsafe=_allow(args.allow_unsafe_ops), keep_going=args.keep_going, force=args.force,
             signature=args.signature, tags=None if args.tags is None else _names(args.tags) or [],
             inputs=_names(args.inputs), outputs=_names(args.outputs), host=ctx.host, progress=say,
             on_pipeline_done=lambda result: render_report(ctx.console, result), on_verified=show_verification)
    return 0
