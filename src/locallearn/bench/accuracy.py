"""``locallearn bench accuracy``: test error of every method against K, trained for real on one recipe.

A grid of (model × method × K × context × local loss × seed) cells, every cell a normal run directory
trained by ``training.fit`` with the same recipe and budget (the options given for the grid), so that

- an interrupted grid resumes: a finished cell is skipped, an unfinished one resumed (``fit(resume=True)``);
  a cell directory holding a run of other options (the grid rerun with another recipe, or without an option
  it gave the cell: each cell records them in ``grid-cell.json``) is refused up front, while an option the
  grid never gave keeps the cell's stored value (a default changed since); so is a cell part-trained on other
  torch threads than this process's (``check_threads``); cells are named by what they train (``_cell_name``),
  so a grid that names an axis at its default value finds the cells of one that left it out;
- one process writes a grid's table: a second into the same ``out`` is refused while one runs (``RunDir.lock``
  of ``out``; ``--shard`` processes write no table and take no such lock);
- every cell can be re-evaluated, reported or resumed on its own (``locallearn eval``, ``report``, ``train``).

Expansion rules (as the memory and speed grids'): ``e2e`` is always included, at K = 1, as the reference;
single-module methods run at K = 1 only; local methods at every K ≥ 2 of the grid; context modes multiply
the methods that supply context (``Method.varies_context``), local losses every local method when given
(otherwise each method keeps its own). A recipe option that only some runs use (``aux_head``: the local
modules' heads; ``training.config.check_used``) goes to the cells that use it only. Every cell is resolved,
and each distinct network built, before anything trains, so an unknown value, a value given twice, a request
no cell would honour or a split that cannot be made is refused up front; a cell that fails while training
is reported in its row (status ``failed`` and the reason) and the grid goes on. Cells run seed by seed.
``--shard I/N`` trains every N-th cell (several processes on one grid), ``--collect`` trains nothing and
writes the table from the cells already finished.

Outputs in ``--out``: ``accuracy.json`` (the grid, where and with what the cells trained, and one row per
cell: its resolved method options, final-epoch test error, best epoch labelled as selected on the test set,
time, images/s, peak memory, parameters, torch threads and revision), ``accuracy.csv``, ``accuracy.md``
(the papers' layout from ``training.report``: methods as rows, K as columns, mean ± std over seeds, e2e as
the reference), ``accuracy.png`` (test error against K with error bars) and ``accuracy_curves.png`` (test
error against epoch; each module's head accuracy against depth). The machine, threads and
revision they state are the cells' own (their ``config.yaml`` and ``summary.json``), not those of the
process that writes the table (a later ``--collect``, say).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from locallearn.bench.grid import REFERENCE
from locallearn.bench.report import write_csv
from locallearn.methods import METHODS
from locallearn.net import build_net
from locallearn.training import interrupt
from locallearn.training.config import (
    USED_BY,
    RESUMABLE_CHANGES,
    Config,
    check_used,
    differing_options,
    read_options,
    resolve,
)
from locallearn.training.fit import fit
from locallearn.progress import Progress
from locallearn.training.report import run_threads, write_report
from locallearn.training.rundir import CONFIG, LOG, METRICS, RunDir
from locallearn.validate import Int

Log = Callable[[str], None]
# options a cell takes from the grid's axes, and the AccuracyGrid field that sets them
AXES = {"model": "models", "method": "methods", "num_modules": "num_modules", "context": "contexts",
        "local_loss": "local_losses", "seed": "seeds"}
# a row's method options, resolved: what every row shows, whether or not the grid varies it
ROW_OPTIONS = ("model", "method", "num_modules", "context", "local_loss", "aux_head")


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its name (its directory under ``cells/``) and the options it is resolved from."""

    name: str
    options: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class AccuracyGrid:
    """What to train (the axes) and how (``recipe``: options every cell shares, e.g. dataset, epochs, lr)."""

    models: tuple[str, ...] = ("resnet32",)
    methods: tuple[str, ...] = ("e2e", "greedy", "dgl", "infopro", "contsup")
    num_modules: tuple[int, ...] = (4, 16)
    contexts: tuple[str, ...] | None = None  # None: each context method's own
    local_losses: tuple[str, ...] | None = None  # None: each method's own
    seeds: tuple[int, ...] = (0, 1)
    recipe: dict[str, Any] = field(default_factory=dict, hash=False)
    # recipe options that came from a --config file: dropped where no cell uses them, rather than refused (as
    # `locallearn train` takes any option of a file, e.g. a preset's warm-up rate when --epochs leaves no warm-up)
    from_file: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in ("models", "methods", "num_modules", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"{name}: give at least one value.")
        for name in AXES.values():  # a repeated value would train (or report) the same cells twice
            twice = [v for v, n in Counter(getattr(self, name) or ()).items() if n > 1]
            if twice:
                raise ValueError(f"{name}: {twice[0]} is given twice; give each value once.")
        methods = [METHODS.get(method) for method in self.methods]
        for k in self.num_modules:
            Int(1)("num_modules", k)
        for seed in self.seeds:
            Int(0)("seeds", seed)
        local = [m.name for m in methods if not m.single_module]
        if local and max(self.num_modules) < 2:
            raise ValueError(f"num_modules: {local[0]} trains local modules and needs K ≥ 2, but the grid's K are "
                             f"{', '.join(map(str, self.num_modules))}; add a K of 2 or more, or drop {local[0]}.")
        if self.local_losses and not local:
            raise ValueError("local_losses: no method of the grid trains local modules, so they would change nothing; "
                             "drop them, or add a local method (e.g. greedy).")
        if self.contexts and not any(m.varies_context for m in methods):
            supply = [name for name in METHODS.names() if METHODS.get(name).varies_context]
            raise ValueError(f"contexts: no method of the grid supplies context, so they would change nothing; drop "
                             f"them, or add a method that does ({', '.join(supply)}).")
        clash = sorted({*AXES, "out"} & set(self.recipe))
        if clash:
            where = (f"the grid's {AXES[clash[0]]}" if clash[0] in AXES
                     else "run_accuracy's out (a cell runs in OUT/cells/NAME)")
            raise ValueError(f"recipe: {clash[0]} is set by {where}, not by the recipe; give it there.")

    def cells(self) -> list[Cell]:
        """Every run in the order they are trained: seed by seed (so a grid stopped early has whole seeds
        of every cell), e2e first within a seed."""
        out: list[Cell] = []
        methods = list(dict.fromkeys([REFERENCE, *self.methods]))
        for seed in self.seeds:
            for model in self.models:
                for name in methods:
                    for variant in self._variants(METHODS.get(name)):
                        options = {**self.recipe, "model": model, "method": name, **variant, "seed": seed}
                        out.append(Cell(_cell_name(options), options))
        return out

    def _variants(self, method) -> list[dict[str, Any]]:
        if method.single_module:
            return [dict(num_modules=1)]
        contexts = self.contexts if self.contexts and method.varies_context else (None,)
        losses = self.local_losses or (None,)
        return [
            {"num_modules": k, **({"context": c} if c else {}), **({"local_loss": loss} if loss else {})}
            for k in self.num_modules if k > 1 for c in contexts for loss in losses
        ]


