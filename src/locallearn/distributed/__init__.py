"""Module-parallel training on ``torch.distributed``: each rank trains a contiguous group of local modules
(a pipeline stage), the stages pass detached hand-offs forward with point-to-point messages, and several
replicas of a stage can train data-parallel. Started by ``torchrun``; see docs/distributed.md.

    comm.py       messages (a shape header and one payload) and the overlapped transport threads
    assign.py     which modules each stage owns (balanced on measured compute, even, or explicit)
    pipeline.py   the stage: its training and evaluation phases, layout, process groups
    launch.py     process-group start-up, the failure watchdog, local spawning for tests and benchmarks
    runner.py     ``locallearn train --parallel pipeline``: the launcher and runner ``training.fit`` drives
                  (stage checkpoints, resume, per-rank statistics), and ``fit_pipeline``
"""

from locallearn.distributed.assign import assign_modules, check_layout, measure_module_costs, partition
from locallearn.distributed.launch import DistEnv, init_distributed, join_local, run_guarded, shutdown, spawn_local
from locallearn.distributed.pipeline import Layout, PipelineStage, make_groups
from locallearn.distributed.runner import PipelineLauncher, PipelineRunner, fit_pipeline

__all__ = [
    "DistEnv",
    "Layout",
    "PipelineLauncher",
    "PipelineRunner",
    "PipelineStage",
    "assign_modules",
    "check_layout",
    "fit_pipeline",
    "init_distributed",
    "make_groups",
    "measure_module_costs",
    "partition",
    "run_guarded",
    "shutdown",
    "join_local",
    "spawn_local",
]
