"""Plugin tests run against the installed plugins, as users get them: install them once per session."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parent
# distribution folder -> module it installs
PACKAGES = {"graphopt-snapshots": "graphopt_snapshots", "graphopt-strip-metadata": "graphopt_strip_metadata",
            "graphopt-openvino": "graphopt_openvino", "graphopt-onnx": "graphopt_onnx"}


def install_plugins() -> None:
    """``pip install --no-deps --no-build-isolation -e plugins/<x>`` for each plugin not yet importable."""
    missing = [folder for folder, module in PACKAGES.items() if importlib.util.find_spec(module) is None]
    for folder in missing:
        base = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
        proc = subprocess.run(base + ["--no-build-isolation", "-e", str(PLUGINS / folder)],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 and importlib.util.find_spec("setuptools") is None:
            # Python >= 3.12 venvs have no setuptools to build with in place: let pip fetch it.
            proc = subprocess.run(base + ["-e", str(PLUGINS / folder)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"could not install {folder}:\n{proc.stdout}\n{proc.stderr}")
    if missing:
        importlib.invalidate_caches()
        import site

        # An editable install adds a .pth file; make this already-running interpreter see it too.
        for path in site.getsitepackages():
            site.addsitedir(path)


def pytest_configure(config):
    # Before collection: the test modules here import the plugins at module level.
    install_plugins()
