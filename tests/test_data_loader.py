"""Augmentation and BatchLoader: equality with a naive per-image reference, normalisation as the last
(invertible) step, determinism in (seed, epoch), prefetching that changes nothing."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from locallearn.data import BatchLoader, DatasetSpec, crop_flip, get_spec, random_crop_params
from locallearn.data.augment import pad_images


def naive_crop_flip(x, top, left, flip, *, pad, pad_mode):
    """Pad, crop and flip one image at a time, in float, with torch's own padding."""
    out = []
    s = x.shape[-1]
    for img, t, lft, f in zip(x.float(), top.tolist(), left.tolist(), flip.tolist(), strict=True):
        mode = "reflect" if pad_mode == "reflect" else "constant"
        padded = F.pad(img[None], (pad, pad, pad, pad), mode=mode)[0]
        crop = padded[:, t : t + s, lft : lft + s]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out).to(x.dtype)


@pytest.mark.parametrize(
    "pad_mode, size, pad", [("reflect", 32, 4), ("zeros", 32, 2), ("zeros", 96, 4), ("reflect", 8, 7)]
)
def test_crop_flip_matches_naive_reference(pad_mode, size, pad):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (40, 3, size, size), dtype=torch.uint8, generator=g)
    top, left, flip = random_crop_params(40, pad=pad, flip=True, generator=g)
    assert flip.any() and not flip.all()
    got = crop_flip(x, top, left, flip, pad=pad, pad_mode=pad_mode)
    assert got.shape == x.shape and got.dtype == torch.uint8
    assert torch.equal(got, naive_crop_flip(x, top, left, flip, pad=pad, pad_mode=pad_mode))


def test_crop_flip_identity_and_extremes():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    centre = torch.full((2,), 2)
    no = torch.zeros(2, dtype=torch.bool)
    assert torch.equal(crop_flip(x, centre, centre, no, pad=2, pad_mode="zeros"), x)
    assert torch.equal(crop_flip(x, centre, centre, ~no, pad=2, pad_mode="reflect"), x.flip(-1))
    zero = torch.zeros(2, dtype=torch.long)
    corner = crop_flip(x, zero, zero, no, pad=2, pad_mode="zeros")
    assert (corner[:, :, :2, :] == 0).all() and torch.equal(corner[:, :, 2:, 2:], x[:, :, :4, :4])


def test_pad_images_reflect_matches_torch():
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(pad_images(x, 3, "reflect"), F.pad(x, (3, 3, 3, 3), mode="reflect"))
    with pytest.raises(ValueError, match="pad_mode"):
        pad_images(x, 1, "edge")


def data(spec: DatasetSpec, n: int = 100, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c, s = spec.channels, spec.image_size
    images = torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 10, (n,), generator=g)


