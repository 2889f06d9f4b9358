"""``locallearn train --parallel pipeline``: the pipeline's launcher and runner for ``training.fit``.

``fit_pipeline`` joins the torchrun job and calls the same ``training.fit`` a single process runs, with a
launcher whose ``share`` broadcasts rank 0's decisions and whose runner is this rank's pipeline stage. The
run directory is the single-process one — config.yaml, metrics.jsonl, checkpoint.pt, summary.json, written by
rank 0 in the same form, each metrics line and the summary with a ``ranks`` list added (per-rank throughput,
compute and waiting time, memory) — plus per-stage checkpoints:

    RUN/pipeline/stage{s}-epoch{e}.pt   stage s's parameters, buffers and optimizer after epoch e
                                        (written by the stage's first replica; the last two epochs kept)

Each epoch: the first stage reads and augments the batches, the pipeline trains them, then evaluates
the test set through the same stages; the ranks' statistics are gathered to rank 0, which appends the
metrics line; every stage writes its checkpoint; rank 0 writes checkpoint.pt — the full model and the
merged optimizer state, exactly what a single-process run writes, so ``locallearn eval`` works on a
pipeline run and either kind of run can resume the other.

Resume (``--resume``) continues from the latest epoch that *every* stage has checkpointed (a failure
while saving leaves the stages at most one epoch apart, hence two kept), or from checkpoint.pt when that
is later or the layout changed. The learning-rate schedule, data order and augmentation depend only on
(seed, epoch), so the resumed run computes what the uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from locallearn.distributed.assign import assign_modules, check_assign, check_layout, measure_module_costs
from locallearn.distributed.launch import DistEnv, env_from_environment, init_distributed, run_guarded, shutdown
from locallearn.distributed.pipeline import (
    Layout,
    PhaseStats,
    PipelineStage,
    check_same,
    make_groups,
    peak_memory,
    peak_rss_mb,
    stage_parts,
    stage_state_keys,
)
from locallearn.net import LocalNet, build_net, check_batch, check_logits
from locallearn.training.config import Config, parse_assign, resolve
from locallearn.training.fit import fit, open_run, plural
from locallearn.training.rundir import PREVIOUS, RunDir, load_state, save_state, seed_everything
from locallearn.training.runner import (
    RESUME_FIX,
    compile_parts,
    data_line,
    epoch_metrics,
    load_data,
    loader_class_names,
    loader_fingerprint,
    make_optimizer,
    net_to_build,
    recorded_run_id,
)

Log = Callable[[str], None]
STAGE_DIR = "pipeline"
KEEP_EPOCHS = 2  # stage checkpoints kept: ranks that failed while saving are at most one epoch apart
MEASURE_BATCH = 128  # the largest batch the "balanced" assignment times
# Options that may differ between ranks: where each one reads data and which device it uses.
PER_RANK_OPTIONS = ("data_dir", "device")


def fit_pipeline(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    requested: dict[str, Any] | None = None,
    log: Log = print,
) -> dict[str, Any] | None:
    """Train ``config`` (``parallel: pipeline``) as this rank of a torchrun job. Returns the summary on rank 0,
    None elsewhere."""
    info = env_from_environment()
    check_start(_to_check(config, resume, requested), int(info["world_size"]))  # refused before any connection
    env = init_distributed(device=config.run.device, fault_timeout_s=config.processes.fault_timeout)

    def job():
        options = config.options()
        # --resume and --overwrite decide what every rank does next (which collectives it joins): the same on all
        check_same({"resume": resume, "overwrite": overwrite}, group=env.ctrl, what="flag")
        check_same({k: v for k, v in options.items() if k not in PER_RANK_OPTIONS}, group=env.ctrl)
        launcher = PipelineLauncher(env, {k: options[k] for k in PER_RANK_OPTIONS})
        summary = fit(config, resume=resume, overwrite=overwrite, requested=requested, log=log, launcher=launcher)
        shutdown(env)
        return summary

    return run_guarded(env, job)


def check_start(config: Config, world_size: int) -> None:
    """What a pipeline of ``world_size`` ranks refuses before connecting (also ``train --dry-run`` under
    torchrun): ranks that do not form stages of the network's modules, ``--pipeline-assign`` counts that do
    not fit them, or a batch the data-parallel replicas cannot share equally (DDP averages their gradients
    with equal weights, which is the full batch's gradient only for equal shares)."""
    stages = check_layout(config.net.num_modules, world_size, config.processes.data_parallel)
    check_assign(config.processes.pipeline_assign, stages, config.net.num_modules)
    replicas, batch = config.processes.data_parallel, config.optim.batch_size
    if batch % replicas:
        raise ValueError(
            f"batch_size: {batch} images do not split equally over --data-parallel {replicas} replicas, whose "
            f"gradients are averaged with equal weights (the full batch's gradient for equal shares only); give a "
            f"multiple of {replicas}, e.g. --batch-size {max(replicas, batch - batch % replicas)}."
        )


def _to_check(config: Config, resume: bool, requested: dict[str, Any] | None) -> Config:
    """The config whose modules the ranks must fit: with --resume, the run's own where this machine holds it
    (its K, not the flags' default); otherwise, or where the run cannot be read here, the flags' (rank 0 then
    says what is wrong with the run once the ranks are connected)."""
    if resume:
        with contextlib.suppress(ValueError, OSError):
            return open_run(config, resume=True, overwrite=False, requested=requested)[0]
    return config


class PipelineLauncher:
    """One rank of the job: rank 0 decides (``share`` broadcasts its value), each rank runs its stage."""

    def __init__(self, env: DistEnv, per_rank: dict[str, Any]) -> None:
        self.env = env
        self.is_main = env.is_main
        self.per_rank = per_rank  # this rank's own data_dir and device, kept over rank 0's decisions

    def share(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.env.ctrl)
        return box[0]

    def runner(self, config: Config, *, run: RunDir, resume: bool, log: Log) -> PipelineRunner:
        config = resolve({**config.options(), **self.per_rank})
        return PipelineRunner(self.env, config, run=run, resume=resume, launcher=self, log=log)


class PipelineRunner:
    """This rank's pipeline stage, as ``training.fit`` drives it (``training.runner.Runner``)."""

    def __init__(
        self, env: DistEnv, config: Config, *, run: RunDir, resume: bool, launcher: PipelineLauncher, log: Log
    ) -> None:
        self.env, self.config, self.launcher = env, config, launcher
        seed_everything(config.run.seed)
        built = net_to_build(config.net, run if resume else None, stages=True)
        self.rebuilt = built is not config.net  # the weights must then come from the run's checkpoints
        self.net = net = build_net(built).to(env.device)
        check_logits(net)
        replicas = config.processes.data_parallel  # each replica of a stage trains on its share of a batch
        check_batch(net, config.optim.batch_size // replicas, f"give --batch-size {2 * replicas} or more (each of the "
                    f"{replicas} data-parallel replicas trains on a share of a batch)" if replicas > 1 else
                    "give --batch-size 2 or more")
        self.stage_dir = run.path / STAGE_DIR
        if self.stage_dir.exists() and not self.stage_dir.is_dir():  # refused now, not at the first epoch's save
            raise ValueError(f"{self.stage_dir} is not a directory (the pipeline keeps its stage checkpoints there); "
                             f"move it away.")
        self.log = log
        # this run's id (config.yaml, on rank 0's file system): stage files of another run are never taken
        self.run_id = launcher.share(recorded_run_id(run) if env.is_main else None) if resume else None
        # this rank's stage (rank // replicas whatever the layout) is the only one whose files it reads; what it
        # finds wrong with them is said by the main process, which alone prints
        stage, warnings = env.rank // replicas, []
        self.found = _sound_stage_files({stage: _stage_checkpoints(self.stage_dir).get(stage, {})}, self.run_id,
                                        warnings.append) if resume else {}
        said: list[Any] = [None] * env.world_size
        dist.all_gather_object(said, warnings, group=env.ctrl)
        for line in dict.fromkeys(line for lines in said for line in lines):  # replicas of a stage say it alike
            log(line)
        self.layout = layout = _choose_layout(env, config, net, self.found)
        self.stage = layout.stage_of(env.rank)
        self.modules = layout.assignment[self.stage]
        self.writer = layout.replica_of(env.rank) == 0  # one file per stage
        self.owned = set(stage_state_keys(net, self.modules))
        links, dp_group, _ = make_groups(layout, backend=env.backend, device_type=env.device.type)
        self.optimizer = make_optimizer(nn.ModuleList(stage_parts(net, self.modules)), config.optim)
        self.groups = full_groups(net, config.optim)  # a single-process optimizer's, for the merged checkpoint
        if config.run.compile:
            compile_parts(net)
        self.first = self.stage == 0
        self.train_loader = load_data(config, train=True, device=env.device, log=log) if self.first else None
        self.test_loader = load_data(config, train=False, device=env.device, log=log) if self.first else None
        self.steps_per_epoch = launcher.share(len(self.train_loader) if env.is_main else None)
        self.class_names = launcher.share(loader_class_names(self.train_loader) if env.is_main else None)
        self.stage_runner = PipelineStage(
            net, layout, env.rank, self.optimizer, device=env.device, sync=config.processes.pipeline_sync,
            autocast_dtype=config.autocast_dtype, links=links, dp_group=dp_group, barrier_group=env.ctrl,
        )
        self._train_reports: list[dict] = []
        if self.writer and not resume:  # a new run: no stage file of an earlier one may be taken for this one's
            _remove_stage_files(self.stage_dir, self.stage)

    # --- the epoch ----------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, lr_at: Callable[[int], float]) -> dict[str, Any]:
        if self.first:
            self.train_loader.set_epoch(epoch)
        train = self.stage_runner.train_phase(self.train_loader, lr_at=lr_at)
        reports: list[Any] = [None] * self.env.world_size
        report = {**_train_report(self.env, self.stage_runner, train), "train_data": loader_fingerprint(self.train_loader)}
        dist.all_gather_object(reports, report, group=self.env.ctrl)
        self._train_reports = reports
        return _merged_train(reports, self.net.num_modules)

    def evaluate(self) -> dict[str, Any]:
        test = self.stage_runner.eval_phase(self.test_loader)
        reports: list[Any] = [None] * self.env.world_size
        report = {**_test_report(self.stage_runner, test), "test_data": loader_fingerprint(self.test_loader)}
        dist.all_gather_object(reports, report, group=self.env.ctrl)
        last = [r for r in reports if r["last"]]
        seen = sum(r["test_images"] for r in last)
        ranks = [{**train, "peak_rss_mb": test["peak_rss_mb"]} for train, test in zip(self._train_reports, reports)]
        data = next(r["test_data"] for r in reports if r["test_data"] is not None)  # the first stage's loader's
        return {
            "test_acc": sum(r["test_correct"] for r in last) / seen,
            "test_loss": sum(r["test_loss_sum"] for r in last) / seen,
            "test_images": seen,
            "test_data": data,
            "eval_time_s": max(r["eval_time_s"] for r in reports),
            "ranks": [{key: r[key] for key in RANK_FIELDS} for r in ranks],
        }

    # --- checkpoints --------------------------------------------------------------------------------------
    def save(self, run: RunDir, state: dict[str, Any]) -> None:
        epoch, env = state["epoch"], self.env
        if self.writer:
            _save_stage(self.stage_dir, self.stage, epoch, {
                **state, "stage": self.stage, "layout": self.layout.to_dict(),
                "model": {k: v for k, v in self.net.state_dict().items() if k in self.owned},
                "optimizer": self.optimizer.state_dict(), "history": state["history"] if self.first else [],
            })
        dist.barrier(group=env.ctrl)  # every stage holds epoch e: older files may go
        if self.writer:
            _prune_stage_files(self.stage_dir, self.stage, keep_from=epoch - KEEP_EPOCHS + 1)
        _save_merged(env, run, self.net, self.optimizer, self.layout, self.groups, state)

    def restore(self, run: RunDir) -> dict[str, Any] | None:
        env = self.env
        merged, problems = self.launcher.share(_checkpoint_epoch(run) if env.is_main else None)
        state, from_stages = _resume(env, run, self.net, self.optimizer, self.groups, self.layout, self.found,
                                     merged, self.stage_dir)
        if problems and env.is_main:  # what was wrong with checkpoint.pt, and what the resume read instead
            if state is None:
                instead = "neither is resumed from"
            elif from_stages:
                instead = f"resuming from the pipeline's stage files (epoch {state['epoch']}) instead"
            else:
                instead = f"resuming from {PREVIOUS} (epoch {merged}) instead"
            self.log(f"warning: {'; '.join(problems)}; {instead}.")
        if state is not None and state["epoch"] > (merged or 0):
            # restored from stage files ahead of checkpoint.pt (stopped between the stage saves and the merged
            # one): write it now, or a run restored at its last epoch would finish with checkpoint.pt (eval,
            # load_net, a resume of another layout) an epoch behind its summary
            rng = self.found[self.stage][state["epoch"]].rng  # the merged checkpoint carries the main process's
            extra = {**state, **({"rng": rng} if rng is not None else {})}  # random state, as save() writes it
            _save_merged(env, run, self.net, self.optimizer, self.layout, self.groups, extra)
        if state is None:  # stage files of another layout, and no checkpoint.pt: refused rather than started over
            latest = _latest(self.found.get(self.stage, {}))
            layouts: list[Any] = [None] * env.world_size
            dist.all_gather_object(layouts, (latest.layout, latest.pipeline_assign) if latest else None,
                                   group=env.ctrl)
            other, assign = next((found for found in layouts if found is not None
                                  and found[0] != self.layout.to_dict()), (None, None))
            if other is not None:  # every rank refuses here: the links are closed in step, as at the end of a run
                self.close()
                ranks = other["stages"] * other["data_parallel"]
                if (other["stages"], other["data_parallel"]) == (self.layout.stages, self.layout.replicas):
                    modules = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in other["modules"])
                    how = (f"stages of modules {modules} (--pipeline-assign {assign or 'balanced'}), which alone "
                           f"can resume from them; resume with --pipeline-assign {_assign_of(other['modules'])}")
                else:
                    how = (f"{other['stages']} stages × {other['data_parallel']} data-parallel ({ranks} ranks), "
                           f"which alone can resume from them; resume with {ranks} ranks (torchrun "
                           f"--nproc-per-node {ranks})")
                raise ValueError(f"--resume: {run.path} has no sound checkpoint.pt, and its pipeline stage files "
                                 f"were written by {how}, or start over with --overwrite.")
            # nothing sound to resume from (damaged or incomplete stage files), but results to lose: refused, as a
            # run without any checkpoint is (training.fit.open_run)
            results = self.launcher.share(run.results() if env.is_main else None)
            if results:
                self.close()
                raise ValueError(f"--resume: {run.path} holds results ({', '.join(results)}) but no sound checkpoint to "
                                 f"continue from (the warnings above name the stage files left out), and starting "
                                 f"again would replace them; keep them and train elsewhere (another --out), or start "
                                 f"over with --overwrite.")
        return state

    # --- reporting ----------------------------------------------------------------------------------------
    def describe(self) -> list[str]:
        layout, env = self.layout, self.env
        stages = ", ".join(f"stage {s}: " + (f"modules {r.start}-{r.stop - 1}" if len(r) > 1 else f"module {r.start}")
                           for s, r in enumerate(layout.assignment))
        data = []
        if self.first:
            data = [data_line(self.train_loader, self.test_loader, env.device, self.config.net.num_classes)]
        return data + [
            f"  pipeline: {plural(env.world_size, 'rank')} = {plural(layout.stages, 'stage')} × {layout.replicas} "
            f"data-parallel, {env.backend}, "
            f"{'lock-step' if self.config.processes.pipeline_sync else 'overlapped'} schedule ({stages})"
        ]

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        return {"pipeline": _pipeline_summary(self.layout, self.config, history)}

    def close(self) -> None:
        self.stage_runner.close()


