"""``locallearn report``: several run directories → a markdown table (method × K: final test error,
mean ± std over seeds, with memory and time per run, under a header of where and with what the runs trained:
device, torch threads, torch and revision), a PNG plot of test error against K, and one of each
configuration's test error against epoch beside its modules' head accuracies against depth (curves.png).

The result of a run is its **final-epoch** test error (docs/methods.md §7); the best epoch, selected on the
test set, appears only in a labelled column. An unfinished run is reported at its last finished epoch and
marked.

Runs are averaged only when they are the same experiment: their options (the flat options of config.yaml)
are equal except ``seed`` and the options that do not change what is computed (``RESUMABLE_CHANGES``:
where a run lives and runs; an image folder's ``data_dir`` is its dataset, so it is compared), and they
ran on the same number of CPU threads (``torch_threads``: float sums, and so results, depend on it) and, on an
image folder, were trained and tested on the same images (``train_images`` and ``test_images``, then
``train_data`` and ``test_data``, their fingerprints: a folder may grow, or an image be replaced; a run resumed
on other images has the fingerprints of each part, in order). Each such
*group* is one cell of the table, rows by method and columns by K as in the papers' tables. Groups that would share a cell but differ in something else (epochs, lr,
...) get rows of their own, labelled with the difference, and a warning names it. Rows of several models or
datasets are prefixed by theirs, so only groups of one model and dataset are told apart; an option a single
module does not use (its split; training.config's ``USED_BY``) neither tells e2e runs apart nor labels them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import statistics
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from locallearn.data.imagefolder import IMAGEFOLDER
from locallearn.provenance import cpu_name
from locallearn.training.config import OPTIONS, PYTHON_DATA, RESUMABLE_CHANGES, SECTIONS, USED_BY, read_mapping, read_run_options
from locallearn.training.classes import save_figure
from locallearn.training.rundir import CONFIG, METRICS, SUMMARY, RunDir, refuse_file, write_output
from locallearn.training.runner import resume_command

DEFAULT_OUT = Path("runs") / "report"  # runs/ is ignored by git: a report never dirties a checkout
# Options that may differ inside a group: the seed, and what does not change the computation.
NOT_COMPARED = ("seed", *RESUMABLE_CHANGES)
# Options another option sets (the dataset's classes and normalisation, the model's head and λ table): named
# in a label or warning only when their source is not, so "dataset=cifar100" is not followed by its statistics.
IMPLIED_BY = {
    "num_classes": ("dataset",),
    "in_channels": ("dataset",),
    "image_mean": ("dataset",),
    "image_std": ("dataset",),
    "image_size": ("dataset", "model"),
    "aux_head": ("model",),
    "activation_segments": ("model",),
    "lambdas": ("model", "dataset"),
    "lambda_source": ("model", "dataset", "lambdas"),
    "test_images": ("dataset", "data_dir", "limit_test", "test_fraction"),
    "test_data": ("dataset", "data_dir", "limit_test", "test_fraction", "test_images"),
    "train_images": ("dataset", "data_dir", "limit_train", "test_fraction"),
    "train_data": ("dataset", "data_dir", "limit_train", "test_fraction", "train_images"),
}


@dataclass
class RunResult:
    path: Path
    config: dict[str, Any]  # the flat options of config.yaml
    test_error: float  # % at the last finished epoch
    best_error: float  # % at the best epoch (selected on the test set)
    epochs_done: int
    finished: bool
    peak_memory_mb: float
    peak_memory_kind: str
    train_time_s: float
    images_per_s: float
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl: one record per finished epoch
    # where and with what it trained (``recorded``): device, torch and git_revision; None where not recorded
    provenance: dict[str, str | None] = field(default_factory=dict)

    @property
    def num_modules(self) -> int:
        return self.config["num_modules"]

    def method_label(self) -> str:
        """e.g. ``contsup R1E ce``, ``infopro contrast rec balanced``, ``featrecon ce conv``, ``e2e``."""
        c = self.config
        parts = [c["method"]]
        if c["num_modules"] > 1:
            if c["context"] != "R0":
                parts.append(c["context"])
            parts.append(c["local_loss"])
            if c["reconstruct"]:
                parts.append("rec")
            if c.get("feature_decoder"):
                parts.append(c["feature_decoder"])
            if c.get("aux_head") not in (None, _own_head(c)):  # e.g. greedy with ContSup's heads
                parts.append(f"{c['aux_head']} head")
            if c["split"] != "paper":
                parts.append(c["split"] if isinstance(c["split"], str) else "custom split")
        return " ".join(parts)


@dataclass
class Group:
    """Runs of one configuration that differ at most in their seed (and where they ran)."""

    runs: list[RunResult]
    label: str = ""  # its row in the table: the method, and what tells it apart from its neighbours

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].config

    @property
    def num_modules(self) -> int:
        return self.runs[0].num_modules

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def mean(self) -> float:
        return statistics.mean(r.test_error for r in self.runs)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n − 1) over seeds; None for a single run."""
        return statistics.stdev(r.test_error for r in self.runs) if self.n > 1 else None

    @property
    def finished(self) -> bool:
        return all(r.finished for r in self.runs)

    def cell(self) -> str:
        """``10.00 ± 1.41 (n=2)``; ``17.00 (n=1)`` for one run; ``*`` when a run is unfinished."""
        text = f"{self.mean:.2f}" + (f" ± {self.std:.2f}" if self.std is not None else "") + f" (n={self.n})"
        return text + ("" if self.finished else "*")

    def error_by_epoch(self) -> list[tuple[int, float]]:
        """(epoch, test error % averaged over the runs) for every epoch all the group's runs finished."""
        last = min(r.epochs_done for r in self.runs)
        return [(e, statistics.mean(100 * (1 - r.history[e - 1]["test_acc"]) for r in self.runs))
                for e in range(1, last + 1)]

    def module_accuracy(self) -> list[float] | None:
        """The training accuracy (%) of each module's auxiliary head at the last epoch all runs finished,
        averaged over the runs; None where a head gives no logits (a contrastive loss) or K = 1."""
        last = min(r.epochs_done for r in self.runs)
        keys = [f"train_acc/{k}" for k in range(self.num_modules)]
        records = [r.history[last - 1] for r in self.runs]
        if self.num_modules == 1 or not all(key in record for record in records for key in keys):
            return None
        return [statistics.mean(100 * record[key] for record in records) for key in keys]