def epoch_batches(loader: BatchLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def same(a, b) -> bool:
    if len(a) != len(b):
        return False
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


@pytest.mark.parametrize("name", ["cifar10", "svhn", "stl10", "digits", "fashion_mnist"])
def test_training_batches_shapes_and_normalisation(name):
    spec = get_spec(name)
    images, labels = data(spec, 50)
    loader = BatchLoader(images, labels, spec=spec, batch_size=16, train=True, seed=0)
    batches = epoch_batches(loader, 0)
    assert len(loader) == len(batches) == 4 and [len(y) for _, y in batches] == [16, 16, 16, 2]
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (spec.channels, spec.image_size, spec.image_size)
        assert y.dtype == torch.int64
        x01 = spec.denormalize(x)
        assert x01.min() >= -1e-5 and x01.max() <= 1 + 1e-5
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == sorted(labels.tolist())  # every image exactly once


def test_denormalized_batch_is_the_augmented_image():
    """Reconstruction losses need the [0, 1] image: augmentation happens there, normalisation last."""
    spec = get_spec("cifar10")
    images, labels = data(spec, 64)
    loader = BatchLoader(images, labels, spec=spec, batch_size=64, train=True, seed=3, prefetch=0)
    (x, y), = epoch_batches(loader, 5)
    order, top, left, flip = loader._plan(5)
    expected = crop_flip(images[order], top, left, flip, pad=4, pad_mode="reflect").float() / 255
    assert torch.allclose(spec.denormalize(x), expected, atol=1e-6)
    assert torch.allclose(x, spec.normalize(expected), atol=1e-5)
    assert torch.equal(y, labels[order])


def test_one_channel_batches_are_cropped_then_normalised():
    """Fashion-MNIST's single grey channel: the same crop and flip as for RGB (zero padding of 2), then
    (x - 0.2860) / 0.3530."""
    spec = get_spec("fashion_mnist")
    images, labels = data(spec, 48)
    assert images.shape == (48, 1, 28, 28)
    loader = BatchLoader(images, labels, spec=spec, batch_size=48, train=True, seed=1, prefetch=0)
    (x, y), = epoch_batches(loader, 2)
    order, top, left, flip = loader._plan(2)
    assert flip.any() and not flip.all() and (top != 2).any()  # some images flipped, some shifted
    reference = naive_crop_flip(images[order], top, left, flip, pad=2, pad_mode="zeros")
    assert torch.allclose(x, (reference.float() / 255 - 0.2860) / 0.3530, atol=1e-5)
    assert torch.allclose(spec.denormalize(x), reference.float() / 255, atol=1e-6)
    assert torch.equal(y, labels[order])
    test = BatchLoader(images, labels, spec=spec, batch_size=48, train=False, seed=1, prefetch=0)
    (xt, _), = epoch_batches(test, 0)
    assert torch.allclose(xt, spec.normalize(images.float() / 255), atol=1e-5)


def test_labels_follow_their_images():
    spec = get_spec("svhn")
    labels = torch.arange(30) % 10
    images = (labels * 25).to(torch.uint8).view(30, 1, 1, 1).expand(30, 3, 32, 32).contiguous()
    loader = BatchLoader(images, labels, spec=spec, batch_size=7, train=True, seed=0)
    for x, y in epoch_batches(loader, 2):
        centre = spec.denormalize(x)[:, 0, 16, 16]  # pad 2 cannot move the centre out of the image
        assert torch.allclose(centre, (y * 25).float() / 255, atol=1e-6)


def test_test_batches_are_ordered_and_only_normalised():
    spec = get_spec("stl10")
    images, labels = data(spec, 20)
    loader = BatchLoader(images, labels, spec=spec, batch_size=8, train=False, seed=0)
    x = torch.cat([b for b, _ in epoch_batches(loader, 7)])
    assert torch.allclose(x, spec.normalize(images.float() / 255), atol=1e-5)
    assert same(epoch_batches(loader, 0), epoch_batches(loader, 1))


def test_augmentation_is_deterministic_in_seed_and_epoch():
    spec = get_spec("cifar10")
    images, labels = data(spec, 80)

    def make(seed, prefetch=2):
        return BatchLoader(images, labels, spec=spec, batch_size=32, train=True, seed=seed, prefetch=prefetch)

    a, b = make(0), make(0, prefetch=0)
    assert same(epoch_batches(a, 3), epoch_batches(b, 3))  # prefetching changes nothing
    # Epoch 3 is the same whether or not epochs 0-2 ran first: what exact resume needs.
    fresh = make(0)
    for e in range(3):
        epoch_batches(fresh, e)
    assert same(epoch_batches(fresh, 3), epoch_batches(make(0), 3))
    assert not same(epoch_batches(a, 3), epoch_batches(a, 4))
    assert not same(epoch_batches(a, 3), epoch_batches(make(1), 3))
    assert same(epoch_batches(a, 4), epoch_batches(a, 4))  # iterating again repeats the epoch


def test_drop_last_and_len():
    spec = get_spec("cifar10")
    images, labels = data(spec, 50)
    loader = BatchLoader(images, labels, spec=spec, batch_size=16, train=True, seed=0, drop_last=True)
    assert len(loader) == 3 and [len(y) for _, y in loader] == [16, 16, 16]
    assert len(BatchLoader(images, labels, spec=spec, batch_size=50, train=False, seed=0)) == 1


def test_abandoned_iteration_stops_the_prefetch_thread():
    spec = get_spec("cifar10")
    images, labels = data(spec, 200)
    before = threading.active_count()
    iterator = iter(BatchLoader(images, labels, spec=spec, batch_size=8, train=True, seed=0, prefetch=2))
    next(iterator)
    iterator.close()
    assert threading.active_count() == before


def test_errors_in_the_prefetch_thread_reach_the_consumer(monkeypatch):
    spec = get_spec("cifar10")
    images, labels = data(spec, 40)
    loader = BatchLoader(images, labels, spec=spec, batch_size=8, train=True, seed=0, prefetch=2)

    def broken(plan, i):
        raise RuntimeError(f"batch {i} failed")

    monkeypatch.setattr(loader, "_batch", broken)
    with pytest.raises(RuntimeError, match="batch 0 failed"):
        list(loader)


U8, LONG = torch.uint8, torch.long


@pytest.mark.parametrize(
    "images, labels, kwargs, message",
    [
        (torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=LONG), {}, "must be uint8"),
        (torch.zeros(4, 3, 28, 28, dtype=U8), torch.zeros(4, dtype=LONG), {}, r"\(N, 3, 32, 32\)"),
        (torch.zeros(4, 3, 32, 32, dtype=U8), torch.zeros(3, dtype=LONG), {}, "labels must be int64"),
        (torch.zeros(4, 3, 32, 32, dtype=U8), torch.zeros(4, dtype=torch.int32), {}, "labels must be int64"),
        (torch.zeros(4, 3, 32, 32, dtype=U8), torch.zeros(4, dtype=LONG), {"batch_size": 0}, "batch_size"),
        (torch.zeros(4, 3, 32, 32, dtype=U8), torch.zeros(4, dtype=LONG), {"drop_last": True}, "no batch"),
        (torch.zeros(4, 3, 28, 28, dtype=U8), torch.zeros(4, dtype=LONG), {"spec": "fashion_mnist"}, r"\(N, 1, 28, 28\)"),
        (torch.zeros(4, 1, 32, 32, dtype=U8), torch.zeros(4, dtype=LONG), {}, r"\(N, 3, 32, 32\)"),
    ],
)
def test_bad_loader_arguments(images, labels, kwargs, message):
    options = {"batch_size": 8, "train": True, "seed": 0, "spec": "cifar10", **kwargs}
    options["spec"] = get_spec(options["spec"])
    with pytest.raises(ValueError, match=message):
        BatchLoader(images, labels, **options)