# --- layout --------------------------------------------------------------------------------------------------
def _choose_layout(env: DistEnv, config: Config, net: LocalNet, found: dict[int, dict[int, StageFile]]) -> Layout:
    """The stored layout when resuming from stage checkpoints of this world size and assignment; otherwise
    rank 0 assigns (timing the modules for "balanced") and broadcasts, so every rank uses the same. (A resume
    with another --pipeline-assign gets it: the stages then start from checkpoint.pt, ``_resume``.)"""
    replicas = config.processes.data_parallel
    stages = check_layout(net.num_modules, env.world_size, replicas)
    chosen: list[Any] = [None]
    if env.is_main:
        latest = _latest(found.get(0, {}))
        stored = latest.layout if latest else None
        if (stored is not None and stored["stages"] == stages and stored["data_parallel"] == replicas
                and latest.pipeline_assign == config.processes.pipeline_assign):
            chosen[0] = [list(r) for r in stored["modules"]]
        else:
            how = parse_assign(config.processes.pipeline_assign)
            costs = None
            if how == "balanced" and stages > 1:
                costs = measure_module_costs(net, batch_size=min(config.optim.batch_size, MEASURE_BATCH), device=env.device)
            chosen[0] = [[r.start, r.stop - 1] for r in assign_modules(net, stages, how, costs=costs)]
    dist.broadcast_object_list(chosen, src=0, group=env.ctrl)
    return Layout(stages, replicas, tuple(range(a, b + 1) for a, b in chosen[0]))


