"""tfquant.benchmark: fp32 vs quantized SavedModels, side by side (``python -m tfquant.benchmark --help`` for the
flags and the metric definitions).

Read in this order:

* ``cli``      the flags, checked into ``Settings`` before any model is touched; ``main``
* ``run``      one run, step by step: models, eval items, INC peers, measurements, report
* ``models``   ``ModelSpec``: a model as found on disk, and the env vars it needs (no TensorFlow)
* ``measure``  accuracy, generation, latency, throughput in this process; peak RSS in fresh ones
* ``runner``   ``LoadedModel``, the latency ids, ``timed_round_robin``, greedy generation
* ``scoring``  eval items as tokens and their per-item correctness; ``cache``: the fp32 results cache
* ``stats``    Wilson intervals, paired differences, latency summaries (pure)
* ``report``   the results JSON (``SCHEMA``), the printed table and notes, the chart
* ``peers``    INC as a peer row; ``children``: starting the child processes and reading their results
* ``memory``, ``inc``  the child processes themselves (``python -m tfquant.benchmark.memory`` / ``.inc``)
"""
import sys

from ..errors import run_cli
from .cli import main
from .models import ModelSpec, make_spec, runtime_env
from .report import SCHEMA, format_inc_block, format_table
from .runner import LoadedModel, timed_round_robin
from .stats import paired_difference, wilson_interval

__all__ = ["main", "SCHEMA", "wilson_interval", "paired_difference", "format_table", "format_inc_block",
           "runtime_env", "LoadedModel", "ModelSpec", "timed_round_robin", "make_spec"]


def _console():  # the tfquant-benchmark console script (setup.py) and python -m tfquant.benchmark
    sys.exit(run_cli(main))
