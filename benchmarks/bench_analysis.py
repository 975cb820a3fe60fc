"""How fast is graph analysis? Two figures the analysis issue asks for, measured on this machine.

1. ``analyze`` and ``diff_models`` on a synthetic 100,000-node GraphDef (target: each under 3 s).
   The diff is measured twice: against an edited copy (nodes removed, rewired, constants
   changed — matched by name) and against a copy with 10% of the nodes renamed (matched by
   structure).
2. A pipeline run on ResNet50 (``keras.applications.ResNet50(weights=None)``, frozen through
   ``graphopt.loaders.load``) with and without the :class:`~graphopt.analysis.stats.PassAnalysis`
   plugin, which analyses the graph before and after every pass (target: under 10% added).

Run::

    TF_CPP_MIN_LOG_LEVEL=2 /work/venv/bin/python benchmarks/bench_analysis.py [--nodes 100000] [--repeat 3]
        [--skip-resnet] [--spec gtt-seed] [--json]

Timings are the median of ``--repeat`` runs, wall clock (``time.perf_counter``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OPS = ["Conv2D", "BiasAdd", "Relu", "Add", "Mul", "MatMul", "Identity", "ConcatV2", "Reshape", "Sigmoid"]


def synthetic_graph(n: int, seed: int = 0):
    """A frozen-looking GraphDef of ``n`` nodes: 10% small constants, ops reading 1-3 recent nodes,
    some control edges, one placeholder in and one sink out. Acyclic, so the longest path is computed."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    gd = tf.compat.v1.GraphDef()
    inp = gd.node.add(name="input", op="Placeholder")
    inp.attr["dtype"].type = tf.float32.as_datatype_enum
    names = ["input"]
    const_value = tf.make_tensor_proto(np.zeros((16,), np.float32))
    for i in range(1, n - 1):
        if rng.random() < 0.1:
            node = gd.node.add(name=f"layer{i // 100}/w{i}", op="Const")
            node.attr["dtype"].type = tf.float32.as_datatype_enum
            value = node.attr["value"].tensor
            value.CopyFrom(const_value)
            value.float_val.append(float(i))  # distinct contents, so constants do not all hash alike
        else:
            node = gd.node.add(name=f"layer{i // 100}/op{i}", op=OPS[i % len(OPS)])
            node.attr["T"].type = tf.float32.as_datatype_enum
            lo = max(0, len(names) - 50)
            for j in rng.integers(lo, len(names), size=int(rng.integers(1, 4))):
                node.input.append(names[j])
            if rng.random() < 0.02:
                node.input.append("^" + names[int(rng.integers(lo, len(names)))])
        names.append(node.name)
    out = gd.node.add(name="output", op="Identity")
    out.input.append(names[-1])
    return gd


