"""Process-group start-up and tear-down, and the watchdog that turns a dead rank into a bounded exit.

Ranks are started by ``torchrun`` (or anything that sets the same environment: RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). The backend follows the device: NCCL on CUDA, gloo on CPU; a gloo
*control* group always exists for Python objects and barriers.

Failures. A pipeline stage blocks on its neighbours, so one dead rank would otherwise leave the others
waiting until the collective timeout (minutes). The ``Watchdog`` bounds that:

- every rank bumps a heartbeat counter in the rendezvous store each ``interval`` seconds, on a thread of
  its own (so a long computation does not count as silence);
- every rank watches its two ring neighbours; a counter that has not moved for ``timeout`` seconds
  means that rank was killed (SIGKILL, the kernel's out-of-memory killer) or lost its machine;
- a rank that raises (an exception, CUDA out of memory) publishes its error before it exits;
- the first failure published wins; every rank polls for it and exits with status 1 and a message naming
  the failed rank, within ``timeout + 4·interval + 0.5`` seconds of a death (``bound_s``; a few
  intervals after an exception). ``interval`` is min(1 s, timeout / 4).

Under torchrun the elastic agent also stops a node's workers when one of them fails; the watchdog covers
what it does not: ranks on other nodes, and runs started without torchrun.

Start-up failures. A rank can fail before the ranks have met (its data missing on its machine: ``data_dir`` and
``device`` may differ by rank), where there is no group to publish to yet. Under torchrun the agent's store is
already there (MASTER_ADDR:MASTER_PORT): ``start_failure`` puts the failure in it, and ranks waiting for the
others to join (``init_distributed``) read it and exit with status 2 and a line naming that rank, instead of
waiting out the join timeout (30 minutes) on another machine. The failing rank says its own failure where rank 0
does not say the same.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from locallearn.training import interrupt

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
WAIT_NOTICE_S = 30.0  # a rank still waiting for the others after this long says so
EXIT_FAILED = 1  # the exit status of every rank when one failed
EXIT_INTERRUPTED = 130  # ... when one was stopped by Ctrl-C (the shell's status for SIGINT, as the CLI's)
EXIT_TERMINATED = 143  # ... when one was stopped by SIGTERM (128 + 15, what schedulers expect)
_FAILURE = "failure"
START_WAIT_S = 2.0  # how long a failed rank > 0 waits to learn whether rank 0 failed alike (and says it)


@dataclass
class DistEnv:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # "nccl" or "gloo"
    device: torch.device
    ctrl: dist.ProcessGroup  # gloo: objects, barriers, the config check
    watchdog: "Watchdog | None" = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_environment() -> dict[str, int | str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT as torchrun sets them."""
    missing = [name for name in ENV_VARS if name not in os.environ]
    if missing:
        raise ValueError(
            f"parallel: --parallel pipeline runs one process per rank and needs {', '.join(missing)} in the "
            f"environment; start it with torchrun, e.g. `torchrun --nproc-per-node 2 -m locallearn train "
            f"--parallel pipeline ...`."
        )
    return {
        "rank": int(os.environ["RANK"]),
        "world_size": int(os.environ["WORLD_SIZE"]),
        "local_rank": int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
        "master_addr": os.environ["MASTER_ADDR"],
        "master_port": int(os.environ["MASTER_PORT"]),
    }


def pick_device(device: str, local_rank: int) -> torch.device:
    """``auto``: this rank's GPU (cuda:LOCAL_RANK) when there is one, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device} is not available on this machine; use --device cpu.")
        if resolved.index is None:
            # one GPU per rank (NCCL cannot run two ranks of a job on one): where a machine's ranks (torchrun's
            # LOCAL_WORLD_SIZE, the same on each, so rank 0 says it) see fewer GPUs than there are ranks, refused.
            # One visible GPU is taken as each process's own (CUDA_VISIBLE_DEVICES per task)
            count, local = torch.cuda.device_count(), os.environ.get("LOCAL_WORLD_SIZE", "")
            if local.isdigit() and 1 < count < int(local):
                raise ValueError(
                    f"device: {local} ranks on this machine but {count} GPUs, and each rank needs its own; start at "
                    f"most {count} (torchrun --nproc-per-node {count}), or train on the CPU (--device cpu).")
            resolved = torch.device("cuda", local_rank % count)
    return resolved


class NotJoined(ValueError):
    """The ranks never met, so rank 0 cannot say it for the others (``cli``): every rank says its own."""

    every_rank = True


def _agent_store(timeout_s: float) -> dist.TCPStore | None:
    """A client of the store torchrun's agent hosts for the job, or None where there is none (ranks started by
    hand: rank 0 hosts it only once it joins) or it cannot be reached."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or dist.is_initialized():
        return None
    try:
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                             timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)
    except (RuntimeError, KeyError, ValueError):  # DistNetworkError and DistStoreError are RuntimeErrors
        return None


