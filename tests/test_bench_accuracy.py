"""``locallearn bench accuracy``: a tiny grid (2 cells, a few batches) writes its rows, table and plot; an
interrupted grid resumes and finished cells are skipped; bad values are refused before anything trains; a
failing cell is reported in its row while the grid goes on."""

import json

import pytest

from locallearn.bench import accuracy
from locallearn.bench.accuracy import AccuracyGrid, run_accuracy
from locallearn.cli import main
from locallearn.training import RunDir

RECIPE = dict(dataset="digits", epochs=1, limit_train=64, limit_test=32, batch_size=32, device="cpu", split="uniform")
GRID = ["--models", "resnet20", "--methods", "greedy", "--num-modules", "2", "--seeds", "0", "--epochs", "1",
        "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--device", "cpu", "--split", "uniform"]


def test_expansion_rules():
    grid = AccuracyGrid(models=("resnet32",), methods=("greedy", "contsup", "checkpoint"), num_modules=(1, 4, 16),
                        contexts=("E", "R1E"), seeds=(0, 1), recipe=RECIPE)
    names = [c.name for c in grid.cells()]
    assert names[0] == "resnet32_e2e_k1_s0" and names[len(names) // 2] == "resnet32_e2e_k1_s1"  # seed by seed
    assert all(n.endswith("_s0") for n in names[: len(names) // 2])
    assert "resnet32_checkpoint_k1_s0" in names and "resnet32_greedy_k1_s0" not in names
    assert {n for n in names if "contsup" in n} == {f"resnet32_contsup_{c}_k{k}_s{s}" for c in ("E", "R1E")
                                                     for k in (4, 16) for s in (0, 1)}
    assert not any("greedy_E" in n for n in names)  # contexts multiply ContSup only
    losses = AccuracyGrid(methods=("greedy", "infopro"), num_modules=(4,), local_losses=("ce", "contrast"), seeds=(0,))
    assert {c.options.get("local_loss") for c in losses.cells() if c.options["method"] != "e2e"} == {"ce", "contrast"}


def test_a_tiny_grid_writes_rows_table_and_plot_and_resumes(tmp_path, capsys):
    out = tmp_path / "acc"
    assert main(["bench", "accuracy", *GRID, "--out", str(out)]) == 0
    data = json.loads((out / "accuracy.json").read_text())
    rows = data["rows"]
    assert [r["cell"] for r in rows] == ["resnet20_e2e_k1_s0", "resnet20_greedy_k2_s0"]
    for row in rows:
        assert row["status"] == "ok" and 0 <= row["test_error"] <= 100 and row["parameters"] > 0
        assert {"best_test_error_selected_on_test", "train_time_s", "images_per_s", "peak_memory_mb"} <= set(row)
    assert data["meta"]["grid"]["recipe"]["epochs"] == 1 and data["meta"]["torch_threads"] >= 1
    md = (out / "accuracy.md").read_text()
    assert "| e2e | " in md and "| greedy ce uniform |" in md and "![test error against K](accuracy.png)" in md
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "cells" / "resnet20_greedy_k2_s0" / "train.log").read_text().startswith("locallearn train:")
    # an interrupted grid resumes: a finished cell is skipped, an unfinished one continued
    finished = (out / "cells" / "resnet20_e2e_k1_s0" / "checkpoint.pt").stat().st_mtime_ns
    (out / "cells" / "resnet20_greedy_k2_s0" / "summary.json").unlink()
    capsys.readouterr()
    assert main(["bench", "accuracy", *GRID, "--out", str(out)]) == 0
    assert (out / "cells" / "resnet20_e2e_k1_s0" / "checkpoint.pt").stat().st_mtime_ns == finished
    resumed = RunDir(out / "cells" / "resnet20_greedy_k2_s0")
    assert resumed.finished and resumed.load_checkpoint()["epoch"] == 1  # resumed after its last epoch, not redone
    assert resumed.file("train.log").read_text().count("resuming after epoch 1") == 1
    # shards: two processes on one grid, each every other cell of the grid's order, then one table
    shards = out.parent / "shards"
    for i in (1, 2):
        assert main(["bench", "accuracy", *GRID, "--seeds", "0,1", "--shard", f"{i}/2", "--out", str(shards)]) == 0
        assert f"shard {i}/2: 2 cell(s) in" in capsys.readouterr().out
    assert not (shards / "accuracy.json").exists()
    assert sorted(p.name for p in (shards / "cells").iterdir()) == [
        "resnet20_e2e_k1_s0", "resnet20_e2e_k1_s1", "resnet20_greedy_k2_s0", "resnet20_greedy_k2_s1"]
    assert main(["bench", "accuracy", *GRID, "--seeds", "0,1", "--collect", "--out", str(shards)]) == 0
    assert all(r["status"] == "ok" for r in json.loads((shards / "accuracy.json").read_text())["rows"])
    assert main(["bench", "accuracy", *GRID, "--shard", "3/2", "--out", str(shards)]) == 2
    assert "--shard: expected I/N with 1 <= I <= N" in capsys.readouterr().err
    # --collect trains nothing: the finished cells make the table, the others are listed as not run
    capsys.readouterr()
    assert main(["bench", "accuracy", *GRID, "--seeds", "0,1", "--collect", "--out", str(out)]) == 0
    assert "2 cell(s) not run" in capsys.readouterr().out
    rows = {r["cell"]: r for r in json.loads((out / "accuracy.json").read_text())["rows"]}
    assert {c: r["status"] for c, r in rows.items()} == {
        "resnet20_e2e_k1_s0": "ok", "resnet20_e2e_k1_s1": "not run", "resnet20_greedy_k2_s0": "ok",
        "resnet20_greedy_k2_s1": "not run"}
    assert not (out / "cells" / "resnet20_e2e_k1_s1").exists()
    assert "- resnet20_e2e_k1_s1: not finished; run the grid without --collect" in (out / "accuracy.md").read_text()
    # the grid rerun with another recipe into the same --out: refused before anything trains, as a resume of a
    # run with other options is, rather than its finished cells reported as the new recipe's results
    table = (out / "accuracy.json").read_text()
    epochs = GRID.index("--epochs") + 1
    for argv, change in (([*GRID[:epochs], "2", *GRID[epochs + 1:]], "epochs (1 → 2)"),
                         ([*GRID, "--dataset", "fashion_mnist"], "dataset ('digits' → 'fashion_mnist')")):
        assert main(["bench", "accuracy", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "grid cell resnet20_e2e_k1_s0: " in err and change in err, err
        assert "give this recipe another --out, or delete that one." in err
    assert (out / "accuracy.json").read_text() == table


@pytest.mark.parametrize("flags, words", [
    (["--methods", "greedy,nope"], "unknown method 'nope'"),
    (["--contexts", "R9X"], "context: unknown mode 'R9X'"),
    (["--num-modules", "2,x"], "--num-modules: expected comma-separated integers"),
    (["--option", "lrate=0.1"], "unknown key 'lrate'"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
])
def test_unknown_values_are_refused_before_anything_trains(tmp_path, capsys, flags, words):
    out = tmp_path / "acc"
    args = [a for a in GRID if a not in ("--methods", "greedy")]
    assert main(["bench", "accuracy", *args, "--methods", "greedy", *flags, "--contexts", "E", "--out", str(out)]
                if "--contexts" not in flags else ["bench", "accuracy", *args, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not out.exists()


def test_a_failing_cell_is_reported_and_the_grid_goes_on(tmp_path, monkeypatch):
    real = accuracy.fit

    def fit(config, **kwargs):
        if config.net.method == "greedy":
            raise RuntimeError("simulated out of memory")
        return real(config, **kwargs)

    monkeypatch.setattr(accuracy, "fit", fit)
    grid = AccuracyGrid(models=("resnet20",), methods=("greedy", "dgl"), num_modules=(2,), seeds=(0,), recipe=RECIPE)
    rows = run_accuracy(grid, tmp_path / "acc", log=None)["rows"]
    status = {r["cell"]: (r["status"], r["reason"]) for r in rows}
    assert status["resnet20_greedy_k2_s0"] == ("failed", "simulated out of memory")
    assert status["resnet20_dgl_k2_s0"][0] == "ok" and status["resnet20_e2e_k1_s0"][0] == "ok"
    assert "resnet20_greedy_k2_s0: simulated out of memory" in (tmp_path / "acc" / "accuracy.md").read_text()
