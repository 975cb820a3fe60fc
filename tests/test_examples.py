"""Every script in examples/ runs as a user runs it (a subprocess, from another folder) and prints what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_every_example_is_tested_and_listed():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    tested = {m.group(1) for m in re.finditer(r'run_example\("(\w+\.py)"', Path(__file__).read_text())}
    assert set(scripts) == tested
    readme = (EXAMPLES / "README.md").read_text()
    assert all(f"`{s}`" in readme for s in scripts)


def test_pipeline_with_verification(tmp_path):
    out = run_example("pipeline.py", str(tmp_path), cwd=tmp_path)
    assert "pipeline: strip_debug_ops fold_pad_into_conv { fold_constants(ignore_errors=true) fold_all_batch_norms }*3" in out
    assert re.search(r"fold_pad_into_conv\s+applied .*fold_pad_into_conv=2", out)
    assert re.search(r"fold_all_batch_norms #1\s+applied .*folded=3", out)
    assert re.search(r"fold_all_batch_norms #2\s+unchanged", out)  # the repeat group stopped when nothing changed
    assert "verification passed" in out
    assert (tmp_path / "optimized" / "saved_model.pb").is_file()
    before, after = map(int, re.search(r"wrote optimized/: (\d+) -> (\d+) nodes", out).groups())
    assert after < before


def test_pattern_rule(tmp_path):
    out = run_example("pattern_rule.py", cwd=tmp_path)
    assert out.splitlines()[:4] == ["Minimum 'clamp_a' became Relu6", "Minimum 'clamp_b' became Relu6",
                                    "Minimum 'clamp_c' kept: clamps at 4.0, not 6",
                                    "Minimum 'clamp_d' kept: its Relu 'relu_d' also feeds 'add_1'"]
    assert "Minimum 4 -> 2, Relu 4 -> 2, Relu6 0 -> 2" in out
    assert "largest output difference 0\n" in out


def test_pass_plugin(tmp_path):
    out = run_example("pass_plugin.py", cwd=tmp_path)
    assert "registered strip_devices from graphopt-devices" in out
    assert re.search(r"strip_devices\s+applied\s+origin=graphopt-devices counters=\{'cleared': 3\}", out)
    assert "devices left: {'y': '/job:localhost/replica:0/task:0/device:CPU:0'}" in out  # keep=y


def test_hook_plugin(tmp_path):
    out = run_example("hook_plugin.py", cwd=tmp_path)
    assert re.search(r"strip_debug_ops\s+applied\s+cpu_ms=\d", out) and re.search(r"fold_constants\s+applied", out)
    assert "strip_debug_ops: removed {'CheckNumerics': 1, 'Identity': 2}" in out
    assert "fold_constants: removed {" in out


def test_diff_models(tmp_path):
    out = run_example("diff_models.py", str(tmp_path), cwd=tmp_path)
    summary = out.splitlines()[0]
    removed, nodes_a, nodes_b = map(int, re.search(r"(\d+) removed, .* nodes (\d+) -> (\d+);", summary).groups())
    assert removed > 0 and nodes_b < nodes_a
    assert "Rsqrt -1" in out  # the batch norm is gone
    assert (tmp_path / "original" / "saved_model.pb").is_file() and (tmp_path / "optimized").is_dir()


@pytest.mark.slow
def test_seed_workflow(tmp_path):
    out = run_example("seed_workflow.py", str(tmp_path), cwd=tmp_path)
    assert re.search(r"saved_model\.pb [\d.]+ MB -> [\d.]+ MB; largest output difference", out)
