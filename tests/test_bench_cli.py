"""`locallearn bench memory|speed`: a short run into a temporary directory, and one-line errors for bad
grid values before anything runs."""

import json
import os

import pytest
import torch

from locallearn.cli import main

GRID = ["--models", "resnet20", "--methods", "e2e,checkpoint,contsup", "--num-modules", "1,2",
        "--splits", "uniform", "--contexts", "R0", "--batch-sizes", "2", "--warmup", "0", "--quiet"]
NO_CONTEXTS = [a for i, a in enumerate(GRID) if "--contexts" not in GRID[i - 1:i + 1]]  # for methods without context


def test_bench_memory_writes_every_output(tmp_path, capsys):
    assert main(["bench", "memory", *GRID, "--out", str(tmp_path)]) == 0
    for ext in ("json", "csv", "md", "png"):
        assert (tmp_path / f"memory.{ext}").exists()
    data = json.loads((tmp_path / "memory.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["e2e", "checkpoint", "contsup"]
    assert all(r["status"] == "ok" for r in data["rows"])
    assert data["meta"]["command"].startswith("locallearn ") and data["meta"]["torch_threads"] >= 1
    assert data["meta"]["grid"]["models"] == ["resnet20"]
    cpu = data["meta"]["cpu"]  # the CPU, named: step-time ratios differ between CPUs
    assert cpu.endswith(f", {torch.backends.cpu.get_cpu_capability()}") and len(cpu) > len(", AVX2")
    assert f"- machine: CPU ({cpu}; " in (tmp_path / "memory.md").read_text()


def test_bench_compares_auxiliary_heads(tmp_path):
    argv = ["bench", "memory", *NO_CONTEXTS, "--methods", "greedy", "--num-modules", "2", "--aux-heads", "linear,4c1f"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "memory.json").read_text())["rows"]
    assert [(r["method"], r["aux_head"]) for r in rows] == [("e2e", None), ("greedy", "linear"), ("greedy", "4c1f")]
    assert rows[2]["peak_activation_bytes"] > rows[1]["peak_activation_bytes"]  # the wider head keeps more


def test_a_configuration_that_cannot_train_at_a_batch_size_is_skipped_and_the_grid_goes_on(tmp_path):
    """DGL's heads hold a BatchNorm1d, which cannot normalise one image: the row says so (it used to stop the
    grid with torch's error and write nothing)."""
    argv = ["bench", "memory", *NO_CONTEXTS, "--methods", "dgl", "--num-modules", "2", "--batch-sizes", "1,2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "memory.json").read_text())["rows"]
    assert [(r["method"], r["batch_size"], r["status"]) for r in rows] == [
        ("e2e", 1, "ok"), ("dgl", 1, "skipped"), ("e2e", 2, "ok"), ("dgl", 2, "ok")]
    assert "BatchNorm1d at objectives.0.head.mlp.1" in rows[1]["reason"] and "--batch-sizes of 2" in rows[1]["reason"]


def test_bench_speed_runs(tmp_path):
    assert main(["bench", "speed", *GRID, "--rounds", "1", "--threads", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert rows[0]["time_ratio"] == 1.0 and all(r["step_time_s"] > 0 for r in rows)


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--models", "resnet20,vgg", "models: unknown value 'vgg'; valid values are"),
        ("--num-modules", "2,x", "--num-modules: expected comma-separated integers"),
        ("--contexts", "R0,Q1", "contexts: unknown mode 'Q1'"),
        ("--feature-decoders", "linear,mlp", "feature_decoders: unknown value 'mlp'; valid values are"),
        ("--aux-heads", "1c2f,2c2f", "aux_heads: unknown value '2c2f'; valid values are"),
        ("--device", "tpu", "device: expected cpu, cuda or cuda:N"),
        ("--seed", "-1", "seed must be an integer from 0 to"),
    ],
)
def test_bad_grid_values_fail_in_one_line_before_running(tmp_path, capsys, flag, value, expected):
    argv = ["bench", "memory", *GRID, "--out", str(tmp_path / "out")]
    argv = argv + [flag, value]  # argparse keeps the last value of a repeated option
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("locallearn: error: ") and expected in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_an_out_that_a_file_stands_in_is_one_line_with_the_fix(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    args = ["--models", "resnet20", "--methods", "e2e", "--batch-sizes", "2"]
    for kind in ("memory", "speed", "accuracy", "pipeline"):  # refused before anything is measured or trained
        out = tmp_path / "afile"
        assert main(["bench", kind, "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"locallearn: error: out: {out} is a file, not a directory; choose another --out.\n"
    out = tmp_path / "afile" / "sub"
    assert main(["bench", "memory", *args, "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"locallearn: error: {out}: not a directory; a file stands where a directory is "
                                       f"needed; give another path.\n")
    assert (tmp_path / "afile").read_text() == "mine"


def test_cuda_device_refused_without_cuda(tmp_path, capsys):
    assert main(["bench", "memory", *GRID, "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.gpu
def test_bench_memory_on_cuda_reports_allocator_peak(tmp_path):
    assert main(["bench", "memory", *GRID, "--device", "cuda", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "memory.json").read_text())["rows"]
    assert all(r["peak_allocated_bytes"] > 0 and r["step_allocated_bytes"] > 0 for r in rows)
    assert all(r["peak_activation_bytes"] > 0 for r in rows)  # meter (a) works on CUDA too


def test_a_ctrl_c_writes_the_rows_measured_before_it(tmp_path, capsys, monkeypatch):
    """memory: the configurations measured before the Ctrl-C, whole; speed: the rounds every configuration of
    the group completed (paired), each step's time kept; both marked interrupted, exit status 130."""
    import locallearn.bench.runner as runner

    calls = []
    real_memory, real_step = runner.measure_memory, runner._timed_step

    def memory(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_memory(*args, **kwargs)

    assert main(["bench", "memory", *GRID, "--out", str(tmp_path / "m")]) == 0  # a complete table first
    complete = (tmp_path / "m" / "memory.json").read_text()
    monkeypatch.setattr(runner, "measure_memory", memory)
    assert main(["bench", "memory", *GRID, "--out", str(tmp_path / "m")]) == 130
    err = capsys.readouterr().err
    assert err == (f"locallearn: interrupted after 1 of 3 configurations: the 1 measured are written to "
                   f"{tmp_path / 'm' / 'memory-interrupted.md'}; the same command measures the whole grid.\n")
    data = json.loads((tmp_path / "m" / "memory-interrupted.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["e2e"] and data["rows"][0]["status"] == "ok"
    assert data["meta"]["interrupted"] == "interrupted after 1 of 3 configurations"
    assert "**Interrupted** (interrupted after 1 of 3 configurations)" in \
        (tmp_path / "m" / "memory-interrupted.md").read_text()
    assert (tmp_path / "m" / "memory.json").read_text() == complete  # the earlier complete table is kept
    monkeypatch.setattr(runner, "measure_memory", real_memory)
    assert main(["bench", "memory", *GRID, "--out", str(tmp_path / "m")]) == 0  # complete again: the partial goes
    assert not list((tmp_path / "m").glob("memory-interrupted.*"))
    steps = []

    def step(case):
        steps.append(1)
        if len(steps) == 3 * 2 + 1:  # in round 3 of 3 configurations
            raise KeyboardInterrupt
        return real_step(case)

    monkeypatch.setattr(runner, "_timed_step", step)
    assert main(["bench", "speed", *GRID, "--rounds", "5", "--out", str(tmp_path / "s")]) == 130
    assert "interrupted after 3 of 3 configurations, the last 3 timed in 2 of 5 rounds: the 3 measured are written" \
        in capsys.readouterr().err
    rows = json.loads((tmp_path / "s" / "speed-interrupted.json").read_text())["rows"]
    assert [(r["method"], r["rounds"], len(r["step_times_s"])) for r in rows] == [
        ("e2e", 2, 2), ("checkpoint", 2, 2), ("contsup", 2, 2)]
    e2e = rows[0]["step_times_s"]  # the paired ratios, recomputed from the stored steps
    for row in rows:
        paired = sorted(t / e for t, e in zip(row["step_times_s"], e2e))
        assert row["time_ratio_min"] == pytest.approx(paired[0], rel=1e-3)
        assert row["time_ratio_max"] == pytest.approx(paired[-1], rel=1e-3)
    # nothing measured at all: nothing written
    steps.clear()
    monkeypatch.setattr(runner, "_timed_step", lambda case: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["bench", "speed", *GRID, "--rounds", "5", "--out", str(tmp_path / "none")]) == 130
    assert "interrupted after 0 of 3 configurations: nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_a_sigterm_keeps_the_rows_measured_as_ctrl_c_does(tmp_path, capsys, monkeypatch):
    import signal

    import locallearn.bench.runner as runner

    real = runner.measure_memory
    calls = []

    def memory(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler ending the job
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "measure_memory", memory)
    assert main(["bench", "memory", *GRID, "--out", str(tmp_path / "m")]) == 143
    assert capsys.readouterr().err.startswith("locallearn: stopped by SIGTERM after 1 of 3 configurations: the 1 "
                                              "measured are written to")
    assert len(json.loads((tmp_path / "m" / "memory-interrupted.json").read_text())["rows"]) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


@pytest.mark.parametrize("kind", ["memory", "speed"])
@pytest.mark.parametrize("flags, words", [
    (["--methods", "greedy", "--contexts", "R1E,E"], "--contexts: no method of the grid supplies context"),
    (["--methods", "greedy", "--feature-decoders", "conv"], "--feature-decoders: no method of the grid reconstructs"),
    (["--methods", "e2e,checkpoint", "--splits", "uniform"], "--splits: no method of the grid trains local modules"),
    (["--methods", "checkpoint", "--aux-heads", "linear"], "--aux-heads: no method of the grid trains local modules"),
    (["--methods", "greedy", "--num-modules", "1", "--splits", "auto"], "--splits: the grid's only K is 1, where no "
                                                                       "method trains local modules"),
    (["--methods", "contsup", "--num-modules", "1", "--contexts", "R0"], "--contexts: the grid's only K is 1"),
])
def test_an_axis_no_method_of_the_grid_uses_is_refused(tmp_path, capsys, kind, flags, words):
    assert main(["bench", kind, "--models", "resnet20", *flags, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "drop them, or add" in err
    assert not (tmp_path / "b").exists()


def test_the_bench_flags_take_their_defaults_from_the_dataclasses_that_run_them(monkeypatch):
    """Each default is set once, in the dataclass (PipelineBench, GridSpec, RunOptions, AccuracyGrid): the command
    line wrote every one of them a second time, and a default changed in one place would not have moved in the
    other."""
    import dataclasses

    from locallearn.bench.accuracy import AccuracyGrid
    from locallearn.bench.grid import GridSpec
    from locallearn.bench.pipeline import PipelineBench
    from locallearn.bench.runner import RunOptions
    from locallearn.cli import build_parser

    for cls, name, value in ((PipelineBench, "batches", 7), (GridSpec, "num_modules", (2, 3)),
                             (RunOptions, "rounds", 4), (AccuracyGrid, "seeds", (5,))):
        monkeypatch.setattr(next(f for f in dataclasses.fields(cls) if f.name == name), "default", value)
    options = vars(build_parser().parse_args(["bench", "pipeline"]))
    assert options["batches"] == 7 and options["ranks"] == 2 and options["variants"] == ",".join(PipelineBench.variants)
    options = vars(build_parser().parse_args(["bench", "speed"]))
    assert options["num_modules"] == "2,3" and options["rounds"] == 4 and options["models"] == "resnet110"
    assert vars(build_parser().parse_args(["bench", "accuracy"]))["seeds"] == "5"