class StageFile(NamedTuple):
    """A sound stage checkpoint, with what choosing the layout and writing checkpoint.pt from it need (read once,
    when it was checked)."""

    path: Path
    layout: dict[str, Any] | None  # Layout.to_dict() of the run that wrote it
    pipeline_assign: str | None
    rng: Any = None  # the writing rank's random state (rng_state), where the file holds it


def _assign_of(modules: list[list[int]]) -> str:
    """The --pipeline-assign counts that give a stored layout's stages ([first, last] module of each)."""
    return ",".join(str(b - a + 1) for a, b in modules)


def _latest(epochs: dict[int, StageFile]) -> StageFile | None:
    """The latest of one stage's checkpoints ({epoch: file})."""
    return epochs[max(epochs)] if epochs else None


# --- checkpoints ---------------------------------------------------------------------------------------------
_STAGE_FILE = re.compile(r"^stage(\d+)-epoch(\d+)\.pt$")


def _stage_file(stage_dir: Path, stage: int, epoch: int) -> Path:
    return stage_dir / f"stage{stage}-epoch{epoch}.pt"


def _stage_checkpoints(stage_dir: Path) -> dict[int, dict[int, Path]]:
    """{stage: {epoch: path}} of the stage checkpoints present on this machine."""
    found: dict[int, dict[int, Path]] = {}
    if stage_dir.is_dir():
        for path in stage_dir.iterdir():
            m = _STAGE_FILE.match(path.name)
            if m:
                found.setdefault(int(m[1]), {})[int(m[2])] = path
    return found


