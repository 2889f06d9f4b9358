"""``locallearn bench accuracy``: a tiny grid (2 cells, a few batches) writes its rows, table and plot; an
interrupted grid resumes and finished cells are skipped; the table states the cells' own threads and
revision; bad values, repeated values and requests no cell would honour are refused before anything
trains; a failing cell is reported in its row while the grid goes on; Ctrl-C says to rerun the grid."""

import csv
import json
import os
import signal

import pytest
import torch
import yaml

from locallearn.bench import accuracy
from locallearn.bench.accuracy import AccuracyGrid, resolve_cells, run_accuracy
from locallearn.cli import main
from locallearn.training import RunDir
from locallearn.training.config import check_used, resolve

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
    assert {n for n in names if "contsup" in n} == {f"resnet32_contsup_{c}k{k}_s{s}" for c in ("E_", "")
                                                     for k in (4, 16) for s in (0, 1)}  # R1E: ContSup's own
    assert not any("greedy_E" in n for n in names)  # contexts multiply ContSup only
    losses = AccuracyGrid(methods=("greedy", "infopro"), num_modules=(4,), local_losses=("ce", "contrast"), seeds=(0,))
    assert {c.options.get("local_loss") for c in losses.cells() if c.options["method"] != "e2e"} == {"ce", "contrast"}


@pytest.fixture
def keep_threads():
    """--threads sets torch's thread count for the whole process: put it back for the other tests."""
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


