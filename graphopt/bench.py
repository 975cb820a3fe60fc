"""Benchmarks: size, nodes, cold start in a fresh process, warm latency and peak memory, several models side by side.

What is measured, and why this way:

* **size** is what is on disk (a SavedModel folder counts every file in it),
  **nodes** counts the frozen graph plus function bodies, **constant bytes**
  the weights held in ``Const`` nodes.
* **cold start** runs in a fresh Python process that imports TensorFlow first
  (not counted: every server has already paid it), then loads the model the way
  TF Serving does -- ``tf.compat.v1.saved_model.loader.load`` with tag ``serve``
  in a new session, which runs the main op (table initialisers) -- and then
  makes the first inference, timed separately: that is where runtime Grappler
  runs and where a first request pays. Frozen ``.pb`` files are imported and
  run. **Peak memory** is the rise of that process's peak RSS above its RSS
  after importing TensorFlow.
* **warm latency** loads every model in one process, warms each up, then runs
  them interleaved run by run on the same inputs (so background load on a
  shared machine hits all models alike), and reports median and p90.
* ``grappler`` sets runtime Grappler per model as TF Serving's session config
  would: ``"full"`` (TensorFlow's default), ``"off"`` / ``"remap"`` (what a
  model pre-optimized by ``grappler_optimize`` ships), ``"constfold"`` (what fp16/int8
  weights ship), or ``"shipped"``: the ``session_config.pbtxt`` found beside
  the model (see :mod:`graphopt.runtime.config`), else ``"full"``.

Core code: returns a :class:`BenchReport`; ``graphopt bench`` renders it.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import GraphoptError, InputError, UsageError
from graphopt.graph.names import node_name
from graphopt.model import Model
from graphopt.savers import disk_bytes

SAVED_MODEL_FORMATS = ("saved_model", "saved_model_tf1")
GRAPH_FORMATS = ("pb", "pbtxt", "graph_def")
RATIO_FIELDS = ("disk_bytes", "nodes", "const_bytes", "load_s", "first_run_s", "cold_s", "peak_rss_bytes",
                "median_ms", "p90_ms")


@dataclass
class ColdStart:
    """One fresh process: load, first inference, and memory above the TF-imported baseline (medians if repeated)."""

    load_s: float
    first_run_s: float
    peak_rss_bytes: int
    rss_after_bytes: int
    method: str
    repeats: int = 1

    @property
    def total_s(self) -> float:
        return self.load_s + self.first_run_s

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "total_s": self.total_s}


@dataclass
class WarmLatency:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    warmup: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ModelBench:
    """Everything measured for one model. ``ratios`` are against the first model of the run."""

    label: str
    source: str
    format: str
    disk_bytes: int
    graph_bytes: int
    nodes: int
    function_nodes: int
    const_bytes: int
    grappler: str  # runtime optimizer the sessions ran with: full | off | constfold | custom
    cold: ColdStart | None = None
    warm: WarmLatency | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)

    def value(self, name: str) -> float | None:
        if name in ("load_s", "first_run_s", "peak_rss_bytes"):
            return getattr(self.cold, name) if self.cold else None
        if name == "cold_s":
            return self.cold.total_s if self.cold else None
        if name in ("median_ms", "p90_ms"):
            return getattr(self.warm, name) if self.warm else None
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("cold", "warm")}
        d["cold"] = self.cold.to_dict() if self.cold else None
        d["warm"] = self.warm.to_dict() if self.warm else None
        return d


@dataclass
class BenchReport:
    models: list[ModelBench]
    runs: int
    warmup: int
    inputs: dict[str, dict[str, Any]]
    input_source: str
    machine: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "runs": self.runs, "warmup": self.warmup, "inputs": self.inputs,
                "input_source": self.input_source, "models": [m.to_dict() for m in self.models],
                "notes": list(self.notes)}


def machine_info() -> dict[str, Any]:
    """The machine a figure was measured on: CPU, cores, memory, Python and TensorFlow versions."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "os": platform.platform(terse=True), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}
    try:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


# --- targets -----------------------------------------------------------------------


@dataclass
class _Target:
    label: str
    model: Model
    path: Path
    format: str
    disk_bytes: int


