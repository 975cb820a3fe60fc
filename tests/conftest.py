"""Shared fixtures. Models are built once per session and cached under one temp dir.

Builders for test models live in ``tests/models.py`` (plain functions, cached by
``model_path``); fixtures here only wire them into pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import run_subprocess  # noqa: F401  (re-exported for tests)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]


# The files that take longest (a minute or more each, measured with --durations): under pytest-xdist
# (`make test` runs `--dist loadfile`, one file per worker at a time) they are handed out first, so
# the run does not end waiting on one of them started last.
SLOW_FIRST = ("test_tune.py", "test_bench.py", "test_sandbox.py", "test_openvino.py", "test_fleet.py", "test_ray.py",
              "test_serve_hostile.py", "test_fuzz.py", "test_serving_export.py", "test_serving_roundtrip.py",
              "test_examples.py", "test_demo.py", "test_outputs.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


@pytest.fixture(scope="session", autouse=True)
def one_confined_child():
    """In-process runs of model graphs (verification, fold_constants, Grappler) share one confined child.

    What ``graphopt optimize`` does within one run, here for the whole session: without it each of
    hundreds of pipelines starts a fresh child and imports TensorFlow there again. Calls with limits of
    their own (tests/test_sandbox.py) still get a fresh child, and a child a call killed is replaced.
    """
    from graphopt.security.sandbox import shared_sandbox

    with shared_sandbox(start=False):
        yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One folder per test run where built models are kept, shared by pytest-xdist's workers.

    Under xdist each worker has its own base temp folder; their parent is the run's, so a model
    one worker built is reused by the other (``model_path`` builds under a lock).
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return tmp_path_factory.mktemp("models")
    shared = tmp_path_factory.getbasetemp().parent / "models"
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture(scope="session")
def model_path(cache_dir):
    """``model_path(name, builder)`` -> path; ``builder(path)`` writes the model there once per run.

    Built under a file lock and marked done after, so a worker never sees a half-written model and
    two workers never build the same one. (Built in place: some builders write a checkpoint prefix,
    i.e. several files, or need the name's suffix.)
    """
    import fcntl

    def get(name: str, builder):
        path, done = cache_dir / name, cache_dir / f".{name}.done"
        if done.exists():
            return path
        with open(cache_dir / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                builder(path)
                done.touch()
        return path
    return get


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: ``code, out, err = cli("inspect", path, "--json")``."""
    from graphopt.cli.main import main

    def run(*args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run
