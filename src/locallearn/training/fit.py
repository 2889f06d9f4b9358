"""A whole run: ``fit`` trains a config into its run directory, epoch by epoch, and resumes it after an
interruption. It owns the epochs, the run directory (``rundir.py``: what is written when), resume and
logging; the work of each epoch is a runner's (``runner.py``): in this process, or one per pipeline rank
(``locallearn.distributed.fit_pipeline``, which calls this same function)."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shlex
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch

from locallearn.models.registry import is_object_name
from locallearn.net import LocalNet
from locallearn.provenance import cpu_name, git_revision
from locallearn.training import interrupt
from locallearn.training.config import (
    PYTHON_DATA,
    RESUMABLE_CHANGES,
    Config,
    check_run_options,
    differing_options,
    flatten,
    option,
    read_mapping,
    resolve,
    resumed_config,
    run_id_of,
    run_record,
)
from locallearn.training.rundir import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    CONFIG,
    METRICS,
    START,
    SUMMARY,
    TEST_FILES,
    RunDir,
    rng_state,
    set_rng_state,
)
from locallearn.training.runner import (
    Launcher,
    NonFiniteLossError,
    Runner,
    SingleProcess,
    check_class_names,
    record_pretrained,
    resume_command,
    test_files,
)
from locallearn.training.schedule import Schedule
from locallearn.version import __version__

Log = Callable[[str], None]
# A resume whose network was built from the run's record (runner.net_to_build) has no weights of its own
NOT_RESTORED = ("{run}: no checkpoint could be restored, and the network was built from the recorded configuration of "
                "its pretrained checkpoint, without its weights; start the run again with --overwrite.")
BEST_NOTE = "selected on the test set: for reference only; report test_acc (docs/methods.md §7)"


def fit(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    requested: dict[str, Any] | None = None,
    log: Log = print,
    launcher: Launcher | None = None,
) -> dict[str, Any] | None:
    """Train ``config`` into its run directory (``config.run.out``) and return the summary (None on a
    process that is not the main one).

    ``resume`` continues the run found there (or starts it, if there is none: a job can always pass it);
    the options asked for (``requested``, by default the whole config) must match the stored ones. Without
    ``resume`` an existing run is refused unless ``overwrite``; an existing run is cleared only once the new
    run's data and network have been built. ``launcher``: how processes are arranged (default: this one
    process). The main process holds the run directory's lock throughout.
    """
    if launcher is None:  # the command line's single process: not one of several ranks either
        check_single_process(config)
    elif isinstance(launcher, SingleProcess):  # train(): one process, whichever rank of a script of one's own
        check_single_process(config, ranks=False)
    launcher = launcher or SingleProcess()
    log = log if launcher.is_main else _quiet
    run = RunDir(config.run.out)
    with run.lock() if launcher.is_main else contextlib.nullcontext(), interrupt.stop_between_batches():
        recorded = run.file(START).read_bytes() if launcher.is_main and run.file(START).is_file() else None
        try:
            return _fit(config, run, launcher, resume=resume, overwrite=overwrite, requested=requested, log=log)
        except ValueError:  # refused before it started (bad data, a network that cannot be built): the directory
            if launcher.is_main and not run.file(CONFIG).is_file():  # is left as it was, an earlier start's record
                if recorded is None:  # included (a killed start that `--resume` still continues)
                    run.file(START).unlink(missing_ok=True)
                else:
                    run.write_start(recorded.decode())
            raise


def _fit(config: Config, run: RunDir, launcher: Launcher, *, resume: bool, overwrite: bool,
         requested: dict[str, Any] | None, log: Log) -> dict[str, Any] | None:
    opened = launcher.share(_opened(config, resume, overwrite, requested) if launcher.is_main else None)
    if opened[0] == "error":
        raise ValueError(opened[1])
    _, options, clear, run_id = opened
    config = resolve(options)
    runner = launcher.runner(config, run=run, resume=resume, log=log)  # data and network: checked first
    interrupt.check()  # a Ctrl-C while they were built stops here, before anything is written
    if clear and launcher.is_main:
        run.clear()  # only now that the new run's inputs are known to be good
    elif resume and launcher.is_main:
        run.remove_temporaries()  # a killed writer's half-written file

    state = runner.restore(run) if resume else None
    if resume and state is None and runner.rebuilt:
        raise ValueError(NOT_RESTORED.format(run=run.path))
    changed = check_same_run(config, run_id, state, run, runner.class_names) if state is not None else []
    if state is not None and runner.class_names is None and state.get("class_names"):
        runner.class_names = state["class_names"]  # a resume from Python given no names keeps the run's
    if state is not None and launcher.is_main and run.file(CONFIG).is_file():  # float sums depend on the threads
        threads = read_mapping(run.file(CONFIG)).get("torch_threads")
        if threads is not None and threads != torch.get_num_threads():
            changed.append(f"torch threads ({threads} → {torch.get_num_threads()}; each epoch's are in {METRICS})")
    history: list[dict[str, Any]] = list(state["history"]) if state else []
    if state is not None and "rng" in state:
        set_rng_state(state["rng"])
    if launcher.is_main:
        if not run.file(CONFIG).is_file() or state is None:  # a start, or a resume with nothing to restore: a start
            # with the options it trains with; the header also says what was read and where (a dataset found
            # outside --data-dir) and the processes
            header = provenance() + derived(runner.net, config) + [line.strip() for line in runner.describe()]
            run.write_config(run_record(config.to_dict(), run_id=run_id, threads=torch.get_num_threads(),
                                        header=header))
        run.file(START).unlink(missing_ok=True)  # config.yaml says it now
        if run_id:  # at every start: a run of an earlier release, or one that holds another run's file, gets its own
            record_pretrained(run, runner.net, run_id)
        run.write_metrics(history)  # drops any epoch logged after the checkpoint was taken
        listed = test_files(config) if len(history) < config.optim.epochs or not run.file(TEST_FILES).is_file() else None
        if listed is not None:  # not over the list of a finished run's tests by a resume that trains nothing
            run.write_test_files(listed)
        if len(history) < config.optim.epochs and run.finished:  # resumed from before the end: not finished now
            run.file(SUMMARY).unlink()
    done = len(history)
    parameters = sum(p.numel() for p in runner.net.parameters())
    if launcher.share(done == config.optim.epochs and run.finished if launcher.is_main else None):
        log(f"{run.path} is already finished ({plural(done, 'epoch')}); nothing to resume.")
        runner.close()
        if not launcher.is_main:
            return None
        try:
            return run.read_summary()
        except ValueError as err:  # damaged: it is made from the checkpoint's history, so make it again
            summary = run_summary(history, config, runner, parameters)
            run.write_summary(summary)
            log(f"warning: {err}; written again from the checkpoint's history.")
            return summary

    log_start(log, config, runner, run, parameters, done, changed)
    optim = config.optim
    schedule = Schedule(lr=optim.lr, epochs=optim.epochs, warmup_epochs=optim.warmup_epochs, warmup_lr=optim.warmup_lr,
                        per_step=optim.schedule == "step", steps_per_epoch=runner.steps_per_epoch)
    saved = done  # the epoch of the last checkpoint written
    try:
        for epoch in range(done + 1, config.optim.epochs + 1):
            kept = _kept(run, saved)
            lr = schedule.epoch(epoch)
            try:
                train = runner.train_epoch(epoch, lambda step, e=epoch: schedule.at(e, step))
                test = runner.evaluate()
            except NonFiniteLossError as err:
                raise NonFiniteLossError(f"epoch {epoch}: {err}; training stopped and {kept}. {_diverged(config)}") from None
            if not math.isfinite(test["test_loss"]):  # a diverged network is never kept as a good state
                raise NonFiniteLossError(
                    f"epoch {epoch}: the test loss is not finite ({test['test_loss']:.4g}); training stopped and {kept}. "
                    f"{_diverged(config)}"
                )
            record = epoch_record(epoch, lr, train, test)
            if history and epoch == done + 1 and config.data.dataset != PYTHON_DATA:
                change, before = data_change(history[-1], record, "train"), history[-1].get("train_images")
                if change:
                    what = (f"{record['train_images']} images, epoch {epoch - 1} on {before}" if change == "count" else
                            f"other images than epoch {epoch - 1} (as many, {before}, but other pixels, labels or order)")
                    log(f"note: epoch {epoch} trained on {what}: the training data has changed since the run started "
                        f"(a folder that grew, a file replaced, or --data-dir), so it is no longer the run an "
                        f"uninterrupted one would be.")
            history.append(record)
            try:
                if launcher.is_main:
                    run.append_metrics(record)  # metrics first: the checkpoint is never ahead of metrics.jsonl
                runner.save(run, {"format": CHECKPOINT_FORMAT, "run_id": run_id, "epoch": epoch, "rng": rng_state(),
                                  "config": config.to_dict(), "history": history, "class_names": runner.class_names})
            except OSError as err:  # a full disk: what is kept, and how to go on once there is room
                raise OSError(f"{str(err).rstrip('.')}; epoch {epoch} is lost and {kept}; make room, then "
                              f"`{_resume_command(run, config)}` continues it.") from None
            saved = epoch
            compiled_now = config.run.compile and epoch == done + 1  # a process compiles in its first steps
            log(epoch_line(record, config.optim.epochs) + ("  (time includes compiling)" if compiled_now else ""))
    except KeyboardInterrupt:  # a stop Ctrl-C requested (acted on between batches), or a second Ctrl-C, where it landed
        resume_hint = (f"; `{_resume_command(run, config)}` continues it"
                       if saved or not run.untrained else "; the same command starts it over")  # (an epoch logged)
        kept = f"{interrupt.stopped_how()} in epoch {saved + 1}: {_kept(run, saved)}"
        raise interrupt.Interrupted(f"{kept}{resume_hint}.", kept=kept) from None
    runner.close()
    if not launcher.is_main:
        return None
    summary = run_summary(history, config, runner, parameters)
    run.write_summary(summary)
    log_end(log, summary, run, config)
    return summary


def _diverged(config: Config) -> str:
    """What to do about a diverged run: the learning rate is not a resumable change, so a new run."""
    return (f"Check the data for non-finite values, or start the run again with a lower learning rate "
            f"({option(config.data.dataset, 'overwrite')}, or another {option(config.data.dataset, 'out')}).")


def _quiet(_: str) -> None:
    pass


def _resume_command(run: RunDir, config: Config) -> str:
    """The command that continues this run as it runs now: one process, or the pipeline on the ranks it ran on
    (torchrun sets WORLD_SIZE, and LOCAL_WORLD_SIZE per machine); a run on batches from Python, the call."""
    if config.data.dataset == PYTHON_DATA:
        return resume_command(run, python=True)
    if config.processes.parallel != "pipeline":
        return resume_command(run)
    return resume_command(run, pipeline=True, ranks=os.environ.get("WORLD_SIZE"),
                          per_node=os.environ.get("LOCAL_WORLD_SIZE"))


def _kept(run: RunDir, saved: int) -> str:
    """What an interrupted or diverged run leaves, its last checkpoint being of epoch ``saved``."""
    return f"the last good checkpoint (epoch {saved}) is kept in {run.path}" if saved else "no checkpoint was written"


def _opened(config: Config, resume: bool, overwrite: bool, requested: dict[str, Any] | None) -> tuple:
    """("ok", the options to train with, whether to clear the directory first, the run's id) or ("error",
    message), so that a refusal reaches every process of a job."""
    try:
        config, clear, run_id = open_run(config, resume=resume, overwrite=overwrite, requested=requested)
    except ValueError as err:
        return ("error", str(err))
    run = RunDir(config.run.out)
    if not run.file(CONFIG).is_file():  # a start: its options, before the data and network take their time
        run.write_start(run_record(config.to_dict(), run_id=run_id))
    return ("ok", config.options(), clear, run_id)


def open_run(
    config: Config, *, resume: bool, overwrite: bool, requested: dict[str, Any] | None = None
) -> tuple[Config, bool, str]:
    """Check the run directory against what was asked; returns the config to train with, whether the
    directory's run files must be cleared before training (they are not cleared here: the new run's inputs
    are checked first) and the run's id (the stored one when resuming, else a new one)."""
    run = RunDir(config.run.out)
    resume_, overwrite_, out_ = (option(config.data.dataset, name) for name in ("resume", "overwrite", "out"))
    if resume and overwrite:
        raise ValueError(f"{resume_} and {overwrite_} exclude each other: continue the run, or start it over.")
    if resume and not run.file(CONFIG).is_file() and run.file(START).is_file() and run.untrained:
        # killed while its data and network were built: started again with the options it was started with —
        # or, asked for others (a grid's cell rerun with another recipe), with those: nothing was trained
        mapping, stored = _record(run.file(START))
        wanted = config.options() if requested is None else requested
        try:
            return resumed_config(stored, wanted, out=config.run.out), False, run_id_of(mapping)
        except ValueError:
            return config, False, new_run_id()
    if resume and not run.file(CONFIG).is_file() and run.has_checkpoint():
        restore_config(run)  # lost, but the checkpoint holds the run's options and id
    if resume and run.file(CONFIG).is_file():
        # a checkpoint left: checkpoint.pt, the one before, or a pipeline's stage files. Without one, a run with
        # results has lost its checkpoints, and starting again would replace them
        results = run.results()
        if results and not run.has_checkpoint(stages=True):
            raise ValueError(
                f"{resume_}: {run.path} holds results ({', '.join(results)}) but no {CHECKPOINT} to continue from, "
                f"and starting again would replace them; keep them and train elsewhere (another {out_}), or "
                f"start over with {overwrite_}."
            )
        mapping, stored = _record(run.file(CONFIG))
        wanted = config.options() if requested is None else requested
        return resumed_config(stored, wanted, out=config.run.out), False, run_id_of(mapping)
    if resume and run.started:
        raise ValueError(
            f"{resume_}: {run.path} holds {', '.join(run.present())} but no {CONFIG}, so which run they belong to "
            f"is unknown; put its {CONFIG} back, or start over with {overwrite_}."
        )
    if resume:  # never started, or killed before anything was written: start it
        return config, False, new_run_id()
    if run.started:
        if not overwrite and not run.untrained:  # one stopped in its first epoch is started over: nothing is lost
            what = "a finished run" if run.finished else f"an unfinished run ({resume_} continues it)"
            raise ValueError(f"{run.path} already holds {what}; pass {overwrite_} to replace it, or choose another {out_}.")
        return config, True, new_run_id()
    return config, False, new_run_id()


