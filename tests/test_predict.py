"""`locallearn predict` and `training.predict`: new image files read as the run's test images were read, so a
run's predictions of its own test files are the ones `evaluate` makes of its test split; the run's folder is
not needed; a greyscale run reads images as grey; bad input in one line, unreadable files named."""

from __future__ import annotations

import csv
import dataclasses
import io
import shutil

import numpy as np
import pytest
import torch

from locallearn.cli import main
from locallearn.commands import evaluate_run
from locallearn.data import SOURCES
from locallearn.data.fixtures import write_fake_dataset
from locallearn.data.imagefolder import decode_image
from locallearn.training import load_net, train
from locallearn.training.config import read_run_options, resolve
from locallearn.training.predict import predict
from locallearn.training.runner import evaluate, load_data, split_files

COLOURS = (("blue", (20, 20, 220)), ("green", (20, 220, 20)), ("red", (220, 20, 20)))
TINY = ["--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--batch-size", "6", "--epochs", "1",
        "--device", "cpu"]


def _write_folder(root, n_train=6, n_test=4):
    from PIL import Image

    for name, colour in COLOURS:
        for split, n in (("train", n_train), ("test", n_test)):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                noise = np.random.default_rng(i).integers(0, 60, (9, 11, 3))  # not square: resized and cropped
                Image.fromarray((noise + colour).clip(0, 255).astype("uint8")).save(root / split / name / f"{i}.png")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """An image-folder run (8×8, three colour classes) and a copy of its test folder made before the folder
    itself is removed: predict needs the run alone."""
    base = tmp_path_factory.mktemp("predict")
    _write_folder(base / "data")
    run = base / "run"
    capture = pytest.MonkeyPatch()
    capture.setattr("sys.stdout", io.StringIO())
    try:
        assert main(["train", "--dataset", "imagefolder", "--data-dir", str(base / "data"), "--image-size", "8",
                     *TINY, "--out", str(run)]) == 0
    finally:
        capture.undo()
    config = resolve(read_run_options(run / "config.yaml"), device="cpu")
    net = load_net(run)
    test = load_data(config, train=False, device=torch.device("cpu"))
    result = evaluate(net, test, predictions=True)
    files = [f.replace(str(base / "data"), str(base / "copy")) for f in split_files(config, train=False)]
    shutil.copytree(base / "data" / "test", base / "copy" / "test")
    shutil.rmtree(base / "data")
    return run, base / "copy" / "test", result, files


def test_predictions_of_a_runs_own_test_files_are_evaluates(folder_run):
    run, test_dir, result, files = folder_run
    got = {p.file: p for p in predict(run, [test_dir], top=3, device="cpu")}
    assert sorted(str(f) for f in got) == sorted(files) and len(files) == 12
    names = ["blue", "green", "red"]
    for i, f in enumerate(files):
        p = got[type(test_dir)(f)]
        assert p.error is None and len(p.classes) == len(p.labels) == len(p.probabilities) == 3
        assert p.labels[0] == int(result["predicted"][i]) and p.classes[0] == names[p.labels[0]]
        assert p.probabilities[0] == pytest.approx(float(result["confidence"][i]), rel=1e-5)
        assert list(p.probabilities) == sorted(p.probabilities, reverse=True) and sum(p.probabilities) == pytest.approx(1)


def test_load_net_reads_an_image_folders_run_without_its_folder(folder_run):
    run, *_ = folder_run
    net = load_net(run)
    assert net.class_names == ["blue", "green", "red"] and not net.training
    with pytest.raises(ValueError, match="does not exist"):  # eval tests on the folder, which is gone
        evaluate_run(run, device="cpu")


