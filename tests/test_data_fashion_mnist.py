"""Fashion-MNIST: where its files are looked for (--data-dir, its fashion-mnist/ subfolder, Debian's folder),
the real files when installed, and downloading verified by the MD5 of the decompressed data, so that a
recompressed copy of the official files passes and altered data do not."""

from __future__ import annotations

import dataclasses
import gzip
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from locallearn.cli import main
from locallearn.data import BatchLoader, DatasetError, check, describe_dataset, download, get_spec, load_split
from locallearn.data import sources
from locallearn.data.fetch import Digest, md5sum
from locallearn.data.fixtures import write_fake_dataset, write_fashion_mnist
from locallearn.data.sources import SOURCES, Archive

REAL = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
N_TRAIN, N_TEST = 12, 8
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def debian(tmp_path, monkeypatch) -> Path:
    """Debian's dataset folder, moved to an empty temporary one: the installed files must not leak in."""
    monkeypatch.setattr(sources, "DEBIAN_DATASETS", tmp_path / "usr-share-datasets")
    return tmp_path / "usr-share-datasets" / "fashion-mnist"


@pytest.fixture
def small(monkeypatch):
    """fashion_mnist with official counts of N_TRAIN / N_TEST, so that small fixture files pass strict checks."""
    real = SOURCES.get("fashion_mnist")
    source = dataclasses.replace(
        real,
        train=tuple(dataclasses.replace(f, count=N_TRAIN) for f in real.train),
        test=tuple(dataclasses.replace(f, count=N_TEST) for f in real.test),
    )
    monkeypatch.setitem(SOURCES._entries, "fashion_mnist", source)
    return source


def one_line(err: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    for needle in needles:
        assert needle in message, message
    return message


def publish_as_official(monkeypatch, small, directory: Path) -> None:
    """Make the fixture files in ``directory`` the official ones: their MD5s (of the decompressed data) become
    the published ones, which ``check`` compares."""
    archives = []
    for archive in small.archives:
        gz = directory / archive.filename
        path, of = (gz, "gunzipped") if gz.is_file() else (gz.with_suffix(""), "file")
        archives.append(dataclasses.replace(archive, md5=md5sum(path, of=of)))
    monkeypatch.setitem(SOURCES._entries, "fashion_mnist", dataclasses.replace(small, archives=tuple(archives)))


# --- lookup --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["root", "root/fashion-mnist", "debian"])
@pytest.mark.parametrize("gzipped", [True, False])
def test_files_are_found_gzipped_or_plain_in_each_place(tmp_path, debian, small, where, gzipped, monkeypatch):
    root = tmp_path / "data"
    directory = {"root": root, "root/fashion-mnist": root / "fashion-mnist", "debian": debian}[where]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_TRAIN, 1, 28, 28), dtype=np.uint8)
    write_fashion_mnist(directory, "train", images, np.arange(N_TRAIN) % 10, gzipped=gzipped)
    write_fashion_mnist(directory, "t10k", images[:N_TEST], np.arange(N_TEST) % 10, gzipped=gzipped)
    x, y = load_split("fashion_mnist", root, train=True)
    assert x.shape == (N_TRAIN, 1, 28, 28) and x.dtype == torch.uint8 and np.array_equal(x.numpy(), images)
    assert y.tolist() == [i % 10 for i in range(N_TRAIN)]
    publish_as_official(monkeypatch, small, directory)
    report = check("fashion_mnist", root)
    assert report.ok
    suffix = ".gz" if gzipped else ""
    shown = f"{NAMES[0]}{suffix}" if where == "root" else str(directory / f"{NAMES[0]}{suffix}")
    if where == "root/fashion-mnist":
        shown = f"fashion-mnist/{NAMES[0]}{suffix}"  # relative to the root, where it was found
    assert report.files[0].path == shown and report.files[0].detail == f"{N_TRAIN} images"
    header = str(report).splitlines()[0]  # the folder the files are in, not an empty root
    assert header == (f"fashion_mnist in {debian} (not in {root}): ok" if where == "debian" else f"fashion_mnist in {root}: ok")
    # a run says where it reads them when that is not --data-dir itself (it recorded the data_dir, unsaid)
    read_from = describe_dataset("fashion_mnist", root).read_from
    assert read_from == (None if where == "root" else f"files from {directory}, not --data-dir itself")


