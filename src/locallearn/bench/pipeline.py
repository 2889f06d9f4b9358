"""``locallearn bench pipeline``: images/s of the module-parallel pipeline against the other ways of using
the same cores, in one interleaved run.

Five variants, each run in fresh processes (started as torchrun would, on 127.0.0.1, gloo), with N =
``--ranks``; every variant but ``single_1t`` uses N cores:

- ``single_1t``     1 process × 1 thread: ``train_step`` over the batches (the old baseline, one core);
- ``single_Nt``     1 process × N threads: the same ``train_step``, the N cores used by intra-op parallelism;
- ``pipeline``      N processes × 1 thread: the overlapped pipeline (``locallearn.distributed``), one stage of
                    contiguous modules per rank, assigned ``balanced`` on module times measured before the runs;
- ``pipeline_sync`` N processes × 1 thread: the same stages in lock step (same values, no overlap);
- ``ddp``           N processes × 1 thread: data parallelism of the same local network — one stage holding
                    every module, N replicas (``Layout(stages=1, replicas=N)``: each module's step wrapped
                    in DistributedDataParallel); each replica trains 1/N of every batch, so the global batch
                    and the number of optimizer steps are the others' (BatchNorm statistics are per replica,
                    as in any DDP without SyncBatchNorm).

Every variant trains the same synthetic batches (normal images, uniform labels, generated in memory: data
loading is not measured) after ``warmup`` batches, and is timed the same way: from the first measured batch
until the last one is done by every rank of the last stage ("whole window", which includes the pipeline's
fill and drain), and between the first and the last batch done ("steady state", what an epoch of hundreds
of batches sees).

Other processes on the machine take cores, so each run waits for the machine to be idle (``idle``) and
records the share of the machine's CPU that *other* processes used while it was measured (/proc/stat minus
the run's own CPU time). Runs where that share is at most ``clean`` count; rounds of runs (every variant
once, in an order rotated by one each round) go on until every variant has ``repeats`` clean runs or
``max_rounds`` rounds have run. A variant whose run fails (a process exits with an error, or outlives
``run_timeout``) is recorded as failed and not run again. Medians are over clean runs (over all successful
runs when none is clean, which the report says). The verdict compares the pipeline with the *best* of
``single_1t``, ``single_Nt`` and ``ddp`` and says plainly whether it is ahead.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import locallearn as ll
from locallearn.bench.runner import RunOptions
from locallearn.bench.runner import environment as machine
from locallearn.distributed.assign import assign_modules, measure_module_costs
from locallearn.distributed.launch import init_distributed, join_local, run_guarded, shutdown, spawn_local
from locallearn.distributed.pipeline import Layout, PipelineStage, make_groups, stage_parts
from locallearn.engine import train_step
from locallearn.methods import METHODS
from locallearn.config import resolve_net
from locallearn.training.config import OptimConfig
from locallearn.training.interrupt import Interrupted
from locallearn.training.runner import make_optimizer
from locallearn.validate import Float, Int, Optional, Text, check, check_fields

Log = Callable[[str], None]
VARIANTS = {  # name: what it is (processes × threads as a function of N = ranks: ``shape``)
    "single_1t": "one process, one thread: train_step (1/N of the cores)",
    "single_Nt": "one process, N threads: train_step with intra-op parallelism",
    "pipeline": "N processes × 1 thread: one pipeline stage per rank, overlapped",
    "pipeline_sync": "N processes × 1 thread: the same stages in lock step",
    "ddp": "N processes × 1 thread: every module on every rank, 1/N of each batch, DDP",
}
BASELINES = ("single_1t", "single_Nt", "ddp")  # what the pipeline is compared with: the best of them
FAULT_TIMEOUT_S = 120.0  # a rank that stops responding ends the run's other ranks after this long


def shape(name: str, ranks: int) -> tuple[int, int]:
    """(processes, threads per process) of a variant."""
    if name == "single_1t":
        return 1, 1
    if name == "single_Nt":
        return 1, ranks
    return ranks, 1


@dataclass(frozen=True)
class PipelineBench:
    """What ``locallearn bench pipeline`` runs; every value is checked at construction."""

    model: str = field(default="resnet32", metadata=check(Text()))
    method: str = field(default="contsup", metadata=check(Text()))
    num_modules: int = field(default=4, metadata=check(Int(1)))
    context: str = field(default="R1E", metadata=check(Text()))  # for methods that supply context (ContSup)
    split: str | None = field(default=None, metadata=check(Optional(Text())))  # None: train's (paper, else auto)
    dataset: str = "cifar10"  # the classes, channels and image size of the synthetic batches
    ranks: int = field(default=2, metadata=check(Int(2)))
    batch_size: int = field(default=64, metadata=check(Int(1)))
    batches: int = field(default=24, metadata=check(Int(2)))  # measured; the steady state needs two
    warmup: int = field(default=2, metadata=check(Int(0)))
    repeats: int = field(default=5, metadata=check(Int(1)))
    max_rounds: int = field(default=25, metadata=check(Int(1)))
    variants: tuple[str, ...] = tuple(VARIANTS)
    idle: float = field(default=0.1, metadata=check(Float(minimum=0, maximum=1)))
    clean: float = field(default=0.05, metadata=check(Float(minimum=0, maximum=1)))
    run_timeout: float = field(default=900.0, metadata=check(Float(above=0)))

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "variants", tuple(self.variants))
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants or len(set(self.variants)) != len(self.variants):
            what = f"unknown variant {unknown[0]!r}" if unknown else "each variant at most once, at least one"
            raise ValueError(f"variants: {what}; valid variants are {', '.join(VARIANTS)}.")
        staged = [v for v in self.variants if v in ("pipeline", "pipeline_sync")]
        if staged and self.ranks > self.num_modules:
            fewer = f"--ranks {self.num_modules} or less, or " if self.num_modules >= 2 else ""  # --ranks is ≥ 2
            raise ValueError(
                f"ranks: a pipeline of {self.ranks} ranks needs at least {self.ranks} local modules (one stage per "
                f"rank) but --num-modules is {self.num_modules}; use {fewer}--num-modules {self.ranks} or more."
            )
        if "ddp" in self.variants and self.batch_size % self.ranks:
            raise ValueError(
                f"batch_size: ddp gives each of the {self.ranks} ranks an equal share of every batch, so --batch-size "
                f"must be a multiple of {self.ranks}, got {self.batch_size}."
            )

    def net_options(self) -> dict:
        """What ``locallearn.build`` gets; the context only for methods that supply it."""
        options = dict(model=self.model, method=self.method, num_modules=self.num_modules, dataset=self.dataset)
        if METHODS.get(self.method).varies_context:
            options["context"] = self.context
        split = self.split if self.split is not None else resolve_net(**options).split  # train's default
        return {**options, "split": split}

    def build_net(self) -> ll.LocalNet:
        """The network every variant trains, from the same seed in every process."""
        torch.manual_seed(0)
        return ll.build(**self.net_options())


# every variant's optimizer: training's SGD (the papers' momentum, Nesterov, weight decay); the rate moves the
# numbers, not the time
BENCH_OPTIM = OptimConfig(lr=0.05)


def make_batches(bench: PipelineBench, net: ll.LocalNet) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``warmup + batches`` synthetic batches of the network's input shape, the same in every process."""
    size = net.config.image_size or net.backbone.image_size
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(bench.batch_size, net.backbone.in_channels, size, size, generator=g),
         torch.randint(0, net.config.num_classes, (bench.batch_size,), generator=g))
        for _ in range(bench.warmup + bench.batches)
    ]


