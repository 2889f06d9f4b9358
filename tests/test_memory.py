"""Memory meters: meter (a) counts exactly, the step meter adds what the step holds, and activation
checkpointing is accounted for (checked against an independent computation)."""

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import locallearn as ll
from locallearn.memory import CudaPeakMeter, SavedTensorMeter, StepMemoryMeter, unit_recompute_bytes

B = 2


def _batch(size=32):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(B, 3, size, size, generator=gen), torch.randint(0, 10, (B,), generator=gen)


def _measure(net, images, labels):
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    ll.train_step(net, images, labels, optimizer)  # warm-up
    with StepMemoryMeter(net, images) as meter:
        ll.train_step(net, images, labels, optimizer)
    return meter


def _nbytes(t):
    return t.untyped_storage().nbytes()


def test_saved_tensor_meter_counts_storages_once_and_excludes_parameters():
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8, requires_grad=True)
    with SavedTensorMeter([w]) as meter:
        y = (x @ w).relu()  # mm saves x (and w, excluded); relu saves its output
        z = (x[:2] * 3).sum() + (x * x).sum()  # views and repeats of x's storage cost nothing more
        assert meter.live_bytes == _nbytes(x) + _nbytes(y)
    del y, z
    assert meter.live_bytes == 0
    assert meter.peak_bytes == meter.seen_peak_bytes == 4 * 8 * 4 * 2


def test_hold_and_unseen_bytes_enter_the_peak_without_double_counting():
    a, b = torch.randn(100), torch.randn(50)
    x = torch.randn(10, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = x * x  # saves x (40 bytes)
        meter.hold([x, a, a[:10]])  # x is already counted, a once despite the view
        assert meter.live_bytes == 40 + 400
        meter.set_unseen(200)
        assert meter.peak_bytes == 640 and meter.seen_peak_bytes == 440
        meter.set_unseen(0)
        meter.release_held()
        assert meter.live_bytes == 40
        meter.reset_peak()
        meter.hold([b])
    assert meter.peak_bytes == 240
    del y


def test_e2e_step_peak_is_the_saved_tensor_peak():
    """End-to-end training saves its input, so the held tensors add nothing: the step meter's figure is
    exactly what a bare saved-tensor meter sees over the same step."""
    images, labels = _batch()
    net = ll.build("resnet20", "e2e")
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    with SavedTensorMeter(itertools.chain(net.parameters(), net.buffers())) as bare:
        ll.train_step(net, images, labels, optimizer)
    assert _measure(net, images, labels).peak_bytes == bare.peak_bytes > 0


def test_local_step_counts_the_held_input_batch():
    """Module 1 of R0 does not save the image, but the step holds it: module 1's peak is its own graph's
    saved bytes (computed here module by module with bare meters) plus the batch."""
    images, labels = _batch()
    net = ll.build("resnet20", "contsup", num_modules=2, split="uniform", context="R0")
    meter = _measure(net, images, labels)

    exclude = list(itertools.chain(net.parameters(), net.buffers()))
    net.zero_grad(set_to_none=True)
    state = net.begin(images, labels)
    with SavedTensorMeter(exclude):
        h = net.module_forward(0, images, state)
        net.local_loss(0, h, images, state)[0].backward()
    x = h.detach()
    with SavedTensorMeter(exclude) as bare:
        h1 = net.module_forward(1, x, state)
        net.local_loss(1, h1, x, state)[0].backward()
    assert meter.module_peaks[1] == bare.peak_bytes + _nbytes(images)
    assert meter.peak_bytes == max(meter.module_peaks) and meter.recompute_bytes == 0


def test_memory_count_is_deterministic_and_local_learning_saves():
    images, labels = _batch()
    e2e = _measure(ll.build("resnet20", "e2e"), images, labels).peak_bytes
    runs = [_measure(ll.build("resnet20", "contsup", num_modules=4, split="uniform", context="R1E"), images, labels)
            for _ in range(2)]
    assert runs[0].peak_bytes == runs[1].peak_bytes
    assert runs[0].module_peaks == runs[1].module_peaks
    assert 0 < runs[0].peak_bytes < e2e


def _independent_checkpoint_peak(net, images, labels):
    """Checkpointing's peak from first principles: the forward holds every checkpointed segment's input
    plus the un-checkpointed last segment's graph (and the loss); the backward of segment j holds the
    inputs of segments 0..j plus segment j's activations, recomputed — measured here by running each
    segment un-checkpointed under its own meter. Segments as ``LocalNet`` cuts them (√n units)."""
    units = list(net.backbone.units)
    size = math.ceil(len(units) / net.activation_segments)
    chunks = [units[i : i + size] for i in range(0, len(units), size)]

    def saved_bytes(chunk, x, loss_labels=None):
        clones = [copy.deepcopy(u).train() for u in chunk]
        exclude = [t for c in clones for t in itertools.chain(c.parameters(), c.buffers())]
        with torch.enable_grad(), SavedTensorMeter(exclude + ([x] if loss_labels is None else [])) as m:
            for c in clones:
                x = c(x)
            if loss_labels is not None:
                F.cross_entropy(x, loss_labels)
        return m.peak_bytes, x.detach()

    inputs, recomputed = [images], []
    for chunk in chunks[:-1]:
        nbytes, out = saved_bytes(chunk, inputs[-1])
        recomputed.append(nbytes)
        inputs.append(out)
    last, _ = saved_bytes(chunks[-1], inputs[-1], labels)
    held = [sum(_nbytes(t) for t in inputs[: j + 1]) for j in range(len(chunks) - 1)]
    forward = held[-1] + last
    backward = [held[j] + recomputed[j] for j in range(len(recomputed))]
    return max([forward] + backward), max(recomputed)


@pytest.mark.parametrize("model", ["resnet20", "swin_cifar"])
def test_checkpoint_peak_counts_recomputation_and_matches_independent_computation(model):
    """ResNet blocks save their own output (the last ReLU's); Swin blocks do not (a residual sum), and
    the next block saves it as its input: both ways of handing on must be counted exactly once."""
    images, labels = _batch()
    e2e = _measure(ll.build(model, "e2e"), images, labels).peak_bytes
    net = ll.build(model, "checkpoint")
    assert net.activation_segments > 1
    meter = _measure(net, images, labels)
    expected, largest_segment = _independent_checkpoint_peak(net, images, labels)
    assert meter.peak_bytes == expected
    assert meter.recompute_bytes == largest_segment
    assert 0 < meter.seen_peak_bytes < meter.peak_bytes < e2e  # the hooks alone would under-count


def test_checkpoint_inside_local_modules_is_accounted():
    images, labels = _batch()
    options = dict(num_modules=2, split="uniform", context="R0")
    plain = _measure(ll.build("resnet20", "contsup", **options), images, labels)
    ckpt = _measure(ll.build("resnet20", "contsup", activation_checkpointing=True, **options), images, labels)
    assert ckpt.recompute_bytes > 0
    assert ckpt.seen_peak_bytes < ckpt.peak_bytes < plain.peak_bytes


def test_unit_recompute_bytes_exclude_inputs_and_leave_units_untouched():
    images, _ = _batch()
    backbone = ll.build("resnet20", "e2e").backbone
    stats = [u.running_mean.clone() for u in backbone.modules() if isinstance(u, torch.nn.BatchNorm2d)]
    per_unit = unit_recompute_bytes(backbone, images)
    assert len(per_unit) == backbone.num_units and all(u.own_bytes > 0 for u in per_unit)
    assert per_unit[0].input_bytes == _nbytes(images)  # the stem's convolution saves the image
    assert all(u.saves_output for u in per_unit[:-1])  # every block ends in a ReLU that saves its result
    after = [u.running_mean for u in backbone.modules() if isinstance(u, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))
    # nor the random numbers: a unit's dropout draws in the copies leave the run's generator where it was
    nn = torch.nn
    dropping = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.5)),
                             nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)))
    backbone = ll.build(dropping, "e2e", image_size=32).backbone
    state = torch.get_rng_state()
    unit_recompute_bytes(backbone, images)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("method", ["e2e", "checkpoint", "contsup"])
