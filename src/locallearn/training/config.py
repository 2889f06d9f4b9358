"""What a training run is: one nested, frozen config, resolved in one function from flat *options*.

    Config
      net       NetConfig        the network (``locallearn.config``): model, method, K, split, heads, λ, ...
      data      DataConfig       dataset, where its files are, subsets
      optim     OptimConfig      optimizer and learning-rate schedule (docs/methods.md §7)
      run       RunConfig        run directory, seed, device, precision, compilation
      processes ProcessesConfig  one process, or the module pipeline (``locallearn.distributed``)

Users speak in *options*: flat names, each unique across the sections, which are at once the flags of
``locallearn train`` (``num_modules`` ↔ ``--num-modules``), the keys of a YAML preset under ``configs/``
and the keywords of ``resolve``. ``resolve(options)`` is the one place a config is made:

    defaults ← the preset file (``--config``) ← options (flags), and for the network:
    the method's preset ← the model family ← the dataset ← the options (``config.resolve_net``)

Every value it returns is explicit, so the run's ``config.yaml`` (``Config.to_dict``, nested by section)
names everything, including the λ of reconstruction and the auxiliary head; reading it back gives the same
config (``resolve(flatten(config.to_dict())) == config``). A file may be written flat (presets) or nested
(``config.yaml``); files of earlier releases (flat, with since-renamed options) load through ``RENAMED``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import yaml

from locallearn.config import NET_FIELDS, RENAMED, NetConfig, plain, resolve_net
from locallearn.data import describe_dataset, dataset_names
from locallearn.data.sources import BUNDLED
from locallearn.data.imagefolder import DEFAULT_IMAGE_SIZE, IMAGEFOLDER, classes_spec
from locallearn.decoders import FEATURE_DECODERS
from locallearn.heads import HEADS
from locallearn.losses import LOCAL_LOSSES
from locallearn.validate import Bool, Choice, Float, Int, Optional, Text, check, check_fields

AMP_MODES = ("none", "bf16")
# Each optimizer's defaults for the options that depend on it: SGD as the papers' recipe (docs/methods.md §7);
# AdamW as the usual transformer recipe (weight decay 0.05, not on biases, norms and position tables; a peak
# rate of 1e-3, warmed up from 1e-6: SGD's 0.1 and 0.01 would make Adam's steps a hundred times too large).
OPTIMIZER_DEFAULTS = {
    "sgd": dict(momentum=0.9, nesterov=True, weight_decay=1e-4, lr=0.1, warmup_lr=0.01),
    "adamw": dict(momentum=None, nesterov=None, weight_decay=0.05, lr=1e-3, warmup_lr=1e-6),
}
OPTIMIZERS = tuple(OPTIMIZER_DEFAULTS)
# What --optimizer naming another optimizer than a config file's replaces with that optimizer's defaults
_OPTIMIZER_OPTIONS = {key for defaults in OPTIMIZER_DEFAULTS.values() for key in defaults}
_SGD = OPTIMIZER_DEFAULTS["sgd"]  # OptimConfig's own defaults: the optimizer it defaults to
SCHEDULES = ("epoch", "step")
PARALLEL_MODES = ("none", "pipeline")
ASSIGN_NAMES = ("balanced", "even")
PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"  # the repository's configs/, shipped in the package
PYTHON_DATA = "iterable"  # the dataset of a run whose batches are given from Python (``training.train``)
# Bounds on the inputs that scale time and memory, far beyond any real run, so a typo cannot exhaust a machine.
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20


def _device(name: str, value: Any) -> str:
    if value == "auto":
        return value
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: unknown device {value!r}; use cpu, cuda, cuda:N or auto.") from None
    return value


def _assign(name: str, value: Any) -> str | list[int]:
    """"balanced", "even", or module counts per stage ("1,3" or [1, 3]); stored as given."""
    counts = value
    if isinstance(value, str):
        if value in ASSIGN_NAMES:
            return value
        try:
            counts = [int(v) for v in value.split(",")]
        except ValueError:
            raise ValueError(
                f"pipeline_assign: expected {' or '.join(ASSIGN_NAMES)} or module counts per stage such as "
                f"'2,2', got {value!r}."
            ) from None
    if not isinstance(counts, list) or not counts or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in counts):
        raise ValueError(f"pipeline_assign: module counts must be positive integers, got {counts!r}.")
    return value


def parse_assign(value: str | list[int]) -> str | list[int]:
    """``pipeline_assign`` as a name or a list of module counts per stage."""
    _assign("pipeline_assign", value)
    if isinstance(value, str):
        return value if value in ASSIGN_NAMES else [int(v) for v in value.split(",")]
    return list(value)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    data_dir: str = field(default="data", metadata=check(Text()))
    limit_train: int | None = field(default=None, metadata=check(Optional(Int(2))))  # BatchNorm needs two images
    limit_test: int | None = field(default=None, metadata=check(Optional(Int(1))))
    # of an image folder without test/: the part of each class of train/ held out as the test split
    test_fraction: float | None = field(default=None, metadata=check(Optional(Float(above=0.0, below=1.0))))

    def __post_init__(self) -> None:
        if self.dataset not in dataset_names() and self.dataset != PYTHON_DATA:
            raise ValueError(f"dataset: unknown dataset {self.dataset!r}; valid datasets: {', '.join(dataset_names())}.")
        check_fields(self)


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = field(default="sgd", metadata=check(Choice(OPTIMIZERS, "optimizer")))
    epochs: int = field(default=8, metadata=check(Int(1, MAX_EPOCHS)))
    batch_size: int = field(default=64, metadata=check(Int(1, MAX_BATCH)))
    lr: float = field(default=_SGD["lr"], metadata=check(Float(above=0.0)))
    momentum: float | None = field(default=_SGD["momentum"], metadata=check(Optional(Float(minimum=0.0, below=1.0))))  # SGD
    nesterov: bool | None = field(default=_SGD["nesterov"], metadata=check(Optional(Bool())))  # SGD
    weight_decay: float = field(default=_SGD["weight_decay"], metadata=check(Float(minimum=0.0)))
    warmup_epochs: int = field(default=10, metadata=check(Int(0, MAX_EPOCHS)))
    warmup_lr: float = field(default=_SGD["warmup_lr"], metadata=check(Float(minimum=0.0)))
    schedule: str = field(default="epoch", metadata=check(Choice(SCHEDULES, "schedule")))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.optimizer == "sgd" and (self.momentum is None or self.nesterov is None):
            raise ValueError("momentum and nesterov: SGD needs both (e.g. --momentum 0.9 --nesterov).")
        if self.optimizer != "sgd" and (self.momentum is not None or self.nesterov is not None):
            raise ValueError(f"momentum and nesterov apply to --optimizer sgd, not {self.optimizer}; drop them.")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: Nesterov momentum needs momentum > 0; pass --no-nesterov or a momentum.")

    @property
    def warmup_used(self) -> int:
        """Warm-up epochs actually run: none when the run is not longer than the warm-up (``schedule``)."""
        return self.warmup_epochs if self.epochs > self.warmup_epochs else 0


@dataclass(frozen=True)
class RunConfig:
    out: str = field(default="runs/run", metadata=check(Text()))
    seed: int = field(default=0, metadata=check(Int(0, 2**63 - 1)))
    device: str = field(default="auto", metadata=check(_device))
    amp: str = field(default="none", metadata=check(Choice(AMP_MODES, "mode")))
    compile: bool = field(default=False, metadata=check(Bool()))
    channels_last: bool = field(default=False, metadata=check(Bool()))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class ProcessesConfig:
    parallel: str = field(default="none", metadata=check(Choice(PARALLEL_MODES, "mode")))
    pipeline_sync: bool = field(default=False, metadata=check(Bool()))
    pipeline_assign: str | list = field(default="balanced", metadata=check(_assign))
    data_parallel: int = field(default=1, metadata=check(Int(1)))
    fault_timeout: float = field(default=60.0, metadata=check(Float(above=0.0, maximum=7 * 24 * 3600.0)))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.parallel != "pipeline" and (self.data_parallel != 1 or self.pipeline_sync):
            flag = "--data-parallel" if self.data_parallel != 1 else "--pipeline-sync"
            raise ValueError(f"{flag} applies to --parallel pipeline; add --parallel pipeline (under torchrun) or drop it.")


SECTIONS = {"net": NetConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig, "processes": ProcessesConfig}


@dataclass(frozen=True)
class Config:
    """A training run (module docstring). Make it with ``resolve``."""

    net: NetConfig
    data: DataConfig
    optim: OptimConfig
    run: RunConfig
    processes: ProcessesConfig

    def __post_init__(self) -> None:
        if self.run.channels_last and self.processes.parallel == "pipeline":
            raise ValueError("channels_last: one process only (the pipeline sends and broadcasts tensors in the default "
                             "layout); pass --no-channels-last, or drop --parallel.")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The nested form of ``config.yaml``: plain values, section by section."""
        return {name: _plain(getattr(self, name)) for name in SECTIONS}

    def options(self) -> dict[str, Any]:
        """The flat options that resolve to this config."""
        return {key: value for section in self.to_dict().values() for key, value in section.items()}

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.run.amp == "bf16" else None


