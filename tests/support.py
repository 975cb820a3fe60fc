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