def _resolve(source: str | Path | Model, label: str | None, signature: str | None, tmp: Path, index: int) -> _Target:
    if isinstance(source, Model):
        # Always measured as the frozen .pb it would be written as: ``source`` of an optimized model still
        # names the file it was loaded from, which is not what is being measured.
        model = source
        path = tmp / f"model{index}.pb"
        path.write_bytes(model.graph_def.SerializeToString())
        fmt = "graph_def"
        if label is None and model.source and model.source != "<memory>":
            label = f"{Path(model.source).name or model.source} #{index + 1}"
    else:
        from graphopt.loaders import detect, load

        path = Path(source)
        fmt = detect(path)
        model = load(path, signature=signature)
    return _Target(label or _default_label(path, index), model, path, fmt, disk_bytes(path))


def _default_label(path: Path, index: int) -> str:
    name = path.name if not path.name.isdigit() else f"{path.parent.name}/{path.name}"
    return name or f"model{index}"


def _count_nodes(model: Model) -> tuple[int, int]:
    fn_nodes = sum(len(f.node_def) for f in model.graph_def.library.function)
    return len(model.graph_def.node) + fn_nodes, fn_nodes


def _const_bytes(model: Model) -> int:
    from graphopt.analysis.stats import constant_info

    total = 0
    nodes = list(model.graph_def.node) + [n for f in model.graph_def.library.function for n in f.node_def]
    for node in nodes:
        if node.op == "Const":
            info = constant_info(node)
            total += info.bytes if info else 0
    return total


def shipped_config_file(path: str | Path) -> Path | None:
    """The ``session_config.pbtxt`` shipped with a model: in its folder, its ``assets.extra``, or the folders above."""
    from graphopt.runtime.config import SESSION_CONFIG_FILE

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder / SESSION_CONFIG_FILE, folder / "assets.extra" / SESSION_CONFIG_FILE,
                      folder.parent / SESSION_CONFIG_FILE, folder.parent.parent / SESSION_CONFIG_FILE):
        if candidate.is_file():
            return candidate
    return None


def describe_config(config: Any) -> str:
    """``full``, ``off``, or the optimizers Grappler is limited to (``constfold``)."""
    rewrite = config.graph_options.rewrite_options
    if rewrite.disable_meta_optimizer:
        return "off"
    if rewrite.optimizers:
        return ",".join(rewrite.optimizers)
    return "full"


def runtime_config(setting: bool | str, path: str | Path | None = None) -> tuple[Any, str]:
    """A session ``ConfigProto`` for a runtime-optimizer setting, and its short description."""
    import tensorflow as tf

    if setting is True or setting in ("on", "full", "true"):
        setting = "full"
    elif setting is False or setting in ("off", "false"):
        setting = "off"
    if setting == "shipped":
        found = shipped_config_file(path) if path is not None else None
        if found is None:
            return tf.compat.v1.ConfigProto(), "full (none shipped)"
        from google.protobuf import text_format

        try:
            config = text_format.Parse(found.read_text(), tf.compat.v1.ConfigProto())
        except (text_format.ParseError, OSError) as exc:
            raise InputError(f"cannot read the shipped session config: {exc}", where=str(found)) from None
        return config, f"{describe_config(config)} (shipped)"
    from graphopt.runtime.config import RUNTIME_OPTIMIZERS, session_config

    if setting not in RUNTIME_OPTIMIZERS:
        raise UsageError(f"runtime optimizer must be full, off, constfold, remap or shipped, not {setting!r}",
                         where="--grappler")
    config = session_config(setting)  # type: ignore[arg-type]  # checked against RUNTIME_OPTIMIZERS just above
    return config, setting


# --- sessions: the same code opens a model in the fresh process and in the warm loop ---------


def _session_spec(target: _Target, config: Any, tags: Sequence[str]) -> dict[str, Any]:
    sig = target.model.signature
    return {"format": target.format, "path": str(target.path), "tags": list(tags), "signature": sig.key,
            "inputs": {k: v.name for k, v in sig.inputs.items()}, "outputs": {k: v.name for k, v in sig.outputs.items()},
            "init_ops": list(target.model.init_ops), "config": config.SerializeToString().hex()}


