"""ContSup's context supply (docs/methods.md §5).

Boundary i (i = 0..K−2) sits between module i and module i+1. With h_i module i's output, x the
normalised image and ĥ_i the tensor handed to module i+1 (ĥ_{−1} := x):

    R0    ĥ_i = sg(h_i)
    E     ĥ_i = sg(h_i) + Enc_i(x)
    Rn    ĥ_i = sg(h_i) + Σ_{r=0}^{min(n, i+1)−1} ResEnc_{i,r}(sg(ĥ_{i−1−r}))
    RnE   ĥ_i = sg(h_i) + Enc_i(x) + Σ_{r : i−1−r ≥ 0} ResEnc_{i,r}(sg(ĥ_{i−1−r}))   (R1E of the paper)

Only the encoders a mode uses are built. The encoders at boundary i are part of module i+1: its loss
trains them, their inputs are detached, and they run at test time too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MODE_NAMES = ("R0", "E", "R1", "R2", "R4", "R8", "R16", "R1E", "R2E", "R4E", "R8E", "R16E")
_PATTERN = re.compile(r"^(?:R(?P<n>0|[1-9]\d*)(?P<e>E?)|(?P<only_e>E))$")  # no leading zeros: one name per mode


@dataclass(frozen=True)
class ContextMode:
    name: str
    image: bool  # Enc_i(x) is added at every boundary
    depth: int  # n of Rn: how many earlier tensors ĥ feed each boundary

    @classmethod
    def parse(cls, name: str) -> "ContextMode":
        m = _PATTERN.match(name) if isinstance(name, str) else None
        if m is None or (m["n"] is not None and m["e"] and int(m["n"]) == 0):
            raise ValueError(
                f"context: unknown mode {name!r}; valid modes are {', '.join(MODE_NAMES)} "
                f"(any Rn or RnE with n ≥ 1)."
            )
        if m["only_e"]:
            return cls(name, image=True, depth=0)
        return cls(name, image=bool(m["e"]), depth=int(m["n"]))

    @property
    def uses_context(self) -> bool:
        return self.image or self.depth > 0

    def check_modules(self, num_modules: int) -> None:
        """A mode needs at least one boundary, and n of Rn may not exceed K.

        The deepest boundary (i = K−2) reads min(n, K−1) sources, so any n ≥ K−1 means "every earlier
        tensor". (Our choice) n = K is accepted as an alias of n = K−1, so that the paper's R16 ablation
        runs at K = 16; larger n is refused."""
        if self.uses_context and num_modules < 2:
            raise ValueError(f"context: mode {self.name} needs num_modules ≥ 2 (boundaries to supply), got 1.")
        if self.depth > num_modules:
            raise ValueError(
                f"context: mode {self.name} reads {self.depth} earlier tensors but num_modules={num_modules} "
                f"allows at most R{num_modules} (every earlier tensor); use fewer, or more modules."
            )

    def sources(self, boundary: int) -> list[int]:
        """Indices j of the ĥ_j that feed ``boundary`` through ResEnc_{i,r}, r = 0, 1, ... (j = −1: image)."""
        js = [boundary - 1 - r for r in range(min(self.depth, boundary + 1))]
        if self.image:  # the image already arrives through Enc_i
            js = [j for j in js if j >= 0]
        return js


def average_pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The encoders' "adaptive average pool to H_i×W_i": ``F.adaptive_avg_pool2d(x, size)``, with the same
    numbers, bit for bit, by a faster route where one exists.

    x: (N, C, H, W) → (N, C, h, w) with (h, w) = size. Adaptive pooling averages, for output (i, j), the
    input rows ⌊i·H/h⌋ .. ⌈(i+1)·H/h⌉−1 and the columns alike. PyTorch's CPU adaptive kernel sums each
    window's elements one after another, row by row, from 0, divides the sum by the window's rows and then by
    its columns, and in backward adds each window's gradient, divided likewise, to a zeroed input gradient.
    (A 1×1 output is not that kernel's: ``F.adaptive_avg_pool2d`` takes the mean, which rounds otherwise.)

    - Equal grids, (h, w) == (H, W): each window is the one element (i, j) and its average is that element;
      the pool is the identity, in value and in gradient, so x is returned as it is. PyTorch's kernel does
      not take that shortcut and spends longer on it than on a real reduction (7–10 ms forward and as much
      backward for a (64, 16, 32, 32) map on one thread), which made the pool the largest single cost of the
      context path: most boundaries of a split sit inside a stage, where the two grids are equal.
    - Integer ratios, H = r·h and W = s·w (a boundary after a stride-2 stage; the image encoders of later
      stages), where ``IntegerAveragePool.applies``: the kernel's own arithmetic in its own order on strided
      views (see there).
    - Every other case (non-integer ratios, a 1×1 output, channels-last or reduced-precision tensors, GPUs,
      compiled or traced graphs, whose kernels round in their own ways) goes to ``F.adaptive_avg_pool2d``.
    """
    (H, W), (h, w) = x.shape[-2:], size
    if (H, W) == (h, w):
        return x
    if IntegerAveragePool.applies(x, size):
        return IntegerAveragePool.apply(x, H // h, W // w)
    return F.adaptive_avg_pool2d(x, size)


STRIDED_SUM_MAX_WINDOW = 4  # elements per window up to which the forward sums strided views (2×2: faster)


class IntegerAveragePool(torch.autograd.Function):
    """Average pooling over r×s windows (H = r·h, W = s·w) that computes what PyTorch's CPU adaptive kernel
    computes, bit for bit (NaNs stay NaN, their payloads aside), in less time (one thread; timings in
    benchmarks/README.md, "What was tried"):

    - forward, r·s ≤ STRIDED_SUM_MAX_WINDOW (the 2×2 windows after a stride-2 stage): ``sum = 0 + x[0, 0]``,
      then ``+= x[a, b]`` for a = 0..r−1, b = 0..s−1 in the kernel's order, each term a strided view of the
      whole map, then ``sum / r / s``: the same additions in the same order, rounded alike (0 + x turns −0
      into the kernel's +0). Larger windows call the kernel: their many strided passes cost more than it;
    - backward, any r, s: every input element of window (i, j) receives ``0 + g[i, j] / r / s``, as the
      kernel gives it, here two broadcast copies; it saves no tensor (the kernel's backward keeps x alive,
      which the ReLU before it keeps anyway);
    - forward-mode AD (``jvp``: the same pooling of the tangent) and torch.func transforms (the vmap rule is
      generated from these operations) work as with the kernel.
    """

    generate_vmap_rule = True

    @staticmethod
    def applies(x: torch.Tensor, size: tuple[int, int]) -> bool:
        """Whether pooling x to ``size`` is an integer-ratio pool this class reproduces bit for bit: a CPU
        float32/float64 NCHW tensor, not a 1×1 output (``F.adaptive_avg_pool2d`` takes the mean there), outside
        torch.compile and tracing (which keep the operator they know)."""
        (H, W), (h, w) = x.shape[-2:], size
        return (x.dim() == 4 and (h, w) != (1, 1) and H % h == 0 and W % w == 0 and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.float64) and x.is_contiguous()
                and not torch.compiler.is_compiling() and not torch.jit.is_tracing())

    @staticmethod
    def forward(x: torch.Tensor, r: int, s: int) -> torch.Tensor:
        return IntegerAveragePool.pool(x, r, s)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        _, r, s = inputs
        ctx.windows = (r, s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        r, s = ctx.windows
        N, C, h, w = grad.shape
        share = grad / r / s + 0.0  # (N, C, h, w); + 0.0: the kernel adds to zeros, so −0 becomes +0
        # copied out in two broadcasts, each window's row and then its rows: one 6-D broadcast copy took
        # 1.4–1.6× as long (its innermost loop runs over the s or r copies only)
        rows = share[..., None].expand(N, C, h, w, s).reshape(N, C, h, w * s)  # (N, C, h, W)
        return rows[:, :, :, None, :].expand(N, C, h, r, w * s).reshape(N, C, h * r, w * s), None, None

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, *_) -> torch.Tensor:
        return IntegerAveragePool.pool(x_tangent, *ctx.windows)

    @staticmethod
    def pool(x: torch.Tensor, r: int, s: int) -> torch.Tensor:
        N, C, H, W = x.shape
        h, w = H // r, W // s
        if r * s > STRIDED_SUM_MAX_WINDOW:
            return F.adaptive_avg_pool2d(x, (h, w))
        windows = x.view(N, C, h, r, w, s)  # (N, C, h, r, w, s): element (a, b) of window (i, j) at [i, a, j, b]
        total = windows[:, :, :, 0, :, 0] + 0.0  # (N, C, h, w)
        for a in range(r):
            for b in range(s):
                if (a, b) != (0, 0):
                    total += windows[:, :, :, a, :, b]
        return total.div_(r).div_(s)


