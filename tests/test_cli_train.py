"""`locallearn train | eval | list`: a one-epoch run into a temporary directory, every file it writes, and
the one-line errors for bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from locallearn.cli import main
from locallearn.training import lr_schedule

from checks import ctrl_c_before_checkpoint

TINY = ["--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--limit-train", "64",
        "--limit-test", "64", "--batch-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished one-epoch run, and what the command printed."""
    out = tmp_path_factory.mktemp("cli") / "run"
    capture = pytest.MonkeyPatch()
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    capture.setattr(sys, "stdout", stdout)
    capture.setattr(sys, "stderr", stderr)
    try:
        status = main(["train", *TINY, "--epochs", "1", "--out", str(out)])
    finally:
        capture.undo()
    return out, status, stdout.getvalue(), stderr.getvalue()


def test_one_epoch_run_writes_every_file(run):
    out, status, stdout, stderr = run
    assert status == 0
    assert stderr == ""  # no progress bar when stderr is not a terminal
    assert "resnet20 / contsup (K=2" in stdout and str(out) in stdout and "parameters" in stdout
    assert "done: test accuracy" in stdout and "summary.json" in stdout
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"):  # as any file the user makes
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name

    config = yaml.safe_load((out / "config.yaml").read_text())
    net = config["net"]
    assert (net["model"], net["num_modules"], config["optim"]["epochs"], net["context"]) == ("resnet20", 2, 1, "R1E")
    assert net["local_loss"] == "ce" and net["aux_head"] == "1c2f" and config["run"]["out"] == str(out)

    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    for key in ("epoch", "lr", "train_loss", "train_acc", "train_loss/0", "train_acc/0", "train_loss/1",
                "train_acc/1", "test_acc", "test_loss", "epoch_time_s", "train_time_s", "images_per_s",
                "peak_memory_mb", "peak_memory_kind"):
        assert key in record, key
    assert record["epoch"] == 1 and record["lr"] == lr_schedule(lr=0.1, epochs=1)[0]
    assert record["train_loss"] == pytest.approx(record["train_loss/0"] + record["train_loss/1"])
    assert record["peak_memory_kind"] == "saved_tensors" and record["peak_memory_mb"] > 0
    assert 0 <= record["test_acc"] <= 1

    summary = json.loads((out / "summary.json").read_text())
    for key in ("test_acc", "best_test_acc", "best_epoch", "best_note", "parameters", "train_time_s",
                "peak_memory_mb", "images_per_s", "net", "device", "versions"):
        assert key in summary, key
    assert summary["test_acc"] == record["test_acc"] and "test set" in summary["best_note"]
    assert summary["device"] == "cpu"
    assert summary["parameters"] > 0 and summary["images_per_s"] > 0

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    run_record = {key: config.pop(key) for key in ("run_id", "torch_threads")}
    assert checkpoint["epoch"] == 1 and checkpoint["config"] == config and len(checkpoint["history"]) == 1
    assert checkpoint["run_id"] == run_record["run_id"] and run_record["torch_threads"] >= 1
    assert {"model", "optimizer", "rng"} <= set(checkpoint) and "lr_schedule" not in checkpoint  # computed, not stored
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.jsonl", "summary.json"]


def test_eval_reproduces_the_final_test_accuracy(run, capsys):
    out = run[0]
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    said = capsys.readouterr().out
    assert f"test accuracy {100 * summary['test_acc']:.2f}%" in said
    assert "% (test loss " in said and ") on 64 test images, checkpoint" in said  # how many (--limit-test)


