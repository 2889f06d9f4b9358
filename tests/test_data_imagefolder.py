"""imagefolder: the user's images in DIR/{train,test}/<class>/, written here with Pillow in several formats;
the spec its folder implies, decoding to RGB at ``image_size``, and every unusable folder refused in one
line before any training."""

from __future__ import annotations

import hashlib
import os
import shutil

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from locallearn.cli import main
from locallearn.data import BatchLoader, DatasetError, check, describe_dataset, download, load_split
from locallearn.data.imagefolder import GREY_MEAN, GREY_STD, IMAGENET_MEAN, IMAGENET_STD

from checks import ctrl_c_before_checkpoint

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}  # one flat colour per class


def solid(colour, size=(40, 30), mode="RGB") -> Image.Image:
    return Image.new("RGB", size, colour).convert(mode)


def make_folder(root: Path, splits=("train", "test"), per_class: int = 2) -> Path:
    """Each class in each split: PNG, JPEG, ... (one format per image), of varying non-square sizes."""
    formats = [".png", ".jpg", ".bmp", ".gif", ".webp", ".tiff"]
    for split in splits:
        for c, (name, colour) in enumerate(COLOURS.items()):
            directory = root / split / name
            directory.mkdir(parents=True)
            for i in range(per_class):
                ext = formats[(c * per_class + i) % len(formats)]
                solid(colour, (40 + 9 * i, 30 + 5 * c)).save(directory / f"img{i}{ext}")
    return root


def one_line(err: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# --- what a good folder gives ----------------------------------------------------------------------------


def test_spec_from_the_folder(tmp_path):
    make_folder(tmp_path)
    spec = describe_dataset("imagefolder", tmp_path)
    assert spec.class_names == ("cat", "dog", "emu") and spec.num_classes == 3
    assert (spec.channels, spec.image_size) == (3, 32)
    assert spec.mean == IMAGENET_MEAN == (0.485, 0.456, 0.406) and spec.std == IMAGENET_STD
    assert (spec.pad, spec.pad_mode, spec.flip) == (4, "reflect", True)
    bigger = describe_dataset("imagefolder", tmp_path, image_size=64)
    assert (bigger.image_size, bigger.pad) == (64, 8)


def test_splits_decode_every_format_to_rgb_at_the_size_asked(tmp_path):
    make_folder(tmp_path)
    x, y = load_split("imagefolder", tmp_path, train=True, image_size=20)
    assert x.shape == (6, 3, 20, 20) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and y.tolist() == [0, 0, 1, 1, 2, 2]  # classes sorted, then files sorted
    for image, label in zip(x, y.tolist(), strict=True):
        colour = torch.tensor(list(COLOURS.values())[label], dtype=torch.float32).view(3, 1, 1)
        assert (image.float() - colour).abs().max() <= 3  # lossy JPEG / WebP / GIF palettes: nearly exact
    xt, yt = load_split("imagefolder", tmp_path, train=False)
    assert xt.shape == (6, 3, 32, 32) and yt.tolist() == [0, 0, 1, 1, 2, 2]


def test_grey_palette_and_alpha_images_become_rgb(tmp_path):
    make_folder(tmp_path)
    cat = tmp_path / "train" / "cat"
    solid((90, 90, 90), mode="L").save(cat / "z_grey.png")
    palette = Image.new("P", (30, 30), 0)
    palette.putpalette([10, 120, 250] + [0] * 765)
    palette.save(cat / "z_palette.gif")
    Image.new("RGBA", (30, 30), (250, 120, 10, 40)).save(cat / "z_alpha.png")
    Image.new("I;16", (30, 30), 128 * 257).save(cat / "z_16bit.png")  # 16-bit mid-grey: 128, not clipped to 255
    Image.new("I", (30, 30), 65535).save(cat / "z_32bit.tiff")  # "I", as Pillow reads some 16-bit files
    Image.new("F", (30, 30), 0.25).save(cat / "z_float.tiff")  # float pixels in 0..1
    x, y = load_split("imagefolder", tmp_path, train=True)
    assert x.shape == (12, 3, 32, 32) and y.tolist()[:8] == [0] * 8
    by_name = dict(zip(sorted(p.name for p in cat.iterdir()), x[:8], strict=True))
    assert (by_name["z_grey.png"] == 90).all()
    assert (by_name["z_16bit.png"] == 128).all() and (by_name["z_32bit.tiff"] == 255).all()
    assert (by_name["z_float.tiff"] == 64).all()
    assert by_name["z_palette.gif"][:, 5, 5].tolist() == [10, 120, 250]
    assert by_name["z_alpha.png"][:, 5, 5].tolist() == [250, 120, 10]  # alpha dropped, colour kept


def test_aspect_ratio_is_kept_by_a_centre_crop(tmp_path):
    """A 64×32 image of four vertical bands (green | red | blue | green): the shorter side becomes 16 and
    the centre 16×16 is kept, so red and blue fill it and the outer green bands are cut off (a plain resize
    would squeeze all four bands in)."""
    make_folder(tmp_path)
    bands = np.zeros((32, 64, 3), np.uint8)
    bands[:, :16] = bands[:, 48:] = (0, 255, 0)
    bands[:, 16:32], bands[:, 32:48] = (255, 0, 0), (0, 0, 255)
    Image.fromarray(bands).save(tmp_path / "train" / "cat" / "z_bands.png")
    x, _ = load_split("imagefolder", tmp_path, train=True, image_size=16)
    image = x[2].int()  # cat's third file in sorted order
    assert image[0, :, 1:6].min() > 200 and image[2, :, 10:15].min() > 200  # red left, blue right
    assert image[1, :, 2:14].max() < 40  # no green band inside


def test_val_is_the_test_split_when_there_is_no_test(tmp_path):
    make_folder(tmp_path, splits=("train", "val"))
    x, y = load_split("imagefolder", tmp_path, train=False)
    assert len(x) == 6 and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert describe_dataset("imagefolder", tmp_path).read_from == f"test images from {tmp_path / 'val'}"


def test_with_both_test_and_val_the_run_says_which_it_tests_on(tmp_path, capsys):
    make_folder(tmp_path / "imgs", splits=("train", "test"))
    make_folder(tmp_path / "imgs", splits=("val",), per_class=1)
    assert describe_dataset("imagefolder", tmp_path / "imgs").read_from == (f"test images from {tmp_path / 'imgs' / 'test'}; "
                                                                           "val/ not read")
    assert len(load_split("imagefolder", tmp_path / "imgs", train=False)[0]) == 6  # test/'s 6, not val/'s 3
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "imgs"), "--image-size", "8",
                 "--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--batch-size", "4", "--epochs",
                 "1", "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    start = capsys.readouterr().out
    assert f"data: 6 train, 6 test images (test images from {tmp_path / 'imgs' / 'test'}; val/ not read); cpu" in start


