"""The subcommands of ``locallearn`` as plain functions (``cli.py`` only declares their arguments): ``train``
(one process, or one pipeline rank under torchrun), ``eval``, ``predict``, ``list`` and ``report``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

import locallearn
from locallearn.data import BatchLoader, DatasetError, describe_dataset
from locallearn.data.imagefolder import IMAGEFOLDER
from locallearn.methods import METHODS
from locallearn.net import build_net
from locallearn.training.classes import (
    check_confusion_path,
    check_misclassified_path,
    check_output_path,
    class_labels,
    per_class_table,
    write_confusion,
    write_misclassified,
    write_predictions,
)
from locallearn.training.config import (
    PYTHON_DATA,
    RESUMABLE_CHANGES,
    USED_BY,
    Config,
    check_used,
    presets,
    read_run_options,
    requested_options,
    resolve,
    run_record,
)
from locallearn.training.api import trained_net
from locallearn.training.fit import (
    check_single_process,
    data_change,
    derived,
    fit,
    nothing_to_resume,
    provenance,
    recorded_options,
)
from locallearn.training.predict import input_spec, labelled_images, predict
from locallearn.training.report import write_report
from locallearn.training.rundir import CONFIG, WRITTEN_BY_TRAIN, RunDir
from locallearn.training.runner import (
    check_class_names,
    evaluate,
    load_data,
    loader_class_names,
    precise_batchnorm,
    split_files,
)
from locallearn.training.schedule import Schedule


def train(*, config: str | None = None, resume: bool = False, overwrite: bool = False, dry_run: bool = False,
          **flags: Any) -> int:
    """``locallearn train``: defaults ← ``--config`` ← flags, trained into the run directory; ``dry_run``:
    only printed (``preview``)."""
    if dry_run and (resume or overwrite):
        raise ValueError("--dry-run reads no run and writes nothing, so --resume and --overwrite do not apply; drop them.")
    values, preset = requested_options(config, flags)
    # a resume's flags change the run it continues: laid over its options, not over the defaults (--test-fraction
    # alone named the default dataset); open_run then says which of them a resume may not change
    recorded = recorded_options(values["out"]) if resume and values.get("out") is not None else None
    recorded = {k: v for k, v in (recorded or {}).items() if k == "data_dir" or k not in RESUMABLE_CHANGES}  # not how
    try:  # it ran: how this command runs it
        resolved = resolve({**recorded, **values}, name=preset)
    except ValueError:  # options that cannot go together (data parallelism in one process): open_run names them
        if not recorded:
            raise
        resolved = resolve(values, name=preset)
    if not resume:  # a resume keeps the options the run was started with
        check_used(resolved, flags)  # the flags typed: a --config file (a preset, a run's config.yaml) may hold any
    else:  # but may move its data (a resume's own option): not a dataset's that has no files
        check_used(resolved, {"data_dir": flags.get("data_dir")})
    if dry_run:
        if "WORLD_SIZE" in os.environ:  # under torchrun: the checks the run makes before it connects or trains
            if resolved.processes.parallel == "pipeline":
                from locallearn.distributed.runner import check_start

                check_start(resolved, int(os.environ["WORLD_SIZE"]))
            elif resolved.processes.parallel == "none":
                check_single_process(resolved)  # several ranks of one process's run are refused
            if os.environ.get("RANK", "0") != "0":  # one copy of the config, by rank 0
                return 0
        print(preview(resolved))
        return 0
    note = nothing_to_resume(resolved.run.out) if resume else None
    if note and os.environ.get("RANK", "0") == "0":  # a mistyped --out
        print(note, flush=True)
    values = {**values, "parallel": resolved.processes.parallel}  # how this command runs, also when it resumes
    if resolved.processes.parallel != "pipeline":  # a pipeline run resumed otherwise: no lock-step to keep
        values["pipeline_sync"] = False
    if resolved.processes.parallel == "pipeline":  # one process per pipeline rank, under torchrun
        from locallearn.distributed import fit_pipeline

        fit_pipeline(resolved, resume=resume, overwrite=overwrite, requested=values)
    else:
        fit(resolved, resume=resume, overwrite=overwrite, requested=values)
    return 0


def preview(config: Config) -> str:
    """``train --dry-run``: the config.yaml a run of ``config`` starts with — every option resolved — headed by
    what building the network derives (cuts, λ and their source, a warm-up note), its parameter count and the
    learning rate of a few epochs. The options are checked and the network is built (a pretrained checkpoint
    is read, an image folder listed); the device is not asked for (a config for a GPU job can be checked on a
    machine without one), no image is decoded, nothing is trained or written. A run directory that `train`
    would refuse (it holds a run, or is a file) is named in the header, not refused."""
    net = build_net(config.net)
    optim = config.optim
    schedule = Schedule(lr=optim.lr, epochs=optim.epochs, warmup_epochs=optim.warmup_epochs, warmup_lr=optim.warmup_lr)
    shown = sorted({1, optim.warmup_used, optim.warmup_used + 1, (optim.epochs + 1) // 2, optim.epochs} - {0})
    rates = ", ".join(f"epoch {e} {schedule.epoch(e):.4g}" for e in shown if e <= optim.epochs)
    per_step = "; --schedule step moves it at every step between these" if optim.schedule == "step" else ""
    header = [
        f"Dry run of `locallearn train`: the config.yaml a run into {config.run.out} would start with; nothing "
        f"was trained or written.",
        *provenance()[1:],
        *derived(net, config),
        f"parameters: {sum(p.numel() for p in net.parameters()):,} (heads, decoders and context encoders included)",
        f"learning rate at the start of epochs: {rates}{per_step}",
        *_folder_note(config),
        *_out_note(RunDir(config.run.out)),
    ]
    return run_record(config.to_dict(), threads=torch.get_num_threads(), header=header)


def _folder_note(config: Config) -> list[str]:
    """An image folder's images, as a run of ``config`` would read them (listed, not decoded; limits applied):
    what the folder and --test-fraction give, before anything is trained."""
    data = config.data
    if data.dataset != IMAGEFOLDER:  # the other datasets' counts are their official ones
        return []
    train, test = len(split_files(config, train=True)), len(split_files(config, train=False))
    spec = describe_dataset(IMAGEFOLDER, data.data_dir, image_size=config.net.image_size, test_fraction=data.test_fraction)
    return [f"data: {train} train, {test} test images ({spec.read_from})"]


def _out_note(run: RunDir) -> list[str]:
    """What `train` would say of the run directory ``run`` (training.fit.open_run), for a dry run's header."""
    if run.path.exists() and not run.path.is_dir():
        return [f"note: {run.path} is a file, not a directory: `train` would refuse it; choose another --out."]
    if run.started and not run.untrained:
        what = "a finished run" if run.finished else "an unfinished run"
        return [f"note: {run.path} already holds {what}: `train` would refuse it; add --overwrite to replace it"
                + ("" if run.finished else ", or train with --resume to continue it") + ", or choose another --out."]
    return []


