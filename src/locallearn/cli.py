"""The `locallearn` console script. Each subcommand is a plain function elsewhere in the package; this
module only declares arguments. A parser stores its function as ``_run``; `main` calls it with the parsed
options as keyword arguments and returns its exit status.

Errors a user can fix (ValueError, which includes DatasetError and config errors, and OSError) print one
line, ``locallearn: error: <message>``, and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

PROG = "locallearn"


def _add_data(commands: argparse._SubParsersAction) -> None:
    from locallearn.data import DATASETS, DEFAULT_ROOT
    from locallearn.data.commands import data_check, data_download

    data = commands.add_parser("data", help="download and check the datasets of the papers")
    actions = data.add_subparsers(dest="_action", required=True, metavar="ACTION")
    for action, run, help_text in (
        ("download", data_download, "fetch the official archive, verify its MD5 and unpack it"),
        ("check", data_check, "report which files are present, missing or corrupt"),
    ):
        parser = actions.add_parser(action, help=help_text, description=help_text)
        parser.add_argument("name", metavar="NAME", help=f"dataset: {', '.join(DATASETS.names())}")
        parser.add_argument(
            "--root", type=_path, default=Path(DEFAULT_ROOT), help=f"data directory (default: {DEFAULT_ROOT})"
        )
        parser.set_defaults(_run=run)


def _path(text: str) -> Path:
    """A path argument, ``~`` expanded: a quoted ``"~/x"`` or ``--out=~/x`` (which the shell leaves as typed)
    means the home folder, as it does unquoted, not a folder named "~" here."""
    return Path(os.path.expanduser(text))


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace("[", "").replace("]", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _yaml_value(text: str) -> Any:
    from locallearn.training.config import load_yaml  # the strict loader of config files: duplicate keys refused

    try:
        return load_yaml(text, repr(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None


FLAG_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": str},
    "int": {"type": int},
    "float": {"type": float},
    "floats": {"type": _floats},
    "yaml": {"type": _yaml_value},
    "bool": {"action": argparse.BooleanOptionalAction},
}


def train_flags() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(--flag-name, add_argument kwargs)`` for every option of a run (``training.config.FLAGS``). Flags
    that are not given stay out of the parsed options (``SUPPRESS``), so a ``--config`` file's values
    survive them; each help text says where the default comes from."""
    from locallearn.training.config import FLAGS

    for name, (kind, help_text) in FLAGS.items():
        kwargs = dict(FLAG_TYPES[kind])
        if "type" in kwargs:
            kwargs["metavar"] = name.upper()
        yield f"--{name.replace('_', '-')}", dict(kwargs, dest=name, default=argparse.SUPPRESS, help=help_text)


