"""Where a classifier errs: per-class accuracy and the confusion matrix of a test set (``locallearn eval
--per-class``, ``--confusion FILE``).

The counts come from ``runner.evaluate(..., confusion=True)``: ``counts[t, p]`` is how many test images of
true class t the network's inference forward put in class p (rows: truth, columns: prediction), so row t
sums to the test images of class t and the diagonal to the correct ones.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from locallearn.training.rundir import write_output

CONFUSION_SUFFIXES = (".csv", ".png")


def class_labels(names: list[str] | None, num_classes: int) -> list[str]:
    """The name of each of the classifier's classes: the dataset's where it names them, else the label
    number (digits, SVHN, and the classes of a classifier wider than its data: ``--num-classes``)."""
    names = list(names or ())[:num_classes]
    return names + [str(c) for c in range(len(names), num_classes)]


def per_class_table(counts: torch.Tensor, names: list[str]) -> str:
    """One line per class: its test images, the fraction right, and the class it is most often taken for
    (a class without test images, one the classifier has but the test data lacks, says so)."""
    counts = counts.to(torch.int64).cpu()
    width = max(len("class"), *(len(n) for n in names))
    lines = [f"{'class':<{width}}  {'images':>7}  {'accuracy':>8}  most often taken for"]
    for t, name in enumerate(names):
        row = counts[t]
        total = int(row.sum())
        if total == 0:
            lines.append(f"{name:<{width}}  {0:>7}  {'–':>8}  (no test images)")
            continue
        wrong = row.clone()
        wrong[t] = 0
        p = int(wrong.argmax())
        taken = f"{names[p]} ({100 * int(wrong[p]) / total:.2f}%)" if int(wrong[p]) else "–"
        lines.append(f"{name:<{width}}  {total:>7}  {100 * int(row[t]) / total:>7.2f}%  {taken}")
    return "\n".join(lines)


def check_confusion_path(path: Path) -> None:
    """Refuse, before any work, a file name ``write_confusion`` cannot write."""
    check_output_path(path, "--confusion", CONFUSION_SUFFIXES, "the counts as a table, or a picture of them")


def check_misclassified_path(path: Path) -> None:
    """Refuse, before any work, a file name ``write_misclassified`` cannot write."""
    check_output_path(path, "--misclassified", (".csv",), "a table")


def check_output_path(path: Path, flag: str, suffixes: tuple[str, ...], what: str) -> None:
    """A file ``flag`` may write: not a directory, ending in one of ``suffixes``, in a folder that exists."""
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file name such as {path / ('out' + suffixes[0])}.")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path}: give a file ending in {' or '.join(suffixes)} ({what}).")
    if not path.parent.is_dir():
        where = "is a file, not a folder" if path.parent.exists() else "does not exist"
        raise ValueError(f"{flag} {path}: {path.parent} {where}; name a file in an existing folder.")


def write_misclassified(path: Path, result: dict, names: list[str], files: list[str] | None) -> int:
    """One CSV row per test image the network got wrong, the most confident mistakes first (where mislabelled
    images and the hardest confusions show): its index in the test split, its file (an image folder's), its
    class, the class predicted and the softmax probability given to it. Returns the number of rows."""
    check_misclassified_path(path)
    labels, predicted, confidence = result["labels"], result["predicted"], result["confidence"]
    wrong = (predicted != labels).nonzero().flatten()
    wrong = wrong[torch.argsort(confidence[wrong], descending=True, stable=True)]
    write_csv(path, [["index", "file", "class", "predicted", "confidence"]] + [
        [i, files[i] if files else "", names[int(labels[i])], names[int(predicted[i])], f"{float(confidence[i]):.4f}"]
        for i in wrong.tolist()])
    return len(wrong)


def write_confusion(path: Path, counts: torch.Tensor, names: list[str], *, title: str) -> None:
    """``.csv``: the counts, a header row of predicted classes and one row per true class. ``.png``: each row
    as fractions of its class's images, shaded, with the counts written in the cells up to 20 classes."""
    check_confusion_path(path)
    counts = counts.to(torch.int64).cpu()
    if path.suffix.lower() == ".csv":
        write_csv(path, [["true \\ predicted", *names]] + [[name, *row] for name, row in zip(names, counts.tolist())])
        return
    save_figure(confusion_figure(counts, names, title=title), path, dpi=120)


def save_figure(figure, path: Path, **options) -> None:
    """``figure.savefig`` into ``path`` (its format from the suffix) through ``write_output``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", **options)
    write_output(path, buffer.getvalue())


def confusion_figure(counts: torch.Tensor, names: list[str], *, title: str):
    """The confusion matrix, each row divided by its class's test images (rows without images stay blank)."""
    from matplotlib.figure import Figure  # the object API renders with Agg: no display, no global state

    names = [_literal(n) for n in names]
    title = _literal(title)
    totals = counts.sum(dim=1, keepdim=True)  # (C, 1)
    fractions = (counts.double() / totals.clamp(min=1)).numpy()  # (C, C), rows sum to 1
    n = len(names)
    side = min(max(4.0, 0.45 * n + 2.0), 16.0)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class's test images")
    if n <= 50:
        ax.set_xticks(range(n), names, rotation=90, fontsize="small")
        ax.set_yticks(range(n), names, fontsize="small")
    if n <= 20:
        for t in range(n):
            for p in range(n):
                if counts[t, p]:
                    dark = fractions[t, p] > 0.5
                    ax.text(p, t, str(int(counts[t, p])), ha="center", va="center", fontsize="x-small",
                            color="white" if dark else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize="medium")
    return fig


def _literal(text: str) -> str:
    """``text`` as matplotlib draws it verbatim: a ``$`` would start a formula (``price_$1_$2`` fails to render),
    and a name that is not UTF-8 (a folder ``caf\xe9`` from a Latin-1 archive) its undecodable bytes as �."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("$", r"\$")


def write_predictions(path: Path, predictions: list) -> None:
    """One CSV row per file of ``locallearn predict`` (``training.predict.Prediction``): the file, then each of
    its top classes and probability, most probable first, and ``error`` where it could not be read."""
    top = max((len(p.classes) for p in predictions), default=1)
    header = ["file", "class", "probability"]
    for rank in range(2, top + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    rows = [header + ["error"]]
    for p in predictions:
        cells = [str(p.file)]
        for name, value in zip(p.classes, p.probabilities):
            cells += [name, f"{value:.4f}"]
        rows.append(cells + [""] * (len(header) - len(cells)) + [p.error or ""])
    write_csv(path, rows)


def write_csv(path: Path, rows: list[list]) -> None:
    """``rows`` (the header first) as a UTF-8 CSV file, lines ending in a bare newline; a file or class name that
    is not UTF-8 is written as the file system's own bytes (``surrogateescape``), the path that opens it."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    write_output(path, text.getvalue().encode("utf-8", "surrogateescape"))
