"""The ``train``, ``eval``, ``list`` and ``report`` subcommands as plain functions, and the flags of
``locallearn train``, one per TrainConfig field (the CLI module only declares them)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Iterator

import yaml

import locallearn
from locallearn.net import build_net
from locallearn.training.loop import evaluate, fit, load_data
from locallearn.training.recipe import (
    TrainConfig,
    config_from_values,
    presets,
    read_yaml,
    requested_values,
    resolve_device,
)
from locallearn.training.report import write_report
from locallearn.training.rundir import CONFIG, RunDir


def train(*, config: str | None = None, resume: bool = False, overwrite: bool = False, **flags: Any) -> int:
    """``locallearn train``: defaults ← ``--config`` ← flags, trained into the run directory."""
    values, preset = requested_values(config, flags)
    fit(config_from_values(values, preset), resume=resume, overwrite=overwrite, requested=values)
    return 0


def evaluate_run(run_dir: Path, *, device: str = "auto", data_dir: str | None = None) -> dict[str, Any]:
    """Test accuracy of a saved run: the net rebuilt from its config.yaml, weights from checkpoint.pt."""
    run = RunDir(Path(run_dir))
    if not run.file(CONFIG).is_file():
        raise ValueError(f"{run.path} holds no run (no {CONFIG}); give a directory written by `locallearn train`.")
    values = read_yaml(run.file(CONFIG))
    cfg = TrainConfig(**{**values, **({"data_dir": data_dir} if data_dir else {}), "device": device})
    checkpoint = run.load_checkpoint()
    if checkpoint is None:
        raise ValueError(f"{run.path} has no checkpoint.pt yet: no epoch of this run has finished.")
    torch_device = resolve_device(cfg.device)
    net = build_net(cfg.net_config())
    net.load_state_dict(checkpoint["model"])
    net.to(torch_device)
    result = evaluate(net, load_data(cfg, train=False, device=torch_device), autocast_dtype=cfg.autocast_dtype)
    return {**result, "epoch": checkpoint["epoch"], "epochs": cfg.epochs}


def eval_command(run_dir: Path, device: str = "auto", data_dir: str | None = None) -> int:
    """``locallearn eval RUN_DIR``."""
    result = evaluate_run(run_dir, device=device, data_dir=data_dir)
    print(
        f"{run_dir}: test accuracy {100 * result['test_acc']:.2f}% (test loss {result['test_loss']:.4f}), "
        f"checkpoint after epoch {result['epoch']}/{result['epochs']}"
    )
    return 0


def list_command() -> int:
    """``locallearn list``: every name a user can choose, and the shipped presets."""
    for kind, names in locallearn.registries().items():
        print(f"{kind.replace('_', ' ')}: {', '.join(names)}")
    names = presets()
    print(f"presets ({len(names)}; `locallearn train --config NAME`):")
    for name in names:
        print(f"  {name}")
    return 0


def report_command(run_dirs: list[Path], out: Path | None = None) -> int:
    """``locallearn report RUN_DIR...``: markdown to stdout (or OUT/report.md) and a PNG of error vs K."""
    markdown, md_path, png_path = write_report(run_dirs, out=out)
    if md_path is None:
        print(markdown, end="")
    else:
        print(f"report: {md_path} and {png_path}")
    return 0


# --- the flags of `locallearn train` ---------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace("[", "").replace("]", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"not a YAML value: {text!r}") from None


FLAG_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": str},
    "int": {"type": int},
    "float": {"type": float},
    "floats": {"type": _floats},
    "yaml": {"type": _yaml_value},
    "bool": {"action": argparse.BooleanOptionalAction},
}


def train_flags() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(--flag-name, add_argument kwargs)`` for every TrainConfig field. Flags that are not given stay
    out of the parsed options (``SUPPRESS``), so a ``--config`` file's values survive them."""
    for f in dataclasses.fields(TrainConfig):
        default = "the method's" if f.default is None and f.name in locallearn.config.CONFIG_FIELDS else f.default
        kwargs = dict(FLAG_TYPES[f.metadata["flag"]])
        if "type" in kwargs:
            kwargs["metavar"] = f.name.upper()
        yield f"--{f.name.replace('_', '-')}", dict(
            kwargs, dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {default})"
        )
