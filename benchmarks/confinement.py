"""What confinement costs: ``graphopt optimize`` with the sandbox on and off, side by side (docs/guide/confinement.md).

    python benchmarks/confinement.py                          # MobileNetV2 and ResNet50, 2 runs each
    python benchmarks/confinement.py --models ResNet50 --repeats 3

Each run is a fresh ``python -m graphopt optimize SRC -o OUT`` (default preset, verification on), with
``GRAPHOPT_SANDBOX=on`` (every execution of the graph in one shared sandboxed child per run: the
original's reference run, ``fold_constants``, Grappler, the optimized model's run) and with
``GRAPHOPT_SANDBOX=off`` (all of it in graphopt's own process, as before the sandbox). Runs alternate
on and off so drifting background load hits both alike. For each run: wall seconds, and the peak over
the process tree (graphopt plus its children) of the summed RSS (sampled every 10 ms: what
``benchmarks/memory.py`` reports) and of the summed PSS (every 250 ms: RSS counts TensorFlow's shared
libraries once per process, PSS splits them). Results go to ``benchmarks/results/confinement-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import suite_models  # noqa: E402


def _tree(root: Any) -> list[Any]:
    import psutil

    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def measure(cmd: list[str], env: dict[str, str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``cmd``; its exit code, wall seconds and the peaks of its process tree's summed RSS and PSS."""
    import psutil

    err = tempfile.TemporaryFile(mode="w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, text=True)
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    last_pss = 0.0
    while proc.poll() is None:
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            break
        rss = pss = 0
        want_pss = time.perf_counter() - last_pss >= 0.25
        for p in _tree(root):
            try:
                if want_pss:
                    info = p.memory_full_info()
                    rss, pss = rss + info.rss, pss + info.pss
                else:
                    rss += p.memory_info().rss
            except psutil.Error:  # ended while sampled
                pass
        peak_rss = max(peak_rss, rss)
        if want_pss:
            peak_pss, last_pss = max(peak_pss, pss), time.perf_counter()
        time.sleep(0.01)
    seconds = time.perf_counter() - t0
    err.seek(0)
    tail = err.read().strip().splitlines()[-3:]
    return {"rc": proc.returncode, "seconds": seconds, "peak_tree_rss_bytes": peak_rss,
            "peak_tree_pss_bytes": peak_pss, "stderr_tail": tail if proc.returncode else []}


def run(models: list[str], cache: Path, repeats: int, command: str = "optimize") -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in models:
        src = suite_models.build(name, cache).path
        runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for r in range(repeats):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                out = Path(tempfile.mkdtemp(prefix="graphopt-conf-")) / "out"
                env = dict(os.environ, GRAPHOPT_SANDBOX=mode)
                try:
                    cmd = [sys.executable, "-m", "graphopt", command, str(src)] + (
                        ["-o", str(out)] if command == "optimize" else [])
                    runs[mode].append(measure(cmd, env))
                finally:
                    shutil.rmtree(out.parent, ignore_errors=True)
                m = runs[mode][-1]
                print(f"{name} sandbox={mode}: rc {m['rc']}, {m['seconds']:.1f} s, tree RSS "  # noqa: T201
                      f"{m['peak_tree_rss_bytes'] / 2**20:.0f} MiB, PSS {m['peak_tree_pss_bytes'] / 2**20:.0f} MiB",
                      flush=True)
        med = {mode: {k: statistics.median(x[k] for x in rs) for k in
                      ("seconds", "peak_tree_rss_bytes", "peak_tree_pss_bytes")} for mode, rs in runs.items()}
        ratios = {k: med["on"][k] / med["off"][k] if med["off"][k] else None for k in med["on"]}
        results[name] = {"source": str(src), "runs": runs, "median": med, "on_over_off": ratios}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["MobileNetV2", "ResNet50"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--command", choices=["optimize", "inspect"], default="optimize",
                        help="what to run: optimize SRC -o OUT, or inspect SRC (a confined load, no execution)")
    args = parser.parse_args()
    t0 = time.time()
    results = run(args.models, args.cache, args.repeats, args.command)
    sys.path.insert(0, str(HERE.parent))
    from graphopt.bench import machine_info
    from graphopt.security.sandbox import default_limits, landlock_abi

    doc = {"command": "python benchmarks/confinement.py " + " ".join(sys.argv[1:]), "machine": machine_info(),
           "landlock_abi": landlock_abi(), "kernel": os.uname().release, "seconds": time.time() - t0,
           "default_limits": default_limits().describe(), "models": results}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = HERE / "results" / f"confinement-{'' if args.command == 'optimize' else args.command + '-'}{stamp}.json"
    path.write_text(json.dumps(doc, indent=1))
    print(f"\n{'model':14} {'off s':>7} {'on s':>7} {'ratio':>6} {'off RSS':>8} {'on RSS':>8} {'ratio':>6} "  # noqa: T201
          f"{'off PSS':>8} {'on PSS':>8} {'ratio':>6}")
    for name, res in results.items():
        off, on, q = res["median"]["off"], res["median"]["on"], res["on_over_off"]
        mib = 2**20
        print(f"{name:14} {off['seconds']:7.1f} {on['seconds']:7.1f} {q['seconds']:6.2f} "  # noqa: T201
              f"{off['peak_tree_rss_bytes'] / mib:8.0f} {on['peak_tree_rss_bytes'] / mib:8.0f} "
              f"{q['peak_tree_rss_bytes']:6.2f} {off['peak_tree_pss_bytes'] / mib:8.0f} "
              f"{on['peak_tree_pss_bytes'] / mib:8.0f} {q['peak_tree_pss_bytes']:6.2f}")
    print(f"results: {path}")  # noqa: T201


if __name__ == "__main__":
    main()