def _sound_stage_files(found: dict[int, dict[int, Path]], run_id: str, log: Log) -> dict[int, dict[int, StageFile]]:
    """The stage files that can be resumed from: readable, matching their digest, and of this run. A damaged
    one is named and left out, so its stage falls back to its older kept epoch."""
    sound: dict[int, dict[int, StageFile]] = {}
    for stage, epochs in found.items():
        for epoch, path in epochs.items():
            try:
                state = load_state(path)
            except ValueError as err:
                log(f"warning: {err}; it is not resumed from.")
                continue
            if run_id and state.get("run_id") != run_id:
                log(f"warning: {path} was left by another run in this directory; it is not resumed from.")
                continue
            assign = state.get("config", {}).get("processes", {}).get("pipeline_assign")
            sound.setdefault(stage, {})[epoch] = StageFile(path, state.get("layout"), assign, state.get("rng"))
    return sound


def _save_stage(stage_dir: Path, stage: int, epoch: int, state: dict[str, Any]) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    save_state(_stage_file(stage_dir, stage, epoch), state)


def _prune_stage_files(stage_dir: Path, stage: int, *, keep_from: int) -> None:
    for epoch, path in _stage_checkpoints(stage_dir).get(stage, {}).items():
        if epoch < keep_from:
            path.unlink(missing_ok=True)


