"""Training runs: a recipe (``TrainConfig``, YAML presets, the learning-rate schedule), the epoch loop,
run directories with atomic checkpoints and exact resume, and reports over several runs.

    cfg = load_config("contsup/resnet32_cifar10_k16_R1E_ce", epochs=2, out="runs/try")
    summary = fit(cfg)                       # runs/try/{config.yaml, metrics.jsonl, checkpoint.pt, summary.json}
    summary = fit(cfg, resume=True)          # after an interruption
"""

from locallearn.training.loop import NonFiniteLossError, evaluate, fit, make_optimizer, train_one_epoch
from locallearn.training.recipe import TrainConfig, load_config, lr_schedule, presets
from locallearn.training.report import write_report
from locallearn.training.rundir import RunDir

__all__ = [
    "NonFiniteLossError",
    "RunDir",
    "TrainConfig",
    "evaluate",
    "fit",
    "load_config",
    "lr_schedule",
    "make_optimizer",
    "presets",
    "train_one_epoch",
    "write_report",
]
