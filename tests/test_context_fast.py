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


@pytest.mark.parametrize("shape, size", INTEGER + GENERAL)
def test_average_pool_takes_the_general_path_where_grids_differ(shape, size, monkeypatch):
    calls = []
    adaptive = F.adaptive_avg_pool2d
    monkeypatch.setattr(context.F, "adaptive_avg_pool2d", lambda x, s: calls.append(s) or adaptive(x, s))
    x = torch.randn(shape)
    torch.testing.assert_close(average_pool(x, size), adaptive(x, size), rtol=0, atol=0)
    assert calls == [size]
