"""Exact resume: a run killed with SIGKILL in the middle of epoch 2 and resumed ends with the same
metrics.jsonl (every deterministic field) and the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

ARGS = ["train", "--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--epochs", "2",
        "--limit-train", "192", "--limit-test", "32", "--batch-size", "32", "--seed", "3", "--device", "cpu"]
TIMING = {"epoch_time_s", "train_time_s", "images_per_s", "checksum"}  # wall-clock fields (and the line's checksum)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every process: same float sums


def train(out, *extra):
    return subprocess.run([sys.executable, "-m", "locallearn", *ARGS, "--out", str(out), *extra],
                          capture_output=True, text=True, env=ENV, timeout=300)


def deterministic(path):
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_sigkill_in_epoch_two_then_resume_matches_an_uninterrupted_run(tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert train(reference).returncode == 0

    proc = subprocess.Popen([sys.executable, "-m", "locallearn", *ARGS, "--out", str(interrupted)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 240
    while not (interrupted / "checkpoint.pt").exists():  # epoch 1 is done: epoch 2 (6 batches) begins
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before epoch 1 was saved"
        time.sleep(0.005)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (interrupted / "summary.json").exists(), "killed too late: epoch 2 had already finished"
    assert torch.load(interrupted / "checkpoint.pt", weights_only=True)["epoch"] == 1

    resumed = train(interrupted, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1" in resumed.stdout

    assert deterministic(interrupted / "metrics.jsonl") == deterministic(reference / "metrics.jsonl")
    assert [r["epoch"] for r in deterministic(interrupted / "metrics.jsonl")] == [1, 2]
    a = torch.load(reference / "checkpoint.pt", weights_only=True)
    b = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["test_acc"] == json.loads((reference / "summary.json").read_text())["test_acc"]


def test_sigkill_during_start_up_then_a_bare_resume_trains_the_run_that_was_asked_for(tmp_path):
    """Killed while the data and network are built (before config.yaml is written), the run is resumed by
    `train --out RUN --resume` alone with the options it was started with (its start record), not the
    command's defaults, and ends as an uninterrupted run does."""
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert train(reference).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "locallearn", *ARGS, "--out", str(interrupted)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 240
    while not (interrupted / ".start.yaml").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it recorded its start"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (interrupted / "config.yaml").exists(), "killed too late: config.yaml was written"

    resumed = subprocess.run([sys.executable, "-m", "locallearn", "train", "--out", str(interrupted), "--resume"],
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resnet20 / contsup (K=2" in resumed.stdout and "holds no run to resume" not in resumed.stdout
    assert deterministic(interrupted / "metrics.jsonl") == deterministic(reference / "metrics.jsonl")
    assert not (interrupted / ".start.yaml").exists()  # config.yaml says it now
    other = subprocess.run([sys.executable, "-m", "locallearn", *ARGS, "--out", str(tmp_path / "x"), "--epochs", "1"],
                           capture_output=True, text=True, env=ENV, timeout=300)
    assert other.returncode == 0 and not (tmp_path / "x" / ".start.yaml").exists()
