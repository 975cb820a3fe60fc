"""``graphopt serve`` under hostile clients and hostile models (issue 11, item 6).

Every case runs against a real ``python -m graphopt serve`` process on
127.0.0.1 and ephemeral ports, with models the tests build. Each hostile
request asserts its status, that the server answers a good request
afterwards, that it logged exactly one line for it and that its stderr holds
no ``Traceback``. A model that hangs or aborts is served with the explicit
opt-in for its op and must cost only the one request.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from serving_support import server_process

from graphopt.model import Model, Signature, TensorSpec

pytestmark = pytest.mark.timeout(600)  # pytest-timeout: no test may hang on a server

START_TIMEOUT = 180.0
DEADLINE = 3  # --deadline of the trap server, seconds
# two workers: while one restarts after a hostile request, the other serves the next one at once
TRAP_FLAGS = ("--deadline", str(DEADLINE), "--max-in-flight", "3", "--model-workers", "2", "--allow-op", "Abort")


# --- models built here ---------------------------------------------------------------------------------------


def dense_model() -> Model:
    """x float32 [None, 4] -> y = x W (float32 [None, 3])."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        w = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3), name="w")
        tf.matmul(x, w, name="y")
    return Model(g.as_graph_def(), Signature(inputs={"x": TensorSpec("x:0", "float32", (None, 4))},
                                             outputs={"y": TensorSpec("y:0", "float32", (None, 3))}))


def trap_model() -> Model:
    """x float32 [None] -> y = 10 x, computed by a loop of 10 steps; a hostile input makes it misbehave.

    sum(x) >= 0: the answer. -100 <= sum(x) < 0: the loop's step is 0, so it
    never ends. sum(x) < -100: an ``Abort`` op kills the process running it.
    """
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        s = tf.reduce_sum(x)
        step = tf.cast(tf.logical_or(s >= 0, s < -100), tf.int32)
        n = tf.while_loop(lambda i: i < 10, lambda i: i + step, [tf.constant(0)])

        def abort():
            stop = tf.raw_ops.Abort(error_msg="hostile model")
            with tf.control_dependencies([stop]):
                return tf.identity(x)

        y = tf.cond(s < -100, abort, lambda: tf.identity(x))
        tf.multiply(y, tf.cast(n, tf.float32), name="y")
    return Model(g.as_graph_def(), Signature(inputs={"x": TensorSpec("x:0", "float32", (None,))},
                                             outputs={"y": TensorSpec("y:0", "float32", (None,))}))


GOOD_X = np.array([[1, 2, 3, 4], [0, 0, 0, 1]], np.float32)
GOOD_Y = GOOD_X @ np.arange(12, dtype=np.float32).reshape(4, 3)
TRAP_OK, TRAP_HANG, TRAP_ABORT = (np.array(v, np.float32) for v in ([1.0, 2.0], [-1.0], [-1000.0]))


# --- a server process and how to talk to it ------------------------------------------------------------------


@dataclass
class Served:
    proc: subprocess.Popen
    name: str
    grpc: str
    rest_port: int
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        """The server's lines about requests: "YYYY-MM-DD HH:MM:SS warning grpc|rest ..." (not worker restarts)."""
        return [line for line in self.stderr().splitlines()
                if line[:2] == "20" and (" warning grpc " in line[:40] or " warning rest " in line[:40])]

    def wait_settled(self, timeout: float = 240.0) -> None:
        """Until every worker a failed request took down has restarted (the server logs both)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.stderr()
            if text.count("restarted in ") >= text.count("worker was restarted"):
                return
            time.sleep(0.5)
        raise AssertionError(f"workers did not restart in time:\n{self.stderr()[-3000:]}")

    def rss(self) -> int:
        import psutil

        proc = psutil.Process(self.proc.pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])

    def peak_rss(self) -> int:
        """VmHWM of the server process: rises with any allocation past the old peak, however brief."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")


@contextmanager
def serve(base: Path, name: str, tmp: Path, *flags: str):
    """``python -m graphopt serve`` on free loopback ports (serving_support.server_process); stderr kept apart."""
    err_path = tmp / f"{name}-{time.monotonic_ns()}.stderr"
    with server_process(base, name, err_path, *flags, stdout_too=False, start_timeout=START_TIMEOUT) as (
            proc, grpc_port, rest_port):
        yield Served(proc, name, f"127.0.0.1:{grpc_port}", rest_port, err_path)


