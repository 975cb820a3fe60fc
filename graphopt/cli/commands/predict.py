"""``graphopt predict``: call Predict (or GetModelMetadata) on TF Serving or ``graphopt serve``, gRPC or REST."""

from __future__ import annotations

import json

from graphopt.errors import UsageError

HELP = "send a Predict request (or --metadata) to a PredictionService over gRPC (--server) or REST (--rest)"


def configure(parser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="HOST:PORT", help="gRPC endpoint (TF Serving: port 8500)")
    where.add_argument("--rest", metavar="HOST:PORT", help="REST endpoint (TF Serving: port 8501)")
    parser.add_argument("--model", required=True, metavar="NAME", help="model name on the server")
    parser.add_argument("--signature", default="serving_default", metavar="KEY", help="signature key")
    parser.add_argument("--version", type=int, metavar="N", help="model version (default: the server's latest)")
    parser.add_argument("--input", action="append", default=[], metavar="KEY=FILE",
                        help="an input from .npy, .npz, .json or an image (decoded to uint8 [1,h,w,3]); "
                             "repeat per input; a .npz or JSON object alone gives inputs by name")
    parser.add_argument("--metadata", action="store_true", help="show the model's signatures (GetModelMetadata)")
    parser.add_argument("--row", action="store_true", help="REST only: send row format (instances)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args, ctx) -> int:
    import numpy as np

    from graphopt.serving.client import GrpcClient, RestClient, tf_dtype_name
    from graphopt.serving.input_files import cast_inputs, parse_input_args

    client = (GrpcClient(args.server, timeout=args.timeout) if args.server
              else RestClient(args.rest, timeout=args.timeout))
    with client:
        meta = client.metadata(args.model, version=args.version)
        if args.metadata:
            return _show_metadata(meta, args, ctx)
        sig = meta["signatures"].get(args.signature)
        if sig is None:
            raise UsageError(f"model {args.model} has no signature {args.signature!r}",
                             hint=f"signatures: {', '.join(meta['signatures'])}")
        if not args.input:
            raise UsageError("no input given", hint=f"--input KEY=FILE for each of: {', '.join(sig['inputs'])}")
        dtypes = {k: tf_dtype_name(v["dtype"]) for k, v in sig["inputs"].items()}
        inputs = cast_inputs(parse_input_args(args.input), dtypes)
        missing = sorted(set(dtypes) - set(inputs))
        if missing:
            raise UsageError(f"no value for input {', '.join(missing)}", hint="add --input KEY=FILE")
        if isinstance(client, GrpcClient):
            outputs = client.predict(args.model, inputs, signature=args.signature, version=args.version)
        else:
            outputs = client.predict(args.model, inputs, signature=args.signature, version=args.version,
                                     row=args.row, output_keys=list(sig["outputs"]))
            # JSON numbers lose their dtype: give outputs the signature's.
            out_dtypes = {k: tf_dtype_name(v["dtype"]) for k, v in sig["outputs"].items()}
            outputs = {k: (v if out_dtypes.get(k) in (None, "string") else v.astype(out_dtypes[k]))
                       for k, v in outputs.items()}
    # in the signature's order (a gRPC response's map has none)
    outputs = {k: outputs[k] for k in [*sig["outputs"], *outputs] if k in outputs}
    if args.json:
        from graphopt.serving.rest import encode

        ctx.console.print_json(json.dumps({"model": args.model, "version": meta["version"], "signature": args.signature,
                                           "outputs": {k: {"dtype": str(v.dtype), "shape": list(np.shape(v)),
                                                           "value": encode(v)} for k, v in outputs.items()}}))
        return 0
    from rich.table import Table

    table = Table(title=f"{args.model} v{meta['version']} {args.signature}", title_justify="left")
    for col in ("output", "dtype", "shape", "values"):
        table.add_column(col)
    for k, v in outputs.items():
        a = np.asarray(v)
        flat = a.reshape(-1)
        preview = np.array2string(flat[:8], precision=4, separator=", ") + (" ..." if flat.size > 8 else "")
        table.add_row(k, str(a.dtype), str(list(a.shape)), preview)
    ctx.console.print(table)
    return 0


def _show_metadata(meta: dict, args, ctx) -> int:
    if args.json:
        ctx.console.print_json(json.dumps(meta))
        return 0
    from rich.table import Table

    table = Table(title=f"{meta['model']} v{meta['version']}", title_justify="left")
    for col in ("signature", "side", "key", "dtype", "shape"):
        table.add_column(col)
    for key, sig in meta["signatures"].items():
        for side in ("inputs", "outputs"):
            for k, info in sig[side].items():
                shape = "?" if info["shape"] is None else str([None if d < 0 else d for d in info["shape"]])
                table.add_row(key, side, k, info["dtype"], shape)
    ctx.console.print(table)
    return 0
