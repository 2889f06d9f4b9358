"""Benchmark outputs: JSON (everything), CSV (one row per configuration), a markdown report (tables and
targets, what the README shows) and a PNG plot (memory or time against K, one line per method)."""

from __future__ import annotations

import csv
import json
import math
import textwrap
from pathlib import Path

from locallearn.methods import METHODS

MIB = 2**20


def write_results(
    out_dir: Path | str,
    kind: str,
    rows: list[dict],
    meta: dict,
    *,
    name: str | None = None,
    targets: list[dict] | None = None,
    sections: tuple[str, ...] = (),
) -> dict[str, Path]:
    """``{name}.json``, ``.csv``, ``.md`` and ``.png`` in ``out_dir`` (``name`` defaults to ``kind``,
    "memory" or "speed"); returns the paths. ``targets``: what a caller checked the rows against (rows of
    ``targets_table``; the project's own are in ``benchmarks/targets.py``), ``sections``: more markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{name or kind}.{ext}" for ext in ("json", "csv", "md", "png")}
    record = dict(kind=kind, meta=meta, **({"targets": targets} if targets is not None else {}), rows=rows)
    paths["json"].write_text(json.dumps(record, indent=1) + "\n")
    write_csv(paths["csv"], rows)
    paths["md"].write_text(markdown(kind, rows, meta, targets, sections))
    plot(paths["png"], **{kind: rows}, meta=meta)
    return paths


def write_csv(path: Path, rows: list[dict]) -> None:
    names = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(value):
    if isinstance(value, list):
        return " ".join(f"({v[0]},{v[1]})" if isinstance(v, list) else str(v) for v in value)
    return "" if value is None else value


# --- markdown ----------------------------------------------------------------------------------------
def markdown(
    kind: str, rows: list[dict], meta: dict, targets: list[dict] | None = None, sections: tuple[str, ...] = ()
) -> str:
    title = "Peak activation memory" if kind == "memory" else "Step time"
    parts = [f"## {title}\n", meta_lines(meta), _memory_table(rows) if kind == "memory" else _speed_table(rows)]
    parts.append(targets_table(targets or []))
    parts += list(sections)
    return "\n".join(p for p in parts if p) + "\n"


def meta_lines(meta: dict) -> str:
    if not meta:
        return ""
    threads = meta.get("torch_threads")
    named = f"{meta['cpu']}; " if meta.get("cpu") else ""  # provenance.cpu_name (not recorded before it existed)
    cpu = f"CPU ({named}{meta.get('cpu_count')} cores, {threads} torch thread{'' if threads == 1 else 's'})"
    device = meta.get("cuda_device") or cpu
    lines = [
        f"- command: `{meta['command'].strip()}`" if meta.get("command") else None,
        f"- machine: {device}; {meta.get('platform')}",
        f"- software: torch {meta.get('torch')}, Python {meta.get('python')}, locallearn {meta.get('locallearn')}"
        f" (revision {meta.get('git_revision')})",
        f"- date: {meta.get('date')}",
    ]
    return "\n".join(line for line in lines if line) + "\n"


def fmt(value, spec: str, none: str = "–") -> str:
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _method(row: dict) -> str:
    """The method, with FeatRecon's feature decoder and the auxiliary head where the grid varies them
    (``featrecon (conv, 4c1f head)``), and ``compiled`` for a compiled network."""
    detail = [row["feature_decoder"]] if row.get("feature_decoder") else []
    detail += [f"{row['aux_head']} head"] if row.get("aux_head") else []
    return row["method"] + (f" ({', '.join(detail)})" if detail else "") + (" compiled" if row.get("compiled") else "")


def _varies_context(row: dict) -> bool:
    """Whether the row's method supplies context, so its context mode tells rows apart."""
    return METHODS.get(row["method"]).varies_context


def _cells(row: dict) -> list[str]:
    return [row["model"], _method(row), str(row["num_modules"]), row["split"] or "–",
            row["context"] if _varies_context(row) else "–", str(row["batch_size"])]


def _status(row: dict) -> str:
    return "ok" if row["status"] == "ok" else f"{row['status']}: {row['reason']}"


