"""ContSup's context supply against a plain implementation of docs/methods.md §5, on the same weights.

The reference below is the spec's formula written out with functional ops (conv, train-mode BatchNorm,
ReLU, ``F.adaptive_avg_pool2d``), reading the encoders' parameters by their state_dict names. The supply
must give the same ĥ_i, the same gradients (encoder parameters and every input: h_i, the image, the
history ĥ_j) and the same BatchNorm running statistics, within 1e-6 relative, for every mode, at several
K, on two backbones and on image sizes whose stage grids are equal (identity pools), integer multiples
(28 → 14 → 7, 24 → 12 → 6) or not (30 → 15 → 8).
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torch.nn.functional as F

import locallearn as ll
from locallearn import context
from locallearn.context import ContextMode, ContextSupply, average_pool

BATCH = 3
RTOL = 1e-6


# --- the reference: docs/methods.md §5, written out------------------------------------------------------------
def conv_bn_relu(p: dict, conv: str, bn: str, x: torch.Tensor, padding: int) -> torch.Tensor:
    """conv (with bias) → BatchNorm in training mode (batch statistics; running statistics updated) → ReLU."""
    y = F.conv2d(x, p[f"{conv}.weight"], p[f"{conv}.bias"], padding=padding)
    y = F.batch_norm(y, p[f"{bn}.running_mean"], p[f"{bn}.running_var"], p[f"{bn}.weight"], p[f"{bn}.bias"],
                     training=True, momentum=0.1, eps=1e-5)
    return F.relu(y)


def ref_image_encoder(p: dict, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Enc_i: conv3x3(3 → 12) → BN → ReLU → conv3x3(12 → C_i) → BN → ReLU → adaptive avg pool to H_i×W_i."""
    y = conv_bn_relu(p, "net.0", "net.1", x, padding=1)
    y = conv_bn_relu(p, "net.3", "net.4", y, padding=1)
    return F.adaptive_avg_pool2d(y, size)


