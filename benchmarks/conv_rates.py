"""How fast does this machine run each convolution of a training step? Multiply-adds per second of every
distinct convolution of one ``train_step``, by the role it plays: backbone, auxiliary head, or ContSup's
image or residual encoders.

    python benchmarks/conv_rates.py [--model resnet32] [--num-modules 16] [--context E] [--batch-size 64]
        [--rounds 15] [--threads 1] [--out benchmarks/results/conv_rates]

The convolutions are found by running one training step with forward hooks on every ``nn.Conv2d`` (its
input shape, whether the step needs the gradient of its input). Each distinct (role, shape) is then
timed alone, forward (``F.conv2d``) and backward (``aten.convolution_backward`` with the gradients the
step needs: the weight's always, the input's unless it is the image or a detached hand-off), in
interleaved rounds; reported: the median milliseconds, multiply-adds per second, calls per step, and per
role the time a step spends in convolutions and at what rate. A role whose rate is well below the
backbone's pays for its arithmetic more than the FLOP count says (``benchmarks/README.md``). Writes
``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import locallearn as ll
from locallearn.bench.runner import RunOptions, environment
from locallearn.bench.report import meta_lines, row_md
from locallearn.engine import train_step

ROLES = (("context.image_encoders", "image encoder"), ("context.res_encoders", "residual encoder"),
         ("objectives", "head"), ("backbone", "backbone"))


def role_of(name: str) -> str:
    return next((role for prefix, role in ROLES if name.startswith(prefix)), "other")


def step_convolutions(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[tuple, int]:
    """(role, in_shape, weight shape, stride, padding, bias, input_grad) → calls in one training step."""
    calls: dict[tuple, int] = {}

    def hook(name):
        def record(conv, args, _out):
            x = args[0]
            key = (role_of(name), tuple(x.shape), tuple(conv.weight.shape), conv.stride, conv.padding,
                   conv.bias is not None, x.requires_grad)
            calls[key] = calls.get(key, 0) + 1
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    try:
        train_step(net, images, labels, optimizer, checked=False)
    finally:
        for h in handles:
            h.remove()
    return calls


# A result freed at once and allocated again next call is, for glibc's malloc, memory given back to the
# system and faulted in again: a (64, 16, 32, 32) 1×1 convolution timed that way took 8–11 ms on this
# machine, 2.6 ms with its last results kept and 1.2 ms inside a training step (torch.profiler). Keeping
# the last few results alive, as a step keeps its activations, measures the kernels rather than the pages.
KEEP = 8


def time_convolutions(calls: dict[tuple, int], rounds: int) -> list[dict]:
    cases = []
    for key, n in calls.items():
        role, x_shape, w_shape, stride, padding, bias, input_grad = key
        x, w = torch.randn(x_shape), torch.randn(w_shape)
        b = torch.randn(w_shape[0]) if bias else None
        y = F.conv2d(x, w, b, stride, padding)
        grad = torch.randn_like(y)
        mask = [input_grad, True, bias]
        fwd = lambda x=x, w=w, b=b, s=stride, p=padding: F.conv2d(x, w, b, s, p)  # noqa: E731
        bwd = lambda g=grad, x=x, w=w, s=stride, p=padding, m=mask: torch.ops.aten.convolution_backward(  # noqa: E731
            g, x, w, None, list(s), list(p), [1, 1], False, [0, 0], 1, m)
        macs = y.numel() * w_shape[1] * w_shape[2] * w_shape[3]  # per output element: C_in · k_h · k_w
        cases.append(dict(role=role, input=list(x_shape), weight=list(w_shape), stride=list(stride), input_grad=input_grad,
                          calls_per_step=n, macs=macs, backward_macs=macs * (2 if input_grad else 1), fwd=fwd, bwd=bwd,
                          fwd_s=[], bwd_s=[]))
    for case in cases:  # warm-up
        case["fwd"](), case["bwd"]()
    kept: list = []  # the last results stay alive, as a step's activations do (see below)
    for r in range(rounds):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for case in order:
            for kind in ("fwd", "bwd"):
                start = time.perf_counter()
                kept.append(case[kind]())
                case[f"{kind}_s"].append(time.perf_counter() - start)
                del kept[:-KEEP]
    rows = []
    for case in cases:
        fwd, bwd = statistics.median(case.pop("fwd_s")), statistics.median(case.pop("bwd_s"))
        del case["fwd"], case["bwd"]
        rows.append(dict(case, forward_ms=fwd * 1e3, backward_ms=bwd * 1e3,
                         forward_gmacs=case["macs"] / fwd / 1e9, backward_gmacs=case["backward_macs"] / bwd / 1e9,
                         step_ms=(fwd + bwd) * 1e3 * case["calls_per_step"]))
    return rows


def by_role(rows: list[dict]) -> list[dict]:
    out = []
    for role in dict.fromkeys(r["role"] for r in rows):
        mine = [r for r in rows if r["role"] == role]
        ms = sum(r["step_ms"] for r in mine)
        macs = sum((r["macs"] + r["backward_macs"]) * r["calls_per_step"] for r in mine)
        out.append(dict(role=role, step_ms=ms, gmacs=macs / ms / 1e6, macs_per_step=macs))
    return out


def markdown(rows: list[dict], roles: list[dict], meta: dict, title: str) -> str:
    lines = [f"## Convolution rates: {title}\n", meta_lines(meta),
             row_md(["role", "ms per step in convolutions", "multiply-adds per step", "GMAC/s"]), row_md(["---"] * 4)]
    lines += [row_md([r["role"], f"{r['step_ms']:.1f}", f"{r['macs_per_step'] / 1e9:.2f} G", f"{r['gmacs']:.1f}"])
              for r in roles]
    lines += ["", row_md(["role", "input", "weight", "stride", "input grad", "calls/step", "forward ms", "forward GMAC/s",
                          "backward ms", "backward GMAC/s"]), row_md(["---"] * 10)]
    for r in sorted(rows, key=lambda r: (r["role"], -r["step_ms"])):
        lines.append(row_md([r["role"], "×".join(map(str, r["input"])), "×".join(map(str, r["weight"])),
                             r["stride"][0], "yes" if r["input_grad"] else "no", r["calls_per_step"],
                             f"{r['forward_ms']:.2f}", f"{r['forward_gmacs']:.1f}", f"{r['backward_ms']:.2f}",
                             f"{r['backward_gmacs']:.1f}"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--num-modules", type=int, default=16)
    parser.add_argument("--context", default="E")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "conv_rates")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite OUT.md from OUT.json (the settings from its command line); run nothing")
    args = parser.parse_args(argv)
    if args.render_only:
        if not args.out.with_suffix(".json").is_file():
            parser.error(f"--render-only: {args.out.with_suffix('.json')} does not exist; run the script first")
        stored = json.loads(args.out.with_suffix(".json").read_text())
        ran = parser.parse_args(shlex.split(stored["meta"]["command"])[2:])
        args.out.with_suffix(".md").write_text(markdown(stored["rows"], stored["roles"], stored["meta"], _title(ran)))
        return 0
    options = RunOptions(threads=args.threads)
    options.apply()
    torch.manual_seed(0)
    net = ll.build(args.model, "contsup", num_modules=args.num_modules, context=args.context, dataset="cifar10")
    images = torch.randn(args.batch_size, net.backbone.in_channels, 32, 32)
    labels = torch.randint(0, net.config.num_classes, (args.batch_size,))
    rows = time_convolutions(step_convolutions(net, images, labels), args.rounds)
    roles = by_role(rows)
    meta = environment(options, " ".join(["python benchmarks/conv_rates.py", *(sys.argv[1:] if argv is None else argv)]))
    title = _title(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, roles=roles, rows=rows), indent=1) + "\n")
    text = markdown(rows, roles, meta, title)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


def _title(args: argparse.Namespace) -> str:
    return f"{args.model} ContSup {args.context} K={args.num_modules}, batch {args.batch_size}"


if __name__ == "__main__":
    raise SystemExit(main())
