"""Run a benchmark grid: memory (one measured step per configuration) or speed (interleaved timed steps).

Each configuration gives one row: its grid fields, ``status`` ("ok", "skipped" with the builder's
``reason``, or "oom"), the measurements, and ratios to ``e2e`` of the same model, batch and image size.
A configuration that cannot be built is skipped, one that runs out of memory is marked "oom"; either
way the grid goes on. Any other error is a bug and propagates.

Memory (``run_memory``): ``warmup`` steps, then one step under ``StepMemoryMeter`` (meter a, exact on
any device) and, on CUDA, one more under ``CudaPeakMeter`` (meter b), kept apart so that meter a's
hooks cannot touch the allocator's figure.

Speed (``run_speed``): every network of a (model, batch, image size) group is built and warmed up, then
``rounds`` rounds each time one step of every configuration, in an order rotated by one each round,
so that a slow spell of a shared machine hits all configurations alike. Reported: the median step time,
``time_ratio`` = median / e2e's median, and the per-round paired ratios (this configuration's step ÷
e2e's step of the same round: median ``time_ratio_paired``, quartiles, min, max), from which a slow
drift of a noisy machine cancels out.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

import locallearn
from locallearn.version import __version__
from locallearn.bench.grid import REFERENCE, BenchConfig, GridSpec
from locallearn.memory import CudaPeakMeter, StepMemoryMeter
from locallearn.net import check_batch
from locallearn.engine import train_step
from locallearn.provenance import cpu_name, git_revision
from locallearn.training.interrupt import Interrupted
from locallearn.training.runner import compile_parts
from locallearn.validate import Int, Optional

Log = Callable[[str], None]
MEMORY_FIELDS = (
    "peak_activation_bytes",
    "peak_activation_bytes_per_sample",
    "hook_seen_bytes",
    "recompute_bytes",
    "peak_module",
    "module_peak_bytes",
    "peak_allocated_bytes",
    "step_allocated_bytes",
    "activation_ratio",
    "activation_reduction",
    "allocated_ratio",
)
SPEED_FIELDS = (
    "step_time_s",
    "step_time_q25_s",
    "step_time_q75_s",
    "time_ratio",
    "time_ratio_paired",
    "time_ratio_q25",
    "time_ratio_q75",
    "time_ratio_min",
    "time_ratio_max",
    "rounds",
    "step_times_s",  # every timed step, round by round: the paired ratios can be recomputed from these
    "inference_macs",
    "train_flops",
    "macs_ratio",
    "flops_ratio",
    "time_per_flop_ratio",
)


@dataclass(frozen=True)
class RunOptions:
    """How a grid runs (not what it contains)."""

    device: str = "cpu"
    warmup: int = 1  # untimed, unmeasured steps before the measured ones
    rounds: int = 7  # speed: timed steps per configuration
    threads: int | None = None  # torch.set_num_threads; None keeps the current setting
    seed: int = 0

    def __post_init__(self) -> None:
        device = str(self.device)
        if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ValueError(f"device: expected cpu, cuda or cuda:N, got {device!r}.")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device: {device} was asked for but CUDA is not available here; use --device cpu.")
        Int(0)("warmup", self.warmup)
        Int(1)("rounds", self.rounds)
        Optional(Int(1))("threads", self.threads)
        Int(0, 2**63 - 1)("seed", self.seed)  # what torch.manual_seed takes, as `locallearn train --seed`

    def apply(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)


@dataclass
class _Case:
    """A built configuration: the network, its optimizer and its fixed batch."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    images: torch.Tensor
    labels: torch.Tensor

    def step(self) -> None:
        train_step(self.net, self.images, self.labels, self.optimizer, checked=False)  # as the trainer runs it


def new_row(config: BenchConfig, options: RunOptions, fields: tuple[str, ...]) -> dict:
    row = config.fields()
    row.update(device=str(options.device), status="ok", reason=None, cuts=None, parameters=None)
    row.update({name: None for name in fields})
    return row


