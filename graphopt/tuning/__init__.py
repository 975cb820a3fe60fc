"""Choosing the best verified variant automatically: ``graphopt tune`` (one model) and ``graphopt fleet`` (a repository).

* :mod:`~graphopt.tuning.space` -- candidates: builds (pipeline, target, precision) x runtime settings;
* :mod:`~graphopt.tuning.search` -- :func:`tune`: reference, builds, the staged race, export, report;
* :mod:`~graphopt.tuning.race` -- figures from heats and the pruning rule;
* :mod:`~graphopt.tuning.workers` -- child processes (builds) and benchmark workers (heats);
* :mod:`~graphopt.tuning.engine` -- embedded (local processes) or Ray;
* :mod:`~graphopt.tuning.log` -- the append-only trial log a rerun resumes from;
* :mod:`~graphopt.tuning.fleet` -- :func:`fleet` over a TF Serving ``models.config``;
* :mod:`~graphopt.tuning.plot` -- the Pareto plot (SVG).

Nothing here imports TensorFlow at import time; the work happens in child processes.
"""

from graphopt.tuning.fleet import FleetInterrupted, FleetResult, fleet
from graphopt.tuning.search import TuneInterrupted, TuneOptions, TuneResult, tune
from graphopt.tuning.space import Build, Candidate, SearchSpace, build_space

__all__ = ["tune", "TuneOptions", "TuneResult", "TuneInterrupted", "SearchSpace", "Build", "Candidate",
           "build_space", "fleet", "FleetResult", "FleetInterrupted"]
