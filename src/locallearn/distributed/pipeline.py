"""The pipeline stage: one rank's contiguous group of local modules, its optimizer, and its links.

Why a pipeline of local modules needs no backward pass across ranks: module k's loss trains only module
k (the hand-off detaches its input, docs/methods.md §1), so the only thing that flows between stages is the
forward hand-off — h, the labels, and the ContSup context later boundaries read (docs/methods.md §5). Stage s
trains batch t+1 while stage s+1 trains batch t.

Staleness — there is none. The output of module k on batch t depends on the weights of modules ≤ k after
t updates (batches 0..t−1), and a stage finishes batch t−1's update before it computes batch t. So the
features stage s+1 receives for batch t are bit-for-bit those a single process computes for batch t,
however far ahead stage s runs. What the overlapped schedule changes is *when*, not *what*: stage s runs
at most a few batches ahead of stage s+1 (``depth`` messages queued on each side of the link, plus those
in transit: 2·depth + 3 when the transport buffers none). The synchronous schedule (``sync=True``) runs
in lock step — blocking sends, a barrier after every batch — and computes the same values; it is the
reference the overlapped schedule is tested against, and a way to see the communication cost alone.

Each rank builds the whole LocalNet from the same seed (so initial weights equal the single-process
run's) and trains only its modules' parameters (``net.module_parameters(k)``); SGD with momentum and
weight decay is elementwise, so per-stage optimizers over disjoint parameters equal the single optimizer.
"""

from __future__ import annotations

import contextlib
import itertools
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from locallearn.distributed.comm import Inbox, Kind, Message, Outbox
from locallearn.engine import module_objective, total_loss, train_modules
from locallearn.memory import SavedTensorMeter
from locallearn.methods import ForwardState
from locallearn.net import LocalNet, check_batch
from locallearn.training import interrupt
from locallearn.training.runner import CHECK_EVERY, check_finite, set_lr

Batch = tuple[torch.Tensor, torch.Tensor]


class NonFiniteStageLoss(ValueError):
    """A module of this stage produced a NaN or infinite loss."""


@dataclass(frozen=True)
class Layout:
    """Where the ranks sit: ``stages`` pipeline stages × ``replicas`` data-parallel copies of each,
    rank = stage · replicas + replica (replicas of a stage are neighbours, e.g. on one machine)."""

    stages: int
    replicas: int
    assignment: tuple[range, ...]  # the modules of each stage

    @property
    def world_size(self) -> int:
        return self.stages * self.replicas

    def stage_of(self, rank: int) -> int:
        return rank // self.replicas

    def replica_of(self, rank: int) -> int:
        return rank % self.replicas

    def rank_of(self, stage: int, replica: int) -> int:
        return stage * self.replicas + replica

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": self.stages,
            "data_parallel": self.replicas,
            "modules": [[r.start, r.stop - 1] for r in self.assignment],
        }


# --- what a stage owns and needs ----------------------------------------------------------------------------
def stage_parts(net: LocalNet, modules: range) -> list[nn.Module]:
    """Every part the stage's modules train (units, heads, decoders, the context encoders feeding them)."""
    return [part for k in modules for part in net.module_parts(k)]


def stage_state_keys(net: LocalNet, modules: range) -> list[str]:
    """The state_dict keys (parameters and persistent buffers) of the stage's parts."""
    names = {id(m): name for name, m in net.named_modules()}
    prefixes = tuple(names[id(part)] + "." for part in stage_parts(net, modules))
    return [key for key in net.state_dict() if key.startswith(prefixes)]


def image_needed_from(net: LocalNet, k0: int) -> bool:
    """Whether modules k0.. read the image: a context encoder of theirs (E modes, or Rn reaching ĥ_{−1}),
    or InfoPro's image reconstruction in a module that has a decoder."""
    K = net.num_modules
    if net.config.reconstruct and k0 < K - 1:
        return True
    if net.context is None:
        return False
    mode = net.context.mode
    return any(mode.image or -1 in mode.sources(k - 1) for k in range(max(k0, 1), K))


def _trains_on_one(net: LocalNet) -> bool:
    """Whether ``net`` can train on a batch of one image (no BatchNorm1d, no contrastive local loss:
    ``net.check_batch``), as a replica's share of a last, small batch may be."""
    try:
        check_batch(net, 1)
    except ValueError:
        return False
    return True