class _ServingSession:
    """A session over one model opened as TF Serving would (SavedModel) or by import (frozen graphs)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        import tensorflow as tf

        config = tf.compat.v1.ConfigProto.FromString(bytes.fromhex(spec["config"]))
        fmt = spec["format"]
        self.graph = tf.Graph()
        if fmt in SAVED_MODEL_FORMATS:
            self.method = "saved_model loader (tag " + ",".join(spec["tags"]) + ")"
            self.session = tf.compat.v1.Session(graph=self.graph, config=config)
            with self.graph.as_default():
                meta = tf.compat.v1.saved_model.loader.load(self.session, list(spec["tags"]), spec["path"])
            sig = meta.signature_def[spec["signature"]]
            self.inputs = {k: v.name for k, v in sig.inputs.items()}
            self.outputs = {k: v.name for k, v in sig.outputs.items()}
        elif fmt in GRAPH_FORMATS:
            self.method = "import_graph_def"
            gd = tf.compat.v1.GraphDef()
            data = Path(spec["path"]).read_bytes()
            if fmt == "pbtxt":
                from google.protobuf import text_format

                text_format.Parse(data.decode("utf-8"), gd)
            else:
                gd.ParseFromString(data)
            with self.graph.as_default():
                tf.graph_util.import_graph_def(gd, name="")
            self.session = tf.compat.v1.Session(graph=self.graph, config=config)
            if spec["init_ops"]:
                self.session.run([self.graph.get_operation_by_name(node_name(n)) for n in spec["init_ops"]])
            self.inputs, self.outputs = dict(spec["inputs"]), dict(spec["outputs"])
        else:
            # Keras files, checkpoints, Hub modules: TF Serving cannot load them; graphopt's loader freezes them.
            from graphopt.loaders import load
            from graphopt.runtime.session import Session

            self.method = "graphopt loader (freezes on load)"
            model = load(spec["path"], signature=spec["signature"])
            inner = Session(model, config=config)
            self.graph, self.session = inner.graph, inner.session
            self.inputs = {k: v.name for k, v in model.signature.inputs.items()}
            self.outputs = {k: v.name for k, v in model.signature.outputs.items()}
        self._fetch_keys = list(self.outputs)
        self._fetches = [self.outputs[k] for k in self._fetch_keys]

    def feed_dict(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {self.inputs[k]: v for k, v in feeds.items() if k in self.inputs}

    def run(self, feed_dict: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._fetches, feed_dict=feed_dict)

    def close(self) -> None:
        self.session.close()


def peak_rss_bytes() -> int:
    """This process's peak RSS. Linux: ``VmHWM`` (belongs to the current program image); ``ru_maxrss``
    would report the parent's peak, since it is inherited through fork and kept across exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _cold_measure(spec: Mapping[str, Any], feeds_file: str) -> dict[str, Any]:
    """The sandboxed child's side of :func:`cold_run` (TensorFlow is already imported): the raw figures."""
    import psutil

    proc = psutil.Process()
    base_rss = proc.memory_info().rss
    with np.load(feeds_file, allow_pickle=False) as data:
        feeds = {k: data[k] for k in data.files}
    try:
        t0 = time.perf_counter()
        sess = _ServingSession(spec)
        t1 = time.perf_counter()
        feed_dict = sess.feed_dict(feeds)
        t2 = time.perf_counter()
        sess.run(feed_dict)
        t3 = time.perf_counter()
    except GraphoptError:
        raise
    except Exception as exc:  # a TF error: the model does not load or run on these inputs
        raise _failed(exc, "cold start failed", spec["path"]) from None
    peak = peak_rss_bytes()
    rss = proc.memory_info().rss
    return {"load_s": t1 - t0, "first_run_s": t3 - t2, "method": sess.method,
            "peak_rss_bytes": max(peak, rss) - base_rss, "rss_after_bytes": rss - base_rss}


