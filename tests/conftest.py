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
    """One folder per test session where built models are kept."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def model_path(cache_dir):
    """``model_path(name, builder)`` -> path; ``builder(path)`` writes the model there once per session."""
    def get(name: str, builder):
        path = cache_dir / name
        if not path.exists():
            builder(path)
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
