"""``locallearn report``: several run directories → a markdown table (method × K: final test error, with
memory and time per run) and a PNG plot of test error against K, one line per method.

The result of a run is its **final-epoch** test error (docs/methods.md §7); the best epoch, selected on the
test set, appears only in a labelled column. An unfinished run is reported at its last finished epoch and
marked.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locallearn.training.config import read_options
from locallearn.training.rundir import CONFIG, RunDir


@dataclass
class RunResult:
    path: Path
    config: dict[str, Any]
    test_error: float  # % at the last finished epoch
    best_error: float  # % at the best epoch (selected on the test set)
    epochs_done: int
    finished: bool
    peak_memory_mb: float
    peak_memory_kind: str
    train_time_s: float
    images_per_s: float

    @property
    def num_modules(self) -> int:
        return self.config["num_modules"]

    def method_label(self, *, with_setting: bool) -> str:
        """e.g. ``contsup R1E ce``, ``infopro contrast rec balanced``, ``e2e``."""
        c = self.config
        parts = [c["method"]]
        if c["num_modules"] > 1:
            if c["context"] != "R0":
                parts.append(c["context"])
            parts.append(c["local_loss"])
            if c["reconstruct"]:
                parts.append("rec")
        if c["split"] != "paper" and c["num_modules"] > 1:
            parts.append(c["split"] if isinstance(c["split"], str) else "custom split")
        label = " ".join(parts)
        return f"{c['model']} {c['dataset']}: {label}" if with_setting else label


def load_run(path: Path) -> RunResult:
    """What the report needs from one run directory (summary.json, or metrics.jsonl while unfinished)."""
    run = RunDir(Path(path))
    if not run.file(CONFIG).is_file():
        raise ValueError(f"report: {run.path} holds no run (no {CONFIG}).")
    history = run.read_metrics()
    if not history:
        raise ValueError(f"report: {run.path} has no finished epoch yet (metrics.jsonl is empty).")
    config = read_options(run.file(CONFIG))
    last = history[-1]
    best = max(r["test_acc"] for r in history)
    train_time = sum(r["train_time_s"] for r in history)
    return RunResult(
        path=run.path,
        config=config,
        test_error=100 * (1 - last["test_acc"]),
        best_error=100 * (1 - best),
        epochs_done=last["epoch"],
        finished=run.finished,
        peak_memory_mb=max(r["peak_memory_mb"] for r in history),
        peak_memory_kind=last["peak_memory_kind"],
        train_time_s=train_time,
        images_per_s=sum(r["images_per_s"] * r["train_time_s"] for r in history) / train_time,
    )


def markdown_report(runs: list[RunResult], *, plot: str | None = None) -> str:
    with_setting = len({(r.config["model"], r.config["dataset"]) for r in runs}) > 1
    by_label: dict[str, dict[int, list[RunResult]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by_label[r.method_label(with_setting=with_setting)][r.num_modules].append(r)
    ks = sorted({r.num_modules for r in runs})
    setting = "" if with_setting else f" — {runs[0].config['model']}, {runs[0].config['dataset']}"
    lines = [f"## Test error (%) at the final epoch{setting}", ""]
    lines.append("| method | " + " | ".join(f"K={k}" for k in ks) + " |")
    lines.append("|---|" + "---:|" * len(ks))
    for label in sorted(by_label):
        cells = []
        for k in ks:
            group = by_label[label].get(k, [])
            if not group:
                cells.append("")
                continue
            cell = f"{statistics.mean(r.test_error for r in group):.2f}"
            cell += f" (n={len(group)})" if len(group) > 1 else ""
            cell += "*" if not all(r.finished for r in group) else ""
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", ""]
    lines.append(
        "| run | method | K | epochs | test error % | best test error %¹ | peak memory MB² | train time | images/s |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(runs, key=lambda r: (r.method_label(with_setting=with_setting), r.num_modules, str(r.path))):
        epochs = f"{r.epochs_done}/{r.config['epochs']}" + ("" if r.finished else "*")
        lines.append(
            f"| {r.path} | {r.method_label(with_setting=with_setting)} | {r.num_modules} | {epochs} | "
            f"{r.test_error:.2f} | {r.best_error:.2f} | {r.peak_memory_mb:.1f} ({r.peak_memory_kind}) | "
            f"{_duration(r.train_time_s)} | {r.images_per_s:.0f} |"
        )
    lines += [
        "",
        "¹ best epoch selected on the test set: for reference only; the result is the final-epoch error.  ",
        "² `cuda_allocated`: torch.cuda.max_memory_allocated; `saved_tensors`: bytes autograd saved for "
        "backward in one training step (CPU).  ",
        "\\* unfinished run: reported at its last finished epoch.",
    ]
    if plot:
        lines += ["", f"![test error against K]({plot})"]
    return "\n".join(lines) + "\n"


def plot_error_vs_k(runs: list[RunResult], path: Path) -> None:
    """Test error against K (log₂ axis), one line per method; methods with K = 1 only (e2e) are drawn
    as horizontal reference lines."""
    from matplotlib.figure import Figure  # the object API renders with Agg: no display, no global state

    with_setting = len({(r.config["model"], r.config["dataset"]) for r in runs}) > 1
    points: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        points[r.method_label(with_setting=with_setting)][r.num_modules].append(r.test_error)
    ks = sorted({r.num_modules for r in runs})
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for label in sorted(points):
        xs = sorted(points[label])
        ys = [statistics.mean(points[label][k]) for k in xs]
        if xs == [1] and len(ks) > 1:
            ax.axhline(ys[0], linestyle="--", linewidth=1, color="0.4", label=f"{label} (K=1)")
        else:
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("K (local modules)")
    ax.set_ylabel("test error (%), final epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def write_report(run_dirs: list[Path], *, out: Path | None = None) -> tuple[str, Path | None, Path]:
    """Markdown (returned, and written to ``out/report.md`` when ``out`` is given) and ``report.png``
    (in ``out``, else the current directory)."""
    if not run_dirs:
        raise ValueError("report: give at least one run directory.")
    runs = [load_run(Path(p)) for p in run_dirs]
    folder = Path(out) if out is not None else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / "report.png"
    plot_error_vs_k(runs, png)
    markdown = markdown_report(runs, plot=png.name if out is not None else str(png))
    md_path = None
    if out is not None:
        md_path = folder / "report.md"
        md_path.write_text(markdown)
    return markdown, md_path, png


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min" if hours else (f"{m} min {s:02d} s" if m else f"{s} s")
