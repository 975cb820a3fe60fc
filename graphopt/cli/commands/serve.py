"""``graphopt serve BASE``: a local development PredictionService (gRPC and REST) for smoke tests and CI.

Production is TensorFlow Serving (docs/serving.md); this server exists so an
export can be checked end to end on machines without Docker.
"""

from __future__ import annotations

import signal
import threading

HELP = "serve BASE's newest version over gRPC and REST for development and CI (production: TF Serving)"


def configure(parser) -> None:
    parser.description = (
        "Load the newest version under BASE the way TF Serving does (tag 'serve', signatures by key, "
        "warm-up file replayed) and serve PredictionService Predict and GetModelMetadata over gRPC, plus "
        "REST predict and metadata. A development server: use TensorFlow Serving in production.")
    parser.add_argument("base", metavar="BASE", help="model base directory holding integer versions (BASE/1/...)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0 picks a free one)")
    parser.add_argument("--rest-port", type=int, default=8501,
                        help="REST port (default 8501; 0 picks a free one; -1 turns REST off)")
    parser.add_argument("--model-name", metavar="NAME", help="name clients use (default: BASE's directory name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--version", type=int, metavar="N", help="serve version N instead of the newest")
    parser.add_argument("--allow-unsafe-ops", nargs="?", const=True, default=False, metavar="OP,OP",
                        help="serve graphs holding file/Python/network ops (all, or only these)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="do not replay assets.extra/tf_serving_warmup_requests")


def run(args, ctx) -> int:
    from graphopt.serving.server import DevServer

    allow = args.allow_unsafe_ops
    if isinstance(allow, str):
        allow = [a.strip() for a in allow.split(",") if a.strip()]
    server = DevServer(args.base, model_name=args.model_name, host=args.host, port=args.port,
                       rest_port=None if args.rest_port < 0 else args.rest_port, version=args.version,
                       warmup=not args.no_warmup, allow_unsafe=allow)
    ctx.err.print(f"loading {args.base} ...", highlight=False)
    server.start()
    stop = threading.Event()
    # SIGTERM (a test fixture, a CI step, docker stop) ends the server cleanly, as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        m = server.model
        rest = f", REST http://{args.host}:{server.rest_port}/v1/models/{m.name}" if server.rest_port else ""
        ctx.console.print(f"serving model [bold]{m.name}[/] version {m.version} "
                          f"(signatures: {', '.join(sorted(m.signatures))}; warm-up requests replayed: "
                          f"{server.warmup_replayed}) on gRPC {args.host}:{server.grpc_port}{rest}",
                          highlight=False, soft_wrap=True)
        ctx.err.print("[dim]development server: use TensorFlow Serving in production. Ctrl-C stops.[/]")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
    ctx.err.print("stopped", highlight=False)
    return 0