def evaluate_run(
    run_dir: Path, *, device: str = "auto", data_dir: str | None = None, precise_bn: int | None = None,
    confusion: bool = False, predictions: bool = False, images: Path | None = None,
) -> dict[str, Any]:
    """Test accuracy of a saved run: the net rebuilt from its config.yaml, weights from checkpoint.pt; with
    ``precise_bn``, BatchNorm statistics recomputed first on that many training batches (not saved); with
    ``confusion``, also the confusion counts and ``class_names`` (training.classes); with ``predictions``,
    each test image's label, prediction and confidence, and ``files`` (an image folder's, else None). With
    ``images``, on the labelled images of that folder of class folders instead of the run's test split."""
    run = RunDir(Path(run_dir))
    if not run.file(CONFIG).is_file():
        raise ValueError(run.no_config(otherwise=WRITTEN_BY_TRAIN) + ".")
    options = read_run_options(run.file(CONFIG))
    if images is not None:
        if data_dir:
            raise ValueError("eval: --images scores the run on a folder of labelled images, --data-dir says where "
                             "its own dataset is now; give one of them.")
        config, net, checkpoint, test, files = _labelled_test(run, options, images, device=device)
    else:
        config = _own_config(run, options, data_dir, device=device)
        net, checkpoint = trained_net(run, config, reader="eval")
        test = load_data(config, train=False, device=next(net.parameters()).device)
        check_class_names(checkpoint.get("class_names"), loader_class_names(test), where=f"eval: {run.path}",
                          fix="give the run's own data with --data-dir, or put its folder's classes back as they were.")
        files = None
    used = None
    if precise_bn is not None:  # on the run's own training data
        used = precise_batchnorm(net, load_data(config, train=True, device=next(net.parameters()).device), precise_bn)
    result = evaluate(net, test, autocast_dtype=config.autocast_dtype, confusion=confusion, predictions=predictions)
    if confusion or predictions:
        result["class_names"] = class_labels(loader_class_names(test), config.net.num_classes)
    if predictions:
        result["files"] = files if files is not None else split_files(config, train=False)
    trained = (checkpoint.get("history") or [{}])[-1]
    own = images is None  # the run's own test split, whose change since the run tested on it is said
    return {**result, "epoch": checkpoint["epoch"], "epochs": config.optim.epochs, "precise_bn_batches": used,
            "test_images": len(test.images),
            "read_from": test.spec.read_from if own else f"labelled images from {images}",
            "test_change": data_change(trained, result, "test") if own else None,
            "run_test_images": trained.get("test_images") if own else None}


