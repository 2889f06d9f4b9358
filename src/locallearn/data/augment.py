"""The papers' training augmentation on tensors, vectorised over the batch (docs/methods.md §7): pad by ``pad``
pixels (reflected for CIFAR, zeros for SVHN and STL-10), take a random S×S crop, optionally flip it
horizontally. It works on whole batches of any dtype, so the loader runs it on uint8 (4× less memory
traffic than float) before normalising; padding uint8 zeros is padding the [0, 1] image with 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_params(
    n: int, *, pad: int, flip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image crop offsets ``top, left`` in [0, 2·pad] (of the padded image) and flip flags, each (n,)."""
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return top, left, flips


def crop_flip(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    *,
    pad: int,
    pad_mode: str,
) -> torch.Tensor:
    """Crop each image of ``x`` (B, C, S, S) at ``(top, left)`` of its ``pad``-padded version, then mirror
    it where ``flip``; returns (B, C, S, S). Equal to padding, cropping and flipping image by image."""
    b, c, s, s2 = x.shape
    if s != s2:
        raise ValueError(f"crop_flip needs square images, got {s}×{s2}.")
    device = x.device
    top, left, flip = top.to(device), left.to(device), flip.to(device)
    ramp = torch.arange(s, device=device)
    rows = top[:, None] + ramp  # (B, S), coordinates in the padded image
    # A flipped crop reads its columns right to left: out[:, j] = crop[:, S-1-j].
    cols = left[:, None] + torch.where(flip[:, None], s - 1 - ramp, ramp)  # (B, S)
    if pad_mode == "reflect":
        # Map padded coordinates straight back to source pixels: no padded copy of the batch is made.
        source, width = x, s
        reflect = _reflect_index(s, pad, device)
        rows, cols = reflect[rows], reflect[cols]
    else:
        source, width = pad_images(x, pad, pad_mode), s + 2 * pad  # zeros: pad, then index the padded batch
    index = (rows[:, :, None] * width + cols[:, None, :]).view(b, 1, s * s)  # (B, 1, S·S) into a flat image
    # One gather reads every output pixel from its source; the index is shared by the channels.
    flat = source.reshape(b, c, width * width)
    return flat.gather(2, index.expand(b, c, s * s)).view(b, c, s, s)


def pad_images(x: torch.Tensor, pad: int, pad_mode: str) -> torch.Tensor:
    """Pad the last two dims of (B, C, H, W) by ``pad``: "zeros" (black in the [0, 1] image) or "reflect"
    (mirrored about the border pixel, without repeating it, as numpy's and torch's "reflect")."""
    if pad_mode == "zeros":
        return F.pad(x, (pad, pad, pad, pad))
    if pad_mode == "reflect":  # by indexing, since torch's reflection padding takes no integer tensors
        h, w = x.shape[-2:]
        x = x.index_select(-2, _reflect_index(h, pad, x.device))
        return x.index_select(-1, _reflect_index(w, pad, x.device))
    raise ValueError(f"unknown pad_mode {pad_mode!r}; valid: reflect, zeros.")


def _reflect_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Source index of each position of a reflect-padded axis of length n: -1 → 1, n → n-2."""
    if pad > n - 1:
        raise ValueError(f"reflect padding of {pad} needs images larger than {pad} pixels, got {n}.")
    i = torch.arange(-pad, n + pad, device=device).abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)