def _memory_table(rows: list[dict]) -> str:
    gpu = any(r.get("peak_allocated_bytes") for r in rows)
    head = ["model", "method", "K", "split", "context", "batch", "peak activations MiB", "per sample MiB",
            "× below e2e", "peak module"]
    head += (["GPU peak GB", "GPU ÷ e2e"] if gpu else []) + ["status"]
    lines = [row_md(head), row_md(["---"] * len(head))]
    for row in rows:
        ok = row["status"] == "ok"
        cells = _cells(row) + [
            fmt(row["peak_activation_bytes"] / MIB if ok else None, ".2f"),
            fmt(row["peak_activation_bytes_per_sample"] / MIB if ok else None, ".3f"),
            fmt(row["activation_reduction"], ".2f"),
            fmt(row["peak_module"], "d"),
        ]
        if gpu:
            cells += [fmt(row["peak_allocated_bytes"] / 1e9 if row.get("peak_allocated_bytes") else None, ".2f"),
                      fmt(row["allocated_ratio"], ".2f")]
        lines.append(row_md(cells + [_status(row)]))
    return "\n".join(lines) + "\n"


def _speed_table(rows: list[dict]) -> str:
    head = ["model", "method", "K", "split", "context", "batch", "MACs/image (inference)", "MACs × e2e",
            "training FLOPs × e2e", "median step s", "× e2e", "time per FLOP × e2e", "paired ratio: median [IQR]",
            "paired min–max", "status"]
    lines = [row_md(head), row_md(["---"] * len(head))]
    for row in rows:
        paired = "–"
        if row["time_ratio_paired"] is not None:
            paired = f"{row['time_ratio_paired']:.2f} [{row['time_ratio_q25']:.2f}–{row['time_ratio_q75']:.2f}]"
        span = "–"
        if row["time_ratio_min"] is not None:
            span = f"{row['time_ratio_min']:.2f}–{row['time_ratio_max']:.2f}"
        macs = row.get("inference_macs")
        cells = _cells(row) + [fmt(macs / 1e6 if macs else None, ".1f", "–") + (" M" if macs else ""),
                               fmt(row.get("macs_ratio"), ".2f"), fmt(row.get("flops_ratio"), ".2f"),
                               fmt(row["step_time_s"], ".3f"), fmt(row["time_ratio"], ".2f"),
                               fmt(row.get("time_per_flop_ratio"), ".2f"), paired, span]
        cells.append(_status(row))
        lines.append(row_md(cells))
    return "\n".join(lines) + "\n"


def targets_table(targets: list[dict], heading: str = "### Targets\n") -> str:
    if not targets:
        return ""
    lines = [heading, row_md(["target", "where", "measured", "required", "status", "note"]),
             row_md(["---"] * 6)]
    for t in targets:
        required = f"{t['op']} {t['threshold']:g}" if t["op"] and t["threshold"] is not None else "–"
        status = f"**{t['status']}**" if t["status"] == "missed" else t["status"]
        # three significant digits: a ratio of 0.641 must not read as a threshold of 0.64
        cells = [t["target"], t["where"] or "–", fmt(t["measured"], ".3g"), required, status, t["note"]]
        lines.append(row_md(cells))
    return "\n".join(lines) + "\n"


