"""Is data loading a bottleneck? Times BatchLoader (training augmentation: crop, flip, normalise) against a
ResNet-32 forward+backward pass at the papers' batch sizes (docs/methods.md §7), on synthetic uint8 images;
and an image folder's decoding (``decode_images``) in one thread against ``decode_threads()`` threads, on
photo-sized JPEGs written here, in interleaved rounds.

    python benchmarks/data_loading.py [--threads N] [--out results.json]

Reports medians after a warm-up; the ratio is the share of a training step the loader would cost if it
ran synchronously (the default loader prefetches in a background thread, hiding most of it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import torch
from torch import nn

from locallearn.data import BatchLoader, get_spec
from locallearn.data import imagefolder


def resnet32(num_classes: int = 10) -> nn.Module:
    """The CIFAR ResNet-32 of He et al. (3 stages × 5 basic blocks, 16/32/64 channels), for timing only."""

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
            )
            self.skip = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout else nn.Identity()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.skip(x))

    stem = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
    layers: list[nn.Module] = list(stem)
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(5):
            layers.append(Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def time_loader(name: str, batch_size: int, batches: int, prefetch: int) -> list[float]:
    """Seconds per batch, measured over whole epochs of ``batches`` batches (first epoch discarded)."""
    spec = get_spec(name)
    s = spec.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size * batches, 3, s, s), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, spec.num_classes, (len(images),), generator=g)
    loader = BatchLoader(
        images, labels, spec=spec, batch_size=batch_size, train=True, seed=0, prefetch=prefetch
    )
    times = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        start = time.perf_counter()
        for _ in loader:
            pass
        if epoch:  # epoch 0 is the warm-up
            times.append((time.perf_counter() - start) / batches)
    return times


def time_step(name: str, batch_size: int, repeats: int) -> list[float]:
    """Seconds per ResNet-32 forward + backward + SGD step on one batch."""
    spec = get_spec(name)
    model = resnet32(spec.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch_size, 3, spec.image_size, spec.image_size)
    y = torch.randint(0, spec.num_classes, (batch_size,))
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if i:  # the first step is the warm-up
            times.append(time.perf_counter() - start)
    return times


def time_decoding(files: int, sizes: tuple[int, ...], rounds: int) -> list[dict]:
    """Images/s of ``decode_images`` over ``files`` 500×375 JPEGs (a photograph's size; smooth gradients
    and noise, quality 90) at each output size, one thread against ``decode_threads()``, alternating in
    ``rounds`` rounds after one warm-up round of each; and whether both gave the same bytes."""
    from PIL import Image

    threads = imagefolder.decode_threads()
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(files):
            ramp = np.linspace(0, 200, 500)[None, :, None] + rng.integers(0, 40, (375, 500, 3))
            paths.append(Path(tmp) / f"{i}.jpg")
            Image.fromarray(ramp.astype(np.uint8)).save(paths[-1], quality=90)
        real = imagefolder.decode_threads
        try:
            for size in sizes:
                times: dict[int, list[float]] = {1: [], threads: []}
                decoded = {}
                for r in range(rounds + 1):
                    for n in times:
                        imagefolder.decode_threads = lambda n=n: n
                        start = time.perf_counter()
                        decoded[n] = np.stack(list(imagefolder.decode_images(paths, size)))
                        if r:  # round 0 is the warm-up
                            times[n].append(time.perf_counter() - start)
                one, many = statistics.median(times[1]), statistics.median(times[threads])
                results.append({
                    "decode_size": size, "files": files, "decode_threads": threads,
                    "one_thread_images_per_s": files / one, "threads_images_per_s": files / many,
                    "speedup": one / many, "same_bytes": bool(np.array_equal(decoded[1], decoded[threads])),
                })
                r = results[-1]
                print(f"decoding {files} JPEGs 500×375 → {size}: 1 thread {r['one_thread_images_per_s']:6.0f} "
                      f"images/s, {threads} threads {r['threads_images_per_s']:6.0f} images/s "
                      f"({r['speedup']:.2f}×; same bytes: {r['same_bytes']})")
        finally:
            imagefolder.decode_threads = real
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--batches", type=int, default=10, help="batches per loader epoch")
    parser.add_argument("--steps", type=int, default=2, help="timed ResNet-32 steps")
    parser.add_argument("--decode-files", type=int, default=400, help="JPEGs of the decoding part (0: skip it)")
    parser.add_argument("--decode-rounds", type=int, default=5, help="interleaved rounds of the decoding part")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = []
    for name, batch_size in (("cifar10", 1024), ("stl10", 128)):
        sync = statistics.median(time_loader(name, batch_size, args.batches, prefetch=0))
        ahead = statistics.median(time_loader(name, batch_size, args.batches, prefetch=2))
        step = statistics.median(time_step(name, batch_size, args.steps))
        results.append({
            "dataset": name, "batch_size": batch_size, "threads": torch.get_num_threads(),
            "loader_ms_per_batch": 1e3 * sync, "loader_prefetch_ms_per_batch": 1e3 * ahead,
            "loader_images_per_s": batch_size / sync, "loader_batches_per_s": 1 / sync,
            "resnet32_step_ms": 1e3 * step, "loader_share_of_step": sync / (sync + step),
        })
        r = results[-1]
        print(
            f"{name:8s} batch {batch_size:5d}: loader {r['loader_ms_per_batch']:7.1f} ms/batch "
            f"({r['loader_batches_per_s']:6.1f} batches/s, {r['loader_images_per_s']:9.0f} images/s; "
            f"prefetching {r['loader_prefetch_ms_per_batch']:.1f} ms/batch) | ResNet-32 step "
            f"{r['resnet32_step_ms']:8.0f} ms | loader share {100 * r['loader_share_of_step']:.2f}%"
        )
    if args.decode_files:
        results += time_decoding(args.decode_files, (32, 224), args.decode_rounds)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
