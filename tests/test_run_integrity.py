"""Run directories that never lose or mix results, and the rough edges a new user meets — one test per case
of the integrity issue (numbers in the test names). Cases with a kill, a signal or two writers use real
processes (marked ``slow``); the data-size checks (9) are in test_data_size_checks.py, the report's grouping
(14) in test_report.py, --compile (16) in test_compile.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import locallearn
import locallearn as ll
from locallearn.cli import main
from locallearn.training import RunDir, fit, resolve
from locallearn.training.rundir import load_state, save_state

TINY = ["--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--limit-train", "64",
        "--limit-test", "32", "--batch-size", "32", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(out, *extra) -> int:
    return main(["train", *TINY, "--epochs", "2", "--out", str(out), *extra])


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("locallearn: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run (copied by the tests that damage it)."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert train(out) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --- results lost or mixed -----------------------------------------------------------------------------------
def test_01_overwrite_clears_stage_files_and_stale_stage_files_are_not_resumed(tmp_path, finished, capsys):
    run = copy_run(finished, tmp_path / "run")
    stages = run / "pipeline"
    stages.mkdir()
    (stages / "stage0-epoch3.pt").write_bytes(b"from an earlier pipeline run")
    assert train(run, "--overwrite") == 0
    assert not stages.exists()  # everything the run owns is cleared
    # a stage file of another run (its id differs) is left out of a resume, with a warning naming it
    from locallearn.distributed.runner import _sound_stage_files

    other = tmp_path / "other.pt"
    save_state(other, {"format": 2, "run_id": "elsewhere", "epoch": 3})
    mine = tmp_path / "mine.pt"
    save_state(mine, {"format": 2, "run_id": "this", "epoch": 2})
    warnings = []
    sound = _sound_stage_files({0: {3: other, 2: mine}}, "this", warnings.append)
    assert {stage: {e: f.path for e, f in files.items()} for stage, files in sound.items()} == {0: {2: mine}}
    assert "other.pt was left by another run" in warnings[0]


def test_02_resume_without_config_writes_it_from_the_checkpoint_and_keeps_everything(tmp_path, finished, capsys):
    run = copy_run(finished, tmp_path / "run")
    (run / "config.yaml").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--out", str(run), "--resume"]) == 0  # refused before (and --overwrite advised)
    assert "is already finished" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in run.iterdir()}
    assert after.pop("config.yaml") and after == before


def test_03_overwrite_checks_the_new_inputs_before_clearing(tmp_path, finished, capsys):
    run = copy_run(finished, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert train(run, "--overwrite", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing")) == 2
    assert "cifar10" in one_line(capsys)
    assert train(run, "--overwrite", "--model", "swin_cifar", "--pretrained", str(tmp_path / "no_such_dir"),
                 "--image-size", "32") == 2
    assert "pretrained" in one_line(capsys)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # the old run is untouched


def _start(out: Path, *extra: str, epochs: int = 30) -> subprocess.Popen:
    args = [sys.executable, "-m", "locallearn", "train", *TINY, "--limit-train", "256", "--epochs", str(epochs),
            "--out", str(out), *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_04_a_second_writer_is_refused_naming_the_holder_and_a_crash_releases_the_lock(tmp_path):
    out = tmp_path / "run"
    first = _start(out)
    _wait_for(out / "checkpoint.pt", first)
    second = subprocess.run([sys.executable, "-m", "locallearn", "train", "--out", str(out), "--resume"],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert second.returncode == 2 and f"another locallearn process (pid {first.pid})" in second.stderr
    assert second.stderr.count("\n") == 1
    first.send_signal(signal.SIGKILL)
    first.wait()
    records = RunDir(out).read_metrics()
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))  # one writer: in order, no repeats
    third = _start(out, "--resume", epochs=30)  # the kill released the lock
    _wait_for(out / "checkpoint.prev.pt", third)
    third.send_signal(signal.SIGKILL)
    third.wait()


def test_05_resume_refuses_a_checkpoint_of_other_options(tmp_path, finished, capsys):
    run = copy_run(finished, tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["optim"]["lr"], config["optim"]["epochs"] = 0.5, 3  # edited by hand: no longer what was trained
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = one_line(capsys)
    assert "was written with other options" in err and "lr (0.1 → 0.5)" in err and "epochs (2 → 3)" in err


def test_06_a_planted_link_is_not_written_through(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("checkpoint.pt.tmp", ".checkpoint.pt.tmp", "metrics.jsonl.tmp", "config.yaml.tmp"):
        (run / name).symlink_to(victim)
    assert train(run, "--overwrite") == 0
    assert victim.read_text() == "precious"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2


def _flip_a_byte_in_the_weights(path: Path) -> None:
    data = bytearray(path.read_bytes())
    offset = data.find(b"data/0") + 200  # inside the first stored tensor's bytes
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_07_a_damaged_only_checkpoint_says_what_to_do(tmp_path, finished, capsys):
    """No checkpoint.prev.pt to fall back to (stopped in epoch 2): eval and a resume each name their fix."""
    run = copy_run(finished, tmp_path / "run")
    (run / "checkpoint.prev.pt").unlink()
    (run / "summary.json").unlink()  # an unfinished run
    _flip_a_byte_in_the_weights(run / "checkpoint.pt")
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    assert one_line(capsys).endswith("; restore it from a copy of the run, or train the run again.\n")
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert one_line(capsys).endswith("; no earlier checkpoint is kept, so nothing is left to resume: start over with "
                                     "--overwrite.\n")


def test_07_a_pipelines_resume_is_told_what_is_wrong_not_refused(tmp_path, finished):
    """``problems`` (a pipeline's resume, which may have stage files instead): a damaged checkpoint.pt with no
    checkpoint.prev.pt is reported there, and no state is returned, rather than a refusal to resume."""
    run = copy_run(finished, tmp_path / "run")
    (run / "checkpoint.prev.pt").unlink()
    _flip_a_byte_in_the_weights(run / "checkpoint.pt")
    problems: list[str] = []
    assert RunDir(run).load_checkpoint(fallback=True, problems=problems) is None
    assert len(problems) == 1 and "checkpoint.pt is damaged" in problems[0] and "start over" not in problems[0]


def test_07_a_damaged_checkpoint_is_refused_and_a_resume_falls_back(tmp_path, finished, capsys):
    run = copy_run(finished, tmp_path / "run")
    _flip_a_byte_in_the_weights(run / "checkpoint.pt")
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    err = one_line(capsys)
    assert "checkpoint.pt is damaged" in err and "checkpoint.prev.pt holds the epoch before it" in err
    assert f"`locallearn train --out {run} --resume` trains that epoch again from it, then eval works." in err
    spaced = copy_run(run, tmp_path / "my run")  # a hint is a command to copy: the path quoted for the shell
    assert main(["eval", str(spaced), "--device", "cpu"]) == 2
    assert f"`locallearn train --out '{spaced}' --resume` trains that epoch" in one_line(capsys)
    prev = (spaced / "checkpoint.prev.pt").read_bytes()
    (spaced / "checkpoint.prev.pt").write_bytes(prev[: len(prev) // 2])  # both damaged: no resume to suggest
    assert main(["eval", str(spaced), "--device", "cpu"]) == 2
    err = one_line(capsys)
    assert f"{spaced}: checkpoint.pt and checkpoint.prev.pt are both damaged ({spaced}/checkpoint.prev.pt cannot" in err
    assert err.endswith("no sound checkpoint is left, so the weights are lost (metrics.jsonl and summary.json still "
                        "hold the results).\n") and "--resume" not in err
    moved = run / "checkpoint.moved"
    (run / "checkpoint.pt").rename(moved)  # missing, as after an interrupted write
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    assert "has no checkpoint.pt (a write was interrupted), only checkpoint.prev.pt" in one_line(capsys)
    moved.rename(run / "checkpoint.pt")
    (run / "summary.json").unlink()  # as if killed before the end: the resume retrains epoch 2 from epoch 1
    assert main(["train", "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming from checkpoint.prev.pt (epoch 1)" in out
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1, 2]
    # the damaged file was replaced, not kept as the one before: checkpoint.prev.pt is still the sound epoch 1
    assert load_state(run / "checkpoint.prev.pt")["epoch"] == 1 and load_state(run / "checkpoint.pt")["epoch"] == 2
    # both damaged (one emptied): named, with the way out
    (run / "summary.json").unlink()
    (run / "checkpoint.prev.pt").write_bytes(b"")
    _flip_a_byte_in_the_weights(run / "checkpoint.pt")
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = one_line(capsys)
    assert "checkpoint.prev.pt cannot be read, it is damaged (the file is empty)" in err
    assert err.rstrip().endswith("no sound checkpoint is left: start over with --overwrite.")
    # a damaged metrics line is named, not read
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace('"epoch": 1', '"epoch": 7')
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 1 is damaged \(its checksum does not match\)"):
        RunDir(run).read_metrics()
    lines[0] = lines[0].replace('"epoch": 7', '"epoch": NaN')  # strict JSON is all a run writes
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 1 is damaged \(NaN is not strict JSON, which "
                                         r"metrics.jsonl is written in\)"):
        RunDir(run).read_metrics()
    good = lines[1]
    old = json.loads(good)  # a line of an earlier release: no checksum, and NaN where a value was not finite
    old.pop("checksum")
    old["test_loss"], old["epoch"] = float("nan"), 1
    (run / "metrics.jsonl").write_text(json.dumps(old) + "\n")
    assert RunDir(run).read_metrics()[0]["epoch"] == 1
    # each line checks only itself: one removed, repeated or moved is named by the epochs' order
    from locallearn.training.rundir import metrics_line

    one = metrics_line({**{k: v for k, v in json.loads(good).items() if k != "checksum"}, "epoch": 1}).strip()
    for text in (good, one + "\n" + one, one + "\n" + good + "\n" + good):
        (run / "metrics.jsonl").write_text(text + "\n")
        with pytest.raises(ValueError, match=r"metrics.jsonl, line \d is epoch \d where epoch \d belongs \(a line was "
                                             r"removed, repeated or moved\); the checkpoint's history can rebuild it"):
            RunDir(run).read_metrics()
    (run / "metrics.jsonl").write_bytes(b"\xbe\x00garbage\n")  # not even text
    with pytest.raises(ValueError, match=r"metrics.jsonl is damaged \(not UTF-8 text: byte 0\); the checkpoint's"):
        RunDir(run).read_metrics()
    # but a line without a checksum among lines with one was edited: this release writes every line with one
    edited = json.loads(lines[0])
    edited.pop("checksum")
    edited["test_acc"] = 0.99
    (run / "metrics.jsonl").write_text(json.dumps(edited) + "\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 1 is damaged \(it has no checksum, which every other "
                                         r"line has\); the checkpoint's history can rebuild it: resume the run\.$"):
        RunDir(run).read_metrics()


def test_08_a_non_finite_test_loss_is_never_kept_and_metrics_are_strict_json(tmp_path, monkeypatch):
    from locallearn.training import runner

    real = runner.evaluate
    calls = []

    def diverged(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        return {**result, "test_loss": float("nan")} if len(calls) == 2 else result

    monkeypatch.setattr(runner, "evaluate", diverged)
    cfg = resolve(model="resnet20", num_modules=2, split="uniform", epochs=2, limit_train=64, limit_test=32,
                  batch_size=32, device="cpu", out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"epoch 2: the test loss is not finite \(nan\).*\(epoch 1\) is kept.* start the "
                                         r"run again with a lower learning rate \(--overwrite, or another --out\)\.$"):
        fit(cfg, log=lambda line: None)
    run = RunDir(tmp_path / "run")
    assert run.load_checkpoint()["epoch"] == 1 and not run.finished
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.jsonl"))


def test_10_inputs_that_scale_memory_are_bounded_and_the_schedule_is_not_stored(tmp_path, finished, capsys):
    assert main(["train", "--epochs", "30000000", "--out", str(tmp_path / "a")]) == 2
    assert "epochs must be an integer from 1 to 100000" in one_line(capsys)
    assert main(["train", "--batch-size", "100000000", "--out", str(tmp_path / "a")]) == 2
    assert "batch_size" in one_line(capsys)
    checkpoint = torch.load(finished / "checkpoint.pt", weights_only=True)
    assert "lr_schedule" not in checkpoint and os.path.getsize(finished / "checkpoint.pt") < 5e6


@pytest.mark.slow
def test_11_ctrl_c_always_stops_and_says_what_is_kept(tmp_path):
    # at various moments of epoch 2 (meter, step, evaluation); the last trial presses Ctrl-C twice, the second
    # raising at once wherever it lands
    for trial, (delay, presses) in enumerate(((0.0, 1), (0.3, 1), (0.9, 1), (0.3, 2))):
        out = tmp_path / f"run{trial}"
        proc = _start(out)
        _wait_for(out / "checkpoint.pt", proc)
        time.sleep(delay)
        for press in range(presses):
            time.sleep(0.2 * press)  # apart: two signals before Python's handler runs are one
            proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"Ctrl-C did not stop the run (trial {trial})")
        assert proc.returncode == 130, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("locallearn: interrupted in epoch ") and "is kept in" in last
        assert f"locallearn train --out {out} --resume" in last
        assert "Exception ignored" not in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_11_sigterm_stops_as_ctrl_c_does(tmp_path):
    """A scheduler's SIGTERM killed the run where it was, silently; it now stops it at the next batch and says
    what is kept, as Ctrl-C does, with the status a scheduler expects of SIGTERM (143; Ctrl-C's is 130)."""
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for(out / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("locallearn: stopped by SIGTERM in epoch ") and f"locallearn train --out {out} --resume" in last
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_11b_a_run_stopped_in_its_first_epoch_is_started_over_by_the_same_command(tmp_path, capsys):
    """Nothing of it is kept (no checkpoint, no epoch), so the same command starts it again instead of
    refusing the directory as an unfinished run; one with a finished epoch is still refused."""
    out = tmp_path / "run"
    proc = _start(out, epochs=1)
    _wait_for(out / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == ("locallearn: interrupted in epoch 1: no checkpoint was written; the "
                                               "same command starts it over.")
    assert RunDir(out).untrained
    argv = ["train", *TINY, "--limit-train", "256", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0 and RunDir(out).finished
    (out / "summary.json").unlink()
    (out / "checkpoint.pt").unlink()
    assert not RunDir(out).untrained  # an epoch in metrics.jsonl
    assert main(argv) == 2 and "already holds an unfinished run" in capsys.readouterr().err


# --- tracebacks turned into one line -------------------------------------------------------------------------
def test_12_another_network_missing_keys_and_wrong_shapes_are_one_line(tmp_path, finished, capsys):
    run = copy_run(finished, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state.pop("digest")
    key = next(iter(state["model"]))
    for name, change in (("missing", lambda m: m.pop(key)), ("shape", lambda m: m.__setitem__(key, torch.zeros(3)))):
        model = dict(state["model"])
        change(model)
        save_state(run / "checkpoint.pt", {**state, "model": model})
        assert main(["eval", str(run), "--device", "cpu"]) == 2, name
        line = one_line(capsys)  # eval has no --overwrite: it names the model code as the likely cause
        assert "holds the weights of another network" in line and "--overwrite" not in line
        assert "load it with the model code it was trained with" in line


def test_12_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 512 vs 448\nfile write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"^cannot write .*checkpoint.pt \(the disk may be full or read-only: \[enforce"):
        save_state(tmp_path / "checkpoint.pt", {"format": 2})
    assert list(tmp_path.iterdir()) == []


def test_12_a_disk_full_at_an_epochs_save_says_what_is_kept_and_how_to_go_on(tmp_path, monkeypatch, capsys):
    real, calls = torch.save, []

    def full_from_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 512 vs 448")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "save", full_from_the_second)
    out = tmp_path / "run"
    assert train(out) == 2
    line = one_line(capsys)  # it named the file and the disk, not what was kept or how to continue
    assert "cannot write" in line and "(the disk may be full or read-only: [enforce fail" in line
    assert line.endswith(f"; epoch 2 is lost and the last good checkpoint (epoch 1) is kept in {out}; make room, then "
                         f"`locallearn train --out {out} --resume` continues it.\n")
    monkeypatch.setattr(torch, "save", real)
    assert train(out, "--resume") == 0 and [r["epoch"] for r in RunDir(out).read_metrics()] == [1, 2]


def test_12_a_truncated_stage_file_is_named_and_an_older_epoch_is_used(tmp_path):
    from locallearn.distributed.runner import _sound_stage_files

    old, new = tmp_path / "stage0-epoch1.pt", tmp_path / "stage0-epoch2.pt"
    save_state(old, {"format": 2, "run_id": "r", "epoch": 1})
    save_state(new, {"format": 2, "run_id": "r", "epoch": 2})
    new.write_bytes(new.read_bytes()[:100])
    warnings = []
    assert list(_sound_stage_files({0: {1: old, 2: new}}, "r", warnings.append)[0].items()) == [(1, (old, None, None, None))]
    assert "stage0-epoch2.pt cannot be read" in warnings[0] and "it is not resumed from" in warnings[0]
    with pytest.raises(ValueError, match="stage0-epoch2.pt cannot be read"):
        load_state(new)


def test_12_a_checkpoint_cut_short_is_said_to_be_damaged(tmp_path, finished, capsys):
    """A checkpoint.pt cut to its first 5,000 bytes made torch's zip reader seek past the end: "cannot be read
    ([Errno 22] Invalid argument)", as if the disk had failed, not that the file is damaged."""
    run = copy_run(finished, tmp_path / "run")
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"checkpoint.pt cannot be read, it is damaged \(cut short\)$"):
        load_state(run / "checkpoint.pt")
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    assert "checkpoint.pt cannot be read, it is damaged (cut short" in one_line(capsys)


def test_12_bad_options_are_one_line(tmp_path, finished, capsys):
    cases = [
        (["train", "--out", ""], "out must be a non-empty string"),
        (["train", "--parallel", "pipeline", "--fault-timeout", "inf", "--out", str(tmp_path / "a")], "fault_timeout"),
    ]
    dup = tmp_path / "dup.yaml"
    dup.write_text("lr: 0.1\nepochs: 2\nlr: 0.5\n")
    cases.append((["train", "--config", str(dup)], "duplicate key 'lr'"))
    twice, misplaced = tmp_path / "twice.yaml", tmp_path / "misplaced.yaml"
    twice.write_text("net:\n  context: E\ncontext: R1\n")  # nested and flat: one would be dropped unsaid
    misplaced.write_text("optim:\n  context: E\n")
    cases.append((["train", "--config", str(twice)], "'context' is given twice (net.context and context); keep one."))
    cases.append((["train", "--config", str(misplaced)], "'context' is an option of section 'net', not 'optim'"))
    cases.append((["bench", "accuracy", "--option", "model_kwargs={depth: 20, depth: 32}"], "duplicate key 'depth'"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00lr")
    cases.append((["train", "--config", str(binary)], f"{binary}: not a text file; a config file is YAML"))
    cases.append((["train", "--model", "resnet20", "--model-kwargs", "{width:8}", "--out", str(tmp_path / "b")],
                  "unknown option 'width:8' for resnet20 (YAML needs a space after the colon: {width: 8})"))
    cases.append((["train", "--model", "resnet20", "--pretrained", "foo", "--out", str(tmp_path / "c")],
                  "(--pretrained applies to the models built by Hugging Face transformers, such as resnet50)"))
    if not torch.backends.mps.is_available():  # a device torch knows but this machine lacks: not a traceback
        cases.append((["train", "--model", "resnet20", "--device", "mps", "--out", str(tmp_path / "e")],
                      "device: mps is not available on this machine; use --device cpu."))
        cases.append((["eval", str(finished), "--device", "mps"], "device: mps is not available on this machine"))
    cases.append((["train", "--out", str(finished), "--resume", "--data-dir", str(tmp_path)],
                  "data_dir: --data-dir is where a dataset's files are read, and this run's dataset ships inside"))
    cases.append((["eval", str(finished), "--data-dir", str(tmp_path)], f"eval: {finished} trained on digits, which "
                  "ships inside a package (scikit-learn), so --data-dir would change nothing; drop it."))
    # an option the run would not use: refused, not recorded as if it were part of the run
    tiny = ["train", "--model", "resnet20", "--num-modules", "2", "--out", str(tmp_path / "d")]
    for extra, words in (
        (["--method", "e2e", "--num-modules", "1", "--split", "uniform"], "split: --split is where the local modules "
                                                                          "are cut, and this run trains one module"),
        (["--data-dir", str(tmp_path)], "data_dir: --data-dir is where a dataset's files are read, and this run's "
                                        "dataset ships inside a package (scikit-learn's digits)"),
        (["--lambdas", "1,2,3,4"], "lambdas: --lambdas weighs image reconstruction, which this run does not do, so "
                                   "it would change nothing but config.yaml; drop it, or add --reconstruct."),
        (["--temperature", "0.5"], "add --local-loss contrast"),
        (["--method", "greedy", "--feature-weight", "5"], "feature_weight: --feature-weight weighs the local modules' "
                                                           "feature reconstruction, which this run does not do"),
        (["--method", "featrecon", "--model", "resnet20", "--num-modules", "1", "--feature-weight", "5"],
         "add --feature-decoder (linear, conv or transformer) or use --method featrecon, with --num-modules 2 or more"),
        (["--method", "e2e", "--num-modules", "1", "--feature-decoder", "conv"], "feature_decoder: --feature-decoder is "
                                                                                "the local modules' feature decoder"),
        (["--activation-segments", "3"], "use --method checkpoint"),
        (["--pipeline-assign", "2,2"], "pipeline_assign: --pipeline-assign sets up the pipeline"),
        (["--method", "e2e", "--num-modules", "1", "--aux-head", "dgl"], "aux_head: --aux-head is a local module's"),
        (["--method", "e2e", "--num-modules", "1", "--local-loss", "contrast"], "local_loss: --local-loss is the local "
                                                                               "modules' loss, and this run trains one"),
        (["--method", "checkpoint", "--num-modules", "1", "--reconstruct"], "reconstruct: --reconstruct is the local "
                                                                            "modules' image reconstruction"),
        (["--fault-timeout", "5"], "fault_timeout: --fault-timeout sets up the pipeline"),
        (["--epochs", "4", "--warmup-lr", "0.05"], "warmup_lr: --warmup-lr is where the warm-up starts, and this run "
                                                   "has no warm-up"),  # 10 warm-up epochs do not fit in 4
        (["--epochs", "4", "--warmup-epochs", "1", "--warmup-lr", "5"], "warmup_lr=5 is above lr=0.1; give a lower one."),
    ):
        cases.append(([*tiny, *extra], words))
    for argv, words in cases:
        assert main(argv) == 2, argv
        assert words in one_line(capsys)
    assert not (tmp_path / "d").exists()
    # only flags are checked: a run's own config.yaml (every option recorded) and a preset with another
    # method are config files, taken as they are
    small = ["--epochs", "1", "--limit-train", "32", "--limit-test", "32", "--batch-size", "32", "--device", "cpu"]
    assert main(["train", "--config", str(finished / "config.yaml"), "--out", str(tmp_path / "e"), *small]) == 0
    assert main(["train", "--config", "baselines/resnet110_cifar10_k4_greedy", "--model", "resnet20", "--method",
                 "e2e", "--num-modules", "1", "--dataset", "digits", "--out", str(tmp_path / "f"), *small]) == 0
    # where they apply they are taken
    assert main([*tiny, "--method", "infopro", "--temperature", "0.5", "--lambdas", "1,1,1,1", "--epochs", "1",
                 "--limit-train", "32", "--limit-test", "32", "--batch-size", "32", "--device", "cpu"]) == 0
    # bench accuracy: an --option that a flag or another --option also sets, or that is an axis of the grid
    for option, words in ((["--option", "epochs=2", "--epochs", "1"], "epochs is also given by --epochs; give it once"),
                          (["--option", "lr=0.1", "--option", "lr=0.2"], "lr is also given by another --option"),
                          (["--option", "model=resnet20"], "model is an axis of the grid, set by --models")):
        assert main(["bench", "accuracy", *option, "--out", str(tmp_path / "g")]) == 2
        assert words in one_line(capsys)
    assert not (tmp_path / "g").exists()
    with pytest.raises(SystemExit):  # recorded by a run, not a flag
        main(["train", "--lambda-source", "foo"])
    capsys.readouterr()
    with pytest.raises(SystemExit):  # a flag's value is parsed by argparse, with the same strict loader
        main(["train", "--model-kwargs", "{depth: 20, depth: 32}"])
    assert "duplicate key 'depth'" in capsys.readouterr().err
    assert not (Path.cwd() / "config.yaml").exists()


# --- what a new user trips over ------------------------------------------------------------------------------
def test_13_the_readme_example_builds():
    net = locallearn.build("resnet32", method="infopro", local_loss="ce")
    assert net.num_modules == 4 and net.objectives[0].image_decoder.image_size == 32


def test_15_the_thread_count_is_recorded(finished):
    config = yaml.safe_load((finished / "config.yaml").read_text())
    assert config["torch_threads"] == torch.get_num_threads() and len(config["run_id"]) == 32


def test_18_help_has_one_default_per_option_and_the_warm_up_used_is_recorded(finished, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and text.count("  --num-classes") == 1
    assert "default to K=4" in text and "(K=1)" in text
    header = (finished / "config.yaml").read_text()
    assert "warm-up: none — 2 epochs leave no room for 10 warm-up epochs" in header


def test_19_defaults_write_under_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "memory", "--models", "resnet20", "--methods", "e2e", "--num-modules", "1",
                 "--batch-sizes", "2", "--warmup", "0", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "bench").iterdir())[0] == "memory.csv"
    assert {p.name for p in tmp_path.iterdir()} == {"runs"}


def test_20_noise(tmp_path, finished, capsys, monkeypatch, agent_store):
    # a diverged loss is printed short; "1 epoch", not "1 epochs"
    from locallearn.training.fit import log_end

    lines = []
    log_end(lines.append, {"total_time_s": 3.0, "test_acc": 0.5, "epochs": 1, "best_test_acc": 0.5,
                           "best_epoch": 1, "images_per_s": 10.0}, RunDir(tmp_path), resolve({}))
    assert "after 1 epoch (" in lines[0] and lines[1].endswith(f"`locallearn eval {tmp_path}` re-evaluates it")
    # errors are printed by rank 0 only under torchrun (through its agent's store, a rank learns rank 0 said it)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--method", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "--method", "nope", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE")
    monkeypatch.delenv("WORLD_SIZE")
    # progress lines in a log (stdout not a terminal)
    from locallearn.progress import Progress

    logged = []
    with Progress(3, "epoch 1/1", log=logged.append, every_s=0.0) as progress:
        progress.update(1, loss="1.0")
        progress.update(1)
        progress.update(1)
    assert logged and logged[0].startswith("  epoch 1/1: 1/3, loss 1.0")
    # `train > log` on a terminal: stderr is one, stdout is not — lines in the log, no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    logged.clear()
    with Progress(2, "epoch 1/1", log=logged.append, every_s=0.0) as progress:
        assert progress.bar is None
        progress.update(1)
    assert logged
    # on a terminal a bar, drawn by torchrun's rank 0 alone (the others would draw over it)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("RANK", "0")
    with Progress(2, "decoding training images", unit="image") as progress:
        assert progress.bar is not None
    monkeypatch.setenv("RANK", "1")
    with Progress(2, "decoding training images", unit="image") as progress:
        assert progress.bar is None
    # no stray names in the package
    assert not {"Any", "annotations"} & set(dir(locallearn))


def test_runs_written_by_the_first_release_still_load_and_resume(tmp_path, capsys):
    """Format 1 (flat config.yaml with ``checkpoint``, weights under aux_heads.k / image_decoders.k, the
    optimizer ordered heads-then-decoders): eval and resume work. Checked once against the first release's own
    code (a 1-epoch run resumed here equals its 2-epoch run bit for bit); here the old form is written by hand."""
    from locallearn.net import old_parameter_order

    run = tmp_path / "old"
    assert main(["train", *TINY, "--method", "infopro", "--epochs", "1", "--out", str(run)]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    parts = {"head": "aux_heads", "image_decoder": "image_decoders", "feature_decoder": "feature_decoders"}

    def old_name(key):
        p = key.split(".")
        return f"{parts[p[2]]}.{p[1]}.{'.'.join(p[3:])}" if p[0] == "objectives" else key

    net = locallearn.build("resnet20", method="infopro", num_modules=2, split="uniform", dataset="digits")
    order = old_parameter_order(net)  # order[i]: today's index of the i-th parameter of the old order
    inverse = {today: old for old, today in enumerate(order)}
    optimizer = state["optimizer"]
    old_state = {
        "format": 1, "epoch": 1, "rng": state["rng"], "history": state["history"], "lr_schedule": [0.1, 0.05],
        "config": {"model": "resnet20"}, "model": {old_name(k): v for k, v in state["model"].items()},
        "optimizer": {**optimizer, "state": {inverse[int(i)]: v for i, v in optimizer["state"].items()}},
    }
    (run / "checkpoint.pt").unlink()
    torch.save(old_state, run / "checkpoint.pt")
    config = yaml.safe_load((run / "config.yaml").read_text())
    flat = {k: v for section in ("net", "data", "optim", "run", "processes") for k, v in config[section].items()}
    flat["checkpoint"] = flat.pop("activation_checkpointing")  # the option's old name
    flat["epochs"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(flat))
    (run / "summary.json").unlink()
    from locallearn.training.config import read_options
    from locallearn.training.runner import LocalRunner

    runner = LocalRunner(resolve(read_options(run / "config.yaml")), log=lambda line: None)
    runner.restore(RunDir(run))
    restored = runner.optimizer.state_dict()["state"]
    assert restored.keys() == optimizer["state"].keys()
    assert all(torch.equal(restored[i]["momentum_buffer"], v["momentum_buffer"]) for i, v in optimizer["state"].items())
    assert all(torch.equal(a, b) for a, b in zip(runner.net.state_dict().values(), state["model"].values()))
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert "checkpoint after epoch 1/2" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume"]) == 0
    resumed = torch.load(run / "checkpoint.pt", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["format"] == 2


# --- found by a user review: results lost, a stale summary, an edited config trusted ------------------------------
def test_a_resume_with_results_but_no_checkpoint_is_refused_and_keeps_them(tmp_path, finished, capsys):
    run = copy_run(finished, tmp_path / "run")
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.prev.pt").unlink()
    metrics = (run / "metrics.jsonl").read_text()
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "holds results (2 epochs in metrics.jsonl, summary.json) but no checkpoint.pt to continue from" in one_line(capsys)
    assert (run / "metrics.jsonl").read_text() == metrics and (run / "summary.json").is_file()
    (run / "summary.json").unlink()  # unfinished, two epochs logged: the checkpoints are lost all the same
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "holds results (2 epochs in metrics.jsonl) but no checkpoint.pt" in one_line(capsys)
    (run / "pipeline").mkdir()  # a pipeline's stage checkpoints are something to continue from
    (run / "pipeline" / "stage0-epoch2.pt").write_bytes(b"")
    from locallearn.training.fit import open_run

    open_run(resolve({"out": str(run)}), resume=True, overwrite=False, requested={})  # not refused
    # a kill between epoch 1's metrics and its checkpoint leaves one line and no checkpoint: it starts again
    early = copy_run(finished, tmp_path / "early")
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "summary.json"):
        (early / name).unlink()
    (early / "metrics.jsonl").write_text(metrics.splitlines()[0] + "\n")
    assert main(["train", "--out", str(early), "--resume"]) == 0
    assert [json.loads(line)["epoch"] for line in (early / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_resume_that_rewinds_a_finished_run_removes_its_summary_and_report_marks_it(tmp_path, finished, capsys,
                                                                                      monkeypatch):
    from locallearn.training.runner import LocalRunner

    run = copy_run(finished, tmp_path / "run")
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:1000])  # falls back to epoch 1

    def stop(*args, **kwargs):
        raise ValueError("stopped in epoch 2")

    monkeypatch.setattr(LocalRunner, "train_epoch", stop)
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "stopped in epoch 2" in capsys.readouterr().err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1 and not (run / "summary.json").exists()
    # a summary left beside fewer epochs (as a kill in the middle of that resume used to leave) is not finished
    (run / "summary.json").write_text((finished / "summary.json").read_text())
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {run} |"))
    assert "| 1/2* |" in row


def test_eval_refuses_a_config_yaml_that_differs_from_the_checkpoints_options(tmp_path, finished, capsys):
    run = copy_run(finished, tmp_path / "run")
    text = (run / "config.yaml").read_text()
    assert "  lr: 0.1\n" in text and "  limit_test: 32\n" in text
    (run / "config.yaml").write_text(text.replace("  lr: 0.1\n", "  lr: 0.5\n").replace("  limit_test: 32\n",
                                                                                        "  limit_test: 300\n"))
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    assert one_line(capsys).endswith(f"eval: {run}/checkpoint.pt was written with other options than {run}/config.yaml "
                                     f"says: limit_test (32 → 300), lr (0.1 → 0.5); restore the run's own config.yaml.\n")
    # load_net reads a run back through the same checks
    from locallearn.training import load_net

    with pytest.raises(ValueError, match=r"^load_net: .*checkpoint\.pt was written with other options than .*config\.yaml "
                                         r"says: limit_test \(32 → 300\), lr \(0\.1 → 0\.5\)"):
        load_net(run)
    (run / "config.yaml").write_text(text)
    assert not load_net(run).training
    _flip_a_byte_in_the_weights(run / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint\.pt is damaged.*`locallearn train --out .* --resume` trains "
                                         r"that epoch again from it, then load_net works\.$"):
        load_net(run)


def test_report_names_a_config_yaml_without_the_options_it_reads_and_a_missing_directory(tmp_path, finished, capsys):
    run = copy_run(finished, tmp_path / "run")
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text("\n".join(line for line in text.splitlines() if not line.startswith("  seed:")))
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 2
    assert f"report: {run}/config.yaml lacks seed (edited or damaged)" in one_line(capsys)
    # a truncated config.yaml: named by a resume, eval and load_net too (defaults stood in for the options it
    # lost, and the messages blamed the checkpoint, or the user's flags)
    (run / "config.yaml").write_text(text[:300])
    lost = f"{run}/config.yaml lacks model, dataset, method, num_modules, context, local_loss, reconstruct, split, seed, epochs (edited or damaged); restore the run's own config.yaml."
    for argv in (["train", "--out", str(run), "--resume"], ["eval", str(run), "--device", "cpu"]):
        assert main(argv) == 2
        assert one_line(capsys).endswith(lost + "\n"), argv
    from locallearn.training import load_net

    with pytest.raises(ValueError, match="lacks model, dataset"):
        load_net(run)
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "nowhere does not exist" in one_line(capsys)


@pytest.mark.slow
def test_a_reader_that_stops_reading_the_log_does_not_stop_the_run(tmp_path):
    out = tmp_path / "run"  # `locallearn train ... | head -1`
    proc = subprocess.Popen([sys.executable, "-m", "locallearn", "train", *TINY, "--epochs", "2", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().startswith("locallearn train: ")
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert proc.stderr.read() == ""
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2 and (out / "summary.json").is_file()


def test_a_resume_removes_what_a_killed_writer_left_half_written(tmp_path, finished, capsys):
    run = copy_run(finished, tmp_path / "run")
    (run / "checkpoint.pt").unlink()  # killed while writing epoch 2's checkpoint: its temporary is left
    (run / "checkpoint.prev.pt").rename(run / "checkpoint.pt")
    (run / ".checkpoint.pt.0123abcd.tmp").write_bytes(b"half a checkpoint")
    (run / ".notes.txt.tmp").write_text("the user's own")
    (run / "summary.json").unlink()
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(metrics[0] + "\n")
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert not (run / ".checkpoint.pt.0123abcd.tmp").exists() and (run / ".notes.txt.tmp").exists()
    assert (run / "summary.json").is_file()


def test_a_damaged_summary_of_a_finished_run_is_made_again_by_a_resume(tmp_path, finished, capsys):
    run = copy_run(finished, tmp_path / "run")
    text = (run / "summary.json").read_text()
    (run / "summary.json").write_text(text[:50])
    assert main(["train", "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "is already finished (2 epochs)" in out and "summary.json cannot be read (" in out
    again, before = json.loads((run / "summary.json").read_text()), json.loads(text)
    mine = ("versions", "checksum", "options")  # the options name where the run lives: the copy's --out
    assert {k: v for k, v in again.items() if k not in mine} == {k: v for k, v in before.items() if k not in mine}
    assert again["options"] == {**before["options"], "out": str(run)}


def test_an_out_that_is_a_file_or_cannot_be_written_is_one_line(tmp_path, finished, capsys, monkeypatch):
    (tmp_path / "a file").write_text("mine")
    assert train(tmp_path / "a file") == 2
    assert one_line(capsys).endswith("out: " + str(tmp_path / "a file") + " is a file, not a directory; choose "
                                     "another --out.\n")
    assert main(["report", str(finished), "--out", str(tmp_path / "a file")]) == 2
    assert "out: " + str(tmp_path / "a file") + " is a file, not a directory" in one_line(capsys)
    import errno

    from locallearn.training import rundir

    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rundir.os, "open", read_only)
    assert main(["train", "--out", str(finished), "--resume"]) == 2
    assert f"{finished} cannot be written (read-only file system): a run directory holds" in one_line(capsys)


def test_a_wrong_value_in_a_config_file_is_named_with_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: '1'\nlr: 0.1\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "a")]) == 2
    assert one_line(capsys).endswith(f"{bad}: epochs must be an integer from 1 to 100000, got '1'.\n")
    assert not (tmp_path / "a").exists()


def test_a_file_that_is_not_a_checkpoint_and_a_long_key_list_read_as_sentences(tmp_path):
    from locallearn.training.rundir import load_state
    from locallearn.training.runner import load_weights

    text = tmp_path / "checkpoint.pt"
    text.write_text("hello, not a checkpoint\n")
    with pytest.raises(ValueError, match=r"checkpoint.pt cannot be read, it is damaged \(not a file written by "
                                         r"torch.save\)$"):
        load_state(text)
    small, large = ll.build("resnet20", method="e2e"), ll.build("resnet56", method="e2e")
    with pytest.raises(ValueError) as err:
        load_weights(small, large.state_dict(), "there.pt", "fix it")
    details = str(err.value).split(" (", 1)[1].rsplit("); fix it.", 1)[0]
    assert details.endswith(" …") and len(details) <= 302
    last = details[:-2].split()[-1]
    assert last.startswith('"') and last.strip('",') in small.state_dict()  # a whole key, not cut mid-word


def test_a_directory_where_the_checkpoint_belongs_is_named_and_nothing_is_removed(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--limit-train", "16",
            "--limit-test", "8", "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--out", str(run)]
    assert main(args) == 0
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.pt").mkdir()
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"locallearn: error: {run / 'checkpoint.pt'} is not a file (a directory or "
                                       f"another kind of entry stands where the run keeps its checkpoint); move it "
                                       f"away.\n")
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert (run / "summary.json").is_file() and (run / "metrics.jsonl").read_text()  # the results are kept


def test_report_names_a_summary_or_config_yaml_that_no_longer_matches_the_run(tmp_path, finished, capsys):
    """Each file checked only itself: an edited test accuracy in summary.json, or an edited lr in config.yaml,
    was reported as the run's result. summary.json now has a checksum, and holds the options the run trained
    with; report checks both, and that the summary and metrics.jsonl end at the same epoch and accuracy."""
    report = ["report", "--out", str(tmp_path / "report")]
    run = copy_run(finished, tmp_path / "acc")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "test_acc": 0.95625}, indent=2))
    assert main([*report, str(run)]) == 2
    assert one_line(capsys).endswith(f"summary.json is damaged (its checksum does not match); `locallearn train --out "
                                     f"{run} --resume` writes it again from the checkpoint, or leave the run out.\n")
    assert main(["train", "--out", str(run), "--resume"]) == 0  # which it does
    assert main([*report, str(run)]) == 0
    capsys.readouterr()
    run = copy_run(finished, tmp_path / "lr")
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("  lr: 0.1\n", "  lr: 0.2\n"))
    assert main([*report, str(run)]) == 2
    assert one_line(capsys).endswith(f"report: {run}: config.yaml and summary.json disagree on the options the run "
                                     f"trained with (summary.json → config.yaml: lr (0.1 → 0.2)), so one of them is "
                                     f"another run's; `locallearn eval {run}` refuses a config.yaml other than the "
                                     f"checkpoint's: restore that one, else remove summary.json and `locallearn train "
                                     f"--out {run} --resume` writes it again, or leave the run out.\n")
    assert main(["eval", str(run), "--device", "cpu"]) == 2 and "restore the run's own config.yaml" in one_line(capsys)
    # the other way round: summary.json copied from another run; the advice given, followed, mends it
    (run / "config.yaml").write_text(text)
    other = copy_run(finished, tmp_path / "other")
    (other / "config.yaml").write_text(text.replace("  lr: 0.1\n", "  lr: 0.2\n"))
    assert main(["train", "--out", str(other), "--overwrite", "--epochs", "1"]) == 0  # another run, lr 0.2
    (run / "summary.json").write_bytes((other / "summary.json").read_bytes())
    assert main([*report, str(run)]) == 2
    said = one_line(capsys)  # the other run stopped at another epoch: said as that
    assert "summary.json (epoch 1, " in said and "and summary.json too once it is removed (if it is another run's)" in said
    assert main(["eval", str(run), "--device", "cpu"]) == 0  # config.yaml is the checkpoint's: summary.json is not
    (run / "summary.json").unlink()
    assert main(["train", "--out", str(run), "--resume"]) == 0 and main([*report, str(run)]) == 0
    capsys.readouterr()
    run = copy_run(finished, tmp_path / "older")  # a config.yaml of an earlier release lacks options added since
    text = (run / "config.yaml").read_text()
    assert "  schedule: epoch\n" in text
    (run / "config.yaml").write_text(text.replace("  schedule: epoch\n", ""))
    assert main([*report, str(run)]) == 0  # was refused: "schedule (epoch → None)"
    capsys.readouterr()
    run = copy_run(finished, tmp_path / "garbage")
    (run / "summary.json").write_bytes(os.urandom(300))
    assert main([*report, str(run)]) == 2
    assert "summary.json cannot be read (" in one_line(capsys)


def test_a_resume_with_nothing_to_resume_says_it_starts_the_run(tmp_path, capsys):
    """--resume starts a run that is not there (a job can always pass it), but a mistyped --out started a new
    run without a word: now a note says so."""
    assert train(tmp_path / "typo", "--resume", "--epochs", "1", "--limit-train", "32") == 0
    assert (f"note: {tmp_path / 'typo'} holds no run to resume: it starts now (a resume starts a run that is not "
            "there yet).") in capsys.readouterr().out
    assert train(tmp_path / "typo", "--resume", "--epochs", "1", "--limit-train", "32") == 0  # there now: no note
    assert "holds no run to resume" not in capsys.readouterr().out


def test_train_from_python_with_nothing_to_resume_says_it_starts_the_run(tmp_path):
    from locallearn.training import train as train_python

    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    said = []
    options = dict(num_classes=3, method="greedy", num_modules=2, split="uniform", epochs=1, device="cpu", log=said.append)
    train_python("resnet20", batches, batches, out=tmp_path / "typo", resume=True, **options)
    assert f"note: {tmp_path / 'typo'} holds no run to resume: it starts now (a resume starts a run that is not there yet)." in said
    assert said[-1].endswith(f"`locallearn.training.load_net('{tmp_path / 'typo'}')` loads its network")  # a name
    said.clear()
    train_python("resnet20", batches, batches, out=tmp_path / "typo", resume=True, **options)
    assert not [line for line in said if "holds no run to resume" in line]


def test_eval_of_a_run_stopped_between_its_first_metrics_line_and_checkpoint_says_so(tmp_path, finished, capsys):
    run = copy_run(finished, tmp_path / "run")
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "summary.json"):
        (run / name).unlink()
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    assert main(["eval", str(run), "--device", "cpu"]) == 2  # it said no epoch had finished, beside a logged one
    assert one_line(capsys).endswith(f"{run} has no checkpoint.pt yet: no epoch of this run has been checkpointed "
                                     f"(metrics.jsonl logs epoch 1, which a stop cut off before its checkpoint; "
                                     f"`locallearn train --out {run} --resume` trains it again).\n")


def test_eval_of_a_finished_run_whose_checkpoints_were_removed_says_the_weights_are_gone(tmp_path, finished, capsys):
    """Checkpoints deleted to save disk: eval said a stop had cut the last epoch off and that --resume would
    train it again, which --resume then refused (the run holds results)."""
    run = copy_run(finished, tmp_path / "run")
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run / name).unlink()
    epochs = len((run / "metrics.jsonl").read_text().splitlines())
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    assert one_line(capsys) == (f"locallearn: error: {run} has neither checkpoint.pt nor checkpoint.prev.pt though it "
                                f"trained {epochs} epochs: its weights were removed, so eval has no network to read (its "
                                f"results stay in metrics.jsonl and summary.json, which `locallearn report` reads); to "
                                f"evaluate it, train it again into another --out.\n")
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0