def ref_res_encoder(p: dict, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ResEnc_{i,r}: conv1x1(C_src → C_i) → BN → ReLU → adaptive avg pool to H_i×W_i."""
    return F.adaptive_avg_pool2d(conv_bn_relu(p, "net.0", "net.1", x, padding=0), size)


def ref_handoff(name: str, i: int, h, image, history: dict, params: dict, size) -> torch.Tensor:
    """ĥ_i = h_i [+ Enc_i(x)] + Σ_r ResEnc_{i,r}(ĥ_{i−1−r}), r < min(n, i+1); with E only the r with i−1−r ≥ 0
    (ĥ_{−1} = x). Additions out of place, in this order."""
    mode = ContextMode.parse(name)
    out = h
    if mode.image:
        out = out + ref_image_encoder(params[f"image_encoders.{i}"], image, size)
    for r in range(min(mode.depth, i + 1)):
        j = i - 1 - r
        if mode.image and j < 0:
            continue
        src = image if j < 0 else history[j]
        out = out + ref_res_encoder(params[f"res_encoders.{i}_{r}"], src, size)
    return out


# --- the cases ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def boundary_shapes(model: str, K: int, size: int) -> tuple[tuple[int, ...], ...]:
    split = "paper" if model == "resnet32" else "uniform"  # resnet20 has no paper split
    net = ll.build(model, method="contsup", num_modules=K, context="R0", split=split, image_size=size)
    return tuple(tuple(s) for s in net.boundary_shapes)


def modes_for(K: int) -> list[str]:
    return [m for m in context.MODE_NAMES if ContextMode.parse(m).depth <= K]


CASES = [
    (model, K, size, mode)
    for model, K, sizes in [
        ("resnet32", 4, (32, 28, 24, 30)),
        ("resnet32", 8, (32, 28, 30)),
        ("resnet32", 16, (32, 28, 24, 30)),
        ("resnet20", 4, (32, 28, 24, 30)),
        ("resnet20", 8, (32, 28, 30)),
    ]
    for size in sizes
    for mode in modes_for(K)
]


def encoder_params(supply: ContextSupply) -> dict[str, dict[str, torch.Tensor]]:
    """Per encoder ("image_encoders.3", "res_encoders.3_0"): its parameters (shared with the module) and
    copies of its buffers (the reference updates its own running statistics)."""
    out = {}
    for kind in ("image_encoders", "res_encoders"):
        for key, enc in getattr(supply, kind).items():
            p = dict(enc.named_parameters())
            p.update({n: b.clone() for n, b in enc.named_buffers()})
            out[f"{kind}.{key}"] = p
    return out


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str, scale: float = 0.0) -> None:
    tol = RTOL * max(want.abs().max().item(), scale)
    err = (got - want).abs().max().item()
    assert err <= tol, f"{what}: max |difference| {err:.3g} > {tol:.3g}"


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def encoders_of(supply: ContextSupply, boundary: int) -> dict[str, torch.nn.Module]:
    """The encoders at ``boundary`` by their names in ``encoder_params``."""
    found = {f"image_encoders.{k}": e for k, e in supply.image_encoders.items() if int(k) == boundary}
    found.update({f"res_encoders.{k}": e for k, e in supply.res_encoders.items() if int(k.split("_")[0]) == boundary})
    return found


@pytest.mark.parametrize("model, K, size, mode", CASES)
def test_supply_equals_the_spec(model, K, size, mode):
    shapes = boundary_shapes(model, K, size)
    supply = ContextSupply(ContextMode.parse(mode), image_shape=(3, size, size), boundary_shapes=list(shapes)).train()
    params = encoder_params(supply)
    image = torch.randn(BATCH, 3, size, size)
    hats = {j: torch.randn(BATCH, *s) for j, s in enumerate(shapes)}  # ĥ_j, any values will do
    for i, shape in enumerate(shapes):
        h = torch.randn(BATCH, *shape)
        history = {j: t for j, t in hats.items() if j < i}
        # separate leaves for the supply and the reference, with the same values
        ins = {"h": leaf(h), "image": leaf(image), **{f"ĥ_{j}": leaf(t) for j, t in history.items()}}
        ref_ins = {name: leaf(t) for name, t in ins.items()}
        hist = lambda d: {j: d[f"ĥ_{j}"] for j in history}  # noqa: E731
        got = supply(i, ins["h"], ins["image"], hist(ins))
        want = ref_handoff(mode, i, ref_ins["h"], ref_ins["image"], hist(ref_ins), params, shape[1:])
        assert got.shape == want.shape == (BATCH, *shape)
        assert_close(got, want, f"boundary {i}: ĥ")

        encoders = encoders_of(supply, i)
        assert [type(e) for e in encoders.values()] == [type(e) for e in supply.encoders_at(i)]
        ref_params = {f"{key}.{n}": t for key in encoders for n, t in params[key].items() if t.requires_grad}
        g = torch.randn_like(want)
        got.backward(g)
        ref_grads = dict(zip([*ref_ins, *ref_params], torch.autograd.grad(
            want, [*ref_ins.values(), *ref_params.values()], g, allow_unused=True)))
        for name, x in ins.items():
            if ref_grads[name] is None:  # an input this boundary does not read
                assert x.grad is None, f"boundary {i}: {name} got a gradient"
            else:
                assert_close(x.grad, ref_grads[name], f"boundary {i}: gradient of {name}")
        for key, enc in encoders.items():
            # on the scale of the encoder's gradients: a conv bias right before train-mode BatchNorm has
            # gradient 0 in exact arithmetic, and what autograd returns is rounding noise, which cannot be
            # compared relative to itself
            scale = max(ref_grads[f"{key}.{n}"].abs().max().item() for n, _ in enc.named_parameters())
            for n, p in enc.named_parameters():
                assert_close(p.grad, ref_grads[f"{key}.{n}"], f"boundary {i}: gradient of {key}.{n}", scale)
            for n, b in enc.named_buffers():
                if b.is_floating_point():
                    assert_close(b, params[key][n], f"boundary {i}: {key}.{n} after the forward")


# --- the pooling fast path -----------------------------------------------------------------------------------
IDENTITY = [((2, 3, 32, 32), (32, 32)), ((2, 5, 7, 7), (7, 7)), ((2, 4, 8, 6), (8, 6))]
INTEGER = [((2, 3, 32, 32), (16, 16)), ((2, 3, 32, 32), (8, 8)), ((2, 3, 28, 28), (7, 7)), ((2, 3, 24, 24), (8, 8)),
           ((2, 3, 12, 8), (6, 4)), ((2, 3, 12, 8), (4, 8)), ((2, 3, 30, 30), (15, 15))]
GENERAL = [((2, 3, 7, 7), (4, 4)), ((2, 3, 15, 15), (8, 8)), ((2, 3, 30, 30), (8, 8)), ((2, 3, 28, 28), (12, 12)),
           ((2, 3, 8, 6), (3, 4)), ((2, 3, 16, 16), (16, 5)), ((2, 3, 5, 5), (7, 7))]


def pool_both(shape, size):
    """average_pool and F.adaptive_avg_pool2d on the same input: outputs and input gradients."""
    x = torch.randn(shape)
    g = torch.randn(shape[0], shape[1], *size)
    out = []
    for fn in (average_pool, F.adaptive_avg_pool2d):
        xi = leaf(x)
        y = fn(xi, size)
        y.backward(g)
        out.append((y.detach(), xi.grad))
    return out


@pytest.mark.parametrize("shape, size", IDENTITY + INTEGER + GENERAL)
def test_average_pool_equals_adaptive_pool(shape, size):
    (y, gx), (want_y, want_gx) = pool_both(shape, size)
    assert y.shape == want_y.shape
    assert_close(y, want_y, "output")
    assert_close(gx, want_gx, "input gradient")


@pytest.mark.parametrize("shape, size", IDENTITY)
def test_average_pool_is_the_identity_on_equal_grids(shape, size):
    x = torch.randn(shape)
    assert average_pool(x, size) is x  # no kernel, no copy


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float tensor (so that −0 and +0 differ, and NaNs compare)."""
    return t.detach().contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, size", INTEGER + [((8, 16, 32, 32), (16, 16)), ((2, 2, 6, 9), (3, 3))])
def test_integer_ratios_give_the_adaptive_kernels_bits(shape, size, dtype):
    """Outputs and input gradients identical bit for bit, on values of every scale, signed zeros and
    non-finite values included (one NaN per window: two NaNs may keep either payload)."""
    for scale in (1.0, 1e-38, 1e30):
        x = torch.randn(shape, dtype=dtype) * scale
        x[0, 0, 0, 0], x[-1, -1, -1, -1] = -0.0, float("inf")
        x[0, -1, 0, 0] = float("nan")
        g = torch.randn(shape[0], shape[1], *size, dtype=dtype) * scale
        g[0, 0, 0, 0], g[-1, -1, -1, -1] = -0.0, -torch.finfo(dtype).tiny / 8  # −0, and a −0 after / r / s
        got, want = leaf(x), leaf(x)
        y, want_y = average_pool(got, size), F.adaptive_avg_pool2d(want, size)
        y.backward(g)
        want_y.backward(g)
        assert torch.equal(bits(y), bits(want_y)), (scale, "output")
        assert torch.equal(bits(got.grad), bits(want.grad)), (scale, "input gradient")


def path(x: torch.Tensor, size, monkeypatch) -> str:
    """Which route average_pool takes for x: "integer" (IntegerAveragePool) or "adaptive" (F.adaptive_avg_pool2d
    called directly)."""
    taken = []
    apply, adaptive = context.IntegerAveragePool.apply, F.adaptive_avg_pool2d
    monkeypatch.setattr(context.IntegerAveragePool, "apply", lambda *a: taken.append("integer") or apply(*a))
    monkeypatch.setattr(context.F, "adaptive_avg_pool2d", lambda x, s: taken.append("adaptive") or adaptive(x, s))
    average_pool(x, size)
    return taken[0]


@pytest.mark.parametrize("shape, size", INTEGER)
def test_integer_ratios_take_the_fast_path_on_cpu_float_nchw_tensors(shape, size, monkeypatch):
    assert path(torch.randn(shape), size, monkeypatch) == "integer"
    assert path(torch.randn(shape, dtype=torch.float64), size, monkeypatch) == "integer"


@pytest.mark.parametrize("shape, size", GENERAL + [((2, 3, 3, 3), (1, 1)), ((2, 3, 8, 8), (1, 1))])
def test_other_ratios_and_1x1_outputs_take_the_general_path(shape, size, monkeypatch):
    """A 1×1 output is F.adaptive_avg_pool2d's mean, not its kernel: its backward divides once by H·W."""
    assert path(torch.randn(shape), size, monkeypatch) == "adaptive"


def test_transforms_forward_mode_and_tracing_work_through_the_fast_path():
    """torch.func (vmap, grad, jvp), forward-mode AD and torch.jit.trace, as with F.adaptive_avg_pool2d."""
    x = torch.randn(3, 2, 8, 12, dtype=torch.float64)
    want = F.adaptive_avg_pool2d(x, (4, 6))
    assert torch.equal(torch.func.vmap(lambda t: average_pool(t[None], (4, 6))[0])(x), want)
    tangent = torch.randn_like(x)
    _, out_tangent = torch.func.jvp(lambda t: average_pool(t, (4, 6)), (x,), (tangent,))
    assert torch.allclose(out_tangent, F.adaptive_avg_pool2d(tangent, (4, 6)))
    grad = torch.func.grad(lambda t: average_pool(t, (4, 6)).pow(2).sum())(x)
    assert torch.allclose(grad, torch.func.grad(lambda t: F.adaptive_avg_pool2d(t, (4, 6)).pow(2).sum())(x))
    leaf_x = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: average_pool(t, (4, 6)), (leaf_x,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(lambda t: average_pool(t, (4, 6)), (leaf_x,))
    encoder = context.ImageEncoder(3, (16, 8, 8)).eval()
    image = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the grids are compared as Python values
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit itself: still in use
        traced = torch.jit.trace(encoder, image)
    assert torch.equal(traced(image), encoder(image))


def test_the_fast_path_is_not_taken_where_the_kernel_rounds_otherwise(monkeypatch):
    """Channels-last and reduced-precision tensors (the kernel accumulates those in float32), non-contiguous
    views, and compiled graphs keep F.adaptive_avg_pool2d, whose numbers they already have."""
    shape, size = (2, 8, 16, 16), (8, 8)
    x = torch.randn(shape)
    assert path(x.contiguous(memory_format=torch.channels_last), size, monkeypatch) == "adaptive"
    assert path(x.to(torch.bfloat16), size, monkeypatch) == "adaptive"
    assert path(x.to(torch.float16), size, monkeypatch) == "adaptive"
    assert path(torch.randn(2, 8, 16, 32)[..., ::2], size, monkeypatch) == "adaptive"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert path(x, size, monkeypatch) == "adaptive"


def test_the_fast_path_saves_no_tensor_for_backward():
    saved = []
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        y = average_pool(x, (8, 8))
        z = average_pool(x, (4, 4))  # 4×4 windows: the kernel's forward, the broadcast backward
    assert saved == []
    (y.sum() + z.sum()).backward()
    assert torch.equal(x.grad, torch.full_like(x, 0.25 + 0.0625))
