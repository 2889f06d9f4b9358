"""`locallearn bench pipeline`: the five variants end to end in fresh processes (tiny network, ``slow``), the
speed-up and verdict on synthetic numbers, failed runs, and bad options refused in one line before any process
starts. No timing is asserted: the numbers of a 2-batch run on a shared machine are noise."""

from __future__ import annotations

import json

import pytest

from locallearn.bench import pipeline as bp
from locallearn.cli import main

TINY = ["--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--batch-size", "8", "--batches", "2",
        "--warmup", "1", "--repeats", "1", "--max-rounds", "1", "--idle", "1", "--quiet"]


# --- end to end -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_variant_runs_in_fresh_processes_and_the_outputs_are_written(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "pipeline", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verdict: the pipeline is" in printed and "wrote" in printed
    report = json.loads((out / "pipeline.json").read_text())
    assert list(report["variants"]) == ["single_1t", "single_Nt", "pipeline", "pipeline_sync", "ddp"]
    assert report["setting"]["shapes"] == {
        "single_1t": {"processes": 1, "threads": 1}, "single_Nt": {"processes": 1, "threads": 2},
        "pipeline": {"processes": 2, "threads": 1}, "pipeline_sync": {"processes": 2, "threads": 1},
        "ddp": {"processes": 2, "threads": 1},
    }
    for name, v in report["variants"].items():
        assert v["status"] == "ok" and len(v["runs"]) == 1, name
        run = v["runs"][0]
        assert run["status"] == "ok" and run["round"] == 1
        assert run["images_per_s"] > 0 and run["steady_images_per_s"] > 0
    pipe, ddp = report["variants"]["pipeline"]["runs"][0], report["variants"]["ddp"]["runs"][0]
    assert pipe["layout"] == {"stages": 2, "data_parallel": 1, "modules": [[0, 0], [1, 1]]}
    assert ddp["layout"] == {"stages": 1, "data_parallel": 2, "modules": [[0, 1]]}  # every module on both ranks
    assert [r["modules"] for r in ddp["ranks"]] == [[0, 1], [0, 1]]
    comparison = report["comparison"]
    assert comparison["baselines"] == ["ddp", "single_1t", "single_Nt"] and comparison["failed"] == []
    assert comparison["best"] in bp.BASELINES and comparison["verdict"].startswith("the pipeline is")
    assert report["setting"]["net"] == dict(model="resnet20", method="contsup", num_modules=2, split="uniform",
                                            dataset="cifar10", context="R1E")
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] and machine["command"].startswith("locallearn ")
    md = (out / "pipeline.md").read_text()
    assert "**Verdict: the pipeline is" in md
    for name, (procs, threads) in (("single_1t", (1, 1)), ("single_Nt", (1, 2)), ("ddp", (2, 1))):
        assert f"| {name} | {procs} × {threads} |" in md


@pytest.mark.slow
def test_a_run_that_does_not_finish_is_a_failed_run_and_the_exit_status_says_so(tmp_path, capsys):
    out = tmp_path / "bench"
    # runs of 100000 batches cannot finish within 0.5 s, however fast the forked processes start
    argv = ["bench", "pipeline", *TINY, "--batches", "100000", "--variants", "single_1t,pipeline", "--run-timeout",
            "0.5", "--max-rounds", "2", "--out", str(out)]
    assert main(argv) == 1
    report = json.loads((out / "pipeline.json").read_text())
    for v in report["variants"].values():  # one run each: a variant that failed is not run again
        assert v["status"] == "failed" and len(v["runs"]) == 1
        assert v["runs"][0]["reason"] == "did not finish within 0.5 s; killed"
    assert report["comparison"]["verdict"] == (
        "no verdict: the pipeline failed in every run; single_1t failed, so it is not compared"
    )
    assert "| pipeline | 2 × 1 | failed |" in (out / "pipeline.md").read_text()