def test_nested_files_are_read_and_other_files_ignored(tmp_path):
    make_folder(tmp_path)
    cat = tmp_path / "train" / "cat"
    (cat / "more").mkdir()
    solid(COLOURS["cat"]).save(cat / "more" / "deep.PNG")  # extensions in any case
    (cat / "notes.txt").write_text("not an image")
    (cat / ".hidden.png").write_bytes(b"editor swap file, not an image")
    (cat / ".ipynb_checkpoints").mkdir()
    (cat / ".ipynb_checkpoints" / "img0-checkpoint.png").write_bytes(b"junk")
    (tmp_path / "train" / ".cache").mkdir()  # a hidden folder is not a class
    (tmp_path / "train" / "README.md").write_text("files beside the class folders are ignored")
    spec = describe_dataset("imagefolder", tmp_path)
    x, y = load_split("imagefolder", tmp_path, train=True)
    assert spec.class_names == ("cat", "dog", "emu") and len(x) == 7 and y.tolist()[:3] == [0, 0, 0]


def test_batches_are_normalised_with_imagenet_statistics(tmp_path):
    make_folder(tmp_path)
    spec = describe_dataset("imagefolder", tmp_path, image_size=16)
    images, labels = load_split("imagefolder", tmp_path, train=False, image_size=16)
    loader = BatchLoader(images, labels, spec=spec, batch_size=6, train=False, seed=0, prefetch=0)
    (x, _), = list(loader)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(x, (images.float() / 255 - mean) / std, atol=1e-5)


def test_a_folder_read_in_grey_is_one_channel_of_the_luma_normalised_with_imagenets_in_grey(tmp_path):
    """--in-channels 1: each image Pillow's ITU-R 601 luma of its RGB (colour, grey or 16-bit alike), one
    channel, normalised with ImageNet's constants through the same weights."""
    make_folder(tmp_path)
    Image.new("I;16", (30, 30), 128 * 257).save(tmp_path / "train" / "cat" / "z_16bit.png")
    spec = describe_dataset("imagefolder", tmp_path, image_size=16, in_channels=1)
    assert (spec.channels, spec.mean, spec.std) == (1, GREY_MEAN, GREY_STD)
    assert GREY_MEAN == (round(0.299 * 0.485 + 0.587 * 0.456 + 0.114 * 0.406, 4),) == (0.459,)
    grey, labels = load_split("imagefolder", tmp_path, train=True, image_size=16, in_channels=1)
    rgb, _ = load_split("imagefolder", tmp_path, train=True, image_size=16)
    assert grey.shape == (7, 1, 16, 16) and grey.dtype == torch.uint8 and labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    for g, c in zip(grey, rgb, strict=True):  # the luma of the RGB the same file gives, as Pillow rounds it
        luma = Image.fromarray(c.permute(1, 2, 0).numpy()).convert("L")
        assert torch.equal(g[0], torch.tensor(np.asarray(luma)))
    assert (grey[2] == 128).all()  # the 16-bit file: scaled, not clipped
    loader = BatchLoader(grey, labels, spec=spec, batch_size=7, train=False, seed=0, prefetch=0)
    (x, _), = list(loader)
    assert torch.allclose(x, (grey.float() / 255 - GREY_MEAN[0]) / GREY_STD[0], atol=1e-5)


def test_a_grey_run_trains_evaluates_and_predicts_in_one_channel(tmp_path, capsys):
    make_folder(tmp_path / "pics", per_class=3)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "pics"), "--in-channels", "1",
                 "--image-size", "8", "--model", "resnet20", "--num-modules", "2", "--split", "uniform",
                 "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--out", str(run)]) == 0
    assert "in_channels: 1" in (run / "config.yaml").read_text()
    import locallearn.training as training

    net = training.load_net(run)
    assert net.image_shape == (1, 8, 8)
    capsys.readouterr()
    assert main(["eval", str(run), "--misclassified", str(tmp_path / "m.csv")]) == 0
    evaluated = capsys.readouterr().out
    assert main(["predict", str(run), str(tmp_path / "pics" / "test"), "--out", str(tmp_path / "p.csv")]) == 0
    predicted = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert len(predicted) == 9  # the test images, read in grey as the run's test images were
    said = {file: (label, probability) for file, label, probability, _ in (line.split(",") for line in predicted)}
    wrong = [line.split(",") for line in (tmp_path / "m.csv").read_text().splitlines()[1:]]
    assert all(said[file] == (guess, confidence) for _, file, _, guess, confidence in wrong)  # as eval saw them
    right = sum(label == Path(file).parent.name for file, (label, _) in said.items())
    assert right == 9 - len(wrong) and f"test accuracy {100 * right / 9:.2f}%" in evaluated, evaluated


def test_in_channels_of_an_image_folder_is_1_or_3_and_of_a_fixed_dataset_its_own(tmp_path):
    make_folder(tmp_path)
    for bad in (2, 4, 0):
        with pytest.raises(ValueError, match=f"^in_channels: imagefolder reads its images as RGB \\(3\\) or grey "
                                             f"\\(1\\), got {bad}; give --in-channels 3 or 1.$"):
            describe_dataset("imagefolder", tmp_path, in_channels=bad)
    with pytest.raises(ValueError, match="^in_channels: dataset cifar10 has 3-channel images, got in_channels=1; "
                                         "only imagefolder reads its images in the channels asked for.$"):
        describe_dataset("cifar10", tmp_path, in_channels=1)
    assert describe_dataset("cifar10", tmp_path, in_channels=3).channels == 3


# --- refused before training, one line each ----------------------------------------------------------------


def refused(root, *needles: str, train: bool = True) -> str:
    with pytest.raises(DatasetError) as err:
        load_split("imagefolder", root, train=train)
    return one_line(err, *needles)


@pytest.mark.parametrize("mode, value, words", [("F", 1.5, "floating-point pixels outside 0..1 (Pillow mode F)"),
                                                ("I", 70000, "pixel values outside 0..65535 (Pillow mode I)")])
def test_pixels_with_no_8_bit_equivalent_are_refused(tmp_path, mode, value, words):
    make_folder(tmp_path)
    Image.new(mode, (30, 30), value).save(tmp_path / "train" / "dog" / "wide.tiff")
    refused(tmp_path, f"{tmp_path / 'train' / 'dog' / 'wide.tiff'} has {words}", "save it as an 8- or 16-bit image")


def test_no_classes(tmp_path):
    refused(tmp_path / "absent", f"imagefolder: --data-dir {tmp_path / 'absent'} does not exist (expected")
    (tmp_path / "a file").write_text("x")
    refused(tmp_path / "a file", f"--data-dir {tmp_path / 'a file'} is a file, not a folder")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "no classes", f"{tmp_path / 'empty' / 'train'} is not a folder")
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    refused(tmp_path, "no classes", f"{tmp_path / 'train'} has no class folders")
    (tmp_path / "train" / "only").mkdir()
    refused(tmp_path, "has one class folder (only)", "at least two")
    with pytest.raises(DatasetError, match="pass --data-dir DIR"):
        describe_dataset("imagefolder", None)