def _plain(section: Any) -> dict[str, Any]:
    return {k: plain(v) for k, v in dataclasses.asdict(section).items()}


def _methods_by_k() -> str:
    """The registered methods by their default K: ``e2e and checkpoint train one module (K=1); ... default to K=4``."""
    from locallearn.methods import METHODS

    by_k: dict[int, list[str]] = {}
    for name in METHODS.names():
        by_k.setdefault(METHODS.get(name).num_modules, []).append(name)
    words = lambda names: ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
    return "; ".join(f"{words(names)} train{'s' if len(names) == 1 else ''} one module (K=1)" if k == 1 else
                     f"{words(names)} default{'s' if len(names) == 1 else ''} to K={k}"
                     for k, names in sorted(by_k.items()))


# Option name → (section, how its flag parses, help). The net section's options are NetConfig's fields.
_NET_HELP = {
    "model": ("str", "backbone from the model registry (locallearn list)"),
    "method": ("str", f"a set of defaults (locallearn list): {_methods_by_k()}"),
    "num_modules": ("int", "K, the number of local modules (default: the method's)"),
    "split": ("yaml", "paper, balanced, auto, uniform, stages or cuts as YAML, e.g. '[[1,2],[2,1]]' (default: paper "
                      "where the model has published cuts for this K, else auto)"),
    "aux_head": ("str", f"auxiliary head of the local modules: {', '.join(HEADS.names())}, or auto: the model "
                        "family's, 1c2f on CNNs and token on transformers (default: the method's)"),
    "local_loss": ("str", f"local loss: {', '.join(LOCAL_LOSSES.names())} (ce: softmax cross-entropy; contrast: "
                          "supervised contrastive) (default: the method's)"),
    "reconstruct": ("bool", "InfoPro's image reconstruction in every local module (default: the method's)"),
    "context": ("str", "ContSup context mode: R0, E, R1, R1E, Rn, RnE (default: the method's)"),
    "num_classes": ("int", "classifier outputs (default: the dataset's)"),
    "image_size": ("int", "input size S (default: the dataset's; imagefolder resizes its images to it, default 32)"),
    "in_channels": ("int", "channels of the input image (default: the dataset's; imagefolder reads 3, RGB, or 1, grey)"),
    "image_mean": ("floats", "per-channel mean of the [0, 1] image, e.g. 0.5,0.5,0.5 (default: the dataset's)"),
    "image_std": ("floats", "per-channel std of the [0, 1] image (default: the dataset's)"),
    "lambdas": ("floats", "λxx_first,λxy_first,λxx_last,λxy_last of reconstruction (default: docs/methods.md §4's tables)"),
    "temperature": ("float", "temperature of the contrastive loss (default: 0.07)"),
    "activation_checkpointing": ("bool", "recompute activations in backward inside each module (default: the method's)"),
    "activation_segments": ("int", "recomputed segments per module under --activation-checkpointing (default: ≈√units)"),
    "feature_decoder": ("str", f"FeatRecon feature decoder: {', '.join(FEATURE_DECODERS.names())} (default: the method's)"),
    "feature_weight": ("float", "FeatRecon's λ on the feature reconstruction loss (default: 1.0)"),
    "model_kwargs": ("yaml", "extra backbone arguments as a YAML mapping"),
}
_OTHER_HELP = {
    "dataset": ("str", f"{', '.join(dataset_names())} (digits is bundled; imagefolder reads --data-dir DIR with "
                "train/<class>/ and test/<class>/ images, or train/ alone with --test-fraction)"),
    "data_dir": ("str", "where the dataset files are (locallearn data download NAME)"),
    "limit_train": ("int", "use only N training images, the first (of an image folder: the classes in turn) (smoke "
                           "runs)"),
    "limit_test": ("int", "use only N test images, the first (of an image folder: the classes in turn)"),
    "test_fraction": ("float", "imagefolder without test/: hold out about this fraction of each class of train/ "
                               "as the test split, each file by a hash of its name, so files added later never "
                               "move a training image into it (e.g. 0.1)"),
    "optimizer": ("str", "sgd (momentum, Nesterov: the papers' recipe) or adamw (no weight decay on biases, norms "
                         "and position tables: the usual transformer recipe) (default: sgd)"),
    "schedule": ("str", "epoch: the rate changes once per epoch (the papers'); step: at every step (default: epoch)"),
    "epochs": ("int", "number of epochs E (default: 8)"),
    "batch_size": ("int", "training batch size (also used for evaluation) (default: 64)"),
    "lr": ("float", "peak learning rate of the cosine schedule (default: 0.1 with sgd, 1e-3 with adamw)"),
    "momentum": ("float", "SGD momentum (default: 0.9)"),
    "nesterov": ("bool", "SGD's Nesterov momentum (default: on)"),
    "weight_decay": ("float", "weight decay (default: 1e-4 with sgd, on every parameter; 0.05 with adamw)"),
    "warmup_epochs": ("int", "linear warm-up epochs W (none when epochs <= W: the run is then pure cosine) "
                             "(default: 10)"),
    "warmup_lr": ("float", "learning rate of the first warm-up epoch (default: 0.01 with sgd, 1e-6 with adamw)"),
    "out": ("str", "run directory (default: runs/<preset or model_method_kK_context_dataset>)"),
    "seed": ("int", "seed of initialisation and data order (default: 0)"),
    "device": ("str", "cpu, cuda, cuda:N, or auto (cuda when available)"),
    "amp": ("str", "mixed precision: none or bf16"),
    "compile": ("bool", "torch.compile every unit, head and encoder"),
    "channels_last": ("bool", "convolutions in channels-last memory format: faster on most CPUs and GPUs, sums in "
                              "another order (not bit-identical); one process only"),
    "parallel": ("str", f"{', '.join(PARALLEL_MODES)} (pipeline: one process per stage of local modules, under "
                 "torchrun)"),
    "pipeline_sync": ("bool", "pipeline in lock step: the same values, no overlap"),
    "pipeline_assign": ("str", "modules per stage: balanced (timed), even, or counts such as 2,2"),
    "data_parallel": ("int", "data-parallel replicas of each pipeline stage (DDP); ranks = stages x this"),
    "fault_timeout": ("float", "seconds of silence after which a pipeline rank counts as dead"),
}
# Options that are not fields: ``pretrained`` is the backbone argument of the same name (net.model_kwargs).
ALIASES = {"pretrained": ("str", "Hugging Face checkpoint (hub name or save_pretrained directory) to start from")}
_FIELDS = {f.name: f for cls in SECTIONS.values() for f in dataclasses.fields(cls)}  # option → its dataclass field
SECTION_OF = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
OPTIONS = tuple(SECTION_OF) + tuple(ALIASES)
# option → (flag kind, help); lambda_source has none: runs record it in config.yaml and read it back
FLAGS: dict[str, tuple[str, str]] = {**_NET_HELP, **_OTHER_HELP, **ALIASES}


