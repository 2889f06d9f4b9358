"""Where a classifier errs: `evaluate(..., confusion=True)` against a naive count, the per-class table, the
confusion files, and `locallearn eval --per-class --confusion` on a finished run."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest
import torch
from torch import nn

from locallearn.cli import main
from locallearn.data.specs import get_spec
from locallearn.training.classes import check_confusion_path, class_labels, per_class_table, write_confusion
from locallearn.training.runner import evaluate

TINY = ["--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--limit-train", "64",
        "--limit-test", "50", "--batch-size", "16", "--device", "cpu"]


def test_confusion_counts_every_prediction_once_in_its_true_row():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))  # (N, 3, 2, 2) → (N, 5)
    batches = [(torch.randn(n, 3, 2, 2), torch.randint(0, 5, (n,))) for n in (8, 8, 3)]  # any iterable of batches
    result = evaluate(net, batches, confusion=True)
    want = torch.zeros(5, 5, dtype=torch.int64)
    with torch.no_grad():
        for images, labels in batches:
            for t, p in zip(labels.tolist(), net(images).argmax(dim=1).tolist()):
                want[t, p] += 1
    assert result["confusion"].dtype == torch.int64 and torch.equal(result["confusion"], want)
    assert int(want.trace()) / 19 == result["test_acc"]
    assert "confusion" not in evaluate(net, batches)  # only when asked


def test_per_class_table_names_each_class_its_accuracy_and_its_most_frequent_mistake():
    counts = torch.tensor([[8, 2, 0], [0, 0, 0], [1, 3, 6]])  # class "b" has no test images
    lines = per_class_table(counts, ["a", "b", "cat"]).splitlines()
    assert lines[0].split() == ["class", "images", "accuracy", "most", "often", "taken", "for"]
    assert lines[1].split() == ["a", "10", "80.00%", "b", "(20.00%)"]
    assert lines[2].split() == ["b", "0", "–", "(no", "test", "images)"]
    assert lines[3].split() == ["cat", "10", "60.00%", "b", "(30.00%)"]
    assert per_class_table(torch.tensor([[4, 0], [0, 2]]), ["x", "y"]).splitlines()[1].split() == ["x", "4", "100.00%", "–"]


def test_class_labels_are_the_datasets_names_else_label_numbers():
    assert class_labels(["cat", "dog"], 2) == ["cat", "dog"]
    assert class_labels(None, 3) == ["0", "1", "2"]
    assert class_labels(["cat", "dog"], 4) == ["cat", "dog", "2", "3"]  # a classifier wider than its data
    assert class_labels(list(get_spec("cifar10").class_names), 10)[0] == "airplane"
    assert get_spec("stl10").class_names[7] == "monkey"


def test_confusion_files(tmp_path):
    counts = torch.tensor([[5, 1], [2, 7]])
    write_confusion(tmp_path / "c.csv", counts, ["cat", "dog"], title="t")
    rows = list(csv.reader(io.StringIO((tmp_path / "c.csv").read_text())))
    assert rows == [["true \\ predicted", "cat", "dog"], ["cat", "5", "1"], ["dog", "2", "7"]]
    write_confusion(tmp_path / "c.png", counts, ["price_$1_$2", "dog"], title="runs/$a$")  # no formula parsed
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "afile").write_text("")
    (tmp_path / "d.csv").mkdir()
    for path, words in ((tmp_path / "c.txt", "give a file ending in .csv or .png"),
                        (tmp_path / "d.csv", "is a directory"),
                        (tmp_path / "no" / "c.csv", "does not exist"),
                        (tmp_path / "afile" / "c.csv", "afile is a file, not a folder")):
        with pytest.raises(ValueError, match=words):
            check_confusion_path(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("classes") / "run"
    capture = pytest.MonkeyPatch()
    capture.setattr(sys, "stdout", io.StringIO())
    try:
        assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    finally:
        capture.undo()
    return out


def test_eval_per_class_and_confusion_agree_with_the_runs_accuracy(run, tmp_path, capsys):
    csv_path = tmp_path / "confusion.csv"
    assert main(["eval", str(run), "--device", "cpu", "--per-class", "--confusion", str(csv_path)]) == 0
    said = capsys.readouterr().out.splitlines()
    summary = json.loads((run / "summary.json").read_text())
    assert f"test accuracy {100 * summary['test_acc']:.2f}%" in said[0]
    table = said[1:12]
    assert table[0].startswith("class") and [line.split()[0] for line in table[1:]] == [str(c) for c in range(10)]
    assert said[12] == f"confusion matrix (rows: true class, columns: predicted) written to {csv_path}"
    rows = list(csv.reader(io.StringIO(csv_path.read_text())))[1:]
    counts = torch.tensor([[int(v) for v in row[1:]] for row in rows])
    assert counts.shape == (10, 10) and int(counts.sum()) == 50  # --limit-test 50
    assert int(counts.trace()) / 50 == pytest.approx(summary["test_acc"])
    for line, row in zip(table[1:], counts):  # each class's images and accuracy, as the matrix has them
        assert line.split()[1] == str(int(row.sum()))


def test_eval_refuses_a_confusion_file_it_cannot_write_before_reading_the_data(run, tmp_path, capsys, monkeypatch):
    import locallearn.commands

    monkeypatch.setattr(locallearn.commands, "evaluate_run", lambda *a, **k: pytest.fail("evaluated"))
    assert main(["eval", str(run), "--confusion", str(tmp_path / "c.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("locallearn: error: --confusion") and err.count("\n") == 1 and ".csv or .png" in err


@pytest.mark.parametrize("option, name", [("--confusion", "c.csv"), ("--confusion", "c.png"),
                                          ("--misclassified", "m.csv")])
def test_a_full_disk_names_the_file_and_leaves_no_empty_one(run, tmp_path, capsys, monkeypatch, option, name):
    """A result file is written whole or not at all: a full disk left a 0-byte file and said only
    "[Errno 28] No space left on device"."""
    import errno

    import locallearn.training.rundir as rundir

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "fsync", full)
    path = tmp_path / name
    assert main(["eval", str(run), "--device", "cpu", option, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"locallearn: error: cannot write {path} (the disk may be full or read-only: ") and \
        "No space left on device" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def test_a_result_file_given_as_a_link_is_written_to_its_target_and_stays_a_link(tmp_path):
    from locallearn.training.rundir import write_output

    target = tmp_path / "real.csv"
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    write_output(link, b"new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_report_on_a_full_disk_names_the_file(run, tmp_path, capsys, monkeypatch):
    import errno

    import locallearn.training.rundir as rundir

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "fsync", full)
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"locallearn: error: cannot write {tmp_path / 'rep' / 'report.png'} (the disk may be full")
    assert list((tmp_path / "rep").iterdir()) == []


def test_predictions_are_each_test_images_label_prediction_and_confidence():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    batches = [(torch.randn(n, 3, 2, 2), torch.randint(0, 4, (n,))) for n in (5, 3)]
    result = evaluate(net, batches, predictions=True)
    with torch.no_grad():
        logits = torch.cat([net(x) for x, _ in batches])
    assert torch.equal(result["labels"], torch.cat([y for _, y in batches]))
    assert torch.equal(result["predicted"], logits.argmax(dim=1))
    assert torch.allclose(result["confidence"], logits.softmax(dim=1).max(dim=1).values)


def test_misclassified_rows_are_the_mistakes_most_confident_first(tmp_path):
    from locallearn.training.classes import write_misclassified

    result = {"labels": torch.tensor([0, 1, 1, 0]), "predicted": torch.tensor([1, 1, 0, 1]),
              "confidence": torch.tensor([0.6, 0.9, 0.8, 0.7])}
    assert write_misclassified(tmp_path / "w.csv", result, ["cat", "dog"], ["a.png", "b.png", "c.png", "d.png"]) == 3
    rows = list(csv.reader(io.StringIO((tmp_path / "w.csv").read_text())))
    assert rows == [["index", "file", "class", "predicted", "confidence"], ["2", "c.png", "dog", "cat", "0.8000"],
                    ["3", "d.png", "cat", "dog", "0.7000"], ["0", "a.png", "cat", "dog", "0.6000"]]


def test_eval_lists_an_image_folders_misclassified_files_by_their_own_class(tmp_path, capsys):
    from PIL import Image

    for name, colour in (("red", (220, 20, 20)), ("green", (20, 220, 20)), ("blue", (20, 20, 220))):
        for split, n in (("train", 6), ("test", 5)):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                noise = torch.randint(0, 60, (8, 8, 3), generator=torch.Generator().manual_seed(i)).numpy()
                Image.fromarray((noise + colour).clip(0, 255).astype("uint8")).save(tmp_path / "data" / split / name / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--image-size", "8",
                 "--limit-test", "10", "--model", "resnet20", "--num-modules", "2", "--split", "uniform",
                 "--batch-size", "6", "--epochs", "1", "--device", "cpu", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu", "--misclassified", str(tmp_path / "w.csv")]) == 0
    said = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    rows = list(csv.DictReader(io.StringIO((tmp_path / "w.csv").read_text())))
    assert len(rows) == round(10 * (1 - summary["test_acc"]))  # --limit-test 10: the classes in turn
    assert f"{len(rows)} misclassified test image" in said
    for row in rows:  # each file is the test image it names: its folder is its class
        assert row["file"].startswith(str(tmp_path / "data" / "test")) and row["file"].split("/")[-2] == row["class"]
        assert row["predicted"] != row["class"] and 0 < float(row["confidence"]) <= 1
    assert [float(r["confidence"]) for r in rows] == sorted((float(r["confidence"]) for r in rows), reverse=True)
    from locallearn.training.config import read_run_options, resolve
    from locallearn.training.runner import load_data, split_files

    config = resolve(read_run_options(run / "config.yaml"))
    files, test = split_files(config, train=False), load_data(config, train=False, device=torch.device("cpu"))
    assert len(files) == len(test.labels) == 10  # every test image's file, in the loader's order
    assert [f.split("/")[-2] for f in files] == [test.spec.class_names[c] for c in test.labels.tolist()]
    assert main(["eval", str(run), "--misclassified", str(tmp_path / "w.txt")]) == 2
    assert "give a file ending in .csv" in capsys.readouterr().err
    assert main(["eval", str(run), "--confusion", str(tmp_path / "w.csv"), "--misclassified", str(tmp_path / "w.csv")]) == 2
    assert "--confusion and --misclassified name the same file" in capsys.readouterr().err


def test_cifar100s_names_are_read_from_its_official_meta_file(tmp_path):
    """CIFAR-100 names its 100 classes in cifar-100-python/meta (fine_label_names, Python 2 pickled bytes):
    read from there (not typed from memory; sources disagree on one), and a missing or damaged meta file
    leaves the label numbers rather than refusing the data."""
    import pickle

    from locallearn.data import describe_dataset

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    assert describe_dataset("cifar100", tmp_path).class_names is None  # no meta file
    names = [f"class_{i}".encode() for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": names, b"coarse_label_names": names[:20]},
                                               protocol=2))
    assert describe_dataset("cifar100", tmp_path).class_names == tuple(f"class_{i}" for i in range(100))
    for damaged in (pickle.dumps({b"fine_label_names": names[:99]}, protocol=2), b"\x80\x02not a pickle",
                    pickle.dumps({b"fine_label_names": [b"same"] * 100}, protocol=2)):
        (folder / "meta").write_bytes(damaged)
        assert describe_dataset("cifar100", tmp_path).class_names is None