def test_a_class_folder_without_images(tmp_path):
    make_folder(tmp_path)
    empty = tmp_path / "test" / "dog"
    for path in empty.iterdir():
        path.unlink()
    (empty / "readme.txt").write_text("no images here")
    # describe_dataset checks the test split too: the run is refused before its first epoch.
    with pytest.raises(DatasetError) as err:
        describe_dataset("imagefolder", tmp_path)
    one_line(err, f"class folder {empty} holds no images", ".png", ".jpg")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_an_unreadable_image_is_named(tmp_path, damage):
    make_folder(tmp_path)
    good = (tmp_path / "train" / "cat" / "img0.png").read_bytes()
    path = tmp_path / "train" / "dog" / "z_broken.png"
    path.write_bytes({"garbage": b"\x89PNG not really", "truncated": good[: len(good) // 2], "empty": b""}[damage])
    message = refused(tmp_path, f"{path} is corrupt: not a readable image", "replace or remove it")
    assert "Traceback" not in message and "BufferedReader" not in message


def test_every_unreadable_image_is_named_at_once(tmp_path):
    make_folder(tmp_path)
    broken = [tmp_path / "train" / name / f"z_broken{i}.png" for i, name in enumerate(("cat", "dog", "dog"))]
    for path in broken:
        path.write_bytes(b"not an image")
    message = refused(tmp_path, "imagefolder: 3 images are not readable: " + ", ".join(map(str, broken)),
                      "(the first: not a readable image (UnidentifiedImageError: cannot identify image file)",
                      "replace or remove them.")
    assert "remove it" not in message  # the first one's reason without its own fix


def test_unreadable_images_of_both_splits_are_named_at_once(tmp_path):
    """A file of the test split that is no image at all is named with the training split's, so one round of
    fixes clears both (a truncated one is found when the test split is decoded)."""
    make_folder(tmp_path)
    broken = [tmp_path / "train" / "cat" / "z0.png", tmp_path / "test" / "dog" / "z1.jpg", tmp_path / "test" / "emu" / "z2.png"]
    for path in broken:
        path.write_bytes(b"not an image")
    refused(tmp_path, "imagefolder: 3 images are not readable: " + ", ".join(map(str, broken)))


def test_a_pipe_named_like_an_image_is_refused_not_waited_on(tmp_path):
    make_folder(tmp_path)
    path = tmp_path / "train" / "dog" / "z_pipe.png"
    os.mkfifo(path)  # opened for reading, it would wait for a writer forever
    refused(tmp_path, f"{path} is corrupt: not a regular file (a pipe, a socket or a device); remove it")


def test_a_broken_link_is_one_line_naming_it(tmp_path):
    from locallearn.cli import os_message

    make_folder(tmp_path)
    path = tmp_path / "train" / "dog" / "z_link.png"
    path.symlink_to(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError) as err:
        load_split("imagefolder", tmp_path, train=True)
    assert os_message(err.value) == f"{path}: no such file or directory."


def test_a_truncated_jpeg_is_named(tmp_path):
    make_folder(tmp_path)
    path = tmp_path / "test" / "emu" / "photo.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:3000])
    refused(tmp_path, f"{path} is corrupt: not a readable image", train=False)


def test_a_linked_file_that_puts_an_image_in_two_classes_or_splits_is_refused(tmp_path):
    """Linked files are read (a folder of links into an image store is a dataset), but a link into the test split
    (or another class) made the same image both a training and a test image, or gave it two labels."""
    make_folder(tmp_path / "store", splits=("train",))
    store = tmp_path / "store" / "train"
    links = tmp_path / "links"
    for split in ("train", "test"):
        for name in COLOURS:
            (links / split / name).mkdir(parents=True)
            for image in (store / name).iterdir():
                (links / split / name / image.name).symlink_to(image if split == "train" else image.resolve())
    (links / "test" / "cat" / "img0.png").rename(links / "test" / "cat" / "mine.png")  # keep names distinct
    for name in COLOURS:  # the test split's own images: copies, not the training files
        for link in (links / "test" / name).iterdir():
            target = link.resolve()
            link.unlink()
            link.write_bytes(target.read_bytes())
    assert len(load_split("imagefolder", links, train=True)[0]) == 6  # links into a store: read
    (links / "train" / "cat" / "twice.png").symlink_to(store / "cat" / "img0.png")  # the same class twice: weighed
    assert len(load_split("imagefolder", links, train=True)[0]) == 7
    leak = links / "test" / "dog" / "leak.png"
    leak.symlink_to(links / "train" / "dog" / "img0.bmp")
    with pytest.raises(DatasetError) as err:
        describe_dataset("imagefolder", links)
    one_line(err, f"{links / 'train' / 'dog' / 'img0.bmp'} and {leak} are one image file", "the train split's "
             "class dog and the test split's class dog; remove the link")
    leak.unlink()
    (links / "train" / "emu" / "also_cat.png").symlink_to(store / "cat" / "img1.jpg")
    with pytest.raises(DatasetError) as err:
        describe_dataset("imagefolder", links)
    one_line(err, "the train split's class cat and the train split's class emu")
    (links / "train" / "emu" / "also_cat.png").unlink()
    # with --test-fraction, two names of one file in one class are hashed apart: one held out, one trained on
    name = next(f"again{i}.bmp" for i in range(10_000) if place(f"again{i}.bmp") < 0.01)
    assert place("img0.bmp") > 0.01
    (links / "train" / "dog" / name).symlink_to(store / "dog" / "img0.bmp")
    shutil.rmtree(links / "test")
    (links / "train" / "cat" / "twice.png").unlink()
    with pytest.raises(DatasetError) as err:
        describe_dataset("imagefolder", links, test_fraction=place(name) + 1e-9)
    one_line(err, "are one image file", "under two names, which --test-fraction's hold-out (by name) puts in both "
             "splits; keep one of the names.")


def test_train_and_test_classes_differ(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "test" / "emu").rename(tmp_path / "test" / "emus")
    message = refused(tmp_path, "have different classes", "only in train/: emu", "only in test/: emus")
    assert str(tmp_path / "train") in message and str(tmp_path / "test") in message
    (tmp_path / "test" / "emus").rename(tmp_path / "test" / "emu")
    (tmp_path / "test" / "emu").rename(tmp_path / "val_emu_elsewhere")
    refused(tmp_path, "only in train/: emu")


def test_a_missing_test_split(tmp_path):
    make_folder(tmp_path, splits=("train",))
    refused(tmp_path, f"{tmp_path} has no test/ or val/ folder")


def test_image_size_is_an_option_of_imagefolder_only(tmp_path):
    make_folder(tmp_path)
    for bad in (0, -3, 2.5, "32", True):
        with pytest.raises(ValueError, match="image_size of imagefolder must be an integer >= 1"):
            describe_dataset("imagefolder", tmp_path, image_size=bad)
    with pytest.raises(ValueError, match="cifar10 delivers 32×32 images, got image_size=64"):
        describe_dataset("cifar10", tmp_path, image_size=64)
    assert describe_dataset("cifar10", tmp_path, image_size=32).name == "cifar10"


def test_nothing_to_download_or_check(tmp_path, capsys):
    with pytest.raises(DatasetError, match="your own images under --data-dir"):
        download("imagefolder", tmp_path)
    with pytest.raises(DatasetError, match="nothing to download or check"):
        check("imagefolder", tmp_path)
    assert main(["data", "check", "imagefolder", "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _stopped_in_epoch_2(data: Path, run: Path, *options: str) -> list[str]:
    """A 2-epoch run on the folder ``data`` (and ``options``), stopped by Ctrl-C before epoch 2's checkpoint; its
    arguments."""
    args = ["train", "--dataset", "imagefolder", "--data-dir", str(data), *options, "--image-size", "8", "--model",
            "resnet20", "--num-modules", "2", "--split", "uniform", "--batch-size", "4", "--epochs", "2", "--device",
            "cpu", "--out", str(run)]
    with ctrl_c_before_checkpoint(2):
        assert main(args) == 130
    return args


def test_a_run_with_more_classes_than_its_folder_evaluates_on_its_own_folder(tmp_path, capsys):
    make_folder(tmp_path / "a")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "a"), "--image-size", "8",
                 "--num-classes", "10", "--model", "resnet20", "--num-modules", "2", "--split", "uniform",
                 "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", str(tmp_path / "a"), "--device", "cpu"]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_a_run_is_not_resumed_or_evaluated_on_other_classes(tmp_path, capsys):
    """The classes are saved with each checkpoint: a resume or an eval on a folder with other classes (label i
    would mean another class) is refused in one line."""
    from locallearn.training import RunDir

    make_folder(tmp_path / "a")
    other = tmp_path / "b"
    for split in ("train", "test"):
        for name, colour in (("ant", (1, 2, 3)), ("bee", (4, 5, 6)), ("cat", (7, 8, 9))):
            (other / split / name).mkdir(parents=True)
            solid(colour).save(other / split / name / "x.png")
    run = tmp_path / "run"
    args = _stopped_in_epoch_2(tmp_path / "a", run)
    assert RunDir(run).load_checkpoint()["class_names"] == ["cat", "dog", "emu"]
    capsys.readouterr()
    other_args = [*args[:4], str(other), *args[5:]]
    assert main([*other_args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained on the classes cat, dog, emu but the data given holds ant, bee, cat" in err
    assert "point --data-dir at the run's data" in err
    assert RunDir(run).load_checkpoint()["epoch"] == 1  # nothing trained on the other labels
    assert main(["eval", str(run), "--data-dir", str(other), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval: " in err and "give the run's own data with --data-dir" in err
    more = tmp_path / "c"  # more classes than the run's: said as other data, not as a num_classes never given
    names = [f"c{i}" for i in range(7)]
    for split in ("train", "test"):
        for name in names:
            (more / split / name).mkdir(parents=True)
            solid((1, 2, 3)).save(more / split / name / "x.png")
    assert main(["eval", str(run), "--data-dir", str(more), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"locallearn: error: eval: {run} was trained with 3 classes but {more} holds 7 "
                                       f"(c0, c1, c2, c3, c4, … (2 more)); give the run's own data with --data-dir, "
                                       "or move the classes added since out of it.\n")
    assert main([*args, "--resume"]) == 0 and main(["eval", str(run), "--device", "cpu"]) == 0


def test_a_relative_data_dir_is_saved_absolute_so_eval_works_from_anywhere(tmp_path, monkeypatch):
    make_folder(tmp_path / "work" / "imgs")
    monkeypatch.chdir(tmp_path / "work")
    assert main(["train", "--dataset", "imagefolder", "--data-dir", "imgs", "--image-size", "8", "--model", "resnet20",
                 "--num-modules", "2", "--split", "uniform", "--batch-size", "4", "--epochs", "1", "--device", "cpu",
                 "--out", "run"]) == 0
    assert f"data_dir: {tmp_path / 'work' / 'imgs'}" in (tmp_path / "work" / "run" / "config.yaml").read_text()
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(tmp_path / "work" / "run"), "--device", "cpu"]) == 0


def test_a_run_whose_folder_moved_is_evaluated_and_resumed_from_the_new_place(tmp_path, capsys):
    make_folder(tmp_path / "a")
    run = tmp_path / "run"
    _stopped_in_epoch_2(tmp_path / "a", run)
    (tmp_path / "a").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", str(tmp_path / "moved"), "--device", "cpu"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume", "--data-dir", str(tmp_path / "moved")]) == 0
    assert f"now with data_dir ('{tmp_path / 'a'}' → '{tmp_path / 'moved'}')" in capsys.readouterr().out


def test_a_limit_keeps_the_classes_in_turn_not_the_first_classs_images(tmp_path):
    """The folder is read class by class; --limit-train N takes the classes in turn (every class where N allows),
    in the split's order, and a limit above the split keeps it whole."""
    from locallearn.data.imagefolder import first_in_turn
    from locallearn.training.config import resolve
    from locallearn.training.runner import load_data

    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 2, 2])
    assert first_in_turn(labels, 4).tolist() == [0, 1, 3, 8] and first_in_turn(labels, 7).tolist() == [0, 1, 2, 3, 4, 8, 9]
    assert first_in_turn(labels, 100).tolist() == list(range(10))
    make_folder(tmp_path, per_class=3)
    config = resolve(dataset="imagefolder", data_dir=str(tmp_path), model="resnet20", limit_train=4, limit_test=3,
                     batch_size=2, device="cpu")
    for train, kept in ((True, [0, 0, 1, 2]), (False, [0, 1, 2])):
        assert load_data(config, train=train, device=torch.device("cpu")).labels.tolist() == kept


def test_a_limit_decodes_only_the_images_it_keeps(tmp_path, monkeypatch):
    """--limit-train 4 of a big folder reads 4 images, not the folder (a smoke run of a large dataset)."""
    import locallearn.data.imagefolder as imagefolder
    from locallearn.training.config import resolve
    from locallearn.training.runner import load_data

    make_folder(tmp_path, per_class=5)
    decoded = []
    real = imagefolder.decode_image
    monkeypatch.setattr(imagefolder, "decode_image", lambda path, size, *a: decoded.append(path) or real(path, size, *a))
    config = resolve(dataset="imagefolder", data_dir=str(tmp_path), model="resnet20", limit_train=4, device="cpu")
    full = load_data(resolve(dataset="imagefolder", data_dir=str(tmp_path), model="resnet20", device="cpu"),
                     train=True, device=torch.device("cpu"))
    decoded.clear()
    limited = load_data(config, train=True, device=torch.device("cpu"))
    assert len(decoded) == 4 and limited.labels.tolist() == [0, 0, 1, 2]
    assert torch.equal(limited.images, full.images[[0, 1, 5, 10]])  # the images first_in_turn keeps, as they were


# --- a folder with train/ only: --test-fraction holds out part of each class -------------------------------


def held_out_names(root: Path, fraction: float) -> dict[str, set[str]]:
    from locallearn.data.imagefolder import scan_image_folder

    folder = scan_image_folder(root, fraction)
    names: dict[str, set[str]] = {name: set() for name in folder.classes}
    for path, label in folder.test:
        names[folder.classes[label]].add(path.relative_to(root / "train" / folder.classes[label]).as_posix())
    return names


def place(name: str) -> float:
    """The reference of hold_out's rule: a file's SHA-256 of its path in its class folder, as a number in [0, 1)."""
    return int.from_bytes(hashlib.sha256(os.fsencode(name)).digest()[:8], "big") / 2**64


def test_a_file_is_held_out_where_its_hash_falls_below_the_fraction(tmp_path):
    from locallearn.data.imagefolder import _items, scan_image_folder

    make_folder(tmp_path, splits=("train",), per_class=40)
    folder = scan_image_folder(tmp_path, 0.25)
    every = list(_items(tmp_path / "train", folder.classes))
    assert sorted(folder.train + folder.test) == sorted(every) and not set(folder.train) & set(folder.test)
    assert list(folder.train) == [item for item in every if item in folder.train]  # the folder's order kept
    assert list(folder.test) == [item for item in every if item in folder.test]
    held = held_out_names(tmp_path, 0.25)
    for name in folder.classes:
        files = [p.name for p in (tmp_path / "train" / name).iterdir()]
        assert held[name] == {f for f in files if place(f) < 0.25}
        assert 4 <= len(held[name]) <= 18  # about a quarter of 40

    images, labels = load_split("imagefolder", tmp_path, train=False, image_size=8, test_fraction=0.25)
    n = sum(len(names) for names in held.values())
    assert images.shape == (n, 3, 8, 8) and labels.tolist() == sorted(labels.tolist())
    assert len(load_split("imagefolder", tmp_path, train=True, image_size=8, test_fraction=0.25)[1]) == 120 - n
    spec = describe_dataset("imagefolder", tmp_path, test_fraction=0.25)
    assert spec.read_from == (f"test images from {tmp_path / 'train'}: {n} of its 120 images, about 0.25 of each "
                              "class chosen by a hash of their names, held out and not trained on")


def test_a_class_with_no_file_below_the_fraction_holds_out_its_smallest_hash(tmp_path):
    make_folder(tmp_path, splits=("train",), per_class=2)
    for name, names in held_out_names(tmp_path, 1e-9).items():  # no file below: one held out anyway
        files = sorted((p.name for p in (tmp_path / "train" / name).iterdir()), key=place)
        assert names == {files[0]}, name


def test_a_class_whose_every_file_falls_below_the_fraction_is_refused(tmp_path):
    """Keeping one for training would be undone by a file added later below it: a leak. Refused instead."""
    make_folder(tmp_path, splits=("train",), per_class=2)
    with pytest.raises(DatasetError) as err:
        held_out_names(tmp_path, 1 - 1e-9)
    one_line(err, "every image of class cat (2) falls in the held-out 1, which would leave it none to train on")


def test_a_file_added_later_never_moves_a_training_image_into_the_test_split(tmp_path):
    """Every order of arrival of a class's files (a growing folder): what was trained on stays trained on."""
    from locallearn.data.imagefolder import hold_out

    fraction = 0.5
    candidates = [f"IMG_{i:04d}.JPG" for i in range(100)]
    below = [n for n in candidates if place(n) < fraction]
    above = [n for n in candidates if place(n) >= fraction]
    # two below the fraction first (the class's every file: a rule that kept one for training would, when a
    # file above arrived, move it into the test split), then others in turn
    names = below[:2] + [above[0], below[2], above[1], above[2], below[3]]
    for start in range(len(names) - 1):
        trained: set[str] = set()
        for n in range(start + 1, len(names) + 1):
            items = tuple((tmp_path / "train" / "fish" / name, 0) for name in names[start:n])
            try:
                train, test = hold_out(items, ("fish",), fraction, tmp_path / "train")
            except DatasetError:  # every file below the fraction so far: nothing trained yet
                assert not trained
                continue
            assert not trained & {p.name for p, _ in test}, (start, n)
            trained = {p.name for p, _ in train}


def test_the_held_out_files_depend_on_each_file_alone(tmp_path):
    """The same files wherever the folder is and whatever is added: no file ever moves from train to test."""
    make_folder(tmp_path / "a", splits=("train",), per_class=12)
    before = held_out_names(tmp_path / "a", 0.25)
    (tmp_path / "a").rename(tmp_path / "moved")
    assert held_out_names(tmp_path / "moved", 0.25) == before
    for i in range(20):
        solid((1, 2, 3)).save(tmp_path / "moved" / "train" / "cat" / f"new{i}.png")
    after = held_out_names(tmp_path / "moved", 0.25)
    assert after["dog"] == before["dog"] and after["cat"] - before["cat"] == {
        f"new{i}.png" for i in range(20) if place(f"new{i}.png") < 0.25}
    assert before["cat"] <= after["cat"]


def test_a_file_name_that_is_not_utf8_is_held_out_by_its_bytes(tmp_path):
    make_folder(tmp_path, splits=("train",), per_class=3)
    cat = tmp_path / "train" / "cat"
    name = os.fsdecode(b"\xff.png")
    (cat / name).write_bytes((cat / "img0.png").read_bytes())
    held = held_out_names(tmp_path, 0.5)
    assert (name in held["cat"]) == (place(name) < 0.5 or held["cat"] == {name})


def test_names_that_are_not_utf8_reach_every_result_file(tmp_path, capsys):
    """A class folder and a file named in Latin-1 (an archive made on Windows) trained, but eval's CSV files,
    predict's and report's failed ('utf-8' codec can't encode) and the confusion PNG with a traceback. The CSV
    files hold the names as the file system has them (the bytes that open the file); the figure draws �."""
    make_folder(tmp_path / "pics", per_class=2)
    latin = os.fsdecode(b"caf\xe9")
    for split in ("train", "test"):
        (tmp_path / "pics" / split / "cat").rename(tmp_path / "pics" / split / latin)
    odd = tmp_path / "pics" / "test" / "dog" / os.fsdecode(b"x\xff.png")
    odd.write_bytes(next((tmp_path / "pics" / "test" / "dog").iterdir()).read_bytes())
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "pics"), "--image-size", "8",
                 "--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--batch-size", "4", "--epochs",
                 "1", "--device", "cpu", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--confusion", str(out / "c.csv"), "--misclassified", str(out / "m.csv")]) == 0
    assert main(["eval", str(run), "--confusion", str(out / "c.png")]) == 0
    assert main(["predict", str(run), str(odd), "--out", str(out / "p.csv")]) == 0
    assert main(["report", str(run), "--out", str(out / "r.md")]) == 0
    assert b"caf\xe9" in (out / "c.csv").read_bytes() and os.fsencode(odd) in (out / "p.csv").read_bytes()
    assert (out / "c.png").read_bytes().startswith(b"\x89PNG") and (out / "r.md").stat().st_size
    misclassified = (out / "m.csv").read_bytes()
    assert b"x\xff.png" in misclassified or os.fsencode(odd) not in misclassified


def test_a_class_added_to_a_runs_own_folder_is_named_by_eval(tmp_path, capsys):
    make_folder(tmp_path / "data", per_class=2)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--image-size", "8",
                 "--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--batch-size", "4", "--epochs",
                 "1", "--device", "cpu", "--out", str(run)]) == 0
    for split in ("train", "test"):
        (tmp_path / "data" / split / "fox").mkdir()
        solid((5, 5, 5)).save(tmp_path / "data" / split / "fox" / "a.png")
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"was trained with 3 classes but {tmp_path / 'data'} holds 4 (cat, dog, emu, fox)" in err