def _add_train(commands: argparse._SubParsersAction) -> None:
    from locallearn.commands import train

    about = (
        "train a network with local learning into a run directory; with no arguments, ResNet-32 with ContSup "
        "on the bundled digits dataset (a few minutes on a CPU). Flags override the --config file."
    )
    parser = commands.add_parser("train", help="train a network (paper recipes: --config PRESET)", description=about)
    parser.add_argument(
        "--config", metavar="FILE_OR_PRESET", help="YAML config file, or a preset name (locallearn list)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the interrupted run in --out (or start it if there is none)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print the resolved config.yaml (cuts, λ, parameters, learning rates) and stop: nothing is trained "
        "or written",
    )
    for flag, kwargs in train_flags():
        parser.add_argument(flag, **kwargs)
    parser.set_defaults(_run=train)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    from locallearn.commands import eval_command

    about = "test accuracy of a saved run"
    parser = commands.add_parser("eval", help=about, description=about)
    parser.add_argument("run_dir", metavar="RUN_DIR", type=_path, help="a directory written by `locallearn train`")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--data-dir", default=None, help="dataset directory (default: the run's data_dir)")
    parser.add_argument("--images", type=_path, default=None, metavar="DIR",
                        help="score the run on other labelled images instead of its test split: DIR/<class>/<image>, "
                             "the folders named by the run's classes (some may be missing), each image read as the "
                             "run's test images were")
    parser.add_argument("--precise-bn", type=int, default=None, metavar="BATCHES",
                        help="first recompute BatchNorm statistics as the average over BATCHES training batches "
                             "(\"precise BN\"; the checkpoint is not changed)")
    parser.add_argument("--per-class", action="store_true",
                        help="also print each class's test images, accuracy and the class it is most often "
                             "taken for")
    parser.add_argument("--confusion", type=_path, default=None, metavar="FILE",
                        help="write the confusion matrix (rows: true class, columns: predicted) to FILE: .csv "
                             "for the counts, .png for a picture")
    parser.add_argument("--misclassified", type=_path, default=None, metavar="FILE.csv",
                        help="write every misclassified test image (its index, an image folder's file, its class, "
                             "the class predicted, the confidence) to FILE.csv, the most confident mistakes first")
    parser.set_defaults(_run=eval_command)


def _add_predict(commands: argparse._SubParsersAction) -> None:
    from locallearn.commands import predict_command

    about = "the classes a saved run gives to image files"
    parser = commands.add_parser(
        "predict", help=about, description=about + ", each read as the run's test images were read (resized, "
        "centre square, normalised); one line per image, or a CSV table with --out")
    parser.add_argument("run_dir", metavar="RUN_DIR", type=_path, help="a directory written by `locallearn train`")
    parser.add_argument("paths", metavar="IMAGE_OR_FOLDER", type=_path, nargs="+",
                        help="image files, or folders whose image files (by extension, recursively) are read")
    parser.add_argument("--top", type=int, default=1, metavar="K",
                        help="the K most probable classes of each image (default: 1)")
    parser.add_argument("--out", type=_path, default=None, metavar="FILE.csv",
                        help="write the predictions to FILE.csv (file, class, probability, ...) instead of printing "
                             "them")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.set_defaults(_run=predict_command)


def _add_list(commands: argparse._SubParsersAction) -> None:
    from locallearn.commands import list_command

    about = "models, methods, heads, losses, context modes, datasets and presets"
    parser = commands.add_parser("list", help=about, description=about)
    parser.set_defaults(_run=list_command)


def _add_report(commands: argparse._SubParsersAction) -> None:
    from locallearn.commands import report_command

    about = ("markdown table (method × K: test error mean ± std over seeds, memory, time) and a plot of error "
             "against K; runs are averaged only when their options differ in nothing but the seed (a second run of the "
             "same seed is left out, with a warning)")
    parser = commands.add_parser("report", help=about, description=about)
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", type=_path,
                        help="run directories, or folders of them (the runs one or two levels below, as in runs/ or "
                             "a `bench accuracy --out`)")
    parser.add_argument(
        "--out", type=_path, default=None,
        help="write report.md, report.png and curves.png here (default: runs/report/); the markdown is also printed",
    )
    parser.set_defaults(_run=report_command)


