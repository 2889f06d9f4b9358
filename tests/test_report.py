"""`locallearn report`: run directories → a markdown table (method × K, mean ± std over seeds of one
configuration) and a PNG of error against K, written under runs/report/ unless told otherwise."""

from __future__ import annotations

import shutil
import statistics

from matplotlib.container import ErrorbarContainer

from locallearn.cli import main
from locallearn.training import RunDir, resolve, write_report
from locallearn.training.config import dump_yaml
from locallearn.training.report import curves_figure, error_figure, group_runs, load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_image_folder(root):
    """A two-class image folder (train/ and test/), for runs whose dataset is an image folder."""
    from PIL import Image

    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / name / "0.png")
    return root


def fake_run(path, *, accs, finished=True, threads=None, heads=None, test_images=None, **options):
    """A run directory as `locallearn train` leaves it, with the given test accuracy per epoch (and, with
    ``heads``, each module's head training accuracy at every epoch)."""
    options = {"model": "resnet32", "dataset": "cifar10", "epochs": len(accs) if finished else len(accs) + 2, **options}
    cfg = resolve(out=str(path), **options)
    run = RunDir(path)
    run.write_config(dump_yaml(cfg.to_dict()))
    history = [
        {"epoch": e, "lr": 0.1, "train_loss": 1.0, "test_acc": acc, "test_loss": 0.5, "epoch_time_s": 11.0,
         "train_time_s": 10.0, "images_per_s": 500.0, "peak_memory_mb": 100.0 * cfg.net.num_modules ** -0.5,
         "peak_memory_kind": "saved_tensors", **({"torch_threads": threads} if threads else {}),
         **({"test_images": test_images} if test_images else {}),
         **{f"train_acc/{k}": a for k, a in enumerate(heads or [])}}
        for e, acc in enumerate(accs, start=1)
    ]
    run.write_metrics(history)
    if finished:
        run.write_summary({"test_acc": accs[-1]})
    return path


def make_runs(root):
    return [
        fake_run(root / "e2e", accs=[0.90, 0.93], method="e2e"),
        fake_run(root / "k2", accs=[0.88, 0.92], method="contsup", num_modules=2, context="R1E"),
        fake_run(root / "k4", accs=[0.85, 0.91], method="contsup", num_modules=4, context="R1E"),
        fake_run(root / "k4b", accs=[0.86, 0.89], method="contsup", num_modules=4, context="R1E", seed=1),
        fake_run(root / "k4i", accs=[0.84, 0.83], method="infopro", num_modules=4, test_images=10000),
        fake_run(root / "k8i", accs=[0.70], method="infopro", num_modules=8, finished=False, epochs=2),
    ]


def table_rows(markdown):
    """The rows of the first (method × K) table."""
    lines = markdown.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| method | K=")))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_report_table_and_plot(tmp_path):
    report = write_report(make_runs(tmp_path), out=tmp_path / "report")
    markdown = report.markdown
    assert report.markdown_path.read_text() == markdown and report.plot_path.read_bytes().startswith(PNG_MAGIC)
    assert report.warnings == []
    lines = markdown.splitlines()
    assert "## Test error (%) at the final epoch — resnet32, cifar10" in lines
    assert "| method | K=1 | K=2 | K=4 | K=8 |" in lines
    # the two seeds of one configuration: final-epoch errors 9 and 11 → 10.00 ± 1.41 (sample std)
    assert "| contsup R1E ce |  | 8.00 (n=1) | 10.00 ± 1.41 (n=2) |  |" in lines
    assert "| e2e | 7.00 (n=1) |  |  |  |" in lines
    assert "| infopro contrast rec |  |  | 17.00 (n=1) | 30.00 (n=1)* |" in lines  # final (not best) epoch; * unfinished
    run_row = next(line for line in lines if line.startswith(f"| {tmp_path / 'k4i'} |"))
    # best epoch in a labelled column; the test images of the epoch reported
    assert "| 4 | 0 | 2/2 | 17.00 | 10000 | 16.00 | 50.0 (saved_tensors) | 20 s | 500 |" in run_row
    e2e_row = next(line for line in lines if line.startswith(f"| {tmp_path / 'e2e'} |"))
    assert "| 7.00 | – | 7.00 |" in e2e_row  # a run of an earlier release records no count
    assert any(line.startswith("³ the test images of the epoch reported") for line in lines)
    assert sum(line.startswith(f"| {tmp_path}") for line in lines) == 6  # every run in the Runs table
    assert any("best epoch selected on the test set" in line for line in lines)
    assert "![test error against K](report.png)" in lines