def _own_head(config: dict[str, Any]) -> str | None:
    """The auxiliary head a run's method gives its model by default (None where that is not known here: a
    method or model this process does not have; a factory's family is not imported to find out)."""
    from locallearn.methods import METHODS
    from locallearn.models import MODELS, default_aux_head, model_family

    try:
        registered = config["model"] in MODELS.names()
        head = METHODS.get(config["method"]).preset(model_family(config["model"]) if registered else "cnn")["aux_head"]
        return default_aux_head(config["model"]) if head == "auto" and registered else head
    except (ValueError, KeyError):
        return None


@dataclass
class Table:
    """The grouped runs of a report, with their rows, and the warnings about what was kept apart."""

    groups: list[Group]
    warnings: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[RunResult]:
        return [r for g in self.groups for r in g.runs]

    @property
    def ks(self) -> list[int]:
        return sorted({g.num_modules for g in self.groups})

    @property
    def rows(self) -> dict[str, dict[int, Group]]:
        """Row label → K → group: the reference rows (K = 1: e2e, checkpointing) first, then by label."""
        rows: dict[str, dict[int, Group]] = defaultdict(dict)
        for g in self.groups:
            rows[g.label][g.num_modules] = g
        return {label: rows[label] for label in sorted(rows, key=lambda label: (1 not in rows[label], _natural(label)))}

    @property
    def setting(self) -> str:
        """The model(s) and dataset(s), e.g. ``resnet32, cifar10``."""
        models = list(dict.fromkeys(r.config["model"] for r in self.runs))
        datasets = list(dict.fromkeys(r.config["dataset"] for r in self.runs))
        return f"{' + '.join(models)}, {' + '.join(datasets)}"


# how a run was trained, beside what it trains (the net's options): data, optimisation, run and processes (the
# dataset excepted: rows of several datasets are labelled with theirs)
_RECIPE = [f.name for section in ("data", "optim", "run", "processes") for f in dataclasses.fields(SECTIONS[section])
           if f.name not in (*NOT_COMPARED, "dataset")]
_RECIPE += ["torch_threads", *("train_images", "train_data", "test_images", "test_data")]  # not options, but they
# change the result: compared like ones
# the options a report reads from every run's config.yaml (all of them written since the first release)


class LeftOut(ValueError):
    """A run stopped before its first epoch ended, or a directory that holds no run: nothing to report
    (``write_report`` leaves it out, saying so, where other directories hold runs)."""


class Damaged(ValueError):
    """A run whose files cannot be read or disagree (a summary.json edited by hand, a damaged metrics.jsonl):
    alone, an error; beside reportable runs, ``write_report`` leaves it out and says why, so that one bad run
    among many does not cost the report of the others (``Report.damaged``: the command's exit status says it)."""

    @property
    def left_out(self) -> str:
        """The error as the report's warning: what is wrong, the fix, and that this report left the run out."""
        return f"{str(self).rstrip('.').removesuffix(', or leave the run out')}; left out of this report"


