"""One training step of every method, pinned: the numbers a refactor or a speed-up must not move.

Each case builds a network, runs one ``train_step`` (SGD with momentum and weight decay) on a fixed batch
and records a fingerprint of everything the step computes: every metric it returns, and for every
parameter its gradient and its value after the step, and every buffer (BatchNorm statistics) after the
step. A tensor's fingerprint is (sum, sum of |t|, L2 norm, dot with a fixed random vector): cheap to
store, and any change of one element beyond rounding moves the last two.

Two pins, one thread:

- **float64** (``data/step_parity/float64.json``), on every machine: the same step with every tensor in
  float64. Its rounding (1e-16) stays far below the tolerance however a CPU orders its sums, so it holds on
  any CPU and pins the arithmetic itself: any change of an operation, its order, an initialisation, a
  constant shows.
- **float32** (``data/step_parity/float32-<platform>.json``), the bits a run computes, on the platform
  (architecture, CPU vendor, the SIMD level PyTorch dispatches to, torch version) they were recorded on. A
  float32 step is not the same on another CPU: its kernels sum in other orders, and one step of BatchNorm
  training on a batch of 8 turns that rounding into differences of up to 4e-3 of a gradient's size
  (measured between two machines of this project), so elsewhere this pin is skipped, saying so.

    python tests/step_parity.py                 # compare with the pins (float32: where this platform has one)
    python tests/step_parity.py --pin-platform  # record this platform's float32 bits, if the float64 pin holds
    python tests/step_parity.py --write         # regenerate both (only for a deliberate change of the numbers)

``tests/test_step_parity.py`` runs the comparison in the suite, relative tolerance 1e-6 (float32) and 1e-9
(float64).
"""

from __future__ import annotations

import contextlib
import json
import platform
import re
import sys
from pathlib import Path

import torch

import locallearn as ll

PINS = Path(__file__).parent / "data" / "step_parity"
FLOAT64 = PINS / "float64.json"
RTOL = {torch.float32: 1e-6, torch.float64: 1e-9}
TINY_SWIN = dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=2, drop_path_rate=0.0)

# name → (model, method, options, batch size). 32×32 CIFAR-10-sized inputs, so λ tables apply.
CASES: dict[str, tuple[str, str, dict, int]] = {
    "e2e": ("resnet32", "e2e", dict(dataset="cifar10"), 8),
    "checkpoint": ("resnet32", "checkpoint", dict(dataset="cifar10"), 8),
    "greedy_k4": ("resnet32", "greedy", dict(num_modules=4, dataset="cifar10"), 8),
    "dgl_k4": ("resnet32", "dgl", dict(num_modules=4, dataset="cifar10"), 8),
    "infopro_k4": ("resnet32", "infopro", dict(num_modules=4, dataset="cifar10"), 8),
    "infopro_k4_balanced": ("resnet110", "infopro", dict(num_modules=4, split="balanced", dataset="cifar10"), 4),
    "contsup_k4_R1E": ("resnet32", "contsup", dict(num_modules=4, dataset="cifar10"), 8),
    "contsup_k4_R1E_rec_contrast": (
        "resnet32", "contsup", dict(num_modules=4, reconstruct=True, local_loss="contrast", dataset="cifar10"), 8,
    ),
    "contsup_k16_R0": ("resnet32", "contsup", dict(num_modules=16, context="R0", dataset="cifar10"), 8),
    "contsup_k16_E": ("resnet32", "contsup", dict(num_modules=16, context="E", dataset="cifar10"), 8),
    "contsup_k16_R1": ("resnet32", "contsup", dict(num_modules=16, context="R1", dataset="cifar10"), 8),
    "contsup_k16_R1E": ("resnet32", "contsup", dict(num_modules=16, context="R1E", dataset="cifar10"), 8),
    "contsup_k8_R4E": ("resnet32", "contsup", dict(num_modules=8, context="R4E", dataset="cifar10"), 8),
    "contsup_k4_R1E_auto": ("resnet32", "contsup", dict(num_modules=4, split="auto", dataset="cifar10"), 8),
    "contsup_k3_R2_uniform": ("resnet20", "contsup", dict(num_modules=3, split="uniform", context="R2", image_size=16), 8),
    "featrecon_linear": ("swin_cifar", "featrecon", dict(num_modules=4, image_size=32, model_kwargs=TINY_SWIN), 4),
    "featrecon_conv_k2": (
        "swin_cifar", "featrecon", dict(num_modules=2, feature_decoder="conv", image_size=32, model_kwargs=TINY_SWIN), 4,
    ),
    "featrecon_transformer_balanced": (
        "swin_cifar", "featrecon",
        dict(num_modules=3, split="balanced", feature_decoder="transformer", image_size=32, model_kwargs=TINY_SWIN), 4,
    ),
    "infopro_swin": ("swin_cifar", "infopro", dict(num_modules=4, image_size=32, model_kwargs=TINY_SWIN), 4),
    "contsup_swin_R1E": ("swin_cifar", "contsup", dict(num_modules=4, image_size=32, model_kwargs=TINY_SWIN), 4),
}