def test_runs_of_other_epochs_are_not_averaged(tmp_path, capsys):
    runs = [
        fake_run(tmp_path / "e8", accs=[0.5] * 7 + [0.60], method="contsup", num_modules=4, context="R1E"),
        fake_run(tmp_path / "e1", accs=[0.30], method="contsup", num_modules=4, context="R1E"),
    ]
    report = write_report(runs, out=tmp_path / "report")
    assert table_rows(report.markdown) == [
        "| contsup R1E ce, epochs=1 | 70.00 (n=1) |",
        "| contsup R1E ce, epochs=8 | 40.00 (n=1) |",
    ]
    assert report.warnings == [
        "report: contsup R1E ce runs differ in epochs (8 vs 1) beside their method and K; shown as separate rows"
    ]
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "cli")]) == 0
    err = capsys.readouterr().err
    assert "report: contsup R1E ce runs differ in epochs (8 vs 1)" in err
    assert "(n=2)" not in report.markdown


def test_a_run_of_an_earlier_release_averages_with_runs_that_record_an_option_added_since(tmp_path):
    """Its config.yaml lacks the option (test_fraction, default None): the same configuration, not a group whose
    row would share a label with another and hide it."""
    import yaml

    runs = [fake_run(tmp_path / f"s{seed}", accs=[acc], method="contsup", num_modules=4, seed=seed)
            for seed, acc in ((0, 0.9), (1, 0.8), (2, 0.7))]
    config = yaml.safe_load((runs[2] / "config.yaml").read_text())
    del config["data"]["test_fraction"]
    RunDir(runs[2]).write_config(dump_yaml(config))
    for order in (runs, runs[::-1]):
        report = write_report(order, out=tmp_path / "report")
        assert table_rows(report.markdown) == ["| contsup R1E ce | 20.00 ± 10.00 (n=3) |"] and report.warnings == []


def test_runs_tested_on_different_numbers_of_images_are_not_averaged(tmp_path):
    """An image folder that grew between two runs: their test sets differ, which their metrics record (a
    fixed dataset's count follows from its options: not compared, so runs of earlier releases still group)."""
    folder = tmp_path / "folder"
    make_image_folder(folder)
    runs = [fake_run(tmp_path / f"s{seed}", accs=[acc], method="contsup", num_modules=4, seed=seed,
                     dataset="imagefolder", data_dir=str(folder), model="resnet20", split="uniform")
            for seed, acc in ((0, 0.9), (1, 0.8), (2, 0.7))]
    for run, images in zip(runs, (8, 8, 11)):
        history = RunDir(run).read_metrics()
        RunDir(run).write_metrics([{**record, "test_images": images} for record in history])
    report = write_report(runs, out=tmp_path / "report")
    assert table_rows(report.markdown) == ["| contsup R1E ce uniform, test_images=8 | 15.00 ± 7.07 (n=2) |",
                                           "| contsup R1E ce uniform, test_images=11 | 30.00 (n=1) |"]
    RunDir(runs[2]).write_metrics([{k: v for k, v in r.items() if k != "test_images"}  # an earlier release's:
                                   for r in RunDir(runs[2]).read_metrics()])  # its count unknown, none compared
    assert table_rows(write_report(runs, out=tmp_path / "report").markdown) == [
        "| contsup R1E ce uniform | 20.00 ± 10.00 (n=3) |"]
    cifar = [fake_run(tmp_path / f"c{seed}", accs=[0.9], method="contsup", num_modules=4, seed=seed) for seed in (0, 1)]
    RunDir(cifar[0]).write_metrics([{**r, "test_images": 10000} for r in RunDir(cifar[0]).read_metrics()])
    assert table_rows(write_report(cifar, out=tmp_path / "report").markdown) == ["| contsup R1E ce | 10.00 ± 0.00 (n=2) |"]
    # a folder's runs beside a fixed dataset's: the folder's count is not compared with the others' absence
    mixed = write_report([runs[0], runs[1], cifar[1]], out=tmp_path / "report")
    assert not any("test_images" in warning for warning in mixed.warnings), mixed.warnings


def test_runs_tested_on_as_many_but_other_images_are_not_averaged(tmp_path):
    """An image replaced in a folder between two runs keeps the count; the fingerprint of the test images
    (``test_data``) tells them apart, where runs record it (an earlier release's did not: none compared)."""
    folder = tmp_path / "folder"
    make_image_folder(folder)
    runs = [fake_run(tmp_path / f"s{seed}", accs=[acc], method="contsup", num_modules=4, seed=seed,
                     dataset="imagefolder", data_dir=str(folder), model="resnet20", split="uniform")
            for seed, acc in ((0, 0.9), (1, 0.8), (2, 0.7))]
    for run, data in zip(runs, ("aaaa000011112222", "aaaa000011112222", "bbbb000011112222")):
        history = RunDir(run).read_metrics()
        RunDir(run).write_metrics([{**record, "test_images": 8, "test_data": data} for record in history])
    report = write_report(runs, out=tmp_path / "report")
    assert table_rows(report.markdown) == ["| contsup R1E ce uniform, test_data=aaaa000011112222 | 15.00 ± 7.07 (n=2) |",
                                           "| contsup R1E ce uniform, test_data=bbbb000011112222 | 30.00 (n=1) |"]
    assert any("test_data (aaaa000011112222 vs bbbb000011112222)" in warning for warning in report.warnings)
    RunDir(runs[2]).write_metrics([{k: v for k, v in r.items() if k != "test_data"}  # an earlier release's
                                   for r in RunDir(runs[2]).read_metrics()])
    assert table_rows(write_report(runs, out=tmp_path / "report").markdown) == [
        "| contsup R1E ce uniform | 20.00 ± 10.00 (n=3) |"]