_KEY = "locallearn/start-failure"  # + "/<run id>": the latest start-up failure; + "/<rank>": each rank's
SAME_ATTEMPT_S = 2.0  # processes of one attempt of the job start within this of each other (clocks included)


@functools.cache
def _process_start() -> float:
    """When this process started, in seconds since the epoch (Linux's /proc, read once; elsewhere when this
    module was first imported)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


_IMPORTED = time.time()


def _start_key() -> str:
    """The store key of this job's latest start-up failure (``/<rank>``: each rank's)."""
    return f"{_KEY}/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"


def _fresh(value: bytes) -> str | None:
    """The failure a store value holds (``"<its process's start> <text>"``) where a process of this attempt of the
    job published it, else None: torchrun keeps its store across the restarts of ``--max-restarts``, whose
    counts differ between machines, and an attempt must not read the one before's failure."""
    started, _, text = value.decode(errors="replace").partition(" ")
    try:
        return text if float(started) >= _process_start() - SAME_ATTEMPT_S else None
    except ValueError:
        return None


def start_failure(message: str) -> bool:
    """Tell the job that this rank failed before the ranks met (``message``, its one-line error), where torchrun's
    store lets it; whether this rank should print its line: rank 0 always, another rank unless rank 0 failed
    with the same message within ``START_WAIT_S`` (rank 0 then says it, once for the job) — and every rank where
    there is no store to compare through (ranks started by hand, each with its own terminal). A failure after
    the ranks met is rank 0's to say (the watchdog tells the others)."""
    rank, world = int(os.environ.get("RANK", "0")), os.environ.get("WORLD_SIZE", "1")
    if dist.is_initialized():
        return rank == 0
    store = _agent_store(START_WAIT_S)
    if store is None:
        return True
    key, stamp = _start_key(), f"{_process_start():.3f}"
    try:
        store.set(f"{key}/{rank}", f"{stamp} {message}")
        store.set(key, f"{stamp} rank {rank} of {world}: {message}")
        if rank == 0:
            return True
        deadline = time.monotonic() + START_WAIT_S
        while time.monotonic() < deadline:
            said = _fresh(store.get(f"{key}/0")) if store.check([f"{key}/0"]) else None
            if said is not None:
                return said != message
            time.sleep(0.1)
        return True  # rank 0 did not fail: it waits for this rank to join
    except RuntimeError:  # the store went away
        return True


def _watch_start(info: dict, where: str, timeout_s: float, joined: threading.Event) -> None:
    """While this rank waits for the others to join: after ``WAIT_NOTICE_S`` it says so, and where another rank
    of this attempt has published a start-up failure (``start_failure``), it exits with status 2, one line for
    each machine (its first rank says it) naming that rank — after the failed rank has had the time to say it
    and exit (``START_WAIT_S``), so that on one machine torchrun's report names that rank as the first to fail."""
    store = None
    key = _start_key()
    started = time.monotonic()
    noticed = False
    while not joined.wait(1.0):
        if not noticed and time.monotonic() - started >= WAIT_NOTICE_S:
            noticed = True  # ranks started by hand wait for the others silently
            print(f"locallearn: rank {info['rank']} of {info['world_size']} is waiting for the other ranks to join at "
                  f"{where} (for up to {timeout_s:.0f} s); start every rank with the same MASTER_ADDR and MASTER_PORT "
                  f"(torchrun starts them all).", file=sys.stderr, flush=True)
        store = store or _agent_store(2.0)
        failure = _fresh(store.get(key)) if store is not None and store.check([key]) else None
        if failure is None or joined.wait(START_WAIT_S + 2.0):  # the ranks met after all: nothing to stop
            continue
        if info["local_rank"] == 0:
            print(f"locallearn: error: {' '.join(failure.split()).rstrip('.')}; rank {info['rank']} stops before "
                  f"training: fix it on that rank's machine and start the job again.", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)


def _not_joined(info: dict, where: str, waited_s: float, err: Exception) -> ValueError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return NotJoined(f"parallel: rank {info['rank']} of {info['world_size']} waited {waited_s:.0f} s at {where} and "
                      f"not every rank joined ({first[:120]}); start every rank with the same MASTER_ADDR and "
                      f"MASTER_PORT (torchrun starts them all).")


