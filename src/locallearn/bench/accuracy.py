"""``locallearn bench accuracy``: test error of every method against K, trained for real on one recipe.

A grid of (model × method × K × context × local loss × seed) cells, every cell a normal run directory
trained by ``training.fit`` with the same recipe and budget (the options given for the grid), so that

- an interrupted grid resumes: a finished cell is skipped, an unfinished one resumed (``fit(resume=True)``);
  a cell directory holding a run of other options (the grid rerun with another recipe) is refused up front;
- every cell can be re-evaluated, reported or resumed on its own (``locallearn eval``, ``report``, ``train``).

Expansion rules (as the memory and speed grids'): ``e2e`` is always included, at K = 1, as the reference;
single-module methods run at K = 1 only; local methods at every K ≥ 2 of the grid; context modes multiply
the methods that supply context (``Method.varies_context``), local losses every local method when given
(otherwise each method keeps its own). Every cell's config is resolved before anything trains, so an
unknown value is refused up front; a cell that fails while training is reported in its row (status
``failed`` and the reason) and the grid goes on. Cells run seed by seed. ``--shard I/N`` trains every N-th
cell (several processes on one grid), ``--collect`` trains nothing and writes the table from the cells
already finished.

Outputs in ``--out``: ``accuracy.json`` (the grid, the machine, and one row per cell: final-epoch test
error, best epoch labelled as selected on the test set, time, images/s, peak memory, parameters),
``accuracy.csv``, ``accuracy.md`` (the papers' layout from ``training.report``: methods as rows, K as
columns, mean ± std over seeds, e2e as the reference) and ``accuracy.png`` (test error against K with
error bars).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from locallearn.bench.report import meta_lines, write_csv
from locallearn.methods import METHODS
from locallearn.training.config import RESUMABLE_CHANGES, Config, differing_options, read_options, resolve
from locallearn.training.fit import fit
from locallearn.training.progress import Progress
from locallearn.training.report import write_report
from locallearn.training.rundir import CONFIG, LOG, RunDir
from locallearn.validate import Int

Log = Callable[[str], None]
REFERENCE = "e2e"


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its name (its directory under ``cells/``) and its options."""

    name: str
    options: dict[str, Any] = field(hash=False)

    @property
    def fields(self) -> dict[str, Any]:
        keys = ("model", "method", "num_modules", "context", "local_loss", "seed")
        return {k: self.options.get(k) for k in keys}


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

    def __post_init__(self) -> None:
        for name in ("models", "methods", "num_modules", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"{name}: give at least one value.")
        for method in self.methods:
            METHODS.get(method)
        for k in self.num_modules:
            Int(1)("num_modules", k)
        for seed in self.seeds:
            Int(0)("seeds", seed)
        grid_axes = {"model", "method", "num_modules", "context", "local_loss", "seed", "out"}
        clash = sorted(grid_axes & set(self.recipe))
        if clash:
            raise ValueError(f"recipe: {clash[0]} is an axis of the grid, not part of the recipe; use its grid option.")

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


def _cell_name(options: dict[str, Any]) -> str:
    parts = [options["model"], options["method"]]
    parts += [options[k] for k in ("context", "local_loss") if options.get(k)]
    return "_".join([*parts, f"k{options['num_modules']}", f"s{options['seed']}"])


def resolve_cells(grid: AccuracyGrid, out: Path) -> list[tuple[Cell, Config]]:
    """Every cell's config, resolved before anything trains (an unknown value fails here, naming its cell)."""
    resolved = []
    for cell in grid.cells():
        try:
            config = resolve({**cell.options, "out": str(out / "cells" / cell.name)})
        except ValueError as err:
            raise ValueError(f"grid cell {cell.name}: {err}") from None
        resolved.append((cell, config))
    for cell, config in resolved:  # before anything trains: a cell of another recipe is never taken as this one's
        check_cell(cell, config)
    return resolved