def build_case(config: BenchConfig, options: RunOptions, row: dict) -> _Case:
    """The network, a momentum SGD optimizer and a random batch; fills the row's ``cuts``/``parameters``.
    Raises ``ValueError`` when the configuration cannot be built."""
    device = torch.device(options.device)
    torch.manual_seed(options.seed)
    net = locallearn.build(config.model, config.method, **config.build_options()).to(device)
    check_batch(net, config.batch_size, "give --batch-sizes of 2 or more")
    row["cuts"] = net.describe()["cuts"]
    row["parameters"] = sum(p.numel() for p in net.parameters())
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(options.seed)
    shape = (config.batch_size, net.backbone.in_channels, config.image_size, config.image_size)
    images = torch.randn(shape, generator=gen).to(device)
    labels = torch.randint(0, net.config.num_classes, (config.batch_size,), generator=gen).to(device)
    return _Case(net, optimizer, images, labels)


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError``, a RuntimeError saying so (CPU allocator: "can't allocate memory"),
    or Python's ``MemoryError``."""
    candidates = (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
    oom_types = tuple(t for t in candidates if t is not None)
    message = str(err).lower()
    return (
        isinstance(err, (MemoryError, *oom_types))
        or isinstance(err, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)
    )


def _skip(row: dict, err: ValueError) -> None:
    row["status"], row["reason"] = "skipped", " ".join(str(err).split())


def _oom(row: dict, err: BaseException) -> None:
    lines = str(err).strip().splitlines()
    row["status"], row["reason"] = "oom", (lines[0][:200] if lines else "out of memory")


def _unless_oom(row: dict, fn: Callable):
    """``fn()``, or None with the row marked "oom" if it ran out of memory."""
    try:
        return fn()
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        _oom(row, err)
        return None


def _build_or_skip(config: BenchConfig, options: RunOptions, row: dict) -> _Case | None:
    """The built configuration, or None with the row marked "skipped" (cannot be built) or "oom"."""
    try:
        return _unless_oom(row, lambda: build_case(config, options, row))
    except ValueError as err:  # the builder's reason, e.g. a paper split at a K its table lacks
        _skip(row, err)
        return None


def _free(device: str) -> None:
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


# --- memory ------------------------------------------------------------------------------------------
def measure_memory(case: _Case, options: RunOptions) -> dict:
    """Meter (a) over one step after ``options.warmup`` steps, and meter (b) over another on CUDA."""
    for _ in range(options.warmup):
        case.step()
    case.optimizer.zero_grad(set_to_none=True)  # the measured step starts without gradients, as every step does
    with StepMemoryMeter(case.net, case.images) as meter:
        case.step()
    batch = case.images.shape[0]
    out = dict(
        peak_activation_bytes=meter.peak_bytes,
        peak_activation_bytes_per_sample=meter.peak_bytes / batch,
        hook_seen_bytes=meter.seen_peak_bytes,
        recompute_bytes=meter.recompute_bytes,
        peak_module=meter.peak_module,
        module_peak_bytes=list(meter.module_peaks),
    )
    if case.images.device.type == "cuda":
        case.optimizer.zero_grad(set_to_none=True)
        with CudaPeakMeter(case.images.device) as cuda:
            case.step()
        out.update(peak_allocated_bytes=cuda.peak_bytes, step_allocated_bytes=cuda.step_bytes)
    return out


def _configs(grid: GridSpec | list[BenchConfig]) -> list[BenchConfig]:
    """A grid's configurations, or a list of them (several grids merged), without repeats."""
    return list(dict.fromkeys(grid.expand() if isinstance(grid, GridSpec) else grid))


class Stopped(Interrupted):
    """A Ctrl-C (or a SIGTERM, under ``interrupt.sigterm_raises``) in the middle of a grid: ``rows`` are the
    configurations measured before it, whole
    (a speed group's rows over the rounds every one of its configurations completed), for the caller to write."""

    def __init__(self, rows: list[dict], total: int, cut: tuple[int, int, int] | None = None) -> None:
        self.rows, self.total = rows, total
        self.cut = cut  # a speed group cut short: (its rows kept, the rounds they completed, the rounds asked)
        super().__init__(self.describe())

    def describe(self, how: str = "interrupted") -> str:
        """``interrupted after 4 of 9 configurations, the last 2 timed in 5 of 7 rounds``."""
        text = f"{how} after {len(self.rows)} of {self.total} configurations"
        if self.cut and self.cut[0]:
            kept, done, asked = self.cut
            text += f", the last {kept} timed in {done} of {asked} rounds"
        return text


def run_memory(grid: GridSpec | list[BenchConfig], options: RunOptions, *, log: Log | None = None) -> list[dict]:
    """One row per configuration (``measure_memory``); a Ctrl-C raises `Stopped` with the rows measured."""
    options.apply()
    configs = _configs(grid)
    rows = []
    try:
        for i, config in enumerate(configs, 1):
            row = new_row(config, options, MEMORY_FIELDS)
            case = _build_or_skip(config, options, row)
            if case is not None:
                measured = _unless_oom(row, lambda c=case: measure_memory(c, options))
                row.update(measured or {})
            del case
            _free(options.device)
            rows.append(row)
            if log:
                log(f"[{i}/{len(configs)}] {_describe(config)}: {_memory_summary(row)}")
    except KeyboardInterrupt:
        add_memory_ratios(rows)
        raise Stopped(rows, len(configs)) from None
    add_memory_ratios(rows)
    return rows


def add_memory_ratios(rows: list[dict]) -> None:
    refs = _references(rows)
    for row in rows:
        ref = refs.get(_group(row))
        if row["status"] != "ok" or ref is None:
            continue
        row["activation_ratio"] = row["peak_activation_bytes"] / ref["peak_activation_bytes"]
        row["activation_reduction"] = ref["peak_activation_bytes"] / row["peak_activation_bytes"]
        if row["peak_allocated_bytes"] and ref["peak_allocated_bytes"]:
            row["allocated_ratio"] = row["peak_allocated_bytes"] / ref["peak_allocated_bytes"]


# --- speed -------------------------------------------------------------------------------------------
def _timed_step(case: _Case) -> float:
    cuda = case.images.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(case.images.device)
    start = time.perf_counter()
    case.step()
    if cuda:
        torch.cuda.synchronize(case.images.device)
    return time.perf_counter() - start


def run_speed(grid: GridSpec | list[BenchConfig], options: RunOptions, *, log: Log | None = None) -> list[dict]:
    """One row per configuration, timed in interleaved rounds within its group (model and batch size); a
    Ctrl-C raises `Stopped` with the groups done and the rounds of the current group that every one of its
    configurations completed (none where not one round was)."""
    options.apply()
    rows: list[dict] = []
    groups: dict[tuple, list[BenchConfig]] = {}
    configs = _configs(grid)
    for config in configs:
        groups.setdefault(config.group, []).append(config)
    try:
        for members in groups.values():
            rows += _speed_group(members, options, log)
    except Stopped as err:
        raise Stopped(rows + err.rows, len(configs), err.cut) from None
    except KeyboardInterrupt:
        raise Stopped(rows, len(configs)) from None
    return rows


def _speed_group(configs: list[BenchConfig], options: RunOptions, log: Log | None) -> list[dict]:
    rows = [new_row(c, options, SPEED_FIELDS) for c in configs]
    cases: dict[int, _Case] = {}
    for i, (config, row) in enumerate(zip(configs, rows)):
        case = _build_or_skip(config, options, row)
        if case is not None:
            row.update(_unless_oom(row, lambda c=case: count_arithmetic(c)) or {})
            if config.compiled:
                compile_parts(case.net)  # compiled on the warm-up steps, which are not timed
            if _unless_oom(row, lambda c=case: [c.step() for _ in range(options.warmup)]) is not None:
                cases[i] = case
        del case
        _free(options.device)
    times: dict[int, list[float]] = {i: [] for i in cases}
    completed, stopped = 0, False
    try:
        for r in range(options.rounds):
            order = list(cases)
            order = order[r % len(order) :] + order[: r % len(order)] if order else order
            for i in order:
                seconds = _unless_oom(rows[i], lambda: _timed_step(cases[i]))
                if seconds is None:
                    del cases[i], times[i]
                    _free(options.device)
                else:
                    times[i].append(seconds)
            completed = r + 1
            if log:
                first = configs[0]
                log(f"  round {r + 1}/{options.rounds} of {first.model} batch {first.batch_size}: {len(cases)} running")
    except KeyboardInterrupt:
        stopped = True  # kept: the rows timed in whole rounds (paired), and those that failed before timing
        keep = [i for i in range(len(rows)) if (completed and i in times) or rows[i]["status"] != "ok"]
        times = {keep.index(i): t[:completed] for i, t in times.items() if i in keep}
        rows, configs = [rows[i] for i in keep], [configs[i] for i in keep]
    cases.clear()
    _free(options.device)
    ref = next((i for i, c in enumerate(configs) if c.method == REFERENCE and not c.compiled and i in times), None)
    for i, t in times.items():
        row = rows[i]
        row.update(
            step_time_s=float(np.median(t)),
            step_time_q25_s=float(np.percentile(t, 25)),
            step_time_q75_s=float(np.percentile(t, 75)),
            rounds=len(t),
            step_times_s=[round(x, 6) for x in t],
        )
        if ref is not None:
            paired = np.asarray(t) / np.asarray(times[ref])  # per round: this step ÷ e2e's step of that round
            row.update(
                time_ratio=float(np.median(t) / np.median(times[ref])),
                time_ratio_paired=float(np.median(paired)),
                time_ratio_q25=float(np.percentile(paired, 25)),
                time_ratio_q75=float(np.percentile(paired, 75)),
                time_ratio_min=float(paired.min()),
                time_ratio_max=float(paired.max()),
            )
    add_arithmetic_ratios(rows)
    if log:
        for config, row in zip(configs, rows):
            log(f"{_describe(config)}: {_speed_summary(row)}")
    if stopped:
        raise Stopped(rows, len(rows), (len(times), completed, options.rounds))
    return rows


def add_arithmetic_ratios(rows: list[dict]) -> None:
    """Each timed row's arithmetic against the eager e2e row of its group: ``macs_ratio`` (inference
    multiply-adds), ``flops_ratio`` (a training step's floating-point operations) and
    ``time_per_flop_ratio`` = ``time_ratio`` ÷ ``flops_ratio``: 1 where a configuration's step costs what
    its arithmetic does at e2e's rate, above 1 by the share of time that is not arithmetic (memory traffic
    of normalisation and activations, small kernels, Python). Derived from the measured fields only, so a
    stored run can be re-rendered (``benchmarks/run.py --render-only``)."""
    refs = {_group(r): r for r in rows if r["method"] == REFERENCE and not r.get("compiled") and r["status"] == "ok"}
    for row in rows:
        ref = refs.get(_group(row))
        if row["status"] != "ok" or ref is None or row.get("inference_macs") is None:
            continue
        row["macs_ratio"] = row["inference_macs"] / ref["inference_macs"] if ref["inference_macs"] else None
        row["flops_ratio"] = row["train_flops"] / ref["train_flops"] if ref["train_flops"] else None
        if row["flops_ratio"] and row.get("time_ratio") is not None:
            row["time_per_flop_ratio"] = row["time_ratio"] / row["flops_ratio"]


def count_arithmetic(case: _Case) -> dict:
    """Multiply-adds per image of the inference forward (backbone and context encoders: what the network
    costs to run) and floating-point operations per image of one training step (forward and backward of
    every module, its objective and its encoders), counted by ``torch.utils.flop_counter`` on the case's
    batch; the step's parameters are restored afterwards (it is a counted step, not a trained one)."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = case.images.shape[0]
    state = {k: v.clone() for k, v in case.net.state_dict().items()}
    optimizer_state = case.optimizer.state_dict()
    case.net.eval()
    with FlopCounterMode(display=False) as inference, torch.no_grad():
        case.net(case.images)
    with FlopCounterMode(display=False) as training:
        case.step()
    case.net.load_state_dict(state)
    case.optimizer.load_state_dict(optimizer_state)
    case.optimizer.zero_grad(set_to_none=True)
    return {"inference_macs": inference.get_total_flops() / 2 / batch, "train_flops": training.get_total_flops() / batch}


# --- shared ------------------------------------------------------------------------------------------
def _group(row: dict) -> tuple:
    return (row["model"], row["batch_size"], row["image_size"], row["device"])


def _references(rows: list[dict]) -> dict[tuple, dict]:
    return {_group(r): r for r in rows if r["method"] == REFERENCE and r["status"] == "ok"}


def _describe(config: BenchConfig) -> str:
    return f"{config.model} {config.label} K={config.num_modules} batch {config.batch_size}"


def _memory_summary(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason']}"
    return f"{row['peak_activation_bytes_per_sample'] / 2**20:.3f} MiB/sample (module {row['peak_module']})"


def _speed_summary(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason']}"
    ratio = f", {row['time_ratio']:.2f}× e2e" if row["time_ratio"] is not None else ""
    return f"{row['step_time_s']:.3f} s/step{ratio}"


def environment(options: RunOptions, command: str | None = None) -> dict:
    """The machine and software a run used, recorded with its results."""
    info = dict(
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        command=command,
        platform=platform.platform(),
        cpu=cpu_name(),  # earlier runs recorded `processor`: platform.processor(), which says x86_64
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        python=platform.python_version(),
        torch=torch.__version__,
        locallearn=__version__,
        git_revision=git_revision(),
        options=asdict(options),
        cuda_device=None,
    )
    if str(options.device).startswith("cuda"):
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(options.device))
    return info