def init_distributed(
    *, device: str = "auto", timeout_s: float = 1800.0, fault_timeout_s: float | None = 60.0
) -> DistEnv:
    """Join the job: the process group (NCCL for CUDA devices, gloo otherwise), a gloo control group,
    and — unless ``fault_timeout_s`` is None — the watchdog. ``timeout_s`` bounds any single collective."""
    info = env_from_environment()
    torch_device = pick_device(device, int(info["local_rank"]))
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    timeout = datetime.timedelta(seconds=timeout_s)
    kwargs = {"device_id": torch_device} if backend == "nccl" else {}
    where = f"{info['master_addr']}:{info['master_port']}"
    joined = threading.Event()
    threading.Thread(target=_watch_start, args=(info, where, timeout_s, joined), daemon=True).start()
    started = time.monotonic()
    try:
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    except dist.DistNetworkError as err:  # rank 0 hosts the store (started without torchrun) on a taken port
        if "EADDRINUSE" in str(err):
            raise ValueError(f"parallel: MASTER_PORT {info['master_port']} is taken on this machine by another "
                             f"program, so rank {info['rank']} cannot host the job's store there; give every rank a "
                             f"free MASTER_PORT.") from None
        if "timed out" not in str(err):
            raise
        raise _not_joined(info, where, time.monotonic() - started, err) from None  # rank 0's store never came
    except dist.DistStoreError as err:  # the other ranks did not come
        raise _not_joined(info, where, time.monotonic() - started, err) from None
    finally:
        joined.set()
    ctrl = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    env = DistEnv(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(info["local_rank"]),
        backend=backend,
        device=torch_device,
        ctrl=ctrl,
    )
    if fault_timeout_s is not None:
        store = dist.TCPStore(
            str(info["master_addr"]),
            int(info["master_port"]),
            is_master=False,
            timeout=datetime.timedelta(seconds=max(5.0, fault_timeout_s / 2)),
            wait_for_workers=False,
        )
        env.watchdog = Watchdog(
            dist.PrefixStore("locallearn/watchdog", store),
            env.rank,
            env.world_size,
            timeout_s=fault_timeout_s,
            where=f"{info['master_addr']}:{info['master_port']}",
        )
        dist.barrier(group=ctrl)  # every rank has its store client before anyone starts watching
        env.watchdog.start()
    return env


def shutdown(env: DistEnv) -> None:
    """Leave the job cleanly: wait for every rank, stop the watchdog, destroy the process groups."""
    dist.barrier(group=env.ctrl)
    if env.watchdog is not None:
        env.watchdog.stop()
    dist.destroy_process_group()