def _default(cls: type, name: str) -> Any:
    """A bench flag's default: the field ``name`` of the dataclass that runs it (the one place it is set), a
    tuple as the comma-separated text the flag takes."""
    value = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def _add_bench(commands: argparse._SubParsersAction) -> None:
    from locallearn.bench.commands import bench_memory, bench_speed
    from locallearn.bench.grid import GridSpec
    from locallearn.bench.runner import RunOptions
    from locallearn.decoders import FEATURE_DECODERS
    from locallearn.heads import HEADS

    bench = commands.add_parser(
        "bench", help="memory, speed and accuracy of every method against e2e; the pipeline's speed-up"
    )
    kinds = bench.add_subparsers(dest="_kind", required=True, metavar="KIND")
    for kind, run, help_text in (
        ("memory", bench_memory, "peak activation bytes of one step per configuration (and GPU peak on cuda)"),
        ("speed", bench_speed, "median step time per configuration, as a ratio to e2e, in interleaved rounds"),
    ):
        parser = kinds.add_parser(kind, help=help_text, description=help_text + "; comma-separated grid values")
        models, methods, ks = (_default(GridSpec, name) for name in ("models", "methods", "num_modules"))
        parser.add_argument("--models", default=models, help=f"models (default: {models})")
        parser.add_argument("--methods", default=methods, help=f"methods; e2e is always added (default: {methods})")
        parser.add_argument("--num-modules", default=ks, help=f"K values (default: {ks})")
        parser.add_argument("--splits", default=None,
                            help="default (paper where the model has published cuts for the K, else auto), paper, "
                                 "balanced, auto, uniform, stages (default: default)")
        parser.add_argument("--contexts", default=None,
                            help=f"ContSup context modes (default: {_default(GridSpec, 'contexts')})")
        parser.add_argument("--feature-decoders", default=None,
                            help=f"FeatRecon's feature decoders: {', '.join(FEATURE_DECODERS.names())} (default: "
                                 f"{_default(GridSpec, 'feature_decoders')})")
        parser.add_argument("--aux-heads", default=None,
                            help=f"auxiliary heads of the local methods: {', '.join(HEADS.names())} "
                                 "(default: each method's own)")
        sizes = _default(GridSpec, "batch_sizes")
        parser.add_argument("--batch-sizes", default=sizes, help=f"batch sizes (default: {sizes})")
        parser.add_argument("--image-size", type=int, default=None, help="input size (default: each model's own)")
        device, warmup, rounds = (_default(RunOptions, name) for name in ("device", "warmup", "rounds"))
        parser.add_argument("--device", default=device, help=f"cpu, cuda or cuda:N (default: {device})")
        parser.add_argument("--warmup", type=int, default=warmup, help=f"unmeasured steps first (default: {warmup})")
        if kind == "speed":
            parser.add_argument("--rounds", type=int, default=rounds,
                                help=f"timed steps per configuration (default: {rounds})")
            parser.add_argument("--compile", action="store_true",
                                help="torch.compile every network (compiled on the untimed warm-up steps)")
        parser.add_argument("--threads", type=int, default=None, help="torch threads (default: unchanged)")
        parser.add_argument("--seed", type=int, default=_default(RunOptions, "seed"))
        parser.add_argument("--out", type=_path, default=Path("runs") / "bench",
                            help="output directory (default: runs/bench, ignored by git)")
        parser.add_argument("--quiet", action="store_true", help="no progress lines")
        parser.set_defaults(_run=run)
    _add_accuracy(kinds)
    _add_pipeline(kinds)