class ModuleStep(nn.Module):
    """Module k's training computation (``engine.module_objective``) as an nn.Module that holds exactly
    module k's parameters, so DistributedDataParallel can wrap it: one DDP per module, because each
    module has its own backward pass."""

    def __init__(self, net: LocalNet, k: int) -> None:
        super().__init__()
        self.parts = nn.ModuleList(net.module_parts(k))
        object.__setattr__(self, "net", net)  # not a submodule: the rest of the net belongs to other modules
        self.k = k

    def forward(self, inputs: torch.Tensor, state: ForwardState):
        return module_objective(self.net, self.k, inputs, state)


# --- statistics ---------------------------------------------------------------------------------------------
@dataclass
class PhaseStats:
    """What one rank measured over one phase (an epoch's training or evaluation)."""

    images: int = 0
    batches: int = 0
    wall_s: float = 0.0  # from the phase's start to this rank's last batch
    compute_s: float = 0.0  # host time inside the training step / inference forward (CUDA: not waiting for it)
    wait_in_s: float = 0.0  # blocked waiting for the previous stage
    wait_out_s: float = 0.0  # blocked because the next stage had not taken earlier messages
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # metric · images, float64 on the device
    correct_sum: torch.Tensor | None = None  # evaluation, last stage: correct predictions, on the device
    loss_total: torch.Tensor | None = None  # evaluation, last stage: summed cross-entropy, float64 on the device
    saved_bytes: int = 0  # bytes autograd saved in the phase's first step (CPU)
    batch_losses: list[tuple[int, list[torch.Tensor]]] = field(default_factory=list)  # (images, this stage's loss/k)
    done_s: list[float] = field(default_factory=list)  # when each batch was done, from the phase's start

    def add(self, metrics: dict[str, torch.Tensor], n: int, modules: range) -> None:
        for key, value in metrics.items():
            value = value.double() * n
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.batch_losses.append((n, [metrics[f"loss/{k}"] for k in modules]))

    def count(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one evaluation batch's correct predictions and summed cross-entropy, on the device: the host
        waits for them once, at the end of the phase (``correct``, ``loss_sum``), not once per batch."""
        loss = F.cross_entropy(logits.float(), labels, reduction="sum").double()
        correct = (logits.argmax(dim=1) == labels).sum()
        self.loss_total = loss if self.loss_total is None else self.loss_total + loss
        self.correct_sum = correct if self.correct_sum is None else self.correct_sum + correct

    @property
    def correct(self) -> int:
        return int(self.correct_sum) if self.correct_sum is not None else 0

    @property
    def loss_sum(self) -> float:
        return float(self.loss_total) if self.loss_total is not None else 0.0


def peak_memory(device: torch.device, saved_bytes: int) -> tuple[float, str]:
    """(MiB, kind) as the single-process loop reports it: CUDA allocations, or autograd's saved bytes."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    return saved_bytes / 2**20, "saved_tensors"


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# --- the stage ------------------------------------------------------------------------------------------------
class PipelineStage:
    """One rank of the pipeline. The first stage reads batches from a loader; the others from the previous
    stage. ``train_phase`` and ``eval_phase`` run one epoch's worth; ``close`` ends the job's messages."""

    def __init__(
        self,
        net: LocalNet,
        layout: Layout,
        rank: int,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        sync: bool = False,
        depth: int = 2,
        autocast_dtype: torch.dtype | None = None,
        links: dict[tuple[int, int], Any] | None = None,
        dp_group: Any = None,
        barrier_group: Any = None,
        meter_memory: bool = True,
    ) -> None:
        self.net, self.layout, self.rank, self.optimizer = net, layout, rank, optimizer
        self.device, self.sync, self.autocast_dtype = device, sync, autocast_dtype
        self.stage = layout.stage_of(rank)
        self.replica = layout.replica_of(rank)
        self.modules = layout.assignment[self.stage]
        self.first = self.stage == 0
        self.last = self.stage == layout.stages - 1
        self.barrier_group = barrier_group
        self.meter_memory = meter_memory  # count autograd's saved bytes in each phase's first step (CPU)
        links = links or {}
        depth = 0 if sync else depth
        self.inbox = self.outbox = None
        if not self.first:
            src = layout.rank_of(self.stage - 1, self.replica)
            self.inbox = Inbox(src, group=links.get((src, rank)), device=device, depth=depth)
        if not self.last:
            dst = layout.rank_of(self.stage + 1, self.replica)
            self.outbox = Outbox(dst, group=links.get((rank, dst)), device=device, depth=depth)
        self.send_image = not self.last and image_needed_from(net, self.modules.stop)
        self.objective = None
        self._pending: list[torch.Tensor] = []  # this stage's batch losses since the last finiteness check
        self._lr_at: Callable[[int], float] | None = None
        self.dp_group = dp_group
        if layout.replicas > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            steps = {k: DDP(ModuleStep(net, k), process_group=dp_group) for k in self.modules}
            self.objective = lambda k, x, s: steps[k](x, s)

    # --- phases ------------------------------------------------------------------------------------------
    def train_phase(self, batches: Iterable[Batch] | None = None, lr_at: Callable[[int], float] | None = None) -> PhaseStats:
        """One epoch of training; ``batches`` only on the first stage (the full batches: each replica
        takes its share); ``lr_at``: the learning rate of each step (0-based). Returns this rank's statistics."""
        self._lr_at = lr_at
        stats = self._phase(Kind.TRAIN, batches)
        if self.layout.replicas > 1:
            self._share_buffers()
        return stats

    def _share_buffers(self) -> None:
        """DDP keeps the replicas' parameters equal; BatchNorm running statistics it broadcasts from the
        first replica *before* each forward, so after the last one they differ. Broadcasting them once
        more makes every replica evaluate (and checkpoint) the same network."""
        src = self.layout.rank_of(self.stage, 0)
        for part in stage_parts(self.net, self.modules):
            for buffer in part.buffers():
                dist.broadcast(buffer, src=src, group=self.dp_group)

    @torch.no_grad()
    def eval_phase(self, batches: Iterable[Batch] | None = None) -> PhaseStats:
        """The inference forward over ``batches`` (first stage); the last stage counts correct predictions
        and sums the cross-entropy, as ``training.evaluate`` does."""
        self.net.eval()
        return self._phase(Kind.EVAL, batches)

    def close(self) -> None:
        """Tell the next stage there will be no more messages, and stop the transport threads."""
        if self.first and self.outbox is not None:
            self.outbox.put(Message(Kind.STOP))
        if self.inbox is not None:
            message = self.inbox.get()
            if message.kind != Kind.STOP:
                raise RuntimeError(f"pipeline: expected the end of the job from the previous stage, got {message.kind.name}.")
            if self.outbox is not None:
                self.outbox.put(Message(Kind.STOP))
            self.inbox.close()
        if self.outbox is not None:
            self.outbox.close()

    def _phase(self, kind: Kind, batches: Iterable[Batch] | None) -> PhaseStats:
        stats = PhaseStats()
        if self.inbox is not None:
            self.inbox.wait_s = 0.0
        if self.outbox is not None:
            self.outbox.wait_s = 0.0
        start = time.perf_counter()
        for index, inputs, state, labels in self._incoming(kind, batches):
            if kind == Kind.TRAIN:
                if self._lr_at is not None:
                    set_lr(self.optimizer, self._lr_at(index))
                h = self._train_batch(stats, inputs, state, labels)
            else:
                h = self._eval_batch(stats, inputs, state, labels)
            if self.outbox is not None:
                self.outbox.put(Message(kind, index, self._bundle(h, state, labels)))
            if self.sync:
                dist.barrier(group=self.barrier_group)  # lock step: nobody starts batch t+1 before all finish t
            stats.wall_s = time.perf_counter() - start
            stats.done_s.append(stats.wall_s)
            interrupt.check()
        if self._pending:
            self._check_finite(stats.batches)
        if self.outbox is not None:
            self.outbox.put(Message(Kind.END))
        stats.wait_in_s = self.inbox.wait_s if self.inbox is not None else 0.0
        stats.wait_out_s = self.outbox.wait_s if self.outbox is not None else 0.0
        return stats

    def _incoming(self, kind: Kind, batches: Iterable[Batch] | None):
        """(index, inputs, state, labels) of each batch of the phase, from the loader or the previous stage."""
        if self.first:
            if batches is None:
                raise ValueError("pipeline: the first stage needs the batches to read.")
            replicas = self.layout.replicas
            for index, (images, labels) in enumerate(batches):
                if kind == Kind.TRAIN and len(labels) % replicas:  # a last batch that does not split equally: its
                    kept = len(labels) - len(labels) % replicas  # last images left out (at most replicas − 1), by
                    images, labels = images[:kept], labels[:kept]  # every replica alike, so the shares are equal
                if kind == Kind.TRAIN and (not len(labels) or
                                           len(labels) < 2 * replicas and not _trains_on_one(self.net)):
                    continue  # no share, or a share of one image that a BatchNorm1d cannot take: skipped by all
                images = torch.tensor_split(images, self.layout.replicas)[self.replica].to(self.device)
                labels = torch.tensor_split(labels, self.layout.replicas)[self.replica].to(self.device)
                yield index, images, self.net.begin(images, labels), labels
            return
        while True:
            message = self.inbox.get()
            if message.kind == Kind.END:
                return
            if message.kind != kind:
                raise RuntimeError(
                    f"pipeline: stage {self.stage} expected a {kind.name} batch, got {message.kind.name}: the ranks are "
                    "out of step."
                )
            # each tensor in a storage of its own, not a view of the one payload: a later module that keeps only
            # the labels (its loss) or the image (its context encoders) kept the whole payload alive, which the
            # memory meter rightly charged (a stage's peak above the whole network's in one process)
            t = {name: v.clone() for name, v in message.tensors.items()}
            index = message.index
            del message  # the payload is freed here
            history = {int(name[5:]): v for name, v in t.items() if name.startswith("hist/")}
            yield index, t["h"], ForwardState(image=t.get("image"), labels=t["labels"], history=history), t["labels"]

    def _train_batch(self, stats: PhaseStats, inputs, state: ForwardState, labels) -> torch.Tensor:
        first_step = stats.batches == 0 and self.meter_memory and self.device.type != "cuda"
        # parameters and buffers (BatchNorm statistics) are not activations: left out, as in one process
        meter = SavedTensorMeter(itertools.chain(self.net.parameters(), self.net.buffers())) if first_step else None
        begin = time.perf_counter()
        with meter or contextlib.nullcontext():
            metrics, h = train_modules(
                self.net, self.modules, inputs, state, self.optimizer,
                autocast_dtype=self.autocast_dtype, objective=self.objective,
            )
        stats.compute_s += time.perf_counter() - begin
        if meter is not None:
            stats.saved_bytes = meter.peak_bytes
        self._pending.append(total_loss(metrics, self.modules))
        if len(self._pending) == CHECK_EVERY:
            self._check_finite(stats.batches + 1)
        n = len(labels)
        stats.add(metrics, n, self.modules)
        stats.images += n
        stats.batches += 1
        return h

    def _check_finite(self, batches: int) -> None:
        """Stop on a non-finite loss of this stage's modules among the batches since the last check."""
        pending, self._pending = self._pending, []
        try:
            check_finite(pending, first=batches - len(pending) + 1)
        except ValueError as err:
            raise NonFiniteStageLoss(f"stage {self.stage} (modules {self.modules.start}-{self.modules.stop - 1}): {err}") from None

    def _eval_batch(self, stats: PhaseStats, inputs, state: ForwardState, labels) -> torch.Tensor:
        begin = time.perf_counter()
        amp = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype
            else contextlib.nullcontext()
        )
        with amp:  # the network's inference forward, restricted to this stage's modules
            x = self.net.forward_modules(self.modules, inputs, state)
        if self.last:
            stats.count(x, labels)
        stats.compute_s += time.perf_counter() - begin
        stats.images += len(labels)
        stats.batches += 1
        return x

    def _bundle(self, h: torch.Tensor, state: ForwardState, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the next stages need: the last module's output, the labels, the image if a later module
        reads it, and the context history ĥ_j later boundaries read (the hand-off keeps exactly those)."""
        tensors = {"h": h, "labels": labels}
        if self.send_image:
            tensors["image"] = state.image
        for j, value in sorted(state.history.items()):
            tensors[f"hist/{j}"] = value
        return tensors


# --- process groups ---------------------------------------------------------------------------------------------
def make_groups(layout: Layout, *, backend: str, device_type: str) -> tuple[dict[tuple[int, int], Any], Any, Any]:
    """The point-to-point links (one two-rank group per stage boundary and replica, so each link has its own
    connection and transport thread), the data-parallel group of this rank's stage, and the device mesh.

    Every rank creates every group in the same order, as torch.distributed requires."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, (layout.stages, layout.replicas), mesh_dim_names=("pipe", "dp"))
    links = {}
    for stage in range(layout.stages - 1):
        for replica in range(layout.replicas):
            a, b = layout.rank_of(stage, replica), layout.rank_of(stage + 1, replica)
            links[(a, b)] = dist.new_group([a, b], backend=backend)
    return links, mesh.get_group("dp"), mesh


def check_same(values: dict[str, Any], *, group: Any, what: str = "config") -> None:
    """Refuse to start unless every rank holds the same ``values`` (e.g. the resolved config)."""
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, values, group=group)
    reference = gathered[0]
    for rank, other in enumerate(gathered):
        if other != reference:
            keys = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
            shown = ", ".join(f"{k}={other.get(k)!r} (rank 0: {reference.get(k)!r})" for k in keys[:3])
            raise ValueError(
                f"parallel: the ranks were started with different {what}s: rank {rank} has {shown}; start every "
                "rank with the same command and options."
            )