def row_md(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


# --- plot --------------------------------------------------------------------------------------------
def plot(path: Path | str, *, memory: list[dict] | None = None, speed: list[dict] | None = None,
         meta: dict | None = None) -> None:
    """Memory (MiB per sample) and/or time (× e2e) against K, one line per method/context/split, one
    column of panels per model; single-module methods (e2e, checkpoint) as horizontal lines, their value
    written beside them. ``meta`` (``write_results``'): the machine, threads and torch, in the figure's title,
    as a step time means nothing without them."""
    figure(memory=memory, speed=speed, meta=meta).savefig(path, dpi=110, bbox_inches="tight")


def figure(*, memory: list[dict] | None = None, speed: list[dict] | None = None, meta: dict | None = None):
    """``plot``'s figure."""
    from matplotlib.figure import Figure  # the object API renders with Agg: no display, no global state

    panels = [(rows, label, fn) for rows, label, fn in (
        (memory, "peak activations, MiB / sample", lambda r: r["peak_activation_bytes_per_sample"] / MIB),
        (speed, "step time ÷ e2e", lambda r: r["time_ratio"]),
    ) if rows]
    models = list(dict.fromkeys(r["model"] for rows, _, _ in panels for r in rows))
    # constrained layout keeps each panel's legend (under it) and title in the figure
    fig = Figure(figsize=(6.5 * max(1, len(models)), 5 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), max(1, len(models)), squeeze=False)
    for p, (rows, ylabel, value) in enumerate(panels):
        for m, model in enumerate(models):
            ax, own = axes[p][m], [r for r in rows if r["model"] == model]
            if not any(r["status"] == "ok" for r in own):
                ax.axis("off")  # this benchmark did not run this model
                continue
            _plot_panel(ax, own, value)
            if p == 0 and memory:  # K = 16 differs by fractions of a MiB where e2e holds several
                _log_axis(ax, [value(r) for r in own if r["status"] == "ok" and value(r) is not None])
            ax.set_title(f"{model}, batch {', '.join(sorted({str(r['batch_size']) for r in own}, key=int))}")
            ax.set_ylabel(ylabel)
    machine = _machine(meta)
    if machine:
        fig.suptitle(textwrap.fill(f"measured on {machine}", 105 * max(1, len(models))), fontsize="small")
    return fig


def _machine(meta: dict | None) -> str | None:
    """Where the rows were measured, for the plot's title: the GPU, or the CPU with its cores and torch threads
    (a step time's ratios differ between CPUs and thread counts); None without ``meta``."""
    if not meta:
        return None
    threads = meta.get("torch_threads")
    cpu = f"CPU {meta['cpu']}" if meta.get("cpu") else "CPU"  # provenance.cpu_name (not recorded before it existed)
    where = meta.get("cuda_device") or f"{cpu}, {meta.get('cpu_count')} cores"
    return f"{where}, {threads} torch thread{'' if threads == 1 else 's'}; torch {meta.get('torch')}"


def _log_axis(ax, values: list[float]) -> None:
    """A log y axis whose labelled ticks enclose every value (the default's stopped below e2e's line, whose
    value could not be read): 1–9, or 1, 2, 5, or 1 times the powers of ten, by how many decades it spans."""
    from matplotlib.ticker import NullFormatter

    ax.set_yscale("log")
    values = [v for v in values if v > 0]  # (a log axis has no place for nothing)
    if not values:
        return
    lo, hi = min(values), max(values)
    decades = math.log10(hi / lo)
    steps = range(1, 10) if decades <= 0.7 else (1, 2, 5) if decades <= 2.5 else (1,)
    ticks = [m * 10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in steps]
    bottom = max(t for t in ticks if t <= lo * (1 + 1e-9))
    top = min(t for t in ticks if t >= hi * (1 - 1e-9))
    shown = [t for t in ticks if bottom <= t <= top]
    ax.set_yticks(shown, [f"{t:g}" for t in shown])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(bottom / 1.03, top * 1.03)


def _plot_panel(ax, rows: list[dict], value) -> None:
    ok = [r for r in rows if r["status"] == "ok" and value(r) is not None]
    lines: dict[str, list[tuple[int, float]]] = {}
    eager_twin: dict[str, str] = {}  # a compiled line → the label of the same configuration eager
    for r in ok:
        label = _method(r) + (f" {r['context']}" if _varies_context(r) else "")
        label += f" ({r['split']})" if r["split"] else ""
        if len({x["batch_size"] for x in rows}) > 1:
            label += f" b{r['batch_size']}"
        lines.setdefault(label, []).append((r["num_modules"], value(r)))
        if r.get("compiled"):
            eager_twin[label] = label.replace(" compiled", "", 1)
    ks = sorted({r["num_modules"] for r in ok if r["num_modules"] > 1}) or [1, 2]
    colors: dict[str, str] = {}
    for label, points in sorted(lines.items(), key=lambda item: item[0] in eager_twin):  # eager lines first
        points.sort()
        compiled = label in eager_twin
        if all(k == 1 for k, _ in points):
            color = "black" if label.startswith("e2e") else "grey"
            ax.axhline(points[0][1], linestyle=":" if compiled else "--", linewidth=1.2, color=color, label=label)
            ax.annotate(f"{points[0][1]:.3g}", (1, points[0][1]), xycoords=("axes fraction", "data"), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=7, color=color)
        else:  # a compiled line: its eager twin's colour, dashed, open markers
            (line,) = ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=label,
                              color=colors.get(eager_twin.get(label, "")), linestyle="--" if compiled else "-",
                              markerfacecolor="none" if compiled else None)
            colors[label] = line.get_color()
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("K (local modules)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)  # under the axes