def test_a_training_run_records_the_peak_bench_memory_measures(method, tmp_path):
    """The peak a CPU run records for its first step (summary.json, metrics.jsonl, report) is the figure
    of ``bench memory`` on the same network and batch: with activation checkpointing, the recomputed
    activations included (the saved-tensor hooks alone saw a quarter of it)."""
    from locallearn.training import fit, resolve

    options = dict(model="resnet20", method=method, num_modules=1 if method != "contsup" else 2, split="uniform")
    config = resolve(**options, epochs=1, limit_train=32, limit_test=16, batch_size=16, device="cpu",
                     out=str(tmp_path / "run"))
    summary = fit(config, log=lambda line: None)
    net = ll.build("resnet20", method, **({"num_modules": 2, "split": "uniform"} if method == "contsup" else {}),
                   dataset="digits")
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    meter = _measure(net, images, labels)
    assert summary["peak_memory_kind"] == "saved_tensors"
    assert summary["peak_memory_mb"] * 2**20 == meter.peak_bytes


@pytest.mark.gpu
def test_cuda_peak_meter_on_a_step():
    images, labels = (t.cuda() for t in _batch())
    net = ll.build("resnet20", "e2e").cuda()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    ll.train_step(net, images, labels, optimizer)
    optimizer.zero_grad(set_to_none=True)
    with CudaPeakMeter("cuda") as meter:
        ll.train_step(net, images, labels, optimizer)
    assert meter.peak_bytes > meter.base_bytes > 0 and meter.step_bytes > 0