def test_class_folders_without_train_are_named_with_the_fix(tmp_path):
    for name, colour in COLOURS.items():
        (tmp_path / name).mkdir()
        solid(colour).save(tmp_path / name / "a.png")
    with pytest.raises(DatasetError) as err:
        describe_dataset("imagefolder", tmp_path, test_fraction=0.2)
    one_line(err, f"{tmp_path} holds class folders (cat, dog, emu) but no train/ folder; move them into "
                  f"{tmp_path / 'train'}/")


def test_split_folders_of_other_names_are_not_taken_for_classes(tmp_path):
    """Training/<class>/ and Testing/<class>/: class folders one level down; moving them into train/ would
    make two classes of them. The general layout message, not the class-folder hint."""
    for split in ("Training", "Testing"):
        for name, colour in COLOURS.items():
            (tmp_path / split / name).mkdir(parents=True)
            solid(colour).save(tmp_path / split / name / "a.png")
    with pytest.raises(DatasetError) as err:
        describe_dataset("imagefolder", tmp_path, test_fraction=0.2)
    assert "holds class folders" not in one_line(err, f"{tmp_path / 'train'} is not a folder")


def test_a_test_fraction_is_refused_where_it_cannot_apply(tmp_path):
    make_folder(tmp_path / "both", per_class=3)
    with pytest.raises(DatasetError) as err:
        describe_dataset("imagefolder", tmp_path / "both", test_fraction=0.2)
    one_line(err, "has its own test/ folder, which a run with --test-fraction would leave unused; train without")
    make_folder(tmp_path / "few", splits=("train",), per_class=1)
    with pytest.raises(DatasetError) as err:
        describe_dataset("imagefolder", tmp_path / "few", test_fraction=0.2)
    one_line(err, "class cat has 1 image; --test-fraction needs at least 2 in every class (one for each split)")
    with pytest.raises(ValueError) as err:
        describe_dataset("cifar10", tmp_path, test_fraction=0.1)
    one_line(err, "dataset cifar10 has its own test split")
    make_folder(tmp_path / "only", splits=("train",))
    refused(tmp_path / "only", "or train with --test-fraction 0.1 to hold out part of train/")


