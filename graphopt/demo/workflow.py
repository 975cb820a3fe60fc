"""The seed post's workflow, step by step, on the locally built detector; returns what it measured.

The seed (TF 1.15, tensorflow_hub 0.7) did, in one ``tf.Graph``::

    input_image = tf.placeholder(tf.uint8, [1, None, None, 3], name="input_image")
    images = tf.expand_dims(tf.image.convert_image_dtype(tf.squeeze(input_image, [0]), tf.float32), 0)
    net = hub.Module(module_url)(images, as_dict=True)
    outputs = {"detection_boxes": tf.reshape(net["detection_boxes"], (1, -1, 4)), ...}
    tf.saved_model.simple_save(sess, "models/1", inputs={"inputs": input_image}, outputs=outputs)
    TransformGraph(graph_def, ["input_image:0"], ["Reshape:0", "Reshape_1:0", "Reshape_2:0"], transforms)
    # re-import, simple_save again into models/2: 122 MB -> 58 MB

:func:`run_workflow` replays exactly that, with graphopt doing the transform
step (``graphopt.load`` -> ``Pipeline.parse("gtt-seed").run`` -> ``graphopt.save``),
and then the same with graphopt's own ``serving`` preset when it is registered,
and with GTT README's deployment list (``gtt-deploy``), which has no
``remove_attribute(attribute_name=_class)``: on this graph its ``remove_nodes``
leaves ``_class: loc:@...CheckNumerics`` pointing at a removed node, and graphopt
stops it with a PassError instead of writing a graph TensorFlow cannot import.
Nothing is printed: the CLI (``graphopt demo``) renders the returned data.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.graph.names import node_name

SEED_TRANSFORMS = ("remove_attribute(attribute_name=_class) remove_nodes(op=Identity, op=CheckNumerics) "
                   "strip_unused_nodes fold_constants(ignore_errors=true) fold_batch_norms fold_old_batch_norms "
                   "merge_duplicate_nodes")
SEED_OUTPUT_NAMES = ("Reshape:0", "Reshape_1:0", "Reshape_2:0")
# Ops whose counts before/after tell the story of the seed list.
WATCHED_OPS = ("FusedBatchNorm", "Identity", "CheckNumerics", "Const", "Enter", "Exit", "NextIteration",
               "NonMaxSuppressionV3", "VariableV2")
IMAGE_SHAPE = (1, 320, 320, 3)


@dataclass
class Step:
    """One step of the workflow: what it did, in words, and how long it took."""

    name: str
    detail: str
    seconds: float
    ok: bool = True


@dataclass
class Optimization:
    """One optimized SavedModel: which pipeline made it and how it compares with the as-is one."""

    pipeline: str
    spec: str
    path: str
    saved_model_bytes: int
    nodes: int
    ops: dict[str, int]
    records: list[dict[str, Any]]
    seconds: float
    max_abs_diff: dict[str, float]
    classes_equal: bool
    error: str | None = None
    variables_files: int = 0

    @property
    def max_diff(self) -> float:
        return max(self.max_abs_diff.values()) if self.max_abs_diff else float("nan")


@dataclass
class DemoResult:
    """Everything the demo measured; ``to_dict()`` is JSON-ready."""

    workdir: str
    module_path: str
    as_is_path: str
    as_is_saved_model_bytes: int
    as_is_variables_files: int
    as_is_nodes: int
    as_is_ops: dict[str, int]
    loaded_nodes: int
    whole_graph: dict[str, Any]
    image_shape: tuple[int, ...]
    steps: list[Step] = field(default_factory=list)
    optimizations: list[Optimization] = field(default_factory=list)

    @property
    def seed(self) -> Optimization:
        return self.optimizations[0]

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        out = dataclasses.asdict(self)
        for o, d in zip(self.optimizations, out["optimizations"]):
            d["max_diff"] = None if o.error else o.max_diff  # no NaN: it is not JSON
        return out


def watched(graph_def: Any) -> dict[str, int]:
    counts = Counter(n.op for n in graph_def.node)
    return {op: counts.get(op, 0) for op in WATCHED_OPS}


def sample_image(shape: tuple[int, ...] = IMAGE_SHAPE, seed: int = 0) -> np.ndarray:
    """A fixed uint8 test picture: smooth colour gradients, a few filled rectangles and a little noise."""
    rng = np.random.default_rng(seed)
    _, h, w, _ = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (h + w) * 255], axis=-1)
    for _ in range(6):
        y0, x0 = rng.integers(0, h * 3 // 4), rng.integers(0, w * 3 // 4)
        dy, dx = rng.integers(h // 10, h // 3), rng.integers(w // 10, w // 3)
        img[y0:y0 + dy, x0:x0 + dx] = rng.integers(0, 256, 3)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)[None]


# --- step 2: wrap the module as the seed did -----------------------------------------------------------


def wrap_module(module_path: str | Path) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    """Build the seed's serving graph around the module; returns ``(graph, session, inputs, outputs)``.

    The seed called ``hub.Module(url)(images, as_dict=True)``. tensorflow_hub 0.16
    no longer has ``hub.Module`` (TF1 Hub-format support went with TF1), so the
    module is applied the way ``hub.Module`` applied it: its meta graph with tags
    ``[]`` is imported into the current graph under a scope, with the
    signature's ``images`` input mapped onto our tensor, and its variables are
    restored from ``variables/``; ``tf.compat.v1.saved_model.loader.load``
    does both (it passes ``input_map`` to ``import_meta_graph``).
    The caller owns (and must close) the session.
    """
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        input_image = tf.compat.v1.placeholder(dtype=tf.uint8, name="input_image", shape=[1, None, None, 3])
        images = tf.squeeze(input_image, axis=[0])
        images = tf.image.convert_image_dtype(images, dtype=tf.float32)
        images = tf.expand_dims(images, 0)
        sess = tf.compat.v1.Session(graph=graph)
        meta = _module_meta_graph(module_path)
        signature = meta.signature_def["default"]
        tf.compat.v1.saved_model.loader.load(sess, [], str(module_path), import_scope="module",
                                             input_map={signature.inputs["images"].name: images})
        net = {k: graph.get_tensor_by_name("module/" + v.name) for k, v in signature.outputs.items()}
        inputs = {"inputs": input_image}
        detection_boxes = tf.reshape(net["detection_boxes"], (1, -1, 4))
        detection_classes = tf.reshape(net["detection_class_labels"], (1, -1))
        detection_scores = tf.reshape(net["detection_scores"], (1, -1))
        outputs = {"detection_boxes": detection_boxes, "detection_classes": detection_classes,
                   "detection_scores": detection_scores}
    return graph, sess, inputs, outputs


def _module_meta_graph(module_path: str | Path) -> Any:
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(module_path) / "saved_model.pb").read_bytes())
    return next(m for m in sm.meta_graphs if not m.meta_info_def.tags)


# --- step 3: freeze, keeping the whole graph as the seed's as-is SavedModel did -----------------------


def freeze_in_place(sess: Any, graph: Any, drop_scopes: tuple[str, ...] = ("module/save/",)) -> Any:
    """The whole graph with every variable turned into a constant holding its value.

    The seed's module already held its weights as constants, so its as-is
    SavedModel (``simple_save`` of the whole graph) was everything ``hub.Module``
    imported, weights inside, ``variables/`` empty. This gives the same: all
    nodes stay, including the training-only branch (loss, gradients, optimizer
    slots), except what a graph without variables cannot hold: ops that write
    a variable (``Assign``, ``ApplyMomentum``...) and what depends on them,
    plus the module's saver (``drop_scopes``), which only reads/writes checkpoints.
    """
    from tensorflow.python.framework import op_def_registry

    graph_def = graph.as_graph_def()
    variables = [n.name for n in graph_def.node if n.op in ("VariableV2", "Variable")]
    values = dict(zip(variables, sess.run([graph.get_tensor_by_name(v + ":0") for v in variables])))

    def writes_a_variable(op: str) -> bool:
        op_def = op_def_registry.get(op)
        return op_def is not None and any(arg.is_ref for arg in op_def.input_arg)

    drop = {n.name for n in graph_def.node if n.name.startswith(drop_scopes) or
            (n.name not in values and writes_a_variable(n.op))}
    consumers: dict[str, list[str]] = {}
    for n in graph_def.node:
        for inp in n.input:
            consumers.setdefault(node_name(inp), []).append(n.name)
    stack = list(drop)
    while stack:  # everything downstream of a dropped node goes too (data or control)
        for c in consumers.get(stack.pop(), ()):
            if c not in drop:
                drop.add(c)
                stack.append(c)

    import tensorflow as tf

    out = type(graph_def)()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for n in graph_def.node:
        if n.name in drop:
            continue
        if n.name in values:
            const = out.node.add(name=n.name, op="Const", device=n.device)
            value = values[n.name]
            const.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
            const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
            if "_class" in n.attr:
                const.attr["_class"].CopyFrom(n.attr["_class"])
        else:
            out.node.add().CopyFrom(n)
    return out


def save_as_is(graph_def: Any, inputs: dict[str, Any], outputs: dict[str, Any], path: Path) -> None:
    """``tf.saved_model.simple_save`` of the frozen graph, as the seed saved ``models/1``."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        tf.compat.v1.saved_model.simple_save(
            sess, str(path), inputs={k: graph.get_tensor_by_name(t.name) for k, t in inputs.items()},
            outputs={k: graph.get_tensor_by_name(t.name) for k, t in outputs.items()})


