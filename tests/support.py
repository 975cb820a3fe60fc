"""Helpers shared by test modules (imported by name: ``from support import ...``).

Kept out of conftest.py because plugins/ has a conftest of its own, and two
modules named ``conftest`` cannot both be imported by name.
"""

from __future__ import annotations

import os
import subprocess
import sys


def run_subprocess(*args, env=None, timeout=600):
    """Run ``python -m graphopt ARGS`` as a user would; returns CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "graphopt", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def run_in_fresh_process(model, feeds, onednn: str, runtime_optimizer: str = "off"):
    """Outputs of ``model`` run with ``runtime_optimizer`` (default off) in a new process with
    TF_ENABLE_ONEDNN_OPTS=onednn."""
    import pickle
    import tempfile

    code = ("import pickle, sys\n"
            "from graphopt.runtime.session import run_model\n"
            "from graphopt.runtime.config import session_config\n"
            "model, feeds = pickle.load(open(sys.argv[1], 'rb'))\n"
            "out = run_model(model, feeds, config=session_config(runtime_optimizer=sys.argv[2]))\n"
            "pickle.dump(out, open(sys.argv[1], 'wb'))\n")
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
        pickle.dump((model, feeds), f)
    try:
        proc = subprocess.run([sys.executable, "-c", code, f.name, runtime_optimizer], capture_output=True, text=True,
                              env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2"))
        assert proc.returncode == 0, proc.stderr[-1500:]
        with open(f.name, "rb") as g:
            return pickle.load(g)
    finally:
        os.unlink(f.name)
