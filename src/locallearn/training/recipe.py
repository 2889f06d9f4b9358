"""What a training run is: one typed config (the network's options plus the recipe), its YAML form, the
presets under ``configs/``, and the learning-rate schedule of METHODS.md 7.

A YAML preset is exactly ``TrainConfig``'s fields serialised, and every field is also a flag of
``locallearn train`` (``num_modules`` ↔ ``--num-modules``). Precedence: defaults ← ``--config`` file ←
flags. The network options default to ``None``, meaning "the method's default" (``--method infopro``
brings the contrastive loss and reconstruction); the resolved values are filled in at construction, so a
run's ``config.yaml`` names everything.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml

from locallearn.config import CONFIG_FIELDS, NetConfig, make_config
from locallearn.data.specs import DATASETS
from locallearn.distributed.options import check_parallel_options

AMP_MODES = ("none", "bf16")
PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"  # the repository's configs/, shipped in the package


def _option(default: Any, help: str, *, flag: str = "str") -> Any:
    """A config field with its ``--help`` text and how its flag parses (see ``commands.FLAG_TYPES``)."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass
class TrainConfig:
    """Everything a training run depends on. Validated at construction; errors name the option."""

    # --- the network: fields of locallearn.config.NetConfig (None: the method's default) ----------------
    model: str = _option("resnet32", "backbone from the model registry (locallearn list)")
    method: str = _option("contsup", "e2e, checkpoint, greedy, dgl, infopro, contsup or featrecon: a set of defaults")
    num_modules: int | None = _option(None, "K, the number of local modules", flag="int")
    split: str | list | None = _option(
        None, "paper, balanced, auto, uniform, stages or cuts as YAML, e.g. '[[1,2],[2,1]]'", flag="yaml"
    )
    aux_head: str | None = _option(None, "auxiliary head of the local modules: linear, 1c2f, dgl, token, auto")
    local_loss: str | None = _option(None, "ce (softmax) or contrast (supervised contrastive)")
    reconstruct: bool | None = _option(None, "InfoPro's image reconstruction in every local module", flag="bool")
    context: str | None = _option(None, "ContSup context mode: R0, E, R1, R1E, Rn, RnE", flag="str")
    num_classes: int | None = _option(None, "classifier outputs (default: the dataset's)", flag="int")
    image_size: int | None = _option(None, "input size S (default: the dataset's)", flag="int")
    image_mean: list[float] | None = _option(None, "per-channel mean of the [0, 1] image: 0.5,0.5,0.5", flag="floats")
    image_std: list[float] | None = _option(None, "per-channel std of the [0, 1] image", flag="floats")
    lambdas: list[float] | None = _option(
        None, "λxx_first,λxy_first,λxx_last,λxy_last of reconstruction (default: METHODS.md 4)", flag="floats"
    )
    temperature: float | None = _option(None, "temperature of the contrastive loss", flag="float")
    checkpoint: bool | None = _option(None, "activation checkpointing inside each module", flag="bool")
    checkpoint_segments: int | None = _option(None, "segments per module under --checkpoint", flag="int")
    feature_decoder: str | None = _option(None, "FeatRecon feature decoder: linear, conv, transformer")
    feature_weight: float | None = _option(None, "FeatRecon's λ on the feature reconstruction loss", flag="float")
    model_kwargs: dict | None = _option(None, "extra backbone arguments as a YAML mapping", flag="yaml")
    pretrained: str | None = _option(
        None, "Hugging Face Swin checkpoint (hub name or save_pretrained directory) to start from"
    )

    # --- data ----------------------------------------------------------------------------------------
    dataset: str = _option("digits", "digits (bundled), cifar10, cifar100, svhn, stl10")
    data_dir: str = _option("data", "where the dataset files are (locallearn data download NAME)")
    limit_train: int | None = _option(None, "use only the first N training images (smoke runs)", flag="int")
    limit_test: int | None = _option(None, "use only the first N test images (smoke runs)", flag="int")

    # --- the recipe (METHODS.md 7) --------------------------------------------------------------------
    epochs: int = _option(8, "number of epochs E", flag="int")
    batch_size: int = _option(64, "training batch size (also used for evaluation)", flag="int")
    lr: float = _option(0.1, "peak learning rate of the cosine schedule", flag="float")
    momentum: float = _option(0.9, "SGD momentum", flag="float")
    nesterov: bool = _option(True, "Nesterov momentum", flag="bool")
    weight_decay: float = _option(1e-4, "weight decay on all parameters", flag="float")
    warmup_epochs: int = _option(10, "linear warm-up epochs W (none when epochs <= W)", flag="int")
    warmup_lr: float = _option(0.01, "learning rate of the first warm-up epoch", flag="float")
    seed: int = _option(0, "seed of initialisation and data order", flag="int")

    # --- how it runs -----------------------------------------------------------------------------------
    device: str = _option("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    amp: str = _option("none", "mixed precision: none or bf16")
    compile: bool = _option(False, "torch.compile every unit, head and encoder", flag="bool")
    out: str | None = _option(None, "run directory (default: runs/<preset or model_method_kK_context_dataset>)")
    # --- several processes (locallearn.distributed; docs/distributed.md) -----------------------------------
    parallel: str = _option("none", "none, or pipeline: one process per stage of local modules, under torchrun")
    pipeline_sync: bool = _option(False, "pipeline in lock step: the same values, no overlap", flag="bool")
    pipeline_assign: str | list = _option(
        "balanced", "modules per stage: balanced (timed), even, or counts such as 2,2", flag="str"
    )
    data_parallel: int = _option(1, "data-parallel replicas of each pipeline stage (DDP); ranks = stages x this", flag="int")
    fault_timeout: float = _option(60.0, "seconds of silence after which a pipeline rank counts as dead", flag="float")

    def __post_init__(self) -> None:
        DATASETS.get(self.dataset)
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("warmup_epochs", 0), ("seed", 0)):
            _check_int(name, getattr(self, name), minimum)
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        for name in ("lr", "momentum", "weight_decay", "warmup_lr"):
            _check_number(name, getattr(self, name))
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}.")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}.")
        if self.weight_decay < 0 or self.warmup_lr < 0:
            raise ValueError("weight_decay and warmup_lr must be >= 0.")
        for name in ("nesterov", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: Nesterov momentum needs momentum > 0; pass --no-nesterov or a momentum.")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp: unknown mode {self.amp!r}; valid modes are {', '.join(AMP_MODES)}.")
        _check_device(self.device)
        check_parallel_options(self)
        for name in ("data_dir", "out"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))
        # Resolve the network's options (the method's defaults, the dataset's classes and normalisation),
        # so that the config written to the run directory is complete.
        resolved = self.net_config().to_dict()
        for name in CONFIG_FIELDS:
            setattr(self, name, resolved[name])

    def net_config(self) -> NetConfig:
        """The network's config: the method's preset ← the options set here."""
        options = {
            name: getattr(self, name)
            for name in CONFIG_FIELDS
            if name not in ("model", "method", "dataset") and getattr(self, name) is not None
        }
        if self.pretrained is not None:  # a backbone argument (models/swin.py) with its own flag
            options["model_kwargs"] = {**(options.get("model_kwargs") or {}), "pretrained": str(self.pretrained)}
        return make_config(self.model, self.method, dataset=self.dataset, **options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.amp == "bf16" else None

    def default_name(self) -> str:
        """The run directory's name when ``out`` is not given, e.g. ``resnet32_contsup_k4_R1E_digits``."""
        parts = [self.model, self.method, f"k{self.num_modules}"]
        if self.num_modules > 1 and self.context != "R0":
            parts.append(self.context)
        return "_".join(parts + [self.dataset])


TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_number(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")


def _check_device(device: Any) -> None:
    if device == "auto":
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: unknown device {device!r}; use cpu, cuda, cuda:N or auto.") from None


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when there is one; an explicit device must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device} is not available on this machine; use --device cpu.")
    return resolved


# --- YAML and presets ------------------------------------------------------------------------------------
def check_keys(values: dict[str, Any], source: str) -> None:
    """Refuse keys that are not fields of TrainConfig, naming the valid ones."""
    unknown = sorted(set(values) - set(TRAIN_FIELDS))
    if unknown:
        raise ValueError(f"{source}: unknown key {unknown[0]!r}; valid keys are {', '.join(TRAIN_FIELDS)}.")


def read_yaml(path: Path | str) -> dict[str, Any]:
    """The mapping in a config file (empty file: no keys); its keys are checked."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(err).split())}).") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must be a mapping of keys to values, got {type(values).__name__}.")
    check_keys(values, str(path))
    return values


def dump_yaml(values: dict[str, Any], *, header: Iterable[str] = ()) -> str:
    """YAML text of a config, keys in field order, with optional ``# comment`` lines first."""
    comments = "".join(f"# {line}\n" for line in header)
    return comments + "".join(_yaml_line(key, value) for key, value in values.items())


def _yaml_line(key: str, value: Any) -> str:
    """``key: value`` on one line; lists and mappings inline in JSON form (valid YAML flow style)."""
    if isinstance(value, (list, tuple, dict)):
        return f"{key}: {json.dumps(value, ensure_ascii=False)}\n"
    return yaml.safe_dump({key: value}, default_flow_style=False, allow_unicode=True, width=1000)


def presets() -> list[str]:
    """Names of the shipped presets, e.g. ``contsup/resnet32_cifar10_k16_R1E_ce``."""
    return sorted(str(p.relative_to(PRESET_DIR).with_suffix("")) for p in PRESET_DIR.rglob("*.yaml"))


def find_config(name_or_path: str) -> Path:
    """A config file by path, or a shipped preset by name (with or without ``.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if preset.is_file():
        return preset
    raise ValueError(
        f"config: no file or preset named {name_or_path!r}; `locallearn list` shows the presets "
        f"(e.g. {presets()[0] if presets() else 'none shipped'})."
    )


def load_config(config: str | None = None, **overrides: Any) -> TrainConfig:
    """Defaults ← the config file or preset ← ``overrides`` (flags). ``out`` defaults to
    ``runs/<preset name>`` for a preset, else ``runs/<model_method_kK_context_dataset>``."""
    return config_from_values(*requested_values(config, overrides))


def config_from_values(values: dict[str, Any], preset: str | None = None) -> TrainConfig:
    """A TrainConfig from the keys a user set, with ``out`` defaulting to ``runs/<preset or default name>``."""
    cfg = TrainConfig(**values)
    if cfg.out is None:
        cfg.out = str(Path("runs") / (preset or cfg.default_name()))
    return cfg


def requested_values(config: str | None, overrides: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The keys a user set (file, then flags over it) and the preset's name, if any."""
    check_keys(overrides, "train")
    values: dict[str, Any] = {}
    name = None
    if config is not None:
        path = find_config(config)
        values = read_yaml(path)
        name = path.stem
    values.update(overrides)
    return values, name


# Options that may change when a run is resumed: where it lives and runs, not what it computes.
RESUMABLE_CHANGES = ("out", "data_dir", "device", "compile", "parallel", "pipeline_sync", "pipeline_assign", "fault_timeout")


def resumed_config(stored: dict[str, Any], requested: dict[str, Any], *, out: str) -> TrainConfig:
    """The config of a run being resumed: the stored one, with the options asked for now laid over it —
    which must not change anything (except ``RESUMABLE_CHANGES``). ``locallearn train --out RUN --resume``
    therefore needs no other flag, and repeating the original command works too."""
    check_keys(stored, f"{out}/config.yaml")
    before = TrainConfig(**stored)
    after = TrainConfig(**{**stored, **requested, "out": out})
    changed = [
        f"{name} ({getattr(before, name)!r} → {getattr(after, name)!r})"
        for name in TRAIN_FIELDS
        if name not in RESUMABLE_CHANGES and getattr(before, name) != getattr(after, name)
    ]
    if changed:
        raise ValueError(
            f"--resume: the run in {out} was started with other options: {', '.join(changed)}; resume it with "
            f"its own options, or start a new run with another --out."
        )
    return after


# --- learning-rate schedule (METHODS.md 7) ----------------------------------------------------------------
def lr_schedule(*, lr: float, epochs: int, warmup_epochs: int = 10, warmup_lr: float = 0.01) -> list[float]:
    """The learning rate of each epoch e = 1..E (list index e − 1).

    METHODS.md 7: c(e) = ½·lr·(1 + cos(π·e/E)); for e ≤ 10, lr_e = c(e)·(e−1)/10 + 0.01·(11−e)/10,
    else c(e).
    Read literally, the last epoch trains at c(E) = 0, a defect of the reference scripts (METHODS.md 9).
    **Fix (our choice):** epoch e uses the cosine at the *start* of the epoch, c(e−1) — e − 1 epochs done,
    as torch's CosineAnnealingLR — so epoch 1 starts at the peak and epoch E trains at
    ½·lr·(1 − cos(π/E)) > 0. Everything else is unchanged: W = ``warmup_epochs`` (10) warm-up epochs blend
    linearly from ``warmup_lr`` (0.01) into the cosine. A warm-up needs room: with E ≤ W there is none,
    and the run is pure cosine from the peak (short smoke and demo runs).
    """
    warmup = warmup_epochs if epochs > warmup_epochs else 0
    schedule = []
    for e in range(1, epochs + 1):
        rate = 0.5 * lr * (1 + math.cos(math.pi * (e - 1) / epochs))
        if e <= warmup:
            rate = rate * (e - 1) / warmup + warmup_lr * (warmup + 1 - e) / warmup
        schedule.append(rate)
    return schedule
