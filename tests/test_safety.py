"""Unsafe-op scanning on real graphs: file reads, Python callbacks, ops hidden inside functions."""

import pytest
import tensorflow as tf

from graphopt.errors import ExitCode, UnsafeGraphError
from graphopt.security.scan import ensure_safe, scan


def _graph_with_file_read_and_pyfunc():
    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def f(path):
        data = tf.io.read_file(path)
        length = tf.py_function(lambda s: len(s.numpy()), [data], tf.int64)
        return length

    return f.get_concrete_function().graph.as_graph_def()


def _clean_graph():
    @tf.function(input_signature=[tf.TensorSpec([2], tf.float32)])
    def f(x):
        return tf.nn.relu(x) * 2.0

    return f.get_concrete_function().graph.as_graph_def()


def test_scan_finds_file_and_python_ops():
    findings = scan(_graph_with_file_read_and_pyfunc())
    ops = {f.op for f in findings}
    assert "ReadFile" in ops
    assert "EagerPyFunc" in ops
    assert all(f.reason for f in findings)


def test_scan_looks_inside_function_library():
    @tf.function
    def inner(path):
        return tf.io.read_file(path)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def outer(path):
        # A nested call site keeps ReadFile inside a library function, not the top graph.
        return inner(path)

    gd = outer.get_concrete_function().graph.as_graph_def()
    assert not [n for n in gd.node if n.op == "ReadFile"]
    findings = scan(gd)
    assert [f for f in findings if f.op == "ReadFile" and f.function]


def test_clean_graph_has_no_findings_and_passes():
    gd = _clean_graph()
    assert scan(gd) == []
    assert ensure_safe(gd) == []


def test_ensure_safe_refuses_with_clear_error():
    gd = _graph_with_file_read_and_pyfunc()
    with pytest.raises(UnsafeGraphError) as info:
        ensure_safe(gd, action="verify the model", source="model.pb")
    err = info.value
    assert err.code == ExitCode.UNSAFE
    assert "ReadFile" in err.message and "model.pb" == err.where
    assert "--allow-unsafe-ops" in err.hint


def test_ensure_safe_allows_all_or_named_ops():
    gd = _graph_with_file_read_and_pyfunc()
    assert len(ensure_safe(gd, allow=True)) >= 2
    with pytest.raises(UnsafeGraphError) as info:
        ensure_safe(gd, allow={"ReadFile"})
    assert "EagerPyFunc" in info.value.message and "ReadFile" not in info.value.message
    ensure_safe(gd, allow={"ReadFile", "EagerPyFunc"})