def test_runs_trained_on_other_images_are_not_averaged(tmp_path):
    """A run resumed on a folder whose training images changed since (or started on another copy of it) was
    averaged with the runs it does not repeat, and called a repeat of one of the same seed; the training images
    of every epoch (``train_images``, ``train_data``) now tell them apart."""
    folder = tmp_path / "folder"
    make_image_folder(folder)
    runs = [fake_run(tmp_path / f"s{seed}", accs=[0.5, acc], method="contsup", num_modules=4, seed=seed,
                     dataset="imagefolder", data_dir=str(folder), model="resnet20", split="uniform")
            for seed, acc in ((0, 0.9), (1, 0.8), (2, 0.7))]
    trained = (["aaaa000011112222"] * 2, ["aaaa000011112222"] * 2, ["aaaa000011112222", "cccc000011112222"])
    for run, data in zip(runs, trained):
        history = RunDir(run).read_metrics()
        RunDir(run).write_metrics([{**record, "train_images": 12, "train_data": d, "test_images": 8,
                                    "test_data": "bbbb000011112222"} for record, d in zip(history, data)])
    report = write_report(runs, out=tmp_path / "report")
    assert table_rows(report.markdown) == [
        "| contsup R1E ce uniform, train_data=aaaa000011112222 | 15.00 ± 7.07 (n=2) |",
        "| contsup R1E ce uniform, train_data=aaaa000011112222→cccc000011112222 | 30.00 (n=1) |"]


def test_labels_name_only_the_difference(tmp_path):
    """Another dataset is named once, without the classes and statistics it implies; groups at other K
    take the same label, so each row stays one line across K."""
    runs = [
        fake_run(tmp_path / "a", accs=[0.8], method="contsup", num_modules=4, context="R1E", lr=0.05),
        fake_run(tmp_path / "b", accs=[0.7], method="contsup", num_modules=4, context="R1E"),
        fake_run(tmp_path / "c", accs=[0.6], method="contsup", num_modules=2, context="R1E"),
        fake_run(tmp_path / "d", accs=[0.9], method="e2e"),
    ]
    table = group_runs([load_run(p) for p in runs])
    assert list(table.rows) == ["e2e", "contsup R1E ce, lr=0.05", "contsup R1E ce, lr=0.1"]
    assert sorted(table.rows["contsup R1E ce, lr=0.1"]) == [2, 4]
    assert table.warnings == [
        "report: contsup R1E ce runs differ in lr (0.05 vs 0.1) beside their method and K; shown as separate rows"
    ]
    other = fake_run(tmp_path / "e", accs=[0.5], method="contsup", num_modules=4, context="R1E", dataset="cifar100")
    table = group_runs([load_run(p) for p in (runs[1], other)])
    assert list(table.rows) == ["resnet32 cifar10: contsup R1E ce", "resnet32 cifar100: contsup R1E ce"]
    assert table.warnings == []  # the rows' prefixes say the dataset
    assert table.setting == "resnet32, cifar10 + cifar100"


def test_seeds_are_averaged_with_sample_std(tmp_path):
    accs = [0.80, 0.83, 0.87]
    runs = [fake_run(tmp_path / f"s{seed}", accs=[acc], method="contsup", num_modules=2, context="R1E", seed=seed,
                     device="cpu" if seed else "auto", data_dir=f"data{seed}")  # where it ran: still one group
            for seed, acc in enumerate(accs)]
    table = group_runs([load_run(p) for p in runs])
    (group,) = table.groups
    errors = [100 * (1 - a) for a in accs]
    assert group.n == 3
    assert abs(group.mean - statistics.mean(errors)) < 1e-9 and abs(group.std - statistics.stdev(errors)) < 1e-9
    assert group.cell() == f"{statistics.mean(errors):.2f} ± {statistics.stdev(errors):.2f} (n=3)" == "16.67 ± 3.51 (n=3)"
    assert table.warnings == []


def test_a_repeated_seed_is_a_repeat_not_a_seed(tmp_path):
    """Two runs of the same options and seed would show a spread of zero over "seeds": the second is left
    out of the statistics, and the report says which and why."""
    runs = [fake_run(tmp_path / name, accs=[acc], method="contsup", num_modules=2, context="R1E", seed=seed)
            for name, acc, seed in (("a", 0.80, 0), ("b", 0.80, 0), ("c", 0.90, 1))]
    table = group_runs([load_run(p) for p in runs])
    (group,) = table.groups
    assert group.n == 2 and [r.path.name for r in group.runs] == ["a", "c"]
    assert table.warnings == [f"report: {tmp_path / 'b'} repeats {tmp_path / 'a'} (the same options and seed 0); "
                              "left out, so that mean ± std are over distinct seeds"]


