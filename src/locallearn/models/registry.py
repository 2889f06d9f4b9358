"""The model registry: ``create_model(name, num_classes=..., image_size=...)``, and what it knows of each
model besides its factory — its family (``cnn`` or ``transformer``) and the keyword arguments it takes (the
splits its backbone defines itself are its ``named_splits``).

A model name is a registered name, or the import path of a factory of the user's, ``package.module:factory``
(``--model`` on the command line), which returns an ``nn.Module`` (a ``Backbone`` or an ``nn.Sequential``,
``models.custom``); a factory may carry a ``family`` attribute. The current directory is importable, as
for ``python -m``. A model given as a Python object has the name ``object:<class>`` (it cannot be rebuilt
from its name).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from typing import Any, Callable, Iterable

from locallearn.models.base import Backbone
from locallearn.registry import Registry

MODELS: Registry[Callable[..., Backbone]] = Registry(
    "model", other="or a model of your own, package.module:factory (docs/custom-models.md); a name given to "
    "register_model is known only in the process that registered it")
# family → the auxiliary head ``aux_head="auto"`` picks: InfoPro's 1c2f for CNNs, FeatRecon's token head
# (LayerNorm → token mean → Linear) for transformers. Method presets may also differ by family
# (``Method.family_defaults``).
FAMILY_HEADS = {"cnn": "1c2f", "transformer": "token"}
_FAMILIES: dict[str, str] = {}
_OPTIONS: dict[str, tuple[str, ...] | None] = {}
OBJECT = "object:"  # the name of a model given as a Python object


def register_model(
    name: str,
    factory: Callable[..., Backbone],
    *,
    family: str = "cnn",
    options: Iterable[str] | None = None,
) -> Callable[..., Backbone]:
    """``family``: a key of ``FAMILY_HEADS``. ``options``: the keyword arguments ``factory`` accepts
    (``model_kwargs`` plus ``num_classes`` and ``image_size``); by default read from its signature, and
    unchecked when that has ``**kwargs``."""
    if family not in FAMILY_HEADS:
        raise ValueError(f"family: unknown model family {family!r}; valid families are {', '.join(FAMILY_HEADS)}.")
    if options is None and not _takes_var_keywords(factory):
        options = signature_options(factory)
    registered = MODELS.register(name, factory)
    _FAMILIES[name] = family
    _OPTIONS[name] = tuple(options) if options is not None else None
    return registered


def is_object_name(name: str) -> bool:
    """Whether ``name`` is that of a model given as a Python object (``object:<class>``)."""
    return isinstance(name, str) and name.startswith(OBJECT)


def is_import_path(name: str) -> bool:
    return isinstance(name, str) and ":" in name and not is_object_name(name)


def import_factory(path: str) -> Callable[..., Any]:
    """The factory ``package.module:attribute`` names, imported (the current directory importable)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"model: {path!r} is not an import path; write it package.module:factory.")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: a factory in the current directory is found
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"model: cannot import {module_name!r} ({err}); the module of {path} must be importable from the "
            f"current directory or an installed package (for a run trained elsewhere: run from its directory, or "
            f"add that directory to PYTHONPATH)."
        ) from None
    except Exception as err:  # the module's own code failed: a syntax error, an exception at import time
        raise ValueError(f"model: importing {module_name!r} failed: {_where(err)}; fix the module.") from None
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"model: module {module_name!r} has no attribute {attribute!r} (from {path}).")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"model: {path} is a {type(factory).__name__}, not a factory (a function or class).")
    return factory


def check_model(name: str) -> None:
    """Refuse a model name that is neither registered, nor an importable factory, nor a Python object's."""
    if is_import_path(name):
        import_factory(name)
    elif not is_object_name(name):
        MODELS.get(name)


