"""graphopt-strip-metadata: drop what a frozen graph carries for training and placement, in one pass.

A frozen graph headed for TF Serving still holds attributes that only mattered
while it was built or trained: ``_class`` colocation lists, stale
``_output_shapes``, XLA clustering marks (``_XlaCompile``, ``_XlaScope``, ...) and
device strings pinned on the training machine. GTT needs one ``remove_attribute``
per attribute name plus ``remove_device``, and never looks inside TF2 function
bodies; this pass does all of it at once, in the function library too.

Removing them does not change what the graph computes: the runtime recomputes
shapes and places nodes itself. It does make equal nodes equal, so
``merge_duplicate_nodes`` finds more to merge afterwards (the ``strip-and-merge`` preset).
"""

from __future__ import annotations

from graphopt import Option, Pass, PassResult, hookimpl

# Attributes that carry no meaning for inference. Names starting with "_Xla" are XLA's clustering marks.
DEFAULT_ATTRS = ("_class", "_output_shapes", "_XlaCompile", "_XlaScope", "_XlaSeparateCompiledGradients",
                 "_XlaMustCompile", "_XlaCluster")


class StripMetadata(Pass):
    """Remove metadata attributes and device strings from every node (and every function body)."""

    name = "strip_metadata"
    description = ("Remove _class, _output_shapes and _Xla* attributes and device strings in one pass, "
                   "TF2 function bodies included.")
    options = {
        "attr": Option(list, [], "attribute to remove besides the defaults (repeatable)"),
        "keep": Option(list, [], "default attribute to keep (repeatable)"),
        "op": Option(list, [], "only nodes of these ops (repeatable; default: all)"),
        "devices": Option(bool, True, "also clear device strings"),
        "functions": Option(bool, True, "also strip nodes inside the function library"),
    }

    def run(self, model):
        cfg = self.config
        attrs = (set(DEFAULT_ATTRS) | set(cfg["attr"])) - set(cfg["keep"])
        ops = set(cfg["op"])
        counts = {"attrs_removed": 0, "devices_cleared": 0, "nodes_touched": 0}
        size_before = model.graph_def.ByteSize()
        nodes = list(model.graph_def.node)
        if cfg["functions"]:
            nodes += [n for f in model.graph_def.library.function for n in f.node_def]
        for node in nodes:
            if ops and node.op not in ops:
                continue
            doomed = [a for a in node.attr if a in attrs or (a.startswith("_Xla") and "_Xla*" not in cfg["keep"]
                                                             and a not in cfg["keep"])]
            for a in doomed:
                del node.attr[a]
            cleared = bool(cfg["devices"] and node.device)
            if cleared:
                node.device = ""
            counts["attrs_removed"] += len(doomed)
            counts["devices_cleared"] += cleared
            counts["nodes_touched"] += bool(doomed or cleared)
        counts["bytes_saved"] = size_before - model.graph_def.ByteSize()
        return PassResult(model, modified=counts["nodes_touched"] > 0, counters=counts)


@hookimpl
def graphopt_register_passes(register):
    register(StripMetadata)


@hookimpl
def graphopt_register_presets(register):
    register("strip-and-merge", "strip_metadata strip_unused_nodes merge_duplicate_nodes",
             "Strip metadata so equal nodes compare equal, drop unused nodes, then merge duplicates.")
