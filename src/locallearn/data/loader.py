"""`BatchLoader`: the in-memory training/test batch iterator. The whole uint8 dataset sits in one tensor
(CIFAR-10 is 150 MB), so a batch is one gather, one vectorised crop/flip and one fused normalisation,
with no worker processes. All randomness of an epoch (order, crops, flips) is drawn up front from a
generator seeded by (seed, epoch), so epoch e is identical however the run got there: a resumed run sees
exactly the batches an uninterrupted one would, and the background prefetch thread cannot change them.
"""

from __future__ import annotations

import functools
import hashlib
import math
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from locallearn.data.augment import crop_flip, random_crop_params
from locallearn.data.specs import DatasetSpec

Batch = tuple[torch.Tensor, torch.Tensor]  # normalised float32 (B, C, S, S), int64 labels (B,)


class BatchLoader:
    """Batches of (normalised images, labels); training batches are shuffled and augmented.

    Call ``set_epoch(e)`` before iterating epoch e (as with DistributedSampler): without it every
    iteration repeats epoch 0. ``prefetch`` batches are prepared ahead in a background thread (0: none);
    ``device`` keeps the uint8 dataset there and augments on it (e.g. "cuda": 4× less host→device copying).
    In training, a last batch of a single image is dropped (BatchNorm needs two samples); otherwise the
    last partial batch is kept unless ``drop_last``.
    """

    def __init__(
        self,
        images_uint8: torch.Tensor,
        labels: torch.Tensor,
        *,
        spec: DatasetSpec,
        batch_size: int,
        train: bool,
        seed: int,
        drop_last: bool = False,
        prefetch: int = 2,
        device: torch.device | str | None = None,
    ) -> None:
        c, s = spec.channels, spec.image_size
        if images_uint8.dtype != torch.uint8 or images_uint8.shape[1:] != (c, s, s):
            raise ValueError(
                f"BatchLoader: images must be uint8 (N, {c}, {s}, {s}) for {spec.name}, got "
                f"{images_uint8.dtype} {tuple(images_uint8.shape)}."
            )
        if labels.dtype != torch.int64 or labels.shape != (len(images_uint8),):
            raise ValueError(
                f"BatchLoader: labels must be int64 ({len(images_uint8)},), "
                f"got {labels.dtype} {tuple(labels.shape)}."
            )
        if batch_size < 1:
            raise ValueError(f"BatchLoader: batch_size must be >= 1, got {batch_size}.")
        if prefetch < 0:
            raise ValueError(f"BatchLoader: prefetch must be >= 0, got {prefetch}.")
        if drop_last and len(images_uint8) < batch_size:
            raise ValueError(
                f"BatchLoader: drop_last with {len(images_uint8)} images and batch_size {batch_size} "
                "gives no batch."
            )
        self.device = torch.device(device) if device is not None else images_uint8.device
        self.images = images_uint8.to(self.device)
        self.labels = labels.to(self.device)
        self.spec = spec
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.epoch = 0
        # (x/255 - mean)/std = x·scale + shift, one fused op on the uint8 → float conversion.
        std = torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)  # (1, C, 1, 1)
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @functools.cached_property
    def fingerprint(self) -> str:
        """The split as held, in 16 hex digits (of the SHA-256 of its shape, its uint8 pixels, then its labels): the
        same for the same images in the same order, another for a changed pixel, label, count or order. A run
        records its splits' (``train_data``, ``test_data``), so that a resume or an evaluation on other data says
        so even where the count is the same (a file replaced, another copy, the same files decoded otherwise).
        Computed once, on the first call (about a second per GB)."""
        digest = hashlib.sha256(repr(tuple(self.images.shape)).encode())
        for tensor in (self.images, self.labels):
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).reshape(-1).numpy())
        return digest.hexdigest()[:16]

    def __len__(self) -> int:
        n = len(self.images)
        if self.drop_last:
            return n // self.batch_size
        if self.train and n > 1 and n % self.batch_size == 1:
            # A last training batch of one image is dropped: BatchNorm (backbones, DGL's BatchNorm1d heads)
            # cannot normalise a single sample. That image is still seen in other epochs (reshuffled).
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        plan = self._plan(self.epoch)
        batches = (self._batch(plan, i) for i in range(len(self)))
        return _prefetched(batches, self.prefetch) if self.prefetch else batches

    def _plan(self, epoch: int) -> tuple[torch.Tensor, ...]:
        """Order, crop offsets and flips of every position of the epoch; depends only on (seed, epoch)."""
        n = len(self.images)
        if not self.train:
            return (torch.arange(n),)
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        order = torch.randperm(n, generator=generator)
        top, left, flip = random_crop_params(n, pad=self.spec.pad, flip=self.spec.flip, generator=generator)
        return order, top, left, flip

    def _batch(self, plan: tuple[torch.Tensor, ...], i: int) -> Batch:
        window = slice(i * self.batch_size, (i + 1) * self.batch_size)
        index = plan[0][window].to(self.device)
        x = self.images.index_select(0, index)  # (B, C, S, S) uint8
        if self.train:
            top, left, flip = (p[window] for p in plan[1:])
            x = crop_flip(x, top, left, flip, pad=self.spec.pad, pad_mode=self.spec.pad_mode)
        # Normalising is the last step: the augmented [0, 1] image is spec.denormalize(batch).
        x = torch.addcmul(self._shift, x.to(torch.float32), self._scale)
        return x, self.labels.index_select(0, index)


def _mix(seed: int, epoch: int) -> int:
    """A 64-bit generator seed from (seed, epoch); SeedSequence hashing keeps nearby pairs independent."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])


_DONE = object()


def _prefetched(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run ``batches`` in a background thread, ``depth`` items ahead (torch ops release the GIL, so the
    augmentation overlaps the training step). Errors re-raise in the consumer; abandoning the iterator
    stops the thread."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            put(err)
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="locallearn-prefetch", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