def test_a_lost_config_yaml_is_written_again_from_the_checkpoint_by_a_resume(tmp_path, finished, capsys):
    """The checkpoint holds the run's options and id: a run without its config.yaml was "no run" to eval,
    report and predict, and --resume advised --overwrite, which deletes every trained epoch."""
    import yaml

    run = copy_run(finished, tmp_path / "run")
    original = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").unlink()
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    assert one_line(capsys) == (f"locallearn: error: {run} holds no run (no config.yaml); its checkpoint.pt holds the "
                                f"run's options: its resume (`locallearn train --out {run} --resume`, or train(..., "
                                f"resume=True) for a run from Python) writes config.yaml again from it, and continues "
                                f"the run if it is unfinished.\n")
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert "is already finished" in capsys.readouterr().out
    assert yaml.safe_load((run / "config.yaml").read_text()) == original  # options, run id and threads
    assert (run / "config.yaml").read_text().startswith("# written again from the checkpoint of epoch ")
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    capsys.readouterr()
    # without a checkpoint there is nothing to write it from: the refusal stands, and says no more
    (run / "config.yaml").unlink()
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run / name).unlink()
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    assert one_line(capsys) == (f"locallearn: error: {run} holds no run (no config.yaml); give a directory written "
                                f"by `locallearn train`.\n")
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "but no config.yaml, so which run they belong to is unknown" in one_line(capsys)


