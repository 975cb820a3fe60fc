"""graphopt-snapshots: the graph after every pass, in $GRAPHOPT_SNAPSHOT_DIR (MLIR's print-ir-after-all)."""
import json
import os
from pathlib import Path

from graphopt import hookimpl


@hookimpl
def graphopt_write_paths():  # `graphopt optimize` runs passes in a confined child: let it write the snapshots
    return [os.environ["GRAPHOPT_SNAPSHOT_DIR"]] if os.environ.get("GRAPHOPT_SNAPSHOT_DIR") else []


def _write(context, model, **extra):
    root = os.environ.get("GRAPHOPT_SNAPSHOT_DIR")
    if not root:  # installed but not asked for: do nothing
        return
    run = f"run-{os.getpid()}-{id(context):x}"  # one folder per pipeline run
    folder = context.state.setdefault("snapshot_dir", Path(root) / run)
    folder.mkdir(parents=True, exist_ok=True)
    record = context.records[-1]  # this pass's record: status, sizes, op deltas, counters
    stem = str(folder / f"{len(context.records):03d}-{record.name}")
    Path(stem + ".pb").write_bytes(model.graph_def.SerializeToString())
    Path(stem + ".json").write_text(json.dumps({**record.to_dict(), **extra}, indent=2, default=str))


@hookimpl
def graphopt_pass_finish(pass_, before, result, context):
    _write(context, result.model)


@hookimpl
def graphopt_pass_failed(pass_, model, error, context, rolled_back):
    _write(context, model, error=error.render(), rolled_back=rolled_back)  # the graph the pass was given