def _failed(exc: BaseException, what: str, where: str | None = None) -> GraphoptError:
    from graphopt.security.sandbox import resource_error, tf_error_text

    return resource_error(exc) or InputError(f"{what}: {tf_error_text(exc)[:300]}", where=where,
                                             hint="give real inputs with --sample FILE.npz")


def _limits(timeout: float | None = None, model_bytes: int = 0) -> Any:
    from graphopt.security.sandbox import default_limits

    limits = default_limits(model_bytes)
    # A benchmark may legitimately run long: the wall clock is the caller's timeout unless GRAPHOPT_TIME_LIMIT says
    # otherwise.
    if timeout is not None and not os.environ.get("GRAPHOPT_TIME_LIMIT", "").strip():
        limits = limits.replace(wall_seconds=timeout)
    return limits


def cold_run(spec: Mapping[str, Any], feeds_file: Path, *, timeout: float = 900, model_bytes: int = 0,
             notes: list[str] | None = None) -> dict[str, Any]:
    """One fresh process: load + first inference of one model; the raw figures.

    The process is a sandboxed child (:mod:`graphopt.security.sandbox`, with ``timeout`` as its wall-clock
    limit): a limit hit or a crash raises :class:`~graphopt.errors.ResourceError`. ``notes`` receives what a
    report should say when it ran less confined than it should.
    """
    from graphopt.security.sandbox import Sandbox

    with Sandbox(_limits(timeout, model_bytes), label=f"the cold start of {spec['path']}") as box:
        result = box.call(_cold_measure, dict(spec), str(feeds_file))
        if notes is not None:
            notes.extend(n for n in box.notes("benchmarking") if n not in notes)
    return result


def cold_start(spec: Mapping[str, Any], feeds_file: Path, *, repeats: int = 1, timeout: float = 900) -> ColdStart:
    """Load + first inference in ``repeats`` fresh processes; medians of each figure."""
    return _median_cold([cold_run(spec, feeds_file, timeout=timeout) for _ in range(repeats)])


def _median_cold(results: Sequence[Mapping[str, Any]]) -> ColdStart:
    med = lambda k: statistics.median(r[k] for r in results)  # noqa: E731
    return ColdStart(load_s=med("load_s"), first_run_s=med("first_run_s"), peak_rss_bytes=int(med("peak_rss_bytes")),
                     rss_after_bytes=int(med("rss_after_bytes")), method=results[0]["method"], repeats=len(results))


def warm_latency(sessions: Sequence[_ServingSession], feeds: Sequence[Mapping[str, np.ndarray]], *, runs: int,
                 warmup: int) -> list[WarmLatency]:
    """Warm each session up, then time them interleaved run by run (start rotating each round)."""
    dicts = [s.feed_dict(f) for s, f in zip(sessions, feeds)]
    for s, d in zip(sessions, dicts):
        for _ in range(warmup):
            s.run(d)
    times: list[list[float]] = [[] for _ in sessions]
    n = len(sessions)
    for r in range(runs):
        for j in range(n):
            i = (r + j) % n
            t0 = time.perf_counter()
            sessions[i].run(dicts[i])
            times[i].append((time.perf_counter() - t0) * 1000)
    out = []
    for t in times:
        arr = np.array(t)
        out.append(WarmLatency(float(np.median(arr)), float(np.percentile(arr, 90)), float(arr.mean()),
                               float(arr.min()), runs, warmup))
    return out


# --- the whole run -------------------------------------------------------------------------