def _remove_stage_files(stage_dir: Path, stage: int) -> None:
    _prune_stage_files(stage_dir, stage, keep_from=1 << 62)


def _resume(
    env: DistEnv,
    run: RunDir,
    net: LocalNet,
    optimizer: torch.optim.Optimizer,
    groups: list[list[torch.nn.Parameter]],
    layout: Layout,
    found: dict[int, dict[int, StageFile]],
    merged_epoch: int | None,
    stage_dir: Path,
) -> tuple[dict[str, Any] | None, bool]:
    """Load this rank's state for the epoch all stages can resume from; returns what ``training.fit`` needs
    of it (epoch, history, the run's id and config), or None to start at epoch 1, and whether it was read from
    the stage files (else from the merged checkpoint)."""
    stage = layout.stage_of(env.rank)
    mine = found.get(stage, {})
    same_layout = bool(mine) and _latest(mine).layout == layout.to_dict()
    latest: list[Any] = [None] * env.world_size
    dist.all_gather_object(latest, max(mine) if mine and same_layout else 0, group=env.ctrl)
    from_stages = min(latest)
    if from_stages == 0 and not merged_epoch:
        return None, False
    if from_stages >= (merged_epoch or 0):
        file = mine.get(from_stages)
        if file is None:
            raise ValueError(
                f"--resume: stage {stage} has no sound checkpoint of epoch {from_stages} in {stage_dir}; the stage "
                "checkpoints are incomplete, start the run over with --overwrite."
            )
        state = load_state(file.path, env.device)
        _load_owned(net, state["model"], layout, stage)
        optimizer.load_state_dict(state["optimizer"])
        histories: list[Any] = [state["history"] if env.is_main else None]
        dist.broadcast_object_list(histories, src=0, group=env.ctrl)
        return {**_identity(state), "epoch": from_stages, "history": list(histories[0])}, True
    # later, or another layout; a fallback to checkpoint.prev.pt is said by the caller (_checkpoint_epoch)
    merged = run.load_checkpoint(map_location=env.device, fallback=True, log=lambda _: None)
    _load_owned(net, merged["model"], layout, stage)
    optimizer.load_state_dict(_split_optimizer_state(merged["optimizer"], groups, optimizer))
    return {**_identity(merged), "epoch": merged["epoch"], "history": list(merged["history"])}, False


