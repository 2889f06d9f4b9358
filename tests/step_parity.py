"""One training step of every method, pinned: the numbers a refactor or a speed-up must not move.

Each case builds a network, runs one ``train_step`` (SGD with momentum and weight decay) on a fixed batch
and records a fingerprint of everything the step computes: every metric it returns, and for every
parameter its gradient and its value after the step, and every buffer (BatchNorm statistics) after the
step. A tensor's fingerprint is (sum, sum of |t|, L2 norm, dot with a fixed random vector): cheap to
store, and any change of one element beyond rounding moves the last two.

    python tests/step_parity.py            # compare with tests/data/step_parity.json
    python tests/step_parity.py --write    # regenerate it (only for a deliberate change of the numbers)

``tests/test_step_parity.py`` runs the comparison in the suite, one thread, relative tolerance 1e-6.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import locallearn as ll

REFERENCE = Path(__file__).parent / "data" / "step_parity.json"
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


def run_case(name: str) -> dict:
    model, method, options, batch = CASES[name]
    torch.manual_seed(0)
    net = ll.build(model, method=method, **options)
    size = net.config.image_size or net.backbone.image_size
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, net.backbone.in_channels, size, size, generator=g)
    labels = torch.arange(batch) % 3  # repeated classes: every anchor of the contrastive loss has positives
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    stats = ll.train_step(net, images, labels, optimizer)
    buffers = {n for n, _ in net.named_buffers()}  # the persistent ones are in the state_dict
    return {
        "cuts": [list(c) for c in net.cuts],
        "metrics": {k: float(v) for k, v in sorted(stats.items())},
        "grads": {n: fingerprint(p.grad) for n, p in net.named_parameters() if p.grad is not None},
        "params": {n: fingerprint(p) for n, p in net.named_parameters()},
        "buffers": {n: fingerprint(b) for n, b in net.state_dict().items() if n in buffers and b.is_floating_point()},
    }


# Names the reference was pinned under, before local objectives became modules: aux_heads.k.* is now
# objectives.k.head.*, and likewise for the image and feature decoders.
_RENAMED = {"aux_heads": "head", "image_decoders": "image_decoder", "feature_decoders": "feature_decoder"}


_CONSTANTS = ("image_mean", "image_std")  # non-persistent buffers the reference recorded; not training state


def current_name(name: str) -> str:
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] in _RENAMED:
        return f"objectives.{parts[1]}.{_RENAMED[parts[0]]}.{parts[2]}"
    return name


def differences(name: str, got: dict, want: dict, *, rtol: float = 1e-6) -> list[str]:
    """Human-readable differences between a case's fingerprints (empty: equal within ``rtol``)."""
    want = {section: {current_name(k): v for k, v in value.items() if k not in _CONSTANTS}
            if isinstance(value, dict) else value for section, value in want.items()}
    out = []
    if got["cuts"] != want["cuts"]:
        out.append(f"{name}: cuts {got['cuts']} != {want['cuts']}")
    for section in ("metrics", "grads", "params", "buffers"):
        g, w = got[section], want[section]
        if set(g) != set(w):
            out.append(f"{name}: {section} keys differ: {sorted(set(g) ^ set(w))[:5]}")
            continue
        for key in w:
            a, b = g[key], w[key]
            if section == "metrics":
                a, b, scale = [a], [b], abs(b)
            else:
                scale = b[1]  # sum of |t|: bounds every entry of the fingerprint (up to |r|'s size)
            for x, y in zip(a, b):
                if abs(x - y) > rtol * max(abs(y), scale, 1e-30):
                    out.append(f"{name}: {section} {key}: {a} != {b}")
                    break
    return out


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    results = {name: run_case(name) for name in CASES}
    if "--write" in argv:
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE.write_text(json.dumps(results, indent=0, sort_keys=True) + "\n")
        print(f"wrote {REFERENCE}")
        return 0
    want = json.loads(REFERENCE.read_text())
    problems = [d for name in CASES for d in differences(name, results[name], want[name])]
    print("\n".join(problems) or "all cases equal")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