def test_spec_validation_and_round_trip():
    spec = get_spec("cifar10")
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    assert spec.normalize(x).dtype == torch.float64
    assert torch.allclose(spec.denormalize(spec.normalize(x)), x)
    with pytest.raises(ValueError, match="pad_mode"):
        DatasetSpec("bad", 10, 32, (0.5,) * 3, (0.5,) * 3, pad=4, pad_mode="edge", flip=True)
    with pytest.raises(ValueError, match="pad must be in"):
        DatasetSpec("bad", 10, 4, (0.5,) * 3, (0.5,) * 3, pad=4, pad_mode="reflect", flip=True)
    with pytest.raises(ValueError, match="std must be positive"):
        DatasetSpec("bad", 10, 32, (0.5,) * 3, (0.5, 0.0, 0.5), pad=4, pad_mode="zeros", flip=True)


def test_spec_channels():
    grey = get_spec("fashion_mnist")
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    assert torch.allclose(grey.normalize(x), (x - 0.2860) / 0.3530)
    assert torch.allclose(grey.denormalize(grey.normalize(x)), x)
    assert all(get_spec(n).channels == 3 for n in ("cifar10", "cifar100", "svhn", "stl10", "digits"))
    with pytest.raises(ValueError, match=r"one value per channel \(1\), got 3 and 3"):
        DatasetSpec("bad", 10, 28, (0.5,) * 3, (0.5,) * 3, pad=2, pad_mode="zeros", flip=True, channels=1)
    with pytest.raises(ValueError, match="channels must be >= 1"):
        DatasetSpec("bad", 10, 28, (), (), pad=2, pad_mode="zeros", flip=True, channels=0)
    with pytest.raises(ValueError, match="2 class names for 10 classes"):
        DatasetSpec("bad", 10, 28, (0.5,), (0.5,), pad=2, pad_mode="zeros", flip=True, channels=1,
                    class_names=("a", "b"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_matches_cpu():
    """With device="cuda" the uint8 data live on the GPU and are augmented there: same batches."""
    spec = get_spec("cifar10")
    images, labels = data(spec, 70)
    cpu = BatchLoader(images, labels, spec=spec, batch_size=32, train=True, seed=0, device="cpu")
    gpu = BatchLoader(images, labels, spec=spec, batch_size=32, train=True, seed=0, device="cuda")
    for (x1, y1), (x2, y2) in zip(epoch_batches(cpu, 2), epoch_batches(gpu, 2), strict=True):
        assert x2.is_cuda and torch.allclose(x1, x2.cpu(), atol=1e-6) and torch.equal(y1, y2.cpu())


def test_a_last_training_batch_of_one_image_is_dropped():
    """BatchNorm cannot normalise one sample (DGL's BatchNorm1d heads fail on it): training drops such a
    batch; evaluation keeps every image."""
    from locallearn.data import BatchLoader, get_spec

    spec = get_spec("digits")
    images, labels = torch.zeros(65, 3, 32, 32, dtype=torch.uint8), torch.zeros(65, dtype=torch.int64)
    train = BatchLoader(images, labels, spec=spec, batch_size=64, train=True, seed=0, prefetch=0)
    assert len(train) == 1 and [len(y) for _, y in train] == [64]
    test = BatchLoader(images, labels, spec=spec, batch_size=64, train=False, seed=0, prefetch=0)
    assert [len(y) for _, y in test] == [64, 1]
    images, labels = torch.zeros(66, 3, 32, 32, dtype=torch.uint8), torch.zeros(66, dtype=torch.int64)
    two = BatchLoader(images, labels, spec=spec, batch_size=64, train=True, seed=0, prefetch=0)
    assert [len(y) for _, y in two] == [64, 2]


def test_the_fingerprint_tells_any_change_of_pixels_labels_count_or_order():
    spec = get_spec("cifar10")
    images, labels = data(spec, 12)

    def fingerprint(x, y, **kwargs):
        return BatchLoader(x, y, spec=spec, **{"batch_size": 4, "train": True, "seed": 0, **kwargs}).fingerprint

    same = fingerprint(images, labels)
    assert len(same) == 16 and int(same, 16) >= 0
    assert fingerprint(images.clone(), labels.clone(), seed=5, train=False, batch_size=5) == same  # not the loader's
    one_pixel = images.clone()
    one_pixel[7, 2, 31, 0] ^= 1
    other_label = labels.clone()
    other_label[3] = (other_label[3] + 1) % 10
    order = torch.arange(12).roll(1)
    changed = {fingerprint(one_pixel, labels), fingerprint(images, other_label), fingerprint(images[:11], labels[:11]),
               fingerprint(images[order], labels[order])}
    assert same not in changed and len(changed) == 4
