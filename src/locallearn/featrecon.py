"""FeatRecon: local learning on transformers by feature reconstruction (METHODS.md 6).

P. Pathak, J. Zhang, D. Samaras, "Local Learning on Transformers via Feature Reconstruction", arXiv
2212.14215. Each local module k < K ends in

- a classification head — LayerNorm → token mean → Linear, cross-entropy (``HEADS["token"]``), and
- a decoder reconstructing the module's own input features sg(input_k) from its output h_k: the detached
  hand-off of module k−1, or for k = 0 the patch embeddings (``FEATURE_DECODERS``);

    Loss_k = L_ce + λ · MSE(decoder(h_k), sg(input_k)),   λ = ``feature_weight`` (1 by default, our choice).

The paper names "3 commonly used decoder structures" without code; ours (METHODS.md 6) are ``linear``,
``conv`` and ``transformer``. Every factory takes (out_shape, in_shape), both (C, H, W), and returns a
module mapping (B, C_out, H_out, W_out) to (B, C_in, H_in, W_in). Heads and decoders are training-only.

Module 0's target is the patch embedding of module 0's own forward (``ForwardState.embedding``, set by
``LocalNet.module_forward``), not a recomputation. The ``linear`` decoder computes its MSE fused with its
Linear (``PatchExpand.mse``), so the prediction is not kept for backward.

Registering here adds the method preset ``featrecon`` (``locallearn.config.METHODS``): token head where the
backbone is a transformer (``aux_head="auto"``), cross-entropy, the ``linear`` decoder, no context.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from locallearn.config import METHODS
from locallearn.decoders import FEATURE_DECODERS, feature_mse
from locallearn.heads import HEADS
from locallearn.models.swin import TokenClassifier, to_map, to_tokens

METHODS.register(
    "featrecon", dict(aux_head="auto", local_loss="ce", context="R0", reconstruct=False, feature_decoder="linear")
)


# --- the classification head: Swin's own classifier, fresh ------------------------------------------------
HEADS.register("token", lambda in_shape, out_dim: TokenClassifier.create(in_shape[0], out_dim))


# --- feature decoders -------------------------------------------------------------------------------------
def upscale_factor(out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> int:
    """How much a module shrank its input's grid: 2^m after m patch mergings (1 when it kept it)."""
    if len(out_shape) != 3 or len(in_shape) != 3:
        raise ValueError(
            f"feature decoder: needs (C, H, W) feature maps on both sides, got output {tuple(out_shape)} and "
            f"input {tuple(in_shape)}."
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


# --- cost model for the balanced split -------------------------------------------------------------------
def decoder_span_cost(
    name: str,
    backbone: nn.Module,
    image_size: int,
    *,
    profile: tuple[list[torch.Tensor], list[bool]] | None = None,
) -> Callable[[int, int], float]:
    """``span_cost(i, j)``: bytes FeatRecon adds for backward to a local module spanning units i..j — the
    decoder and its MSE — per sample. The target (the module's input) is charged only where nothing else
    counts it: a module's input is held by the step (``split_cost``: the start cost), and module 0's target,
    the patch embedding, is counted with unit 1 when that unit saves its input (a Swin block does); it is
    added here when unit 1 does not (a patch merging). Inputs as in ``LocalNet.__init__``: the
    image, the patch embedding for module 0, else unit i−1's output.

    ``profile``: each unit's output (real memory layout) and whether the unit saves its input, from a
    forward of a blank batch (``split_cost`` passes its own); by default one eval-mode forward at batch 1.
    The decoder runs once per pair of shapes.
    """
    from locallearn.bench.meters import SavedTensorMeter

    factory = FEATURE_DECODERS.get(name)
    cache: dict[tuple, float] = {}
    probe: list = [profile] if profile is not None else []  # filled on the first call: a table never needs it

    def decoder_bytes(h: torch.Tensor, target: torch.Tensor) -> float:
        key = (tuple(h.shape), h.stride(), tuple(target.shape))
        if key not in cache:
            decoder = factory(key[0][1:], key[2][1:])
            with SavedTensorMeter([*decoder.parameters(), h, target]) as meter:
                feature_mse(decoder, h, target)
            cache[key] = float(meter.peak_bytes) / h.shape[0]
        return cache[key]

    def span_cost(i: int, j: int) -> float:
        if not probe:
            probe.append(_unit_outputs(backbone, image_size))
        outputs, kept = probe[0]  # outputs[u]: unit u's output; kept[u]: whether unit u saves its input
        first = i if i > 0 or j == 0 else 1  # the unit whose input is the target
        if first > 0:
            target = outputs[first - 1]
        else:
            target = torch.zeros(outputs[0].shape[0], backbone.in_channels, image_size, image_size)
        uncounted = i == 0 and first == 1 and not kept[1]  # module 0's embedding target, saved by nothing else
        extra = target.untyped_storage().nbytes() / target.shape[0] if uncounted else 0.0
        return decoder_bytes(outputs[j], target) + extra

    return span_cost


@torch.no_grad()
def _unit_outputs(backbone: nn.Module, image_size: int) -> tuple[list[torch.Tensor], list[bool]]:
    """One eval-mode forward of a blank image (batch 1): each unit's output, and whether the unit saves
    its own input for backward when trained (probed with grad enabled per unit)."""
    was_training = backbone.training
    backbone.eval()
    x = torch.zeros(1, backbone.in_channels, image_size, image_size)
    outputs, kept = [], []
    try:
        for unit in backbone.units:
            saved: set[int] = set()

            def pack(t: torch.Tensor) -> torch.Tensor:
                saved.add(t.untyped_storage().data_ptr())
                return t

            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = unit(x)
            kept.append(x.untyped_storage().data_ptr() in saved)
            x = out.detach()
            outputs.append(x)
    finally:
        backbone.train(was_training)
    return outputs, kept


FEATURE_DECODERS.register("linear", PatchExpand)
FEATURE_DECODERS.register("conv", ConvDecoder)
FEATURE_DECODERS.register("transformer", TransformerDecoder)

__all__ = ["ConvDecoder", "PatchExpand", "TransformerDecoder", "decoder_span_cost", "upscale_factor"]