def _cell_name(options: dict[str, Any], *, defaults: bool = False) -> str:
    """``resnet32_contsup_E_k16_s0``: model, method, the context and local loss where they are not the method's
    own on that model (so that a grid naming an axis at its default value, ``--local-losses ce``, finds the
    cells of one that left it out), K and seed; ``defaults``: with them (the names of earlier releases, which
    named an axis whenever the grid gave it: ``_cell_dir`` still finds those)."""
    own = {} if defaults else _method_defaults(options["method"], options["model"])
    parts = [options["model"], options["method"]]
    parts += [options[k] for k in ("context", "local_loss") if options.get(k) and options[k] != own.get(k)]
    return "_".join([*parts, f"k{options['num_modules']}", f"s{options['seed']}"])


def _method_defaults(method: str, model: str) -> dict[str, Any]:
    """The method's own options on the model's family (empty where either is unknown: the grid's checks say so)."""
    from locallearn.models import model_family

    try:
        return METHODS.get(method).preset(model_family(model))
    except (ValueError, KeyError, ImportError):
        return {}


def _cell_dir(cell: Cell, out: Path) -> Path:
    """Where a cell runs: OUT/cells/NAME, or where an earlier release named the same cell otherwise — it named
    an axis whenever its grid gave one, so any of the axes at the method's own value may be in that name —
    the directory that exists."""
    path = out / "cells" / cell.name
    if path.exists():
        return path
    own = _method_defaults(cell.options["method"], cell.options["model"])
    at_default = [k for k in ("context", "local_loss") if own.get(k) and cell.options.get(k, own[k]) == own[k]]
    base = {k: v for k, v in cell.options.items() if k not in at_default}  # the axes named in any case stay
    for count in range(1, len(at_default) + 1):
        for named in itertools.combinations(at_default, count):
            earlier = out / "cells" / _cell_name({**base, **{k: own[k] for k in named}}, defaults=True)
            if earlier.is_dir():
                return earlier
    return path


