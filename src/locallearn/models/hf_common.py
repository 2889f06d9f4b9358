"""What the backbones built on Hugging Face ``transformers`` share (``swin``, ``hf_resnet``, ``vit``,
``convnext``): the validation of their architecture fields, their stage splits, and pretrained checkpoints.

**Pretrained checkpoints.** ``pretrained`` is a ``save_pretrained`` directory or a hub name, of the family's
``*ForImageClassification`` class or of its bare ``*Model`` (whose classifier is then new). The checkpoint's
``config.json`` is checked first: another ``model_type``, or other architecture fields than the requested
model's, are refused in one line naming the fields. Everything else (LayerNorm eps, activation, ...) is the
checkpoint's own. A checkpoint with another number of classes gets a fresh classifier, initialised as
transformers initialises that family (``_init_weights``).

**Rebuilt from a run.** A run trained from a checkpoint records the checkpoint's configuration (with the
overrides it was loaded with) beside its own weights, and ``eval``, ``--resume`` and ``load_net`` pass that
``PretrainedConfig`` as ``pretrained``: the same architecture is built — checked as above — without reading
the checkpoint, which may since have moved, or be a hub name on a machine without the hub (``training.rundir``).

**Offline.** Nothing waits through transformers' download retries (about 25 s without network). A name that
is not a directory but looks like a path is refused at once. For a hub name, the cache is read without any
network access (``local_files_only``) when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set or when one
TCP connection to the hub's endpoint fails within ``HUB_TIMEOUT_S`` seconds; a model missing from the cache
is then refused in one line that says why. Behind an HTTP(S) proxy the probe is skipped (a direct
connection says nothing there) and transformers decides.
"""

from __future__ import annotations

import copy
import os
import socket
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import torch
from torch import nn

from locallearn.validate import Int

Cut = tuple[int, int]

HUB_TIMEOUT_S = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}


# --- architecture fields ------------------------------------------------------------------------------------
def check_positive_ints(model: str, **values: Any) -> None:
    """Each value a positive integer (not a bool), else a one-line ``ValueError`` naming the field."""
    for name, value in values.items():
        Int(1)(f"{model}: {name}", value)