def test_root_comes_before_debian_and_a_split_is_never_mixed(tmp_path, debian, small):
    root = tmp_path / "data"
    write_fake_dataset("fashion_mnist", debian, N_TRAIN, N_TEST, seed=1)
    write_fake_dataset("fashion_mnist", root, N_TRAIN, N_TEST, seed=2)
    from_root, _ = load_split("fashion_mnist", root, train=False)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    # With one file missing from the root the dataset is still read from the root (and found incomplete),
    # not patched up with Debian's labels of other images.
    with pytest.raises(DatasetError) as err:
        load_split("fashion_mnist", root, train=False)
    message = one_line(err, f"missing {root / 't10k-labels-idx1-ubyte.gz'}",
                       f"complete the partial copy in {root}, or remove its {root / 'train-images-idx3-ubyte.gz'}, "
                       f"{root / 'train-labels-idx1-ubyte.gz'}, {root / 't10k-images-idx3-ubyte.gz'}: {debian} holds "
                       f"every file")
    assert "apt-get" not in message  # Debian's copy is installed: installing it is no fix
    for path in root.iterdir():
        path.unlink()
    from_debian, _ = load_split("fashion_mnist", root, train=False)
    assert not torch.equal(from_root, from_debian)


def test_missing_says_where_it_looked_and_how_to_get_it(tmp_path, debian, capsys):
    root = tmp_path / "data"
    with pytest.raises(DatasetError) as err:
        load_split("fashion_mnist", root, train=True)
    one_line(
        err,
        f"fashion_mnist: missing {root / 'train-images-idx3-ubyte.gz'}",
        "train-images-idx3-ubyte.gz or train-images-idx3-ubyte",
        f"also looked in {root / 'fashion-mnist'}, {debian}",
        "`apt-get install dataset-fashion-mnist` (or `make fashion-mnist`)",
        f"`locallearn data download fashion_mnist --root {root}`",
    )
    assert main(["data", "check", "fashion_mnist", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "missing  train-images-idx3-ubyte.gz" in out and "apt-get install dataset-fashion-mnist" in out


def test_spec():
    spec = describe_dataset("fashion_mnist", None)
    assert spec is get_spec("fashion_mnist")
    assert (spec.channels, spec.image_size, spec.num_classes) == (1, 28, 10)
    assert spec.mean == (0.2860,) and spec.std == (0.3530,)
    assert (spec.pad, spec.pad_mode, spec.flip) == (2, "zeros", True)
    assert spec.class_names[0] == "T-shirt/top" and spec.class_names[9] == "Ankle boot"
    with pytest.raises(ValueError, match="fashion_mnist delivers 28×28 images, got image_size=32"):
        describe_dataset("fashion_mnist", None, image_size=32)


# --- the real files ------------------------------------------------------------------------------------


@pytest.mark.skipif(not all((REAL / f"{n}.gz").is_file() for n in NAMES), reason="dataset-fashion-mnist not installed")
def test_real_files_counts_shapes_statistics_and_checksums():
    x, y = load_split("fashion_mnist", REAL, train=True)
    xt, yt = load_split("fashion_mnist", REAL, train=False)
    assert x.shape == (60_000, 1, 28, 28) and xt.shape == (10_000, 1, 28, 28)
    assert torch.equal(torch.bincount(y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(yt), torch.full((10,), 1000))
    spec = get_spec("fashion_mnist")
    # Mean and (population) std of the [0, 1] image from the histogram of pixel values: exact, and without
    # a 376 MB float64 copy of the training set.
    count = torch.bincount(x.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (count * values).sum() / count.sum()
    std = ((count * (values - mean) ** 2).sum() / count.sum()).sqrt()
    assert round(mean.item(), 4) == spec.mean[0] and round(std.item(), 4) == spec.std[0]
    # The recorded MD5s are of these (official) data, whatever the .gz wrapper.
    for archive in SOURCES.get("fashion_mnist").archives:
        assert md5sum(REAL / archive.filename, of="gunzipped") == archive.md5


# --- download and verification -------------------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [True, False])
def test_check_finds_a_changed_byte_that_the_structure_does_not_show(tmp_path, small, monkeypatch, gzipped):
    root = tmp_path / "data"
    images = np.random.default_rng(0).integers(0, 256, (N_TRAIN, 1, 28, 28), dtype=np.uint8)
    write_fashion_mnist(root, "train", images, np.arange(N_TRAIN) % 10, gzipped=gzipped)
    write_fashion_mnist(root, "t10k", images[:N_TEST], np.arange(N_TEST) % 10, gzipped=gzipped)
    publish_as_official(monkeypatch, small, root)
    assert check("fashion_mnist", root).ok
    name = "t10k-images-idx3-ubyte" + (".gz" if gzipped else "")
    data = gzip.decompress((root / name).read_bytes()) if gzipped else (root / name).read_bytes()
    data = data[:5000] + bytes([data[5000] ^ 0xFF]) + data[5001:]  # one pixel: a valid IDX file still
    (root / name).write_bytes(gzip.compress(data) if gzipped else data)
    report = check("fashion_mnist", root)
    assert not report.ok and [f.status for f in report.files] == ["present", "present", "corrupt", "present"]
    what = "MD5 of the decompressed data" if gzipped else "MD5"
    assert report.files[2].detail.startswith(what) and report.files[2].detail.endswith(
        "a byte differs from the official file; replace it")
    assert check("fashion_mnist", root, strict=False).ok  # not strict: the structure only


def serve(tmp_path, monkeypatch, small, *, alter: str | None = None) -> Path:
    """Serve the four files through file:// URLs, gzipped differently (level 1, another mtime) from the copy
    the MD5s are taken of; ``alter`` names a file whose served data differ by one byte."""
    reference, served = tmp_path / "reference", tmp_path / "served"
    write_fake_dataset("fashion_mnist", reference, N_TRAIN, N_TEST)
    served.mkdir()
    archives = []
    for archive in small.archives:
        data = gzip.decompress((reference / archive.filename).read_bytes())
        if archive.filename.startswith(alter or "\0"):
            data = data[:-1] + bytes([data[-1] ^ 1])
        (served / archive.filename).write_bytes(gzip.compress(data, compresslevel=1, mtime=12345))
        md5 = md5sum(reference / archive.filename, of="gunzipped")
        archives.append(dataclasses.replace(archive, url=(served / archive.filename).as_uri(), md5=md5))
    monkeypatch.setitem(SOURCES._entries, "fashion_mnist", dataclasses.replace(small, archives=tuple(archives)))
    assert md5sum(served / f"{NAMES[0]}.gz") != md5sum(reference / f"{NAMES[0]}.gz")  # other wrappers
    return served


def test_download_accepts_recompressed_official_data(tmp_path, monkeypatch, small):
    served = serve(tmp_path, monkeypatch, small)
    root = tmp_path / "data"
    report = download("fashion_mnist", root, progress=False)
    assert report.ok and [f.detail for f in report.files] == ["12 images", "12 labels", "8 images", "8 labels"]
    assert sorted(p.name for p in root.iterdir()) == sorted(f"{n}.gz" for n in NAMES)  # no temporary left
    assert (root / NAMES[0]).with_suffix(".gz").read_bytes() == (served / f"{NAMES[0]}.gz").read_bytes()


def test_download_refuses_altered_data(tmp_path, monkeypatch, small):
    serve(tmp_path, monkeypatch, small, alter="t10k-images")
    root = tmp_path / "data"
    with pytest.raises(DatasetError) as err:
        download("fashion_mnist", root, progress=False)
    one_line(err, "t10k-images-idx3-ubyte.gz: MD5 of the decompressed data", "does not match the published")
    assert not (root / "t10k-images-idx3-ubyte.gz").exists()
    assert not any(p.name.endswith(".part") for p in root.iterdir())


def test_a_wrong_file_already_present_is_a_checksum_mismatch(tmp_path, monkeypatch, small):
    serve(tmp_path, monkeypatch, small)
    offline = tuple(dataclasses.replace(a, url=f"http://127.0.0.1:9/{a.filename}") for a in small.archives)
    offline_source = dataclasses.replace(SOURCES.get("fashion_mnist"), archives=offline)
    monkeypatch.setitem(SOURCES._entries, "fashion_mnist", offline_source)
    root = tmp_path / "data"
    root.mkdir()
    wrong = root / "train-images-idx3-ubyte.gz"
    wrong.write_bytes(gzip.compress(b"not the official data"))
    with pytest.raises(DatasetError) as err:
        download("fashion_mnist", root, progress=False)
    message = one_line(err, f"{wrong}: MD5 of the decompressed data", "delete it and run the command again")
    assert "could not download" not in message
    assert wrong.read_bytes() == gzip.compress(b"not the official data")  # reported, not replaced


def test_a_wrong_archive_already_present_is_a_checksum_mismatch_for_every_dataset(tmp_path, monkeypatch):
    """The same for a tarball (CIFAR) with no network: the file is named, not 'could not download'."""
    real = SOURCES.get("cifar10")
    offline = tuple(dataclasses.replace(a, url=f"http://127.0.0.1:9/{a.filename}") for a in real.archives)
    monkeypatch.setitem(SOURCES._entries, "cifar10", dataclasses.replace(real, archives=offline))
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"a partial download")
    with pytest.raises(DatasetError) as err:
        download("cifar10", tmp_path, progress=False)
    message = one_line(err, f"{tmp_path / 'cifar-10-python.tar.gz'}: MD5 ", "does not match the published c58f3")
    assert "could not download" not in message


@pytest.mark.parametrize(
    "stream, problem",
    [
        (lambda gz: gz[: len(gz) // 2], "the gzip stream is cut short"),
        (lambda gz: gz + b"junk", "data after the end of the gzip stream"),
        (lambda gz: b"plain bytes, not gzip", "not a valid gzip stream"),
    ],
)
def test_digest_of_broken_gzip_streams(stream, problem):
    gz = gzip.compress(bytes(range(256)) * 400)
    digest = Digest("gunzipped")
    digest.update(stream(gz))
    archive = Archive(
        "http://x/f.gz", "f.gz", md5sum_of_bytes(bytes(range(256)) * 400), extract=False, md5_of="gunzipped"
    )
    assert not digest.matches(archive) and digest.problem.startswith(problem)
    assert problem in digest.mismatch(archive)


def test_digest_in_any_chunks_and_in_bounded_memory():
    """Chunking does not change the MD5, and a highly compressed stream is never inflated whole: 24 MB of
    zeros arrive as one 24 KB chunk and are hashed a megabyte at a time."""
    data = bytes(24 << 20)
    gz = gzip.compress(data, compresslevel=9)
    assert len(gz) < 30_000
    one, many = Digest("gunzipped"), Digest("gunzipped")
    tracemalloc.start()
    try:
        one.update(gz)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for i in range(0, len(gz), 777):
        many.update(gz[i : i + 777])
    assert one.hexdigest() == many.hexdigest() == md5sum_of_bytes(data) and not one.problem
    assert peak < 4 << 20


def md5sum_of_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data).hexdigest()


# --- training-side use ---------------------------------------------------------------------------------


def test_loader_on_a_fashion_mnist_split(tmp_path, small):
    write_fake_dataset("fashion_mnist", tmp_path, N_TRAIN, N_TEST)
    images, labels = load_split("fashion_mnist", tmp_path, train=True)
    spec = describe_dataset("fashion_mnist", tmp_path)
    loader = BatchLoader(images, labels, spec=spec, batch_size=5, train=True, seed=0, prefetch=0)
    x, y = next(iter(loader))
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (5,)


def test_a_run_records_in_its_config_where_the_files_were_read(tmp_path, debian, small, capsys):
    """config.yaml records --data-dir as given; its header names the folder the files came from (Debian's)."""
    root = tmp_path / "data"
    write_fashion_mnist(debian, "train", np.zeros((N_TRAIN, 1, 28, 28), np.uint8), np.arange(N_TRAIN) % 10)
    write_fashion_mnist(debian, "t10k", np.zeros((N_TEST, 1, 28, 28), np.uint8), np.arange(N_TEST) % 10)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "fashion_mnist", "--data-dir", str(root), "--model", "resnet20", "--method",
                 "greedy", "--num-modules", "2", "--epochs", "1", "--limit-train", "32", "--limit-test", "16",
                 "--batch-size", "16", "--device", "cpu", "--out", str(out)]) == 0
    header = [line for line in (out / "config.yaml").read_text().splitlines() if line.startswith("# data:")]
    assert header == [f"# data: {min(32, N_TRAIN)} train, {min(16, N_TEST)} test images (files from {debian}, not "
                      f"--data-dir itself); cpu"]
