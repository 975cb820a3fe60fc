"""What closes TF's CPU latency gap inside TF's own runtime (issue 5, item 7).

    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/latency_headroom.py [--models MobileNetV2 ResNet50]
        [--runs 12] [--blocks 6] [--no-onnx] [--json]

For each model (keras.applications, weights=None, randomized batch-norm statistics,
224x224, batch 1) the parent process freezes the graph, builds the ``serving``
preset's graph (batch norms folded, Grappler pre-optimized for CPU) and, when
tf2onnx and onnxruntime are installed (optional, not graphopt dependencies),
converts the original frozen graph to ONNX.

Worker processes then time the variants. ``TF_ENABLE_ONEDNN_OPTS`` is read when
TensorFlow loads, so each setting (unset = TF's default, 0, 1) gets its own
worker; inside a worker the variants run interleaved, one call each per round.
Workers of the different settings are launched alternately ``--blocks`` times,
so slow phases of a shared machine hit every setting. Reported per variant: the
median and 10th percentile of all calls, the median over blocks of its ratio to
"today's TF" (original graph, runtime Grappler on, TF's default threads and
oneDNN setting) measured in the same block, and the median over blocks of its
ratio to the original graph in the same worker (same oneDNN setting, calls
interleaved in one process: the least noisy comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ONEDNN_SETTINGS = {"default": None, "onednn=0": "0", "onednn=1": "1"}
# (label, graph file, runtime Grappler, intra-op threads, inter-op threads)
TF_VARIANTS = [
    ("original, runtime Grappler", "original", True, 0, 0),
    ("serving (portable), runtime off", "serving", False, 0, 0),
    ("serving-onednn, runtime off", "serving_onednn", False, 0, 0),
    ("serving (portable), intra 2 / inter 1", "serving", False, 2, 1),
    ("serving (portable), intra 1 / inter 1", "serving", False, 1, 1),
]
ONEDNN_ONLY = {"serving_onednn"}  # its fused kernels exist only where oneDNN is on
BASELINE = ("default", "original, runtime Grappler")


def prepare(models: list[str], work: Path, onnx: bool) -> dict:
    """Freeze each model and write its graph variants (and ONNX file) into ``work``."""
    import keras
    import numpy as np

    from graphopt.passes.pipeline import Pipeline
    from graphopt.testing import frozen_keras, randomize_batch_norms

    info: dict = {}
    for name in models:
        keras.utils.set_random_seed(0)
        model = frozen_keras(randomize_batch_norms(getattr(keras.applications, name)(weights=None)))
        folder = work / name
        folder.mkdir(parents=True)
        graphs = {"original": model, "serving": Pipeline.parse("serving").run(model).model,
                  "serving_onednn": Pipeline.parse("serving-onednn").run(model).model}
        for key, m in graphs.items():
            (folder / f"{key}.pb").write_bytes(m.graph_def.SerializeToString())
        sig = model.signature
        entry = {"input": sig.inputs["input"].name, "output": sig.outputs["output"].name,
                 "shape": list(sig.inputs["input"].shape), "onnx": None}
        np.save(folder / "input.npy", np.random.default_rng(0).random(entry["shape"]).astype(np.float32))
        if onnx:
            entry["onnx"] = _to_onnx(model, folder / "original.onnx")
        info[name] = entry
    (work / "info.json").write_text(json.dumps(info))
    return info


def _to_onnx(model, path: Path) -> str | None:
    try:
        import tf2onnx
    except ImportError:
        return None
    sig = model.signature
    try:
        tf2onnx.convert.from_graph_def(model.graph_def, input_names=[sig.inputs["input"].name],
                                       output_names=[sig.outputs["output"].name], opset=17, output_path=str(path))
    except Exception as exc:  # an optional column: report why it is missing
        print(f"tf2onnx failed: {exc}", file=sys.stderr)
        return None
    return str(path)


def tf_worker(work: Path, runs: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from graphopt.passes.grappler import onednn_enabled
    from graphopt.runtime.config import session_config

    info = json.loads((work / "info.json").read_text())
    out: dict = {}
    for name, entry in info.items():
        x = np.load(work / name / "input.npy")
        sessions = []
        for label, graph, grappler, intra, inter in TF_VARIANTS:
            if graph in ONEDNN_ONLY and not onednn_enabled():
                continue
            gd = tf.compat.v1.GraphDef.FromString((work / name / f"{graph}.pb").read_bytes())
            g = tf.Graph()
            with g.as_default():
                tf.graph_util.import_graph_def(gd, name="")
            sess = tf.compat.v1.Session(graph=g, config=session_config("full" if grappler else "off", intra_op=intra,
                                                                       inter_op=inter))
            fetch, feed = g.get_tensor_by_name(entry["output"]), g.get_tensor_by_name(entry["input"])
            for _ in range(3):  # warm-up: executor built, runtime Grappler done, caches filled
                sess.run(fetch, {feed: x})
            sessions.append((label, sess, fetch, feed))
        times: dict[str, list[float]] = {label: [] for label, *_ in sessions}
        for _ in range(runs):
            for label, sess, fetch, feed in sessions:
                t0 = time.perf_counter()
                sess.run(fetch, {feed: x})
                times[label].append(time.perf_counter() - t0)
        for _, sess, *_ in sessions:
            sess.close()
        out[name] = times
    return out


def ort_worker(work: Path, runs: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    info = json.loads((work / "info.json").read_text())
    out: dict = {}
    for name, entry in info.items():
        if not entry["onnx"]:
            continue
        x = np.load(work / name / "input.npy")
        sessions = []
        for label, spinning in (("onnxruntime (tf2onnx)", "1"), ("onnxruntime, no spin-wait", "0")):
            options = ort.SessionOptions()
            # Spin-waiting threads are fast alone and slow on a shared machine: measure both.
            options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
            sess = ort.InferenceSession(entry["onnx"], options, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x}
            for _ in range(3):
                sess.run(None, feed)
            sessions.append((label, sess, feed))
        times: dict[str, list[float]] = {label: [] for label, *_ in sessions}
        for _ in range(runs):
            for label, sess, feed in sessions:
                t0 = time.perf_counter()
                sess.run(None, feed)
                times[label].append(time.perf_counter() - t0)
        out[name] = times
    return out


def _spawn(work: Path, kind: str, runs: int, onednn: str | None) -> dict:
    env = dict(os.environ)
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--work", str(work), "--runs", str(runs)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} {onednn} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(models: list[str], runs: int, blocks: int, onnx: bool) -> list[dict]:
    """Time every variant; ratios are paired by block so that load changes between blocks cancel out."""
    with tempfile.TemporaryDirectory(prefix="latency-headroom-") as tmp:
        work = Path(tmp)
        info = prepare(models, work, onnx)
        has_onnx = any(e["onnx"] for e in info.values())
        # per block: (model, setting, variant) -> times of that worker
        per_block: list[dict[tuple[str, str, str], list[float]]] = []
        for _ in range(blocks):
            block: dict[tuple[str, str, str], list[float]] = {}
            workers = [(setting, "tf", value) for setting, value in ONEDNN_SETTINGS.items()]
            workers += [("-", "ort", None)] if has_onnx else []
            for setting, kind, value in workers:
                for name, times in _spawn(work, kind, runs, value).items():
                    for label, ts in times.items():
                        block[(name, setting, label)] = ts
            per_block.append(block)
    rows = []
    for key in per_block[0]:
        name, setting, label = key
        all_ts = [t for b in per_block for t in b.get(key, [])]
        med = statistics.median
        vs_today = [med(b[key]) / med(b[(name, *BASELINE)]) for b in per_block if key in b]
        own = (name, setting, BASELINE[1])
        vs_own = [med(b[key]) / med(b[own]) for b in per_block if key in b and own in b]
        rows.append({"model": name, "onednn": setting, "variant": label, "median_ms": med(all_ts) * 1e3,
                     "p10_ms": statistics.quantiles(all_ts, n=10)[0] * 1e3, "ratio": med(vs_today),
                     "ratio_same_onednn": med(vs_own) if vs_own else None, "n": len(all_ts)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["MobileNetV2", "ResNet50"])
    parser.add_argument("--runs", type=int, default=12, help="calls per variant per worker")
    parser.add_argument("--blocks", type=int, default=6, help="times each worker is launched, alternating")
    parser.add_argument("--no-onnx", action="store_true", help="skip the optional onnxruntime column")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=("tf", "ort"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = Path(args.work)
        result = tf_worker(work, args.runs) if args.worker == "tf" else ort_worker(work, args.runs)
        print(json.dumps(result))
        return 0
    rows = run(args.models, args.runs, args.blocks, not args.no_onnx)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| model | TF_ENABLE_ONEDNN_OPTS | variant | median ms | p10 ms | vs today's TF | vs original, same oneDNN |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        same = f"{r['ratio_same_onednn']:.2f}x" if r["ratio_same_onednn"] is not None else ""
        print(f"| {r['model']} | {r['onednn']} | {r['variant']} | {r['median_ms']:.1f} | {r['p10_ms']:.1f} | "
              f"{r['ratio']:.2f}x | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