def int_tuple(model: str, name: str, value: Any) -> tuple[int, ...]:
    """A non-empty sequence of positive integers as a tuple (YAML and JSON give lists)."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{model}: {name} must be a list of positive integers, one per stage, got {value!r}.")
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{model}: {name} must be a list of positive integers, one per stage, got {value!r}.")
    return tuple(value)


def stage_lists(spec: Any) -> None:
    """Normalise ``spec.hidden_sizes`` and ``spec.depths`` (a frozen dataclass's) to tuples of positive
    integers, one entry per stage each."""
    object.__setattr__(spec, "hidden_sizes", int_tuple(spec.name, "hidden_sizes", spec.hidden_sizes))
    object.__setattr__(spec, "depths", int_tuple(spec.name, "depths", spec.depths))
    if len(spec.hidden_sizes) != len(spec.depths):
        raise ValueError(
            f"{spec.name}: depths and hidden_sizes need one entry per stage, got depths {spec.depths} and "
            f"hidden_sizes {spec.hidden_sizes}."
        )


# --- splits -------------------------------------------------------------------------------------------------
def stage_splits(depths: Iterable[int]) -> dict[int, list[Cut]]:
    """``stages`` cuts of a staged backbone whose block b of stage s = 1.. is unit (s, b): a module ends after
    a stage's last block. One module per stage (K = number of stages) and, with three stages or more, K = 2
    at the middle stage boundary — Swin's rule (``SwinBackbone.named_splits``)."""
    depths = list(depths)
    last_block = [(s, d - 1) for s, d in enumerate(depths, start=1)]
    table = {len(depths): last_block[:-1]}
    if len(depths) >= 3:
        table[2] = [last_block[len(depths) // 2 - 1]]
    return table


# --- pretrained checkpoints ---------------------------------------------------------------------------------
def load_pretrained(
    name_or_path: str | os.PathLike,
    model_class: type,
    *,
    model: str,
    family: str,
    example: str,
    wanted: dict[str, tuple[str, Any]],
    num_classes: int,
    width: int,
    check: Callable[[Any], str | None] | None = None,
    **config_overrides: Any,
):
    """``model_class`` (a transformers ``*ForImageClassification``) from a checkpoint, checked and with
    ``num_classes`` outputs (see the module docstring).

    ``wanted``: option name (as in ``model_kwargs``) → (config field, the value ``model`` needs).
    ``width``: the classifier's input features. ``check``: given the checkpoint's config, what else makes
    it unusable here (a sentence), or None. ``config_overrides``: training fields that are not architecture
    (e.g. ConvNeXt's drop path rate), set on the loaded config.
    """
    from transformers import AutoConfig, PretrainedConfig

    recorded = isinstance(name_or_path, PretrainedConfig)  # the architecture a run recorded: built, not loaded
    if recorded:
        config, source = copy.deepcopy(name_or_path), "the run's recorded checkpoint configuration"
    else:
        source, no_hub = _locate(name_or_path)
        local_only = no_hub is not None
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError) as err:
            raise ValueError(f"pretrained: cannot load {source!r}: {_why(source, no_hub, err)}.") from None
    expected_type = model_class.config_class.model_type
    if config.model_type != expected_type:
        raise ValueError(
            f"pretrained: {source!r} is a {config.model_type!r} checkpoint, not {family}; give a {family} checkpoint "
            f"with {model}'s architecture (e.g. {example})."
        )
    differ = []
    for option, (field, value) in wanted.items():
        found = getattr(config, field, None)
        found = tuple(found) if isinstance(found, list) else found
        if found != value:
            differ.append(f"{option} {found} (wanted {value})")
    if differ:
        raise ValueError(
            f"pretrained: {source!r} is another {family} architecture than {model}: {', '.join(differ)}; pass "
            f"matching model_kwargs or a matching checkpoint."
        )
    problem = check(config) if check is not None else None
    if problem:
        raise ValueError(f"pretrained: {source!r} {problem}.")
    if recorded:
        for name, value in config_overrides.items():
            setattr(config, name, value)
        hf_model = model_class(config).float()  # the weights come from the run's checkpoint
    else:
        try:
            # in float32 whatever the checkpoint was saved in (transformers keeps a bf16 checkpoint in bf16, beside
            # the float32 parts built here): the training precision is --amp's, not the file's
            hf_model = model_class.from_pretrained(source, local_files_only=local_only, dtype=torch.float32,
                                                   **config_overrides)
        except (OSError, ValueError) as err:
            raise ValueError(f"pretrained: cannot load the weights of {source!r}: {_why(source, no_hub, err)}.") from None
    _fit_classifier(hf_model, num_classes, width)
    return hf_model


def keep_config(backbone: nn.Module, hf_model: nn.Module | None) -> nn.Module:
    """``backbone`` with ``pretrained_config``: the configuration of the checkpoint it was loaded from (None
    without one), which a run records so that it can be rebuilt without the checkpoint."""
    backbone.pretrained_config = hf_model.config if hf_model is not None else None
    return backbone


def _locate(name_or_path: str | os.PathLike) -> tuple[str, str | None]:
    """The source, and why the hub cannot be asked (None: it can, or the source is a directory)."""
    source = str(name_or_path)
    if os.path.isdir(source):
        return source, None
    if source.startswith((os.sep, ".", "~")) or source.count("/") > 1:
        raise ValueError(f"pretrained: no such directory {source!r}; give a save_pretrained directory or a hub name.")
    return source, _hub_unavailable()


def _hub_unavailable() -> str | None:
    """Why the Hugging Face hub cannot be asked, or None: offline mode, or no connection within the timeout."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return f"{var} is set"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # through a proxy a direct connection proves nothing: transformers decides
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as err:
        return f"{url.hostname} cannot be reached ({_first_line(err)})"
    return None


def _why(source: str, no_hub: str | None, err: BaseException) -> str:
    if os.path.isdir(source):
        return f"the directory is not a usable checkpoint ({_first_line(err)})"
    if no_hub is not None:
        return f"not a local directory, not in the Hugging Face cache, and {no_hub}; give a save_pretrained directory"
    return f"not a local directory, and the Hugging Face hub could not provide it ({_first_line(err)})"


def _fit_classifier(hf_model: nn.Module, num_classes: int, width: int) -> None:
    """A fresh ``Linear(width → num_classes)``, initialised by the model's own ``_init_weights``, where the
    checkpoint's classifier has another number of classes (or none: ``num_labels=0`` gives an Identity).
    ResNet's classifier is ``Sequential(Flatten, Linear)``: its Linear is replaced in place."""
    head = hf_model.classifier
    linear = head[-1] if isinstance(head, nn.Sequential) else head
    if isinstance(linear, nn.Linear) and linear.out_features == num_classes:
        return
    fc = nn.Linear(width, num_classes)
    hf_model._init_weights(fc)
    if isinstance(head, nn.Sequential):
        head[-1] = fc
    else:
        hf_model.classifier = fc


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] + ("…" if len(text) > 200 else "")
