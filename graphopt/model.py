"""The one thing every part of graphopt passes around: a frozen graph and its signature.

A :class:`Model` is what a loader returns, what a pass takes and gives back, and
what an exporter writes. It holds a *frozen* ``GraphDef`` (variables already
turned into constants; TF2 function bodies in its function library), the one
serving signature chosen at load time, and the names of ops that must run once
before serving (lookup-table initialisers), which the exporter saves as the
SavedModel's main op so TF Serving runs them at load.

This module imports no TensorFlow at import time: the CLI's ``--help`` must stay
instant, and TensorFlow is only needed once a graph is touched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from tensorflow.core.framework.graph_pb2 import GraphDef

from graphopt.graph.names import node_name, tensor_name  # noqa: E402,F401 - part of this module's API since 0.1

PREDICT_METHOD = "tensorflow/serving/predict"
DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class TensorSpec:
    """One signature tensor: its name in the graph, dtype name and static shape.

    ``shape`` is ``None`` for unknown rank, otherwise a tuple whose unknown
    dimensions are ``None``. ``dtype`` is a TensorFlow dtype name (``"float32"``).
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None = None

    @property
    def node(self) -> str:
        return node_name(self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}


@dataclass(frozen=True)
class Signature:
    """A serving signature: keys users call the model with, mapped to graph tensors."""

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    key: str = DEFAULT_SIGNATURE
    method_name: str = PREDICT_METHOD

    @property
    def input_nodes(self) -> list[str]:
        return [t.node for t in self.inputs.values()]

    @property
    def output_nodes(self) -> list[str]:
        return list(dict.fromkeys(t.node for t in self.outputs.values()))

    def to_proto(self) -> Any:
        """The ``SignatureDef`` proto: dtypes and shapes as the model states them (unknown dims -1)."""
        from tensorflow.core.protobuf import meta_graph_pb2
        from tensorflow.python.framework import dtypes

        proto = meta_graph_pb2.SignatureDef(method_name=self.method_name)
        for target, specs in ((proto.inputs, self.inputs), (proto.outputs, self.outputs)):
            for key, spec in specs.items():
                info = target[key]
                info.name = spec.name
                info.dtype = dtypes.as_dtype(spec.dtype).as_datatype_enum
                if spec.shape is None:
                    info.tensor_shape.unknown_rank = True
                else:
                    for d in spec.shape:
                        info.tensor_shape.dim.add(size=-1 if d is None else int(d))
        return proto

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "method_name": self.method_name,
            "inputs": {k: v.to_dict() for k, v in self.inputs.items()},
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
        }


@dataclass
class Model:
    """A frozen TensorFlow graph with the signature it is served by.

    ``init_ops`` name nodes to run once after import and before the first
    request (table initialisers); passes must keep them. ``source`` and
    ``format`` say where the model came from, for messages and reports.
    ``assets`` maps asset file names to paths to copy beside an exported
    SavedModel. ``metadata`` carries free-form facts a loader or pass wants to
    pass along (never needed to run the graph).
    """

    graph_def: "GraphDef"
    signature: Signature
    init_ops: list[str] = field(default_factory=list)
    source: str = "<memory>"
    format: str = "graph_def"
    assets: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "Model":
        """A copy with some fields changed; the graph is shared unless given."""
        return dataclasses.replace(self, **changes)

    def with_graph(self, graph_def: "GraphDef") -> "Model":
        return self.replace(graph_def=graph_def)

    def copy(self) -> "Model":
        """A deep copy of the graph, so a pass may edit it in place."""
        gd = type(self.graph_def)()
        gd.CopyFrom(self.graph_def)
        return self.replace(graph_def=gd, init_ops=list(self.init_ops), metadata=dict(self.metadata))

    @property
    def protected_nodes(self) -> set[str]:
        """Nodes no pass may remove or rename: signature inputs/outputs and init ops."""
        return set(self.signature.input_nodes) | set(self.signature.output_nodes) | {node_name(n) for n in self.init_ops}

    @property
    def size_bytes(self) -> int:
        """The serialized size of the graph (computed node by node: see graph_bytes.encoded_size)."""
        from graphopt.graph.encoding import encoded_size

        return encoded_size(self.graph_def)

    @property
    def node_count(self) -> int:
        return len(self.graph_def.node)