def test_cli_prints_a_line_per_image_and_writes_a_table(folder_run, tmp_path, capsys):
    run, test_dir, *_ = folder_run
    assert main(["predict", str(run), str(test_dir / "red"), "--top", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"{test_dir / 'red' / '0.png'}: ")
    first, second = lines[0].split(": ", 1)[1].split(", ")
    assert first.split()[0] in ("blue", "green", "red") and first.endswith("%") and second.endswith("%")
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(test_dir / "blue" / "1.png"), str(test_dir / "green"), "--top", "9",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"5 images classified by {run}, written to {out}\n"
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["file", "class", "probability", "class_2", "probability_2", "class_3", "probability_3", "error"]
    assert len(rows) == 6 and rows[1][0] == str(test_dir / "blue" / "1.png")  # the order given; --top 9: all 3
    assert all(sorted(r[1:7:2]) == ["blue", "green", "red"] and r[7] == "" for r in rows[1:])


def test_unreadable_files_are_named_and_the_others_classified(folder_run, tmp_path, capsys):
    run, test_dir, *_ = folder_run
    images = tmp_path / "images"
    shutil.copytree(test_dir / "red", images)
    (images / "broken.png").write_bytes(b"not an image")
    (images / "notes.txt").write_text("not read: not an image name")
    (images / ".hidden").mkdir()
    shutil.copy(images / "0.png", images / ".hidden" / "0.png")
    assert main(["predict", str(run), str(images)]) == 1
    said = capsys.readouterr()
    assert len(said.out.splitlines()) == 4  # 0..3.png; the hidden folder and the .txt are not images to read
    err = said.err.splitlines()
    assert err[0].startswith(f"{images / 'broken.png'}: not read: not a readable image")
    assert "remove it" not in err[0]  # a file to classify is not a dataset to repair
    assert err[1] == "predict: 1 of 5 files could not be read (named above); the others were classified."
    rows = {p.file.name: p for p in predict(run, images)}
    assert rows["broken.png"].classes == () and "not a readable image" in rows["broken.png"].error
    assert main(["predict", str(run), str(images / "broken.png")]) == 1  # nothing else: no "others" to speak of
    assert capsys.readouterr().err.splitlines()[1] == ("predict: 1 of 1 files could not be read (named above); none "
                                                       "was classified.")


@pytest.mark.parametrize("argv, words", [
    (["{run}", "{tmp}/nothing.png"], "nothing.png does not exist; give image files or folders of them"),
    (["{run}", "{tmp}"], "holds no image files"),
    (["{tmp}", "{run}"], "holds no run (no config.yaml)"),
    (["{run}", "{run}", "--top", "0"], "top: expected a number of classes >= 1, got 0"),
    (["{run}", "{run}", "--out", "{tmp}/p.txt"], "--out {tmp}/p.txt: give a file ending in .csv"),
])
def test_bad_input_is_one_line(folder_run, tmp_path, capsys, argv, words):
    run, *_ = folder_run
    empty = tmp_path / "empty"
    empty.mkdir()
    fill = {"run": str(run), "tmp": str(empty)}
    assert main(["predict", *[a.format(**fill) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words.format(**fill) in err, err


def test_a_run_on_batches_from_python_is_refused_with_the_way_to_read_it(tmp_path, capsys):
    from torch import nn

    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
                          nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    data = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))]
    train(model, data, data, out=tmp_path / "run", num_classes=2, method="e2e", epochs=1, device="cpu", log=lambda s: None)
    (tmp_path / "x.png").write_bytes((tmp_path / "run" / "config.yaml").read_bytes())  # never read
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "x.png")]) == 2
    assert "trained on batches given from Python" in capsys.readouterr().err


def test_a_greyscale_runs_images_are_read_grey(tmp_path, capsys, monkeypatch):
    from PIL import Image

    real = SOURCES.get("fashion_mnist")  # official counts of the small files written here
    monkeypatch.setitem(SOURCES._entries, "fashion_mnist", dataclasses.replace(
        real, train=tuple(dataclasses.replace(f, count=12) for f in real.train),
        test=tuple(dataclasses.replace(f, count=6) for f in real.test)))
    write_fake_dataset("fashion_mnist", tmp_path / "data", 12, 6)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "data"), *TINY,
                 "--out", str(run)]) == 0
    grey = np.random.default_rng(0).integers(0, 256, (28, 28)).astype("uint8")
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.png")  # the same picture in RGB
    assert np.array_equal(decode_image(tmp_path / "g.png", 28, channels=1)[0], grey)
    assert np.array_equal(decode_image(tmp_path / "rgb.png", 28, channels=1)[0], grey)
    a, b = predict(run, [tmp_path / "g.png", tmp_path / "rgb.png"], top=10)
    assert a.classes[0] in ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                            "Bag", "Ankle boot")
    assert a.labels == b.labels and a.probabilities == b.probabilities
    with pytest.raises(ValueError, match="channels must be 1"):
        decode_image(tmp_path / "g.png", 28, channels=2)


def test_a_runs_own_normalisation_is_used_where_it_set_one(tmp_path):
    """--image-mean / --image-std replace the dataset's statistics in the run's loaders: predict reads new
    images with them too (with the dataset's it gave other probabilities than eval)."""
    from PIL import Image

    run = tmp_path / "run"
    assert main(["train", *TINY, "--limit-train", "64", "--limit-test", "8", "--image-mean", "0.9,0.9,0.9",
                 "--image-std", "0.05,0.05,0.05", "--out", str(run)]) == 0
    config = resolve(read_run_options(run / "config.yaml"), device="cpu")
    test = load_data(config, train=False, device=torch.device("cpu"))
    result = evaluate(load_net(run), test, predictions=True)
    files = []
    for i, x in enumerate(test.images):  # the digits test images as PNG files, at the run's size already
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(files[-1])
    got = list(predict(run, files))
    assert [p.labels[0] for p in got] == result["predicted"].tolist()
    assert [p.probabilities[0] for p in got] == pytest.approx(result["confidence"].tolist(), rel=1e-5)


