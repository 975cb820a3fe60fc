"""``graphopt serving-config``: TF Serving's ``models.config`` for several models, plus the session/platform config."""

from __future__ import annotations

import json

from graphopt.errors import UsageError

HELP = "write TF Serving's models.config (several models, versions, labels) and session/platform config"


def configure(parser) -> None:
    parser.add_argument("--model", action="append", default=[], required=True, metavar="NAME=BASE",
                        help="a model and its base path as the server sees it (e.g. detector=/models/detector); repeat")
    parser.add_argument("--version", action="append", default=[], metavar="NAME=N[,M]",
                        help="serve these versions of NAME (default: the latest only)")
    parser.add_argument("--label", action="append", default=[], metavar="NAME:LABEL=VERSION",
                        help="a version label, e.g. detector:stable=2 (the version is also loaded)")
    parser.add_argument("--runtime-optimizer", choices=("off", "remap", "constfold", "full"),
                        default="off", help="Grappler at serving time in session/platform config: off (default) or "
                        "remap (only kernel fusion; what `optimize` ships for graphs with depthwise convs or Sigmoid) for "
                        "pre-optimized graphs, constfold after "
                        "weight compression, full for untouched graphs")
    parser.add_argument("--no-session-config", action="store_true",
                        help="write models.config only (the model was not pre-optimized)")
    parser.add_argument("--target", metavar="NAME", default="tfserving",
                        help="the server to configure: tfserving (models.config, default), openvino (OVMS's "
                             "config.json with each export's verified plugin_config), onnx (Triton's NAME/config.pbtxt)")
    parser.add_argument("--precision", metavar="P",
                        help="the precision whose settings to write when BASE is not a local export (default: the "
                             "export's own, read from BASE's newest version)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write the files into")
    parser.add_argument("--json", action="store_true", help="print JSON")


def parse_models(model_args: list[str], version_args: list[str], label_args: list[str]) -> list:
    """``ServedModel``s from the command-line forms ``NAME=BASE``, ``NAME=N,M`` and ``NAME:LABEL=VERSION``."""
    from graphopt.serving.model_config import ServedModel

    models: dict[str, ServedModel] = {}
    for spec in model_args:
        name, sep, base = spec.partition("=")
        if not sep or not name or not base:
            raise UsageError(f"bad --model {spec!r}", hint="write --model NAME=BASE")
        if name in models:
            raise UsageError(f"model {name} given twice")
        models[name] = ServedModel(name=name, base_path=base)

    def find(name: str, flag: str):
        if name not in models:
            raise UsageError(f"{flag} names unknown model {name!r}", hint=f"models: {', '.join(models)}")
        return models[name]

    for spec in version_args:
        name, sep, nums = spec.partition("=")
        try:
            versions = [int(v) for v in nums.split(",") if v.strip()]
        except ValueError:
            versions = []
        if not sep or not versions or min(versions) < 0:
            raise UsageError(f"bad --version {spec!r}", hint="write --version NAME=N or NAME=N,M")
        find(name, "--version").versions.extend(versions)
    for spec in label_args:
        head, sep, version = spec.partition("=")
        name, colon, label = head.partition(":")
        if not sep or not colon or not label or not version.isdigit():
            raise UsageError(f"bad --label {spec!r}", hint="write --label NAME:LABEL=VERSION, e.g. detector:stable=2")
        find(name, "--label").labels[label] = int(version)
    return list(models.values())


def run(args, ctx) -> int:
    from pathlib import Path

    from graphopt.serving.model_config import write_model_config

    models = parse_models(args.model, args.version, args.label)
    if args.target != "tfserving":
        return _run_target(args, ctx, models)
    written = {"models": str(write_model_config(args.output, models))}
    if not args.no_session_config:
        from graphopt.runtime.config import write_serving_config

        paths = write_serving_config(args.output, runtime_optimizer=args.runtime_optimizer)
        written.update({k: str(v) for k, v in paths.items()})
    if args.json:
        ctx.console.print_json(json.dumps({"files": written, "models": [m.__dict__ for m in models]}))
        return 0
    for kind, path in written.items():
        ctx.console.print(f"wrote {kind} config: {path}", highlight=False)
    out = Path(args.output)
    flags = ["--model_config_file=/config/models.config"]
    if "platform" in written:
        flags.append("--platform_config_file=/config/platform_config.pbtxt")
    ctx.console.print(f"[dim]docker run -p 8500:8500 -p 8501:8501 -v {out.resolve()}:/config "
                      f"-v <models>:<base paths> tensorflow/serving {' '.join(flags)}[/]",
                      highlight=False, soft_wrap=True)
    return 0


def _run_target(args, ctx, models) -> int:
    """Another target's server config, with the runtime settings each local export was verified with."""
    from pathlib import Path

    from graphopt.targets.base import Manifest, create_target, version_dir_of, write_atomic

    target = create_target(args.target, args.precision, host=ctx.host)
    settings = {}
    for m in models:
        vdir = version_dir_of(m.base_path)
        manifest = Manifest.read(vdir) if vdir.is_dir() else None
        if manifest is None:
            continue  # a base path as the server sees it: the settings of --precision
        if manifest.target != target.name:
            raise UsageError(f"model {m.name} is an export for target '{manifest.target}', not '{target.name}'",
                             where=str(vdir), hint=f"use --target {manifest.target}")
        if args.precision and args.precision != manifest.precision:
            raise UsageError(f"model {m.name} was exported and verified in {manifest.precision}, not {args.precision}",
                             where=str(vdir), hint="leave --precision out: the export's own settings are used")
        settings[m.name] = manifest.settings
    files = target.server_files(models, settings=settings)
    written = {name: str(write_atomic(Path(args.output) / name, text)) for name, text in files.items()}
    if args.json:
        ctx.console.print_json(json.dumps({"files": written, "models": [m.__dict__ for m in models],
                                           "settings": settings}))
        return 0
    for name, path in written.items():
        ctx.console.print(f"wrote {target.server or target.name} config {name}: {path}", highlight=False)
    return 0