def check_cell(cell: Cell, config: Config) -> None:
    """Refuse a cell directory that already holds a run of other options (a grid rerun into the same --out
    with another recipe: its finished cells would be reported as results of the new command). The options
    the grid sets come first in the message, before those they imply (a dataset's image size, ...)."""
    stored = RunDir(config.run.out).file(CONFIG)
    if not stored.is_file():
        return
    changed = differing_options(resolve(read_options(stored)), config, ignore=RESUMABLE_CHANGES)
    changed.sort(key=lambda change: change.split(" ", 1)[0] not in cell.options)
    if changed:
        raise ValueError(
            f"grid cell {cell.name}: {stored.parent} holds a run with other options ({', '.join(changed[:3])}"
            f"{', ...' if len(changed) > 3 else ''}); give this recipe another --out, or delete that one."
        )


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
    read, the others are rows of status ``not run`` — to write the one table once the shards are done."""
    out = Path(out)
    index, count = shard
    cells = resolve_cells(grid, out)[index - 1 :: count]
    rows = []
    say = log or (lambda line: None)
    with Progress(len(cells), "accuracy grid", unit="cell") as progress:  # a bar on a terminal; a line per cell
        for i, (cell, config) in enumerate(cells, 1):
            run = RunDir(config.run.out)
            start = time.perf_counter()
            row = {"cell": cell.name, **cell.fields, "run_dir": str(run.path), "status": "ok", "reason": None}
            if not (train or run.finished):
                row.update(status="not run", reason="not finished; run the grid without --collect to train it")
            else:
                try:
                    if not run.finished:
                        fit(config, resume=True, log=_cell_log(run))
                    row.update(_result(run))
                except Exception as err:  # a failing cell is reported in its row; the grid goes on
                    row.update(status="failed", reason=" ".join(str(err).split())[:300] or type(err).__name__)
            rows.append(row)
            say(f"[{i}/{len(cells)}] {cell.name}: " + (
                f"test error {row['test_error']:.2f}%, trained in {row['total_time_s']:.0f} s" if row["status"] == "ok"
                else f"{row['status']}: {row['reason']}") + f" ({time.perf_counter() - start:.0f} s in this command)")
            progress.update(1)
    meta = environment(grid, command)
    if count == 1:  # a shard leaves the table to the --collect pass: shards would write the same files at once
        write_accuracy(out, rows, meta)
    return {"meta": meta, "rows": rows}


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
    }


def environment(grid: AccuracyGrid, command: str | None) -> dict[str, Any]:
    from locallearn.bench.runner import RunOptions
    from locallearn.bench.runner import environment as machine

    meta = machine(RunOptions(), command)
    meta.pop("options", None)
    meta["grid"] = {
        "models": list(grid.models), "methods": list(grid.methods), "num_modules": list(grid.num_modules),
        "contexts": list(grid.contexts) if grid.contexts else None,
        "local_losses": list(grid.local_losses) if grid.local_losses else None,
        "seeds": list(grid.seeds), "recipe": dict(grid.recipe),
    }
    meta["torch_threads"] = torch.get_num_threads()
    return meta


def write_accuracy(out: Path, rows: list[dict], meta: dict) -> dict[str, Path]:
    """accuracy.json, .csv, .md and .png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"accuracy.{ext}" for ext in ("json", "csv", "md", "png")}
    paths["json"].write_text(json.dumps({"kind": "accuracy", "meta": meta, "rows": rows}, indent=1) + "\n")
    write_csv(paths["csv"], rows)
    done = [Path(r["run_dir"]) for r in rows if r["status"] == "ok"]
    parts = ["## Test error against K\n", meta_lines(meta)]
    if done:
        report = write_report(done, out=out / "report")
        paths["png"].write_bytes(report.plot_path.read_bytes())
        parts.append(report.markdown.replace("## ", "### ").replace("](report.png)", "](accuracy.png)"))
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        parts.append("### Cells that did not finish\n\n" + "\n".join(f"- {r['cell']}: {r['reason']}" for r in failed) + "\n")
    paths["md"].write_text("\n".join(parts))
    return paths