class Watchdog:
    """Heartbeats and failure reports through the rendezvous store (see the module docstring)."""

    def __init__(
        self,
        store: dist.Store,
        rank: int,
        world_size: int,
        *,
        timeout_s: float = 60.0,
        interval_s: float | None = None,
        where: str = "",
    ) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.timeout_s = timeout_s
        self.interval_s = interval_s or min(1.0, timeout_s / 4)
        self.where = where
        self.watched = sorted({(rank - 1) % world_size, (rank + 1) % world_size} - {rank})
        self._stop = threading.Event()
        self._reported = False  # this rank published its own failure: the main thread exits, not the thread
        self._thread = threading.Thread(target=self._loop, name="locallearn-watchdog", daemon=True)

    @property
    def bound_s(self) -> float:
        """How long after a rank's death every other rank has exited, at most: the silence, the polling
        of the watcher and of the others, and rank 0's lingering (``linger``)."""
        return self.timeout_s + 4 * self.interval_s + 0.5

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.interval_s + 1)

    # --- reporting ---------------------------------------------------------------------------------------
    def report(self, message: str) -> str:
        """Publish this rank's failure unless another was published first; returns the failure that won."""
        self._reported = True
        try:
            return self.store.compare_set(_FAILURE, "", f"rank {self.rank}: {message}").decode()
        except Exception:  # the store is gone too: our own message is all there is
            return f"rank {self.rank}: {message}"

    def failure(self) -> str | None:
        """The published failure, if any."""
        if self.store.check([_FAILURE]):
            return self.store.get(_FAILURE).decode()
        return None

    def wait_for_failure(self, seconds: float, *, until: Callable[[], bool] = lambda: False) -> str | None:
        """Wait up to ``seconds`` for a failure to be published (or detected by this watchdog), or until
        ``until()`` holds."""
        deadline = time.monotonic() + seconds
        while True:  # a failure already published is read before ``until`` may end the wait
            try:
                found = self.failure()
            except Exception:
                return self._store_lost()
            if found:
                return found
            if time.monotonic() >= deadline or until():
                return None
            time.sleep(self.interval_s / 2)

    # --- the thread ----------------------------------------------------------------------------------------
    def linger(self) -> None:
        """Before this rank exits on a failure, give the others time (two polling intervals). Rank 0, where it
        hosts the store (started without torchrun), waits so that every other rank can read the failure there.
        Under torchrun, whose agent stops every rank once one has exited, the other ranks wait (longer than rank
        0, where both wait), so that rank 0 can print the error before it is stopped."""
        wait = 2 * self.interval_s + 0.5
        hosts = self.rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        if hosts:
            time.sleep(wait)
        elif self.rank != 0 and "TORCHELASTIC_RUN_ID" in os.environ:
            time.sleep(2 * wait)

    def _beat(self) -> None:
        self.store.add(f"beat/{self.rank}", 1)

    def _loop(self) -> None:
        last_seen = {r: (-1, time.monotonic()) for r in self.watched}
        while not self._stop.wait(self.interval_s):
            try:
                self._beat()
                found = self.failure()
                if found is None:
                    now = time.monotonic()
                    for r in self.watched:
                        count = self.store.add(f"beat/{r}", 0)
                        if count != last_seen[r][0]:
                            last_seen[r] = (count, now)
                        elif now - last_seen[r][1] > self.timeout_s:
                            found = self._publish_silence(r, now - last_seen[r][1])
                            break
            except Exception:
                found = self._store_lost()
            if found is not None and not self._stop.is_set() and not self._reported:
                self.linger()
                if not self._reported:  # this rank's own failure, meanwhile, is the main thread's to say
                    abort(found, self.rank)

    def _publish_silence(self, r: int, silent_s: float) -> str:
        message = (
            f"stopped responding (no heartbeat for {silent_s:.0f} s: killed, out of memory, or its machine is down)"
        )
        try:
            return self.store.compare_set(_FAILURE, "", f"rank {r}: {message}").decode()
        except Exception:
            return f"rank {r}: {message}"

    def _store_lost(self) -> str:
        return (
            f"rank 0 or the launcher: the rendezvous store at {self.where} is unreachable (it lives in the "
            f"launcher under torchrun, else in rank 0, which has died)"
        )