def test_a_run_on_a_held_out_fraction_records_it_and_eval_and_resume_use_it(tmp_path, capsys):
    import json

    import yaml

    make_folder(tmp_path / "data", splits=("train",), per_class=8)
    run = tmp_path / "run"
    args = ["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--test-fraction", "0.25",
            "--image-size", "8", "--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--batch-size",
            "4", "--epochs", "1", "--device", "cpu", "--out", str(run)]
    assert main([*args, "--dry-run"]) == 0  # what the run would read, before it is trained
    dry = capsys.readouterr().out
    assert main(args) == 0
    said = capsys.readouterr().out
    n = len(load_split("imagefolder", tmp_path / "data", train=False, image_size=8, test_fraction=0.25)[1])
    assert f"data: {24 - n} train, {n} test images (test images from" in said and f"{n} of its 24 images" in said
    assert f"# data: {24 - n} train, {n} test images (test images from" in dry and f"{n} of its 24 images" in dry
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["test_fraction"] == 0.25
    summary = json.loads((run / "summary.json").read_text())
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert f"test accuracy {100 * summary['test_acc']:.2f}%" in said and f"on {n} test images" in said
    assert "note:" not in said and json.loads((run / "metrics.jsonl").read_text())["test_images"] == n
    for i in range(40):  # the folder grows: the test set with it, which eval says
        solid((9, 9, 9)).save(tmp_path / "data" / "train" / "dog" / f"new{i}.png")
    grown = len(load_split("imagefolder", tmp_path / "data", train=False, image_size=8, test_fraction=0.25)[1])
    assert grown > n
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert (f"note: the run tested on {n} images at epoch 1, this evaluation on {grown}: the test data has changed "
            "since (a folder that grew, a file replaced, --data-dir, or another Pillow decoding the images), so these "
            "figures are not the run's own.") in capsys.readouterr().out
    other = [a if a != "0.25" else "0.5" for a in args] + ["--resume"]
    assert main(other) == 2
    assert "test_fraction" in capsys.readouterr().err
    # the flag alone, laid over the run's own options (it named the default dataset: "dataset digits has its own")
    assert main(["train", "--out", str(run), "--resume", "--test-fraction", "0.5"]) == 2
    assert capsys.readouterr().err == (f"locallearn: error: --resume: the run in {run} was started with other "
                                       "options: test_fraction (0.25 → 0.5); resume it with its own options, or "
                                       "start a new run with another --out.\n")