def signature_options(fn: Callable, *, exclude: Iterable[str] = ()) -> tuple[str, ...]:
    """The named keyword arguments of ``fn`` (``**kwargs`` aside), less ``exclude``."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    skip = set(exclude)
    return tuple(p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds and p.name not in skip)


def _takes_var_keywords(fn: Callable) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def model_family(name: str) -> str:
    """``cnn`` or ``transformer``: what per-family defaults (aux head, method presets) a model gets. A factory
    of the user's may say with a ``family`` attribute; "cnn" otherwise."""
    if is_import_path(name):
        return getattr(import_factory(name), "family", "cnn")
    if is_object_name(name):
        return "cnn"
    MODELS.get(name)
    return _FAMILIES[name]


def default_aux_head(name: str) -> str:
    """The auxiliary head a method's ``"auto"`` picks for a model: its family's (``FAMILY_HEADS``)."""
    return FAMILY_HEADS[model_family(name)]


def _options(name: str) -> tuple[str, ...] | None:
    """The keyword arguments model ``name``'s factory takes (None: any)."""
    if is_import_path(name):
        factory = import_factory(name)
        return None if _takes_var_keywords(factory) else signature_options(factory)
    if is_object_name(name):
        return ()
    MODELS.get(name)
    return _OPTIONS[name]


def check_model_options(name: str, options: Iterable[str]) -> None:
    """Refuse a keyword argument the factory of model ``name`` does not take, naming the valid ones (what
    ``NetConfig.model_kwargs`` may hold)."""
    valid = _options(name)
    unknown = sorted(set(options) - set(valid)) if valid is not None else []
    if unknown:
        hint = ""
        if ":" in unknown[0]:  # YAML reads {width:8} as the key 'width:8'
            key, _, value = unknown[0].partition(":")
            hint = f" (YAML needs a space after the colon: {{{key}: {value}}})"
        elif unknown[0] == "pretrained":
            hint = " (--pretrained applies to the models built by Hugging Face transformers, such as resnet50)"
        raise ValueError(
            f"model_kwargs: unknown option {unknown[0]!r} for {name}{hint}; valid options are "
            f"{', '.join(valid) or 'none'}."
        )


def model_accepts(name: str, option: str) -> bool:
    """Whether the factory of model ``name`` takes keyword ``option`` (a factory with ``**kwargs`` takes any)."""
    valid = _options(name)
    return valid is None or option in valid


def create_model(name: str, **kwargs) -> Any:
    """The model ``name`` (a registered ``Backbone``; for an import path, whatever ``nn.Module`` the user's
    factory returns: ``models.custom.as_backbone`` cuts it into units)."""
    if is_object_name(name):
        raise ValueError(
            f"model: {name} was given as a Python object and cannot be rebuilt from its name; build it again in "
            f"Python and pass it (locallearn.training.load_net(run_dir, model=your_model)), or train from a factory "
            f"(package.module:factory), which can be."
        )
    check_model_options(name, kwargs)
    if not is_import_path(name):
        return MODELS.get(name)(**kwargs)
    factory = import_factory(name)
    try:
        return factory(**kwargs)
    except Exception as err:  # the user's factory failed: say what and where, in one line
        if isinstance(err, TypeError) and len(traceback.extract_tb(err.__traceback__)) == 1:  # the call itself
            given = ", ".join(kwargs) or "no arguments"
            raise ValueError(f"model: {name} cannot be called with {given} ({' '.join(str(err).split())}); give "
                             f"its other arguments with --model-kwargs, or defaults.") from None
        module = sys.modules.get(getattr(factory, "__module__", ""), None)
        raise ValueError(f"model: {name}(...) raised {_where(err, getattr(module, '__file__', None))}; fix the "
                         f"factory.") from None


def _where(err: BaseException, file: str | None = None) -> str:
    """``SyntaxError: invalid syntax (mine.py, line 3)``, ``RuntimeError: boom (mine.py, line 7)``: the
    error and the line it came from — the last one in ``file`` (the user's module) where it passed there."""
    text = f"{type(err).__name__}: {' '.join(str(err).split())}"
    if isinstance(err, SyntaxError):
        return text  # its text names the file and line
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if file and os.path.abspath(f.filename) == os.path.abspath(file)]
    frame = (own or frames or [None])[-1]
    return text + (f" ({os.path.basename(frame.filename)}, line {frame.lineno})" if frame else "")