def resolve_cells(grid: AccuracyGrid, out: Path) -> list[tuple[Cell, Config]]:
    """Every cell's config, resolved and checked before anything trains: an unknown value, a recipe option
    that no cell uses, a network that cannot be built (``check_nets``) or a cell directory holding another
    run (``check_cell``) fails here, naming its cell. A recipe option that only some runs use (``USED_BY``
    of ``check_used``, e.g. ``aux_head``) is given to the cells that use it only: the others' config.yaml
    would record an option their run ignores, which ``locallearn train`` refuses."""
    resolved = []
    used: set[str] = set()
    for cell in grid.cells():
        config = _resolve(cell, out)
        ignored = {key for key in grid.recipe if key in USED_BY and not USED_BY[key][0](config)}
        if ignored:
            cell = dataclasses.replace(cell, options={k: v for k, v in cell.options.items() if k not in ignored})
            config = _resolve(cell, out)
        used |= set(grid.recipe) - ignored
        try:
            check_used(config, {key: grid.recipe[key] for key in grid.recipe if key not in ignored})
        except ValueError as err:
            raise ValueError(f"grid cell {cell.name}: {err}") from None
        resolved.append((cell, config))
    unused = [key for key in grid.recipe if key not in used and key not in grid.from_file]
    if unused:
        _, what, fix, _ = USED_BY[unused[0]]
        raise ValueError(f"{unused[0]}: no cell of the grid uses it (in each, it {what}); drop it, or {fix}.")
    check_nets(resolved)
    # before anything trains: a cell of another recipe is never taken as this one's, and a cell trained before
    # keeps the options it was trained with where the grid does not set them (a default changed since)
    return [(cell, check_cell(cell, config)) for cell, config in resolved]


def _resolve(cell: Cell, out: Path) -> Config:
    try:
        return resolve({**cell.options, "out": str(_cell_dir(cell, out))})
    except ValueError as err:
        raise ValueError(f"grid cell {cell.name}: {err}") from None


# Splits that are computed by measuring the network (seconds each), rather than read from a table
_COMPUTED_SPLITS = ("auto", "balanced")


def check_nets(resolved: list[tuple[Cell, Config]]) -> None:
    """Build each distinct network of the grid once (a few ms for a ResNet on CPU), so that a cell whose
    network cannot be made (a paper split without a table for its K, more modules than units) is refused
    before an earlier cell trains. A computed split is checked for its K only (built as ``uniform``):
    computing it measures the network, which takes seconds. The global RNG is left as it was."""
    seen = set()
    with torch.random.fork_rng(devices=[]):
        for cell, config in resolved:
            net = config.net
            if net.split in _COMPUTED_SPLITS and net.num_modules > 1:
                net = dataclasses.replace(net, split="uniform")
            if repr(net) in seen:
                continue
            seen.add(repr(net))
            try:
                build_net(net)
            except ValueError as err:
                raise ValueError(f"grid cell {cell.name}: {err}") from None