def test_train_from_python_records_class_names_and_a_resume_checks_them(tmp_path):
    from checks import ctrl_c_before_checkpoint
    from locallearn.training import train as train_python

    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    options = dict(num_classes=3, method="greedy", num_modules=2, split="uniform", device="cpu", log=lambda _: None,
                   epochs=3)
    names = lambda: torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["class_names"]  # noqa: E731
    with ctrl_c_before_checkpoint(2), pytest.raises(KeyboardInterrupt):
        train_python("resnet20", batches, batches, out=tmp_path / "run", class_names=["a", "b", "c"], **options)
    assert names() == ["a", "b", "c"]
    with ctrl_c_before_checkpoint(3), pytest.raises(KeyboardInterrupt):  # a resume given no names keeps the run's
        train_python("resnet20", batches, batches, out=tmp_path / "run", resume=True, **options)
    assert names() == ["a", "b", "c"]
    with pytest.raises(ValueError, match="but the data given holds a, b, d; pass the run's class_names=, or start"):
        train_python("resnet20", batches, batches, out=tmp_path / "run", class_names=["a", "b", "d"], resume=True,
                     **options)
    summary = train_python("resnet20", batches, batches, out=tmp_path / "run", resume=True, **options)
    assert summary["class_names"] == ["a", "b", "c"]
    for bad, words in ((["a", "b"], "class_names: has 2 names, but the run has 3 classes"),
                       (["a", "a", "b"], "class_names: repeats a name"), ("abc", "expected a list of names")):
        with pytest.raises(ValueError, match=words):
            train_python("resnet20", batches, batches, out=tmp_path / "other", class_names=bad, **options)
    assert not (tmp_path / "other").exists()