def _identity(state: dict[str, Any]) -> dict[str, Any]:
    """What says which run a state belongs to: its format, run id, config and the classes it was trained on."""
    return {k: state[k] for k in ("format", "run_id", "config", "class_names") if k in state}


def _checkpoint_epoch(run: RunDir) -> tuple[int | None, list[str]]:
    """The epoch of the run's sound merged checkpoint (checkpoint.pt, else checkpoint.prev.pt), or None, and what
    is wrong with those that are not sound (said once the resume knows what it reads instead: stage files ahead
    of them, or with neither sound, are resumed from all the same)."""
    problems: list[str] = []
    state = run.load_checkpoint(fallback=True, problems=problems)
    return (None if state is None else state["epoch"]), problems


def _load_owned(net: LocalNet, state: dict[str, torch.Tensor], layout: Layout, stage: int) -> None:
    keys = stage_state_keys(net, layout.assignment[stage])
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"--resume: the checkpoint of stage {stage} lacks {missing[0]!r}; it belongs to another "
                         f"network: {RESUME_FIX}.")
    own = net.state_dict()
    wrong = next((k for k in keys if state[k].shape != own[k].shape), None)
    if wrong is not None:  # load_state_dict's own error is a multi-line RuntimeError
        raise ValueError(f"--resume: the checkpoint of stage {stage} holds {wrong!r} of shape "
                         f"{tuple(state[wrong].shape)}, the network's is {tuple(own[wrong].shape)}; it belongs to another "
                         f"network: {RESUME_FIX}.")
    net.load_state_dict({k: state[k] for k in keys}, strict=False)