def recorded_options(out: Path | str) -> dict[str, Any] | None:
    """The options the run in ``out`` was started with (its config.yaml, or the start record of a run stopped
    before it wrote one), or None where it has none that reads soundly (``open_run`` then says what is wrong)."""
    run = RunDir(Path(out))
    for name in (CONFIG, START):
        if run.file(name).is_file():
            try:
                return _record(run.file(name))[1]
            except (ValueError, OSError):
                return None
    return None


def restore_config(run: RunDir) -> bool:
    """Write ``run``'s lost config.yaml again from its checkpoint (checkpoint.pt, else checkpoint.prev.pt),
    which holds the options the run was started with and its id, with the thread count of its last epoch;
    False where no sound checkpoint of this release's form holds them (nothing is written then)."""
    try:
        state = run.load_checkpoint(fallback=True, log=lambda line: None)
    except ValueError:
        return False
    if not state or "config" not in state or not state.get("run_id") or state.get("format", CHECKPOINT_FORMAT) < CHECKPOINT_FORMAT:
        return False  # (an earlier release's checkpoint holds its config in another form)
    history = state.get("history") or [{}]
    header = [f"written again from the checkpoint of epoch {state.get('epoch')} after {CONFIG} was lost: the run's "
              f"options and id; not the header it started with (versions, cuts, data read)"]
    run.write_config(run_record(state["config"], run_id=state["run_id"], header=header,
                                threads=history[-1].get("torch_threads", torch.get_num_threads())))
    return True