# --- running the saved models as TF Serving would -------------------------------------------------------


def predict(saved_model: str | Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """Load a SavedModel with TF's own loader (tag ``serve``), call ``serving_default`` on ``inputs``."""
    import tensorflow as tf

    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(saved_model))
        sig = meta.signature_def["serving_default"]
        keys = sorted(sig.outputs)
        values = sess.run([sig.outputs[k].name for k in keys], {sig.inputs["inputs"].name: image})
    return dict(zip(keys, values))


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[dict[str, float], bool]:
    diffs = {k: float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) if a[k].size else 0.0
             for k in a if k != "detection_classes"}
    return diffs, bool(np.array_equal(a["detection_classes"], b["detection_classes"]))


def saved_model_bytes(path: str | Path) -> int:
    return (Path(path) / "saved_model.pb").stat().st_size


def _variables_files(path: Path) -> int:
    folder = path / "variables"
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def _saved_graph_def(path: str | Path) -> Any:
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    return sm.meta_graphs[0].graph_def


# --- the whole workflow -----------------------------------------------------------------------------------


def run_workflow(workdir: str | Path, *, pipelines: tuple[str, ...] = ("gtt-seed", "serving", "gtt-deploy"),
                 progress: Callable[[Step], None] | None = None, detector_options: dict[str, Any] | None = None,
                 image: np.ndarray | None = None, module: str | Path | None = None) -> DemoResult:
    """Build the detector, wrap and save it as-is, optimize it with each preset in ``pipelines``, compare.

    ``pipelines[0]`` must be registered (``gtt-seed`` is, by graphopt.passes.gtt);
    later ones that are not registered are skipped. ``gtt-deploy`` (GTT README's list, which lacks
    ``remove_attribute(_class)``) is there to show why the seed put that transform first. A pipeline that fails
    raises its :class:`~graphopt.errors.PassError` for the first one, and is
    recorded with its error for later ones. ``progress`` is called after each step.
    ``module`` reuses a detector module already built by :func:`build_module` instead of building one.
    """
    import graphopt
    from graphopt.demo.detector import build_module
    from graphopt.errors import OutputError
    from graphopt.plugins import default_host

    workdir = Path(workdir)
    taken = [p.name + "/" for p in (workdir / "module", workdir / "models") if p.exists()]
    if taken:
        raise OutputError(f"the workdir already holds {' and '.join(taken)} from an earlier run", where=str(workdir),
                          hint="give an empty or new --workdir, or remove that one")
    workdir.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []

    def done(name: str, detail: str, t0: float, ok: bool = True) -> None:
        steps.append(Step(name, detail, time.perf_counter() - t0, ok))
        if progress:
            progress(steps[-1])

    t0 = time.perf_counter()
    module_path = Path(module) if module else build_module(workdir / "module", **(detector_options or {}))
    module_ops = Counter(n.op for n in _module_meta_graph(module_path).graph_def.node)
    done("build", f"SSD/MobileNetV2 detector written as a TF1 Hub module ({sum(module_ops.values())} nodes, "
                  f"{module_ops['VariableV2']} VariableV2, {module_ops['FusedBatchNorm']} FusedBatchNorm, "
                  f"{module_ops['NonMaxSuppressionV3']} NonMaxSuppressionV3 in a while_loop)", t0)

    t0 = time.perf_counter()
    graph, sess, inputs, outputs = wrap_module(module_path)
    try:
        names = tuple(outputs[k].name for k in ("detection_boxes", "detection_classes", "detection_scores"))
        done("wrap", f"uint8 input_image [1,None,None,3] -> module -> reshaped outputs {', '.join(names)}", t0)
        t0 = time.perf_counter()
        frozen = freeze_in_place(sess, graph)
    finally:
        sess.close()
    done("freeze", f"variables turned into constants in place; {len(frozen.node)} nodes kept", t0)

    t0 = time.perf_counter()
    as_is = workdir / "models" / "1"
    save_as_is(frozen, inputs, outputs, as_is)
    as_is_bytes = saved_model_bytes(as_is)
    done("save as-is", f"simple_save -> {as_is}", t0)

    image = sample_image() if image is None else image
    t0 = time.perf_counter()
    reference = predict(as_is, image)
    done("predict as-is", f"one {'x'.join(map(str, image.shape))} uint8 image through the as-is SavedModel", t0)

    t0 = time.perf_counter()
    model = graphopt.load(str(as_is))
    done("load", f"graphopt.load: {model.format}, signature {model.signature.key}, {model.node_count} nodes "
                 f"(freezing keeps what the signature needs: the training branch is dropped here)", t0)

    result = DemoResult(
        workdir=str(workdir), module_path=str(module_path), as_is_path=str(as_is),
        as_is_saved_model_bytes=as_is_bytes, as_is_variables_files=_variables_files(as_is),
        as_is_nodes=len(frozen.node), as_is_ops=watched(frozen), loaded_nodes=model.node_count, whole_graph={},
        image_shape=tuple(image.shape), steps=steps)
    presets = default_host().registry.presets
    result.whole_graph = _seed_on_whole_graph(frozen, model, image, reference, done)
    for i, name in enumerate(pipelines):
        if i and name not in presets:
            continue
        out = workdir / "models" / str(i + 2)
        result.optimizations.append(_optimize(model, name, out, image, reference, done, raise_errors=i == 0))
    return result