def abort(failure: str, rank: int) -> None:
    """Exit this process at once because of ``failure`` ("rank R: what happened"). A rank stopped by Ctrl-C
    stops the job as interrupted: rank 0 alone says what that rank said was kept (torchrun passes Ctrl-C to
    every rank, and one blocked in a transfer learns of it here rather than from its own signal), with the
    status of the signal that stopped it (130 for Ctrl-C, 143 for SIGTERM), whichever rank received it."""
    interrupted = re.fullmatch(r"rank \d+: (?:Interrupted|KeyboardInterrupt): ?(.*)", failure)
    if interrupted is None:
        print(f"locallearn: error: {failure.rstrip('.')}; rank {rank} stops.", file=sys.stderr, flush=True)
    elif rank == 0:
        print(f"locallearn: {interrupted[1] or 'interrupted'}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    if interrupted is None:
        os._exit(EXIT_FAILED)
    os._exit(EXIT_TERMINATED if interrupted[1].startswith("stopped by SIGTERM") else EXIT_INTERRUPTED)


def run_guarded(env: DistEnv, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on this rank, turning failures into the job-wide bounded exit.

    An exception raised here is published (the other ranks exit naming this rank). A broken link or a
    failed collective is usually a consequence, not a cause: then the watchdog names the rank that
    actually died. ValueErrors (bad input) and Ctrl-C (which torchrun sends to every rank) propagate for the
    CLI to print once, after being published.
    """
    interrupt.forget_sigterm()  # one of an earlier run in this process is not this one's
    try:
        return fn(*args, **kwargs)
    except BaseException as err:
        if env.watchdog is None:
            raise
        what = f"{type(err).__name__}: {' '.join(str(err).split())}"
        if is_comm_error(err):
            with interrupt.sigterm_noted():  # torchrun's agent stops the survivors at once (SIGKILL 30 s later)
                found = env.watchdog.wait_for_failure(env.watchdog.bound_s, until=interrupt.terminated)
            if found is None and interrupt.terminated():  # torchrun's agent stops this survivor (a rank died):
                env.watchdog.stop()  # it would be killed before the watchdog names that rank, without a word
                brief = what if len(what) <= 120 else what[:120].rsplit(" ", 1)[0] + " …"  # gloo's advice aside
                print(f"locallearn: error: rank {env.rank}: {brief} (the link to another rank broke) and torchrun "
                      f"stopped this rank (SIGTERM) before the rank that failed was known: torchrun's report names "
                      f"it; the last checkpoint is kept for --resume; rank {env.rank} stops.", file=sys.stderr,
                      flush=True)
                os._exit(EXIT_TERMINATED)
            found = found or env.watchdog.report(what)
            env.watchdog.stop()
            env.watchdog.linger()
            abort(found, env.rank)
        failure = env.watchdog.report(what)
        env.watchdog.stop()
        if not isinstance(err, (ValueError, KeyboardInterrupt)):  # the CLI prints these itself, on rank 0
            print(f"locallearn: error: {failure.rstrip('.')}; rank {env.rank} stops.", file=sys.stderr, flush=True)
        env.watchdog.linger()
        raise


_COMM_SIGNS = ("gloo", "nccl", "connection closed", "connection reset", "broken pipe", "socket")


def is_comm_error(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is a failed send, receive or collective: a peer's death seen
    from here. gloo raises plain RuntimeErrors, hence the look at the message."""
    from locallearn.distributed.comm import CommError

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (CommError, dist.DistError)):
            return True
        if isinstance(err, RuntimeError) and any(sign in str(err).lower() for sign in _COMM_SIGNS):
            return True
        err = err.__cause__ or err.__context__
    return False


# --- local launching (tests, benchmarks): what torchrun does on one machine, on the loopback interface --------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world_size: int, port: int, threads: int, stderr_path: str | None, env: dict, target,
           args) -> None:
    os.environ.clear()  # the parent's environment as it is now, not the fork server's from its start
    os.environ.update(
        env, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    if stderr_path is not None:  # this rank's messages, for a test to read
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        sys.stderr = os.fdopen(2, "w", buffering=1)
    torch.set_num_threads(threads)
    status = target(*args)
    sys.stdout.flush()
    sys.stderr.flush()
    if isinstance(status, int) and status:
        sys.exit(status)  # e.g. the CLI's exit status


_PRELOAD = ["torch", "torch._dynamo", "locallearn.distributed.runner"]  # what every rank imports (torch._dynamo: by
# torch.optim); the runner pulls in training and the core, and nothing here names a layer above this one

# variables torch and its libraries read when imported or loaded, and the fork server's at its start
_READ_AT_IMPORT = ("TORCH", "PYTORCH", "OMP_", "MKL_", "KMP_", "ATEN_", "ONEDNN_", "DNNL_", "CUDA_", "NCCL_", "GLOO_")
_server_env: dict[str, str] | None = None


def spawn_local(target, world_size: int, *args, threads: int = 1, stderr_dir: str | None = None) -> list:
    """Start ``world_size`` processes running ``target(*args)`` as ranks 0..N−1 of a job on 127.0.0.1, each
    with ``threads`` intra-op threads; returns the started ``multiprocessing.Process`` objects (``join_local``).
    ``stderr_dir``: each rank's standard error goes to ``stderr_dir/rank{r}.err``.

    Fresh processes, forked from multiprocessing's fork server rather than spawned: the server imports
    torch and locallearn once (it runs no tensor operation, so no thread pool is forked), and each rank
    starts from that state instead of importing them again, seconds per process. Each rank takes the
    parent's environment as it is at this call; torch reads some variables when it is imported
    (``TORCH_*``, ``OMP_*``, ...), so where one of those differs from when the server started, the ranks
    are spawned instead, importing torch under the environment of now."""
    import multiprocessing

    global _server_env
    now = {k: v for k, v in os.environ.items() if k.startswith(_READ_AT_IMPORT)}
    if _server_env is None:
        _server_env = now  # the fork server starts with this call's first rank
    ctx = multiprocessing.get_context("forkserver" if now == _server_env else "spawn")
    ctx.set_forkserver_preload(_PRELOAD)
    port = free_port()
    env = dict(os.environ)
    procs = []
    for rank in range(world_size):
        err = None if stderr_dir is None else os.path.join(stderr_dir, f"rank{rank}.err")
        p = ctx.Process(target=_child, args=(rank, world_size, port, threads, err, env, target, args), daemon=False)
        p.start()
        procs.append(p)
    return procs


def join_local(procs: list, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds in all for ``spawn_local``'s processes; kill (and reap) any still
    running then. Returns whether some had to be killed."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    return bool(alive)