def _own_config(run: RunDir, options: dict[str, Any], data_dir: str | None, *, device: str) -> Config:
    """The run's config, its data where ``data_dir`` says it is now; an image folder that cannot be the run's
    (a class added, another layout) refused in one line saying so."""
    try:
        config = resolve({**options, **({"data_dir": data_dir} if data_dir else {}), "device": device})
    except ValueError as err:
        if options.get("dataset") != IMAGEFOLDER:
            raise
        try:  # a class added since: said so, not as a num_classes clash
            _refuse_more_classes(run, data_dir or options.get("data_dir"), options)
        except DatasetError as layout:  # the folder's own layout refused (as resolve would have)
            err = layout
        if data_dir and Path(data_dir).expanduser().is_dir():  # a folder laid out otherwise than the run's,
            # perhaps meant as other images to score on
            raise ValueError(f"{str(err).rstrip('.')}; to score the run on other labelled images "
                             f"(DIR/<class>/<image>), give --images DIR instead of --data-dir.") from None
        raise err from None
    if data_dir and not USED_BY["data_dir"][0](config):  # the rule `train` refuses an unused --data-dir by
        raise ValueError(f"eval: {run.path} trained on {config.data.dataset}, which ships inside a package "
                         f"(scikit-learn), so --data-dir would change nothing; drop it.")
    return config


def _labelled_test(run: RunDir, options: dict[str, Any], folder: Path, *, device: str) -> tuple:
    """(config, network, checkpoint, test loader, files) to score the run on the labelled images of ``folder``
    (``predict.labelled_images``), read as its test images were; the run's own folder is not needed."""
    config = resolve(options, read_folder=False, device=device)
    if config.data.dataset == PYTHON_DATA:
        raise ValueError(f"eval: {run.path} was trained on batches given from Python, whose preprocessing locallearn "
                         f"does not know; evaluate it from Python (locallearn.training.load_net).")
    net, checkpoint = trained_net(run, config, reader="eval")
    spec = input_spec(config, net.class_names)
    files, pixels, labels = labelled_images(folder, net.class_names, spec)
    test = BatchLoader(pixels, labels, spec=spec, batch_size=config.optim.batch_size, train=False,
                       seed=config.run.seed, device=next(net.parameters()).device)
    return config, net, checkpoint, test, [str(path) for path in files]


def _refuse_more_classes(run: RunDir, data_dir: str, options: dict[str, Any]) -> None:
    """Refuse an image folder given to ``eval`` that holds more classes than the run was trained with (fewer
    is a run's own, trained with --num-classes above its folder's), naming at most five of them."""
    spec = describe_dataset(IMAGEFOLDER, data_dir, image_size=options.get("image_size"),
                            test_fraction=options.get("test_fraction"))
    classes = options.get("num_classes")
    if isinstance(classes, int) and spec.num_classes > classes:
        names = list(spec.class_names or ())
        shown = ", ".join(names[:5]) + (f", … ({len(names) - 5} more)" if len(names) > 5 else "")
        raise ValueError(f"eval: {run.path} was trained with {classes} classes but {data_dir} holds "
                         f"{spec.num_classes} ({shown}); give the run's own data with --data-dir, or move the "
                         f"classes added since out of it.")