def _seed_on_whole_graph(frozen: Any, model: Any, image: np.ndarray, reference: dict[str, np.ndarray],
                         done: Callable[..., None]) -> dict[str, Any]:
    """The seed list on the whole as-is graph, as the post's ``TransformGraph(graph.as_graph_def(), ...)`` ran it.

    ``graphopt.load`` keeps only what the signature needs; the post transformed
    everything, training branch included, and let ``strip_unused_nodes`` drop it.
    This checks that the list also holds there (``remove_nodes`` meets the
    gradients' control-dependency Identities and the loop's Identities).
    """
    import graphopt
    from graphopt.runtime.session import run_model

    t0 = time.perf_counter()
    whole = model.replace(graph_def=frozen, init_ops=[], source=model.source, format="graph_def")
    run = graphopt.Pipeline.parse("gtt-seed").run(whole)
    diffs, classes_equal = compare(reference, run_model(run.model, {"inputs": image}))
    stripped = next((r["nodes_before"] - r["nodes_after"] for r in (x.to_dict() for x in run.records)
                     if r["name"] == "strip_unused_nodes"), 0)
    out = {"nodes_before": len(frozen.node), "nodes_after": run.model.node_count, "strip_unused_removed": stripped,
           "graph_bytes_before": frozen.ByteSize(), "graph_bytes_after": run.model.size_bytes,
           "max_diff": max(diffs.values()), "classes_equal": classes_equal}
    done("seed on whole graph", f"as the post ran TransformGraph: {out['nodes_before']} -> {out['nodes_after']} nodes "
         f"(strip_unused_nodes -{stripped}), largest |difference| {out['max_diff']:.3g}", t0)
    return out