def full_groups(net: LocalNet, optim) -> list[list[torch.nn.Parameter]]:
    """The parameter groups of a single-process optimizer over the whole network (``make_optimizer``)."""
    return [list(group["params"]) for group in make_optimizer(net, optim).param_groups]


def _global_indices(groups: list[list[torch.nn.Parameter]], optimizer: torch.optim.Optimizer) -> list[int]:
    """For each parameter of the stage's optimizer (in its order), the index a single-process optimizer over
    the whole network gives it in its state_dict (its position in the flattened ``groups``)."""
    index = {id(p): i for i, p in enumerate(p for group in groups for p in group)}
    return [index[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _merge_optimizer_states(parts: list[tuple[list[int], dict[str, Any]]], groups: list[list]) -> dict[str, Any]:
    """One optimizer state_dict, as a single optimizer over the whole network would hold it: its state under
    the global indices, its groups those of ``groups`` with the stages' hyperparameters."""
    state: dict[int, Any] = {}
    for indices, sd in parts:
        for local, value in sd["state"].items():
            state[indices[local]] = value
    param_groups = _numbered_groups(parts[0][1]["param_groups"], [len(group) for group in groups])
    return {"state": dict(sorted(state.items())), "param_groups": param_groups}


def _split_optimizer_state(merged: dict[str, Any], groups: list[list], optimizer) -> dict[str, Any]:
    """The stage's part of a merged optimizer state (``_merge_optimizer_states`` undone)."""
    indices = _global_indices(groups, optimizer)
    state = {local: merged["state"][g] for local, g in enumerate(indices) if g in merged["state"]}
    param_groups = _numbered_groups(merged["param_groups"], [len(group["params"]) for group in optimizer.param_groups])
    return {"state": state, "param_groups": param_groups}


def _numbered_groups(settings: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    """A state_dict's ``param_groups``: group g's hyperparameters from ``settings[g]``, its parameters numbered
    on from the previous group's (``sizes[g]`` of them), as ``Optimizer.state_dict`` numbers them."""
    groups, start = [], 0
    for g, size in enumerate(sizes):
        hyper = {k: v for k, v in settings[g].items() if k != "params"}
        groups.append({**hyper, "params": list(range(start, start + size))})
        start += size
    return groups


def _save_merged(env: DistEnv, run, net: LocalNet, optimizer, layout: Layout, groups: list[list],
                 extra: dict[str, Any]) -> None:
    """checkpoint.pt on rank 0: the full model and the merged optimizer state, gathered from the stages."""
    stage = layout.stage_of(env.rank)
    part = None
    if layout.replica_of(env.rank) == 0:
        keys = set(stage_state_keys(net, layout.assignment[stage]))
        to_cpu = lambda v: v.detach().cpu() if torch.is_tensor(v) else v  # noqa: E731
        opt_sd = optimizer.state_dict()
        part = (
            {k: v.detach().cpu() for k, v in net.state_dict().items() if k in keys},
            _global_indices(groups, optimizer),
            {"state": {i: {k: to_cpu(v) for k, v in s.items()} for i, s in opt_sd["state"].items()},
             "param_groups": opt_sd["param_groups"]},
        )
    parts: list[Any] = [None] * env.world_size if env.is_main else None
    dist.gather_object(part, parts, dst=0, group=env.ctrl)
    if not env.is_main:
        return
    parts = [p for p in parts if p is not None]
    model: dict[str, torch.Tensor] = {}
    for p in parts:
        model.update(p[0])
    full = net.state_dict()
    model = {k: model[k] for k in full}  # the single-process key order; a missing key is a bug, and raises
    optimizer_state = _merge_optimizer_states([(p[1], p[2]) for p in parts], groups)
    run.save_checkpoint({**extra, "model": model, "optimizer": optimizer_state})


# --- statistics ------------------------------------------------------------------------------------------------
RANK_FIELDS = ("rank", "stage", "replica", "modules", "images_per_s", "compute_s", "wait_in_s", "wait_out_s",
               "peak_memory_mb", "peak_rss_mb", "device")


def _train_report(env: DistEnv, stage: PipelineStage, train: PhaseStats) -> dict:
    memory, kind = peak_memory(env.device, train.saved_bytes)
    return {
        "rank": env.rank,
        "stage": stage.stage,
        "replica": stage.replica,
        "modules": [stage.modules.start, stage.modules.stop - 1],
        "train_images": train.images,
        "train_sums": {key: float(value) for key, value in train.sums.items()},
        "batch_losses": [(n, [float(v) for v in losses]) for n, losses in train.batch_losses],
        "train_time_s": train.wall_s,
        "images_per_s": train.images / train.wall_s if train.wall_s else 0.0,
        "compute_s": train.compute_s,
        "wait_in_s": train.wait_in_s,
        "wait_out_s": train.wait_out_s,
        "peak_memory_mb": memory,
        "peak_memory_kind": kind,
        "device": str(env.device),
    }


def _test_report(stage: PipelineStage, test: PhaseStats) -> dict:
    return {
        "last": stage.last,
        "eval_time_s": test.wall_s,
        "test_images": test.images,
        "test_correct": test.correct if stage.last else None,
        "test_loss_sum": test.loss_sum if stage.last else None,
        "peak_rss_mb": peak_rss_mb(),
    }


def _merged_train(reports: list[dict], num_modules: int) -> dict[str, Any]:
    """The train metrics of a single-process epoch (``training.runner.epoch_metrics``), from every rank's
    report: the same keys in the same order, and the same arithmetic."""
    by_stage: dict[int, list[dict]] = {}
    for r in reports:
        by_stage.setdefault(r["stage"], []).append(r)
    images = sum(r["train_images"] for r in by_stage[0])
    sums: dict[str, float] = {}
    for r in reports:  # replicas of a stage add up; stages hold different keys
        for key, value in r["train_sums"].items():
            sums[key] = sums.get(key, 0.0) + value
    means = {key: value / images for key, value in sums.items()}
    # the loss of a batch is the sum of its module losses (in module order), then weighted by images
    if all(len(group) == 1 for group in by_stage.values()):
        per_stage = [by_stage[s][0]["batch_losses"] for s in sorted(by_stage)]
        total = 0.0
        for batch in zip(*per_stage):
            total += sum(loss for _, losses in batch for loss in losses) * batch[0][0]
        means["loss"] = total / images
    else:  # data parallel: the replicas' batches differ, so the sum of the module means
        means["loss"] = sum(means[f"loss/{k}"] for k in range(num_modules))
    train_time = max(r["train_time_s"] for r in reports)
    return epoch_metrics(
        means, num_modules, seen=images, elapsed=train_time,
        peak_bytes=max(r["peak_memory_mb"] for r in reports) * 2**20, peak_kind=reports[0]["peak_memory_kind"],
        data=by_stage[0][0].get("train_data"),
    )


def _pipeline_summary(layout: Layout, config: Config, history: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json's ``pipeline``: the layout, the schedule, and each rank's throughput and memory over
    the epochs of this run."""
    ranks = []
    piped = [h for h in history if len(h.get("ranks", ())) == len(history[-1]["ranks"])]  # epochs of this layout
    for i, first in enumerate(history[-1]["ranks"]):
        rows = [h["ranks"][i] for h in piped]
        ranks.append({
            **{k: first[k] for k in ("rank", "stage", "replica", "modules", "device")},
            "images_per_s": sum(r["images_per_s"] for r in rows) / len(rows),
            "busy": sum(r["compute_s"] for r in rows) / max(1e-9, sum(h["train_time_s"] for h in piped)),
            "peak_memory_mb": max(r["peak_memory_mb"] for r in rows),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
        })
    schedule = "sync" if config.processes.pipeline_sync else "overlapped"
    return {**layout.to_dict(), "schedule": schedule, "ranks": ranks}