# A cell's record of the options the grid gave it, beside its run: what a rerun of the grid must give again
CELL_REQUEST = "grid-cell.json"


def check_cell(cell: Cell, config: Config) -> Config:
    """The config of a cell: ``config``, or where the cell's directory holds a run already, that run's
    options with the cell's laid over them (as ``--resume`` takes them: what the grid sets must not change
    them, and an option it never set keeps the stored value, e.g. a default changed since). A run of other
    options (a grid rerun into the same --out with another recipe, whose finished cells would be reported
    as results of the new command) is refused, an option the grid gave the cell and no longer gives
    included; a cell without its record (``CELL_REQUEST``, from an earlier release) is compared option by
    option. The options the grid sets come first in the message, before those they imply (a dataset's
    image size, ...)."""
    stored = RunDir(config.run.out).file(CONFIG)
    if not stored.is_file():
        return config
    options = read_options(stored)
    before = resolve(options)
    given_then = _read_request(stored.parent)
    try:
        kept = resolve({**options, **cell_request(cell, config)}) if given_then is not None else config
    except ValueError:  # what the grid sets contradicts the stored run (another dataset, its image size): differs
        kept = config
    changed = differing_options(before, kept, ignore=RESUMABLE_CHANGES)
    now, then = config.options(), before.options()
    changed += [f"{key} ({then[key]!r} → {now[key]!r})" for key in (given_then or {})
                if key not in cell.options and key in now and then.get(key) != now[key] and _used(key, config)]
    changed.sort(key=lambda change: change.split(" ", 1)[0] not in cell.options)
    if changed:
        raise ValueError(
            f"grid cell {cell.name}: {stored.parent} holds a run with other options ({', '.join(changed[:3])}"
            f"{', ...' if len(changed) > 3 else ''}); give this recipe another --out, or delete that one."
        )
    return kept


def _used(key: str, config: Config) -> bool:
    """Whether option ``key`` does anything in ``config``'s run (``USED_BY``): an option an earlier release's grid
    gave a cell that does not use it (the split of an e2e cell) is no difference between two of its runs."""
    return key not in USED_BY or USED_BY[key][0](config)


def cell_request(cell: Cell, config: Config) -> dict[str, Any]:
    """What a cell asks of its run: the options the grid gives it, and its directory."""
    return {**cell.options, "out": config.run.out}


def _read_request(path: Path) -> dict[str, Any] | None:
    """The options the grid gave the cell in ``path`` (``CELL_REQUEST``), or None where it has no record."""
    try:
        record = json.loads((path / CELL_REQUEST).read_text())
    except (OSError, ValueError):
        return None
    return record.get("options") if isinstance(record, dict) and isinstance(record.get("options"), dict) else None


def _write_request(run: RunDir, cell: Cell) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    (run.path / CELL_REQUEST).write_text(json.dumps({"options": cell.options}, indent=1, default=str) + "\n")


def varying_options(configs: list[Config]) -> list[str]:
    """The options, beyond a row's own (``ROW_OPTIONS``, seed, out), whose resolved value differs between
    cells (a method's decoder, λ, reconstruction...): the rows carry them, so that what sets cells apart is
    in accuracy.csv and .json."""
    options = [config.options() for config in configs]
    return [key for key in options[0] if key not in (*ROW_OPTIONS, "seed", "out")
            and len({repr(o[key] if _used(key, config) else None) for o, config in zip(options, configs)}) > 1]