def test_runs_on_other_thread_counts_are_not_averaged(tmp_path):
    """Float sums, and so results, depend on the CPU threads: seeds at 1 and 2 threads are two rows, said so."""
    runs = [fake_run(tmp_path / name, accs=[acc], method="greedy", num_modules=2, seed=seed, threads=threads)
            for name, acc, seed, threads in (("t1s0", 0.80, 0, 1), ("t1s1", 0.82, 1, 1), ("t2s0", 0.90, 0, 2))]
    table = group_runs([load_run(p) for p in runs])
    assert sorted((g.label, g.n) for g in table.groups) == [("greedy ce, torch_threads=1", 2),
                                                            ("greedy ce, torch_threads=2", 1)]
    assert table.warnings == ["report: greedy ce runs differ in torch_threads (1 vs 2) beside their method and K; "
                              "shown as separate rows"]
    # a run resumed on other threads is its own configuration too; different rows on other threads are said
    resumed = fake_run(tmp_path / "mixed", accs=[0.8, 0.81], method="greedy", num_modules=2, threads=1)
    history = RunDir(resumed).read_metrics()
    history[1]["torch_threads"] = 2
    RunDir(resumed).write_metrics(history)
    assert load_run(resumed).config["torch_threads"] == "1/2"
    e2e = fake_run(tmp_path / "e2e", accs=[0.9], method="e2e", threads=2)
    table = group_runs([load_run(p) for p in (runs[0], e2e)])
    assert table.warnings == ["report: the rows were not trained alike: they differ in torch_threads (1 vs 2); "
                              "compare them with care"]


def test_plot_error_bars_and_e2e_reference(tmp_path):
    runs = make_runs(tmp_path) + [fake_run(tmp_path / "e2e_b", accs=[0.90, 0.95], method="e2e", seed=1)]
    table = group_runs([load_run(p) for p in runs])
    fig = error_figure(table)
    (ax,) = fig.axes
    assert "resnet32" in ax.get_title() and "cifar10" in ax.get_title()
    assert ax.get_xlabel() and ax.get_ylabel()
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1  # contsup at K=4 has two seeds; every other point is a single run
    (segments,) = bars[0].lines[2]
    ((x0, y0), (x1, y1)) = segments.get_segments()[0]
    assert x0 == x1 == 4 and abs((y1 - y0) / 2 - statistics.stdev([9.0, 11.0])) < 1e-9
    # e2e (K = 1 only): a horizontal line at its mean, and a ± std band (errors 7 and 5 → 6 ± 1.41)
    e2e = next(line for line in ax.get_lines() if line.get_label().startswith("e2e"))
    assert list(e2e.get_ydata()) == [6.0, 6.0]
    assert len(ax.patches) == 1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]  # (under the axes, not over the points)
    assert legend == ["e2e (K=1, n=2)", "contsup R1E ce", "infopro contrast rec"]
    report = write_report(runs, out=tmp_path / "report")
    assert report.plot_path.read_bytes().startswith(PNG_MAGIC)
    assert "| e2e | 6.00 ± 1.41 (n=2) |  |  |  |" in report.markdown.splitlines()