def load_run(path: Path) -> RunResult:
    """What the report needs from one run directory (summary.json, or metrics.jsonl while unfinished)."""
    run = RunDir(Path(path))
    if run.path.exists() and not run.path.is_dir():  # `report runs/*` over a folder that also holds notes
        raise LeftOut(f"report: {run.path} is a file, not a run directory; left out")
    if not run.path.is_dir():
        raise ValueError(f"report: {run.path} does not exist; give run directories.")
    if not run.file(CONFIG).is_file():
        raise LeftOut(run.no_config("report: ") + "; left out")
    try:
        history = run.read_metrics()
    except ValueError as err:  # a line damaged or edited: its own message names it and the fix
        raise Damaged(f"report: {err}") from None
    if not history and run.finished:
        raise Damaged(f"report: {run.path} is finished but has no epochs in {METRICS} (missing or emptied); "
                         f"restore it, or leave the run out.")
    if not history:
        raise LeftOut(f"report: {run.path} has no finished epoch yet; left out")
    try:
        config = read_run_options(run.file(CONFIG))
    except ValueError as err:
        raise Damaged(f"report: {str(err).rstrip('.')}, or leave the run out.") from None
    summary = _check_summary(run, config, history[-1]) if run.finished else None
    if config["dataset"] == IMAGEFOLDER:  # a folder of one's own is named by where it is: two are two datasets
        config["dataset"] = f"{IMAGEFOLDER} {config.get('data_dir')}"
        # and by the images it had: a folder that grew, or an image replaced, between two runs trained or tested
        # them on other images (a fixed dataset's follow from its options; earlier releases did not record them:
        # None); the training images of every epoch, a run resumed on a changed folder having trained on both
        for key in _SOME_RUNS:
            config[key] = _images_of(history, key)
    config["torch_threads"] = run_threads(run, history)
    last = history[-1]
    best = max(r["test_acc"] for r in history)
    train_time = sum(r["train_time_s"] for r in history)
    return RunResult(
        path=run.path,
        config=config,
        test_error=100 * (1 - last["test_acc"]),
        best_error=100 * (1 - best),
        epochs_done=last["epoch"],
        finished=run.finished and last["epoch"] == config["epochs"],  # not a summary older than the metrics
        peak_memory_mb=max(r["peak_memory_mb"] for r in history),
        peak_memory_kind=last["peak_memory_kind"],
        train_time_s=train_time,
        images_per_s=sum(r["images_per_s"] * r["train_time_s"] for r in history) / train_time,
        history=history,
        provenance=recorded(run, summary, history),
    )


def recorded(run: RunDir, summary: dict[str, Any] | None, history: list[dict[str, Any]]) -> dict[str, str | None]:
    """Where and with what ``run`` trained, from its own records: summary.json's device and versions (the
    process that finished it), else config.yaml's header (the one that started it: ``locallearn 0.1.0, git
    7918594, torch 2.13.0+cpu, ...``) and, for the device, its peak memory's kind (CUDA's, or the CPU's saved
    tensors). The CPU is not among them: a run does not record it."""
    versions = (summary or {}).get("versions") or {}
    torch, git = versions.get("torch"), versions.get("git")
    if torch is None or git is None:
        header = run.file(CONFIG).read_text(encoding="utf-8", errors="replace").splitlines()[:3]
        found = next((m for line in header if (m := re.match(r"# locallearn \S+, git (\S+), torch (\S+),", line))),
                     None)
        if found:
            git, torch = git or found[1], torch or found[2]
    device = (summary or {}).get("device") or ("cuda" if history[-1].get("peak_memory_kind") == "cuda_allocated"
                                               else "cpu")
    return {"device": device, "cpu": (summary or {}).get("cpu"), "torch": torch, "git_revision": git}


