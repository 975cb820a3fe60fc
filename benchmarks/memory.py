"""Issue 7 item 6: peak memory of ``graphopt optimize`` on a model, against TensorFlow's own baseline.

Each figure is the peak RSS of one fresh process and its children: the larger of
``getrusage(RUSAGE_CHILDREN)`` and the RSS of the process tree sampled every 5 ms,
read by a small parent that runs only that process:

* ``tf_import``: a process that only imports TensorFlow;
* ``tf_load``: a process that imports TensorFlow and loads the model with
  ``tf.saved_model.load`` (TensorFlow's own baseline for holding this model);
* ``optimize``: ``graphopt optimize SRC -o OUT`` with the default preset and
  verification, as a user runs it.

The figure that matters is ``optimize - tf_load`` divided by the model's size
(its frozen weights on disk); the target is under 3x.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The parent runs only the measured process and samples the RSS of its whole process tree (graphopt may
# run Grappler or a model in a child): getrusage alone reports the largest single process, not the sum.
_PARENT = """
import json, os, resource, subprocess, sys, tempfile, time
import psutil
cmd = json.loads(sys.argv[1])
err = tempfile.TemporaryFile(mode="w+")
t = time.perf_counter()
p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
root, tree_peak = psutil.Process(p.pid), 0
while p.poll() is None:
    total = 0
    try:
        for proc in [root, *root.children(recursive=True)]:
            total += proc.memory_info().rss
    except psutil.Error:  # a process ended while sampled
        pass
    tree_peak = max(tree_peak, total)
    time.sleep(0.005)
err.seek(0)
print(json.dumps({"rc": p.returncode, "seconds": time.perf_counter() - t, "tree_peak": tree_peak,
                  "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "stderr": err.read()[-2000:]}))
"""


def peak_rss(cmd: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process: exit code, wall seconds and peak RSS in bytes.

    The peak is the larger of the kernel's high-water mark of the biggest process and the sampled sum
    over the process tree (children included), so memory moved into a child is still counted.
    """
    import os

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _PARENT, json.dumps(cmd)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"rc": data["rc"], "seconds": data["seconds"],
            "peak_bytes": max(data["peak_kib"] * 1024, data["tree_peak"]),
            "process_peak_bytes": data["peak_kib"] * 1024, "tree_peak_bytes": data["tree_peak"],
            "stderr_tail": data["stderr"].strip().splitlines()[-3:] if data["rc"] else []}


_STAGES = """
import json, sys, time
import tensorflow as tf
from graphopt.bench import peak_rss_bytes as peak
out = {"tf_import": peak()}
from graphopt.loaders import load
from graphopt.passes.pipeline import Pipeline
from graphopt.plugins import Host
from graphopt.verify.compare import reference_outputs, verify_result
t = time.perf_counter()
model = load(sys.argv[1]); out["load"] = peak()
reference = reference_outputs(model); out["reference"] = peak()  # as optimize does: the original runs first
result = Pipeline.parse(sys.argv[2], host=Host.create(plugins=False)).run(model); out["pipeline"] = peak()
del model
verify_result(reference, result, check=False); out["verify"] = peak()
from graphopt.savers import save
save(result.model, sys.argv[3]); out["save"] = peak()
out["seconds"] = time.perf_counter() - t
print("STAGES " + json.dumps(out))
"""


def optimize_stages(src: Path, transforms: str = "serving") -> dict[str, Any]:
    """Peak RSS after each step of an optimize run (load, pipeline, verify, save) in one fresh process.

    Peak RSS only grows, so the step where it jumps is the one that needs the memory.
    """
    import os

    out = Path(tempfile.mkdtemp(prefix="graphopt-mem-")) / "out"
    try:
        proc = subprocess.run([sys.executable, "-c", _STAGES, str(src), transforms, str(out)], capture_output=True,
                              text=True, timeout=1800, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("STAGES ")), None)
    if line is None:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return {"transforms": transforms, **json.loads(line[len("STAGES "):])}


def optimize_memory(src: Path, model_bytes: int, *, transforms: str | None = None) -> dict[str, Any]:
    """Peak RSS of TF alone, TF + the model, and ``graphopt optimize``; the overhead as a multiple of the model."""
    py = sys.executable
    out = Path(tempfile.mkdtemp(prefix="graphopt-mem-")) / "out"
    cmd = [py, "-m", "graphopt", "optimize", str(src), "-o", str(out)]
    if transforms:
        cmd += ["--transforms", transforms]
    t0 = time.time()
    try:
        tf_import = peak_rss([py, "-c", "import tensorflow"])
        tf_load = peak_rss([py, "-c", f"import tensorflow as tf; tf.saved_model.load({str(src)!r})"])
        optimize = peak_rss(cmd)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    stages = optimize_stages(src)
    over = optimize["peak_bytes"] - tf_load["peak_bytes"]
    return {"source": str(src), "command": " ".join(["graphopt", *cmd[3:5], "-o", "OUT", *cmd[7:]]),
            "model_bytes": model_bytes, "tf_import": tf_import, "tf_load": tf_load, "optimize": optimize,
            "over_baseline_bytes": over, "over_baseline_x_model": over / model_bytes if model_bytes else None,
            "limit_x_model": 3.0, "met": optimize["rc"] == 0 and over < 3 * model_bytes,
            "stages": stages, "seconds": time.time() - t0}


def update_docs(measured: dict[str, Any], command: str) -> Path:
    """Put a separate memory run into ``results/latest.json`` and regenerate docs/measurements/benchmarks.md
    from it: the other sections keep the numbers of the run that made ``latest.json``."""
    from datetime import UTC, datetime

    import report

    here = Path(__file__).resolve().parent
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = here / "results" / f"memory-{stamp}.json"
    measured = {**measured, "rerun": {"command": command, "results": f"benchmarks/results/{path.name}", "utc": stamp}}
    path.write_text(json.dumps(measured, indent=1))
    latest = here / "results" / "latest.json"
    data = json.loads(latest.read_text())
    data["memory"] = measured
    latest.write_text(json.dumps(data, indent=1))
    docs = here.parent / "docs" / "measurements" / "benchmarks.md"
    first = docs.read_text().splitlines()[2] if docs.exists() else ""
    results_name = first.split("from `", 1)[1].split("`", 1)[0] if "from `" in first else "benchmarks/results/latest.json"
    docs.write_text(report.render(data, results_name))
    return path


if __name__ == "__main__":  # the memory figure alone: python benchmarks/memory.py SAVED_MODEL MODEL_BYTES
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("model_bytes", type=int, help="the model's size (its frozen SavedModel on disk)")
    parser.add_argument("--transforms", default=None)
    parser.add_argument("--update-docs", action="store_true",
                        help="save the result and regenerate docs/measurements/benchmarks.md with it")
    args = parser.parse_args()
    result = optimize_memory(args.source, args.model_bytes, transforms=args.transforms)
    print(json.dumps(result, indent=1))
    if args.update_docs:
        print(f"results: {update_docs(result, 'python benchmarks/memory.py ' + ' '.join(sys.argv[1:]))}")