def _record(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's record (config.yaml, or the start record): its mapping as written (with the run's id) and the
    flat options it gives, checked."""
    mapping = read_mapping(path)
    return mapping, check_run_options(flatten(mapping, str(path)), path)


def nothing_to_resume(out: Path | str) -> str | None:
    """The note a resume of ``out`` gives where no run was started there (a mistyped path: the run starts
    now), else None."""
    if RunDir(Path(out)).started:
        return None
    return f"note: {out} holds no run to resume: it starts now (a resume starts a run that is not there yet)."


def new_run_id() -> str:
    return uuid.uuid4().hex


def check_same_run(
    config: Config, run_id: str, state: dict[str, Any], run: RunDir, class_names: list[str] | None = None
) -> list[str]:
    """A checkpoint resumed from must be this run's: the same id as config.yaml (where it has one) and the
    same options as config.yaml (but where the run lives and runs), else a one-line refusal naming them.
    Returns how this session runs it otherwise than the session that wrote the checkpoint (``name (a → b)``
    for each ``RESUMABLE_CHANGES`` option but ``out``), which the start log names: config.yaml keeps the
    options the run was started with. Data whose classes are not the checkpoint's (another image folder
    behind the same --data-dir) is refused too: its labels would mean other classes."""
    where = run.file(CHECKPOINT)
    resume_, overwrite_ = option(config.data.dataset, "resume"), option(config.data.dataset, "overwrite")
    fix = ("pass the run's class_names=, or start a new run with another out=." if config.data.dataset == PYTHON_DATA
           else "point --data-dir at the run's data, or start a new run with another --out.")
    check_class_names(state.get("class_names"), class_names, where=f"{resume_}: {run.path}", fix=fix)
    if run_id and state.get("run_id") not in (None, run_id):
        raise ValueError(
            f"{resume_}: {where} belongs to another run than {run.file(CONFIG)} (run id {state['run_id'][:8]}… against "
            f"{run_id[:8]}…); start over with {overwrite_}."
        )
    written = written_config(state, where, data_dir=config.data.data_dir)
    if written is None:
        return []
    differing = differing_options(written, config, ignore=RESUMABLE_CHANGES)
    if differing:
        raise ValueError(
            f"{resume_}: {where} was written with other options than {run.file(CONFIG)} says: {', '.join(differing)}; "
            f"restore the run's own {CONFIG}, or start over with {overwrite_}."
        )
    runs_as = set(RESUMABLE_CHANGES) - {"out", "data_dir"}
    changes = differing_options(written, config, ignore=[k for k in config.options() if k not in runs_as])
    stored_dir = state["config"].get("data", {}).get("data_dir")
    if stored_dir is not None and stored_dir != config.data.data_dir:
        changes.append(f"data_dir ({stored_dir!r} → {config.data.data_dir!r})")
    return changes


def written_config(state: dict[str, Any], where: Path, *, data_dir: str) -> Config | None:
    """The options checkpoint ``state`` (read from ``where``) was written with, the data where it is now
    (``data_dir``: the folder may have moved; an image folder is described by the classes and size the options
    record, so its files are not read); None for a checkpoint of an earlier release, whose config form differs."""
    if state.get("format", CHECKPOINT_FORMAT) < CHECKPOINT_FORMAT or "config" not in state:
        return None
    return resolve({**flatten(state["config"], str(where)), "data_dir": data_dir}, read_folder=False)


def check_single_process(config: Config, *, ranks: bool = True) -> None:
    """Refuse what one process cannot run: the pipeline, or a single-process run started as several ranks
    (torchrun without ``--parallel pipeline``: every rank would train the whole network into the same run
    directory)."""
    if config.processes.parallel == "pipeline" and not ranks:  # train(): batches or a model object from Python
        raise ValueError(
            "parallel: locallearn.training.train runs in this one process, so not as a pipeline; a pipeline trains "
            "a dataset or an image folder, its model named (a registered name, or 'package.module:factory'), with "
            "`torchrun --nproc-per-node 2 -m locallearn train --parallel pipeline ...` (from Python: "
            "locallearn.distributed.fit_pipeline with such a config)."
        )
    if config.processes.parallel == "pipeline":
        raise ValueError(
            f"parallel: --parallel {config.processes.parallel} runs one process per rank: start it with torchrun "
            f"(`torchrun --nproc-per-node 2 -m locallearn train --parallel pipeline ...`), or from Python with "
            f"locallearn.distributed.fit_pipeline."
        )
    if config.processes.parallel != "none":  # a runner of its own chooses its launcher (commands.train)
        raise ValueError(f"parallel: --parallel {config.processes.parallel} runs with its own launcher, not in this "
                         f"single process; start it with `locallearn train --parallel {config.processes.parallel}`.")
    world = os.environ.get("WORLD_SIZE")
    if ranks and world is not None and world.isdigit() and int(world) > 1:
        raise ValueError(
            f"parallel: this process is one of {world} ranks (torchrun) but --parallel is none, so every rank "
            "would train the whole network into the same run directory; add --parallel pipeline, or start one process."
        )


# --- records ------------------------------------------------------------------------------------------------
_TEST = ("test_acc", "test_loss", "test_images", "test_data", "eval_time_s")
_TIMING = ("train_time_s", "images_per_s", "peak_memory_mb", "peak_memory_kind")


def data_change(before: dict[str, Any], now: dict[str, Any], split: str) -> str | None:
    """How the ``split`` ("train" or "test") of ``now`` differs from that of ``before`` (two records, or an
    evaluation's result): "count" (``{split}_images``), else "content" (``{split}_data``, the split's
    ``BatchLoader.fingerprint``: as many images, but other pixels, labels or order); None where they agree or a
    record lacks the figure (an earlier release's). A dataset's split follows from its options, so either is
    data that changed (batches from Python may vary by design: callers do not ask)."""
    for change, key in (("count", f"{split}_images"), ("content", f"{split}_data")):
        if None not in (before.get(key), now.get(key)) and before[key] != now[key]:
            return change
    return None


def epoch_record(epoch: int, lr: float, train: dict[str, Any], test: dict[str, Any]) -> dict[str, Any]:
    """One line of metrics.jsonl. Deterministic fields first; *_time_s, images_per_s are wall-clock; what a
    runner adds to its test results beyond accuracy and loss (the pipeline's per-rank figures) comes last."""
    per_step = {k: v for k, v in train.items() if k not in _TIMING}
    return {
        "epoch": epoch,
        "lr": lr,
        **per_step,
        "test_acc": test["test_acc"],
        "test_loss": test["test_loss"],
        # eval compares these with its own test data's
        **{key: test[key] for key in ("test_images", "test_data") if key in test},
        "epoch_time_s": train["train_time_s"] + test["eval_time_s"],
        "train_time_s": train["train_time_s"],
        "images_per_s": train["images_per_s"],
        "peak_memory_mb": train["peak_memory_mb"],
        "peak_memory_kind": train["peak_memory_kind"],
        "torch_threads": torch.get_num_threads(),  # a resume may run on others than config.yaml records
        **{k: v for k, v in test.items() if k not in _TEST},
    }


def run_summary(history: list[dict[str, Any]], config: Config, runner: Runner, parameters: int) -> dict[str, Any]:
    """summary.json of a finished run: ``summarize``'s figures, the training data's class names where it names
    them (an image folder), and the runner's own figures (a pipeline's ranks)."""
    names = {"class_names": runner.class_names} if runner.class_names else {}
    return {**summarize(history, config=config, net=runner.net, parameters=parameters), **names,
            **runner.summary(history)}


def summarize(history: list[dict[str, Any]], *, config: Config, net: LocalNet, parameters: int) -> dict:
    """summary.json: the final-epoch test accuracy is the result; the best epoch is labelled as such."""
    last = history[-1]
    best = max(history, key=lambda r: (r["test_acc"], -r["epoch"]))
    train_time = sum(r["train_time_s"] for r in history)
    images = sum(r["images_per_s"] * r["train_time_s"] for r in history)
    return {
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "epochs": last["epoch"],
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "best_note": BEST_NOTE,
        "parameters": parameters,
        "train_time_s": train_time,
        "total_time_s": sum(r["epoch_time_s"] for r in history),
        "images_per_s": images / train_time if train_time else 0.0,
        "peak_memory_mb": max(r["peak_memory_mb"] for r in history),
        "peak_memory_kind": last["peak_memory_kind"],
        "model": config.net.model,
        "method": config.net.method,
        "num_modules": config.net.num_modules,
        "context": config.net.context,
        "local_loss": config.net.local_loss,
        "dataset": config.data.dataset,
        "net": net.describe(),
        "device": device_name(next(net.parameters()).device),
        "cpu": cpu_name(),  # the host's, with the SIMD level torch uses: CPU times and float sums depend on it
        "versions": versions(),
        "options": config.options(),  # what the run trained with: `report` checks config.yaml against it
    }


def device_name(device: torch.device) -> str:
    """``cpu``, or the accelerator's model (``cuda: NVIDIA H200``): where a run trained, for summary.json."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


# --- what is printed ----------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    return {"locallearn": __version__, "torch": torch.__version__, "git": git_revision() or "unknown"}


def provenance() -> list[str]:
    v = versions()
    return [
        "Resolved config of this run: every option of `locallearn train`, defaults included.",
        f"locallearn {v['locallearn']}, git {v['git']}, torch {v['torch']}, Python {platform.python_version()}, "
        f"{plural(torch.get_num_threads(), 'torch thread')}, {time.strftime('%Y-%m-%d %H:%M:%S')}",
    ]


def derived(net: LocalNet, config: Config | None = None) -> list[str]:
    """What the build derived from the config, for config.yaml's header and the start log: the cuts, with
    reconstruction the λ schedule and where it came from (a table, or the documented default), and a warm-up
    that starts above the peak or that the run has no room for."""
    lines = [f"cuts: {net.describe()['cuts']}"]
    if net.lambda_schedule:
        lambdas = ", ".join(f"({xx:g}, {xy:g})" for xx, xy in net.lambda_schedule)
        lines.append(f"λ (reconstruction, task) per local module: {lambdas}; {net.lambda_source}")
    optim = config.optim if config is not None else None
    if optim is not None and optim.warmup_used and optim.warmup_lr > optim.lr:
        lines.append(f"warm-up: from {optim.warmup_lr:g}, above the peak lr {optim.lr:g}, down to it (give a lower "
                     f"--warmup-lr for a warm-up that rises)")
    if optim is not None and optim.warmup_epochs and not optim.warmup_used:
        lines.append(f"warm-up: none — {plural(optim.epochs, 'epoch')} {'leaves' if optim.epochs == 1 else 'leave'} "
                     f"no room for {plural(optim.warmup_epochs, 'warm-up epoch')}, so the learning rate is a cosine "
                     f"from its peak")
    return lines


def log_start(log: Log, config: Config, runner, run: RunDir, parameters: int, done: int,
              changed: list[str] = ()) -> None:
    net, optim = config.net, config.optim
    head = f"K={net.num_modules}"
    if net.num_modules > 1:
        head += f", {net.aux_head} heads, {net.local_loss} loss, context {net.context}"
        head += ", image reconstruction" if net.reconstruct else ""
        head += f", feature reconstruction by {net.feature_decoder} decoders" if net.feature_decoder else ""
    if optim.optimizer == "sgd":
        settings = f"SGD lr {optim.lr} (momentum {optim.momentum}{', nesterov' if optim.nesterov else ''}, weight decay {optim.weight_decay})"
    else:
        settings = f"AdamW lr {optim.lr} (weight decay {optim.weight_decay}, none on biases and norms)"
    warmup = f"{optim.warmup_used} warm-up epochs + cosine" if optim.warmup_used else "cosine, no warm-up"
    warmup += ", per step" if optim.schedule == "step" else ""
    log(f"locallearn train: {net.model} / {net.method} ({head}) on {config.data.dataset}")
    options = [f"amp {config.run.amp}"] if config.run.amp != "none" else []
    options += ["compiled"] if config.run.compile else []
    options += ["channels-last"] if config.run.channels_last else []
    log(f"  recipe: {plural(optim.epochs, 'epoch')}, batch {optim.batch_size}, {settings}, "
        f"{warmup}, seed {config.run.seed}" + "".join(f", {option}" for option in options))
    log(f"  network: {parameters:,} parameters, " + "; ".join(derived(runner.net, config)))
    if net.num_modules > 1:
        log(f"  loss: the sum of the {net.num_modules} modules' local losses (each in metrics.jsonl)")
    for line in runner.describe():
        log(line)
    log(f"  run directory: {run.path} (resolved config in {CONFIG})"
        + (f"; resuming after epoch {done}" if done else "")
        + (f", now with {', '.join(changed)}" if done and changed else ""))


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    train_acc = record.get("train_acc")
    acc = f"  train acc {100 * train_acc:5.1f}%" if train_acc is not None else ""
    return (
        f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  lr {record['lr']:.4g}  loss {record['train_loss']:.3f}"
        f"{acc}  test acc {100 * record['test_acc']:5.1f}%  {record['epoch_time_s']:.1f} s  "
        f"{record['images_per_s']:.0f} img/s"
    )


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``: a count and its word, in the plural where the count is not one."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def log_end(log: Log, summary: dict[str, Any], run: RunDir, config: Config) -> None:
    minutes, seconds = divmod(round(summary["total_time_s"]), 60)
    log(
        f"done: test accuracy {100 * summary['test_acc']:.2f}% after {plural(summary['epochs'], 'epoch')} "
        f"(best {100 * summary['best_test_acc']:.2f}% at epoch {summary['best_epoch']}, selected on the test set), "
        f"{minutes} min {seconds} s, {summary['images_per_s']:.0f} img/s"
    )
    if is_object_name(config.net.model) or config.data.dataset == PYTHON_DATA:  # nothing on disk rebuilds them
        model = ", model=..." if is_object_name(config.net.model) else ""  # a registered name rebuilds itself
        again = f"`locallearn.training.load_net({str(run.path)!r}{model})` loads its network"
    else:
        again = f"`locallearn eval {shlex.quote(str(run.path))}` re-evaluates it"
    files = ", ".join(name for name in (SUMMARY, METRICS, CONFIG, CHECKPOINT, TEST_FILES) if run.file(name).is_file())
    log(f"results: {run.path}/ ({files}); {again}")