def edited_copy(gd, seed: int = 1, *, rename: float = 0.0, edit: float = 0.0):
    """A copy of ``gd``: ``edit`` share of Identity nodes bypassed and a few constants changed;
    ``rename`` share of nodes renamed (inputs updated)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = type(gd)()
    out.CopyFrom(gd)
    if edit:
        bypass = {n.name: n.input[0] for n in out.node if n.op == "Identity" and n.input and rng.random() < edit
                  and n.name != "output"}
        keep = [n for n in out.node if n.name not in bypass]
        for n in keep:
            n.input[:] = [bypass.get(i, i) for i in n.input if i.lstrip("^") not in bypass]
            if n.op == "Const" and rng.random() < edit:
                n.attr["value"].tensor.float_val.append(-1.0)
        del out.node[:]
        out.node.extend(keep)
    if rename:
        mapping = {n.name: n.name + "_r" for n in out.node if n.name not in ("input", "output")
                   and rng.random() < rename}
        for n in out.node:
            n.name = mapping.get(n.name, n.name)
            n.input[:] = [("^" + mapping.get(i[1:], i[1:])) if i.startswith("^") else mapping.get(i, i)
                          for i in n.input]
    return out


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """Median wall-clock and CPU seconds of ``repeat`` calls, and the last value.

    Both are reported because this machine's 2 cores are shared: wall time grows with other
    processes' load, CPU time (``time.process_time``) much less.
    """
    wall, cpu, value = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), value


def bench_synthetic(n: int, repeat: int) -> dict:
    from graphopt.analysis.diff import diff_models
    from graphopt.analysis.stats import analyze
    from graphopt.model import Model, Signature, TensorSpec

    t0 = time.perf_counter()
    gd = synthetic_graph(n)
    edited = edited_copy(gd, edit=0.05)
    renamed = edited_copy(gd, rename=0.10)
    build = time.perf_counter() - t0
    sig = Signature({"input": TensorSpec("input:0", "float32")}, {"output": TensorSpec("output:0", "float32")})
    model = Model(gd, sig)
    t_analyze, c_analyze, stats = timed(lambda: analyze(model), repeat)
    t_diff, c_diff, d = timed(lambda: diff_models(gd, edited), repeat)
    t_rename, c_rename, dr = timed(lambda: diff_models(gd, renamed), repeat)
    return {
        "nodes": len(gd.node), "build_seconds": round(build, 2), "loadavg_1min": round(os.getloadavg()[0], 1),
        "analyze_seconds": round(t_analyze, 3), "analyze_cpu_seconds": round(c_analyze, 3),
        "diff_edited_cpu_seconds": round(c_diff, 3), "diff_renamed_cpu_seconds": round(c_rename, 3),
        "analyze": {"longest_path": stats.longest_path, "unreachable": len(stats.unreachable),
                    "size_bytes": stats.size_bytes},
        "diff_edited_seconds": round(t_diff, 3),
        "diff_edited": {k: v for k, v in d.to_dict()["summary"].items() if k != "identical"},
        "diff_renamed_seconds": round(t_rename, 3),
        "diff_renamed": {k: v for k, v in dr.to_dict()["summary"].items() if k != "identical"},
    }


def resnet50_model(workdir: Path):
    import keras

    from graphopt.loaders import load

    path = workdir / "resnet50.keras"
    if not path.exists():
        keras.utils.set_random_seed(0)
        keras.applications.ResNet50(weights=None).save(path)
    return load(str(path))


def bench_pipeline(spec: str, repeat: int, workdir: Path) -> dict:
    from graphopt.analysis.stats import PassAnalysis
    from graphopt.passes.pipeline import Pipeline
    from graphopt.plugins import Host

    model = resnet50_model(workdir)
    plain = Host.create(plugins=False)
    with_analysis = Host.create(plugins=False)
    plugin = PassAnalysis()
    with_analysis.pm.register(plugin)
    runs: dict[str, list[float]] = {"without": [], "with": []}
    in_hook: list[float] = []  # seconds inside the plugin per run: not hidden by the pipeline's own variance
    cpu: dict[str, list[float]] = {"without": [], "with": []}
    Pipeline.parse(spec, host=plain).run(model)  # warm-up: TF kernels, GTT binding, caches
    for _ in range(repeat):  # interleaved, so load from other processes hits both alike
        for label, host in (("without", plain), ("with", with_analysis)):
            t0, c0 = time.perf_counter(), time.process_time()
            result = Pipeline.parse(spec, host=host).run(model)
            runs[label].append(time.perf_counter() - t0)
            cpu[label].append(time.process_time() - c0)
            if label == "with":
                in_hook.append(plugin.seconds)
    without, with_ = statistics.median(runs["without"]), statistics.median(runs["with"])
    cpu_without, cpu_with = statistics.median(cpu["without"]), statistics.median(cpu["with"])
    return {
        "model": "keras.applications.ResNet50(weights=None)", "spec": spec,
        "nodes_before": model.node_count, "size_before": model.size_bytes,
        "nodes_after": result.model.node_count, "passes": len(result.records),
        "analyses_per_run": len(plugin.last),
        "without_seconds": round(without, 3), "with_seconds": round(with_, 3),
        "overhead_percent": round(100.0 * (with_ - without) / without, 1),
        "cpu_without_seconds": round(cpu_without, 3), "cpu_with_seconds": round(cpu_with, 3),
        "cpu_overhead_percent": round(100.0 * (cpu_with - cpu_without) / cpu_without, 1),
        "analysis_seconds_per_run": round(statistics.median(in_hook), 3),
        "analysis_share_percent": round(100.0 * statistics.median(in_hook) / without, 1),
        "loadavg_1min": round(os.getloadavg()[0], 1),
        "runs": {k: [round(t, 3) for t in v] for k, v in runs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--spec", default="gtt-seed", help="pipeline for the ResNet50 run")
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "graphopt-bench-analysis"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpus": os.cpu_count()}
    if not args.skip_synthetic:
        report["synthetic"] = bench_synthetic(args.nodes, args.repeat)
        print(json.dumps(report["synthetic"]), file=sys.stderr)
    if not args.skip_resnet:
        report["resnet50_pipeline"] = bench_pipeline(args.spec, args.repeat, workdir)
    print(json.dumps(report, indent=None if not args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