# --- how busy the machine is: CPU time taken by other processes while a variant is measured ------------------
def cpu_busy_s() -> float:
    """Seconds of CPU the whole machine has spent busy since boot (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def foreign_share(busy_s: float, own_cpu_s: float, elapsed_s: float) -> float:
    """The share of the machine's CPU capacity other processes used: ``busy_s`` seconds of the whole machine's
    CPU over ``elapsed_s`` seconds, of which ``own_cpu_s`` were the run's own."""
    return max(0.0, (busy_s - own_cpu_s) / (elapsed_s * os.cpu_count()))


def wait_for_idle(threshold: float, timeout: float = 30.0) -> float | None:
    """Wait (up to ``timeout``) until the machine is at most ``threshold`` busy over half a second; returns
    the last share seen. A threshold of 1 never waits (None)."""
    if threshold >= 1:
        return None
    deadline = time.monotonic() + timeout
    while True:
        before = cpu_busy_s()
        time.sleep(0.5)
        share = foreign_share(cpu_busy_s() - before, 0.0, 0.5)
        if share <= threshold or time.monotonic() > deadline:
            return share


def steady(done_s: list[float], batch_size: int) -> float:
    """Images/s between the first and the last batch done: without the pipeline's fill and drain, which an
    epoch of hundreds of batches pays once."""
    return (len(done_s) - 1) * batch_size / (done_s[-1] - done_s[0])