def predict_bytes(name: str, inputs: dict) -> bytes:
    from graphopt.serving.warmup import predict_request

    return predict_request(inputs, model_name=name).SerializeToString()


def grpc_call(target: str, payload: bytes, *, timeout: float = 60.0, method: str = "Predict"):
    """``(status name, response or None)`` of one raw call."""
    import grpc
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

    from graphopt.serving.server import GRPC_OPTIONS

    response_type = {"Predict": predict_pb2.PredictResponse,
                     "GetModelMetadata": get_model_metadata_pb2.GetModelMetadataResponse}[method]
    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        call = channel.unary_unary(f"/tensorflow.serving.PredictionService/{method}",
                                   request_serializer=lambda b: b, response_deserializer=response_type.FromString)
        try:
            return "OK", call(payload, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()


def raw_http(port: int, data: bytes, *, timeout: float = 30.0, then: bytes = b"", pause: float = 0.0):
    """Send bytes on a fresh connection; ``(status, body)`` of the first answer, or ``(None, b"")`` if none came."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if then:
            time.sleep(pause)
            try:
                sock.sendall(then)
            except OSError:
                pass
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return None, buf
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
        except (ConnectionResetError, TimeoutError):
            return None, buf
        return int(head.split(b" ")[1]), body


def post(path: str, body: bytes, *, headers: dict | None = None) -> bytes:
    hdrs = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(body)),
            **(headers or {})}
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in hdrs.items() if v is not None)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def rest_predict(port: int, name: str, inputs: dict, *, timeout: float = 60.0):
    from graphopt.serving import rest

    return raw_http(port, post(f"/v1/models/{name}:predict", json.dumps(rest.predict_body(inputs)).encode()),
                    timeout=timeout)


def until_ok(call, timeout: float = 240.0):
    """Retry ``call() -> (code, answer)`` while the server says its workers are restarting (UNAVAILABLE, 503)."""
    end = time.monotonic() + timeout
    while True:
        code, answer = call()
        if code not in ("UNAVAILABLE", 503) or time.monotonic() > end:
            return code, answer
        time.sleep(1.0)


def assert_good_request_works(server: Served) -> None:
    """The server still answers a good request, over both transports, with the right values."""
    import tensorflow as tf

    code, response = grpc_call(server.grpc, predict_bytes(server.name, {"x": GOOD_X}))
    assert code == "OK", response
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), GOOD_Y)
    status, body = rest_predict(server.rest_port, server.name, {"x": GOOD_X})
    assert status == 200, body
    np.testing.assert_allclose(json.loads(body)["outputs"], GOOD_Y)


@contextmanager
def one_log_line(server: Served, *expected: str, lines: int = 1):
    """The block makes the server log exactly ``lines`` line(s), holding ``expected``, and no traceback."""
    before = len(server.log_lines())
    yield
    time.sleep(0.05)  # lines are written before the answer; this only covers a slow flush
    new = server.log_lines()[before:]
    assert len(new) == lines, new
    for text in expected:
        assert all(text in line for line in new), (text, new)
    assert "Traceback" not in server.stderr()


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def dense_server(tmp):
    """The dense model behind tight limits, so each limit is reachable with small requests."""
    from graphopt.serving.export import export_versioned

    export_versioned(dense_model(), tmp / "dense", warmup=False)
    with serve(tmp / "dense", "dense", tmp, "--max-message-mb", "1", "--max-json-mb", "1", "--max-elements",
               "100000", "--max-json-depth", "32", "--io-timeout", "2", "--max-connections", "16") as server:
        yield server


@pytest.fixture(scope="module")
def trap_server(tmp):
    from graphopt.serving.export import export_versioned

    export_versioned(trap_model(), tmp / "trap", warmup=False)
    with serve(tmp / "trap", "trap", tmp, *TRAP_FLAGS) as server:
        yield server


# --- JSON guards (no server) ---------------------------------------------------------------------------------


def test_json_depth_is_measured_without_recursion():
    from graphopt.errors import InputError
    from graphopt.serving import rest

    assert rest.json_depth(b'{"a": [[1, 2], [3]], "b": "[[[[{{{{"}') == 3  # brackets inside strings are text
    assert rest.json_depth(b'{"a": "\\"[[[["}') == 1  # an escaped quote does not end the string
    assert rest.json_depth(b"[" * 5_000_000, stop_above=64) > 64
    for raw, message in ((b"[" * 200_000, "deeper than 64"), (b"[1e400]", "out of range"),
                         (b"[NaN]", "non-finite"), (b"[-Infinity]", "non-finite"), (b'{"a": [1,', "malformed"),
                         (b"\xff\xfe\x00", "malformed"), (b"1" * 5000, "malformed")):
        with pytest.raises(InputError, match=message):
            rest.loads(raw)
    assert rest.loads(b'{"inputs": [[1.5, 2]]}') == {"inputs": [[1.5, 2]]}


def test_rest_values_that_do_not_fit_the_dtype_are_input_errors():
    from graphopt.errors import InputError
    from graphopt.serving import rest

    for value, dtype in (([[1, 2], [3]], "float32"), ([{"a": 1}], "float32"), (["text"], "float32"),
                         ([2**40], "int32"), ([1e300], "float32"), ([1, "a"], "string"), ([{"b64": "!!"}], "string")):
        with pytest.raises(InputError):
            rest.decode(value, dtype)
    np.testing.assert_array_equal(rest.decode([[1, 2]], "float32"), np.array([[1, 2]], np.float32))


# --- hostile requests ----------------------------------------------------------------------------------------


def test_huge_declared_shape_is_refused_before_anything_is_allocated(dense_server):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dense"
    tensor = tf.make_tensor_proto(np.float32(1.0))  # one float_val ...
    tensor.tensor_shape.dim.add(size=50_000_000)  # ... declared as [50M, 4]: make_ndarray would repeat it 200 M times
    tensor.tensor_shape.dim.add(size=4)
    request.inputs["x"].CopyFrom(tensor)
    payload = request.SerializeToString()
    assert len(payload) < 40
    peak, rss = dense_server.peak_rss(), dense_server.rss()
    with one_log_line(dense_server, "Predict", "INVALID_ARGUMENT"):
        t0 = time.monotonic()
        code, details = grpc_call(dense_server.grpc, payload)
        took = time.monotonic() - t0
    assert code == "INVALID_ARGUMENT" and "200,000,000" not in details and "--max-elements" in details, details
    assert took < 5.0
    # 200 M float32 would be 800 MB: the server's peak and its (and its workers') memory did not move
    assert dense_server.peak_rss() - peak < 50e6
    assert dense_server.rss() - rss < 50e6
    assert_good_request_works(dense_server)


@pytest.mark.parametrize("case", ["garbage", "wrong_dtype", "wrong_shape", "unknown_input", "negative_dim",
                                  "unknown_signature", "unknown_model", "element_limit"])
def test_malformed_grpc_requests_get_one_status_and_one_log_line(dense_server, case):
    from tensorflow_serving.apis import predict_pb2

    name = "dense"
    if case == "garbage":
        payload = b"\x0a\xff\xff\xff\xff\x0f" + bytes(range(40))
    elif case == "wrong_dtype":
        payload = predict_bytes(name, {"x": GOOD_X.astype(np.float64)})
    elif case == "wrong_shape":
        payload = predict_bytes(name, {"x": np.ones((2, 3), np.float32)})
    elif case == "unknown_input":
        payload = predict_bytes(name, {"x": GOOD_X, "\x1b[31mz": GOOD_X})
    elif case == "negative_dim":
        request = predict_pb2.PredictRequest.FromString(predict_bytes(name, {"x": GOOD_X}))
        request.inputs["x"].tensor_shape.dim[0].size = -5
        payload = request.SerializeToString()
    elif case == "unknown_signature":
        request = predict_pb2.PredictRequest.FromString(predict_bytes(name, {"x": GOOD_X}))
        request.model_spec.signature_name = "nope"
        payload = request.SerializeToString()
    elif case == "unknown_model":
        payload = predict_bytes("not-served", {"x": GOOD_X})
    else:  # real data just past --max-elements 100000
        payload = predict_bytes(name, {"x": np.ones((25_001, 4), np.float32)})
    want = "NOT_FOUND" if case == "unknown_model" else "INVALID_ARGUMENT"
    with one_log_line(dense_server, "grpc", want):
        code, details = grpc_call(dense_server.grpc, payload)
    assert code == want, details
    assert "\x1b" not in dense_server.stderr()  # client text reaches the log escaped
    assert_good_request_works(dense_server)


def test_oversize_grpc_message_is_refused_by_the_receive_limit(dense_server):
    payload = predict_bytes("dense", {"x": np.ones((70_000, 4), np.float32)})  # 1.1 MB > --max-message-mb 1
    code, details = grpc_call(dense_server.grpc, payload)
    assert code == "RESOURCE_EXHAUSTED", details
    assert "Traceback" not in dense_server.stderr()
    assert_good_request_works(dense_server)


PREDICT = "/v1/models/dense:predict"
REST_CASES = {
    # name: (raw request, expected status)
    "deep_json": (post(PREDICT, b"[" * 200_000 + b"]" * 200_000), 400),
    "deep_object": (post(PREDICT, b'{"a":' * 50_000 + b"1" + b"}" * 50_000), 400),
    "1e400": (post(PREDICT, b'{"inputs": {"x": [[1e400, 1, 1, 1]]}}'), 400),
    "nan": (post(PREDICT, b'{"inputs": {"x": [[NaN, 1, 1, 1]]}}'), 400),
    "truncated_json": (post(PREDICT, b'{"inputs": {"x": [[1, 2'), 400),
    "not_utf8": (post(PREDICT, b'{"inputs": "\xff\xfe"}'), 400),
    "huge_integer": (post(PREDICT, b'{"inputs": {"x": [[' + b"9" * 5000 + b', 1, 1, 1]]}}'), 400),
    "ragged": (post(PREDICT, b'{"inputs": {"x": [[1, 2, 3, 4], [1]]}}'), 400),
    "objects_for_numbers": (post(PREDICT, b'{"inputs": {"x": [[{"a": 1}, 1, 1, 1]]}}'), 400),
    "wrong_shape": (post(PREDICT, b'{"inputs": {"x": [[1, 2, 3]]}}'), 400),
    "unknown_input": (post(PREDICT, b'{"inputs": {"x": [[1, 2, 3, 4]], "q": [1]}}'), 400),
    "both_formats": (post(PREDICT, b'{"inputs": [[1, 2, 3, 4]], "instances": [[1, 2, 3, 4]]}'), 400),
    "content_length_text": (post(PREDICT, b"{}", headers={"Content-Length": "12abc"}), 400),
    "content_length_negative": (post(PREDICT, b"{}", headers={"Content-Length": "-2"}), 400),
    "content_length_missing": (post(PREDICT, b"", headers={"Content-Length": None}), 411),
    "chunked": (post(PREDICT, b"2\r\n{}\r\n0\r\n\r\n", headers={"Content-Length": None,
                                                                  "Transfer-Encoding": "chunked"}), 411),
    "body_over_limit": (post(PREDICT, b"[" + b"1," * 700_000 + b"1]"), 413),  # 1.4 MB > --max-json-mb 1
    "bad_request_line": (b"HELLO THERE FRIEND\r\n\r\n", 400),
    "http_0_9_line": (b"HELLO THERE\r\n\r\n", 400),
    "unknown_method": (b"PUT /v1/models/dense HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    "unknown_path": (b"GET /v2/whatever HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "unknown_model": (post("/v1/models/other:predict", b'{"inputs": [[1, 2, 3, 4]]}'), 404),
}


@pytest.mark.parametrize("case", sorted(REST_CASES))
def test_malformed_rest_requests_are_answered_with_one_log_line(dense_server, case):
    data, want = REST_CASES[case]
    with one_log_line(dense_server, "rest", str(want)):
        status, body = raw_http(dense_server.rest_port, data)
    assert status == want, (status, body[:300])
    assert "error" in json.loads(body)
    assert_good_request_works(dense_server)


def test_body_shorter_than_content_length_is_answered_408_after_the_io_timeout(dense_server):
    with one_log_line(dense_server, "rest", "408"):
        t0 = time.monotonic()
        status, body = raw_http(dense_server.rest_port, post(PREDICT, b'{"inputs":', headers={"Content-Length": "500"}))
        took = time.monotonic() - t0
    assert status == 408 and 1.5 < took < 15, (status, took, body)
    assert_good_request_works(dense_server)


def test_silent_connections_do_not_hold_the_server(dense_server):
    """Clients that connect and send nothing, or stop mid-headers, are closed after --io-timeout (2 s);
    the stalled requests get a 408 first. Meanwhile the server answers others."""
    socks = [socket.create_connection(("127.0.0.1", dense_server.rest_port), timeout=30) for _ in range(12)]
    try:
        for s in socks[::2]:
            s.sendall(b"POST /v1/models/dense:predict HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        assert_good_request_works(dense_server)
        for i, s in enumerate(socks):
            s.settimeout(10)
            received = b""
            while chunk := s.recv(4096):  # until the server closes
                received += chunk
            assert received.startswith(b"HTTP/1.1 408") if i % 2 == 0 else received == b"", received
    finally:
        for s in socks:
            s.close()
    assert "Traceback" not in dense_server.stderr()


def test_connections_past_the_limit_get_503(dense_server):
    socks = [socket.create_connection(("127.0.0.1", dense_server.rest_port), timeout=30) for _ in range(16)]
    try:
        time.sleep(0.3)  # the server has taken all 16 (--max-connections 16)
        with one_log_line(dense_server, "rest", "connection", "UNAVAILABLE"):
            status, body = raw_http(dense_server.rest_port, b"GET /v1/models/dense HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and "too many connections" in json.loads(body)["error"]
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    assert_good_request_works(dense_server)


# --- hostile models: each costs one request ------------------------------------------------------------------


def test_hanging_model_costs_one_request_over_grpc_and_rest(trap_server):
    import tensorflow as tf

    trap_server.wait_settled()
    t0 = time.monotonic()
    with one_log_line(trap_server, "Predict", "DEADLINE_EXCEEDED"):
        code, details = grpc_call(trap_server.grpc, predict_bytes("trap", {"x": TRAP_HANG}), timeout=120)
    assert code == "DEADLINE_EXCEEDED" and "restarted" in details, details
    assert DEADLINE - 0.5 < time.monotonic() - t0 < DEADLINE + 10
    code, response = grpc_call(trap_server.grpc, predict_bytes("trap", {"x": TRAP_OK}), timeout=30)
    assert code == "OK", response  # at once, by the other worker
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), TRAP_OK * 10)
    trap_server.wait_settled()

    with one_log_line(trap_server, "rest", "504"):
        status, body = rest_predict(trap_server.rest_port, "trap", {"x": TRAP_HANG}, timeout=120)
    assert status == 504, body
    status, body = rest_predict(trap_server.rest_port, "trap", {"x": TRAP_OK}, timeout=30)
    assert status == 200, (status, body, trap_server.stderr()[-3000:])
    assert json.loads(body)["outputs"] == (TRAP_OK * 10).tolist()
    trap_server.wait_settled()
    assert trap_server.proc.poll() is None and "Traceback" not in trap_server.stderr()


def test_aborting_model_costs_one_request(trap_server):
    import tensorflow as tf

    trap_server.wait_settled()
    with one_log_line(trap_server, "Predict", "INTERNAL", "SIGABRT"):
        code, details = grpc_call(trap_server.grpc, predict_bytes("trap", {"x": TRAP_ABORT}), timeout=120)
    assert code == "INTERNAL", details
    assert trap_server.proc.poll() is None
    code, response = grpc_call(trap_server.grpc, predict_bytes("trap", {"x": TRAP_OK}), timeout=30)
    assert code == "OK", response
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), TRAP_OK * 10)
    trap_server.wait_settled()
    with one_log_line(trap_server, "rest", "500"):
        status, body = rest_predict(trap_server.rest_port, "trap", {"x": TRAP_ABORT}, timeout=120)
    assert status == 500 and "error" in json.loads(body)
    status, body = rest_predict(trap_server.rest_port, "trap", {"x": TRAP_OK}, timeout=30)
    assert status == 200, body
    trap_server.wait_settled()
    assert trap_server.proc.poll() is None and "Traceback" not in trap_server.stderr()


def test_abandoned_requests_do_not_exhaust_the_server(trap_server):
    """Eight clients send a request that hangs and give up after 0.5 s; the server still answers everyone."""
    import grpc
    from tensorflow_serving.apis import get_model_metadata_pb2

    from graphopt.serving.server import GRPC_OPTIONS

    trap_server.wait_settled()
    payload = predict_bytes("trap", {"x": TRAP_HANG})
    with grpc.insecure_channel(trap_server.grpc, options=GRPC_OPTIONS) as channel:
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        abandoned = [call.future(payload, timeout=0.5) for _ in range(8)]
        codes = []
        for f in abandoned:
            try:
                f.result()
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
    assert set(codes) <= {"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}, codes
    meta = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta.model_spec.name = "trap"
    t0 = time.monotonic()
    code, _ = grpc_call(trap_server.grpc, meta.SerializeToString(), method="GetModelMetadata", timeout=10)
    assert code == "OK" and time.monotonic() - t0 < 5  # threads are free at once
    # the hung ones end at the server's deadline; their workers restart; then everyone is served again
    code, response = until_ok(lambda: grpc_call(trap_server.grpc, predict_bytes("trap", {"x": TRAP_OK}), timeout=60))
    assert code == "OK", response
    trap_server.wait_settled()
    assert "Traceback" not in trap_server.stderr()


def test_full_server_answers_resource_exhausted_and_503_at_once(trap_server):
    """--max-in-flight 3: three hanging requests in flight, the fourth is refused without waiting."""
    trap_server.wait_settled()
    results: list = []

    def hang() -> None:
        results.append(grpc_call(trap_server.grpc, predict_bytes("trap", {"x": TRAP_HANG}), timeout=120)[0])

    threads = [threading.Thread(target=hang) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    code, details = grpc_call(trap_server.grpc, predict_bytes("trap", {"x": TRAP_OK}), timeout=30)
    assert code == "RESOURCE_EXHAUSTED" and "--max-in-flight" in details, details
    status, body = rest_predict(trap_server.rest_port, "trap", {"x": TRAP_OK}, timeout=30)
    assert status == 503, body
    assert time.monotonic() - t0 < 3
    for t in threads:
        t.join(timeout=120)
    # two ran into the deadline in the two workers; the queued one waited out its deadline or saw both restarting
    assert results.count("DEADLINE_EXCEEDED") >= 2 and set(results) <= {"DEADLINE_EXCEEDED", "UNAVAILABLE"}, results
    code, _ = until_ok(lambda: grpc_call(trap_server.grpc, predict_bytes("trap", {"x": TRAP_OK}), timeout=60))
    assert code == "OK"
    trap_server.wait_settled()


def test_hanging_warmup_fails_the_start_with_a_clear_error(tmp):
    from graphopt.serving.export import export_versioned

    export_versioned(trap_model(), tmp / "trap-warm", samples=[{"x": TRAP_OK}, {"x": TRAP_HANG}])
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "graphopt", "serve", str(tmp / "trap-warm"), "--port", "0",
                           "--rest-port", "-1", *TRAP_FLAGS], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 8, proc.stderr  # ExitCode.RESOURCE: the model ran out of time
    assert f"warm-up request did not finish within {DEADLINE} s (record 2)" in proc.stderr
    assert "--no-warmup" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 240


def test_write_file_main_op_named_under_save_is_refused(tmp, cli):
    """The old check skipped the saver's whole name scope, so a WriteFile named ``save/...`` ran at load."""
    import tensorflow as tf

    target = tmp / "pwned.txt"
    export_dir = tmp / "evil" / "1"
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        v = tf.compat.v1.Variable(2.0, name="v")
        y = tf.identity(x * v, name="y")
        saver = tf.compat.v1.train.Saver(sharded=True)  # its ops are under "save/"
        with g.name_scope("save/"):
            evil = tf.io.write_file(str(target), "pwned", name="evil")
        assert evil.name == "save/evil"
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(str(export_dir))
            sig = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig},
                                                 main_op=evil, saver=saver)
            builder.save()
    assert not target.exists()
    code, _, err = cli("serve", tmp / "evil", "--port", "0", "--rest-port", "-1")
    assert code == 7 and "WriteFile" in err and "save/evil" in err, err
    assert not target.exists()


# --- load test with hostile requests mixed in ----------------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_load_test_with_hostile_requests(dense_server, transport):
    from graphopt.serving.loadtest import run_load

    rest = transport == "rest"
    target = f"127.0.0.1:{dense_server.rest_port}" if rest else dense_server.grpc
    stats = run_load(target, "dense", inputs={"x": GOOD_X}, concurrency=2, requests=60, rest=rest, hostile=0.3,
                     max_seconds=120, server_pid=dense_server.proc.pid, seed=1)
    hostile = stats["hostile"]
    assert hostile["sent"] > 5 and stats["sent"] == 60
    assert hostile["refused"] == hostile["sent"], hostile["answers"]
    assert hostile["dropped"] == hostile["accepted"] == hostile["other"] == 0
    assert stats["ok"] == 60 - hostile["sent"] and stats["errors"] == 0, stats["first_error"]
    memory = stats["server_memory"]
    assert memory["samples"] >= 2 and memory["peak_mb"] - memory["start_mb"] < 200
    assert "Traceback" not in dense_server.stderr()