def run_accuracy(
    grid: AccuracyGrid,
    out: Path | str,
    *,
    log: Log | None = print,
    command: str | None = None,
    train: bool = True,
    shard: tuple[int, int] = (1, 1),
) -> dict:
    """Train (or resume, or skip) every cell into ``out/cells/``; write the outputs (module docstring) and
    return ``{"meta": ..., "rows": [...]}``.

    Several processes or machines can share one grid: ``shard=(i, n)`` takes cells i, i + n, i + 2n, ...
    (1-based) of the grid's order and writes no table; ``train=False`` trains nothing — the finished cells are
    read, the others are rows of status ``not run`` — to write the one table once the shards are done.
    A Ctrl-C stops the grid with a line that says what is kept and that the same command resumes it."""
    out = Path(out)
    index, count = shard
    if count > 1:  # shards share the grid (each cell has its own lock) and write no table
        return _run_cells(grid, out, log=log, command=command, train=train, shard=shard)
    with RunDir(out).lock():  # one process writes the table: a second grid into this --out is refused up front
        return _run_cells(grid, out, log=log, command=command, train=train, shard=shard)


def _run_cells(grid: AccuracyGrid, out: Path, *, log: Log | None, command: str | None, train: bool,
               shard: tuple[int, int]) -> dict:
    index, count = shard
    every = resolve_cells(grid, out)
    varying = varying_options([config for _, config in every])
    cells = every[index - 1 :: count]
    if train:
        check_threads(cells)
    rows = []
    say = log or (lambda line: None)
    with Progress(len(cells), "accuracy grid", unit="cell") as progress:  # a bar on a terminal; a line per cell
        for i, (cell, config) in enumerate(cells, 1):
            start = time.perf_counter()
            try:
                row = _row(cell, config, varying, train)
            except KeyboardInterrupt as err:  # fit's message names `locallearn train --resume`; the grid's command
                raise interrupt.Interrupted(_stopped(cell, err, command)) from None  # is the one to rerun
            rows.append(row)
            say(f"[{i}/{len(cells)}] {cell.name}: " + (
                f"test error {row['test_error']:.2f}%, trained in {row['train_time_s']:.0f} s" if row["status"] == "ok"
                else f"{row['status']}: {row['reason']}") + f" ({time.perf_counter() - start:.0f} s in this command)")
            progress.update(1)
    meta = environment(grid, command, rows)
    if count == 1:  # a shard leaves the table to the --collect pass: shards would write the same files at once
        write_accuracy(out, rows, meta)
    return {"meta": meta, "rows": rows}


def check_threads(cells: list[tuple[Cell, Config]]) -> None:
    """Refuse to resume a cell on other torch threads than its epochs so far trained on: float sums, and so its
    numbers and times, depend on them, and a cell of two thread counts is comparable with no other (a grid
    resumed with another --threads). A finished cell, or one without a finished epoch, is never refused."""
    now = torch.get_num_threads()
    for cell, config in cells:
        run = RunDir(config.run.out)
        if run.finished or not run.file(METRICS).is_file():
            continue
        epochs = run.read_metrics()
        if not epochs:
            continue
        threads = epochs[-1].get("torch_threads") or run_threads(run, epochs)  # the latest (config.yaml's before)
        if isinstance(threads, int) and threads != now:
            raise ValueError(
                f"grid cell {cell.name}: its epoch {epochs[-1].get('epoch', len(epochs))} trained on {threads} torch "
                f"thread{'s' if threads != 1 else ''} and this command runs {now} (float sums, and so "
                f"the cell's numbers and times, depend on them); resume the grid with --threads {threads}, or give it "
                f"another --out."
            )


