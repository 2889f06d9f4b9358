"""Your own images: a folder of class subfolders, trained with `locallearn train --dataset imagefolder`.

    python examples/image_folder.py [--data-dir DIR] [--epochs 2]

DIR holds train/<class>/* and test/<class>/* (or val/<class>/*) in any common image format. Without
--data-dir the example writes a small folder of its own first (the bundled digits as PNG files), so that it
runs anywhere. The command it runs is printed: the same as typing it.
"""

import argparse
import shlex
import tempfile
from pathlib import Path

from PIL import Image

from locallearn.cli import main as locallearn
from locallearn.data import load_split


def write_folder(root: Path, per_class: int = 20) -> Path:
    """digits as train/<digit>/*.png and test/<digit>/*.png (grey images; the folder reader makes them RGB)."""
    for split, train in (("train", True), ("test", False)):
        images, labels = load_split("digits", None, train=train)
        counts: dict[int, int] = {}
        for image, label in zip(images, labels.tolist()):
            if counts.get(label, 0) >= per_class:
                continue
            counts[label] = counts.get(label, 0) + 1
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(folder / f"{counts[label]}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/examples/image_folder")
    args = parser.parse_args()
    data_dir = args.data_dir or write_folder(Path(tempfile.mkdtemp(prefix="locallearn-folder-")))
    argv = ["train", "--dataset", "imagefolder", "--data-dir", str(data_dir), "--image-size", "32",
            "--model", "resnet20", "--method", "contsup", "--num-modules", "3", "--epochs", str(args.epochs),
            "--batch-size", "32", "--device", "cpu", "--out", args.out, "--overwrite"]
    print("locallearn " + " ".join(map(shlex.quote, argv)))
    raise SystemExit(locallearn(argv))


if __name__ == "__main__":
    main()