def test_a_resume_on_a_training_folder_that_grew_says_so(tmp_path, capsys):
    """Each epoch records the images it trained on; a resume whose folder has more (test images copied into
    train/, say) trains on, and says that the run is no longer the one it was."""
    import json

    make_folder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    _stopped_in_epoch_2(tmp_path / "data", run)
    capsys.readouterr()
    for i in range(3):
        solid(COLOURS["dog"]).save(tmp_path / "data" / "train" / "dog" / f"more{i}.png")
    assert main(["train", "--out", str(run), "--resume"]) == 0
    said = capsys.readouterr().out
    assert ("note: epoch 2 trained on 15 images, epoch 1 on 12: the training data has changed since the run "
            "started") in said
    assert [json.loads(line)["train_images"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [12, 15]


def test_a_file_replaced_by_another_image_is_told_by_resume_and_eval_though_the_count_is_the_same(tmp_path, capsys):
    """Each epoch records a fingerprint of the images it trained and tested on (``train_data``, ``test_data``):
    an image replaced in place keeps the counts, which alone said nothing."""
    import json

    make_folder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    _stopped_in_epoch_2(tmp_path / "data", run)
    capsys.readouterr()
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert len(first["train_data"]) == len(first["test_data"]) == 16
    replaced = next((tmp_path / "data" / "train" / "dog").iterdir())
    solid((1, 2, 3)).save(replaced)  # the same name, other pixels
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert ("note: epoch 2 trained on other images than epoch 1 (as many, 12, but other pixels, labels or order): "
            "the training data has changed since the run started") in capsys.readouterr().out
    second = json.loads((run / "metrics.jsonl").read_text().splitlines()[1])
    assert second["train_data"] != first["train_data"] and second["test_data"] == first["test_data"]
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert "note:" not in capsys.readouterr().out  # the test images are the ones the run tested on
    solid((4, 5, 6)).save(next((tmp_path / "data" / "test" / "cat").iterdir()))
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert ("note: the run tested on other images at epoch 2 than this evaluation (as many, 12, but other pixels, "
            "labels or order): the test data has changed since") in capsys.readouterr().out


def test_the_run_directory_lists_the_test_images_it_tests_on(tmp_path, capsys):
    """test_files.json: an image folder's test images (held out by --test-fraction, or test/ with --limit-test),
    their paths within --data-dir and labels in the order tested; written again when a resume finds the folder
    changed; not written for a fixed dataset."""
    import json

    from locallearn.data.imagefolder import hold_out, scan_image_folder

    data = make_folder(tmp_path / "data", splits=("train",), per_class=8)
    solid(COLOURS["emu"]).save(data / "train" / "emu" / "é ü.png")  # any name, kept as it is
    run = tmp_path / "run"
    _stopped_in_epoch_2(data, run, "--test-fraction", "0.3")
    listed = json.loads((run / "test_files.json").read_text())
    folder = scan_image_folder(data, 0.3)
    assert listed["files"] == [[p.relative_to(data).as_posix(), label] for p, label in folder.test]
    assert listed["images"] == len(folder.test) == len(load_split("imagefolder", data, train=False, image_size=8,
                                                                  test_fraction=0.3)[1])
    assert (listed["data_dir"], listed["test_fraction"], listed["class_names"]) == (str(data), 0.3, ["cat", "dog", "emu"])
    _, test = hold_out(folder.train + folder.test, folder.classes, 0.3, data / "train")  # the held-out rule's own
    assert [[p.relative_to(data).as_posix(), label] for p, label in test] == listed["files"]
    for i in range(30):  # the folder grows: the resume lists it as it now is
        solid(COLOURS["cat"]).save(data / "train" / "cat" / f"more{i}.png")
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert "test_files.json" in capsys.readouterr().out  # the results line names it
    grown = json.loads((run / "test_files.json").read_text())
    assert grown["images"] > listed["images"] and grown["files"] == [
        [p.relative_to(data).as_posix(), label] for p, label in scan_image_folder(data, 0.3).test]
    for i in range(30):  # the run is finished: a resume trains nothing, and keeps the list of what it tested on
        solid(COLOURS["dog"]).save(data / "train" / "dog" / f"more{i}.png")
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert json.loads((run / "test_files.json").read_text()) == grown
    # a test/ folder with --limit-test: the images kept, classes in turn
    other = make_folder(tmp_path / "other", per_class=3)
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(other), "--limit-test", "4", "--image-size", "8",
                 "--model", "resnet20", "--num-modules", "2", "--split", "uniform", "--batch-size", "4", "--epochs",
                 "1", "--device", "cpu", "--out", str(tmp_path / "limited")]) == 0
    limited = json.loads((tmp_path / "limited" / "test_files.json").read_text())
    assert [label for _, label in limited["files"]] == [0, 0, 1, 2] and limited["limit_test"] == 4
    assert all(path.startswith("test/") for path, _ in limited["files"])
    assert main(["train", "--out", str(tmp_path / "limited"), "--overwrite", "--epochs", "1", "--limit-train", "8",
                 "--limit-test", "8", "--model", "resnet20", "--num-modules", "2", "--batch-size", "4", "--device",
                 "cpu"]) == 0  # the bundled digits replace it: no file list of theirs, none of the folder's left
    assert not (tmp_path / "limited" / "test_files.json").exists()