# --- one run of a variant, in its own processes ---------------------------------------------------------------
def single_process(result_path: str, bench: PipelineBench) -> None:
    """``single_1t`` / ``single_Nt`` (the thread count is set by the launcher)."""
    net = bench.build_net()
    optimizer = make_optimizer(net, BENCH_OPTIM)
    data = make_batches(bench, net)
    for images, labels in data[: bench.warmup]:
        train_step(net, images, labels, optimizer, checked=False)
    busy, cpu, start = cpu_busy_s(), time.process_time(), time.perf_counter()
    done = []
    for images, labels in data[bench.warmup :]:
        train_step(net, images, labels, optimizer, checked=False)
        done.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - start
    own, busy = time.process_time() - cpu, cpu_busy_s() - busy
    write_result(result_path, bench, elapsed, done, foreign_share(busy, own, elapsed))


def write_result(path: str, bench: PipelineBench, elapsed: float, done: list[float], foreign: float, **extra) -> None:
    """A run's result, for the launcher: its time and images/s over the whole window and in the steady state
    (``done``: when each measured batch finished), the other processes' CPU share, and ``extra``."""
    Path(path).write_text(json.dumps({
        "time_s": elapsed, "images_per_s": bench.batches * bench.batch_size / elapsed,
        "steady_images_per_s": steady(done, bench.batch_size), "foreign_cpu_share": foreign, **extra,
    }))


def layout_of(name: str, bench: PipelineBench, assignment: list[range]) -> Layout:
    """``pipeline``/``pipeline_sync``: one stage per rank; ``ddp``: one stage of every module, N replicas."""
    if name == "ddp":
        return Layout(stages=1, replicas=bench.ranks, assignment=(range(bench.num_modules),))
    return Layout(stages=bench.ranks, replicas=1, assignment=tuple(assignment))


def distributed_rank(result_path: str, bench: PipelineBench, name: str, assignment: list[range]) -> None:
    """One rank of ``pipeline``, ``pipeline_sync`` or ``ddp``; rank 0 writes the run's result."""
    env = init_distributed(device="cpu", fault_timeout_s=FAULT_TIMEOUT_S)
    run_guarded(env, _train_rank, env, result_path, bench, name, assignment)
    shutdown(env)


def _train_rank(env, result_path: str, bench: PipelineBench, name: str, assignment: list[range]) -> None:
    net = bench.build_net()
    layout = layout_of(name, bench, assignment)
    links, dp_group, _ = make_groups(layout, backend=env.backend, device_type="cpu")
    modules = layout.assignment[layout.stage_of(env.rank)]
    optimizer = make_optimizer(nn.ModuleList(stage_parts(net, modules)), BENCH_OPTIM)
    stage = PipelineStage(
        net, layout, env.rank, optimizer, device=env.device, sync=name == "pipeline_sync", links=links,
        dp_group=dp_group, barrier_group=env.ctrl,
        meter_memory=False,  # as train_step in the single-process variants: no saved-tensor hooks
    )
    data = make_batches(bench, net)
    stage.train_phase(data[: bench.warmup] if stage.first else None)  # every ddp replica is a first stage
    torch.distributed.barrier(group=env.ctrl)
    busy, cpu, start = cpu_busy_s(), time.process_time(), time.perf_counter()
    stats = stage.train_phase(data[bench.warmup :] if stage.first else None)
    torch.distributed.barrier(group=env.ctrl)  # every rank done: the window of the machine's CPU closes
    cpu = time.process_time() - cpu
    busy, window = cpu_busy_s() - busy, time.perf_counter() - start
    reports: list = [None] * env.world_size
    torch.distributed.all_gather_object(
        reports,
        {"rank": env.rank, "stage": layout.stage_of(env.rank), "modules": [modules.start, modules.stop - 1],
         "time_s": stats.wall_s, "cpu_s": cpu, "done_s": stats.done_s, "compute_s": stats.compute_s,
         "wait_in_s": stats.wait_in_s, "wait_out_s": stats.wait_out_s},
        group=env.ctrl,
    )
    stage.close()
    if env.rank == 0:
        last = [r for r in reports if r["stage"] == layout.stages - 1]
        done = [max(times) for times in zip(*(r["done_s"] for r in last))]  # batch t done by every last-stage rank
        elapsed = max(r["time_s"] for r in reports)
        for r in reports:
            del r["done_s"]
        write_result(result_path, bench, elapsed, done, foreign_share(busy, sum(r["cpu_s"] for r in reports), window),
                     layout=layout.to_dict(), ranks=reports)