def test_a_stop_is_said_by_its_signal_and_under_torchrun_with_torchruns_part(monkeypatch):
    import signal as signals

    from locallearn.training import interrupt

    monkeypatch.setattr(interrupt, "_by", [signals.SIGINT])
    assert (interrupt.stopped_how(), interrupt.exit_status()) == ("interrupted", 130)
    monkeypatch.setattr(interrupt, "_by", [signals.SIGTERM])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (interrupt.stopped_how(), interrupt.exit_status()) == ("stopped by SIGTERM", 143)
    assert interrupt.exit_status() == 130  # read once
    monkeypatch.setattr(interrupt, "_by", [signals.SIGTERM])
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun stops the other ranks so when one fails
    assert interrupt.stopped_how() == ("stopped by SIGTERM (a scheduler ending the job, or torchrun stopping every "
                                       "rank when one failed)")



def test_the_checkpoint_a_save_replaces_is_kept_as_the_one_before_only_if_sound(tmp_path, monkeypatch):
    """A checkpoint.pt this process wrote or read soundly becomes checkpoint.prev.pt without being read again;
    one it knows nothing of (another process's) is read first, kept if sound, and replaced if damaged, so
    checkpoint.prev.pt is never a damaged file."""
    from locallearn.training import rundir

    path, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    state = {"format": rundir.CHECKPOINT_FORMAT, "epoch": 1, "model": {"w": torch.ones(3)}}
    save_state(path, state, previous=previous)
    save_state(path, {**state, "epoch": 2}, previous=previous)  # written here: rotated without a read
    assert load_state(previous)["epoch"] == 1 and load_state(path)["epoch"] == 2
    reads = []
    monkeypatch.setattr(rundir, "_WRITTEN", {})  # as in a new process, which did not write it
    real = rundir.load_state
    monkeypatch.setattr(rundir, "load_state", lambda p, *a: reads.append(p) or real(p, *a))
    save_state(path, {**state, "epoch": 3}, previous=previous)  # sound: read once, kept
    assert reads == [path] and load_state(previous)["epoch"] == 2 and load_state(path)["epoch"] == 3
    monkeypatch.setattr(rundir, "_WRITTEN", {})
    path.write_bytes(path.read_bytes()[:100])  # damaged (a resume fell back past it): replaced, not kept
    save_state(path, {**state, "epoch": 4}, previous=previous)
    assert load_state(previous)["epoch"] == 2 and load_state(path)["epoch"] == 4
    monkeypatch.setattr(rundir, "_WRITTEN", {})
    reads.clear()
    assert rundir.RunDir(tmp_path).load_checkpoint()["epoch"] == 4  # read soundly: stamped
    save_state(path, {**state, "epoch": 5}, previous=previous)
    assert reads == [path] and load_state(previous)["epoch"] == 4  # the one read by load_checkpoint, no other


