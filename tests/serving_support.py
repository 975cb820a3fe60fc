"""What the serving tests share: small models built in code, loading an export as TF Serving does, and
``graphopt serve`` started in a subprocess on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from graphopt.model import Model, Signature, TensorSpec

SERVER_START_TIMEOUT = 120.0

# --- models built in code -------------------------------------------------------------------------------


def dense_model(features: int = 8, units: int = 5, seed: int = 0) -> Model:
    """x float32 [None, features] -> softmax(xW + b) "probs" and its argmax "label" (int64)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, features], name="x")
        w = tf.constant(rng.standard_normal((features, units)).astype(np.float32), name="w")
        b = tf.constant(rng.standard_normal((units,)).astype(np.float32), name="b")
        probs = tf.nn.softmax(tf.matmul(x, w) + b, name="probs")
        tf.argmax(probs, axis=1, name="label")
    sig = Signature(inputs={"x": TensorSpec("x:0", "float32", (None, features))},
                    outputs={"probs": TensorSpec("probs:0", "float32", (None, units)),
                             "label": TensorSpec("label:0", "int64", (None,))})
    return Model(g.as_graph_def(), sig)


def image_model(channels: int = 6, seed: int = 1) -> Model:
    """The seed's input contract: uint8 "inputs" [1, None, None, 3] -> "scores" [1, C] and "boxes" [1, -1, 4]."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    g = tf.Graph()
    with g.as_default():
        image = tf.compat.v1.placeholder(tf.uint8, [1, None, None, 3], name="input_image")
        x = tf.image.convert_image_dtype(image, tf.float32)
        k = tf.constant(rng.standard_normal((3, 3, 3, channels)).astype(np.float32), name="kernel")
        y = tf.nn.relu(tf.nn.conv2d(x, k, strides=2, padding="SAME"))
        tf.reduce_mean(y, axis=[1, 2], name="scores")
        tf.reshape(tf.sigmoid(y[..., :4]), (1, -1, 4), name="boxes")
    sig = Signature(inputs={"inputs": TensorSpec("input_image:0", "uint8", (1, None, None, 3))},
                    outputs={"scores": TensorSpec("scores:0", "float32", (1, channels)),
                             "boxes": TensorSpec("boxes:0", "float32", (1, None, 4))})
    return Model(g.as_graph_def(), sig)


def load_saved(export_dir: Path):
    """(session, meta graph) of a SavedModel loaded as TF Serving loads it; caller closes the session."""
    import tensorflow as tf

    sess = tf.compat.v1.Session(graph=tf.Graph())
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(export_dir))
    return sess, meta


def run_saved(export_dir: Path, feeds: dict, key: str = "serving_default") -> dict:
    sess, meta = load_saved(export_dir)
    try:
        sig = meta.signature_def[key]
        keys = list(sig.outputs)
        values = sess.run([sig.outputs[k].name for k in keys], {sig.inputs[k].name: v for k, v in feeds.items()})
        return dict(zip(keys, values))
    finally:
        sess.close()




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(base: Path, name: str, log_path: Path, *flags: str, stdout_too: bool = True,
                   start_timeout: float = SERVER_START_TIMEOUT):
    """``python -m graphopt serve`` on free loopback ports, its stderr (and stdout, ``stdout_too``) in
    ``log_path``; yields ``(proc, grpc_port, rest_port)`` once both ports accept connections, and always
    terminates it (SIGTERM, then SIGKILL)."""
    grpc_port, rest_port = free_port(), free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "graphopt", "serve", str(base), "--port", str(grpc_port),
                             "--rest-port", str(rest_port), "--model-name", name, "--host", "127.0.0.1", *flags],
                            stdout=log if stdout_too else subprocess.DEVNULL, stderr=log,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", rest_port), timeout=1):
                    pass
                with socket.create_connection(("127.0.0.1", grpc_port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("server did not open its ports in time") from None
                time.sleep(0.3)
        yield proc, grpc_port, rest_port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
        log.close()


@contextmanager
def serve(base: Path, name: str, tmp: Path):
    """The server of :func:`server_process`, as the round-trip tests address it."""
    with server_process(base, name, tmp / f"{name}-server.log") as (proc, grpc_port, rest_port):
        yield {"grpc": f"127.0.0.1:{grpc_port}", "rest": f"127.0.0.1:{rest_port}", "name": name, "proc": proc}
