"""``graphopt serve`` under load with hostile requests mixed in (issue 11, item 6): throughput, latency, memory.

    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/serve_hostile.py [--requests 1000] [--concurrency 4]
        [--hostile 0 0.25 0.5] [--max-seconds 120] [--json]

Builds a small MLP (x float32 [None, 64] -> 128 -> 10), exports it, starts
``python -m graphopt serve`` on 127.0.0.1 (free ports, default limits) and runs
:func:`graphopt.serving.loadtest.run_load` over gRPC and REST for each hostile
fraction, sampling the server's resident memory (its worker included). Every
run is bounded by ``--requests`` and ``--max-seconds``; the server is stopped
at the end, and its stderr is checked for tracebacks and counted (one line per
refused request is expected). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def mlp():
    import tensorflow as tf

    from graphopt.model import Model, Signature, TensorSpec

    rng = np.random.default_rng(0)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 64], name="x")
        h = tf.nn.relu(tf.matmul(x, tf.constant(rng.standard_normal((64, 128)).astype(np.float32))))
        tf.nn.softmax(tf.matmul(h, tf.constant(rng.standard_normal((128, 10)).astype(np.float32))), name="probs")
    return Model(g.as_graph_def(), Signature(inputs={"x": TensorSpec("x:0", "float32", (None, 64))},
                                             outputs={"probs": TensorSpec("probs:0", "float32", (None, 10))}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--hostile", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from graphopt.serving.export import export_versioned
    from graphopt.serving.loadtest import run_load

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "mlp"
        export_versioned(mlp(), base, warmup=True)
        grpc_port, rest_port = free_port(), free_port()
        err_path = Path(tmp) / "server.stderr"
        with open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "graphopt", "serve", str(base), "--port", str(grpc_port),
                                     "--rest-port", str(rest_port), "--host", "127.0.0.1"],
                                    stdout=subprocess.DEVNULL, stderr=err)
            try:
                deadline = time.monotonic() + 300
                while True:
                    if proc.poll() is not None:
                        raise SystemExit(f"server exited: {err_path.read_text()}")
                    try:
                        socket.create_connection(("127.0.0.1", grpc_port), timeout=1).close()
                        socket.create_connection(("127.0.0.1", rest_port), timeout=1).close()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise SystemExit("server did not start") from None
                        time.sleep(0.5)
                x = {"x": np.random.default_rng(1).random((1, 64)).astype(np.float32)}
                for transport in ("grpc", "rest"):
                    rest = transport == "rest"
                    target = f"127.0.0.1:{rest_port if rest else grpc_port}"
                    for fraction in args.hostile:
                        stats = run_load(target, "mlp", inputs=x, concurrency=args.concurrency,
                                         requests=args.requests, rest=rest, hostile=fraction,
                                         max_seconds=args.max_seconds, server_pid=proc.pid, seed=0)
                        rows.append(stats)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        stderr = err_path.read_text(errors="replace")
    refused = sum(r["hostile"]["refused"] for r in rows)
    summary = {"runs": rows, "server_stderr_lines": len(stderr.splitlines()),
               "server_tracebacks": stderr.count("Traceback"), "hostile_refused_total": refused}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{'transport':9} {'hostile':>7} {'sent':>5} {'ok':>5} {'err':>4} {'rps':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'refused':>7} {'dropped':>7} {'accepted':>8} {'rss MB start/peak/end':>22}")
    for r in rows:
        h, m, lat = r["hostile"], r["server_memory"], r["latency_ms"]
        print(f"{r['transport']:9} {h['fraction']:7.2f} {r['sent']:5d} {r['ok']:5d} {r['errors']:4d} "
              f"{r['throughput_rps']:7.1f} {lat['p50'] or 0:7.2f} {lat['p99'] or 0:7.2f} {h['refused']:7d} "
              f"{h['dropped']:7d} {h['accepted']:8d} "
              f"{m['start_mb']:6.0f}/{m['peak_mb']:6.0f}/{m['end_mb']:6.0f}")
    print(f"server stderr: {summary['server_stderr_lines']} lines, {summary['server_tracebacks']} tracebacks; "
          f"{refused} hostile requests refused in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
