"""Shape specialization: fix the inputs' unknown dimensions, so shape arithmetic becomes constants.

A model exported with an unknown batch dimension computes shapes at run time:
Keras 3's ``LayerNormalization`` and ``Reshape`` emit ``Shape -> StridedSlice /
GatherV2 -> Prod -> Pack -> Reshape`` chains, dozens per model, and no pass can
fold them because one input dimension is ``?``. TF Serving usually sees one
shape (batch 1, a fixed image size); given it, every such chain is a constant.
This is what onnxsim's ``--overwrite-input-shape`` does.

:func:`specialize` sets the shapes on the signature's input ``Placeholder``\\ s
and on the signature itself (the exported ``SignatureDef`` then states them, so
a client sees what the model was specialized to), then
:func:`materialize_shapes` replaces each ``Shape``/``Size``/``Rank`` of a
fully known tensor by a ``Const`` of its value; ``fold_constants`` and
Grappler fold what reads them. The model only accepts inputs of those shapes
afterwards: that is the point, and why it is never done without being asked.

Ways to ask: ``graphopt optimize --input-shape image=1,224,224,3`` (or
``--input-shape sample`` for the shapes of the ``--sample`` arrays), which
specializes the model right after loading, before the original's reference
outputs are computed; or the pass ``specialize_shapes(shape=image=1,224,224,3)``
in a pipeline.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from graphopt.errors import UsageError
from graphopt.graph.edit import GraphEditor
from graphopt.model import Model, TensorSpec
from graphopt.passes.base import Option, Pass, PassResult

SHAPE_OPS = ("Shape", "Size", "Rank")
_DIMS = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*$")


def parse_shapes(items: Sequence[str], signature: Any, *, where: str = "--input-shape") -> dict[str, tuple[int, ...]]:
    """``["image=1,224,224,3"]`` -> ``{"image": (1, 224, 224, 3)}``; the key may be left out for a one-input model."""
    out: dict[str, tuple[int, ...]] = {}
    keys = list(signature.inputs)
    for item in items:
        key, sep, dims = item.rpartition("=")
        if not sep:
            if len(keys) != 1:
                raise UsageError(f"{item!r} names no input, and the model has {len(keys)}", where=where,
                                 hint=f"write KEY=DIMS, KEY one of: {', '.join(keys)}")
            key, dims = keys[0], item
        key = key.strip()
        if not _DIMS.match(dims):
            raise UsageError(f"{item!r}: the shape must be comma-separated positive sizes", where=where,
                             hint="e.g. image=1,224,224,3 (every dimension fixed)")
        out[key] = tuple(int(d) for d in dims.split(","))
    return out


def specialize(model: Model, shapes: Mapping[str, Sequence[int]], *, where: str = "--input-shape") -> Model:
    """A copy of ``model`` whose inputs ``shapes`` names have those static shapes (graph and signature).

    :class:`UsageError` if a key is no input, the rank differs or a known dimension disagrees.
    """
    if not shapes:
        return model
    sig = model.signature
    inputs = dict(sig.inputs)
    placeholders: dict[str, tuple[int, ...]] = {}
    for key, dims in shapes.items():
        dims = tuple(int(d) for d in dims)
        spec = inputs.get(key)
        if spec is None:
            raise UsageError(f"no input '{key}' to specialize", where=where,
                             hint=f"inputs of the signature: {', '.join(inputs)}")
        if any(d <= 0 for d in dims):
            raise UsageError(f"input '{key}': every dimension must be a positive size, got {list(dims)}", where=where)
        if spec.shape is not None:
            if len(spec.shape) != len(dims):
                raise UsageError(f"input '{key}' has rank {len(spec.shape)}, the shape given rank {len(dims)}",
                                 where=where, hint=f"its shape is {_text(spec.shape)}")
            clash = [i for i, (have, want) in enumerate(zip(spec.shape, dims)) if have is not None and have != want]
            if clash:
                raise UsageError(f"input '{key}' is {_text(spec.shape)}; dimension {clash[0]} cannot become "
                                 f"{dims[clash[0]]}", where=where, hint="only unknown (?) dimensions can be fixed")
        placeholders[spec.node] = dims
        inputs[key] = TensorSpec(spec.name, spec.dtype, dims)
    out = model.copy()
    found = set()
    for node in out.graph_def.node:
        if node.name in placeholders:
            if node.op not in ("Placeholder", "PlaceholderWithDefault"):
                raise UsageError(f"input node '{node.name}' is a {node.op}, not a Placeholder", where=where,
                                 hint="only placeholder inputs can be specialized")
            shape = node.attr["shape"].shape
            shape.Clear()
            for d in placeholders[node.name]:
                shape.dim.add(size=d)
            found.add(node.name)
    missing = sorted(set(placeholders) - found)
    if missing:
        raise UsageError(f"input node '{missing[0]}' is not in the graph", where=where)
    metadata = dict(out.metadata)
    metadata["specialized_shapes"] = {**metadata.get("specialized_shapes", {}),
                                      **{k: list(v) for k, v in shapes.items()}}
    return out.replace(signature=dataclasses.replace(sig, inputs=inputs), metadata=metadata)


def _text(shape: Sequence[int | None]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def materialize_shapes(model: Model) -> tuple[Model, int]:
    """``Shape``/``Size``/``Rank`` of tensors whose shape TensorFlow infers fully become Consts (same names)."""
    import numpy as np

    if not any(n.op in SHAPE_OPS for n in model.graph_def.node):
        return model, 0
    out = model.copy()
    ed = GraphEditor(out.graph_def, out.protected_nodes)
    count = 0
    for node in [n for n in out.graph_def.node if n.op in SHAPE_OPS]:
        data = ed.data_inputs(node)
        if node.name in ed.protected or len(data) != 1:
            continue
        shape = ed.static_shape(data[0])
        if shape is None or (node.op != "Rank" and any(d is None for d in shape)):
            continue
        out_type = node.attr["out_type"].type if "out_type" in node.attr else 3  # Rank is always int32
        dtype = np.int64 if out_type == 9 else np.int32
        dims = [int(d or 0) for d in shape]  # fully known here (Rank needs none of them)
        value = {"Shape": np.array(dims, dtype), "Size": np.array(int(np.prod(dims)), dtype),
                 "Rank": np.array(len(shape), np.int32)}[node.op]
        const = ed.add_const(node.name + "/value", value, device=node.device)
        controls = ed.control_inputs(node)
        # The Const keeps the node's name (readers unchanged): turn this node into an Identity of it.
        from tensorflow.core.framework.attr_value_pb2 import AttrValue

        ed.replace_node(node, "Identity", [const] + controls, {"T": AttrValue(type=3 if dtype is np.int32 else 9)})
        ed.prune_dead(data)
        count += 1
    if not count:
        return model, 0
    ed.commit()
    return out, count


class SpecializeShapes(Pass):
    name = "specialize_shapes"
    description = ("Fix the inputs' unknown dimensions (shape=KEY=1,224,224,3), then turn Shape/Size/Rank of "
                   "fully known tensors into constants so shape arithmetic folds.")
    options = {
        "shape": Option(list, [], "KEY=DIMS per input to fix (repeat for several inputs); none: only materialize "
                                  "the shapes already known"),
    }
    edits_input = False  # specialize/materialize copy

    def run(self, model: Model) -> PassResult:
        shapes = parse_shapes(self.config["shape"], model.signature, where=f"pass {self.name}")
        specialized = specialize(model, shapes, where=f"pass {self.name}")
        out, count = materialize_shapes(specialized)
        notes = [f"inputs specialized to {', '.join(f'{k}={_text(v)}' for k, v in shapes.items())}"] if shapes else []
        modified = bool(shapes) or count > 0
        return PassResult(out if modified else model, modified=modified,
                          counters={"inputs_specialized": len(shapes), "shapes_materialized": count}, notes=notes)


PASSES = [SpecializeShapes]