@pytest.mark.slow
def test_ctrl_c_writes_the_runs_measured_before_it(tmp_path, capsys, monkeypatch):
    """A Ctrl-C in the second run of a round: the first run is written, marked interrupted (it was discarded)."""
    out, calls, real = tmp_path / "bench", [], bp.run_variant

    def stopped_at_the_second(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bp, "run_variant", stopped_at_the_second)
    argv = ["bench", "pipeline", *TINY, "--variants", "single_1t,pipeline", "--out", str(out)]
    assert main(argv) == 130
    assert capsys.readouterr().err == (f"locallearn: interrupted in round 1: the runs measured before it are written "
                                       f"to {out / 'pipeline.json'} and {out / 'pipeline.md'}, marked interrupted\n")
    report = json.loads((out / "pipeline.json").read_text())
    assert report["interrupted_in_round"] == 1 and calls == ["single_1t", "pipeline"]
    assert report["variants"]["single_1t"]["runs"][0]["status"] == "ok" and report["variants"]["pipeline"]["runs"] == []
    assert report["variants"]["pipeline"]["status"] == "not measured"
    assert report["comparison"]["verdict"] == "no verdict: the pipeline was not measured (interrupted)"
    md = (out / "pipeline.md").read_text()
    assert "**Interrupted (Ctrl-C) in round 1**" in md and "| pipeline | 2 × 1 | not measured (interrupted) |" in md
    calls.clear()  # stopped in the first run: nothing to write, and nothing is
    monkeypatch.setattr(bp, "run_variant", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main([*argv[:-1], str(tmp_path / "none")]) == 130
    assert "interrupted before any run was measured; nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


# --- bad options ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--ranks", "1"], "ranks must be an integer >= 2, got 1."),
        (["--ranks", "4"], ("ranks: a pipeline of 4 ranks needs at least 4 local modules (one stage per rank) "
                            "but --num-modules is 2; use --ranks 2 or less, or --num-modules 4 or more.")),
        (["--num-modules", "1"], ("ranks: a pipeline of 2 ranks needs at least 2 local modules (one stage per rank) "
                                  "but --num-modules is 1; use --num-modules 2 or more.")),
        (["--batch-size", "9"], "batch_size: ddp gives each of the 2 ranks an equal share of every batch"),
        (["--batches", "1"], "batches must be an integer >= 2"),
        (["--variants", "pipeline,threads"], "variants: unknown variant 'threads'; valid variants are single_1t"),
        (["--variants", "ddp,ddp"], "variants: each variant at most once"),
        (["--clean", "1.5"], "clean must be a finite number >= 0 and <= 1"),
        (["--model", "resnet21"], "unknown model 'resnet21'"),
        (["--split", "paper"], "split: resnet20 defines no paper split"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_any_process_starts(tmp_path, capsys, monkeypatch, flags, expected):
    def no_process(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(bp, "spawn_local", no_process)
    out = tmp_path / "out"
    assert main(["bench", "pipeline", *TINY, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("locallearn: error: ") and expected in err and err.count("\n") == 1
    assert "Traceback" not in err and not out.exists()


def test_a_pipeline_of_fewer_ranks_than_modules_is_fine_and_ddp_alone_needs_no_stages():
    bp.PipelineBench(model="resnet20", num_modules=4, ranks=2)
    bp.PipelineBench(model="resnet20", num_modules=2, ranks=4, variants=("single_Nt", "ddp"))


def test_context_goes_only_to_methods_that_supply_it():
    assert bp.PipelineBench().net_options()["context"] == "R1E"
    assert "context" not in bp.PipelineBench(method="greedy").net_options()


# --- speed-up and verdict on synthetic numbers ----------------------------------------------------------------------
def _summary(steady: float | None, window: float | None = None, clean_runs: int = 1) -> dict:
    if steady is None:
        return {"status": "failed", "clean_runs": 0, "failed_runs": 1, "median_images_per_s": None,
                "median_steady_images_per_s": None, "best_images_per_s": None,
                "runs": [{"status": "failed", "reason": "exit codes [1, 1]: RuntimeError: boom", "round": 1}]}
    window = steady if window is None else window
    return {"status": "ok", "clean_runs": clean_runs, "failed_runs": 0, "median_images_per_s": window,
            "median_steady_images_per_s": steady, "best_images_per_s": window, "runs": []}


def test_the_pipeline_ahead_of_the_best_baseline():
    c = bp.compare({"single_1t": _summary(140), "single_Nt": _summary(200), "pipeline": _summary(230),
                    "pipeline_sync": _summary(300), "ddp": _summary(180)})
    assert c["best"] == "single_Nt" and c["ahead"] is True  # pipeline_sync is not a baseline
    assert c["speedup_steady"] == pytest.approx(230 / 200) and c["speedup"] == pytest.approx(230 / 200)
    assert c["against"]["single_1t"]["steady"] == pytest.approx(230 / 140)
    assert c["verdict"] == "the pipeline is ahead of the best other variant, single_Nt: 1.15× in the steady state, " \
                           "1.15× over the whole window"


def test_the_pipeline_not_ahead_is_said_plainly():
    c = bp.compare({"single_1t": _summary(141.9), "single_Nt": _summary(230.0, 229.6),
                    "pipeline": _summary(227.5, 217.4), "ddp": _summary(200.0)})
    assert c["best"] == "single_Nt" and c["ahead"] is False
    assert c["verdict"] == ("the pipeline is not ahead of single_Nt: 0.99× in the steady state, 0.95× over the whole "
                            "window")


def test_a_ratio_within_two_percent_is_not_called_ahead():
    c = bp.compare({"single_Nt": _summary(164.1, 164.0), "pipeline": _summary(164.8, 159.0), "ddp": _summary(163.4)})
    assert c["speedup_steady"] == pytest.approx(164.8 / 164.1) and c["ahead"] is False
    assert c["verdict"] == ("the pipeline is not ahead of single_Nt: 1.00× in the steady state, 0.97× over the whole "
                            "window")


def test_each_measure_is_against_its_own_best_and_a_split_verdict_names_both():
    c = bp.compare({"single_Nt": _summary(200, 150), "pipeline": _summary(210, 170), "ddp": _summary(190, 180)})
    assert (c["best"], c["best_window"]) == ("single_Nt", "ddp")
    assert c["speedup_steady"] == pytest.approx(1.05) and c["speedup"] == pytest.approx(170 / 180)
    assert c["verdict"] == ("the pipeline is ahead of single_Nt in the steady state (1.05×) but not over the whole "
                            "window (0.94× against ddp)")


def test_a_failed_baseline_is_named_and_left_out():
    c = bp.compare({"single_1t": _summary(100), "single_Nt": _summary(None), "pipeline": _summary(98),
                    "ddp": _summary(None)})
    assert c["failed"] == ["single_Nt", "ddp"] and c["baselines"] == ["single_1t"] and c["best"] == "single_1t"
    assert c["verdict"] == ("the pipeline is not ahead of single_1t: 0.98× in the steady state, 0.98× over the whole "
                            "window; single_Nt and ddp failed, so they are not compared")


def test_no_verdict_without_a_pipeline_or_a_baseline():
    assert bp.compare({"single_1t": _summary(100), "pipeline": _summary(None)})["verdict"] == \
        "no verdict: the pipeline failed in every run"
    c = bp.compare({"pipeline": _summary(100), "ddp": _summary(None)})
    assert c["best"] is None
    assert c["verdict"] == ("no verdict: none of single_1t, single_Nt and ddp ran to compare with (single_1t and "
                            "single_Nt not run); ddp failed, so it is not compared")
    assert bp.compare({"single_1t": _summary(100)})["verdict"] == "no verdict: the pipeline variant was not run"


def test_medians_of_busy_runs_are_flagged():
    c = bp.compare({"single_Nt": _summary(200, clean_runs=0), "pipeline": _summary(100)})
    assert c["verdict"].endswith("; no clean run of single_Nt: medians of busy runs")


def _run(round_, steady, foreign=0.0, status="ok"):
    if status != "ok":
        return {"status": status, "reason": "boom", "round": round_}
    return {"status": "ok", "round": round_, "steady_images_per_s": steady, "images_per_s": steady * 0.9,
            "foreign_cpu_share": foreign}


def test_summaries_count_clean_runs_and_skip_failed_ones():
    s = bp.summarize([_run(1, 100), _run(2, 0, status="failed"), _run(3, 300, foreign=0.5), _run(4, 120)], clean=0.05)
    assert s["status"] == "ok" and s["clean_runs"] == 2 and s["failed_runs"] == 1
    assert s["median_steady_images_per_s"] == 110 and s["best_images_per_s"] == pytest.approx(270)
    busy = bp.summarize([_run(1, 100, foreign=0.5), _run(2, 200, foreign=0.5)], clean=0.05)
    assert busy["clean_runs"] == 0 and busy["median_steady_images_per_s"] == 150  # none clean: every run counts
    assert bp.summarize([_run(1, 0, status="failed")], clean=0.05)["status"] == "failed"


def test_paired_ratios_use_rounds_where_both_runs_are_clean():
    pipe = [_run(1, 200), _run(2, 220), _run(3, 240, foreign=0.3)]
    ref = [_run(1, 100), _run(2, 0, status="failed"), _run(3, 120)]
    assert bp.paired_ratios(pipe, ref, clean=0.05) == {"ratios": [2.0], "median": 2.0, "min": 2.0, "max": 2.0}
    assert bp.paired_ratios(pipe, [], clean=0.05) == {"ratios": []}


def test_the_split_defaults_to_trains_paper_where_published_else_auto():
    assert bp.PipelineBench(model="resnet32", num_modules=4).net_options()["split"] == "paper"
    assert bp.PipelineBench(model="resnet20", num_modules=2).net_options()["split"] == "auto"
    assert bp.PipelineBench(model="resnet20", num_modules=2, split="uniform").net_options()["split"] == "uniform"


def test_a_baseline_not_reached_before_a_ctrl_c_is_said_interrupted_not_unrun():
    ok = {"status": "ok", "median_steady_images_per_s": 10.0, "median_images_per_s": 9.0, "clean_runs": 1}
    variants = {"pipeline": ok, "single_1t": {"status": "not measured"}}
    assert bp.compare(variants)["verdict"] == ("no verdict: none of single_1t, single_Nt and ddp ran to compare with "
                                               "(single_Nt and ddp not run) (single_1t not measured: interrupted)")