def test_eval_with_precise_batchnorm_leaves_the_checkpoint_as_it_was(run, capsys):
    out = run[0]
    before = (out / "checkpoint.pt").read_bytes()
    assert main(["eval", str(out), "--device", "cpu", "--precise-bn", "2"]) == 0
    assert "BatchNorm statistics recomputed on 2 training batches, not saved" in capsys.readouterr().out
    assert (out / "checkpoint.pt").read_bytes() == before
    assert main(["eval", str(out), "--device", "cpu", "--precise-bn", "1000"]) == 0  # more than there are: said
    assert re.search(r"recomputed on \d+ training batches \(all there are; 1000 asked\), not saved", capsys.readouterr().out)
    assert main(["eval", str(out), "--device", "cpu", "--precise-bn", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least one batch" in err


def test_finished_run_is_refused_without_overwrite(run, capsys):
    out = run[0]
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a finished run; pass --overwrite" in err


def test_resume_with_other_options_is_refused(run, capsys):
    out = run[0]
    assert main(["train", *TINY, "--epochs", "1", "--lr", "0.5", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lr (0.1 → 0.5)" in err
    # The same options (or none: the stored config) resume; a finished run has nothing left to do.
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().out


def test_overwrite_replaces_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, "--limit-train", "32", "--limit-test", "32", "--epochs", "1", "--out", str(out)]
    assert main(args) == 0
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["seed"] == 1
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_channels_last_from_the_command_line_is_recorded_and_said(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, "--limit-train", "32", "--limit-test", "32", "--epochs", "1", "--out", str(out)]
    assert main([*args, "--channels-last"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["channels_last"] is True
    recipe = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  recipe:"))
    assert recipe.endswith(", channels-last")
    # eval rebuilds the net in the run's layout: the test figures of the run, to the last digit printed
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    printed = capsys.readouterr().out
    assert f"test accuracy {100 * summary['test_acc']:.2f}%" in printed
    assert f"(test loss {summary['test_loss']:.4g})" in printed


def test_a_compiled_runs_first_epoch_in_each_process_says_its_time_includes_compiling(tmp_path, capsys, monkeypatch):
    """torch.compile compiles in a process's first steps (tests/test_compile.py compiles for real; here the
    compile is skipped, the lines are what is tested): epoch 1, and the first epoch after a resume."""
    import locallearn.training.runner as runner

    monkeypatch.setattr(runner, "compile_parts", lambda net: None)
    args = ["train", *TINY, "--limit-train", "32", "--limit-test", "32", "--compile", "--epochs", "3",
            "--out", str(tmp_path / "run")]
    with ctrl_c_before_checkpoint(3):
        assert main(args) == 130
    epochs = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.endswith("  (time includes compiling)") for line in epochs] == [True, False]
    assert main([*args, "--resume"]) == 0
    epochs = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 1 and epochs[0].startswith("epoch 3/3") and epochs[0].endswith("(time includes compiling)")
    eager = [arg for arg in args if arg != "--compile"]
    assert main([*eager[:-1], str(tmp_path / "eager")]) == 0
    assert "compiling" not in capsys.readouterr().out


def test_a_classifier_wider_than_the_datas_classes_is_said(tmp_path, capsys):
    args = ["train", *TINY, "--limit-train", "32", "--limit-test", "32", "--epochs", "1"]
    assert main([*args, "--num-classes", "12", "--out", str(tmp_path / "wide")]) == 0
    assert "32 test images; the classifier has 12 outputs for 10 classes; cpu" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert "32 test images; cpu" in capsys.readouterr().out


def test_the_first_line_names_what_each_module_reconstructs(tmp_path, capsys):
    args = ["train", *TINY, "--limit-train", "32", "--limit-test", "32", "--epochs", "1"]
    assert main([*args, "--feature-decoder", "conv", "--out", str(tmp_path / "f")]) == 0
    assert "context R1E, feature reconstruction by conv decoders) on digits" in capsys.readouterr().out
    assert main([*args, "--method", "infopro", "--out", str(tmp_path / "i")]) == 0
    assert "context R0, image reconstruction) on digits" in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: resnet32\nlearning_rate: 0.1\n")
    cases = [
        (["train", "--config", str(bad_yaml)], "unknown key 'learning_rate'"),
        (["train", "--method", "nope", "--out", str(tmp_path / "a")], "unknown method 'nope'"),
        (["train", "--context", "R1X", "--out", str(tmp_path / "a")], "context: unknown mode 'R1X'"),
        (["train", "--config", "no/such/preset"], "no file or preset named"),
        (["eval", str(tmp_path)], "holds no run"),
        (["train", "--limit-train", "1", "--out", str(tmp_path / "a")], "limit_train must be an integer >= 2, got 1"),
        (["train", "--method", "dgl", "--batch-size", "1", "--out", str(tmp_path / "a")],
         "(BatchNorm1d at objectives.0.head.mlp.1), which needs at least 2 images per training batch, not 1; give "
         "--batch-size 2 or more."),
        (["train", "--method", "infopro", "--model", "resnet20", "--split", "uniform", "--batch-size", "1", "--out",
          str(tmp_path / "a")], "a batch of 1 has no pair (its loss is 0, so the local modules would not learn); give "
                                "--batch-size 2 or more."),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("locallearn: error: ") and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "a").exists()  # refused before the run directory is written
    for argv, words in (
        (["train", "--epochs", "many"], "invalid int value"),
        (["train", "--bogus"], "unrecognized"),
        (["train", "--epoch", "3"], "unrecognized arguments: --epoch"),  # no abbreviations
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err


def test_a_usage_error_under_torchrun_is_said_by_rank_0_only(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exit_:
            main(["--parallel", "pipeline"])  # `train` forgotten: every rank fails alike
        assert exit_.value.code == 2
        assert ("invalid choice" in capsys.readouterr().err) == said


def test_unknown_flag_in_a_real_process_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "locallearn", "train", "--num-modules", "2", "--bogus"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "unrecognized arguments: --bogus" in proc.stderr


def test_list_shows_registries_and_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for words in ("models: ", "resnet32", "methods: ", "contsup", "context modes: ", "R1E", "datasets: ", "digits",
                  "contsup/resnet32_cifar10_k16_R1E_ce", "baselines/resnet110_cifar10_e2e",
                  "auto (the model family's: 1c2f on cnn models, token on transformer models)"):
        assert words in out, words


def test_a_dry_run_prints_the_config_yaml_the_run_wrote_and_writes_nothing(run, tmp_path, capsys):
    out = run[0]
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    written = yaml.safe_load(out.joinpath("config.yaml").read_text())
    written.pop("run_id")
    assert yaml.safe_load(printed) == written  # every option, as the run recorded it
    header = [line for line in printed.splitlines() if line.startswith("#")]
    assert header[0].startswith("# Dry run of `locallearn train`") and "nothing was trained or written" in header[0]
    cuts = next(line for line in out.joinpath("config.yaml").read_text().splitlines() if line.startswith("# cuts:"))
    assert cuts in header
    assert header[-1] == (f"# note: {out} already holds a finished run: `train` would refuse it; add --overwrite to "
                          f"replace it, or choose another --out.")
    # nothing is read or written: a dataset folder that does not exist, an out that stays absent
    fresh = tmp_path / "never"
    argv = ["train", "--config", "contsup/resnet110_cifar10_k4_R1E_ce", "--reconstruct", "--data-dir",
            str(tmp_path / "no-data"), "--out", str(fresh), "--dry-run"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert not fresh.exists() and not (tmp_path / "no-data").exists()
    assert "# note:" not in printed  # a directory that does not exist yet is no obstacle
    assert "# λ (reconstruction, task) per local module: (1, 0), (0.5, 0.5), (0, 1); table: resnet110 / cifar10 K=4" in printed
    rates = lr_schedule(lr=0.8, epochs=160)
    assert f"epoch 1 {rates[0]:.4g}, epoch 10 {rates[9]:.4g}, epoch 11 {rates[10]:.4g}, epoch 80 {rates[79]:.4g}, " \
           f"epoch 160 {rates[159]:.4g}" in printed
    # what it prints is a config file that gives the same run again
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    assert main(["train", "--config", str(again), "--dry-run"]) == 0
    body = [line for line in printed.splitlines() if not line.startswith("#")]
    assert [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")] == body
    # the checks of a run still run; --resume and --overwrite have nothing to act on
    assert main(["train", "--dry-run", "--split", "paper", "--num-modules", "3", "--model", "resnet110"]) == 2
    assert main(["train", "--dry-run", "--resume"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "paper" in err[0] and "--dry-run" in err[1] and "drop them" in err[1]
    # a config for a GPU job is checked where there is none
    assert main(["train", "--dry-run", "--device", "cuda"]) == 0 and "device: cuda" in capsys.readouterr().out


def test_missing_dataset_fails_before_writing_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", "baselines/resnet32_cifar10_e2e", "--data-dir", str(tmp_path / "none"), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "locallearn data download cifar10" in err
    assert not out.exists()


def test_ctrl_c_says_interrupted_in_one_line_wherever_it_lands(monkeypatch, capsys):
    """A bare KeyboardInterrupt (a second Ctrl-C, or one in `eval`) has no text: the line says "interrupted";
    one while the commands are being built (torch importing) is caught too."""
    import argparse

    import locallearn.cli as cli

    def interrupted(**_):
        raise KeyboardInterrupt

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(_run=interrupted)

    monkeypatch.setattr(cli, "build_parser", lambda: Parser())
    assert main(["eval", "x"]) == 130
    assert capsys.readouterr().err == "locallearn: interrupted\n"

    def building():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", building)
    assert main(["list"]) == 130
    assert capsys.readouterr().err == "locallearn: interrupted\n"
    monkeypatch.setenv("RANK", "1")  # rank 1 of a torchrun job, which passes Ctrl-C to every rank: rank 0 says it
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["list"]) == 130
    assert capsys.readouterr().err == ""


def test_ctrl_c_while_torch_imports_is_one_line_not_a_traceback():
    """The console script imports locallearn.cli, which imports no torch (the package's exports load on first
    use), so a Ctrl-C in the seconds torch takes to import lands in main: here torch's import is interrupted."""
    code = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from locallearn.cli import main\n"
        "assert 'torch' not in sys.modules\n"
        "raise SystemExit(main(['list']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (130, "locallearn: interrupted\n")


def test_a_resume_on_other_threads_says_so_and_each_epoch_records_its_own(tmp_path, capsys):
    """Float sums, and so a run's numbers, depend on the thread count: config.yaml records the first session's,
    the resume's start line names a change, and every epoch of metrics.jsonl its own."""
    out = tmp_path / "run"
    args = ["train", "--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--limit-train", "16",
            "--limit-test", "8", "--batch-size", "8", "--epochs", "2", "--device", "cpu", "--out", str(out)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with ctrl_c_before_checkpoint(2):
            assert main(args) == 130
        torch.set_num_threads(2)
        capsys.readouterr()
        assert main([*args, "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "resuming after epoch 1, now with torch threads (1 → 2; each epoch's are in metrics.jsonl)" in \
        capsys.readouterr().out
    assert "torch_threads: 1" in (out / "config.yaml").read_text()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["torch_threads"] for r in records] == [1, 2]


def test_a_pipeline_runs_settings_do_not_stop_its_resume_in_one_process(tmp_path, capsys):
    """The lock-step schedule is the pipeline's, dropped in one process; data parallelism cannot be continued
    there, and the refusal names config.yaml's value, not a flag the user did not type."""
    out = tmp_path / "run"
    args = ["train", "--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--limit-train", "16",
            "--limit-test", "8", "--batch-size", "8", "--epochs", "2", "--device", "cpu", "--out", str(out)]
    with ctrl_c_before_checkpoint(2):
        assert main(args) == 130
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("parallel: none", "parallel: pipeline")
                                     .replace("pipeline_sync: false", "pipeline_sync: true"))
    assert main(["train", "--out", str(out), "--resume"]) == 0
    (out / "summary.json").unlink()
    (out / "config.yaml").write_text(text.replace("parallel: none", "parallel: pipeline")
                                     .replace("data_parallel: 1", "data_parallel: 2"))
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume"]) == 2
    assert "trains data-parallel (data_parallel 2 in its config.yaml)" in capsys.readouterr().err


def test_stopped_after_the_first_epochs_metrics_but_before_its_checkpoint_says_resume(tmp_path, capsys):
    """metrics.jsonl holds an epoch, so the same command would be refused: the line names --resume."""
    out = tmp_path / "run"
    args = ["train", "--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--limit-train", "16",
            "--limit-test", "8", "--batch-size", "8", "--epochs", "2", "--device", "cpu", "--out", str(out)]
    with ctrl_c_before_checkpoint(1):
        assert main(args) == 130
    assert capsys.readouterr().err.strip().endswith(
        f"interrupted in epoch 1: no checkpoint was written; `locallearn train --out {out} --resume` continues it.")
    assert main([*args, "--resume"]) == 0


def test_a_second_ctrl_c_in_a_finalizer_after_the_line_is_not_printed(tmp_path):
    """The console script drops a KeyboardInterrupt that lands in a finalizer for the life of the process: a
    second press while the stopped run's objects are freed printed "Exception ignored ... KeyboardInterrupt"
    after the line that said what was kept (seen once in 20 runs of test_11's double press under load)."""
    script = tmp_path / "second_press.py"
    script.write_text(textwrap.dedent("""
        import sys
        from locallearn import cli

        class Freed:
            def __del__(self):
                raise KeyboardInterrupt  # the second press, landing while an object is freed

        def main():
            print("locallearn: interrupted in epoch 2: ... is kept", file=sys.stderr)
            Freed()
            return 130

        cli.main = main
        sys.exit(cli.console())
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130
    assert proc.stderr == "locallearn: interrupted in epoch 2: ... is kept\n", proc.stderr


def test_a_dry_run_under_torchrun_checks_the_ranks_and_prints_once(tmp_path, monkeypatch, capsys, agent_store):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    argv = ["train", "--parallel", "pipeline", "--model", "resnet20", "--out", str(tmp_path / "run"), "--dry-run"]
    assert main([*argv, "--num-modules", "2"]) == 2  # the start of the real run refuses it: so does the dry run
    assert "3 pipeline stages but the network has only 2 local modules" in capsys.readouterr().err
    assert main([*argv, "--num-modules", "3", "--pipeline-assign", "1,2"]) == 2
    assert "pipeline_assign: 2 module counts given for 3 pipeline stages" in capsys.readouterr().err
    assert main([*argv, "--num-modules", "3"]) == 0 and "parallel: pipeline" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "2")  # the other ranks check, and leave the printing to rank 0
    assert main([*argv, "--num-modules", "3"]) == 0 and capsys.readouterr().out == ""
    # without --parallel pipeline, every rank would train the whole network into one directory: refused, on every
    # rank, as the real run is (each rank printed a config before)
    single = ["train", "--model", "resnet20", "--out", str(tmp_path / "run"), "--dry-run"]
    monkeypatch.setenv("RANK", "0")
    assert main(single) == 2
    assert "this process is one of 3 ranks (torchrun) but --parallel is none" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "2")
    assert main(single) == 2 and capsys.readouterr() == ("", "")  # rank 2: refused alike; rank 0 said why
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE")  # ranks started by hand, each in a terminal of its own:
    assert main(single) == 2  # no store to learn what rank 0 said, so each says its own
    assert capsys.readouterr().err.startswith("locallearn: error: rank 2: parallel: this process is one of 3 ranks")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: a single-process run, printed
    assert main(single) == 0 and "parallel: none" in capsys.readouterr().out


def test_a_home_folder_written_as_a_tilde_is_the_home_folder(tmp_path, monkeypatch, capsys):
    """`--out '~/runs/x'` in quotes, or `out: ~/runs/x` / `data_dir: ~/data` in a YAML file, reach no shell to
    expand them: they were a folder named "~" in the working directory (the run "missing", and `rm -rf ~` the
    clean-up that deletes the home folder)."""
    home, here = tmp_path / "home", tmp_path / "here"
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    assert main(["train", *TINY, "--out", "~/runs/x"]) == 0
    assert f"run directory: {home / 'runs' / 'x'} " in capsys.readouterr().out
    assert (home / "runs" / "x" / "summary.json").is_file() and not (here / "~").exists()
    assert main(["eval", "~/runs/x"]) == 0 and main(["train", "--out", "~/runs/x", "--resume"]) == 0
    from PIL import Image

    for split in ("train", "test"):
        for name, colour in (("cat", (200, 30, 30)), ("dog", (30, 200, 30))):
            (home / "pics" / split / name).mkdir(parents=True)
            Image.new("RGB", (12, 12), colour).save(home / "pics" / split / name / "a.png")
    (home / "c.yaml").write_text("dataset: imagefolder\ndata_dir: ~/pics\nout: ~/runs/y\nimage_size: 8\nbatch_size: 2\n")
    assert main(["train", "--config", "~/c.yaml", "--model", "resnet20", "--num-modules", "2", "--split", "uniform",
                 "--device", "cpu", "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert f"out: {home / 'runs' / 'y'}" in said and f"data_dir: {home / 'pics'}" in said and not (here / "~").exists()
    # every other path argument too: the files eval, predict and report write, and the images predict reads
    (home / "out").mkdir()
    assert main(["eval", "~/runs/x", "--confusion", "~/out/c.csv", "--misclassified", "~/out/m.csv"]) == 0
    assert main(["predict", "~/runs/x", "~/pics/test", "--out", "~/out/p.csv"]) == 0
    assert main(["report", "~/runs/x", "--out", "~/out/r.md"]) == 0
    assert sorted(p.name for p in (home / "out").iterdir()) == ["c.csv", "m.csv", "p.csv", "r.md"]
    assert not (here / "~").exists()