def resolve(options: Mapping[str, Any] | None = None, *, name: str | None = None, read_folder: bool = True,
            **more: Any) -> Config:
    """The config of flat ``options`` (and ``more``), every value explicit (module docstring).

    ``out`` defaults to ``runs/<name>``, ``name`` the preset's, else ``model_method_kK[_context]_dataset``.
    ``read_folder=False``: an image folder is described by the classes and size the options record (a trained
    run's config.yaml) instead of its files, to read a trained network back where its folder is not
    (``load_net``, ``predict``)."""
    values = {RENAMED.get(k, k): v for k, v in {**(options or {}), **more}.items()}
    check_keys(values, "options")
    net_options = {k: v for k, v in values.items() if SECTION_OF.get(k) == "net" and k not in ("model", "method")}
    if values.get("pretrained") is not None:  # a backbone argument with its own flag: resolve_net puts it in model_kwargs
        net_options["pretrained"] = values["pretrained"]
    sections = {}
    for section, cls in SECTIONS.items():
        if cls is not NetConfig:
            given = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in values.items() if SECTION_OF.get(k) == section}
            if section == "run" and given.get("out") is None:
                given.pop("out", None)
            elif section == "run" and isinstance(given["out"], str):  # "~/runs/x" from a YAML file or in quotes:
                given["out"] = os.path.expanduser(given["out"])  # the home folder, not a folder named "~" here
            if section == "optim":  # the options that depend on the optimizer take its defaults
                given = {**OPTIMIZER_DEFAULTS.get(given.get("optimizer", "sgd"), {}), **given}
            sections[section] = cls(**given)
    # an absolute path in config.yaml: eval and --resume work from any directory (`data` means ./data here)
    data = sections["data"] = dataclasses.replace(sections["data"], data_dir=absolute_dir(sections["data"].data_dir))
    # the dataset's spec (a user's image folder is described from its files: classes, and the size asked for)
    if data.dataset == PYTHON_DATA:
        spec = None
    elif (data.dataset == IMAGEFOLDER and not read_folder and isinstance(values.get("num_classes"), int)
          and isinstance(values.get("image_size"), (int, type(None)))):
        spec = classes_spec(tuple(map(str, range(values["num_classes"]))), values.get("image_size") or DEFAULT_IMAGE_SIZE,
                            values.get("in_channels") or 3)
    else:
        spec = describe_dataset(data.dataset, data.data_dir, image_size=values.get("image_size"),
                                test_fraction=data.test_fraction, in_channels=values.get("in_channels"))
    net = resolve_net(values.get("model", "resnet32"), values.get("method", "contsup"), dataset=spec, **net_options)
    config = Config(net=net, **sections)
    if "out" not in values or values["out"] is None:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, out=str(Path("runs") / (name or default_name(config)))))
    return config


