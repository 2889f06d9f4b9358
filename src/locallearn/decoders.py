"""Decoders of the reconstruction objectives (docs/methods.md §4, §6).

``ImageDecoder`` is InfoPro's (and ContSup's ``h_reconstruct``): it reconstructs the un-normalised input
image, at the input's own channel count, from a module's output. ``FEATURE_DECODERS`` are FeatRecon's: each
maps a module's output back to the module's own input features. The paper names "3 commonly used decoder
structures" without code; ours are ``linear``, ``conv`` and ``transformer``. Every factory takes
(out_shape, in_shape), both (C, H, W), and returns a module mapping (B, C_out, H_out, W_out) to
(B, C_in, H_in, W_in). Decoders are training-only: the inference forward never runs them.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from locallearn.losses import at_least_float32
from locallearn.models.tokens import to_map, to_tokens
from locallearn.registry import Registry


class ImageDecoder(nn.Module):
    """Bilinear upsample to S×S (align_corners=True) → conv3x3(C → 12) → BN → ReLU → conv3x3(12 → C_img) →
    sigmoid, C_img the input image's channels (3 for RGB, 1 for grayscale)."""

    def __init__(self, channels: int, image_size: int, *, image_channels: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.net = nn.Sequential(
            nn.Conv2d(channels, 12, kernel_size=3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(inplace=True),
            nn.Conv2d(12, image_channels, kernel_size=3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(h, size=(self.image_size, self.image_size), mode="bilinear", align_corners=True)
        return self.net(h)  # (B, C_img, S, S) in (0, 1)


# name → factory(out_shape, in_shape) → module mapping a module's output back to its input features.
FeatureDecoderFactory = Callable[[tuple[int, ...], tuple[int, ...]], nn.Module]
FEATURE_DECODERS: Registry[FeatureDecoderFactory] = Registry("feature decoder")


def feature_mse(decoder: nn.Module, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """FeatRecon's reconstruction loss MSE(decoder(h), target), in (at least) float32. A decoder may compute it
    itself (a ``mse(h, target)`` method) to keep less for backward; the value is the same."""
    if hasattr(decoder, "mse"):
        return decoder.mse(h, target)
    return F.mse_loss(at_least_float32(decoder(h)), at_least_float32(target))


def upscale_factor(out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> int:
    """How much a module shrank its input's grid: 2^m after m patch mergings (1 when it kept it)."""
    if len(out_shape) != 3 or len(in_shape) != 3:
        raise ValueError(
            f"feature decoder: needs (C, H, W) feature maps on both sides, got output {tuple(out_shape)} and "
            f"input {tuple(in_shape)}; on tokens use greedy (or contsup with context R0) with aux_head token."
        )
    (_, h_out, w_out), (_, h_in, w_in) = out_shape, in_shape
    f = h_in // h_out
    if f < 1 or (h_out * f, w_out * f) != (h_in, w_in) or f & (f - 1):
        raise ValueError(
            f"feature decoder: cannot expand a {h_out}×{w_out} output back to its {h_in}×{w_in} input; the "
            f"grids must differ by a power of 2 (one factor 2 per patch merging)."
        )
    return f


class PatchExpand(nn.Module):
    """The ``linear`` decoder: token-wise Linear(C_out → f²·C_in), then an f×f pixel shuffle.

    With f = 1 (the module kept the resolution) it is a token-wise Linear(C_out → C_in). One shuffle by
    f = 2^m is m 2×2 shuffles, one per merge, up to a fixed permutation of channels the Linear absorbs.
    """

    def __init__(self, out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.f = upscale_factor(out_shape, in_shape)
        self.c_in = in_shape[0]
        self.proj = nn.Linear(out_shape[0], self.f**2 * self.c_in)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, _, height, width = h.shape
        f, c = self.f, self.c_in
        t = self.proj(h.permute(0, 2, 3, 1))  # (B, H, W, f·f·C_in)
        t = t.view(b, height, width, f, f, c).transpose(2, 3)  # (B, H, f, W, f, C_in)
        t = t.reshape(b, height * f * width * f, c)  # (B, fH·fW, C_in), tokens of the input grid
        return to_map(t, height * f, width * f)  # (B, C_in, fH, fW)

    def mse(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE(self(h), target), the same value and gradients, but the prediction is not kept for backward.

        The loss compares the Linear's output with the target rearranged (a view) into the Linear's
        (B, H, W, f, f, C_in) order, so the pixel shuffle needs no copy; backward recomputes the residual
        from h and the target, which the module keeps anyway. That saves one input-sized tensor per
        module — what lets FeatRecon stay within a few tenths of a percent of a module's own activations.
        """
        x = h.permute(0, 2, 3, 1)  # (B, H, W, C_out); a view of h (no copy when h is channels-last)
        t = target.permute(0, 2, 3, 1)  # (B, fH, fW, C_in)
        t = t.unflatten(1, (h.shape[2], self.f)).unflatten(3, (h.shape[3], self.f)).transpose(2, 3)  # (B, H, W, f, f, C_in)
        return _ExpandMSE.apply(x, self.proj.weight, self.proj.bias, t)


class _ExpandMSE(torch.autograd.Function):
    """mean((x·Wᵀ + b − t)²) in (at least) float32, saving only x and t (views of tensors kept anyway) for backward."""

    @staticmethod
    def _residual(x, weight, bias, target):
        dtype = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for float64 inputs
        with torch.autocast(device_type=x.device.type, enabled=False):
            pred = F.linear(x.to(dtype), weight.to(dtype), bias.to(dtype))  # (B, H, W, f·f·C_in)
            return pred.view(target.shape) - target.to(dtype)  # (B, H, W, f, f, C_in)

    @staticmethod
    def forward(ctx, x, weight, bias, target):
        ctx.save_for_backward(x, weight, bias, target)
        return _ExpandMSE._residual(x, weight, bias, target).pow(2).mean()

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, target = ctx.saved_tensors
        diff = _ExpandMSE._residual(x, weight, bias, target)
        g = diff.mul_(2.0 * grad / diff.numel()).reshape(*x.shape[:3], -1)  # dL/dpred, (B, H, W, f·f·C_in)
        with torch.autocast(device_type=x.device.type, enabled=False):
            grad_x = (g @ weight.to(g.dtype)).to(x.dtype)  # (B, H, W, C_out)
            grad_w = (g.flatten(0, 2).T @ x.flatten(0, 2).to(g.dtype)).to(weight.dtype)  # (f·f·C_in, C_out)
            grad_b = g.sum(dim=(0, 1, 2)).to(bias.dtype)
        return grad_x, grad_w, grad_b, None


class ConvDecoder(nn.Module):
    """The ``conv`` decoder: bilinear upsample to the input grid → conv3x3 → BN → ReLU → conv3x3 to C_in.

    The hidden width is C_in (our choice; the paper gives none).
    """

    def __init__(self, out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> None:
        super().__init__()
        upscale_factor(out_shape, in_shape)  # same grids as the other decoders accept
        c_out, c_in = out_shape[0], in_shape[0]
        self.size = tuple(in_shape[1:])
        self.net = nn.Sequential(
            nn.Conv2d(c_out, c_in, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_in, kernel_size=3, padding=1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if tuple(h.shape[-2:]) != self.size:
            h = F.interpolate(h, size=self.size, mode="bilinear", align_corners=False)  # (B, C_out, H_in, W_in)
        return self.net(h)  # (B, C_in, H_in, W_in)


class TransformerDecoder(nn.Module):
    """The ``transformer`` decoder: patch expanding as ``linear``, one Swin block at the input
    resolution (transformers' ``SwinLayer``), then a token-wise Linear(C_in → C_in).

    Our choices: the block has Swin's head width 32 (C_in / 32 heads, at least 1), the largest window ≤ 7
    that tiles the grid (7 for Swin-Tiny at 224, 4 for the 32×32 variant), no shift, MLP ratio 4.
    """

    def __init__(self, out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.expand = PatchExpand(out_shape, in_shape)
        c_in, height, width = in_shape
        self.block = swin_block(c_in, (height, width))
        self.proj = nn.Linear(c_in, c_in)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.expand(h)  # (B, C_in, H_in, W_in)
        height, width = x.shape[-2:]
        t, _ = self.block(to_tokens(x), (height, width))  # (B, N_in, C_in)
        return to_map(self.proj(t), height, width)


def swin_block(dim: int, grid: tuple[int, int], *, max_window: int = 7) -> nn.Module:
    """One unshifted Swin block of width ``dim`` on a ``grid``, from transformers."""
    from transformers import SwinConfig
    from transformers.models.swin.modeling_swin import SwinLayer

    heads = max(1, dim // 32)
    while dim % heads:
        heads -= 1
    side = min(grid)
    window = side if side <= max_window else max(w for w in range(1, max_window + 1) if grid[0] % w == grid[1] % w == 0)
    config = SwinConfig(
        embed_dim=dim, depths=[1], num_heads=[heads], window_size=window, drop_path_rate=0.0, mlp_ratio=4.0
    )
    config._attn_implementation = "sdpa"
    return SwinLayer(config, dim=dim, input_resolution=grid, num_heads=heads, shift_size=0)


FEATURE_DECODERS.register("linear", PatchExpand)
FEATURE_DECODERS.register("conv", ConvDecoder)
FEATURE_DECODERS.register("transformer", TransformerDecoder)