def _optimize(model: Any, name: str, out: Path, image: np.ndarray, reference: dict[str, np.ndarray],
              done: Callable[..., None], *, raise_errors: bool) -> Optimization:
    import graphopt
    from graphopt.errors import GraphoptError

    t0 = time.perf_counter()
    spec = name
    timings: dict[str, float] = {}

    def pipeline_done(run: Any) -> None:
        nonlocal t0
        timings["pipeline"] = time.perf_counter() - t0
        done(f"optimize [{name}]", f"{len(run.records)} passes, {model.node_count} -> {run.model.node_count} nodes",
             t0)
        t0 = time.perf_counter()

    try:
        pipeline = graphopt.Pipeline.parse(name)
        spec = pipeline.spec
        # The demo compares the served SavedModel with the as-is one itself (below), image in, boxes out.
        run = graphopt.optimize(model, out, transforms=pipeline, format="saved_model", verify=False,
                                on_pipeline_done=pipeline_done).pipeline
        seconds = timings["pipeline"]
        done(f"save [{name}]", f"graphopt.save -> {out}", t0)
        t0 = time.perf_counter()
        diffs, classes_equal = compare(reference, predict(out, image))
    except GraphoptError as exc:
        if raise_errors:
            raise
        # a later pipeline (graphopt's own preset) failing is reported beside the seed's, not fatal
        done(f"optimize [{name}]", f"failed: {exc.message}", t0, ok=False)
        return Optimization(name, spec, "", 0, 0, {}, [], time.perf_counter() - t0, {}, False, error=exc.message)
    done(f"compare [{name}]", f"largest |difference| {max(diffs.values()):.3g}, classes "
                              f"{'equal' if classes_equal else 'DIFFER'}", t0)
    optimized = _saved_graph_def(out)
    return Optimization(name, run.spec, str(out), saved_model_bytes(out), len(optimized.node), watched(optimized),
                        [r.to_dict() for r in run.records], seconds, diffs, classes_equal,
                        variables_files=_variables_files(out))