def bench(sources: Sequence[str | Path | Model], *, labels: Sequence[str] | None = None, runs: int = 20,
          warmup: int = 3, grappler: bool | str | Sequence[bool | str] = "full", cold: bool = True,
          cold_repeats: int = 1,
          warm: bool = True, signature: str | None = None, samples: str | Path | Mapping[str, Any] | None = None,
          batch: int = 1, dynamic: int = 32, seed: int = 0, tags: Sequence[str] = ("serve",),
          allow_unsafe: bool | Iterable[str] = False) -> BenchReport:
    """Measure every source (paths or Models) and compare each with the first.

    ``grappler`` is one runtime-optimizer setting for all, or one per source
    (e.g. ``["full", "shipped"]``): see the module docstring. Inputs are the
    same for every model: ``samples`` (an ``.npz`` or arrays) or generated from
    the first model's signature (see :func:`graphopt.verify.compare.make_inputs`).
    """
    from graphopt.security.allowlist import allowing
    from graphopt.security.scan import check_saved_model, ensure_safe
    from graphopt.verify.compare import load_samples, make_inputs

    if not sources:
        raise UsageError("give at least one model to benchmark")
    if runs < 1 or warmup < 0 or cold_repeats < 1:
        raise UsageError("--runs and --cold-repeats must be >= 1 and --warmup >= 0")
    if labels is not None and len(labels) != len(sources):
        raise UsageError("one label per model")
    flags = [grappler] * len(sources) if isinstance(grappler, (bool, str)) else list(grappler)
    if len(flags) != len(sources):
        raise UsageError("one grappler setting per model")
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-") as tmpdir:
        tmp = Path(tmpdir)
        with allowing(allow_unsafe):  # loading may run init ops: the loaders check them against this too
            targets = [_resolve(s, labels[i] if labels else None, signature, tmp, i) for i, s in enumerate(sources)]
        for t in targets:
            ensure_safe(t.model.graph_def, allow=allow_unsafe, action="run it for benchmarking", source=str(t.path))
            if t.format in SAVED_MODEL_FORMATS:  # opened below as TF Serving opens it: its own init ops run
                check_saved_model(t.path, tags=tags, allow=allow_unsafe, action="run it for benchmarking")
        first = targets[0].model
        notes: list[str] = []
        if samples is None:
            base_feeds = make_inputs(first, batch=batch, dynamic=dynamic, seed=seed)
            source = f"random (seed {seed}, batch {batch}, unknown dims {dynamic})"
        elif isinstance(samples, (str, Path)):
            base_feeds, source = load_samples(samples, first.signature), f"samples from {samples}"
        else:
            base_feeds, source = {k: np.asarray(v) for k, v in samples.items()}, "given samples"
        feeds = []
        for t in targets:
            if set(t.model.signature.inputs) == set(base_feeds):
                feeds.append(base_feeds)
            else:
                notes.append(f"{t.label}: signature inputs differ from the first model's; inputs generated for it")
                feeds.append(make_inputs(t.model, batch=batch, dynamic=dynamic, seed=seed))
        results = []
        configs = [runtime_config(g, t.path) for t, g in zip(targets, flags)]
        for t, (_, g) in zip(targets, configs):
            nodes, fn_nodes = _count_nodes(t.model)
            results.append(ModelBench(label=t.label, source=str(t.path), format=t.format, disk_bytes=t.disk_bytes,
                                      graph_bytes=t.model.size_bytes, nodes=nodes, function_nodes=fn_nodes,
                                      const_bytes=_const_bytes(t.model), grappler=g))
        specs = [_session_spec(t, c, tags) for t, (c, _) in zip(targets, configs)]
        if cold:
            files = []
            for i, f in enumerate(feeds):
                files.append(tmp / f"feeds{i}.npz")
                np.savez(files[-1], **f)  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle
            runs_by_model: list[list[dict]] = [[] for _ in specs]
            for _ in range(cold_repeats):  # round-robin, so drifting background load hits every model alike
                for i, spec in enumerate(specs):
                    runs_by_model[i].append(cold_run(spec, files[i], model_bytes=targets[i].model.size_bytes,
                                                     notes=notes))
            for res, cold_runs in zip(results, runs_by_model):
                res.cold = _median_cold(cold_runs)
        if warm:
            from graphopt.security.sandbox import Sandbox

            # Every model in one sandboxed child, interleaved run by run there (see warm_latency).
            total = sum(t.model.size_bytes for t in targets)
            with Sandbox(_limits(900, total), label="the benchmarked models") as box:
                latencies = box.call(_warm_measure, specs, feeds, runs, warmup)
                notes.extend(n for n in box.notes("benchmarking") if n not in notes)
            for res, lat in zip(results, latencies):
                res.warm = WarmLatency(**lat)
    _fill_ratios(results)
    return BenchReport(results, runs, warmup, {k: {"dtype": str(v.dtype), "shape": list(v.shape)}
                                               for k, v in base_feeds.items()}, source, machine_info(), notes)