def _last_error(directory: str) -> str:
    """The last line a failed run's processes wrote to standard error (a traceback's exception line)."""
    lines = []
    for path in sorted(Path(directory).glob("rank*.err")):
        lines += [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"


def run_variant(name: str, bench: PipelineBench, assignment: list[range]) -> dict:
    """One run of a variant in fresh processes: its result, or ``status: failed`` with the reason."""
    busy_before = wait_for_idle(bench.idle)
    processes, threads = shape(name, bench.ranks)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        if processes == 1:
            procs = spawn_local(single_process, 1, path, bench, threads=threads, stderr_dir=tmp)
        else:
            procs = spawn_local(distributed_rank, processes, path, bench, name, assignment, threads=threads,
                                stderr_dir=tmp)
        killed = join_local(procs, bench.run_timeout)
        timed_out = f"did not finish within {bench.run_timeout:g} s; killed" if killed else None
        codes = [p.exitcode for p in procs]
        if timed_out or any(codes) or not os.path.exists(path):
            reason = timed_out or f"exit codes {codes}: {_last_error(tmp)}"
            return {"status": "failed", "reason": reason, "busy_before_start": busy_before}
        result = json.loads(Path(path).read_text())
    return {"status": "ok", **result, "busy_before_start": busy_before}


# --- summaries and the verdict --------------------------------------------------------------------------------
AHEAD = 1.02  # the pipeline is ahead of a variant when it is at least this many times as fast


def summarize(runs: list[dict], clean: float) -> dict:
    """Medians of images/s over the successful runs during which other processes used at most ``clean`` of
    the CPU (over every successful run when none qualifies: ``clean_runs`` says how many counted)."""
    ok = [r for r in runs if r["status"] == "ok"]
    failed = len(runs) - len(ok)
    if not ok:
        return {"status": "failed" if runs else "not measured", "failed_runs": failed, "clean_runs": 0, "median_images_per_s": None,
                "median_steady_images_per_s": None, "best_images_per_s": None, "runs": runs}
    quiet = [r for r in ok if r["foreign_cpu_share"] <= clean]
    counted = quiet or ok
    return {
        "status": "ok",
        "images_per_s": [r["images_per_s"] for r in ok],
        "steady_images_per_s": [r["steady_images_per_s"] for r in ok],
        "foreign_cpu_share": [round(r["foreign_cpu_share"], 3) for r in ok],
        "clean_runs": len(quiet),
        "failed_runs": failed,
        "median_images_per_s": statistics.median(r["images_per_s"] for r in counted),
        "median_steady_images_per_s": statistics.median(r["steady_images_per_s"] for r in counted),
        "best_images_per_s": max(r["images_per_s"] for r in ok),
        "runs": runs,
    }


def paired_ratios(runs: list[dict], reference: list[dict], clean: float) -> dict:
    """``runs`` ÷ ``reference`` steady-state images/s of the same round, over rounds where both runs are clean
    (runs minutes apart: a machine whose speed drifts affects both alike): the ratios, median and range."""
    ref = {r["round"]: r for r in reference if r["status"] == "ok" and r["foreign_cpu_share"] <= clean}
    ratios = [
        r["steady_images_per_s"] / ref[r["round"]]["steady_images_per_s"]
        for r in runs
        if r["status"] == "ok" and r["foreign_cpu_share"] <= clean and r["round"] in ref
    ]
    if not ratios:
        return {"ratios": []}
    return {"ratios": [round(x, 3) for x in ratios], "median": statistics.median(ratios), "min": min(ratios),
            "max": max(ratios)}


def compare(variants: dict[str, dict]) -> dict:
    """The pipeline's speed-up against the best of the baselines that ran (``BASELINES``), in the steady state
    and over the whole window (each against the baseline best by that measure), and a one-line verdict.

    ``variants``: name → ``summarize``'s summary. The pipeline is *ahead* when its median images/s exceeds the
    best baseline's by at least ``AHEAD`` (2 %: a ratio of 1.004 is a tie, not a win, on a machine whose
    interleaved runs differ by more); a variant that failed in every run is named and left out."""
    failed = [name for name, v in variants.items() if v["status"] == "failed"]
    done = {name: v for name, v in variants.items() if v["status"] == "ok"}
    baselines = {name: v for name, v in done.items() if name in BASELINES}
    out: dict = {"failed": failed, "baselines": sorted(baselines), "best": None, "best_window": None,
                 "speedup_steady": None, "speedup": None, "ahead": None}
    others = [name for name in failed if name != "pipeline"]
    left_out = ""
    if others:
        left_out = f"; {_names(others)} failed, so {'it is' if len(others) == 1 else 'they are'} not compared"
    if "pipeline" not in variants:
        out["verdict"] = "no verdict: the pipeline variant was not run" + left_out
        return out
    if variants["pipeline"]["status"] == "not measured":
        out["verdict"] = "no verdict: the pipeline was not measured (interrupted)" + left_out
        return out
    if "pipeline" not in done:
        out["verdict"] = "no verdict: the pipeline failed in every run" + left_out
        return out
    if not baselines:
        missing = [b for b in BASELINES if b not in variants]
        stopped = [b for b in BASELINES if b in variants and variants[b]["status"] == "not measured"]
        out["verdict"] = (f"no verdict: none of {_names(list(BASELINES))} ran to compare with"
                          + (f" ({_names(missing)} not run)" if missing else "")
                          + (f" ({_names(stopped)} not measured: interrupted)" if stopped else "") + left_out)
        return out
    pipe = done["pipeline"]
    best = max(baselines, key=lambda n: baselines[n]["median_steady_images_per_s"])
    best_window = max(baselines, key=lambda n: baselines[n]["median_images_per_s"])
    steady_x = pipe["median_steady_images_per_s"] / baselines[best]["median_steady_images_per_s"]
    window_x = pipe["median_images_per_s"] / baselines[best_window]["median_images_per_s"]
    steady_ahead, window_ahead = steady_x >= AHEAD, window_x >= AHEAD
    out.update(best=best, best_window=best_window, speedup_steady=steady_x, speedup=window_x, ahead=steady_ahead,
               against={name: {"steady": pipe["median_steady_images_per_s"] / v["median_steady_images_per_s"],
                               "window": pipe["median_images_per_s"] / v["median_images_per_s"]}
                        for name, v in baselines.items()})
    other = f" against {best_window}" if best_window != best else ""  # the whole window's best, when it differs
    if steady_ahead and window_ahead:
        verdict = (f"the pipeline is ahead of the best other variant, {best}: {steady_x:.2f}× in the steady state, "
                   f"{window_x:.2f}× over the whole window{other}")
    elif not steady_ahead and not window_ahead:
        verdict = (f"the pipeline is not ahead of {best}: {steady_x:.2f}× in the steady state, "
                   f"{window_x:.2f}× over the whole window{other}")
    elif steady_ahead:
        verdict = (f"the pipeline is ahead of {best} in the steady state ({steady_x:.2f}×) but not over the whole "
                   f"window ({window_x:.2f}×{other})")
    else:
        verdict = (f"the pipeline is not ahead of {best} in the steady state ({steady_x:.2f}×), only over the whole "
                   f"window ({window_x:.2f}×{other})")
    unclean = [n for n in ("pipeline", best, best_window) if done[n]["clean_runs"] == 0]
    if unclean:
        verdict += f"; no clean run of {_names(list(dict.fromkeys(unclean)))}: medians of busy runs"
    out["verdict"] = verdict + left_out
    return out


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# --- the run ---------------------------------------------------------------------------------------------------
def environment(command: str | None) -> dict:
    """The machine and software of the run (``bench.runner.environment``), with the load average."""
    info = machine(RunOptions(), command)
    info.pop("options")  # the memory and speed grids' options: not this benchmark's
    return {**info, "load_average": [round(x, 2) for x in os.getloadavg()]}


def run_pipeline_bench(bench: PipelineBench, out: Path | str, *, command: str | None = None,
                       log: Log | None = None) -> dict:
    """Measure every variant in interleaved rounds; write ``pipeline.json`` and ``pipeline.md`` into ``out``.
    The network is built (and so every name checked) before any process starts."""
    net = bench.build_net()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the stages run one thread each: balance them on one-thread times
    try:
        wait_for_idle(bench.idle)
        costs = measure_module_costs(net, batch_size=bench.batch_size, repeats=3)
    finally:
        torch.set_num_threads(threads)
    stages = min(bench.ranks, bench.num_modules)
    assignment = assign_modules(net, stages, "balanced", costs=costs)
    machine_before = environment(command)
    results: dict[str, list[dict]] = {name: [] for name in bench.variants}

    def clean_runs(name: str) -> int:
        return sum(r["status"] == "ok" and r["foreign_cpu_share"] <= bench.clean for r in results[name])

    names = list(bench.variants)  # a variant that fails is not run again: failures here are not a busy machine's
    stopped = None  # the round a Ctrl-C stopped: the runs measured before it are written, not discarded
    try:
        for round_ in range(1, bench.max_rounds + 1):
            if not names or all(clean_runs(name) >= bench.repeats for name in names):
                break
            shift = (round_ - 1) % len(names)  # a slow spell of the machine does not always hit the same variant
            for name in names[shift:] + names[:shift]:
                stopped = round_
                run = run_variant(name, bench, assignment)
                run["round"] = round_
                results[name].append(run)
                if run["status"] != "ok":
                    names.remove(name)
                if log:
                    log(f"round {round_} {name:13s} " + _describe_run(run, clean_runs(name), bench.repeats))
            stopped = None
    except KeyboardInterrupt:
        if not any(results.values()):
            raise Interrupted("interrupted before any run was measured; nothing was written") from None
    report = {
        "setting": {
            **asdict(bench), "variants": list(bench.variants), "net": bench.net_options(),
            "cuts": net.describe()["cuts"], "assignment": [[r.start, r.stop - 1] for r in assignment],
            "module_costs_s": [round(c, 4) for c in costs],
            "shapes": {name: dict(zip(("processes", "threads"), shape(name, bench.ranks))) for name in bench.variants},
        },
        "machine": {**machine_before, "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "variants": {name: summarize(runs, bench.clean) for name, runs in results.items()},
    }
    report["interrupted_in_round"] = stopped
    report["comparison"] = compare(report["variants"])
    v = report["variants"]
    report["paired"] = {
        name: paired_ratios(results["pipeline"], results[name], bench.clean)
        for name in BASELINES if "pipeline" in v and name in v
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "pipeline.md").write_text(markdown(report))
    if stopped is not None:
        raise Interrupted(f"interrupted in round {stopped}: the runs measured before it are written to "
                          f"{out / 'pipeline.json'} and {out / 'pipeline.md'}, marked interrupted")
    return report


def _describe_run(run: dict, clean: int, wanted: int) -> str:
    if run["status"] != "ok":
        return f"failed: {run['reason']} (not run again)"
    return (f"{run['steady_images_per_s']:7.1f} images/s steady, {run['images_per_s']:7.1f} whole window (others used "
            f"{100 * run['foreign_cpu_share']:.0f}% of the CPU; clean runs {clean}/{wanted})")


# --- markdown ----------------------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    s, m, c = report["setting"], report["machine"], report["comparison"]
    net = s["net"]
    context = f" ({net['context']})" if "context" in net else ""
    setting = (
        f"Batch {s['batch_size']} (synthetic), {s['batches']} measured batches after {s['warmup']} warm-up, rounds of "
        f"interleaved runs until {s['repeats']} clean runs per variant (at most {s['max_rounds']} rounds); "
        f"{m['cpu_count']} CPUs{' (' + m['cpu'] + ')' if m.get('cpu') else ''}, torch {m['torch']}, Python {m['python']}, locallearn {m['locallearn']} (revision "
        f"{m['git_revision']}), {m['date']}. Pipeline stages: {s['assignment']} (balanced on measured one-thread "
        f"module times {s['module_costs_s']} s). A run is *clean* when other processes used at most "
        f"{100 * s['clean']:.0f}% of the machine's CPU while it was measured; medians are over clean runs. Load "
        f"average before/after: {m['load_average']} / {m['load_average_after']}."
    )
    if report.get("interrupted_in_round"):
        setting += (f" **Interrupted (Ctrl-C) in round {report['interrupted_in_round']}**: the runs of that round "
                    f"measured before the stop are included, the rest of the rounds are missing.")
    lines = [
        f"# Pipeline against the other uses of {s['ranks']} cores — {net['model']} {net['method']} "
        f"K={net['num_modules']}{context}, {net['split']} split",
        "",
        f"`{(m.get('command') or 'locallearn bench pipeline').strip()}`",
        "",
        setting,
        "",
        ("| variant | processes × threads | images/s, steady state | images/s, whole window | best window | "
         "pipeline ÷ variant, steady | clean runs | other processes' CPU share per run |"),
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, v in report["variants"].items():
        sh = s["shapes"][name]
        ratio = c.get("against", {}).get(name, {}).get("steady")
        if v["status"] == "failed":
            lines.append(f"| {name} | {sh['processes']} × {sh['threads']} | failed | – | – | – | "
                         f"0/{len(v['runs'])} | {v['runs'][-1]['reason'].replace('|', '/')} |")
            continue
        if v["status"] == "not measured":
            lines.append(f"| {name} | {sh['processes']} × {sh['threads']} | not measured (interrupted) | – | – | – | "
                         f"0/0 | – |")
            continue
        shares = ", ".join(f"{100 * x:.0f}%" for x in v["foreign_cpu_share"])
        failed = f" ({v['failed_runs']} failed)" if v["failed_runs"] else ""
        lines.append(
            f"| {name} | {sh['processes']} × {sh['threads']} | {_fmt(v['median_steady_images_per_s'])} | "
            f"{_fmt(v['median_images_per_s'])} | {_fmt(v['best_images_per_s'])} | {_fmt(ratio, '.2f')} | "
            f"{v['clean_runs']}/{len(v['runs'])}{failed} | {shares} |"
        )
    lines += ["", f"**Verdict: {c['verdict']}.**", ""]
    if c["best"] is not None:
        paired = report["paired"].get(c["best"], {})
        line = (
            f"Speed-up of the pipeline against the best of {_names(c['baselines'])}: {c['speedup_steady']:.2f}× "
            f"in the steady state (against {c['best']}), {c['speedup']:.2f}× over the whole {s['batches']}-batch "
            f"window (against {c['best_window']}); medians over each variant's clean runs (over all its runs "
            "where it has none)."
        )
        if paired.get("ratios"):
            line += (f" Paired by round against {c['best']} (both runs clean; steady state): median "
                     f"{paired['median']:.2f}×, range {paired['min']:.2f}–{paired['max']:.2f}× over "
                     f"{len(paired['ratios'])} rounds.")
        lines.append(line)
        lines.append("")
    lines += [
        f"Variants (N = {s['ranks']}): " + "; ".join(f"`{name}` {VARIANTS[name]}" for name in s["variants"]) + ".",
        "",
        "*Steady state*: images/s between the first and the last batch done by every rank of the last stage — an "
        "epoch pays the pipeline's fill and drain once (e.g. 782 batches of 64 per CIFAR-10 epoch), this window once "
        f"per {s['batches']} batches. *Whole window*: from the first measured batch to the last, fill and drain "
        "included. Both are measured the same way for every variant.",
        "",
    ]
    for name in ("pipeline", "ddp"):
        runs = [r for r in report["variants"].get(name, {}).get("runs", []) if r["status"] == "ok"]
        if runs:
            ranks = "; ".join(_rank_line(r, name) for r in runs[0]["ranks"])
            lines.append(f"Per rank (first {name} run): {ranks}.")
            lines.append("")
    return "\n".join(lines)


def _rank_line(r: dict, variant: str) -> str:
    waits = ""
    if variant == "pipeline":  # ddp's ranks wait for no neighbour
        waits = f", waiting for input {r['wait_in_s']:.1f} s, for the next stage {r['wait_out_s']:.1f} s"
    modules = f"{r['modules'][0]}-{r['modules'][1]}"
    return f"rank {r['rank']} modules {modules}: compute {r['compute_s']:.1f} s{waits} of {r['time_s']:.1f} s"