def test_a_folder_is_read_through_its_links_each_real_folder_once(folder_run, tmp_path):
    run, test_dir, *_ = folder_run
    (tmp_path / "top").mkdir()
    shutil.copy(test_dir / "red" / "0.png", tmp_path / "top" / "a.png")
    (tmp_path / "top" / "linked").symlink_to(test_dir / "blue")  # 4 images
    (tmp_path / "top" / "again").symlink_to(test_dir / "blue")  # the same folder: read once
    (tmp_path / "top" / "up").symlink_to(tmp_path / "top")  # a loop
    got = [p.file for p in predict(run, tmp_path / "top")]
    assert len(got) == 5 and got[0] == tmp_path / "top" / "a.png"


def test_eval_scores_a_run_on_other_labelled_images_as_on_its_own_test_split(folder_run, tmp_path, capsys):
    """`eval RUN --images DIR`: a folder of class folders, each image read as the run's test images were and
    labelled by its folder's name — the run's own test folder (its data folder gone) gives evaluate's own
    predictions; a folder of some classes only is scored on those; folders of other names are refused."""
    run, test_dir, result, files = folder_run
    scored = evaluate_run(run, device="cpu", images=test_dir, predictions=True)
    assert scored["files"] == files and scored["test_images"] == 12 and scored["test_change"] is None
    assert torch.equal(scored["predicted"], result["predicted"]) and torch.equal(scored["labels"], result["labels"])
    assert torch.allclose(scored["confidence"], result["confidence"]) and scored["test_acc"] == result["test_acc"]
    some = tmp_path / "some"
    shutil.copytree(test_dir / "red", some / "red")
    (some / "red" / "nested").mkdir()
    shutil.copy(test_dir / "red" / "0.png", some / "red" / "nested" / "extra.png")
    assert main(["eval", str(run), "--images", str(some), "--misclassified", str(tmp_path / "m.csv"),
                 "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert f"on 5 test images (labelled images from {some})" in said
    rows = list(csv.reader((tmp_path / "m.csv").open()))[1:]
    assert all(row[2] == "red" and row[1].startswith(str(some / "red")) for row in rows)
    for layout, words in (
        ({"cat": 1}, "its folder cat names no class of the run; its folders must be named by the run's classes "
                     "(blue, green, red)."),
        ({"test": 1}, f"names no class of the run (give {tmp_path / 'bad' / 'test'} itself)"),
        ({"red": 0}, f"{tmp_path / 'bad' / 'red'} holds no image files"),
        ({}, "it holds no class folders"),
    ):
        shutil.rmtree(tmp_path / "bad", ignore_errors=True)
        (tmp_path / "bad").mkdir()
        for name, count in layout.items():
            (tmp_path / "bad" / name).mkdir()
            for i in range(count):
                shutil.copy(test_dir / "red" / "0.png", tmp_path / "bad" / name / f"{i}.png")
        assert main(["eval", str(run), "--images", str(tmp_path / "bad"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    (some / "red" / "broken.png").write_bytes(b"not an image")
    assert main(["eval", str(run), "--images", str(some), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"1 file could not be read: {some / 'red' / 'broken.png'} (" in err and err.rstrip().endswith("remove it.")
    (some / "loose.png").write_bytes((test_dir / "red" / "0.png").read_bytes())  # no class: refused, not dropped
    assert main(["eval", str(run), "--images", str(some), "--device", "cpu"]) == 2
    assert f"holds image files outside class folders (loose.png); move each into the folder of its class" in (
        capsys.readouterr().err)
    assert main(["eval", str(run), "--images", str(some), "--data-dir", str(some)]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_eval_on_a_folder_laid_out_otherwise_names_images(tmp_path, capsys):
    """A run trained with --test-fraction, given --data-dir of a folder with its own test/: the refusal said
    only how to train; it now names --images, the way to score the run on those images."""
    _write_folder(tmp_path / "data", n_test=0)
    shutil.rmtree(tmp_path / "data" / "test")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--test-fraction", "0.3",
                 "--image-size", "8", *TINY, "--out", str(run)]) == 0
    _write_folder(tmp_path / "other")
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith("; to score the run on other labelled images "
                                                          "(DIR/<class>/<image>), give --images DIR instead of --data-dir.")
    assert main(["eval", str(run), "--data-dir", str(tmp_path / "nowhere")]) == 2  # a folder missing: no hint
    assert "--images" not in capsys.readouterr().err
    assert main(["eval", str(run), "--images", str(tmp_path / "other" / "test")]) == 0
    assert "on 12 test images (labelled images from" in capsys.readouterr().out