def eval_command(
    run_dir: Path, device: str = "auto", data_dir: str | None = None, precise_bn: int | None = None,
    per_class: bool = False, confusion: Path | None = None, misclassified: Path | None = None,
    images: Path | None = None,
) -> int:
    """``locallearn eval RUN_DIR``."""
    if confusion is not None:
        check_confusion_path(confusion)  # before the data is read
    if misclassified is not None:
        check_misclassified_path(misclassified)
    if confusion is not None and misclassified is not None and confusion.resolve() == misclassified.resolve():
        raise ValueError(f"--confusion and --misclassified name the same file ({confusion}), and the second would "
                         f"overwrite the first; give each its own file.")
    result = evaluate_run(run_dir, device=device, data_dir=data_dir, precise_bn=precise_bn, images=images,
                          confusion=per_class or confusion is not None, predictions=misclassified is not None)
    recomputed = ""
    if result["precise_bn_batches"] is not None:
        batches = result["precise_bn_batches"]
        every = f" (all there are; {precise_bn} asked)" if batches < precise_bn else ""
        recomputed = (f"; BatchNorm statistics recomputed on {batches} training batch{'' if batches == 1 else 'es'}"
                      f"{every}, not saved")
    where = f" ({result['read_from']})" if result["read_from"] else ""  # the files found, which --data-dir may not hold
    print(
        f"{run_dir}: test accuracy {100 * result['test_acc']:.2f}% (test loss {result['test_loss']:.4g}) on "
        f"{result['test_images']} test images{where}, checkpoint after epoch {result['epoch']}/{result['epochs']}"
        f"{recomputed}"
    )
    if result["test_change"]:
        what = (f"{result['run_test_images']} images at epoch {result['epoch']}, this evaluation on "
                f"{result['test_images']}" if result["test_change"] == "count" else
                f"other images at epoch {result['epoch']} than this evaluation (as many, {result['test_images']}, "
                f"but other pixels, labels or order)")
        print(f"note: the run tested on {what}: the test data has changed since (a folder that grew, a file "
              f"replaced, --data-dir, or another Pillow decoding the images), so these figures are not the run's "
              f"own.")
    if per_class:
        print(per_class_table(result["confusion"], result["class_names"]))
    if confusion is not None:
        title = f"{run_dir}: epoch {result['epoch']}, {result['test_images']} test images"
        write_confusion(confusion, result["confusion"], result["class_names"], title=title)
        print(f"confusion matrix (rows: true class, columns: predicted) written to {confusion}")
    if misclassified is not None:
        rows = write_misclassified(misclassified, result, result["class_names"], result["files"])
        print(f"{rows} misclassified test image{'' if rows == 1 else 's'}, the most confident first, written to "
              f"{misclassified}")
    return 0


def predict_command(run_dir: Path, paths: list[Path], top: int = 1, out: Path | None = None,
                    device: str = "auto") -> int:
    """``locallearn predict RUN_DIR IMAGE_OR_FOLDER...``: a line per image (or a CSV row with ``out``); exit
    status 1 when a file could not be read (each named, the others classified)."""
    if out is not None:
        check_output_path(out, "--out", (".csv",), "a table")
    rows, unread = [], 0
    for p in predict(run_dir, paths, top=top, device=device, log=lambda line: print(line, file=sys.stderr)):
        if p.error is not None:
            unread += 1
            print(f"{p.file}: not read: {p.error}", file=sys.stderr)
        elif out is None:
            print(f"{p.file}: " + ", ".join(f"{c} {100 * v:.1f}%" for c, v in zip(p.classes, p.probabilities)))
        rows.append(p)
    if out is not None:
        write_predictions(out, rows)
        print(f"{len(rows) - unread} image{'' if len(rows) - unread == 1 else 's'} classified by {run_dir}, "
              f"written to {out}")
    if unread:
        others = "the others were classified" if unread < len(rows) else "none was classified"
        print(f"predict: {unread} of {len(rows)} files could not be read (named above); {others}.", file=sys.stderr)
    return 1 if unread else 0


def list_command() -> int:
    """``locallearn list``: every name a user can choose, and the shipped presets."""
    from locallearn.models.registry import FAMILY_HEADS

    for kind, names in locallearn.registries().items():
        family = ", ".join(f"{head} on {kind_} models" for kind_, head in FAMILY_HEADS.items())
        extra = f", auto (the model family's: {family})" if kind == "aux_heads" else ""
        print(f"{kind.replace('_', ' ')}: {', '.join(names)}{extra}")
    print("method defaults (any option overrides them):")
    for name in METHODS.names():
        method = METHODS.get(name)
        k = method.num_modules
        options = ", ".join(f"{key}={value}" for key, value in method.defaults.items() if key != "num_modules")
        print(f"  {name}: {method.description}; K={k}; {options}")
    names = presets()
    print(f"presets ({len(names)}; `locallearn train --config NAME`):")
    for name in names:
        print(f"  {name}")
    return 0


def report_command(run_dirs: list[Path], out: Path | None = None) -> int:
    """``locallearn report RUN_DIR...``: OUT/report.md (default runs/report/, also printed), OUT/report.png and
    OUT/curves.png; what could not be grouped, and where the files are, on stderr. Exit status 1 when a damaged
    run was left out of the report of the others (scripts notice), 0 otherwise."""
    report = write_report(run_dirs) if out is None else write_report(run_dirs, out=out)
    for warning in report.warnings:
        print(warning, file=sys.stderr)
    print(report.markdown, end="")
    print(f"report: wrote {report.markdown_path}, {report.plot_path} and {report.curves_path}", file=sys.stderr)
    return 1 if report.damaged else 0
