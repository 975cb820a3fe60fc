"""``graphopt optimize SRC -o OUT``: load any model, run a pipeline of passes, verify, save it for serving.

The command only wires things together: loading is :func:`graphopt.loaders.load`,
the pipeline :class:`graphopt.pipeline.Pipeline`, verification
:func:`graphopt.verify.reference_outputs` (the original, run before the pipeline)
and :func:`graphopt.verify.verify_result` (the result, after it), saving :func:`graphopt.savers.save` or
:func:`graphopt.serving.export.export_versioned`. Nothing is written until the
pipeline ran and the result was verified.
"""

from __future__ import annotations

import json
from pathlib import Path

from graphopt import memory
from graphopt.errors import OutputError, UsageError

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


def default_spec(host) -> str:
    return "serving" if "serving" in host.registry.presets else "gtt-seed"


def build_pipeline(args, host):
    from graphopt.pipeline import Pipeline

    if args.config and args.transforms:
        raise UsageError("give --transforms or --config, not both", where="optimize")
    if args.config:
        return Pipeline.from_config(args.config, host=host)
    return Pipeline.parse(args.transforms or default_spec(host), host=host)


def _allow(value) -> bool | list[str]:
    return value if isinstance(value, bool) else _names(value) or False


def run(args, ctx) -> int:
    from graphopt.cli.render import render_report
    from graphopt.loaders import load
    from graphopt.savers import check_destination, format_for, refuse_input_overlap, save

    if not args.output and not args.serving_dir:
        raise UsageError("nowhere to write the result", where="optimize", hint="give -o OUT and/or --serving-dir BASE")
    if args.version is not None and not args.serving_dir:
        raise UsageError("--version goes with --serving-dir", where="optimize")
    out = Path(args.output) if args.output else None
    fmt = format_for(out, args.format) if out else None
    pipeline = build_pipeline(args, ctx.host)  # bad transform strings fail before any loading
    tags = None if args.tags is None else _names(args.tags)
    if args.report and Path(args.report).exists() and not args.force:
        raise OutputError("the report file already exists", where=args.report, hint="pass --force to replace it")
    model = load(args.src, signature=args.signature, tags=tags, inputs=_names(args.inputs),
                 outputs=_names(args.outputs))
    if out:
        check_destination(model, out.absolute(), args.force)  # fail before the (slow) pipeline runs
    for other in (args.serving_dir, args.report):  # neither may write into (or over) the input either
        if other:
            refuse_input_overlap(model, Path(other))
    ctx.err.print(f"loaded {args.src} ({model.format}): {model.node_count} nodes, {model.size_bytes:,} bytes",
                  highlight=False, markup=False, soft_wrap=True)
    reference = None
    if not args.no_verify:
        from graphopt.verify import reference_outputs

        # The original runs now, before the pipeline: its outputs (one batch) are all verification needs
        # of it, so the original and optimized graphs never run, or need holding, at the same time.
        reference = reference_outputs(model, samples=args.sample, allow_unsafe=_allow(args.allow_unsafe_ops))
    result = pipeline.run(model, keep_going=args.keep_going)
    del model  # nothing below reads the original: its graph is garbage unless the pipeline kept it unchanged
    memory.release()
    render_report(ctx.console, result)
    verification = None
    if reference is not None:
        from graphopt.verify import verify_result

        verification = verify_result(reference, result, tolerance=args.tolerance, check=False,
                                     allow_unsafe=_allow(args.allow_unsafe_ops))
        del reference
        for i, line in enumerate(verification.lines()):
            style = ("green" if verification.passed else "bold red") if i == 0 else None
            ctx.console.print(line, style=style, highlight=False, markup=False, soft_wrap=True)
        verification.check()  # raises VerificationError (exit 5) before anything is written
    written = []
    if out:
        path = save(result.model, out, format=fmt, force=args.force)
        written.append(str(path))
        ctx.err.print(f"saved {fmt} to {path}: {result.model.node_count} nodes, {result.model.size_bytes:,} bytes",
                      highlight=False, markup=False, soft_wrap=True)
    if args.serving_dir:
        written.append(str(_export(args, result.model, ctx)))
    if args.report:
        report = {"source": args.src, "outputs": written, "format": fmt,
                  "signature": result.model.signature.to_dict(), **result.to_dict(),
                  "verification": verification.to_dict() if verification else None}
        Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    return 0


def _export(args, model, ctx) -> Path:
    """Versioned export, plus the session/platform config a pre-optimized model wants beside it."""
    from graphopt.serving.export import export_versioned
    from graphopt.serving_config import PLATFORM_CONFIG_FILE, recommended_optimizer

    samples = None
    if args.sample:
        from graphopt.verify import load_samples

        samples = load_samples(args.sample, model.signature)
    optimizer = recommended_optimizer(model)
    path = export_versioned(model, args.serving_dir, args.version, warmup=not args.no_warmup, samples=samples,
                            force=args.force, runtime_optimizer=optimizer)
    ctx.err.print(f"exported version {path.name} to {path} (runtime optimizer: {optimizer}; give TF Serving "
                  f"--platform_config_file={path / 'assets.extra' / PLATFORM_CONFIG_FILE})",
                  highlight=False, markup=False, soft_wrap=True)
    return path
