"""Download, checksum and safe extraction, on archives built here and served through file:// URLs."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile

import numpy as np
import pytest

from locallearn.data import DatasetError, download, safe_extract
from locallearn.data import fetch as fetch_module
from locallearn.data.fetch import fetch, md5sum
from locallearn.data.fixtures import write_fake_dataset
from locallearn.data.sources import SOURCES, Archive


def make_tar(path, members: dict[str, bytes]) -> str:
    """A .tar.gz of regular files; returns its MD5."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def add_special(path, info: tarfile.TarInfo) -> None:
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("ok.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"hi"))
        tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)


def test_md5sum_matches_hashlib(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(np.random.default_rng(0).bytes(3_000_000))
    assert md5sum(path) == hashlib.md5(path.read_bytes()).hexdigest()


def test_fetch_verifies_and_renames(tmp_path):
    src = tmp_path / "served.tar.gz"
    md5 = make_tar(src, {"a/b.txt": b"hello"})
    root = tmp_path / "root"
    root.mkdir()
    target = fetch(Archive(src.as_uri(), "got.tar.gz", md5, extract=True), root, progress=False)
    assert target == root / "got.tar.gz" and target.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in root.iterdir()) == ["got.tar.gz"]  # no temporary file left behind


def test_fetch_checksum_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "served.tar.gz"
    make_tar(src, {"a.txt": b"hello"})
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DatasetError, match="does not match the published 0{32}") as err:
        fetch(Archive(src.as_uri(), "got.tar.gz", "0" * 32, extract=True), root, progress=False)
    assert "\n" not in str(err.value)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/cifar.tar.gz", "file:///nonexistent/dir/cifar.tar.gz"])
def test_fetch_without_network_is_one_line(tmp_path, url):
    with pytest.raises(DatasetError) as err:
        fetch(Archive(url, "x.tar.gz", "0" * 32, extract=True), tmp_path, progress=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"could not download {url}")
    assert list(tmp_path.iterdir()) == []


def test_safe_extract_all_and_selected_members(tmp_path):
    archive = tmp_path / "a.tar.gz"
    make_tar(archive, {"./top/keep.bin": b"1", "top/big_unlabeled.bin": b"2" * 100, "top/other.txt": b"3"})
    out = tmp_path / "all"
    extracted = safe_extract(archive, out)
    assert sorted(p.name for p in extracted) == ["big_unlabeled.bin", "keep.bin", "other.txt"]
    out = tmp_path / "some"
    safe_extract(archive, out, members=["top/keep.bin"])
    assert [p.name for p in (out / "top").iterdir()] == ["keep.bin"]
    with pytest.raises(DatasetError, match="expected members missing from the archive: top/absent"):
        safe_extract(archive, tmp_path / "x", members=["top/keep.bin", "top/absent"])


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info


def regular(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    "member, reason",
    [
        (regular("../escape.txt"), "path escapes"),
        (regular("sub/../../escape.txt"), "path escapes"),
        (regular("/tmp/absolute.txt"), "absolute path"),
        (symlink("link", "/etc/passwd"), "points outside"),
        (symlink("sub/link", "../../outside"), "points outside"),
        (hardlink("hard", "../outside"), "points outside"),
        (device("dev"), "not a regular file"),
    ],
)
def test_safe_extract_refuses_malicious_members(tmp_path, member, reason):
    archive = tmp_path / "evil.tar.gz"
    add_special(archive, member)
    dest = tmp_path / "dest" / "inner"
    with pytest.raises(DatasetError, match=reason) as err:
        safe_extract(archive, dest)
    assert "\n" not in str(err.value) and member.name in str(err.value)
    assert not dest.exists()  # refused before anything was written
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "dest" / "escape.txt").exists()


def test_safe_extract_refuses_writing_through_a_link(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(symlink("sub", "."))  # points inside, harmless by itself ...
        tar.addfile(regular("sub/file"), io.BytesIO(b"x"))  # ... but nothing may be written through it
    with pytest.raises(DatasetError, match="goes through a link"):
        safe_extract(archive, tmp_path / "dest")


def test_safe_extract_truncated_archive(tmp_path):
    archive = tmp_path / "a.tar.gz"
    make_tar(archive, {"f.bin": np.random.default_rng(0).bytes(200_000)})
    archive.write_bytes(archive.read_bytes()[:50_000])
    with pytest.raises(DatasetError, match="not a readable tar archive") as err:
        safe_extract(archive, tmp_path / "dest")
    assert str(archive) in str(err.value)


def served_cifar10(tmp_path, monkeypatch, md5: str | None = None):
    """Replace cifar10's source by a tiny official-layout archive behind a file:// URL."""
    staging = tmp_path / "staging"
    write_fake_dataset("cifar10", staging, 12, 8)
    tarball = tmp_path / "served" / "cifar-10-python.tar.gz"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    real = SOURCES.get("cifar10")
    archive = Archive(tarball.as_uri(), "cifar-10-python.tar.gz", md5 or md5sum(tarball), extract=True)
    source = dataclasses.replace(
        real,
        archives=(archive,),
        train=tuple(dataclasses.replace(f, count=12) for f in real.train),
        test=tuple(dataclasses.replace(f, count=8) for f in real.test),
    )
    monkeypatch.setitem(SOURCES._entries, "cifar10", source)


def test_download_end_to_end_then_noop(tmp_path, monkeypatch):
    served_cifar10(tmp_path, monkeypatch)
    root = tmp_path / "data"
    report = download("cifar10", root, progress=False)
    assert report.ok and [f.detail for f in report.files] == ["12 images"] * 5 + ["8 images"]
    assert not (root / "cifar-10-python.tar.gz").exists()  # unpacked, then removed

    def no_network(*args, **kwargs):
        raise AssertionError("download fetched although the data were complete")

    monkeypatch.setattr(fetch_module, "fetch", no_network)
    assert download("cifar10", root, progress=False).ok


def test_download_checksum_mismatch(tmp_path, monkeypatch):
    served_cifar10(tmp_path, monkeypatch, md5="f" * 32)
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match="does not match the published f{32}"):
        download("cifar10", root, progress=False)
    assert list(root.iterdir()) == []


def test_download_bundled_is_noop(tmp_path):
    assert download("digits", tmp_path / "unused").ok
    assert not (tmp_path / "unused").exists()
