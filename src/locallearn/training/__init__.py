"""Training runs: the run's config (``config.py``: sections, presets, YAML), the learning-rate schedule,
``fit`` (epochs, the run directory, resume, logging), the runner protocol and the single-process runner,
run directories with atomic checkpoints, and reports over several runs.

    cfg = load_config("contsup/resnet32_cifar10_k16_R1E_ce", epochs=2, out="runs/try")
    summary = fit(cfg)                       # runs/try/{config.yaml, metrics.jsonl, checkpoint.pt, summary.json}
    summary = fit(cfg, resume=True)          # after an interruption
    summary = train(my_model, train_loader, test_loader, out="runs/mine", num_classes=10)   # your own data
"""

from locallearn.training.api import load_net, train
from locallearn.training.config import Config, load_config, presets, resolve
from locallearn.training.fit import fit
from locallearn.training.report import write_report
from locallearn.training.rundir import RunDir
from locallearn.training.runner import NonFiniteLossError, evaluate, make_optimizer, train_one_epoch
from locallearn.training.schedule import epoch_lr, lr_schedule

__all__ = [
    "Config",
    "NonFiniteLossError",
    "RunDir",
    "epoch_lr",
    "evaluate",
    "fit",
    "load_net",
    "load_config",
    "lr_schedule",
    "make_optimizer",
    "presets",
    "resolve",
    "train",
    "train_one_epoch",
    "write_report",
]