def _add_pipeline(kinds: argparse._SubParsersAction) -> None:
    from locallearn.bench.commands import bench_pipeline
    from locallearn.bench.pipeline import PipelineBench

    about = ("images/s of the module-parallel pipeline on N ranks against the other uses of the same N cores — one "
             "process with N threads and DDP over N ranks — and one process with one thread, in interleaved rounds "
             "of fresh processes; the verdict compares the pipeline with the best of them")
    parser = kinds.add_parser("pipeline", help="the pipeline's speed-up at equal cores", description=about)
    flags = (
        ("ranks", int, "N: processes of the pipeline and of ddp, threads of single_Nt"),
        ("model", str, "model"), ("method", str, "method"), ("num_modules", int, "K, local modules"),
        ("context", str, "context mode of methods that supply context"),
        ("split", str, "split"), ("batch_size", int, "images per batch, every variant"),
        ("batches", int, "measured batches per run"), ("warmup", int, "unmeasured batches first"),
        ("repeats", int, "clean runs wanted per variant"), ("max_rounds", int, "rounds of runs at most"),
        ("variants", str, "variants"),
        ("idle", float, "before each run wait (up to 30 s) until the machine is at most this busy; 1: never wait"),
        ("clean", float, "a run counts when other processes used at most this share of the CPU"),
        ("run_timeout", float, "seconds before a run's processes are killed and the run counted as failed"),
    )
    for name, kind, help_text in flags:
        default = _default(PipelineBench, name)
        shown = "paper where the model has published cuts for the K, else auto" if default is None else default
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default,
                            help=f"{help_text} (default: {shown})")
    parser.add_argument("--out", type=_path, default=Path("runs") / "bench" / "pipeline",
                        help="writes pipeline.json and pipeline.md here (default: runs/bench/pipeline)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(_run=bench_pipeline)


def _add_accuracy(kinds: argparse._SubParsersAction) -> None:
    from locallearn.bench.accuracy import AccuracyGrid
    from locallearn.bench.commands import bench_accuracy

    about = ("test error of every method against K: a grid of real training runs (model × method × K × context × "
             "local loss × seed), one recipe for all, each cell a run directory (an interrupted grid resumes)")
    parser = kinds.add_parser("accuracy", help="test error against K, trained for real", description=about)
    models, methods, ks, seeds = (_default(AccuracyGrid, name)
                                  for name in ("models", "methods", "num_modules", "seeds"))
    parser.add_argument("--models", default=models, help=f"models (default: {models})")
    parser.add_argument("--methods", default=methods, help=f"methods; e2e is always added (default: {methods})")
    parser.add_argument("--num-modules", default=ks, help=f"K of the local methods (default: {ks})")
    parser.add_argument("--contexts", default=None, help="context modes of the context methods (default: their own)")
    parser.add_argument("--local-losses", default=None, help="local losses of every local method (default: their own)")
    parser.add_argument("--seeds", default=seeds, help=f"seeds (default: {seeds})")
    parser.add_argument("--config", metavar="FILE_OR_PRESET", default=None,
                        help="the recipe: a config file without the grid's axes, or a preset (locallearn list), of "
                             "which the recipe is taken (dataset, epochs, batch size, rates, warm-up)")
    for flag, kind, help_text in (
        ("--dataset", str, "dataset (default: digits)"), ("--data-dir", str, "where its files are"),
        ("--epochs", int, "epochs of every cell"), ("--batch-size", int, "batch size"), ("--lr", float, "peak lr"),
        ("--warmup-epochs", int, "warm-up epochs"), ("--limit-train", int, "first N training images"),
        ("--limit-test", int, "first N test images"),
        ("--split", str, "split of the local methods (default: paper where the model has published cuts for the K, "
                         "else auto)"),
        ("--device", str, "cpu, cuda or auto"),
    ):
        parser.add_argument(flag, type=kind, default=None, help=help_text)
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="any other option of `locallearn train`, for the cells that use it (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: unchanged)")
    parser.add_argument("--out", type=_path, default=Path("runs") / "bench" / "accuracy", help="output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="train only cells I, I+N, I+2N, ... of the grid (N processes or machines on one --out)")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: write the table from the cells already finished (the others are listed "
                             "as not run), e.g. after parts of the grid ran in several processes")
    parser.set_defaults(_run=bench_accuracy)


# Subcommand adders, in the order `locallearn --help` lists them.
SUBCOMMANDS = [_add_train, _add_eval, _add_predict, _add_list, _add_report, _add_data, _add_bench]


class _Parser(argparse.ArgumentParser):
    """Usage errors (unknown flag, bad value) in one line, as every other error, instead of the usage block.
    Flags must be spelled out: an abbreviation (``--epoch`` for ``--epochs``) is an unknown flag, so a typo
    never silently lands on a neighbouring option."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        if _other_rank():  # under torchrun every rank parses the same command line: rank 0 says it
            self.exit(2)
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Greedy local learning (ContSup, FeatRecon, InfoPro, DGL) for deep networks."
    )
    commands = parser.add_subparsers(dest="_command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    return parser


def _other_rank() -> bool:
    """Whether this process is a rank other than 0 of a torchrun job (whose rank 0 reports errors and Ctrl-C)."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    return rank.isdigit() and world.isdigit() and int(world) > 1 and int(rank) > 0


