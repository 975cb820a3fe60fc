"""``graphopt optimize SRC -o OUT``: load any model, run a pipeline of passes, verify, save it for serving.

The command only maps flags onto :func:`graphopt.optimizer.optimize` (the one
load -> pipeline -> verify -> write flow) and shows what it reports.
"""

from __future__ import annotations

from graphopt.cli.allow import add_allow_arguments, allowed_ops
from graphopt.errors import UsageError

HELP = "load a model, run transforms and passes on it, and save it for TF Serving"


def configure(parser) -> None:
    parser.add_argument("src", metavar="SRC", help="model: SavedModel/Hub folder, .pb, .pbtxt, .keras, .h5, "
                                                   "checkpoint prefix or .meta, or a TF Hub handle")
    parser.add_argument("-o", "--output", metavar="OUT", help="where to write the optimized model")
    parser.add_argument("--serving-dir", metavar="BASE",
                        help="also (or instead) export to BASE/<version>/ as TF Serving expects, with warm-up records")
    parser.add_argument("--version", type=int, metavar="N", help="version under --serving-dir (default: next free)")
    parser.add_argument("--target", metavar="NAME",
                        help="the runtime --serving-dir is written for: tfserving (default), or a target plugin's "
                             "(openvino, onnx...); each converts, verifies against the original and writes its "
                             "server's layout (docs/develop/writing-a-target.md)")
    parser.add_argument("--precision", metavar="P",
                        help="the target's precision (openvino: f32 default, bf16, int8 calibrated on --sample)")
    parser.add_argument("--no-warmup", action="store_true", help="write no assets.extra/tf_serving_warmup_requests")
    parser.add_argument("--transforms", metavar="SPEC",
                        help="GTT-style transform string or preset (default: preset 'serving', else 'gtt-seed')")
    parser.add_argument("--config", metavar="FILE",
                        help="read the pipeline from a TOML file (default: graphopt.toml, or pyproject.toml with "
                             "[tool.graphopt], in this folder or a parent; docs/guide/config.md)")
    parser.add_argument("--inputs", metavar="A,B", help="input tensors or nodes (override the signature)")
    parser.add_argument("--outputs", metavar="X,Y", help="output tensors or nodes (override the signature)")
    parser.add_argument("--signature", metavar="KEY", help="signature to load (default serving_default)")
    parser.add_argument("--tags", metavar="T1,T2", help="meta graph tags of a TF1 SavedModel ('' for the empty set)")
    parser.add_argument("--format", choices=["saved_model", "pb", "pbtxt"],
                        help="output format (default: from OUT's extension, else saved_model)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--keep-going", action="store_true", help="roll back a failing pass and go on")
    parser.add_argument("--strict", action="store_true",
                        help="with --keep-going: run every pass, then fail (exit 4, nothing written but --report) "
                             "if any was rolled back")
    parser.add_argument("--diff", action="append", metavar="PASS", default=None,
                        help="show what PASS changed (graph before vs after it; 'all' for every pass); repeatable; "
                             "also in --report")
    parser.add_argument("--input-shape", action="append", metavar="KEY=DIMS", default=None,
                        help="fix an input's shape before optimizing (image=1,224,224,3; 'sample': the shapes of "
                             "--sample) so shape arithmetic folds; the exported signature states it; repeatable")
    parser.add_argument("--explain", action="store_true",
                        help="after the pass table, say per candidate site of each pass's rules whether it "
                             "fired and why not (also in --report)")
    parser.add_argument("--report", metavar="FILE.json", help="write the per-pass records and verification as JSON")
    parser.add_argument("--no-verify", action="store_true", help="skip running both models to compare outputs")
    parser.add_argument("--tolerance", type=float, metavar="RTOL",
                        help="accepted relative difference (default: 1e-4, or the lossy passes' own)")
    parser.add_argument("--sample", metavar="FILE.npz", help="verification inputs, one array per input key")
    add_allow_arguments(parser, what="load, optimize and verify")


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def run(args, ctx) -> int:
    from graphopt.cli.render import printable, render_diff, render_explanations, render_report
    from graphopt.optimizer import optimize
    from graphopt.passes.pipeline import find_config

    if not args.output and not args.serving_dir:
        raise UsageError("nowhere to write the result", where="optimize", hint="give -o OUT and/or --serving-dir BASE")
    if args.config and args.transforms:
        raise UsageError("give --transforms or --config, not both", where="optimize")

    def say(line: str) -> None:  # paths and names in it come from the user and the model: escaped
        ctx.err.print(printable(line, newlines=True), highlight=False, markup=False, soft_wrap=True)

    config = args.config
    if config is None and args.transforms is None:
        config = find_config()  # like ruff and pytest: the nearest graphopt.toml / [tool.graphopt]
        if config is not None:
            say(f"using the pipeline of {config}")

    def show_pipeline(result) -> None:
        render_report(ctx.console, result)
        rolled = [r for r in result.rolled_back if r.rollback != "ignore_errors"]
        if rolled:  # a CI log shows stderr; the report says it under "rolled_back"
            ctx.err.print(f"warning: {len(rolled)} pass(es) failed and were rolled back (--keep-going): "
                          + "; ".join(f"{r.name}: {(r.error or '').splitlines()[0][:120]}" for r in rolled)
                          + ("" if args.strict else "; --strict makes this an error"),
                          style="yellow", highlight=False, markup=False, soft_wrap=True)
        for record in result.records if args.explain else []:
            if record.explanations:
                title = record.name + (f" #{record.iteration}" if record.iteration is not None else "")
                render_explanations(ctx.console, record.explanations, title=title)

    def show_target_verification(verification) -> None:
        ctx.console.print(f"{args.target} export, its runtime against the original:", highlight=False,
                          markup=False)
        show_verification(verification)

    def show_verification(verification) -> None:
        for i, line in enumerate(verification.lines()):
            style = ("green" if verification.passed else "bold red") if i == 0 else None
            ctx.console.print(printable(line, newlines=True), style=style, highlight=False, markup=False,
                              soft_wrap=True)

    from graphopt.security.sandbox import default_limits

    run = optimize
    extra = {}
    if default_limits().confined:  # the whole run in one confined child; this process never imports TensorFlow
        from graphopt.confined_run import optimize_confined

        run = optimize_confined  # type: ignore[assignment]
        extra = {"plugins": ctx.plugins, "allow_plugins": ctx.allow_plugins}
    else:
        extra = {"host": ctx.host}
    done = run(args.src, args.output, transforms=args.transforms, config=config, format=args.format,
             serving_dir=args.serving_dir, version=args.version, warmup=not args.no_warmup, report=args.report,
             verify=not args.no_verify, tolerance=args.tolerance, sample=args.sample,
             allow_unsafe=allowed_ops(args), keep_going=args.keep_going, force=args.force,
             signature=args.signature, tags=None if args.tags is None else _names(args.tags) or [],
             inputs=_names(args.inputs), outputs=_names(args.outputs), progress=say, **extra,
             explain=args.explain, on_pipeline_done=show_pipeline, on_verified=show_verification,
             target=args.target, precision=args.precision, on_target_verified=show_target_verification,
             input_shapes=args.input_shape, diff=args.diff, strict=args.strict)
    for name, iteration, diff in done.diffs:
        title = f"what {name}" + (f" (iteration {iteration})" if iteration is not None else "") + " changed"
        ctx.console.print(title, style="bold", highlight=False, markup=False)
        render_diff(ctx.console, diff)
    return 0
