"""Does ``--compile`` pay? Step time of a compiled ``LocalNet`` (``training.runner.compile_parts``) against the
same network eager, timed interleaved in one process: eager and compiled steps alternate (order swapped
every round), so drift in a shared machine's load falls on both alike.

    python benchmarks/compile_speed.py [--models resnet32,resnet110] [--num-modules 4,16] [--contexts R0,R1E]
        [--batch-size 64] [--rounds 15] [--threads 1] [--out benchmarks/results/compile_speed]

Each configuration runs in a fresh process with an empty Inductor cache (``TORCHINDUCTOR_CACHE_DIR``), so
``compile_s`` is a cold compile: the first compiled step (every training graph is compiled there) less a
median compiled step. Reported per row: median seconds per step of each, their ratio (compiled ÷ eager;
below 1 is a speed-up), the median of the per-round ratios, the ratio of the median CPU seconds of
the timing thread (``time.thread_time``: with one thread, what the step computed, less sensitive than
wall time to other processes on the machine), the graphs Dynamo compiled (after the first
compiled step and at the end: equal means no recompilation while timing), and the largest relative
difference of the first steps' losses (both nets start from the same weights and see the same batches).
Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def measure(
    model: str, num_modules: int, context: str, *, batch_size: int, rounds: int, threads: int, channels_last: bool
) -> dict:
    """One configuration, in this process (``--one``)."""
    import torch
    from torch._dynamo.utils import counters

    import locallearn as ll
    from locallearn.training.runner import compile_parts

    torch.set_num_threads(threads)
    kinds = ["eager", "compiled"] + (["eager_channels_last"] if channels_last else [])
    nets, optimizers = [], []
    for kind in kinds:
        torch.manual_seed(0)
        net = ll.build(model, method="contsup", num_modules=num_modules, context=context, dataset="cifar10")
        if kind == "eager_channels_last":
            net = net.to(memory_format=torch.channels_last)
        optimizers.append(torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4))
        if kind == "compiled":
            compile_parts(net)
        nets.append(net)
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, 10, (batch_size,), generator=g))
        for _ in range(4)
    ]

    def step(i: int, which: int) -> tuple[float, float, float]:
        """Wall seconds, this thread's CPU seconds and the loss of one step of ``kinds[which]``."""
        images, labels = batches[i % len(batches)]
        start, cpu = time.perf_counter(), time.thread_time()
        loss = float(ll.train_step(nets[which], images, labels, optimizers[which], checked=False)["loss"])
        return time.perf_counter() - start, time.thread_time() - cpu, loss

    losses: list[list[float]] = [[] for _ in kinds]
    first_compiled, _, loss = step(0, 1)  # every training graph is compiled here
    losses[1].append(loss)
    graphs_after_compile = counters["stats"]["unique_graphs"]
    for which in range(len(kinds)):
        if which != 1:
            losses[which].append(step(0, which)[2])
    for i in (1, 2):  # warm-up, and the losses of three steps
        for which in range(len(kinds)):
            losses[which].append(step(i, which)[2])
    wall: list[list[float]] = [[] for _ in kinds]
    cpu: list[list[float]] = [[] for _ in kinds]
    order = list(range(len(kinds)))
    for r in range(rounds):
        for which in (order if r % 2 == 0 else order[::-1]):
            w, c, _ = step(3 + r, which)
            wall[which].append(w)
            cpu[which].append(c)
    eager, compiled = (statistics.median(t) for t in wall[:2])
    eager_cpu, compiled_cpu = (statistics.median(t) for t in cpu[:2])
    row = {
        "model": model, "num_modules": num_modules, "context": context, "batch_size": batch_size,
        "threads": threads, "rounds": rounds,
        "eager_s": eager, "compiled_s": compiled, "ratio": compiled / eager,
        "median_round_ratio": statistics.median(c / e for e, c in zip(wall[0], wall[1])),
        "eager_cpu_s": eager_cpu, "compiled_cpu_s": compiled_cpu, "cpu_ratio": compiled_cpu / eager_cpu,
        "compile_s": first_compiled - compiled,
        "graphs_after_compile": graphs_after_compile, "graphs_at_end": counters["stats"]["unique_graphs"],
        "loss_rel_diff": max(abs(a - b) / abs(a) for a, b in zip(losses[0], losses[1])),
        "torch": torch.__version__,
    }
    if channels_last:  # a reference: eager in the memory format Inductor picks for convolutions
        row["channels_last_cpu_ratio"] = statistics.median(cpu[2]) / eager_cpu
        row["channels_last_loss_rel_diff"] = max(abs(a - b) / abs(a) for a, b in zip(losses[0], losses[2]))
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet32,resnet110")
    parser.add_argument("--num-modules", default="4,16")
    parser.add_argument("--contexts", default="R0,R1E")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true",
                        help="also time eager training in channels-last memory format (a reference)")
    parser.add_argument("--out", default="benchmarks/results/compile_speed")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # JSON of one configuration, run in this process
    args = parser.parse_args(argv)
    if args.one:
        options = dict(batch_size=args.batch_size, rounds=args.rounds, threads=args.threads)
        print(json.dumps(measure(**json.loads(args.one), **options, channels_last=args.channels_last)))
        return
    rows = []
    for model in args.models.split(","):
        for k in (int(k) for k in args.num_modules.split(",")):
            for context in args.contexts.split(","):
                one = json.dumps(dict(model=model, num_modules=k, context=context))
                with tempfile.TemporaryDirectory() as cache:  # a cold compile for every configuration
                    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                    command = [sys.executable, __file__, "--one", one, f"--batch-size={args.batch_size}",
                               f"--rounds={args.rounds}", f"--threads={args.threads}"]
                    command += ["--channels-last"] if args.channels_last else []
                    done = subprocess.run(command, env=env, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{one} failed:\n{done.stderr[-3000:]}")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(render([rows[-1]]).splitlines()[-1], flush=True)
    with open(f"{args.out}.json", "w") as f:
        json.dump(rows, f, indent=1)
    with open(f"{args.out}.md", "w") as f:
        f.write(render(rows) + "\n")
    print(render(rows))


def render(rows: list[dict]) -> str:
    lines = [
        "| model | K | context | eager s/step | compiled s/step | compiled ÷ eager | median round ratio "
        "| CPU-time ratio | compile s | graphs | loss rel. diff | eager channels-last CPU-time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        graphs = str(r["graphs_after_compile"])
        if r["graphs_at_end"] != r["graphs_after_compile"]:
            graphs += f" → {r['graphs_at_end']}"  # compiled again while timing
        channels_last = f"{r['channels_last_cpu_ratio']:.3f}" if "channels_last_cpu_ratio" in r else "n/a"
        lines.append(
            f"| {r['model']} | {r['num_modules']} | {r['context']} | {r['eager_s']:.3f} | {r['compiled_s']:.3f} "
            f"| {r['ratio']:.3f} | {r['median_round_ratio']:.3f} | {r['cpu_ratio']:.3f} | {r['compile_s']:.0f} "
            f"| {graphs} | {r['loss_rel_diff']:.1e} | {channels_last} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
