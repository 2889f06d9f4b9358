"""Epochs: ``train_one_epoch``, ``evaluate`` and ``fit``, which runs a whole recipe into a run directory and
resumes it after an interruption (see ``rundir.py`` for what is written when)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

import locallearn
from locallearn.bench.meters import SavedTensorMeter
from locallearn.data import BatchLoader, get_spec, load_split
from locallearn.distributed.options import check_single_process_launch
from locallearn.engine import train_step
from locallearn.net import LocalNet, build_net
from locallearn.provenance import git_revision
from locallearn.training.recipe import (
    TrainConfig,
    dump_yaml,
    lr_schedule,
    read_yaml,
    resolve_device,
    resumed_config,
)
from locallearn.training.rundir import (
    CHECKPOINT_FORMAT,
    CONFIG,
    RunDir,
    rng_state,
    seed_everything,
    set_rng_state,
)

Log = Callable[[str], None]
BEST_NOTE = "selected on the test set: for reference only; report test_acc (METHODS.md 7)"


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; training stops without writing a checkpoint."""


# --- pieces ------------------------------------------------------------------------------------------------
def make_optimizer(net: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """One SGD over every parameter — backbone, heads, decoders and context encoders (METHODS.md 7)."""
    return torch.optim.SGD(
        net.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def load_data(config: TrainConfig, *, train: bool, device: torch.device) -> BatchLoader:
    """The train or test split as a BatchLoader; ``limit_train`` / ``limit_test`` keep the first N images."""
    images, labels = load_split(config.dataset, config.data_dir, train=train)
    limit = config.limit_train if train else config.limit_test
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    # The run's normalisation (the dataset's unless image_mean/image_std say otherwise): the same constants
    # the network un-normalises with to get reconstruction targets.
    spec = dataclasses.replace(get_spec(config.dataset), mean=tuple(config.image_mean), std=tuple(config.image_std))
    return BatchLoader(
        images, labels, spec=spec, batch_size=config.batch_size, train=train, seed=config.seed, device=device
    )


def compile_parts(net: LocalNet) -> None:
    """``torch.compile`` each unit, head, decoder and context encoder in place (state_dict keys unchanged).

    The parts, not the whole net: training runs them one module at a time (``engine.train_step``).
    """
    containers = [net.backbone.units, net.aux_heads, net.image_decoders, net.feature_decoders]
    if net.context is not None:
        containers += list(net.context.children())
    for container in containers:
        for part in (container.children() if container is not None else ()):
            part.compile()


def train_one_epoch(
    net: LocalNet,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    *,
    autocast_dtype: torch.dtype | None = None,
    description: str = "",
) -> dict[str, Any]:
    """One pass over ``loader``; the step's metrics averaged over the epoch (weighted by batch size) as
    ``train_<key>``, plus throughput and peak memory.

    Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU (``peak_memory_kind: cuda_allocated``);
    on a CPU, the bytes autograd saves for backward during the epoch's first step, counted by
    ``SavedTensorMeter`` (``saved_tensors``; exact and deterministic, parameters excluded).
    """
    device = next(net.parameters()).device
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    totals: dict[str, float] = defaultdict(float)
    seen, peak_bytes = 0, 0
    bar = tqdm(total=len(loader), desc=description, unit="batch", leave=False, disable=None, file=sys.stderr)
    start = time.perf_counter()
    for i, (images, labels) in enumerate(loader):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        meter = SavedTensorMeter(net.parameters()) if i == 0 and not on_cuda else contextlib.nullcontext()
        with meter:
            stats = train_step(net, images, labels, optimizer, autocast_dtype=autocast_dtype)
        if i == 0 and not on_cuda:
            peak_bytes = meter.peak_bytes
        if not math.isfinite(stats["loss"]):
            bar.close()
            raise NonFiniteLossError(f"non-finite loss ({stats['loss']}) in batch {i + 1} of {len(loader)}")
        n = len(labels)
        seen += n
        for key, value in stats.items():
            totals[key] += value * n
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
    if on_cuda:
        torch.cuda.synchronize(device)
        peak_bytes = torch.cuda.max_memory_allocated(device)
    elapsed = time.perf_counter() - start
    bar.close()
    # train_loss: the sum of the module losses; train_acc: the network's own (last module's) accuracy; then
    # every per-module metric of the step (loss/k, acc/k, task/k, rec/k, ...), module by module.
    out = {"train_loss": totals.pop("loss") / seen, "train_acc": None}
    for key in sorted(totals, key=lambda key: (int(key.rsplit("/", 1)[1]), key)):
        out[f"train_{key}"] = totals[key] / seen
    out["train_acc"] = out.get(f"train_acc/{net.num_modules - 1}")
    out.update(
        train_images=seen,
        train_time_s=elapsed,
        images_per_s=seen / elapsed,
        peak_memory_mb=peak_bytes / 2**20,
        peak_memory_kind="cuda_allocated" if on_cuda else "saved_tensors",
    )
    return out


@torch.no_grad()
def evaluate(net: nn.Module, loader: BatchLoader, *, autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Test accuracy (fraction) and cross-entropy of the inference forward (auxiliary heads unused)."""
    net.eval()
    device = next(net.parameters()).device
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    correct, loss, seen = 0, 0.0, 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with amp:
            logits = net(images)
        loss += float(torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += len(labels)
    return {"test_acc": correct / seen, "test_loss": loss / seen}


# --- a whole run -------------------------------------------------------------------------------------------
def open_run(
    config: TrainConfig, *, resume: bool, overwrite: bool, requested: dict[str, Any] | None = None
) -> tuple[RunDir, TrainConfig, dict[str, Any] | None]:
    """Check the run directory against what was asked; returns the run, the config to train with, and the
    checkpoint to continue from (None: start at epoch 1)."""
    run = RunDir(Path(config.out))
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run, or start it over.")
    if resume and run.file(CONFIG).is_file():
        stored = read_yaml(run.file(CONFIG))
        config = resumed_config(stored, config.to_dict() if requested is None else requested, out=config.out)
        return run, config, run.load_checkpoint()
    if resume:  # killed before its config was written, or never started: there is nothing to lose
        run.clear()
        return run, config, None
    if run.started:
        if not overwrite:
            what = "a finished run" if run.finished else "an unfinished run (--resume continues it)"
            raise ValueError(
                f"{run.path} already holds {what}; pass --overwrite to replace it, or choose another --out."
            )
        run.clear()
    return run, config, None


def fit(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    requested: dict[str, Any] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Train ``config`` into its run directory (``config.out``) and return the summary.

    ``resume`` continues the run found there (or starts it, if there is none: a job can always pass it);
    the options asked for (``requested``, by default the whole config) must match the stored ones. Without
    ``resume`` an existing run is refused unless ``overwrite``.
    """
    if config.parallel == "pipeline":  # one process per pipeline rank, under torchrun (locallearn.distributed)
        from locallearn.distributed.fit import fit_pipeline

        return fit_pipeline(config, resume=resume, overwrite=overwrite, requested=requested, log=log)
    check_single_process_launch(config)
    run, config, checkpoint = open_run(config, resume=resume, overwrite=overwrite, requested=requested)
    device = resolve_device(config.device)
    # The data first: a missing dataset must fail before the run directory is written.
    train_loader = load_data(config, train=True, device=device)
    test_loader = load_data(config, train=False, device=device)
    seed_everything(config.seed)
    net = build_net(config.net_config()).to(device)
    optimizer = make_optimizer(net, config)
    schedule = lr_schedule(
        lr=config.lr, epochs=config.epochs, warmup_epochs=config.warmup_epochs, warmup_lr=config.warmup_lr
    )
    assert len(schedule) == config.epochs, "one learning rate per epoch"

    history: list[dict[str, Any]] = []
    if checkpoint is not None:
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"])
        history = list(checkpoint["history"])
    elif not run.file(CONFIG).is_file():
        run.write_config(dump_yaml(config.to_dict(), header=provenance() + derived(net)))
    run.write_metrics(history)  # drops any epoch logged after the checkpoint was taken
    done = len(history)
    if done == config.epochs and run.finished:
        log(f"{run.path} is already finished ({done} epochs); nothing to resume.")
        return run.read_summary()
    if config.compile:
        compile_parts(net)

    parameters = sum(p.numel() for p in net.parameters())
    log_start(log, config, net, run, device, parameters, len(train_loader.images), len(test_loader.images), done)

    for epoch in range(done + 1, config.epochs + 1):
        lr = schedule[epoch - 1]
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_loader.set_epoch(epoch)
        try:
            train = train_one_epoch(
                net, train_loader, optimizer, autocast_dtype=config.autocast_dtype,
                description=f"epoch {epoch}/{config.epochs}",
            )
        except NonFiniteLossError as err:
            kept = f"the last good checkpoint (epoch {epoch - 1}) is kept in {run.path}"
            kept = kept if epoch > 1 else "no checkpoint was written"
            raise NonFiniteLossError(f"epoch {epoch}: {err}; training stopped and {kept}. Try a lower --lr.") from None
        eval_start = time.perf_counter()
        test = evaluate(net, test_loader, autocast_dtype=config.autocast_dtype)
        eval_time = time.perf_counter() - eval_start
        record = epoch_record(epoch, lr, train, test, eval_time)
        history.append(record)
        run.append_metrics(record)  # metrics first: the checkpoint is never ahead of metrics.jsonl
        run.save_checkpoint(
            {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch,
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_schedule": schedule,
                "rng": rng_state(),
                "config": config.to_dict(),
                "history": history,
            }
        )
        log(epoch_line(record, config.epochs))

    summary = summarize(history, config=config, net=net, parameters=parameters)
    run.write_summary(summary)
    log_end(log, summary, run)
    return summary


def epoch_record(epoch: int, lr: float, train: dict[str, Any], test: dict[str, float], eval_time: float) -> dict:
    """One line of metrics.jsonl. Deterministic fields first; *_time_s, images_per_s are wall-clock."""
    timing = {"train_time_s", "images_per_s", "peak_memory_mb", "peak_memory_kind", "train_images"}
    per_step = {k: v for k, v in train.items() if k not in timing}
    return {
        "epoch": epoch,
        "lr": lr,
        **per_step,
        **test,
        "epoch_time_s": train["train_time_s"] + eval_time,
        "train_time_s": train["train_time_s"],
        "images_per_s": train["images_per_s"],
        "peak_memory_mb": train["peak_memory_mb"],
        "peak_memory_kind": train["peak_memory_kind"],
    }


def summarize(history: list[dict[str, Any]], *, config: TrainConfig, net: LocalNet, parameters: int) -> dict:
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
        "images_per_s": images / train_time,
        "peak_memory_mb": max(r["peak_memory_mb"] for r in history),
        "peak_memory_kind": last["peak_memory_kind"],
        "model": config.model,
        "method": config.method,
        "num_modules": config.num_modules,
        "context": config.context,
        "local_loss": config.local_loss,
        "dataset": config.dataset,
        "net": net.describe(),
        "versions": _versions(),
    }


# --- what is printed ----------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    return {"locallearn": locallearn.__version__, "torch": torch.__version__, "git": git_revision() or "unknown"}


def provenance() -> list[str]:
    v = _versions()
    return [
        "Resolved config of this run: every option of `locallearn train`, defaults included.",
        f"locallearn {v['locallearn']}, git {v['git']}, torch {v['torch']}, {time.strftime('%Y-%m-%d %H:%M:%S')}",
    ]


def derived(net: LocalNet) -> list[str]:
    """What the build derived from the config, for config.yaml's header and the start log: the cuts and,
    with reconstruction, the λ schedule and where it came from (a table, or the documented default)."""
    lines = [f"cuts: {[list(c) for c in net.cuts]}"]
    if net.lambda_schedule:
        lambdas = ", ".join(f"({xx:g}, {xy:g})" for xx, xy in net.lambda_schedule)
        lines.append(f"λ (reconstruction, task) per local module: {lambdas}; {net.lambda_source}")
    return lines


def log_start(
    log: Log, config: TrainConfig, net: LocalNet, run: RunDir, device: torch.device, parameters: int,
    n_train: int, n_test: int, done: int,
) -> None:
    head = f"K={config.num_modules}"
    if config.num_modules > 1:
        head += f", {config.aux_head} heads, {config.local_loss} loss, context {config.context}"
        head += ", reconstruction" if config.reconstruct else ""
    warmup = config.warmup_epochs if config.epochs > config.warmup_epochs else 0
    sgd = f"momentum {config.momentum}{', nesterov' if config.nesterov else ''}, weight decay {config.weight_decay}"
    log(f"locallearn train: {config.model} / {config.method} ({head}) on {config.dataset} "
        f"({n_train} train, {n_test} test images)")
    log(f"  recipe: {config.epochs} epochs, batch {config.batch_size}, SGD lr {config.lr} ({sgd}), "
        f"{warmup} warm-up epochs + cosine, seed {config.seed}, {device}"
        + (f", amp {config.amp}" if config.amp != "none" else "") + (", compiled" if config.compile else ""))
    log(f"  network: {parameters:,} parameters, " + "; ".join(derived(net)))
    log(f"  run directory: {run.path} (resolved config in {CONFIG})"
        + (f"; resuming after epoch {done}" if done else ""))


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    train_acc = record.get("train_acc")
    acc = f"  train acc {100 * train_acc:5.1f}%" if train_acc is not None else ""
    return (
        f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  lr {record['lr']:.4g}  loss {record['train_loss']:.3f}"
        f"{acc}  test acc {100 * record['test_acc']:5.1f}%  {record['epoch_time_s']:.1f} s  "
        f"{record['images_per_s']:.0f} img/s"
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def log_end(log: Log, summary: dict[str, Any], run: RunDir) -> None:
    minutes, seconds = divmod(round(summary["total_time_s"]), 60)
    log(
        f"done: test accuracy {100 * summary['test_acc']:.2f}% after {_plural(summary['epochs'], 'epoch')} "
        f"(best {100 * summary['best_test_acc']:.2f}% at epoch {summary['best_epoch']}, selected on the test set), "
        f"{minutes} min {seconds} s, {summary['images_per_s']:.0f} img/s"
    )
    log(f"results: {run.path}/ (summary.json, metrics.jsonl, config.yaml, checkpoint.pt); "
        f"`locallearn eval {run.path}` re-evaluates it")