def test_a_resume_on_a_folder_with_a_class_added_since_says_so_as_eval_does(tmp_path, capsys):
    """A class folder added to train/ and test/ after the run started: its resume was refused as
    "num_classes: dataset imagefolder has 3 classes, got num_classes=2", an option the user never gave."""
    make_folder(tmp_path / "data", per_class=2)
    for name in ("cat", "dog", "emu"):
        for split in ("train", "test"):
            for i in range(2):
                solid(COLOURS[name]).save(tmp_path / "data" / split / name / f"more{i}.png")
    (tmp_path / "aside").mkdir()
    os.rename(tmp_path / "data" / "train" / "emu", tmp_path / "aside" / "train_emu")
    os.rename(tmp_path / "data" / "test" / "emu", tmp_path / "aside" / "test_emu")
    run = tmp_path / "run"
    _stopped_in_epoch_2(tmp_path / "data", run)
    os.rename(tmp_path / "aside" / "train_emu", tmp_path / "data" / "train" / "emu")
    os.rename(tmp_path / "aside" / "test_emu", tmp_path / "data" / "test" / "emu")
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert capsys.readouterr().err == (f"locallearn: error: --resume: the run in {run} trained on 2 classes but "
                                       f"{tmp_path / 'data'} now holds 3 (cat, dog, emu); resume it on the run's own "
                                       f"data (--data-dir), or move the classes added since out of it.\n")


def test_with_a_test_limit_only_the_test_files_it_keeps_are_named(tmp_path):
    make_folder(tmp_path, per_class=3)
    for path in (tmp_path / "train" / "cat" / "img0.png", tmp_path / "test" / "dog" / "img2.bmp",
                 tmp_path / "test" / "cat" / "img0.png"):
        path.write_bytes(b"not an image")
    with pytest.raises(DatasetError) as err:  # --limit-test 3: each class's first test image, so not dog/img2
        load_split("imagefolder", tmp_path, train=True, limit=4, test_limit=3)
    message = one_line(err, "imagefolder: 2 images are not readable: ")
    assert str(tmp_path / "test" / "cat" / "img0.png") in message and "img2" not in message


