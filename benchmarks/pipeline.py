"""Module-parallel pipeline speed-up: images/s of ResNet-32 ContSup (K=4, context R1E, paper split)
trained by an N-process pipeline against one process, at the same number of threads per process.

    python benchmarks/pipeline.py [--ranks 2] [--batch-size 64] [--batches 24] [--repeats 5]
                                  [--out benchmarks/results/pipeline.json]

Variants, each in fresh processes (started as torchrun would, on 127.0.0.1), runs interleaved:

- ``single_1t``     one process, one thread: ``train_step`` over the batches (the baseline);
- ``pipeline``      N processes × one thread, the overlapped schedule (``locallearn.distributed``);
- ``pipeline_sync`` N processes × one thread, the lock-step schedule (same values, no overlap);
- ``single_Nt``     one process, N threads: the same cores used by intra-op parallelism instead.

Every variant trains the same synthetic batches (normal images, uniform labels; generated in memory, so
data loading is not measured) after ``--warmup`` batches. Time = from the start of the measured batches
until the last stage finishes the last one, so the pipeline's fill and drain are included ("whole
window"), and — what an epoch of hundreds of batches sees — between the first and the last batch the
last stage finishes ("steady state"); the same for every variant.

On a shared machine other processes take cores and the numbers move with them. So each run starts when
the machine is idle (``--idle``), and records the share of the machine's CPU that *other* processes used
while it was measured (from /proc/stat, minus the CPU time of the run's own processes). Runs where
that share is at most ``--clean`` count; rounds of runs go on until every variant has ``--repeats``
clean runs (or ``--max-rounds``). The speed-up is median(pipeline images/s) / median(single_1t images/s)
over the clean runs; every run is kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import locallearn as ll
from locallearn.distributed.assign import assign_modules, measure_module_costs
from locallearn.distributed.launch import init_distributed, shutdown, spawn_local
from locallearn.distributed.pipeline import Layout, PipelineStage, make_groups, stage_parts
from locallearn.engine import train_step

NET = dict(model="resnet32", method="contsup", num_modules=4, context="R1E", split="paper", dataset="cifar10")


def make_net() -> ll.LocalNet:
    torch.manual_seed(0)
    return ll.build(**NET)


def make_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)


def make_batches(n: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, 10, (batch_size,), generator=g)) for _ in range(n)]


# --- how busy the machine is: CPU time taken by other processes while a variant is measured ------------------
def cpu_busy_s() -> float:
    """Seconds of CPU the whole machine has spent busy since boot (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def foreign_share(busy_before: float, busy_after: float, own_cpu_s: float, elapsed: float) -> float:
    """The share of the machine's CPU capacity used by other processes during ``elapsed`` seconds."""
    return max(0.0, (busy_after - busy_before - own_cpu_s) / (elapsed * os.cpu_count()))


def wait_for_idle(threshold: float = 0.1, timeout: float = 30.0) -> float:
    """Wait (up to ``timeout``) until the machine is at most ``threshold`` busy over half a second."""
    deadline = time.monotonic() + timeout
    while True:
        before = cpu_busy_s()
        time.sleep(0.5)
        share = (cpu_busy_s() - before) / (0.5 * os.cpu_count())
        if share <= threshold or time.monotonic() > deadline:
            return share


def single_process(result_path: str, batch_size: int, warmup: int, batches: int) -> None:
    net = make_net()
    optimizer = make_optimizer(net.parameters())
    data = make_batches(warmup + batches, batch_size)
    for images, labels in data[:warmup]:
        train_step(net, images, labels, optimizer)
    busy, cpu, start = cpu_busy_s(), time.process_time(), time.perf_counter()
    done = []
    for images, labels in data[warmup:]:
        train_step(net, images, labels, optimizer)
        done.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - start
    foreign = foreign_share(busy, cpu_busy_s(), time.process_time() - cpu, elapsed)
    Path(result_path).write_text(json.dumps({
        "time_s": elapsed, "images_per_s": batches * batch_size / elapsed,
        "steady_images_per_s": steady(done, batch_size), "foreign_cpu_share": foreign,
    }))


def steady(done_s: list[float], batch_size: int) -> float:
    """Images/s between the first and the last batch done (by the last stage): without the pipeline's fill
    and drain, which an epoch of hundreds of batches pays once."""
    return (len(done_s) - 1) * batch_size / (done_s[-1] - done_s[0])


def pipeline_rank(result_path: str, batch_size: int, warmup: int, batches: int, sync: bool, assignment) -> None:
    env = init_distributed(device="cpu", fault_timeout_s=120)
    net = make_net()
    stages = env.world_size
    layout = Layout(stages, 1, tuple(assignment))
    links, _, _ = make_groups(layout, backend=env.backend, device_type="cpu")
    modules = layout.assignment[env.rank]
    optimizer = make_optimizer([p for part in stage_parts(net, modules) for p in part.parameters()])
    stage = PipelineStage(
        net, layout, env.rank, optimizer, device=env.device, sync=sync, links=links, barrier_group=env.ctrl,
        meter_memory=False,  # as train_step in the single-process variants: no saved-tensor hooks
    )
    data = make_batches(warmup + batches, batch_size)
    stage.train_phase(data[:warmup] if stage.first else None)
    torch.distributed.barrier(group=env.ctrl)
    busy, cpu = cpu_busy_s(), time.process_time()
    stats = stage.train_phase(data[warmup:] if stage.first else None)
    cpu = time.process_time() - cpu
    reports = [None] * env.world_size
    torch.distributed.all_gather_object(
        reports,
        {"rank": env.rank, "modules": [modules.start, modules.stop - 1], "time_s": stats.wall_s, "cpu_s": cpu,
         "steady_images_per_s": steady(stats.done_s, batch_size),
         "compute_s": stats.compute_s, "wait_in_s": stats.wait_in_s, "wait_out_s": stats.wait_out_s},
        group=env.ctrl,
    )
    busy_after = cpu_busy_s()
    stage.close()
    if env.rank == 0:
        elapsed = max(r["time_s"] for r in reports)
        foreign = foreign_share(busy, busy_after, sum(r["cpu_s"] for r in reports), elapsed)
        Path(result_path).write_text(json.dumps(
            {"time_s": elapsed, "images_per_s": batches * batch_size / elapsed, "foreign_cpu_share": foreign,
             "steady_images_per_s": reports[-1]["steady_images_per_s"], "ranks": reports}
        ))
    shutdown(env)


def run_variant(name: str, args, assignment) -> dict:
    idle_wait = wait_for_idle(args.idle)
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        if name.startswith("single"):
            threads = 1 if name == "single_1t" else args.ranks
            procs = spawn_local(single_process, 1, result, args.batch_size, args.warmup, args.batches, threads=threads)
        else:
            procs = spawn_local(
                pipeline_rank, args.ranks, result, args.batch_size, args.warmup, args.batches,
                name == "pipeline_sync", assignment, threads=1,
            )
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            raise RuntimeError(f"{name}: a process failed (exit codes {[p.exitcode for p in procs]})")
        result = json.loads(Path(result).read_text())
        result["busy_before_start"] = idle_wait
        return result


def summarize(runs: list[dict], clean: float) -> dict:
    """Median images/s over the runs during which other processes used at most ``clean`` of the CPU
    (all runs when none qualifies; ``clean_runs`` says how many counted), and the best run."""
    quiet = [r for r in runs if r["foreign_cpu_share"] <= clean]
    counted = quiet or runs
    return {
        "images_per_s": [r["images_per_s"] for r in runs],
        "steady_images_per_s": [r["steady_images_per_s"] for r in runs],
        "foreign_cpu_share": [round(r["foreign_cpu_share"], 3) for r in runs],
        "clean_runs": len(quiet),
        "median_images_per_s": statistics.median(r["images_per_s"] for r in counted),
        "median_steady_images_per_s": statistics.median(r["steady_images_per_s"] for r in counted),
        "best_images_per_s": max(r["images_per_s"] for r in runs),
        "runs": runs,
    }


def paired_ratios(pipeline: list[dict], single: list[dict], clean: float) -> dict:
    """pipeline / single_1t steady-state images/s of the same round (runs minutes apart, so a machine whose
    speed drifts affects both alike), over rounds where both runs are clean: median and range."""
    by_round = {r["round"]: r for r in single if r["foreign_cpu_share"] <= clean}
    ratios = [
        p["steady_images_per_s"] / by_round[p["round"]]["steady_images_per_s"]
        for p in pipeline
        if p["foreign_cpu_share"] <= clean and p["round"] in by_round
    ]
    if not ratios:
        return {"ratios": []}
    return {"ratios": [round(x, 3) for x in ratios], "median": statistics.median(ratios), "min": min(ratios),
            "max": max(ratios)}


def markdown(report: dict) -> str:
    s = report["setting"]
    lines = [
        f"# Pipeline speed-up — {s['net']['model']} ContSup K={s['net']['num_modules']} ({s['net']['context']}), "
        f"{s['ranks']} ranks",
        "",
        f"`python benchmarks/pipeline.py {s['command']}`",
        "",
        f"Batch {s['batch_size']} (synthetic), {s['batches']} measured batches after {s['warmup']} warm-up, "
        f"rounds of interleaved runs until {s['repeats']} clean runs per variant; {s['cpus']} CPUs, torch {s['torch']}. Stages: "
        f"{s['assignment']} (balanced on measured module times {s['module_costs_s']} s). A run is *clean* when "
        f"other processes used at most {100 * s['clean']:.0f}% of the machine's CPU while it was measured; the "
        "median is over clean runs. Load average before/after: "
        f"{s['load_before']} / {s['load_after']}.",
        "",
        "| variant | processes × threads | images/s, steady state | images/s, whole window | best window | "
        "clean runs | other processes' CPU share per run |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    shape = {"single_1t": "1 × 1", "pipeline": f"{s['ranks']} × 1", "pipeline_sync": f"{s['ranks']} × 1",
             "single_Nt": f"1 × {s['ranks']}"}
    for name, v in report["variants"].items():
        shares = ", ".join(f"{100 * x:.0f}%" for x in v["foreign_cpu_share"])
        lines.append(
            f"| {name} | {shape[name]} | {v['median_steady_images_per_s']:.1f} | {v['median_images_per_s']:.1f} | "
            f"{v['best_images_per_s']:.1f} | {v['clean_runs']}/{len(v['runs'])} | {shares} |"
        )
    lines += [
        "",
        f"**Pipeline speed-up over one process with one thread: {report['speedup_steady']:.2f}× in the steady "
        f"state, {report['speedup']:.2f}× over the whole {s['batches']}-batch window** (medians of clean runs; "
        f"best window against best window: {report['speedup_best']:.2f}×; target ≥ 1.6×).",
        "",
    ]
    paired = report.get("paired", {})
    if paired.get("ratios"):
        lines += [
            f"Paired by round (pipeline and single_1t runs of the same round, both clean; steady state): median "
            f"{paired['median']:.2f}×, range {paired['min']:.2f}–{paired['max']:.2f}× over {len(paired['ratios'])} "
            "rounds. The machine's speed drifts between rounds by more than the pipeline's overheads, which is "
            "why runs are interleaved and compared round by round.",
            "",
        ]
    lines += [
        "*Steady state*: images/s between the first and the last batch the last stage finishes — an epoch pays "
        "the pipeline's fill and drain once (e.g. 782 batches of 64 per CIFAR-10 epoch), this window once "
        f"per {s['batches']} batches. *Whole window*: from the first measured batch to the last, fill and "
        "drain included. Both are measured the same way for every variant.",
        "",
    ]
    if "pipeline" in report["variants"]:
        ranks = report["variants"]["pipeline"]["runs"][0]["ranks"]
        lines.append("Per rank (first pipeline run): " + "; ".join(
            f"rank {r['rank']} modules {r['modules'][0]}-{r['modules'][1]}: compute {r['compute_s']:.1f} s, "
            f"waiting for input {r['wait_in_s']:.1f} s, for the next stage {r['wait_out_s']:.1f} s of {r['time_s']:.1f} s"
            for r in ranks
        ) + ".")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="clean runs wanted per variant")
    parser.add_argument("--max-rounds", type=int, default=25, help="rounds of runs at most")
    parser.add_argument("--variants", default="single_1t,pipeline,pipeline_sync,single_Nt")
    parser.add_argument("--idle", type=float, default=0.1, help="wait for the machine to be at most this busy")
    parser.add_argument("--clean", type=float, default=0.05, help="largest CPU share of others in a clean run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pipeline.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    net = make_net()
    wait_for_idle(args.idle)
    costs = measure_module_costs(net, batch_size=args.batch_size, image_size=32, repeats=3)
    assignment = assign_modules(net, args.ranks, "balanced", costs=costs)
    load_before = [round(x, 2) for x in os.getloadavg()]
    names = args.variants.split(",")
    results: dict[str, list[dict]] = {name: [] for name in names}
    def clean_runs(name: str) -> int:
        return sum(r["foreign_cpu_share"] <= args.clean for r in results[name])

    for round_ in range(args.max_rounds):  # every variant each round (pairs), until all have enough clean runs
        if all(clean_runs(name) >= args.repeats for name in names):
            break
        for name in names:
            r = run_variant(name, args, assignment)
            r["round"] = round_ + 1
            results[name].append(r)
            print(
                f"round {round_ + 1} {name:14s} {r['steady_images_per_s']:7.1f} images/s steady, "
                f"{r['images_per_s']:7.1f} whole window (others used "
                f"{100 * r['foreign_cpu_share']:.0f}% of the CPU; clean runs {clean_runs(name)}/{args.repeats})",
                file=sys.stderr, flush=True,
            )
    command = " ".join(argv if argv is not None else sys.argv[1:])
    report = {
        "setting": {
            "net": NET, "ranks": args.ranks, "batch_size": args.batch_size, "batches": args.batches,
            "warmup": args.warmup, "repeats": args.repeats, "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "assignment": [[r.start, r.stop - 1] for r in assignment],
            "module_costs_s": [round(c, 3) for c in costs], "load_before": load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()], "clean": args.clean, "command": command,
        },
        "variants": {name: summarize(runs, args.clean) for name, runs in results.items()},
    }
    v = report["variants"]
    if "pipeline" in v and "single_1t" in v:
        report["paired"] = paired_ratios(results["pipeline"], results["single_1t"], args.clean)
        report["speedup"] = v["pipeline"]["median_images_per_s"] / v["single_1t"]["median_images_per_s"]
        report["speedup_steady"] = (
            v["pipeline"]["median_steady_images_per_s"] / v["single_1t"]["median_steady_images_per_s"]
        )
        report["speedup_best"] = v["pipeline"]["best_images_per_s"] / v["single_1t"]["best_images_per_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if "speedup" in report:
        args.out.with_suffix(".md").write_text(markdown(report))
    print(json.dumps({k: round(x["median_steady_images_per_s"], 1) for k, x in v.items()}))
    if "speedup" in report:
        print(
            f"pipeline speed-up: {report['speedup_steady']:.2f}x steady state, {report['speedup']:.2f}x whole window "
            f"(best window against best window {report['speedup_best']:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