def absolute_dir(path: str) -> str:
    """A data folder as config.yaml records it: absolute (eval and --resume work from any directory), a home
    folder written as ``~`` expanded (from a YAML file or in quotes, no shell does it)."""
    return os.path.abspath(os.path.expanduser(path))


def default_name(config: Config) -> str:
    """The run directory's name when ``out`` is not given, e.g. ``resnet32_contsup_k4_R1E_digits``."""
    net = config.net
    parts = [net.model, net.method, f"k{net.num_modules}"]
    if net.num_modules > 1 and net.context != "R0":
        parts.append(net.context)
    return "_".join(parts + [config.data.dataset])


def check_keys(values: Iterable[str], source: str) -> None:
    """Refuse option names that do not exist, naming the valid ones."""
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise ValueError(f"{source}: unknown key {unknown[0]!r}; valid keys are {', '.join(OPTIONS)}.")


# What a run's config.yaml records about the run besides its options (written by ``training.fit``).
RUN_RECORD = ("run_id", "torch_threads")


def run_id_of(mapping: Mapping[str, Any]) -> str:
    """The run id a config.yaml records, as a string ('' where it has none: a run of an earlier release)."""
    return str(mapping.get("run_id") or "")


def flatten(mapping: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Flat options from a file's mapping: flat (presets, files of earlier releases) or nested by section
    (``config.yaml``); renamed options of earlier releases take their new names. The run record
    (``RUN_RECORD``) is not an option and is left out."""
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}  # option → where the file gives it, to name an option given twice
    for key, value in mapping.items():
        if key in RUN_RECORD:
            continue
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"{source}: section {key!r} must be a mapping of options, got {value!r}.")
            items = [(key, name, v) for name, v in value.items()]
        else:
            items = [(None, key, value)]
        for section, name, v in items:
            spelled = name if section is None else f"{section}.{name}"
            name = RENAMED.get(name, name) if isinstance(name, str) else name
            if section is not None and name in SECTION_OF and SECTION_OF[name] != section:
                raise ValueError(f"{source}: {name!r} is an option of section {SECTION_OF[name]!r}, not {section!r}; "
                                 f"move it there (or give it at the top level).")
            if name in where:
                raise ValueError(f"{source}: {name!r} is given twice ({where[name]} and {spelled}); keep one.")
            flat[name], where[name] = v, spelled
    check_keys(flat, source)
    return flat


# --- YAML ----------------------------------------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (instead of keeping the last silently)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
# Floats as YAML 1.2 and Python write them: PyYAML follows YAML 1.1, where 1e-3 and 5e-4 (no dot) are strings.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ValueError(f"{source}: not valid YAML ({' '.join(str(err).split())}).") from None


def read_options(path: Path | str) -> dict[str, Any]:
    """The flat options of a config file (empty file: none); keys checked."""
    return flatten(read_mapping(path), str(path))


# Options every run's config.yaml records (those of earlier releases too): one that lacks any was edited or damaged
RUN_OPTIONS = ("model", "dataset", "method", "num_modules", "context", "local_loss", "reconstruct", "split", "seed",
               "epochs")


def read_run_options(path: Path | str) -> dict[str, Any]:
    """The flat options of a run's config.yaml, refused in one line where it lacks an option every run records
    (a truncated or edited file: the defaults would stand in for them, and another network be built)."""
    return check_run_options(read_options(path), path)


def check_run_options(options: dict[str, Any], path: Path | str) -> dict[str, Any]:
    missing = [key for key in RUN_OPTIONS if key not in options]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)} (edited or damaged); restore the run's own config.yaml.")
    return options


def read_mapping(path: Path | str) -> dict[str, Any]:
    """The mapping in a YAML config file (empty file: {}), duplicate keys refused."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; a config file is YAML (key: value per line).") from None
    values = load_yaml(text, str(path))
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must be a mapping of keys to values, got {type(values).__name__}.")
    return values