# what an operating-system error a command meets usually asks of the user, by errno
_OS_FIXES = {
    errno.EEXIST: "a file stands where a directory is needed; give another path",
    errno.ENOTDIR: "a file stands where a directory is needed; give another path",
    errno.EISDIR: "a directory stands where a file is needed; give another path",
    errno.EACCES: "check its permissions",
    errno.EPERM: "check its permissions",
    errno.EROFS: "the file system is read-only; give a writable path",
    errno.ENOSPC: "the disk is full; free space or give another path",
}


def os_message(err: OSError) -> str:
    """An operating-system error as one line: the path, what went wrong and, for the usual causes, the fix
    (``[Errno 17] File exists: 'afile'`` says neither which option nor what to do)."""
    if err.filename is None or err.strerror is None:
        return str(err)
    fix = _OS_FIXES.get(err.errno)
    return f"{err.filename}: {err.strerror.lower()}" + (f"; {fix}." if fix else ".")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = vars(build_parser().parse_args(argv))  # builds the commands: imports torch, which takes a while
    except KeyboardInterrupt:
        if not _other_rank():  # torchrun passes Ctrl-C to every rank: rank 0 says it
            print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    run = args.pop("_run")
    options = {key: value for key, value in args.items() if not key.startswith("_")}
    stdout, sys.stdout = sys.stdout, _OutlivesItsReader(sys.stdout)
    try:
        status = run(**options)
    except BrokenPipeError:  # what was written past the wrapper (`locallearn list | head`): not an error
        _to_devnull(stdout)
        return 0
    except (ValueError, OSError) as err:
        # under torchrun every rank fails alike: rank 0 says it (a rank's own failure reaches rank 0 too, once
        # the ranks have met; one before, every_rank, is said by the rank that met it; one at start-up is told
        # to the job, and said by its rank where rank 0 does not say the same)
        text = " ".join((os_message(err) if isinstance(err, OSError) else str(err)).split())
        if "WORLD_SIZE" in os.environ and os.environ.get("WORLD_SIZE") != "1" and not getattr(err, "every_rank", False):
            from locallearn.distributed.launch import start_failure

            if start_failure(text):
                rank = f"rank {os.environ['RANK']}: " if _other_rank() else ""
                print(f"{PROG}: error: {rank}{text}", file=sys.stderr)
        elif not _other_rank() or getattr(err, "every_rank", False):
            print(f"{PROG}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        if not _other_rank():  # torchrun passes Ctrl-C to every rank: rank 0 says what is kept
            print(f"{PROG}: {str(err) or 'interrupted'}", file=sys.stderr)  # a bare KeyboardInterrupt has no text
        from locallearn.training import interrupt

        return interrupt.exit_status()  # 130 after Ctrl-C, 143 after SIGTERM
    finally:
        sys.stdout = stdout
    return int(status or 0)


def console() -> int:
    """The console script and ``python -m locallearn``: ``main``, and once a Ctrl-C has stopped the command,
    any further one ignored while the process exits (a second press during the seconds torch takes to shut
    down ended it in a traceback and status -2, not 130). A press that lands in a finalizer (a weakref
    callback while the run's objects are freed) anywhere in the process's life is dropped silently, as the
    run's own hook does while it trains: Python would print it as "Exception ignored" after the line that
    said what the first press kept."""
    hook = sys.unraisablehook

    def unraisable(info) -> None:
        if not isinstance(info.exc_value, KeyboardInterrupt):
            hook(info)

    sys.unraisablehook = unraisable  # for the life of the process: the command ends with it
    try:
        status = main()
    except KeyboardInterrupt:  # a second press while main said what the first one stopped
        status = 130
    try:
        if status in (130, 143):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:  # a second press just after main returned
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


class _OutlivesItsReader:
    """A command's standard output that outlives a reader who stops reading: `locallearn train ... | head -3`
    shows three lines and the run goes on to its end (it used to stop in the middle with status 0); the
    rest of the output goes to /dev/null."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _to_devnull(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            _to_devnull(self._stream)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _to_devnull(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null: no second error when Python flushes it again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError, AttributeError):  # a stream without a descriptor (a test's capture)
        pass