def _row(cell: Cell, config: Config, varying: list[str], train: bool) -> dict[str, Any]:
    """A cell's row: its resolved options, and its results once trained (here, unless ``train`` is False)."""
    run = RunDir(config.run.out)
    options = config.options()
    shown = (*ROW_OPTIONS, *varying, "seed", *(("split",) if config.net.num_modules > 1 and "split" not in varying else ()))
    row = {"cell": cell.name, **{k: options[k] if _used(k, config) else None for k in shown}, "run_dir": str(run.path),
           "status": "ok", "reason": None}
    if not (train or run.finished):
        row.update(status="not run", reason="not finished; run the grid without --collect to train it")
    else:
        try:
            if not run.finished:
                if not run.file(CONFIG).is_file():  # a new cell: what the grid gave it, for its reruns
                    _write_request(run, cell)
                fit(config, resume=True, requested=cell_request(cell, config), log=_cell_log(run))
            row.update(_result(run))
        except Exception as err:  # a failing cell is reported in its row; the grid goes on
            row.update(status="failed", reason=" ".join(str(err).split())[:300] or type(err).__name__)
    epochs = run.read_metrics() if run.file(METRICS).is_file() else []
    return {**row, **{key: row.get(key) for key in _PROVENANCE}, "torch_threads": run_threads(run, epochs)}


def _stopped(cell: Cell, err: KeyboardInterrupt, command: str | None) -> str:
    """The grid's Ctrl-C line: what the cell kept (``fit``'s message without its hint, which names the cell's
    own command) and the grid's own command, which continues the grid."""
    kept = getattr(err, "kept", None) or "interrupted"
    again = f"rerun `{command}`" if command else "rerun the same grid into the same out"
    return (f"grid cell {cell.name}: {kept}; {again} to resume the grid (finished cells are skipped, the others "
            f"resumed).")


def _cell_log(run: RunDir) -> Log:
    """A cell's own log: its lines go to ``RUN/train.log``, not to the grid's output."""
    run.path.mkdir(parents=True, exist_ok=True)
    path = run.file(LOG)

    def log(line: str) -> None:
        with open(path, "a") as f:
            f.write(line + "\n")

    return log


def _result(run: RunDir) -> dict[str, Any]:
    summary = run.read_summary()
    return {
        "test_error": 100 * (1 - summary["test_acc"]),
        "best_test_error_selected_on_test": 100 * (1 - summary["best_test_acc"]),
        "best_epoch": summary["best_epoch"],
        "epochs": summary["epochs"],
        "train_time_s": summary["train_time_s"],
        "total_time_s": summary["total_time_s"],
        "images_per_s": summary["images_per_s"],
        "peak_memory_mb": summary["peak_memory_mb"],
        "peak_memory_kind": summary["peak_memory_kind"],
        "parameters": summary["parameters"],
        "cuts": summary.get("net", {}).get("cuts"),  # where the split (auto: computed per network) cut it
        # where and with what it trained: the process that finished it (torch threads: each epoch's, ``_row``);
        # a run from before summary.json named its device: CUDA where its peak memory is CUDA's
        "device": summary.get("device") or ("cuda" if summary["peak_memory_kind"] == "cuda_allocated" else "cpu"),
        "torch": summary.get("versions", {}).get("torch"),
        "git_revision": summary.get("versions", {}).get("git"),
    }


# a row's record of where and with what its cell trained (None where the cell has not recorded it)
_PROVENANCE = ("device", "torch_threads", "torch", "git_revision")


def environment(grid: AccuracyGrid, command: str | None, rows: list[dict] = ()) -> dict[str, Any]:
    """The grid, the cells' device, torch threads, torch and revision (the value where every cell that recorded
    it agrees, else None; ``cells`` counts each value), and this process's date, command and platform."""
    from locallearn.bench.runner import RunOptions
    from locallearn.bench.runner import environment as machine

    meta = machine(RunOptions(), command)
    for key in ("options", "cuda_device", "torch_threads", "torch", "git_revision"):  # this process's, not the cells'
        meta.pop(key, None)
    meta["grid"] = {
        "models": list(grid.models), "methods": list(grid.methods), "num_modules": list(grid.num_modules),
        "contexts": list(grid.contexts) if grid.contexts else None,
        "local_losses": list(grid.local_losses) if grid.local_losses else None,
        "seeds": list(grid.seeds), "recipe": dict(grid.recipe),
    }
    counts = {key: Counter(r[key] for r in rows if r.get(key) is not None) for key in _PROVENANCE}
    for key, values in counts.items():
        meta[key] = next(iter(values)) if len(values) == 1 else None
    meta["cells"] = {key: {str(v): n for v, n in values.items()} for key, values in counts.items()}
    return meta