def dump_yaml(values: Mapping[str, Any], *, header: Iterable[str] = ()) -> str:
    """YAML text of a config (flat or nested), keys in order, with optional ``# comment`` lines first."""
    comments = "".join(f"# {line}\n" for line in header)
    lines = []
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            lines.append(f"{key}:\n" + "".join("  " + _yaml_line(k, v) for k, v in value.items()))
        else:
            lines.append(_yaml_line(key, value))
    return comments + "".join(lines)


def run_record(options: Mapping[str, Any], *, run_id: str | None = None, threads: int | None = None,
               header: Iterable[str] = ()) -> str:
    """The text of a run's config.yaml (and of its start record and a dry run's): the run's id and the torch
    threads it trains with first, where given, then its options (``Config.to_dict``), under ``header``."""
    first = {key: value for key, value in (("run_id", run_id), ("torch_threads", threads)) if value is not None}
    return dump_yaml({**first, **options}, header=header)


def _yaml_line(key: str, value: Any) -> str:
    """``key: value`` on one line; lists and mappings inline in JSON form (valid YAML flow style)."""
    if isinstance(value, (list, tuple, dict)):
        return f"{key}: {json.dumps(value, ensure_ascii=False)}\n"
    return yaml.safe_dump({key: value}, default_flow_style=False, allow_unicode=True, width=1000)