def test_links_inside_a_class_folder_are_not_followed(tmp_path):
    """A training image is known by its path in its class folder (the held-out split hashes it): a link to a
    real folder must not rename its files, and a link out of the class (to another class, or to test/) must
    not add images to it."""
    from locallearn.data.imagefolder import scan_image_folder

    make_folder(tmp_path, per_class=4)
    shots = tmp_path / "train" / "cat" / "z_shots"
    shots.mkdir()
    for name in ("img0.png", "img1.jpg"):
        (tmp_path / "train" / "cat" / name).rename(shots / name)
    before = scan_image_folder(tmp_path)
    (tmp_path / "train" / "cat" / "a_more").symlink_to("z_shots")  # sorts before the real folder
    (tmp_path / "train" / "cat" / "up").symlink_to("..")  # every other class
    (tmp_path / "train" / "cat" / "held").symlink_to(tmp_path / "test" / "cat")
    after = scan_image_folder(tmp_path)
    assert (after.train, after.test) == (before.train, before.test)  # the same files, by the same paths
    assert shots / "img0.png" in [path for path, _ in after.train] and len(after.train) == 12


# --- decoding in threads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 3])
def test_decoding_in_threads_gives_the_bytes_and_errors_of_one_by_one(tmp_path, monkeypatch, threads):
    """decode_images over several windows of files in flight: the arrays decode_image gives one at a time, in
    the files' order, and an unreadable file's error in its place."""
    import locallearn.data.imagefolder as imagefolder
    from locallearn.data.errors import CorruptFileError

    rng = np.random.default_rng(0)
    paths = []
    for i in range(41):
        path = tmp_path / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (20 + i % 7, 17, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    for broken in (paths[5], paths[22]):
        broken.write_bytes(b"not an image")
    expected = []
    for path in paths:
        try:
            expected.append(imagefolder.decode_image(path, 8, 1))
        except CorruptFileError as err:
            expected.append(err)
    monkeypatch.setattr(imagefolder, "decode_threads", lambda: threads)
    monkeypatch.setattr(imagefolder, "IN_FLIGHT", 4)  # windows of 4 × threads files: several of them
    monkeypatch.setattr(imagefolder, "PROBE_FILES", 3)  # 3 files in this thread, then the others in threads
    monkeypatch.setattr(imagefolder, "THREADS_FROM_S", 0.0)  # however fast these small images decode
    pool = []
    real_pool = imagefolder.ThreadPoolExecutor
    monkeypatch.setattr(imagefolder, "ThreadPoolExecutor", lambda *a, **k: pool.append(a) or real_pool(*a, **k))
    got = list(imagefolder.decode_images(paths, 8, 1))
    assert pool == ([] if threads == 1 else [(threads,)])
    assert len(got) == len(paths)
    for path, want, image in zip(paths, expected, got):
        if isinstance(want, CorruptFileError):
            assert isinstance(image, CorruptFileError) and image.path == path
        else:
            assert image.dtype == np.uint8 and image.shape == (1, 8, 8) and np.array_equal(image, want), path


def test_small_images_are_decoded_in_one_thread(tmp_path, monkeypatch):
    """Files that decode faster than THREADS_FROM_S each (mostly Python, which holds the GIL) stay in this
    thread after the probe: threads would only contend for the GIL."""
    import locallearn.data.imagefolder as imagefolder

    paths = []
    for i in range(40):
        paths.append(tmp_path / f"{i}.png")
        solid((i, 2 * i, 3 * i), (6, 5)).save(paths[-1])
    monkeypatch.setattr(imagefolder, "decode_threads", lambda: 4)
    monkeypatch.setattr(imagefolder, "ThreadPoolExecutor", lambda *a, **k: pytest.fail("a pool for small images"))
    monkeypatch.setattr(imagefolder, "THREADS_FROM_S", 10.0)  # any file is "small" here
    images = list(imagefolder.decode_images(paths, 4))
    assert [tuple(int(v) for v in image[:, 0, 0]) for image in images] == [(i, 2 * i, 3 * i) for i in range(40)]


def test_an_error_not_caught_is_raised_and_a_caught_one_given_in_place(tmp_path, monkeypatch):
    import locallearn.data.imagefolder as imagefolder

    make_folder(tmp_path)
    good = tmp_path / "train" / "cat" / "img0.png"
    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "nothing-here.png")
    monkeypatch.setattr(imagefolder, "decode_threads", lambda: 2)
    monkeypatch.setattr(imagefolder, "PROBE_FILES", 1)  # the missing file is the pool's
    monkeypatch.setattr(imagefolder, "THREADS_FROM_S", 0.0)
    with pytest.raises(FileNotFoundError):
        list(imagefolder.decode_images([good, link, good], 8))
    first, missing, last = imagefolder.decode_images([good, link, good], 8, catch=(OSError,))
    assert isinstance(missing, FileNotFoundError) and np.array_equal(first, last)


def test_decoding_threads_are_this_processs_share_of_its_cores(monkeypatch):
    import locallearn.data.imagefolder as imagefolder

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert imagefolder.decode_threads() == 8  # at most 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert imagefolder.decode_threads() == 3  # torchrun's 4 processes on this machine share its 12 cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert imagefolder.decode_threads() == 1


def test_a_split_folder_given_for_its_parent_names_the_parent(tmp_path):
    make_folder(tmp_path)
    for split in ("train", "test"):
        with pytest.raises(DatasetError) as err:
            describe_dataset("imagefolder", tmp_path / split)
        one_line(err, f"--data-dir {tmp_path / split} is a split folder itself; give the folder that holds train/: "
                      f"--data-dir {tmp_path}.")


def test_a_resume_with_nothing_to_restore_records_the_options_it_trains_with(tmp_path, capsys):
    """Stopped in epoch 1, before any checkpoint, a run resumed with another --data-dir starts over on that
    folder; its config.yaml kept the first folder, so eval and report credited the run to images it never
    trained on."""
    make_folder(tmp_path / "a", per_class=2)
    make_folder(tmp_path / "b", per_class=3)
    run = tmp_path / "run"
    args = ["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "a"), "--image-size", "8", "--model",
            "resnet20", "--num-modules", "2", "--split", "uniform", "--batch-size", "4", "--epochs", "1", "--device",
            "cpu", "--out", str(run)]
    with ctrl_c_before_checkpoint(1):
        assert main(args) == 130
    assert f"data_dir: {tmp_path / 'a'}" in (run / "config.yaml").read_text()
    assert main(["train", "--out", str(run), "--resume", "--data-dir", str(tmp_path / "b")]) == 0
    assert f"data_dir: {tmp_path / 'b'}" in (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert f"on 9 test images (test images from {tmp_path / 'b' / 'test'})" in capsys.readouterr().out
