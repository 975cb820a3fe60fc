"""What the runtime actually executes: op counts of a SavedModel's partition graphs under a session config.

TensorFlow rewrites a graph after Grappler too (oneDNN's layout pass turns
``_FusedConv2D`` into ``_MklNativeFusedConv2D`` and so on), so the only way to
see why two configs run at different speeds is to ask the session for the
graphs it built (``RunOptions.output_partition_graphs``). Run in a fresh
process so the measurement process's own state does not leak in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

_CHILD = """
import collections, json, sys
import numpy as np
import tensorflow as tf
from graphopt.bench import runtime_config
path, mode, feeds_file = sys.argv[1], sys.argv[2], sys.argv[3]
config, _ = runtime_config(mode, path)
graph = tf.Graph()
with tf.compat.v1.Session(graph=graph, config=config) as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
    sig = meta.signature_def["serving_default"]
    with np.load(feeds_file, allow_pickle=False) as data:
        feeds = {sig.inputs[k].name: data[k] for k in data.files if k in sig.inputs}
    md = tf.compat.v1.RunMetadata()
    sess.run([v.name for v in sig.outputs.values()], feeds,
             options=tf.compat.v1.RunOptions(output_partition_graphs=True), run_metadata=md)
ops = collections.Counter(n.op for g in md.partition_graphs for n in g.node)
print("OPS " + json.dumps(dict(ops)))
"""


def executed_ops(path: str | Path, mode: str, feeds_file: Path) -> dict[str, int]:
    """Op -> count in the graphs the session executed for one request (``mode``: full, off, constfold, shipped)."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), mode, str(feeds_file)], capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("OPS ")), None)
    if line is None:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1][:300])
    return json.loads(line[4:])


def compare_configs(path: str | Path, feeds: dict[str, Any], workdir: Path, a: str = "shipped",
                    b: str = "full") -> dict[str, Any]:
    """Executed-op counts of one SavedModel under two configs, and the ops whose counts differ."""
    import numpy as np

    feeds_file = workdir / "runtime_graph_feeds.npz"
    np.savez(feeds_file, **feeds)
    ops_a, ops_b = executed_ops(path, a, feeds_file), executed_ops(path, b, feeds_file)
    diff = {op: [ops_a.get(op, 0), ops_b.get(op, 0)] for op in sorted(set(ops_a) | set(ops_b))
            if ops_a.get(op, 0) != ops_b.get(op, 0) and op not in ("_Arg", "_Retval")}
    return {"configs": [a, b], "nodes": [sum(ops_a.values()), sum(ops_b.values())], "differ": diff}
