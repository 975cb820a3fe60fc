"""Where trials run: embedded worker processes on this machine (default), or Ray tasks on a Ray cluster.

Both engines run the same two functions (:func:`graphopt.tuning.workers.run_build`
and :func:`~graphopt.tuning.workers.run_heat`) on JSON-able specs, so a result
does not depend on the engine.

* :class:`EmbeddedEngine`: builds in ``jobs`` child processes at a time, heats
  one after the other (a benchmark never shares the machine with another).
* :class:`RayEngine`: builds are Ray tasks (one CPU each) spread over the
  cluster; a heat is a Ray task that needs one unit of the custom resource
  ``graphopt_bench`` *and every CPU of a node*, so it runs on a node of its own
  with nothing else scheduled beside it. Start each benchmark node with
  ``ray start ... --resources '{"graphopt_bench": 1}'``. Heats of one rung run
  in parallel on different nodes (their figures are ratios to the anchor,
  measured in the same heat, so they compare across nodes). Paths in the specs
  (source, work dir, output) must be on a file system every node mounts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from graphopt.errors import UsageError
from graphopt.tuning.workers import run_build, run_heat

BENCH_RESOURCE = "graphopt_bench"
Event = Callable[[str, dict[str, Any]], None]


class EmbeddedEngine:
    """Local worker processes."""

    name = "embedded"

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, int(jobs))

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "jobs": self.jobs, "cpus": os.cpu_count()}

    def builds(self, specs: Sequence[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Yield ``(spec, result)`` as builds finish, ``jobs`` at a time (lazily: a caller may stop early)."""
        if self.jobs == 1:
            for spec in specs:
                yield spec, run_build(spec)
            return
        pending = list(specs)
        with ThreadPoolExecutor(self.jobs) as pool:
            running = {pool.submit(run_build, s): s for s in pending[:self.jobs]}
            pending = pending[self.jobs:]
            while running:
                future = next(as_completed(running))
                spec = running.pop(future)
                yield spec, future.result()
                if pending:
                    nxt = pending.pop(0)
                    running[pool.submit(run_build, nxt)] = nxt

    def heats(self, heats: Sequence[dict[str, Any]], on_event: Event | None = None
              ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        for heat in heats:
            yield heat, run_heat(heat, on_event)

    def run(self, fn: Callable[..., Any], items: Sequence[Any], *, bench: bool = False) -> Iterator[tuple[Any, Any]]:
        """``fn(item)`` for each item, one at a time (fleet jobs: each holds the machine while it benchmarks)."""
        for item in items:
            yield item, _guard(fn, item)

    def close(self) -> None:
        return None


def _guard(fn: Callable[..., Any], item: Any) -> Any:
    try:
        return fn(item)
    except Exception as exc:  # one job's failure never stops the others
        return {"status": "failed", "error": {"message": f"{type(exc).__name__}: {exc}"[:500], "where": "job"}}


class RayEngine:
    """Ray tasks on a running cluster (``address``: ``auto``, ``HOST:PORT``, ``ray://...``) or ``local``."""

    name = "ray"

    def __init__(self, address: str = "auto", *, init_kwargs: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--ray needs Ray, which is not installed", where="--ray",
                             hint="pip install 'graphopt[ray]'") from None
        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs = dict(init_kwargs or {})
            kwargs.setdefault("log_to_driver", False)
            try:
                if address == "local":
                    # A one-node cluster in this process: this machine is the benchmark node.
                    ray.init(num_cpus=os.cpu_count(), resources={BENCH_RESOURCE: 1}, include_dashboard=False,
                             **kwargs)
                else:
                    ray.init(address=address, **kwargs)
            except Exception as exc:
                raise UsageError(f"cannot connect to Ray at {address!r}: {type(exc).__name__}: {exc}"[:400],
                                 where="--ray", hint="start a cluster with 'ray start --head' (and "
                                 "'ray start --address HEAD:6379' on each node), or use --ray local") from None
            self._started = True
        self.bench_cpus = self._bench_cpus()

    def _bench_cpus(self) -> int:
        nodes = [n for n in self.ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(BENCH_RESOURCE)]
        if not nodes:
            raise UsageError(f"no node of the Ray cluster offers the '{BENCH_RESOURCE}' resource", where="--ray",
                             hint=f"start benchmark nodes with ray start ... --resources '{{\"{BENCH_RESOURCE}\": 1}}'")
        # All the CPUs of the smallest benchmark node: then nothing else is scheduled beside a heat.
        return max(1, int(min(n["Resources"].get("CPU", 1) for n in nodes)))

    def describe(self) -> dict[str, Any]:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return {"engine": self.name, "nodes": len(nodes),
                "bench_nodes": sum(1 for n in nodes if n.get("Resources", {}).get(BENCH_RESOURCE)),
                "cpus": sum(int(n.get("Resources", {}).get("CPU", 0)) for n in nodes), "bench_cpus": self.bench_cpus}

    def _wait(self, refs: dict[Any, Any]) -> Iterator[tuple[Any, Any]]:
        try:
            while refs:
                ready, _ = self.ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    item = refs.pop(ref)
                    try:
                        result = self.ray.get(ref)
                    except Exception as exc:  # a task that died (node lost, worker killed)
                        result = {"status": "failed", "error": {"message": f"Ray task failed: {type(exc).__name__}: "
                                                                           f"{str(exc).splitlines()[0][:300]}",
                                                                "where": "ray"}}
                    yield item, result
        finally:  # the caller stopped early (budget, Ctrl-C): what has not finished is cancelled, not left running
            for ref in refs:
                self.ray.cancel(ref, force=True)

    def builds(self, specs: Sequence[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        task = self.ray.remote(num_cpus=1, max_retries=0)(run_build)
        yield from self._wait({task.remote(s): s for s in specs})

    def heats(self, heats: Sequence[dict[str, Any]], on_event: Event | None = None
              ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        task = self.ray.remote(num_cpus=self.bench_cpus, resources={BENCH_RESOURCE: 1}, max_retries=0)(run_heat)
        yield from self._wait({task.remote(h): h for h in heats})

    def run(self, fn: Callable[..., Any], items: Sequence[Any], *, bench: bool = False) -> Iterator[tuple[Any, Any]]:
        """``fn(item)`` as Ray tasks; ``bench`` tasks each hold a benchmark node of their own."""
        opts: dict[str, Any] = {"max_retries": 0}
        opts.update(num_cpus=self.bench_cpus, resources={BENCH_RESOURCE: 1}) if bench else opts.update(num_cpus=1)
        task = self.ray.remote(**opts)(_guard)
        yield from self._wait({task.remote(fn, item): item for item in items})

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


def make_engine(ray: str | None = None, *, jobs: int = 1) -> EmbeddedEngine | RayEngine:
    """``--ray`` unset: embedded; ``auto``/``local``/an address: Ray."""
    return RayEngine(ray) if ray else EmbeddedEngine(jobs)