# --- presets ------------------------------------------------------------------------------------------------
def presets() -> list[str]:
    """Names of the shipped presets, e.g. ``contsup/resnet32_cifar10_k16_R1E_ce``."""
    return sorted(str(p.relative_to(PRESET_DIR).with_suffix("")) for p in PRESET_DIR.rglob("*.yaml"))


def find_config(name_or_path: str) -> Path:
    """A config file by path (``~`` expanded), or a shipped preset by name (with or without ``.yaml``)."""
    path = Path(os.path.expanduser(name_or_path))
    if path.is_file():
        return path
    preset = PRESET_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if preset.is_file():
        return preset
    raise ValueError(
        f"config: no file or preset named {name_or_path!r}; `locallearn list` shows the presets "
        f"(e.g. {presets()[0] if presets() else 'none shipped'})."
    )


def requested_options(config: str | None, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The options a user set (the file's, then ``overrides`` over them) and the preset's name, if any."""
    check_keys(overrides, "train")
    values: dict[str, Any] = {}
    name = None
    if config is not None:
        path = find_config(config)
        values = read_options(path)
        name = path.stem
        if "method" in values and overrides.get("method") not in (None, values["method"]):
            values = {k: v for k, v in values.items() if k not in _method_options(overrides["method"])}
        if overrides.get("optimizer") not in (None, values.get("optimizer", "sgd")):  # the file's rates and
            values = {k: v for k, v in values.items() if k not in _OPTIMIZER_OPTIONS}  # settings were its optimizer's
        _check_values(values, path, skip=overrides)
    values.update(overrides)
    return values, name


def _method_options(method: str) -> set[str]:
    """The options of a config file that ``--method`` replaces when it names another method than the file's:
    what any method sets (head, local loss, context, reconstruction, ...) and the settings of those, so that
    `--config contsup/... --method greedy` is greedy with its own heads and no context, not ContSup's. The
    number of modules stays the file's, unless the new method fixes it (e2e, checkpoint: one)."""
    from locallearn.methods import METHODS

    methods = [METHODS.get(name) for name in METHODS.names()]
    options = {key for m in methods for values in (m.defaults, *m.family_defaults.values()) for key in values}
    options |= {"lambda_source", "temperature", "feature_weight", "activation_segments"}
    return options - ({"num_modules"} - set(METHODS.get(method).defaults))


def _check_values(values: Mapping[str, Any], path: Path, *, skip: Mapping[str, Any]) -> None:
    """Each value of a config file against its option's own check, so that a wrong one is named with the file
    it is in (the checks of ``resolve`` cannot say where a value came from). Values the flags replace are not
    the run's, and are not checked."""
    for key, value in values.items():
        check_value = _FIELDS[key].metadata.get("check") if key in _FIELDS and key not in skip else None
        if check_value is not None and value is not None:
            try:
                check_value(key, value)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None


# Options that only some runs use: option → (whether a run uses it, what it is and why this run does not use it, the fix as a flag of
# `locallearn train`, the fix as an option of locallearn.training.train)
USED_BY = {
    "data_dir": (lambda c: c.data.dataset not in BUNDLED, "is where a dataset's files are read, and this run's "
                 "dataset ships inside a package (scikit-learn's digits)", "choose a dataset read from files "
                 "(--dataset fashion_mnist, cifar10, imagefolder, ...)", "choose a dataset read from files"),
    "lambdas": (lambda c: c.net.reconstruct and c.net.num_modules > 1, "weighs image reconstruction, which this run "
                "does not do", "add --reconstruct", "add reconstruct=True"),
    "temperature": (lambda c: c.net.local_loss == "contrast" and c.net.num_modules > 1, "is the contrastive loss's, "
                    "and this run's local loss is not contrastive", "add --local-loss contrast",
                    "add local_loss='contrast'"),
    **{name: (applies, f"is {what}, and this run trains one module", "use a local method with --num-modules 2 or more",
              "use a local method with num_modules=2 or more")
       for name, applies, what in (
           ("split", lambda c: c.net.num_modules > 1, "where the local modules are cut"),
           ("aux_head", lambda c: c.net.num_modules > 1, "a local module's head"),
           ("local_loss", lambda c: c.net.num_modules > 1, "the local modules' loss"),
           ("reconstruct", lambda c: c.net.num_modules > 1 or not c.net.reconstruct, "the local modules' image "
            "reconstruction"),
           ("feature_decoder", lambda c: c.net.num_modules > 1, "the local modules' feature decoder"))},
    "feature_weight": (lambda c: c.net.feature_decoder is not None and c.net.num_modules > 1, "weighs the local "
                       "modules' feature reconstruction, which this run does not do (no feature decoder, or one "
                       "module)", "add --feature-decoder (linear, conv or transformer) or use --method featrecon, "
                       "with --num-modules 2 or more", "add feature_decoder='linear' (or 'conv', 'transformer') or "
                       "use method='featrecon', with num_modules=2 or more"),
    "activation_segments": (lambda c: c.net.activation_checkpointing, "sets how activation checkpointing splits a "
                            "module, and this run does not checkpoint", "use --method checkpoint",
                            "use method='checkpoint'"),
    "warmup_lr": (lambda c: c.optim.warmup_used > 0, "is where the warm-up starts, and this run has no warm-up "
                  "(warm-up epochs 0, or not fewer than the epochs)", "give --warmup-epochs below --epochs",
                  "give warmup_epochs below epochs"),
    **{name: (lambda c: c.processes.parallel == "pipeline", "sets up the pipeline, and this run is not one",
              "add --parallel pipeline", "run locallearn train --parallel pipeline under torchrun")
       for name in ("pipeline_assign", "pipeline_sync", "data_parallel", "fault_timeout")},
}


def check_used(config: Config, given: Mapping[str, Any], *, python: bool = False) -> None:
    """Refuse an option the user set that the run would not use: it would change nothing but config.yaml,
    whose reader would take it for part of the run. ``locallearn train`` checks its flags only: a config file
    (a preset with an overridden method, a run's own config.yaml, which records every option) and a stored
    config are never refused for it. ``python``: the options of ``locallearn.training.train``, named so. A
    warm-up rate given above the peak rate is refused too (the default 0.01 is not: a small --lr with a
    warm-up then starts above its peak, as it always has)."""
    for name, (applies, what, fix, python_fix) in USED_BY.items():
        if given.get(name) is not None and not applies(config):
            spelled = f"{name}=..." if python else "--" + name.replace("_", "-")
            raise ValueError(f"{name}: {spelled} {what}, so it would change nothing but config.yaml; drop it, or "
                             f"{python_fix if python else fix}.")
    optim = config.optim
    if given.get("warmup_lr") is not None and optim.warmup_used and optim.warmup_lr > optim.lr:
        raise ValueError(f"warmup_lr: a warm-up rises from warmup_lr to the peak lr, but warmup_lr={optim.warmup_lr:g} "
                         f"is above lr={optim.lr:g}; give a lower one.")


def load_config(config: str | None = None, **overrides: Any) -> Config:
    """Defaults ← the config file or preset ← ``overrides`` (flags)."""
    values, name = requested_options(config, overrides)
    return resolve(values, name=name)


# Options that may change when a run is resumed: where it lives and runs, not what it computes.
RESUMABLE_CHANGES = ("out", "data_dir", "device", "compile", "channels_last", "parallel", "pipeline_sync",
                     "pipeline_assign", "fault_timeout")


def option(dataset: str | None, name: str) -> str:
    """How a message names run option ``name`` of a run on ``dataset``: the flag (``--overwrite``) on the
    command line, the keyword (``overwrite=True``) for a run of ``training.train`` on batches from Python."""
    if dataset != PYTHON_DATA:
        return f"--{name.replace('_', '-')}"
    return f"{name}=True" if name in ("resume", "overwrite") else f"{name}="


def resumed_config(stored: Mapping[str, Any], requested: Mapping[str, Any], *, out: str) -> Config:
    """The config of a run being resumed: the stored options, with the options asked for now laid over them —
    which must not change anything (except ``RESUMABLE_CHANGES``). ``locallearn train --out RUN --resume``
    therefore needs no other flag, and repeating the original command works too."""
    if requested.get("parallel") == "none" and stored.get("data_parallel", 1) != 1:
        raise ValueError(f"--resume: the run in {out} trains data-parallel (data_parallel {stored['data_parallel']} in "
                         f"its config.yaml), which one process cannot continue (its BatchNorm sees other batches); "
                         f"resume it under torchrun with --parallel pipeline.")
    moved = {"data_dir": requested["data_dir"]} if requested.get("data_dir") is not None else {}
    try:
        before = resolve({**stored, **moved})  # resolving an image folder's options reads it, where it is now
    except ValueError as err:
        if stored.get("dataset") == IMAGEFOLDER and str(err).startswith("num_classes: "):  # classes added since
            data_dir = absolute_dir(moved.get("data_dir", stored.get("data_dir", "data")))
            names = list(describe_dataset(IMAGEFOLDER, data_dir, test_fraction=stored.get("test_fraction")).class_names)
            shown = ", ".join(names[:5]) + (f", … ({len(names) - 5} more)" if len(names) > 5 else "")
            raise ValueError(f"--resume: the run in {out} trained on {stored.get('num_classes')} classes but {data_dir} "
                             f"now holds {len(names)} ({shown}); resume it on the run's own data (--data-dir), or move "
                             f"the classes added since out of it.") from None
        raise
    after = resolve({**stored, **requested, "out": out})
    changed = differing_options(before, after, ignore=RESUMABLE_CHANGES)
    if changed:
        resume_, out_ = option(stored.get("dataset"), "resume"), option(stored.get("dataset"), "out")
        raise ValueError(
            f"{resume_}: the run in {out} was started with other options: {', '.join(changed)}; resume it with "
            f"its own options, or start a new run with another {out_}."
        )
    return after


def differing_options(a: Config, b: Config, *, ignore: Iterable[str] = ()) -> list[str]:
    """``name (a → b)`` for every option whose value differs."""
    x, y = a.options(), b.options()
    return [f"{k} ({x[k]!r} → {y[k]!r})" for k in x if k not in ignore and x[k] != y.get(k)]


__all__ = [
    "FLAGS",
    "NET_FIELDS",
    "OPTIONS",
    "SECTIONS",
    "Config",
    "DataConfig",
    "OptimConfig",
    "ProcessesConfig",
    "RunConfig",
    "dump_yaml",
    "run_record",
    "find_config",
    "flatten",
    "load_config",
    "presets",
    "read_options",
    "requested_options",
    "read_run_options",
    "check_run_options",
    "RUN_OPTIONS",
    "resolve",
    "resumed_config",
]