def test_a_tiny_grid_writes_rows_table_and_plot_and_resumes(tmp_path, capsys, keep_threads):
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
    # the table states the threads and revision the cells trained with, not those of the process that writes it
    data = json.loads((shards / "accuracy.json").read_text())
    assert {r["torch_threads"] for r in data["rows"]} == {keep_threads} == {data["meta"]["torch_threads"]}
    assert main(["bench", "accuracy", *GRID, "--seeds", "0,1", "--collect", "--threads", str(keep_threads + 1),
                 "--out", str(shards)]) == 0
    data = json.loads((shards / "accuracy.json").read_text())
    revision = data["rows"][0]["git_revision"]
    assert data["meta"]["torch_threads"] == keep_threads and data["meta"]["git_revision"] == revision
    md = (shards / "accuracy.md").read_text()
    assert f"- trained on: CPU; torch threads: {keep_threads}\n" in md and f"revision {revision}\n" in md
    assert f"- CPU: {data['meta']['cpu']}\n" in md  # each cell's summary.json names its CPU
    torch.set_num_threads(keep_threads)
    # cells that trained with other threads and another revision: each value, with its number of cells
    cell = RunDir(shards / "cells" / "resnet20_greedy_k2_s1")  # each epoch records its threads
    cell.write_metrics([{**r, "torch_threads": keep_threads + 1} for r in cell.read_metrics()])
    summary = cell.read_summary()  # written again with its checksum, as a run of that revision wrote it
    assert summary["versions"]["git"] == revision
    cell.write_summary({**summary, "versions": {**summary["versions"], "git": "0123abc"}})
    assert main(["bench", "accuracy", *GRID, "--seeds", "0,1", "--collect", "--out", str(shards)]) == 0
    data = json.loads((shards / "accuracy.json").read_text())
    assert data["meta"]["torch_threads"] is None and data["meta"]["git_revision"] is None
    assert data["meta"]["cells"]["torch_threads"] == {str(keep_threads): 3, str(keep_threads + 1): 1}
    row = {r["cell"]: r for r in data["rows"]}["resnet20_greedy_k2_s1"]
    assert (row["torch_threads"], row["git_revision"]) == (keep_threads + 1, "0123abc")
    md = (shards / "accuracy.md").read_text()
    assert f"torch threads: {keep_threads} (3 runs), {keep_threads + 1} (1 run)\n" in md
    assert f"revision {revision} (3 runs), 0123abc (1 run)\n" in md
    with open(shards / "accuracy.csv") as f:
        threads = {r["cell"]: r["torch_threads"] for r in csv.DictReader(f)}
    assert threads["resnet20_greedy_k2_s1"] == str(keep_threads + 1)
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
    # a value given twice would train or report the same cells twice
    (["--seeds", "0,0"], "seeds: 0 is given twice; give each value once."),
    (["--contexts", "E,E"], "contexts: E is given twice"),
    (["--num-modules", "2,2"], "num_modules: 2 is given twice"),
    (["--local-losses", "ce,ce"], "local_losses: ce is given twice"),
    (["--methods", "greedy,greedy"], "methods: greedy is given twice"),
    # requests no cell would honour
    (["--num-modules", "1"], "num_modules: greedy trains local modules and needs K ≥ 2, but the grid's K are 1; "
                             "add a K of 2 or more, or drop greedy."),
    (["--methods", "greedy"], "contexts: no method of the grid supplies context, so they would change nothing"),
    (["--methods", "e2e,checkpoint", "--local-losses", "ce"],
     "local_losses: no method of the grid trains local modules"),
    # a cell that cannot be built, refused before the cells before it train
    (["--models", "resnet32", "--split", "paper", "--num-modules", "5"], "grid cell resnet32_greedy_k5_s0: split: the "
     "paper split of resnet32 is defined for num_modules in [2, 4, 8, 16], not 5"),
    # what the grid sets per cell, named by its flag
    (["--option", "out=/tmp/x"], "out is each cell's run directory (OUT/cells/NAME), set by --out; use that instead."),
    (["--option", "seed=1"], "seed is an axis of the grid, set by --seeds; use that instead."),
    (["--option", "local-loss=ce"], "local_loss is an axis of the grid, set by --local-losses"),
    (["--option", "foo=1"], "--option: unknown key 'foo'; valid keys are model, method"),
])
def test_bad_values_are_refused_before_anything_trains(tmp_path, capsys, flags, words):
    out = tmp_path / "acc"
    assert main(["bench", "accuracy", *GRID, "--methods", "greedy,contsup", "--contexts", "E", *flags,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not out.exists()


def test_what_the_grid_sets_is_refused_from_a_config_file_or_recipe_naming_where_to_set_it(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    for key, words in (("model: resnet20", "model is an axis of the grid, set by --models; drop it from the file."),
                       ("out: runs/x", "out is each cell's run directory (OUT/cells/NAME), set by --out; drop it")):
        recipe.write_text(key + "\n")
        assert main(["bench", "accuracy", *GRID, "--config", str(recipe), "--out", str(tmp_path / "acc")]) == 2
        assert f"--config {recipe}: {words}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="recipe: out is set by run_accuracy's out"):
        AccuracyGrid(recipe={**RECIPE, "out": "runs/x"})
    with pytest.raises(ValueError, match="recipe: seed is set by the grid's seeds, not by the recipe"):
        AccuracyGrid(recipe={**RECIPE, "seed": 1})


def test_a_recipe_option_goes_to_the_cells_that_use_it_and_rows_carry_resolved_options(tmp_path):
    recipe = {**RECIPE, "aux_head": "1c2f"}
    grid = AccuracyGrid(models=("resnet20",), methods=("greedy", "contsup", "infopro"), num_modules=(2,), seeds=(0,),
                        recipe=recipe)
    cells = {cell.name: (cell, config) for cell, config in resolve_cells(grid, tmp_path / "acc")}
    cell, e2e = cells["resnet20_e2e_k1_s0"]
    assert "aux_head" not in cell.options and e2e.net.aux_head == resolve(RECIPE, method="e2e").net.aux_head
    check_used(e2e, cell.options)  # `locallearn train` with the e2e cell's options: nothing it does not use
    assert {config.net.aux_head for name, (_, config) in cells.items() if "e2e" not in name} == {"1c2f"}
    with pytest.raises(ValueError, match=r"aux_head: no cell of the grid uses it \(in each, it is a local module's"):
        resolve_cells(AccuracyGrid(methods=("e2e",), recipe={"aux_head": "1c2f"}), tmp_path / "acc")
    with pytest.raises(ValueError, match=r"split: no cell of the grid uses it \(in each, it is where the local modules"):
        resolve_cells(AccuracyGrid(methods=("e2e", "checkpoint"), recipe=recipe), tmp_path / "acc")
    # rows and the CSV name the values each cell trains with (its method's defaults resolved), and every option
    # that tells cells apart beyond them (InfoPro's image reconstruction and its λ)
    rows = run_accuracy(grid, tmp_path / "acc", log=None, train=False)["rows"]
    shown = {r["method"]: (r["context"], r["local_loss"], r["aux_head"], r["reconstruct"]) for r in rows}
    assert shown == {"e2e": ("R0", None, None, False), "greedy": ("R0", "ce", "1c2f", False),
                     "contsup": ("R1E", "ce", "1c2f", False), "infopro": ("R0", "contrast", "1c2f", True)}
    assert {r["method"]: r["lambdas"] is not None for r in rows} == {"e2e": False, "greedy": False, "contsup": False,
                                                                      "infopro": True}
    with open(tmp_path / "acc" / "accuracy.csv") as f:
        table = {r["cell"]: r for r in csv.DictReader(f)}
    assert [table["resnet20_contsup_k2_s0"][k] for k in ("context", "local_loss", "aux_head")] == ["R1E", "ce", "1c2f"]


def test_ctrl_c_in_a_grid_says_to_rerun_the_grid(tmp_path, capsys, monkeypatch):
    cell_log = accuracy._cell_log

    def interrupting(run):
        log = cell_log(run)

        def line(text):
            log(text)
            if text.startswith("epoch 1/2"):  # Ctrl-C after the first epoch: the cell stops before its next batch
                os.kill(os.getpid(), signal.SIGINT)

        return line

    monkeypatch.setattr(accuracy, "_cell_log", interrupting)
    out = tmp_path / "acc"
    argv = ["bench", "accuracy", *GRID, "--epochs", "2", "--out", str(out)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "grid cell resnet20_e2e_k1_s0: interrupted in epoch 2: the last good checkpoint " \
        "(epoch 1) is kept in" in err and "to resume the grid (finished cells are skipped" in err, err
    assert "locallearn train" not in err and "rerun `locallearn " in err
    monkeypatch.undo()
    assert main(argv) == 0  # the same command resumes it
    log = RunDir(out / "cells" / "resnet20_e2e_k1_s0").file("train.log").read_text()
    assert log.count("resuming after epoch 1") == 1


def test_a_failing_cell_is_reported_and_the_grid_goes_on(tmp_path, monkeypatch, capsys):
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
    # the command says so in its status: a script or CI sees a grid with failed cells as failed
    argv = ["bench", "accuracy", *GRID, "--methods", "greedy", "--out", str(tmp_path / "cli")]
    assert main(argv) == 1
    assert capsys.readouterr().out.splitlines()[-1].endswith("; 1 cell(s) failed")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_the_machine_lacks_is_refused_before_any_cell(tmp_path, capsys):
    assert main(["bench", "accuracy", *GRID, "--device", "cuda", "--out", str(tmp_path / "acc")]) == 2
    assert capsys.readouterr().err.strip() == ("locallearn: error: device: cuda is not available on this machine; use "
                                               "--device cpu.")
    assert not (tmp_path / "acc").exists()


def test_cells_trained_before_a_default_changed_keep_their_options_and_resume(tmp_path, monkeypatch):
    """A grid rerun into its --out takes each trained cell's stored options where the grid does not set them
    (here a warm-up rate whose default changed since): cells are collected and resumed, not refused."""
    from locallearn.training import config as training_config

    out = tmp_path / "acc"
    grid = [*GRID, "--epochs", "2", "--warmup-epochs", "1"]
    with monkeypatch.context() as earlier:
        earlier.setitem(training_config.OPTIMIZER_DEFAULTS, "sgd",
                        {**training_config.OPTIMIZER_DEFAULTS["sgd"], "warmup_lr": 0.02})
        assert main(["bench", "accuracy", *grid, "--out", str(out)]) == 0
    cell = out / "cells" / "resnet20_greedy_k2_s0"
    (cell / "summary.json").unlink()  # as if stopped after epoch 1
    os.replace(cell / "checkpoint.prev.pt", cell / "checkpoint.pt")
    RunDir(cell).write_metrics(RunDir(cell).read_metrics()[:1])
    assert main(["bench", "accuracy", *grid, "--out", str(out)]) == 0
    assert RunDir(cell).finished and "warmup_lr: 0.02\n" in (cell / "config.yaml").read_text()
    cells = resolve_cells(AccuracyGrid(models=("resnet20",), methods=("e2e", "greedy"), num_modules=(2,), seeds=(0,),
                                       recipe={**RECIPE, "epochs": 2, "warmup_epochs": 1}), out)
    assert [config.optim.warmup_lr for _, config in cells] == [0.02, 0.02]  # rows describe the runs they report


def test_another_optimizer_by_option_over_a_config_file_takes_its_own_settings(tmp_path):
    """bench accuracy lays --option over --config as train lays its flags: AdamW over an SGD file's momentum
    and Nesterov takes AdamW's settings (it was refused: momentum and nesterov apply to sgd)."""
    from locallearn.bench.commands import bench_accuracy

    sgd = tmp_path / "sgd.yaml"
    sgd.write_text("optimizer: sgd\nmomentum: 0.9\nnesterov: true\nlr: 0.2\n")
    out = tmp_path / "acc"
    argv = dict(models="resnet20", methods="greedy", num_modules="2", contexts=None, local_losses=None, seeds="0",
                config=str(sgd), option=["optimizer=adamw"], threads=None, out=out, quiet=True, collect=True,
                **{k: v for k, v in RECIPE.items() if k != "split"}, split="uniform")
    assert bench_accuracy(**argv) == 0  # collected, nothing trained: the cells are "not run"
    data = json.loads((out / "accuracy.json").read_text())
    assert [r["status"] for r in data["rows"]] == ["not run", "not run"]
    recipe = data["meta"]["grid"]["recipe"]
    assert recipe["optimizer"] == "adamw" and not {"momentum", "nesterov", "lr"} & set(recipe)


def test_a_rerun_that_no_longer_gives_an_option_is_refused(tmp_path, capsys):
    """A cell keeps stored values only for options the grid never gave it: a rerun without the --lr the cells
    were trained with is another recipe, refused (not a mix of lr 0.05 and 0.1 rows); a cell without its
    record (an earlier release's) is compared option by option."""
    out = tmp_path / "acc"
    assert main(["bench", "accuracy", *GRID, "--lr", "0.05", "--out", str(out)]) == 0
    assert json.loads((out / "cells" / "resnet20_greedy_k2_s0" / accuracy.CELL_REQUEST).read_text())["options"]["lr"] == 0.05
    capsys.readouterr()
    assert main(["bench", "accuracy", *GRID, "--seeds", "0,1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a run with other options (lr (0.05 → 0.1))" in err and err.count("\n") == 1
    assert main(["bench", "accuracy", *GRID, "--lr", "0.05", "--out", str(out)]) == 0  # the same recipe: collected
    for cell in (out / "cells").iterdir():
        (cell / accuracy.CELL_REQUEST).unlink()
    assert main(["bench", "accuracy", *GRID, "--lr", "0.05", "--out", str(out)]) == 0
    assert main(["bench", "accuracy", *GRID, "--out", str(out)]) == 2


def test_a_preset_gives_its_recipe_and_the_grid_its_axes(tmp_path, capsys):
    out = tmp_path / "acc"
    argv = ["bench", "accuracy", "--config", "quickstart/resnet32_digits_k4_R1E", "--models", "resnet20", "--methods",
            "greedy", "--num-modules", "2", "--seeds", "0", "--epochs", "1", "--limit-train", "64", "--limit-test", "32",
            "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert ("bench accuracy: the recipe of preset quickstart/resnet32_digits_k4_R1E; its model, method, num_modules, "
            "split, aux_head, local_loss, reconstruct, context, seed are set by the grid") in said
    cell = yaml.safe_load((out / "cells" / "resnet20_greedy_k2_s0" / "config.yaml").read_text())
    assert cell["net"]["aux_head"] == "linear" and cell["net"]["context"] == "R0"  # greedy's own, not ContSup's
    assert cell["optim"]["batch_size"] == 64 and cell["optim"]["epochs"] == 1  # the preset's, and the flag over it
    # a file of one's own is the recipe as written: an axis in it is refused
    mine = tmp_path / "mine.yaml"
    mine.write_text("model: resnet20\nepochs: 1\n")
    assert main([*argv[:2], "--config", str(mine), *argv[4:]]) == 2
    assert "model is an axis of the grid, set by --models; drop it from the file" in capsys.readouterr().err


def test_a_grid_finds_its_cells_by_what_they_train_not_how_the_axes_were_spelled(tmp_path, capsys, keep_threads):
    """A grid naming an axis at the method's own value (--local-losses ce for greedy) is the grid that leaves it
    out: the same cells, found, not trained again; a cell named the earlier releases' way is found too. And what
    keeps a grid's table honest: where each configuration was cut, one writer per --out, and no cell resumed on
    other torch threads than its epochs trained on."""
    out = tmp_path / "acc"
    assert main(["bench", "accuracy", *GRID, "--out", str(out)]) == 0
    cells = out / "cells"
    assert sorted(p.name for p in cells.iterdir()) == ["resnet20_e2e_k1_s0", "resnet20_greedy_k2_s0"]
    trained = (cells / "resnet20_greedy_k2_s0" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["bench", "accuracy", *GRID, "--local-losses", "ce", "--out", str(out)]) == 0
    assert sorted(p.name for p in cells.iterdir()) == ["resnet20_e2e_k1_s0", "resnet20_greedy_k2_s0"]
    assert (cells / "resnet20_greedy_k2_s0" / "checkpoint.pt").stat().st_mtime_ns == trained
    (cells / "resnet20_greedy_k2_s0").rename(cells / "resnet20_greedy_ce_k2_s0")  # an earlier release's name
    assert main(["bench", "accuracy", *GRID, "--out", str(out)]) == 0
    rows = json.loads((out / "accuracy.json").read_text())["rows"]
    assert rows[1]["run_dir"] == str(cells / "resnet20_greedy_ce_k2_s0") and rows[1]["status"] == "ok"
    assert sorted(p.name for p in cells.iterdir()) == ["resnet20_e2e_k1_s0", "resnet20_greedy_ce_k2_s0"]
    # where each configuration was cut: in the rows and the table
    assert rows[1]["split"] == "uniform" and rows[1]["cuts"] and rows[0].get("split") is None  # K = 1: no split
    md = (out / "accuracy.md").read_text()
    cuts = " ".join(f"({','.join(map(str, c))})" for c in rows[1]["cuts"])
    assert "### Where each configuration was cut" in md and f"| resnet20 | 2 | greedy ce linear | uniform | {cuts} |" in md
    # one process writes a grid's table: a second one into the same --out is refused before it trains
    capsys.readouterr()
    with RunDir(out).lock():
        assert main(["bench", "accuracy", *GRID, "--out", str(out)]) == 2
    assert f"{out} is being written by another locallearn process (pid {os.getpid()})" in capsys.readouterr().err
    # a cell part-trained on these threads is not resumed on others (it would be of two thread counts)
    (cells / "resnet20_greedy_ce_k2_s0" / "summary.json").unlink()
    assert main(["bench", "accuracy", *GRID, "--threads", str(keep_threads + 1), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"grid cell resnet20_greedy_k2_s0: its epoch 1 trained on {keep_threads} torch " \
        f"thread" in err and f"this command runs {keep_threads + 1}" in err and f"--threads {keep_threads}," in err
    torch.set_num_threads(keep_threads)
    assert main(["bench", "accuracy", *GRID, "--threads", str(keep_threads), "--out", str(out)]) == 0
    assert RunDir(cells / "resnet20_greedy_ce_k2_s0").finished


def test_an_e2e_cell_an_earlier_release_gave_a_split_is_still_this_grids(tmp_path, capsys):
    """A split does nothing at K = 1: the grid no longer gives one to its e2e cell (``locallearn train`` refuses
    --split there), and an e2e cell an earlier release trained with the grid's --split is no other run for it."""
    from locallearn.training.fit import fit

    out = tmp_path / "acc"
    e2e = out / "cells" / "resnet20_e2e_k1_s0"
    options = {**RECIPE, "model": "resnet20", "method": "e2e", "num_modules": 1, "seed": 0}  # as the grid gave it
    fit(resolve({**options, "out": str(e2e)}), log=lambda line: None)
    (e2e / accuracy.CELL_REQUEST).write_text(json.dumps({"options": options}))
    trained = (e2e / "checkpoint.pt").stat().st_mtime_ns
    assert main(["bench", "accuracy", *GRID, "--split", "auto", "--out", str(out)]) == 0
    assert (e2e / "checkpoint.pt").stat().st_mtime_ns == trained
    rows = json.loads((out / "accuracy.json").read_text())["rows"]
    assert [(r["cell"], r["status"], r.get("split")) for r in rows] == [
        ("resnet20_e2e_k1_s0", "ok", None), ("resnet20_greedy_k2_s0", "ok", "auto")]
    assert "e2e, split" not in (out / "accuracy.md").read_text()
    assert main(["train", "--method", "e2e", "--split", "uniform", "--out", str(tmp_path / "x")]) == 2
    assert "split: --split is where the local modules are cut, and this run trains one module" in capsys.readouterr().err


@pytest.mark.parametrize("before, now", [
    (dict(contexts=("R0", "R1E")), dict(contexts=("R0", "R1E"), local_losses=("ce",))),
    (dict(local_losses=("ce",)), dict(contexts=("R0", "R1E"))),
    (dict(contexts=("R1E",), local_losses=("ce",)), dict()),
])
def test_a_cell_named_by_an_earlier_release_is_found_whichever_axes_it_named(tmp_path, before, now):
    """Earlier releases named an axis whenever the grid gave one: a grid of today finds such a cell whichever of
    its axes at the method's own value that name carries."""
    grid = dict(methods=("contsup",), num_modules=(4,), seeds=(0,))
    for cell in AccuracyGrid(**grid, **before).cells():
        (tmp_path / "cells" / accuracy._cell_name(cell.options, defaults=True)).mkdir(parents=True)
    cell = next(c for c in AccuracyGrid(**grid, **now).cells() if c.name == "resnet32_contsup_k4_s0")
    found = accuracy._cell_dir(cell, tmp_path)
    assert found.is_dir() and found.name != cell.name, sorted(p.name for p in (tmp_path / "cells").iterdir())