class ImageEncoder(nn.Module):
    """Enc_i: conv3x3(C_img → 12) → BN → ReLU → conv3x3(12 → C_i) → BN → ReLU → adaptive avg pool to H_i×W_i, C_img
    the input image's channels."""

    def __init__(self, in_channels: int, out_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = out_shape
        self.size = (h, w)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 12, kernel_size=3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(inplace=True),
            nn.Conv2d(12, c, kernel_size=3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return average_pool(self.net(x), self.size)


class ResEncoder(nn.Module):
    """ResEnc_{i,r}: conv1x1(C_src → C_i) → BN → ReLU → adaptive avg pool to H_i×W_i."""

    def __init__(self, in_channels: int, out_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = out_shape
        self.size = (h, w)
        self.net = nn.Sequential(nn.Conv2d(in_channels, c, kernel_size=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return average_pool(self.net(x), self.size)


class ContextSupply(nn.Module):
    """The encoders of one context mode, for every boundary of a split."""

    def __init__(
        self, mode: ContextMode, *, image_shape: tuple[int, int, int], boundary_shapes: list[tuple[int, ...]]
    ) -> None:
        super().__init__()
        self.mode = mode
        self.image_encoders = nn.ModuleDict()
        self.res_encoders = nn.ModuleDict()
        for i, shape in enumerate(boundary_shapes):
            if len(shape) != 3:
                raise ValueError(
                    f"context: mode {mode.name} needs feature maps (C, H, W) at every boundary; boundary {i} "
                    f"has shape {tuple(shape)}; use context R0 for this backbone."
                )
            if mode.image:
                self.image_encoders[str(i)] = ImageEncoder(image_shape[0], shape)
            for r, j in enumerate(mode.sources(i)):
                src_channels = image_shape[0] if j < 0 else boundary_shapes[j][0]
                self.res_encoders[f"{i}_{r}"] = ResEncoder(src_channels, shape)

    def forward(self, boundary: int, h: torch.Tensor, image: torch.Tensor, history: dict[int, torch.Tensor]) -> torch.Tensor:
        """ĥ_boundary from the detached h and the detached history (out-of-place additions)."""
        out = h
        if self.mode.image:
            out = out + self.image_encoders[str(boundary)](image)
        for r, j in enumerate(self.mode.sources(boundary)):
            src = image if j < 0 else history[j]
            out = out + self.res_encoders[f"{boundary}_{r}"](src)
        return out

    def encoders_at(self, boundary: int) -> list[nn.Module]:
        mods = [m for k, m in self.image_encoders.items() if int(k) == boundary]
        return mods + [m for k, m in self.res_encoders.items() if int(k.split("_")[0]) == boundary]