def _warm_measure(specs: Sequence[Mapping[str, Any]], feeds: Sequence[Mapping[str, np.ndarray]], runs: int,
                  warmup: int) -> list[dict[str, Any]]:
    """The sandboxed child's side of the warm loop: open every model, then :func:`warm_latency`."""
    sessions = []
    try:
        for spec in specs:
            sessions.append(_open(spec))
        try:
            latencies = warm_latency(sessions, feeds, runs=runs, warmup=warmup)
        except Exception as exc:  # a TF runtime error: the model does not run on these inputs
            raise _failed(exc, "a model failed while benchmarking") from None
        return [lat.to_dict() for lat in latencies]
    finally:
        for s in sessions:
            s.close()


def _open(spec: Mapping[str, Any]) -> _ServingSession:
    try:
        return _ServingSession(spec)
    except GraphoptError:
        raise
    except Exception as exc:
        raise _failed(exc, "cannot open the model for benchmarking", spec["path"]) from None


def _fill_ratios(results: list[ModelBench]) -> None:
    base = results[0]
    for res in results:
        for name in RATIO_FIELDS:
            a, b = base.value(name), res.value(name)
            res.ratios[name] = (b / a) if a and b is not None else None


# --- against a running server -------------------------------------------------------------


def _signature_from_metadata(meta: Mapping[str, Any], key: str, where: str) -> Any:
    from graphopt.model import Signature, TensorSpec
    from graphopt.serving.client import tf_dtype_name

    sigs = meta.get("signatures", {})
    if key not in sigs:
        raise InputError(f"the server's model has no signature '{key}'", where=where,
                         hint=f"signatures: {', '.join(sorted(sigs)) or 'none'}")

    def specs(side: Mapping[str, Any]) -> dict:
        return {k: TensorSpec(v.get("name") or k, tf_dtype_name(v["dtype"]),
                              None if v["shape"] is None else tuple(None if d < 0 else d for d in v["shape"]))
                for k, v in side.items()}

    return Signature(inputs=specs(sigs[key]["inputs"]), outputs=specs(sigs[key]["outputs"]), key=key)


def bench_server(targets: Sequence[tuple[str, str]], *, concurrency: int = 4, requests: int = 200,
                 signature: str = "serving_default", samples: str | Path | None = None, batch: int = 1,
                 dynamic: int = 32, seed: int = 0, rest: bool = False) -> list[dict[str, Any]]:
    """Load-test each ``(HOST:PORT, MODEL[:VERSION])`` with :func:`graphopt.serving.loadtest.run_load`.

    Inputs are the ``samples`` file, or generated from the signature the server
    reports (GetModelMetadata), the same for every target when their signatures agree.
    """
    try:
        from graphopt.serving.loadtest import run_load
    except ImportError:
        raise UsageError("load testing a server needs graphopt.serving.loadtest, which this install lacks",
                         hint="benchmark model files instead (graphopt bench SRC ...)") from None
    from graphopt.runtime.session import random_inputs
    from graphopt.verify.compare import load_samples

    results: list[dict[str, Any]] = []
    for server, model in targets:
        name, _, version_text = model.partition(":")
        version = int(version_text) if version_text.isdigit() else None
        where = f"{server} model {model}"
        from graphopt.serving.client import GrpcClient, RestClient

        client_cls = RestClient if rest else GrpcClient
        try:
            with client_cls(server) as client:
                meta = client.metadata(name, version=version)
        except GraphoptError:
            raise
        except Exception as exc:  # transport errors: the target is not serving this model
            raise InputError(f"cannot read the model's metadata: {type(exc).__name__}: {str(exc)[:200]}",
                             where=where, hint="is the server running and the model name right?") from None
        sig = _signature_from_metadata(meta, signature, where)
        inputs = load_samples(samples, sig) if samples else random_inputs(sig, batch=batch, dynamic=dynamic,
                                                                          seed=seed)
        result = run_load(server, name, signature=signature, inputs=inputs, concurrency=concurrency,
                          requests=requests, rest=rest, version=version)
        results.append({**result, "server": server, "model": model})
    return results