def test_report_command_writes_under_runs(tmp_path, capsys, monkeypatch):
    runs = make_runs(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    assert main(["report", *map(str, runs)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("## Test error (%)") and "![test error against K](report.png)" in captured.out
    assert (tmp_path / "runs" / "report" / "report.md").read_text() == captured.out
    assert (tmp_path / "runs" / "report" / "report.png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing in the current directory
    # `locallearn report runs/*` again: the report's own folder is not a run, and is skipped
    assert main(["report", *map(str, sorted((tmp_path / "runs").iterdir()))]) == 0
    assert capsys.readouterr().out == captured.out
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "nothing does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "empty holds no run (no config.yaml)" in capsys.readouterr().err
    # a file beside the runs (notes) is left out, said, and the runs are reported
    (tmp_path / "runs" / "notes.txt").write_text("seed 1 was on a busy machine")
    assert main(["report", *map(str, sorted((tmp_path / "runs").iterdir()))]) == 0
    assert f"> report: {tmp_path / 'runs' / 'notes.txt'} is a file, not a run directory; left out" in capsys.readouterr().out


def test_a_run_without_a_finished_epoch_is_left_out_with_a_warning(tmp_path, capsys):
    """`locallearn report runs/*` goes on past a run stopped in its first epoch, saying which; a finished run
    whose metrics.jsonl is gone is an error, and a report of nothing but unstarted runs too. A folder that
    holds no run is left out the same way."""
    done = fake_run(tmp_path / "done", accs=[0.9], method="e2e")
    started = fake_run(tmp_path / "started", accs=[0.5], method="contsup", num_modules=2, finished=False)
    (started / "metrics.jsonl").unlink()
    assert main(["report", str(done), str(started), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert f"report: {started} has no finished epoch yet; left out" in err
    assert main(["report", str(started), "--out", str(tmp_path / "report")]) == 2
    assert f"report: {started} has no finished epoch yet; left out: no run to report." in capsys.readouterr().err
    (tmp_path / "bench").mkdir()  # `locallearn report runs/*` where runs/ also holds a benchmark's folder
    assert main(["report", str(done), str(tmp_path / "bench"), "--out", str(tmp_path / "report")]) == 0
    assert f"report: {tmp_path / 'bench'} holds no run (no config.yaml); left out" in capsys.readouterr().err
    (tmp_path / "folder" / "cells").mkdir(parents=True)  # a folder of runs (bench accuracy --out): the runs in it
    shutil.copytree(done, tmp_path / "folder" / "cells" / "done")
    assert main(["report", str(tmp_path / "folder"), "--out", str(tmp_path / "report")]) == 0
    assert f"| {tmp_path / 'folder' / 'cells' / 'done'} |" in capsys.readouterr().out
    assert main(["report", str(started), str(tmp_path / "bench"), "--out", str(tmp_path / "report")]) == 2
    assert "report: none of the 2 directories holds a run with a finished epoch." in capsys.readouterr().err
    (done / "metrics.jsonl").unlink()
    assert main(["report", str(done), "--out", str(tmp_path / "report")]) == 2
    assert "is finished but has no epochs in metrics.jsonl (missing or emptied)" in capsys.readouterr().err


def test_an_unfinished_seed_is_not_averaged_and_rows_of_other_recipes_or_heads_are_said(tmp_path):
    """A run stopped early sits in a row of its own beside its finished seeds (it was in their mean); rows of
    different methods trained on different recipes get a warning (only one method's rows did); a head that is
    not the method's own is in the label."""
    runs = [
        fake_run(tmp_path / "s0", accs=[0.8, 0.9], method="greedy", num_modules=4),
        fake_run(tmp_path / "s1", accs=[0.7], method="greedy", num_modules=4, seed=1, finished=False, epochs=2),
        fake_run(tmp_path / "e2e", accs=[0.9], method="e2e", limit_train=256),
        fake_run(tmp_path / "wide", accs=[0.6, 0.95], method="greedy", num_modules=2, aux_head="1c2f"),
    ]
    table = group_runs([load_run(p) for p in runs])
    assert {label: sorted(cells) for label, cells in table.rows.items()} == {
        "e2e": [1], "greedy ce": [4], "greedy ce (unfinished)": [4], "greedy ce 1c2f head": [2]}
    assert table.rows["greedy ce"][4].cell() == "10.00 (n=1)" and table.rows["greedy ce (unfinished)"][4].cell() == "30.00 (n=1)*"
    assert table.warnings == ["report: the rows were not trained alike: they differ in limit_train (None vs 256), "
                              "epochs (2 vs 1); compare them with care"]


def test_rows_of_other_recipes_are_said_when_one_method_already_names_an_option(tmp_path):
    """Two contsup runs told apart by limit_train name it in their labels; a greedy and a featrecon row, trained on
    other limits and epochs, have labels that do not: the warning still says so (it was dropped once any
    method's labels named the option)."""
    runs = [
        fake_run(tmp_path / "greedy", accs=[0.8], method="greedy", limit_train=600, epochs=3),
        fake_run(tmp_path / "featrecon", accs=[0.9], method="featrecon", limit_train=128),
        fake_run(tmp_path / "c0", accs=[0.9], method="contsup"),
        fake_run(tmp_path / "c1", accs=[0.9], method="contsup", limit_train=256),
    ]
    table = group_runs([load_run(p) for p in runs])
    assert sorted(table.rows) == ["contsup R1E ce, limit_train=256", "contsup R1E ce, limit_train=None",
                                  "featrecon ce linear", "greedy ce"]
    assert table.warnings == [
        "report: contsup R1E ce runs differ in limit_train (None vs 256) beside their method and K; shown as separate rows",
        "report: the rows were not trained alike: they differ in limit_train (600 vs 128 vs None vs 256), epochs "
        "(3 vs 1); compare them with care"]
    # one unlabelled row at a value no labelled row names: said; at a value one names: the labels say it all
    for lr, said in ((0.2, True), (0.1, False)):
        e2e = fake_run(tmp_path / f"e2e{lr}", accs=[0.9], method="e2e", lr=lr)
        table = group_runs([load_run(p) for p in (runs[2], fake_run(tmp_path / f"c{lr}", accs=[0.9],
                                                                        method="contsup", lr=0.05), e2e)])
        assert any("not trained alike: they differ in lr (0.1 vs 0.05" in w for w in table.warnings) == said


def test_runs_on_two_image_folders_are_two_datasets_not_two_seeds(tmp_path):
    from PIL import Image

    for folder, n in (("imgs", 2), ("imgs2", 3)):
        for split in ("train", "test"):
            for name in ("cat", "dog"):
                (tmp_path / folder / split / name).mkdir(parents=True)
                for i in range(n):
                    Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / folder / split / name / f"{i}.png")
    options = dict(method="greedy", num_modules=2, dataset="imagefolder", split="uniform", model="resnet20")
    runs = [fake_run(tmp_path / "a", accs=[0.5], seed=0, data_dir=str(tmp_path / "imgs"), **options),
            fake_run(tmp_path / "b", accs=[0.7], seed=1, data_dir=str(tmp_path / "imgs2"), **options),
            fake_run(tmp_path / "c", accs=[0.6], seed=1, data_dir=str(tmp_path / "imgs"), **options)]
    table = group_runs([load_run(p) for p in runs])
    assert {g.label: g.n for g in table.groups} == {
        f"resnet20 imagefolder {tmp_path / 'imgs'}: greedy ce uniform": 2,
        f"resnet20 imagefolder {tmp_path / 'imgs2'}: greedy ce uniform": 1}


def test_curves_average_each_epoch_and_each_modules_head_over_seeds(tmp_path):
    runs = [
        fake_run(tmp_path / "a", accs=[0.5, 0.8, 0.9], method="contsup", num_modules=2, heads=[0.6, 0.9]),
        fake_run(tmp_path / "b", accs=[0.7, 0.8, 0.7], method="contsup", num_modules=2, heads=[0.4, 0.7], seed=1),
        fake_run(tmp_path / "c", accs=[0.6], method="contsup", num_modules=2, heads=[0.5, 0.5], seed=2, finished=False),
        fake_run(tmp_path / "e2e", accs=[0.9, 0.95], method="e2e", heads=[0.99]),
        fake_run(tmp_path / "i", accs=[0.9, 0.95], method="infopro", num_modules=2),  # contrastive: no head accuracy
    ]
    table = group_runs([load_run(r) for r in runs])
    by_label = {(g.label, g.n): g for g in table.groups}
    two = by_label["contsup R1E ce", 2]
    assert [(e, round(err, 6)) for e, err in two.error_by_epoch()] == [(1, 40.0), (2, 20.0), (3, 20.0)]
    assert [round(a, 6) for a in two.module_accuracy()] == [50.0, 80.0]
    assert by_label["contsup R1E ce (unfinished)", 1].error_by_epoch() == [(1, 40.0)]
    assert by_label["e2e", 1].module_accuracy() is None and by_label["infopro contrast rec", 1].module_accuracy() is None
    figure = curves_figure(table)
    errors, heads = figure.axes[:2]
    assert len(errors.get_lines()) == 4 and len(heads.get_lines()) == 2  # every group; the local ones with heads
    assert list(heads.get_lines()[0].get_xdata()) == [0.5, 1.0]  # module k of K at k/K
    report = write_report(runs, out=tmp_path / "report")
    assert report.curves_path == tmp_path / "report" / "curves.png"
    assert report.curves_path.read_bytes().startswith(PNG_MAGIC)
    assert "![test error against epoch; each module's head](curves.png)" in report.markdown.splitlines()


def test_rows_of_other_models_are_not_told_apart_by_what_differs_between_models_nor_by_split_at_k1(tmp_path):
    """A grid over two models: each e2e row is prefixed by its model, and the split (which one module does not
    use) is neither in its label nor a reason to keep two e2e runs of one model apart."""
    runs = [fake_run(tmp_path / "r20", accs=[0.9], method="e2e", model="resnet20", split="auto"),
            fake_run(tmp_path / "r32", accs=[0.8], method="e2e", model="resnet32", split="paper"),
            fake_run(tmp_path / "r20g", accs=[0.7], method="greedy", num_modules=2, model="resnet20", split="auto"),
            fake_run(tmp_path / "r32g", accs=[0.6], method="greedy", num_modules=2, model="resnet32")]
    table = group_runs([load_run(p) for p in runs])
    assert list(table.rows) == ["resnet20 cifar10: e2e", "resnet32 cifar10: e2e", "resnet20 cifar10: greedy ce auto",
                                "resnet32 cifar10: greedy ce"]
    assert table.warnings == []
    seeds = [fake_run(tmp_path / f"s{seed}", accs=[acc], method="e2e", split=split, seed=seed)
             for seed, acc, split in ((0, 0.9, "auto"), (1, 0.8, "paper"))]
    table = group_runs([load_run(p) for p in seeds])
    assert [(g.label, g.n) for g in table.groups] == [("e2e", 2)] and table.warnings == []


def test_a_damaged_run_is_left_out_of_the_report_of_the_others_and_alone_is_an_error(tmp_path, capsys):
    """One tampered summary.json among several runs: the others are reported, the damaged one is named with
    what is wrong (``Report.damaged``, for the exit status); given alone, it is today's one-line error."""
    import json

    runs = make_runs(tmp_path)
    summary = runs[1] / "summary.json"
    summary.write_text(summary.read_text().replace("0.92", "0.99"))  # its checksum no longer matches
    report = write_report(runs, out=tmp_path / "report")
    assert f"| {runs[1]} |" not in report.markdown and f"| {runs[2]} |" in report.markdown
    assert report.damaged == [f"report: {summary} is damaged (its checksum does not match); `locallearn train --out "
                              f"{runs[1]} --resume` writes it again from the checkpoint; left out of this report"]
    assert report.warnings[0] == report.damaged[0] and f"> {report.damaged[0]}" in report.markdown.splitlines()
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "cli")]) == 1  # a run was left out
    assert report.damaged[0] in capsys.readouterr().err
    assert main(["report", str(runs[1]), "--out", str(tmp_path / "cli")]) == 2
    assert capsys.readouterr().err.startswith(f"locallearn: error: report: {summary} is damaged")
    json.loads(summary.read_text())  # (still JSON: only the checksum tells)


def test_runs_deeper_than_a_folder_is_searched_are_said_and_how_to_report_them(tmp_path, capsys):
    """`report DIR` reports the runs one or two levels below DIR; the cells of a `bench accuracy --out` inside
    DIR are three levels down: not reported (the documented depth), but counted, with the folder to give."""
    near = fake_run(tmp_path / "runs" / "e2e", accs=[0.9], method="e2e")
    cells = tmp_path / "runs" / "acc" / "cells"
    for seed, name in enumerate(("a", "b")):
        fake_run(cells / name, accs=[0.8], method="greedy", num_modules=2, seed=seed)
    report = write_report([tmp_path / "runs"], out=tmp_path / "report")
    assert [f"| {near} |" in report.markdown, f"| {cells / 'a'} |" in report.markdown] == [True, False]
    assert report.warnings == [f"report: 2 run directories more than two levels below {tmp_path / 'runs'} left out "
                               "(a folder's runs are those one or two levels down); to report them, give the "
                               f"folder: {tmp_path / 'runs' / 'acc'}"]
    assert f"| {cells / 'b'} |" in write_report([tmp_path / "runs" / "acc"], out=tmp_path / "report").markdown
    shutil.rmtree(near)
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert "holds no run (no config.yaml); left out: no run to report; 2 run directories more than two" in err


def test_the_report_says_where_and_with_what_its_runs_trained(tmp_path):
    """Train time and images/s mean nothing without the device, threads and software: the header gives each
    from the runs' own records (summary.json, else config.yaml's header), one value where all agree, else each
    value with its number of runs; the CPU, which runs do not record, is said to be the report's."""
    import yaml

    from locallearn.provenance import cpu_name

    runs = make_runs(tmp_path)
    for run, threads in zip(runs, (1, 1, 1, 2, 1, 1)):
        RunDir(run).write_metrics([{**r, "torch_threads": threads} for r in RunDir(run).read_metrics()])
    for run, device in zip(runs[:5], ("cpu", "cpu", "cpu", "cuda: NVIDIA H200", "cpu")):
        RunDir(run).write_summary({"test_acc": RunDir(run).read_metrics()[-1]["test_acc"], "device": device,
                                   "versions": {"locallearn": "0.1.0", "torch": "2.13.0", "git": "abc1234"}})
    config = (runs[5] / "config.yaml").read_text()  # unfinished: its config.yaml's header says it
    header = "# Resolved config.\n# locallearn 0.1.0, git def5678, torch 2.12.0, Python 3.11.7, 1 torch thread, now\n"
    RunDir(runs[5]).write_config(header + config)
    assert yaml.safe_load(header + config) == yaml.safe_load(config)
    lines = write_report(runs, out=tmp_path / "report").markdown.splitlines()
    assert lines[2:5] == [
        "- trained on: CPU (5 runs), CUDA: NVIDIA H200 (1 run); torch threads: 1 (5 runs), 2 (1 run)",
        "- software: torch 2.13.0 (5 runs), 2.12.0 (1 run), locallearn revision abc1234 (5 runs), def5678 (1 run)",
        f"- CPU: not recorded by these runs; this report was written on {cpu_name()}, "
        f"{__import__('os').cpu_count()} cores"]
    lines = write_report(runs[:2], out=tmp_path / "report").markdown.splitlines()
    assert lines[2:4] == ["- trained on: CPU; torch threads: 1", "- software: torch 2.13.0, locallearn revision abc1234"]
    for run, cpu in zip(runs[:2], ("Intel Xeon, AVX512", "AMD EPYC, AVX2")):  # summary.json names its CPU
        summary = RunDir(run).read_summary()
        RunDir(run).write_summary({**summary, "cpu": cpu})
    lines = write_report(runs[:2], out=tmp_path / "report").markdown.splitlines()
    assert lines[4] == "- CPU: Intel Xeon, AVX512 (1 run), AMD EPYC, AVX2 (1 run)"


def drawn(fig):
    """The renderer of ``fig`` drawn as it is saved, for the extents of what it holds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_plots_of_many_rows_keep_their_legend_off_the_data_and_their_titles_whole(tmp_path):
    """Rows labelled with long differences (several models, datasets, recipes): the legend is under the axes,
    not over the points, and titles and labels lie inside the figure."""
    runs = [fake_run(tmp_path / f"r{i}", accs=[0.5, 0.6 + i / 100], method=method, num_modules=k, model=model,
                     dataset=dataset, limit_train=limit, heads=[0.5] * k)
            for i, (method, k, model, dataset, limit) in enumerate([
                ("e2e", 1, "resnet20", "digits", 400), ("e2e", 1, "resnet20", "fashion_mnist", 640),
                ("greedy", 2, "resnet20", "digits", 400), ("greedy", 2, "resnet20", "digits", 300),
                ("greedy", 4, "resnet20", "fashion_mnist", 640), ("greedy", 2, "resnet32", "fashion_mnist", 500),
                ("contsup", 4, "resnet32", "digits", 400), ("greedy", 4, "resnet20", "digits", 300)])]
    table = group_runs([load_run(p) for p in runs])
    for fig in (error_figure(table), curves_figure(table)):
        renderer = drawn(fig)
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert all(ax.get_legend() is None for ax in axes) and len(fig.legends) == 1
        legend = fig.legends[0].get_window_extent(renderer)
        assert not any(legend.overlaps(ax.get_window_extent(renderer)) for ax in axes)
        for text in [fig.legends[0].get_window_extent(renderer)] + [
                t.get_window_extent(renderer) for ax in axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label)]:
            assert fig.bbox.x0 <= text.x0 and text.x1 <= fig.bbox.x1 and fig.bbox.y0 <= text.y0 and text.y1 <= fig.bbox.y1
    legend = [t.get_text() for t in error_figure(table).legends[0].get_texts()]
    assert legend[0] == "resnet20 digits: e2e (K=1, n=1)" and len(legend) == len(table.rows)


def bench_row(model, method, k, value, **extra):
    return {"model": model, "method": method, "num_modules": k, "split": "auto" if k > 1 else None, "context": "R0",
            "batch_size": 32, "status": "ok", "peak_activation_bytes_per_sample": value * 2**20, "time_ratio": value,
            **extra}


def test_bench_plots_read_every_value_and_say_where_they_were_measured():
    """Memory on a log axis: labelled ticks enclose every value (e2e's line sat above the top one), and a
    reference line's value is written beside it; the title names the CPU, its cores and the torch threads."""
    from locallearn.bench.report import figure

    rows = [bench_row(model, "e2e", 1, 1.5 * scale) for model, scale in (("resnet20", 1), ("resnet32", 3))]
    rows += [bench_row(model, "greedy", k, v * scale) for model, scale in (("resnet20", 1), ("resnet32", 0.2))
             for k, v in ((2, 0.89), (4, 0.497))]
    meta = {"cpu": "Intel(R) Xeon(R) Processor, AVX512", "cpu_count": 2, "torch_threads": 1, "cuda_device": None,
            "torch": "2.13.0"}
    fig = figure(memory=rows, speed=rows, meta=meta)
    renderer = drawn(fig)
    for ax, model in zip(fig.axes[:2], ("resnet20", "resnet32")):
        values = [r["peak_activation_bytes_per_sample"] / 2**20 for r in rows if r["model"] == model]
        low, high = ax.get_ylim()
        labelled = [t for t, label in zip(ax.get_yticks(), ax.get_yticklabels()) if low <= t <= high and label.get_text()]
        assert min(labelled) <= min(values) and max(values) <= max(labelled), (model, labelled, values)
        assert f"{max(values):.3g}" in [t.get_text() for t in ax.texts]  # e2e's line, its value beside it
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert not legend.overlaps(ax.get_window_extent(renderer)) and fig.bbox.y0 <= legend.y0
    assert "Intel(R) Xeon(R) Processor, AVX512, 2 cores, 1 torch thread" in fig.get_suptitle()
    assert figure(speed=rows).get_suptitle() == ""  # (no meta: nothing said)


def test_every_row_of_a_plot_has_its_own_colour_and_marker():
    """Beyond matplotlib's ten colours (curves of 24 configurations repeated them), tab20's, then markers."""
    from locallearn.training.report import row_styles

    for n in (3, 10, 12, 20, 45):
        styles = row_styles([f"row {i}" for i in range(n)])
        assert len({(str(colour), marker) for colour, marker in styles.values()}) == n
    assert row_styles(["a", "b"]) == {"a": ("C0", "o"), "b": ("C1", "o")}  # a few rows: the colours as before
