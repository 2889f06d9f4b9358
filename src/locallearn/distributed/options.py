"""Validation of the training options that choose how a run is spread over processes."""

from __future__ import annotations

from typing import Any

from locallearn.distributed.assign import parse_assign

PARALLEL_MODES = ("none", "pipeline")


def check_parallel_options(config: Any) -> None:
    """``parallel``, ``pipeline_sync``, ``pipeline_assign``, ``data_parallel``, ``fault_timeout`` of a
    TrainConfig; a ValueError names the option and the valid values."""
    if config.parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel: unknown mode {config.parallel!r}; valid modes are {', '.join(PARALLEL_MODES)}.")
    if not isinstance(config.pipeline_sync, bool):
        raise ValueError(f"pipeline_sync must be true or false, got {config.pipeline_sync!r}.")
    parse_assign(config.pipeline_assign)
    dp = config.data_parallel
    if not isinstance(dp, int) or isinstance(dp, bool) or dp < 1:
        raise ValueError(f"data_parallel must be an integer >= 1, got {dp!r}.")
    timeout = config.fault_timeout
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"fault_timeout must be a positive number of seconds, got {timeout!r}.")
    if config.parallel == "none" and (dp != 1 or config.pipeline_sync):
        flag = "--data-parallel" if dp != 1 else "--pipeline-sync"
        raise ValueError(f"{flag} applies to --parallel pipeline; add --parallel pipeline (under torchrun) or drop it.")


def check_single_process_launch(config: Any) -> None:
    """Refuse a single-process run started as several ranks (torchrun without ``--parallel pipeline``):
    every rank would train the whole network into the same run directory."""
    import os

    world = os.environ.get("WORLD_SIZE")
    if config.parallel == "none" and world is not None and world.isdigit() and int(world) > 1:
        raise ValueError(
            f"parallel: this process is one of {world} ranks (torchrun) but --parallel is none, so every rank "
            "would train the whole network into the same run directory; add --parallel pipeline, or start one process."
        )
