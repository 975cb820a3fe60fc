"""``graphopt serve BASE``: a local development PredictionService (gRPC and REST) for smoke tests and CI.

Production is TensorFlow Serving (docs/guide/serving.md); this server exists so an
export can be checked end to end on machines without Docker. Clients are not
trusted: every limit below has a safe default (docs/guide/serving.md, "Hostile clients").
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from graphopt.cli.allow import add_allow_arguments, allowed_ops

HELP = "serve BASE's newest version over gRPC and REST for development and CI (production: TF Serving)"

_MB = 1 << 20


def configure(parser) -> None:
    from graphopt.serving.server import Limits

    d = Limits()
    parser.description = (
        "Load the newest version under BASE the way TF Serving does (tag 'serve', signatures by key, "
        "warm-up file replayed) and serve PredictionService Predict and GetModelMetadata over gRPC, plus "
        "REST predict and metadata. The model runs in a confined worker process: a request that hangs or "
        "crashes it is answered with an error and the worker restarts. A development server: use "
        "TensorFlow Serving in production.")
    parser.add_argument("base", metavar="BASE", help="model base directory holding integer versions (BASE/1/...)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0 picks a free one)")
    parser.add_argument("--rest-port", type=int, default=8501,
                        help="REST port (default 8501; 0 picks a free one; -1 turns REST off)")
    parser.add_argument("--model-name", metavar="NAME", help="name clients use (default: BASE's directory name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--version", type=int, metavar="N", help="serve version N instead of the newest")
    add_allow_arguments(parser, what="load and serve")
    parser.add_argument("--no-warmup", action="store_true",
                        help="do not replay assets.extra/tf_serving_warmup_requests")
    lim = parser.add_argument_group("limits (what one client may ask)")
    lim.add_argument("--deadline", type=float, default=d.deadline_s, metavar="S",
                     help=f"seconds a request may take, waiting included; past it: DEADLINE_EXCEEDED / 504 and the "
                          f"model's worker restarts (default {d.deadline_s:g}); warm-up records too")
    lim.add_argument("--max-in-flight", type=int, default=d.max_in_flight, metavar="N",
                     help=f"Predict calls admitted at once; more get RESOURCE_EXHAUSTED / 503 (default "
                          f"{d.max_in_flight})")
    lim.add_argument("--model-workers", type=int, default=d.model_workers, metavar="N",
                     help=f"confined worker processes per signature, each running one request at a time "
                          f"(default {d.model_workers})")
    lim.add_argument("--worker-memory-mb", type=int, default=d.worker_memory_mb, metavar="MB",
                     help="address-space limit of a model worker (default: the sandbox's)")
    lim.add_argument("--max-elements", type=int, default=d.max_elements, metavar="N",
                     help=f"tensor elements per request, checked on declared shapes before anything is allocated "
                          f"(default {d.max_elements:,})")
    lim.add_argument("--max-message-mb", type=int, default=d.max_message_bytes // _MB, metavar="MB",
                     help=f"largest gRPC request (default {d.max_message_bytes // _MB})")
    lim.add_argument("--max-json-mb", type=int, default=d.max_json_bytes // _MB, metavar="MB",
                     help=f"largest REST body (default {d.max_json_bytes // _MB})")
    lim.add_argument("--max-json-depth", type=int, default=d.max_json_depth, metavar="N",
                     help=f"deepest nesting of a REST body, checked before parsing (default {d.max_json_depth})")
    lim.add_argument("--io-timeout", type=float, default=d.io_timeout_s, metavar="S",
                     help=f"REST: a connection silent this long is closed (default {d.io_timeout_s:g})")
    lim.add_argument("--max-connections", type=int, default=d.max_connections, metavar="N",
                     help=f"REST connections open at once (default {d.max_connections})")


class _OneLine(logging.Formatter):
    """Each record on one line, an exception as its type and first line: a client never causes a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            first = str(exc).strip().splitlines()
            text += f" ({type(exc).__name__}: {first[0] if first else ''})"
        text = text.replace("\r", "\\r").replace("\n", "\\n")
        return f"{self.formatTime(record, '%Y-%m-%d %H:%M:%S')} {record.levelname.lower()} {text}"


def _limits(args):
    from graphopt.serving.server import Limits

    return Limits(deadline_s=args.deadline, max_in_flight=args.max_in_flight, model_workers=args.model_workers,
                  worker_memory_mb=args.worker_memory_mb, max_elements=args.max_elements,
                  max_message_bytes=args.max_message_mb * _MB, max_json_bytes=args.max_json_mb * _MB,
                  max_json_depth=args.max_json_depth, io_timeout_s=args.io_timeout,
                  max_connections=args.max_connections).validate()


def run(args, ctx) -> int:
    from graphopt.serving.server import DevServer

    allow = allowed_ops(args)
    limits = _limits(args)
    # Refused requests are logged one line each on stderr (server.py); this handler keeps it one line,
    # for gRPC's own loggers too.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    root = logging.getLogger()
    root.addHandler(handler)
    logging.getLogger("graphopt.serve").setLevel(logging.INFO if ctx.debug else logging.WARNING)
    try:
        server = DevServer(args.base, model_name=args.model_name, host=args.host, port=args.port,
                           rest_port=None if args.rest_port < 0 else args.rest_port, version=args.version,
                           warmup=not args.no_warmup, allow_unsafe=allow, limits=limits)
        ctx.err.print(f"loading {args.base} ...", highlight=False, markup=False)
        server.start()
        stop = threading.Event()
        # SIGTERM (a test fixture, a CI step, docker stop) ends the server cleanly, as Ctrl-C does.
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            m = server.model
            assert m is not None  # start() loaded it or raised
            rest = f", REST http://{args.host}:{server.rest_port}/v1/models/{m.name}" if server.rest_port else ""
            ctx.console.print(f"serving model {m.name} version {m.version} "
                              f"(signatures: {', '.join(sorted(m.signatures))}; warm-up requests replayed: "
                              f"{server.warmup_replayed}) on gRPC {args.host}:{server.grpc_port}{rest}",
                              highlight=False, markup=False, soft_wrap=True)
            ctx.err.print(f"[dim]development server: use TensorFlow Serving in production. Deadline "
                          f"{limits.deadline_s:g} s, {limits.max_in_flight} requests in flight, "
                          f"{limits.max_elements:,} elements per request. Ctrl-C stops.[/]")
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            server.stop()
    finally:
        root.removeHandler(handler)
    ctx.err.print("stopped", highlight=False)
    return 0
