"""`locallearn data download|check`: exit codes, reports, and one-line errors instead of tracebacks."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from locallearn.cli import main
from locallearn.data.fixtures import write_fake_dataset
from locallearn.data.sources import SOURCES


def test_check_missing_then_present(tmp_path, capsys, monkeypatch):
    assert main(["data", "check", "stl10", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "missing  stl10_binary/train_X.bin" in out
    assert f"locallearn data download stl10 --root {tmp_path}" in out

    write_fake_dataset("stl10", tmp_path, 6, 4)
    real = SOURCES.get("stl10")  # the fixture files are small: expect their sizes, not the official ones
    small = dataclasses.replace(
        real,
        train=tuple(dataclasses.replace(f, count=6) for f in real.train),
        test=tuple(dataclasses.replace(f, count=4) for f in real.test),
    )
    monkeypatch.setitem(SOURCES._entries, "stl10", small)
    assert main(["data", "check", "stl10", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stl10 in" in out and ": ok" in out and "present  stl10_binary/test_y.bin  (4 labels)" in out


def test_download_without_network_is_one_line(tmp_path, capsys, monkeypatch):
    real = SOURCES.get("svhn")
    offline = tuple(dataclasses.replace(a, url=f"http://127.0.0.1:9/{a.filename}") for a in real.archives)
    monkeypatch.setitem(SOURCES._entries, "svhn", dataclasses.replace(real, archives=offline))
    assert main(["data", "download", "svhn", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("locallearn: error: could not download http://127.0.0.1:9/train_32x32.mat")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unknown_dataset(tmp_path, capsys):
    assert main(["data", "check", "imagenet", "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "locallearn: error: unknown dataset 'imagenet'; "
        "valid datasets: cifar10, cifar100, digits, fashion_mnist, imagefolder, stl10, svhn.\n"
    )


def test_python_dash_m(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "locallearn", "data", "check", "digits", "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "bundled with scikit-learn" in result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_fashion_mnist_without_apt_get(tmp_path):
    """Where there is no apt-get, the Makefile target says in one line how to get the files instead."""
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [shutil.which("make"), "-s", "--no-print-directory", "fashion-mnist"],
        cwd=repo, env={"PATH": str(tmp_path)}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert result.stdout == (
        "make fashion-mnist: no apt-get on this system; "
        "run `locallearn data download fashion_mnist --root data` instead.\n"
    )