def fingerprint(t: torch.Tensor) -> list[float]:
    x = t.detach().double().flatten()
    r = torch.randn(x.numel(), generator=torch.Generator().manual_seed(x.numel()), dtype=torch.float64)
    return [float(x.sum()), float(x.abs().sum()), float(x.norm()), float(x @ r)]


def run_case(name: str, dtype: torch.dtype = torch.float32) -> dict:
    model, method, options, batch = CASES[name]
    with default_dtype(dtype):  # parameters, buffers, the batch and every tensor the step makes
        torch.manual_seed(0)
        net = ll.build(model, method=method, **options)
        size = net.config.image_size or net.backbone.image_size
        g = torch.Generator().manual_seed(1)
        images = torch.randn(batch, net.backbone.in_channels, size, size, generator=g)
        labels = torch.arange(batch) % 3  # repeated classes: every anchor of the contrastive loss has positives
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
        stats = ll.train_step(net, images, labels, optimizer)
    assert all(p.dtype == dtype for p in net.parameters()), name
    buffers = {n for n, _ in net.named_buffers()}  # the persistent ones are in the state_dict
    return {
        "cuts": [list(c) for c in net.cuts],
        "metrics": {k: float(v) for k, v in sorted(stats.items())},
        "grads": {n: fingerprint(p.grad) for n, p in net.named_parameters() if p.grad is not None},
        "params": {n: fingerprint(p) for n, p in net.named_parameters()},
        "buffers": {n: fingerprint(b) for n, b in net.state_dict().items() if n in buffers and b.is_floating_point()},
    }


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def platform_key() -> str:
    """What float32 bits depend on: architecture, CPU vendor, PyTorch's SIMD dispatch level, torch version."""
    vendor = "unknown-vendor"
    with contextlib.suppress(OSError):
        found = re.search(r"^vendor_id\s*:\s*(\S+)", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        vendor = found[1] if found else vendor
    key = f"{platform.machine()}-{vendor}-{torch.backends.cpu.get_cpu_capability()}-torch{torch.__version__}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", key)


def float32_pin() -> Path:
    return PINS / f"float32-{platform_key()}.json"


def pin_for(dtype: torch.dtype) -> Path:
    return FLOAT64 if dtype == torch.float64 else float32_pin()


def differences(name: str, got: dict, want: dict, *, rtol: float) -> list[str]:
    """Human-readable differences between a case's fingerprints (empty: equal within ``rtol``).

    A tensor's entries are compared relative to its sum of |t|, which bounds each of them, and at least to
    1e-6 of the largest such sum in its section: a gradient that is zero in exact arithmetic (a convolution's
    bias before BatchNorm, attention's key bias) holds only rounding, 1e-17 of the others in float64, whose
    digits are the CPU's."""
    out = []
    if got["cuts"] != want["cuts"]:
        out.append(f"{name}: cuts {got['cuts']} != {want['cuts']}")
    for section in ("metrics", "grads", "params", "buffers"):
        g, w = got[section], want[section]
        if set(g) != set(w):
            out.append(f"{name}: {section} keys differ: {sorted(set(g) ^ set(w))[:5]}")
            continue
        floor = 1e-6 * max((v[1] for v in w.values()), default=0.0) if section != "metrics" else 0.0
        for key in w:
            a, b = g[key], w[key]
            if section == "metrics":
                a, b, scale = [a], [b], abs(b)
            else:
                scale = b[1]  # sum of |t|: bounds every entry of the fingerprint (up to |r|'s size)
            for x, y in zip(a, b):
                if abs(x - y) > rtol * max(abs(y), scale, floor, 1e-30):
                    out.append(f"{name}: {section} {key}: {a} != {b}")
                    break
    return out


def compare(dtype: torch.dtype) -> list[str]:
    want = json.loads(pin_for(dtype).read_text())
    return [d for name in CASES for d in differences(name, run_case(name, dtype), want[name], rtol=RTOL[dtype])]


def write(dtype: torch.dtype) -> None:
    PINS.mkdir(parents=True, exist_ok=True)
    pin_for(dtype).write_text(json.dumps({name: run_case(name, dtype) for name in CASES}, indent=0, sort_keys=True) + "\n")
    print(f"wrote {pin_for(dtype)}")


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    if "--write" in argv:
        write(torch.float64)
        write(torch.float32)
        return 0
    problems = compare(torch.float64)
    if "--pin-platform" in argv:
        if problems:
            print("\n".join(problems) + "\nthe float64 pin does not hold: this platform's float32 bits are not pinned.")
            return 1
        write(torch.float32)
        return 0
    if float32_pin().is_file():
        problems += compare(torch.float32)
    else:
        print(f"float32: no pin for this platform ({platform_key()}); `--pin-platform` records one")
    print("\n".join(problems) or "all cases equal")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