def _check_summary(run: RunDir, config: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """A finished run's summary.json against its metrics.jsonl and config.yaml, each of which only checks itself:
    the same last epoch and accuracy, and the options it trained with (summaries of earlier releases do not
    record them) where a resume may not change them and config.yaml gives them (one written by an earlier
    release lacks the options added since; the core ones are checked by ``read_run_options``). Returns it."""
    python = config.get("dataset") == PYTHON_DATA  # continued and read back from Python, not by the command line
    again = resume_command(run, python=python)
    try:
        summary = run.read_summary() or {}
    except ValueError as err:
        raise Damaged(f"report: {err}; `{again}` writes it again from the "
                         f"checkpoint, or leave the run out.") from None
    # Which file is not the run's own, the checkpoint tells: a resume writes metrics.jsonl again from its history
    # (even of a finished run) and, once summary.json is removed, summary.json too; eval checks config.yaml
    # against it. (A summary of more epochs than metrics.jsonl holds is one a resume that rewound the run left,
    # killed between its two writes, or a line removed: either way the run is shown unfinished at its last
    # logged epoch, marked so.)
    rewrite = (f"`{again}` writes {METRICS} again from the checkpoint, and {SUMMARY} too once it is removed (if it "
               f"is another run's), or leave the run out")
    if summary.get("epochs", last["epoch"]) < last["epoch"] or (
            summary.get("epochs") == last["epoch"] and summary.get("test_acc", last["test_acc"]) != last["test_acc"]):
        raise Damaged(f"report: {run.path}: {SUMMARY} (epoch {summary.get('epochs')}, test accuracy "
                      f"{summary.get('test_acc')}) and {METRICS} (epoch {last['epoch']}, {last['test_acc']}) "
                      f"disagree; {rewrite}.")
    trained = summary.get("options") or {}  # an option config.yaml lacks is one added since the run started
    differing = [k for k in trained if k in config and k not in RESUMABLE_CHANGES and _show(trained[k]) != _show(config[k])]
    if differing:
        changes = ", ".join(f"{k} ({_show(trained[k])} → {_show(config.get(k))})" for k in differing)
        raise Damaged(f"report: {run.path}: {CONFIG} and {SUMMARY} disagree on the options the run trained with "
                      f"({SUMMARY} → {CONFIG}: {changes}), so one of them is another run's; "
                      f"`{_reader(run, python)}` refuses a {CONFIG} other than the checkpoint's: restore that one, "
                      f"else remove {SUMMARY} and `{again}` writes it again, or leave the run out.")
    return summary


def _reader(run: RunDir, python: bool) -> str:
    """The command (or call, for a run from Python) that reads ``run``'s network back, checking config.yaml."""
    return f"load_net({str(run.path)!r}, model=...)" if python else f"locallearn eval {shlex.quote(str(run.path))}"


def run_threads(run: RunDir, history: list[dict[str, Any]]) -> int | str | None:
    """The CPU threads ``run`` trained on: each epoch's, from ``history`` (its metrics; a resume may change
    them), as ``1`` or ``1/2`` where they changed; config.yaml's where epochs do not record them (earlier
    releases); None where neither does."""
    threads = sorted({r["torch_threads"] for r in history if "torch_threads" in r})
    if not threads:
        threads = [read_mapping(run.file(CONFIG)).get("torch_threads") if run.file(CONFIG).is_file() else None]
    return threads[0] if len(threads) == 1 else "/".join(map(str, threads))


def group_runs(runs: list[RunResult]) -> Table:
    """Runs → groups of one configuration (all options equal but ``NOT_COMPARED``), each with its row label.

    A group's row is its method label (``RunResult.method_label``), prefixed by model and dataset when the
    report holds several. Groups of one method label, model, dataset and K that differ in other options are
    kept apart: every such option (but those a K = 1 group does not use, ``_unused``) is named in the labels
    of that method (``contsup R1E ce, epochs=1``) and one warning per method label names the options and their
    values."""
    for key in _SOME_RUNS:
        if any(r.config.get(key, 0) is None for r in runs):  # a run of an earlier release on a folder:
            for r in runs:  # its figure is unknown, so no run's is compared (nor shown as "None")
                r.config.pop(key, None)
    by_key: dict[tuple[str, bool], list[RunResult]] = {}
    for r in runs:  # an unfinished run is never averaged with finished ones: it stopped at another epoch
        by_key.setdefault((_compared(r.config), r.finished), []).append(r)
    warnings = []
    for key, members in by_key.items():  # a second run of a configuration and seed is a repeat, not a seed
        by_seed: dict[Any, RunResult] = {}
        for r in sorted(members, key=lambda r: str(r.path)):
            first = by_seed.setdefault(r.config["seed"], r)
            if first is not r:
                warnings.append(f"report: {r.path} repeats {first.path} (the same options and seed {r.config['seed']}); "
                                f"left out, so that mean ± std are over distinct seeds")
        by_key[key] = [r for r in members if by_seed[r.config["seed"]] is r]
    groups = [Group(members) for members in by_key.values()]
    with_setting = len({(g.config["model"], g.config["dataset"]) for g in groups}) > 1
    by_method: dict[str, list[Group]] = defaultdict(list)
    done = {(_setting(g), g.runs[0].method_label(), g.num_modules) for g in groups if g.finished}
    for g in groups:  # unfinished runs whose configuration also finished get a row of their own
        label = g.runs[0].method_label()
        unfinished = not g.finished and (_setting(g), label, g.num_modules) in done
        by_method[label + (" (unfinished)" if unfinished else "")].append(g)
    named: dict[int, set[str]] = {}  # id of a group → the options its row label names
    for method, members in by_method.items():
        # a cell: the groups one label would put in one place of the table. Rows of several models or datasets
        # are prefixed by theirs, so only groups of one model, dataset and K are told apart, by the options
        # that their module count uses (a split at K = 1 does nothing: e2e of two models differ in it)
        cells: dict[tuple, list[Group]] = defaultdict(list)
        for g in members:
            cells[(*_setting(g), g.num_modules)].append(g)
        differing = [o for o in _option_order(members)
                     if any(_differ(c, o) and o not in _unused(c[0].config) for c in cells.values() if len(c) > 1)]
        shown = [o for o in differing if not set(IMPLIED_BY.get(o, ())) & set(differing)]
        if _collide(members, shown):  # a hidden option told two groups apart: name every option
            shown = differing
        for g in members:
            named[id(g)] = set(shown) - _unused(g.config)
            prefix = f"{g.config['model']} {g.config['dataset']}: " if with_setting else ""
            suffix = [f"{o}={_show(g.config.get(o))}" for o in shown if o in named[id(g)]]
            g.label = prefix + ", ".join([method, *suffix])
        if shown:
            values = ", ".join(_values(members, o) for o in shown)
            warnings.append(f"report: {method} runs differ in {values} beside their method and K; shown as separate rows")
    # rows trained on different recipes where the labels do not say it: the rows whose labels do not name an
    # option must share one value of it, one that a labelled row names where there are such rows
    recipe = [o for o in _option_order(groups) if o in _RECIPE and _differ(groups, o) and _unsaid(groups, o, named)]
    if recipe:
        values = ", ".join(_values(groups, o) for o in recipe)
        warnings.append(f"report: the rows were not trained alike: they differ in {values}; compare them with care")
    return Table(groups, warnings)


def described(counts: dict[Any, int], show=str) -> str:
    """One value where all agree, else each with its number: ``1`` or ``1 (6 runs), 2 (1 run)`` (None: not
    recorded, by a release from before it was)."""
    def named(value: Any) -> str:
        return "not recorded" if value is None else show(value)

    if len(counts) == 1:
        return named(next(iter(counts)))
    return ", ".join(f"{named(v)} ({n} run{'' if n == 1 else 's'})" for v, n in counts.items())


def device_label(name: str) -> str:
    """A run's device as summary.json names it, for a header: ``CPU``, ``CUDA: NVIDIA H200``."""
    kind, _, model = name.partition(":")
    return kind.upper() + (f":{model}" if model else "")


def provenance_lines(runs: list[RunResult]) -> list[str]:
    """Where and with what the runs trained (their own records), so that train time and images/s can be read:
    the device, torch threads, torch and revision; and, as runs do not record their CPU, the one this report is
    written on, said as such."""
    def counts(values) -> dict[Any, int]:
        return dict(Counter(values).most_common())

    devices = counts(r.provenance.get("device") for r in runs)
    cpus = counts(r.provenance.get("cpu") for r in runs)
    return [
        f"- trained on: {described(devices, device_label)}; torch threads: "
        f"{described(counts(r.config.get('torch_threads') for r in runs))}",
        f"- software: torch {described(counts(r.provenance.get('torch') for r in runs))}, locallearn revision "
        f"{described(counts(r.provenance.get('git_revision') for r in runs))}",
        f"- CPU: {described(cpus)}" if set(cpus) != {None} else  # summary.json records it since it names it
        f"- CPU: not recorded by these runs; this report was written on {cpu_name()}, {os.cpu_count()} cores",
    ]


def markdown_report(table: Table, *, plot: str | None = None, curves: str | None = None) -> str:
    ks = table.ks
    lines = [f"## Test error (%) at the final epoch — {table.setting}", "", *provenance_lines(table.runs), ""]
    lines.append("| method | " + " | ".join(f"K={k}" for k in ks) + " |")
    lines.append("|---|" + "---:|" * len(ks))
    for label, cells in table.rows.items():
        lines.append(f"| {label} | " + " | ".join(cells[k].cell() if k in cells else "" for k in ks) + " |")
    lines += ["", "## Runs", ""]
    lines.append(
        "| run | method | K | seed | epochs | test error % | test images³ | best test error %¹ | peak memory MiB² "
        "| train time | images/s |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for g in sorted(table.groups, key=lambda g: (_natural(g.label), g.num_modules)):
        for r in sorted(g.runs, key=lambda r: (r.config["seed"], str(r.path))):
            epochs = f"{r.epochs_done}/{r.config['epochs']}" + ("" if r.finished else "*")
            lines.append(
                f"| {r.path} | {g.label} | {r.num_modules} | {r.config['seed']} | {epochs} | "
                f"{r.test_error:.2f} | {r.history[-1].get('test_images', '–')} | {r.best_error:.2f} | "
                f"{r.peak_memory_mb:.1f} ({r.peak_memory_kind}) | "
                f"{_duration(r.train_time_s)} | {r.images_per_s:.0f} |"
            )
    lines += [
        "",
        (
            "Cells: mean ± sample standard deviation (n − 1) over the runs of one configuration and thread count, "
            f"which differ only in their seed (and {', '.join(RESUMABLE_CHANGES)}); n=1: a single run, no deviation.  "
        ),
        "¹ best epoch selected on the test set: for reference only; the result is the final-epoch error.  ",
        (
            "² `cuda_allocated`: torch.cuda.max_memory_allocated; `saved_tensors`: the peak bytes autograd holds "
            "for backward in one training step (CPU), with the tensors held between modules and the activations "
            "recomputed under checkpointing (as `bench memory`).  "
        ),
        "³ the test images of the epoch reported (with few, one image moves the error by 100 / that many points; "
        "–: not recorded by the release that ran it).",
    ]
    if not all(g.finished for g in table.groups):
        lines[-1] += "  "
        lines.append("\\* unfinished run: reported at its last finished epoch.")
    if table.warnings:
        lines += ["", *(f"> {w}" for w in table.warnings)]
    if plot:
        lines += ["", f"![test error against K]({plot})"]
    if curves:
        lines += ["", f"![test error against epoch; each module's head]({curves})"]
    return "\n".join(lines) + "\n"


MARKERS = "osD^vPX*h<>p"


def row_styles(labels: list[str]) -> dict[str, tuple[Any, str]]:
    """Each row's colour and marker, distinct for every row: matplotlib's ten colours up to ten rows, tab20's
    twenty up to twenty, then the marker tells apart the rows that share a colour."""
    if len(labels) <= 10:
        return {label: (f"C{i}", "o") for i, label in enumerate(labels)}
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    return {label: (palette(i % 20), MARKERS[(i // 20) % len(MARKERS)]) for i, label in enumerate(labels)}


def error_figure(table: Table):
    """Test error against K (log₂ axis), one line per row with ± std error bars where n > 1; rows with
    K = 1 only (e2e) are drawn as horizontal reference lines with a ± std band."""
    from matplotlib.figure import Figure  # the object API renders with Agg: no display, no global state

    ks = table.ks
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    styles = row_styles(list(table.rows))
    for label, cells in table.rows.items():
        color, marker = styles[label]  # one colour per row, reference lines included
        groups = [cells[k] for k in sorted(cells)]
        if list(cells) == [1] and len(ks) > 1:
            g = groups[0]
            ax.axhline(g.mean, color=color, linestyle="--", linewidth=1, label=f"{label} (K=1, n={g.n})")
            if g.std is not None:
                ax.axhspan(g.mean - g.std, g.mean + g.std, color=color, alpha=0.15, linewidth=0)
            continue
        ax.plot([g.num_modules for g in groups], [g.mean for g in groups], color=color, marker=marker, label=label)
        spread = [g for g in groups if g.std is not None]
        if spread:
            ax.errorbar([g.num_modules for g in spread], [g.mean for g in spread], yerr=[g.std for g in spread],
                        fmt="none", ecolor=color, capsize=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_title(_wrap(f"Test error against K — {table.setting}", 60))
    ax.set_xlabel("K (local modules)")
    ax.set_ylabel("test error (%), final epoch\n(mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    _legend_below(fig, ax.get_legend_handles_labels(), width=LEGEND_WIDTH)
    return fig


# the characters of a legend's line across a 7-inch figure, in its type; longer labels are wrapped
LEGEND_WIDTH = 100


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)) or text


def _legend_below(fig, handles_labels, *, width: int, columns: int = 1) -> None:
    """The figure's legend under its axes, labels wrapped at ``width`` characters, the figure taller by what
    it takes (x-small type: about 0.17 inch a line), so that the axes keep their height: inside the axes a
    legend of many rows (labels naming what tells them apart) covered the points."""
    handles, labels = handles_labels
    if not handles:
        return
    labels = [_wrap(label, width) for label in labels]
    per_column = -(-len(labels) // columns)
    lines = max(sum(label.count("\n") + 1 for label in labels[c * per_column:(c + 1) * per_column])
                for c in range(columns))
    fig.set_figheight(fig.get_figheight() + 0.3 + 0.17 * lines)
    fig.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize="x-small", frameon=False)


def curves_figure(table: Table):
    """Left: test error against epoch, one line per group (mean over its seeds). Right: each module's
    auxiliary-head training accuracy at the last epoch, against the module's place in the network (module
    k of K at k/K), one line per local group whose heads classify: where greedy learning stalls, the later
    modules stop improving on the earlier ones (ContSup's motivation, docs/methods.md §5)."""
    from matplotlib.figure import Figure  # the object API renders with Agg: no display, no global state
    from matplotlib.ticker import MaxNLocator

    columns = 1 if len(table.groups) <= 6 else 2
    width = 2 * LEGEND_WIDTH // columns - 10
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    errors, heads = fig.subplots(1, 2)
    colours = {label: colour for label, (colour, _) in row_styles(list(table.rows)).items()}
    styles = ["-", "--", ":", "-."]
    heads_drawn = False
    for g in sorted(table.groups, key=lambda g: (_natural(g.label), g.num_modules)):
        style = styles[table.ks.index(g.num_modules) % len(styles)]
        name = f"{g.label}, K={g.num_modules} (n={g.n})"
        epochs, error = zip(*g.error_by_epoch())
        errors.plot(epochs, error, color=colours[g.label], linestyle=style, marker="." if len(epochs) < 30 else None,
                    label=name)
        accuracy = g.module_accuracy()
        if accuracy is not None:
            depth = [(k + 1) / g.num_modules for k in range(g.num_modules)]
            heads.plot(depth, accuracy, color=colours[g.label], linestyle=style, marker="o", label=name)
            heads_drawn = True
    errors.set_title(_wrap(f"Test error against epoch — {table.setting}", 60), fontsize="medium")
    errors.set_xlabel("epoch")
    errors.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    errors.set_xlim(0.5, max(g.runs[0].epochs_done for g in table.groups) + 0.5)  # one epoch: ticks at 1, not 0.99
    errors.set_ylabel("test error (%), mean over seeds")
    errors.grid(True, alpha=0.3)
    heads.set_title("Each module's head at the last epoch", fontsize="medium")
    heads.set_xlabel("depth of the module's output (module k of K at k/K)")
    heads.set_ylabel("training accuracy of its head (%),\nmean over seeds")
    heads.grid(True, alpha=0.3)
    if not heads_drawn:
        heads.text(0.5, 0.5, "no local run whose heads classify", ha="center", va="center", transform=heads.transAxes)
    # one legend for both panels, under them: every group has its line on the left, the same on the right
    _legend_below(fig, errors.get_legend_handles_labels(), width=width, columns=columns)
    return fig


@dataclass
class Report:
    markdown: str
    markdown_path: Path
    plot_path: Path  # test error against K
    curves_path: Path  # test error against epoch; each module's head
    warnings: list[str]
    damaged: list[str] = field(default_factory=list)  # the warnings of runs left out as damaged (also in warnings)


def write_report(run_dirs: list[Path], *, out: Path | str = DEFAULT_OUT) -> Report:
    """``out/report.md`` (also returned), ``out/report.png`` and ``out/curves.png`` (default ``runs/report/``,
    which git ignores).
    The folder ``out`` itself is skipped when it is among ``run_dirs`` (``locallearn report runs/*``). A damaged
    run beside reportable ones is left out with a warning (``Report.damaged``); alone, it is an error."""
    folder = Path(out)
    found, deeper = [], []
    for p in run_dirs:
        if not _is_report_folder(Path(p), folder):
            runs_here, note = _runs_in(Path(p))
            found += runs_here
            deeper += [note] if note else []
    if not found:
        raise ValueError("report: give at least one run directory.")
    runs, skipped, damaged = [], [], []
    for path in found:  # `report runs/*` goes on past a run stopped in its first epoch, or a folder of
        # something else (runs/bench), saying so; and past a damaged run, which the exit status says
        try:
            runs.append(load_run(path))
        except LeftOut as err:
            skipped.append(str(err))
        except Damaged as err:
            damaged.append(err)
    if not runs and damaged:
        raise damaged[0]
    if not runs:
        nothing = (f"{skipped[0]}: no run to report" if len(skipped) == 1 else
                   f"report: none of the {len(skipped)} directories holds a run with a finished epoch")
        raise ValueError("; ".join([nothing, *deeper]) + ".")
    table = group_runs(runs)
    table.warnings[:0] = [err.left_out for err in damaged] + skipped + [f"report: {note}" for note in deeper]
    refuse_file(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png, curves = folder / "report.png", folder / "curves.png"
    save_figure(error_figure(table), png, dpi=120, bbox_inches="tight")  # (nothing drawn is cut off at the edges)
    save_figure(curves_figure(table), curves, dpi=120, bbox_inches="tight")
    markdown = markdown_report(table, plot=png.name, curves=curves.name)
    md_path = folder / "report.md"
    write_output(md_path, markdown.encode("utf-8", "surrogateescape"))  # a folder's name as the file system has it
    return Report(markdown, md_path, png, curves, table.warnings, [err.left_out for err in damaged])


DEEPER = 4  # how many levels below the two searched a folder is looked through for runs left out, to say so


def _runs_in(path: Path) -> tuple[list[Path], str | None]:
    """``path`` where it is a run directory (or not a directory: load_run says what it is); a folder of runs
    (``runs/``, a ``bench accuracy --out`` with its ``cells/``): the run directories one or two levels below,
    and a line naming the runs deeper down (a folder of ``bench accuracy`` outputs: their cells are three
    levels down), which are not reported, with the folders to give instead (None where there are none)."""
    if not path.is_dir() or (path / CONFIG).is_file():
        return [path], None
    found = sorted({c.parent for pattern in (f"*/{CONFIG}", f"*/*/{CONFIG}") for c in path.glob(pattern)})
    deeper = sorted({c.parent for depth in range(3, 3 + DEEPER) for c in path.glob("*/" * depth + CONFIG)
                     if not any(run in c.parents for run in found)})  # (a run's own subfolders are its business)
    note = None
    if deeper:
        folders = list(dict.fromkeys(str(run.parents[1]) for run in deeper))
        named = " ".join(folders[:3]) + (f" ... ({len(folders)} folders)" if len(folders) > 3 else "")
        note = (f"{len(deeper)} run director{'y' if len(deeper) == 1 else 'ies'} more than two levels below "
                f"{path} left out (a folder's runs are those one or two levels down); to report "
                f"{'it' if len(deeper) == 1 else 'them'}, give {'the folder' if len(folders) == 1 else 'the folders'}: "
                f"{named}")
    return found or [path], note


def _is_report_folder(path: Path, folder: Path) -> bool:
    return path.is_dir() and folder.is_dir() and path.samefile(folder) and not (path / CONFIG).is_file()


def _compared(config: dict[str, Any]) -> str:
    """A hashable key of the options that decide what a run computes, as the labels show them (``_show``): an
    option that is None and one a config.yaml lacks (an option added since its release, whose default is
    None) are the same, as they are to ``_differ``, so that no two groups can share a label. Options the run
    does not use (``_unused``) are not compared: e2e runs that differ only in their split are seeds of one."""
    unused = _unused(config)
    return json.dumps({k: _show(v) for k, v in config.items()
                       if k not in NOT_COMPARED and k not in unused and v is not None}, sort_keys=True)


def _unused(config: dict[str, Any]) -> set[str]:
    """The options a single-module run does not use: those ``USED_BY`` (training.config) says apply only to
    local modules (its split: one module has no cut), or to what the run does not do (a run of an earlier
    release, which lacks an option a rule reads, keeps that rule's option). Empty for K > 1."""
    if config.get("num_modules") != 1:
        return set()
    flat = SimpleNamespace(**config)  # the rules read config sections; the flat options hold every field
    sections = SimpleNamespace(**{name: flat for name in SECTIONS})
    unused = set()
    for name, (applies, *_) in USED_BY.items():
        try:
            if not applies(sections):
                unused.add(name)
        except AttributeError:  # an option (or derived value) the flat options do not hold: keep it compared
            pass
    return unused


def _setting(group: Group) -> tuple[str, str]:
    """A group's model and dataset: the prefix of its row's label where a report holds several."""
    return group.config["model"], group.config["dataset"]


def _option_order(groups: list[Group]) -> list[str]:
    """Every compared option of ``groups``, in the order of ``locallearn train --help`` (then any other)."""
    names = dict.fromkeys(k for g in groups for k in g.config)
    known = [o for o in OPTIONS if o in names]
    return [o for o in known + sorted(set(names) - set(known)) if o not in NOT_COMPARED]


# recorded for some runs only (an image folder's: a fixed dataset's count follows from its options): compared
# among the runs that have it, not against the others' absence
_SOME_RUNS = ("test_images", "test_data", "train_images", "train_data")


def _images_of(history: list[dict[str, Any]], key: str) -> Any:
    """What a run records of its images under ``key``: the test images of its last epoch (what its result is
    measured on), the training images of all its epochs (their distinct values in order, joined by →); None
    where an epoch does not say (an earlier release)."""
    if key.startswith("test"):
        return history[-1].get(key)
    values = [record.get(key) for record in history]
    if None in values:
        return None
    distinct = list(dict.fromkeys(values))
    return distinct[0] if len(distinct) == 1 else "→".join(map(str, distinct))


def _having(groups: list[Group], option: str) -> list[Group]:
    return [g for g in groups if option not in _SOME_RUNS or option in g.config]


def _differ(groups: list[Group], option: str) -> bool:
    return len({_show(g.config.get(option)) for g in _having(groups, option)}) > 1


def _values(groups: list[Group], option: str) -> str:
    """``option (a vs b)``: its values among ``groups``, for a warning."""
    return f"{option} ({' vs '.join(dict.fromkeys(_show(g.config.get(option)) for g in _having(groups, option)))})"


def _unsaid(groups: list[Group], option: str, named: dict[int, set[str]]) -> bool:
    """Whether rows differ in ``option`` where their labels do not show it (``named``: id → options a label names)."""
    groups = _having(groups, option)
    unlabelled = {_show(g.config.get(option)) for g in groups if option not in named[id(g)]}
    labelled = {_show(g.config.get(option)) for g in groups if option in named[id(g)]}
    return len(unlabelled) > 1 or bool(labelled and unlabelled - labelled)


def _collide(groups: list[Group], shown: list[str]) -> bool:
    """Whether two groups of one model, dataset and K would still get the same label from ``shown``."""
    seen = set()
    for g in groups:
        key = (*_setting(g), g.num_modules, *(_show(g.config.get(o)) for o in shown if o not in _unused(g.config)))
        if key in seen:
            return True
        seen.add(key)
    return False


def _show(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def _natural(label: str) -> tuple:
    """Sort key that orders numbers by value: ``epochs=2`` before ``epochs=10``."""
    return tuple((0, float(p), "") if re.fullmatch(r"\d+(\.\d+)?", p) else (1, 0.0, p) for p in re.split(r"(\d+(?:\.\d+)?)", label))


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min" if hours else (f"{m} min {s:02d} s" if m else f"{s} s")