def cells_header(meta: dict) -> str:
    """The markdown header of a grid: its command and the process that wrote the table. Where and with what the
    cells trained (device, threads, CPU, software: each cell's own records) is the report's header below it
    (``training.report.provenance_lines``), as it is of any report of runs."""
    lines = [
        f"- command: `{meta['command'].strip()}`" if meta.get("command") else None,
        f"- table written: {meta.get('date')}, {meta.get('platform')} ({meta.get('cpu_count')} CPU cores"
        f"{'; ' + meta['cpu'] if meta.get('cpu') else ''}), "
        f"Python {meta.get('python')}, locallearn {meta.get('locallearn')}",
    ]
    return "\n".join(line for line in lines if line) + "\n"


def cuts_section(rows: list[dict]) -> str | None:
    """Where each finished local configuration was cut (the seeds of one share its cuts), so that a K column
    compares what it says: a computed split (``auto``, ``balanced`` without a table) balances each method's
    own network, heads and encoders included, so two methods at one K may be cut at other places."""
    seen: dict[tuple, tuple[str, str]] = {}
    for r in rows:
        if r["status"] == "ok" and r["num_modules"] > 1 and r.get("cuts") is not None:
            label = " ".join(str(r[k]) for k in ("method", "context", "local_loss", "aux_head")
                             if r.get(k) and not (k == "context" and r[k] == "R0"))
            cuts = " ".join(f"({','.join(map(str, c))})" if isinstance(c, list) else str(c) for c in r["cuts"])
            seen.setdefault((r["model"], r["num_modules"], label), (str(r.get("split")), cuts))
    if not seen:
        return None
    lines = ["### Where each configuration was cut\n", "| model | K | method | split | cuts |",
             "|---|---:|---|---|---|"]
    lines += [f"| {model} | {k} | {label} | {split} | {cuts} |" for (model, k, label), (split, cuts) in seen.items()]
    differ = sorted({(model, k) for (model, k, _), (_, cuts) in seen.items()
                     if len({c for (m2, k2, _), (_, c) in seen.items() if (m2, k2) == (model, k)}) > 1})
    if differ:
        where = ", ".join(f"{model} K = {k}" for model, k in differ)
        lines.append(f"\nThe methods are cut at different places at {where}: a computed split balances each method's "
                     "own network (its heads and context encoders included); give --split uniform, or a table's "
                     "split where the model has one, to cut every method alike.")
    return "\n".join(lines) + "\n"


def write_accuracy(out: Path, rows: list[dict], meta: dict) -> dict[str, Path]:
    """accuracy.json, .csv, .md and .png, and accuracy_curves.png (test error against epoch, each module's head)
    in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"accuracy.{ext}" for ext in ("json", "csv", "md", "png")}
    paths["curves"] = out / "accuracy_curves.png"
    paths["json"].write_text(json.dumps({"kind": "accuracy", "meta": meta, "rows": rows}, indent=1) + "\n")
    write_csv(paths["csv"], rows)
    done = [Path(r["run_dir"]) for r in rows if r["status"] == "ok"]
    parts = ["## Test error against K\n", cells_header(meta)]
    if done:
        report = write_report(done, out=out / "report")
        paths["png"].write_bytes(report.plot_path.read_bytes())
        paths["curves"].write_bytes(report.curves_path.read_bytes())
        parts.append(report.markdown.replace("## ", "### ").replace("](report.png)", "](accuracy.png)")
                     .replace("](curves.png)", "](accuracy_curves.png)"))
    cuts = cuts_section(rows)
    if cuts:
        parts.append(cuts)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        parts.append("### Cells that did not finish\n\n" + "\n".join(f"- {r['cell']}: {r['reason']}" for r in failed) + "\n")
    paths["md"].write_text("\n".join(parts))
    return paths