def test_a_start_record_outlives_a_refused_start_and_gives_way_to_options_asked_for(tmp_path, capsys, monkeypatch):
    """A run stopped while it was built leaves .start.yaml: a later start that is refused (its data missing)
    leaves that record as it was, so `--resume` still continues the run first asked for; a resume that asks
    for other options starts those instead (nothing was trained: a grid's cell rerun with another recipe)."""
    import yaml

    from locallearn.training.runner import SingleProcess

    out = tmp_path / "run"
    real = SingleProcess.runner

    def stopped_while_built(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SingleProcess, "runner", stopped_while_built)
    assert main(["train", *TINY, "--lr", "0.05", "--epochs", "1", "--out", str(out)]) == 130
    record = (out / ".start.yaml").read_bytes()
    assert yaml.safe_load(record)["optim"]["lr"] == 0.05 and not (out / "config.yaml").exists()
    monkeypatch.setattr(SingleProcess, "runner", real)
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"), "--out", str(out)]) == 2
    capsys.readouterr()
    assert (out / ".start.yaml").read_bytes() == record  # the refused start's options did not replace it
    assert main(["train", "--out", str(out), "--resume", "--lr", "0.2"]) == 0  # other options: those start
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.2
    assert not (out / ".start.yaml").exists()


def test_a_stop_between_batches_by_sigterm_says_so():
    import signal as signals

    from locallearn.training import interrupt

    with interrupt.stop_between_batches():
        os.kill(os.getpid(), signals.SIGTERM)  # a stop requested, acted on at the next check
        with pytest.raises(interrupt.Interrupted, match="^stopped by SIGTERM"):
            interrupt.check()
    assert interrupt.exit_status() == 143
