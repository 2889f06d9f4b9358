"""The module-parallel pipeline (locallearn.distributed): messages, module assignment, layout checks, and
multi-process runs on CPU with gloo on 127.0.0.1 — equality with the single-process run (both schedules,
ContSup context E, R1, R2 and R1E crossing ranks), data parallelism inside a stage, failure handling.

The multi-process tests spawn 2-4 processes of one thread each on tiny networks (marked ``slow``)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

import locallearn as ll
from locallearn.distributed import comm
from locallearn.distributed.assign import assign_modules, check_assign, check_layout, parse_assign, partition
from locallearn.distributed.launch import free_port, init_distributed, join_local, run_guarded, shutdown, spawn_local
from locallearn.distributed.pipeline import (
    Layout,
    PipelineStage,
    check_same,
    image_needed_from,
    make_groups,
    stage_parts,
    stage_state_keys,
)
from locallearn.engine import train_step

# --- messages -------------------------------------------------------------------------------------------------


def test_message_round_trip_keeps_names_dtypes_shapes_and_values():
    tensors = {
        "h": torch.randn(3, 4, 5, 5),
        "labels": torch.tensor([1, 7, 2]),
        "image": torch.randn(3, 3, 8, 8).to(torch.bfloat16),
        "hist/0": torch.randn(3, 2, 5, 5).half(),
        "hist/12": torch.tensor([True, False, True]),
    }
    header, payload = comm.encode(comm.Message(comm.Kind.EVAL, 41, tensors))
    assert header.shape == (comm.HEADER_LEN,) and header.dtype == torch.int64
    out = comm.decode(header, payload)
    assert (out.kind, out.index, list(out.tensors)) == (comm.Kind.EVAL, 41, list(tensors))
    for name, t in tensors.items():
        assert out.tensors[name].dtype == t.dtype and torch.equal(out.tensors[name], t)


def test_message_without_tensors_and_bad_names():
    header, payload = comm.encode(comm.Message(comm.Kind.END))
    assert payload is None and comm.decode(header, None).kind == comm.Kind.END
    with pytest.raises(ValueError, match="cannot send a tensor named 'grad'"):
        comm.encode(comm.Message(comm.Kind.TRAIN, 0, {"grad": torch.zeros(1)}))


def test_message_detaches_values():
    h = torch.randn(2, 3, requires_grad=True) * 2
    header, payload = comm.encode(comm.Message(comm.Kind.TRAIN, 0, {"h": h}))
    out = comm.decode(header, payload).tensors["h"]
    assert not out.requires_grad and torch.equal(out, h.detach())


# --- assignment and layout ------------------------------------------------------------------------------------


def _brute_force_best(costs, stages):
    import itertools

    n, best = len(costs), float("inf")
    for cuts in itertools.combinations(range(1, n), stages - 1):
        bounds = (0, *cuts, n)
        best = min(best, max(sum(costs[a:b]) for a, b in zip(bounds[:-1], bounds[1:])))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_partition_minimises_the_slowest_stage(seed):
    g = torch.Generator().manual_seed(seed)
    costs = (torch.rand(7, generator=g) + 0.1).tolist()
    for stages in (1, 2, 3, 7):
        ranges = partition(costs, stages)
        assert [r.start for r in ranges][0] == 0 and ranges[-1].stop == 7 and all(len(r) for r in ranges)
        assert all(a.stop == b.start for a, b in zip(ranges[:-1], ranges[1:]))
        assert max(sum(costs[i] for i in r) for r in ranges) == pytest.approx(_brute_force_best(costs, stages))


def test_assignments_by_name_and_counts():
    net = ll.build("resnet20", method="contsup", num_modules=4, split="uniform", dataset="cifar10")
    assert assign_modules(net, 2, "even") == [range(0, 2), range(2, 4)]
    assert assign_modules(net, 3, "even") == [range(0, 2), range(2, 3), range(3, 4)]
    assert assign_modules(net, 2, "1,3") == [range(0, 1), range(1, 4)]
    assert assign_modules(net, 2, "balanced", costs=[1, 1, 1, 5]) == [range(0, 3), range(3, 4)]
    with pytest.raises(ValueError, match="add up to 4"):
        assign_modules(net, 2, [1, 2])
    with pytest.raises(ValueError, match="3 module counts given for 2 pipeline stages"):
        assign_modules(net, 2, "1,1,2")
    with pytest.raises(ValueError, match="2 module counts given for 1 pipeline stage; give one count per stage"):
        check_assign("2,2", 1, 4)
    with pytest.raises(ValueError, match="pipeline_assign: expected balanced or even"):
        parse_assign("fast")


def test_world_sizes_that_do_not_fit_are_refused():
    assert check_layout(4, 4, 1) == 4 and check_layout(4, 4, 2) == 2
    with pytest.raises(ValueError, match="5 ranks at --data-parallel 1 make 5 pipeline stages but the network has only 4"):
        check_layout(4, 5, 1)
    with pytest.raises(ValueError, match="world size 3 is not a multiple of --data-parallel 2"):
        check_layout(4, 3, 2)


def test_a_batch_the_replicas_cannot_share_equally_is_refused_before_connecting():
    """DDP averages the replicas' gradients with equal weights: 63 images as 32 + 31 is not the full batch's
    gradient (it trained without a word; `bench pipeline` refused the same case)."""
    from locallearn.distributed.runner import check_start
    from locallearn.training import resolve

    options = dict(parallel="pipeline", model="resnet20", num_modules=4, split="uniform")
    check_start(resolve({**options, "data_parallel": 2, "batch_size": 64}), 4)
    with pytest.raises(ValueError, match=r"^batch_size: 63 images do not split equally over --data-parallel 2 "
                                         r"replicas, .*; give a multiple of 2, e.g. --batch-size 62\.$"):
        check_start(resolve({**options, "data_parallel": 2, "batch_size": 63}), 4)
    check_start(resolve({**options, "batch_size": 63}), 2)  # one replica per stage: any batch


def test_fit_pipeline_refuses_a_world_size_before_connecting(monkeypatch, tmp_path):
    from locallearn.distributed import fit_pipeline
    from locallearn.training import resolve

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "5")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")  # nothing listens there: a connection attempt would fail differently
    cfg = resolve(model="resnet20", num_modules=4, split="uniform", parallel="pipeline", out=str(tmp_path / "r"))
    with pytest.raises(ValueError, match="make 5 pipeline stages but the network has only 4 local modules"):
        fit_pipeline(cfg)
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = resolve(model="resnet20", num_modules=4, split="uniform", parallel="pipeline", pipeline_assign="1,1,2")
    with pytest.raises(ValueError, match="3 module counts given for 2 pipeline stages"):
        fit_pipeline(cfg)


def test_several_ranks_without_parallel_are_refused(monkeypatch, tmp_path):
    from locallearn.training import fit, resolve

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="one of 2 ranks .torchrun. but --parallel is none"):
        fit(resolve(out=str(tmp_path / "r")))


def test_a_taken_master_port_is_one_line(monkeypatch):
    """Launched by hand, rank 0 hosts the store on MASTER_PORT: another program there was a traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for name, value in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                                MASTER_PORT=str(port)).items():
            monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=f"MASTER_PORT {port} is taken on this machine by another program"):
            init_distributed(device="cpu", fault_timeout_s=None)
    assert not torch.distributed.is_initialized()


def test_pipeline_needs_torchrun_environment(monkeypatch):
    from locallearn.distributed.launch import env_from_environment

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="start it with torchrun"):
        env_from_environment()


def test_train_config_parallel_options():
    from locallearn.training import resolve

    with pytest.raises(ValueError, match="parallel: unknown mode 'ring'; valid modes are none, pipeline"):
        resolve(parallel="ring")
    with pytest.raises(ValueError, match="--data-parallel applies to --parallel pipeline"):
        resolve(data_parallel=2)
    with pytest.raises(ValueError, match="fault_timeout must be a positive number"):
        resolve(parallel="pipeline", fault_timeout=0)
    assert resolve(parallel="pipeline", pipeline_assign="1,3").processes.pipeline_assign == "1,3"


@pytest.mark.parametrize(
    "method, options, start, expected",
    [
        ("contsup", dict(context="E"), 3, True),  # Enc_i(x) at every boundary
        ("contsup", dict(context="R1"), 1, True),  # boundary 0 reads ĥ_{−1} = x
        ("contsup", dict(context="R1"), 2, False),  # boundaries ≥ 1 read features only
        ("contsup", dict(context="R2"), 2, True),  # boundary 1 reads ĥ_0 and ĥ_{−1}
        ("contsup", dict(context="R2"), 3, False),
        ("greedy", {}, 1, False),
        ("infopro", {}, 3, False),  # the last module has no decoder
        ("infopro", {}, 2, True),
    ],
)
def test_which_stages_need_the_image(method, options, start, expected):
    net = ll.build("resnet20", method=method, num_modules=4, split="uniform", dataset="cifar10", **options)
    assert image_needed_from(net, start) is expected


def test_stage_state_keys_partition_the_state_dict():
    net = ll.build("resnet20", method="contsup", num_modules=4, context="R2E", split="uniform", dataset="cifar10")
    groups = [stage_state_keys(net, r) for r in (range(0, 1), range(1, 3), range(3, 4))]
    flat = [k for g in groups for k in g]
    assert len(flat) == len(set(flat)) and set(flat) == set(net.state_dict())
    params = [p for r in (range(0, 1), range(1, 3), range(3, 4)) for part in stage_parts(net, r) for p in part.parameters()]
    assert len(params) == len({id(p) for p in params}) == len(list(net.parameters()))


# --- multi-process runs: one job of 4 ranks serves several tests (process start-up dominates their time) -----
NET = dict(model="resnet20", method="contsup", split="uniform", dataset="cifar10")
JOBS = [  # (context, num_modules, sync) on 4 stages: one module per stage, or two on stage 0 for K=5
    ("R1E", 4, True),
    ("R1E", 4, False),
    ("E", 5, False),
    ("R1", 4, False),
    ("R2", 4, False),
]
FAILING_RANK = 2
FAULT_TIMEOUT = 5.0


def _net(context, k):
    torch.manual_seed(0)
    return ll.build(num_modules=k, context=context, **NET)


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)


def _batches(n, size=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def _train_and_save(env, layout, net, path, *, sync=False, data=None):
    links, dp_group, mesh = make_groups(layout, backend="gloo", device_type="cpu")
    modules = layout.assignment[layout.stage_of(env.rank)]
    optimizer = _sgd([p for part in stage_parts(net, modules) for p in part.parameters()])
    stage = PipelineStage(
        net, layout, env.rank, optimizer, device=env.device, sync=sync, links=links, dp_group=dp_group,
        barrier_group=env.ctrl,
    )
    data = data or _batches(3)
    train = stage.train_phase(data if stage.first else None)
    test = stage.eval_phase(data[:2] if stage.first else None)
    stage.close()
    state = net.state_dict()
    torch.save(
        {"state": {key: state[key] for key in stage_state_keys(net, modules)}, "images": train.images,
         "test_images": test.images, "correct": test.correct, "loss_sum": test.loss_sum, "last": stage.last,
         "mesh": mesh.mesh.tolist(), "batch_losses": train.batch_losses},
        path,
    )


def _four_ranks(out: str) -> None:
    env = init_distributed(device="cpu", fault_timeout_s=FAULT_TIMEOUT)

    def work():
        try:  # ranks started with different options are refused, by every rank
            check_same({"seed": 0, "lr": 0.1 if env.rank == 0 else 0.2}, group=env.ctrl)
        except ValueError as err:
            Path(out, f"refused{env.rank}.txt").write_text(str(err))
        for i, (context, k, sync) in enumerate(JOBS):  # the pipeline against the single process
            net = _net(context, k)
            layout = Layout(4, 1, tuple(assign_modules(net, 4, [k - 3, 1, 1, 1])))
            _train_and_save(env, layout, net, os.path.join(out, f"job{i}-rank{env.rank}.pt"), sync=sync)
        net = _net("R1E", 4)  # the overlapped pipeline learns: 16 steps on one batch
        layout = Layout(4, 1, tuple(assign_modules(net, 4, "even")))
        _train_and_save(env, layout, net, os.path.join(out, f"learn-rank{env.rank}.pt"), data=_batches(1) * 16)
        net = _net("R1E", 2)  # 2 stages × 2 data-parallel replicas
        _train_and_save(env, Layout(2, 2, (range(0, 1), range(1, 2))), net, os.path.join(out, f"dp-rank{env.rank}.pt"))
        torch.distributed.barrier(group=env.ctrl)
        if env.rank == FAILING_RANK:  # a rank fails: the others are waiting for it in a barrier
            Path(out, "failed_at").write_text(str(time.time()))
            raise RuntimeError("out of memory while allocating 12 GiB (simulated)")
        torch.distributed.barrier(group=env.ctrl)

    run_guarded(env, work)
    shutdown(env)


def _join(procs, timeout):
    assert not join_local(procs, timeout), f"ranks still running after {timeout} s"
    return [p.exitcode for p in procs]


def _run_four_ranks(out: Path) -> tuple[Path, list, float]:
    procs = spawn_local(_four_ranks, 4, str(out), stderr_dir=str(out))
    codes = _join(procs, 300)
    return out, codes, time.time()


@pytest.fixture(scope="session")
def four_ranks(tmp_path_factory, worker_id):
    """The 4-rank job, run once per session even under pytest-xdist (the workers share its results
    through a lock-guarded directory, as the xdist documentation recommends)."""
    if worker_id == "master":
        return _run_four_ranks(tmp_path_factory.mktemp("four_ranks"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent
    out = shared / "four_ranks"
    with FileLock(str(shared / "four_ranks.lock")):
        marker = out / "done.json"
        if marker.is_file():
            codes, ended = json.loads(marker.read_text())
            return out, codes, ended
        out.mkdir()
        result = _run_four_ranks(out)
        marker.write_text(json.dumps([result[1], result[2]]))
        return result


@pytest.mark.slow
def test_pipeline_equals_single_process_in_both_schedules_and_context_modes(four_ranks):
    out, _, _ = four_ranks
    for i, (context, k, sync) in enumerate(JOBS):
        net = _net(context, k)
        optimizer = _sgd(net.parameters())
        data = _batches(3)
        for images, labels in data:
            train_step(net, images, labels, optimizer)
        reference = net.state_dict()
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(x) for x, _ in data[:2]])
        labels = torch.cat([y for _, y in data[:2]])
        seen = set()
        for rank in range(4):
            result = torch.load(out / f"job{i}-rank{rank}.pt", weights_only=True)
            for key, value in result["state"].items():  # same seed, same batches: the same weights, bit for bit
                assert torch.equal(value, reference[key]), f"{context} sync={sync}: {key} differs on rank {rank}"
            seen |= set(result["state"])
            if result["last"]:
                assert result["correct"] == int((logits.argmax(1) == labels).sum())
                assert result["loss_sum"] == pytest.approx(
                    float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum")), rel=1e-5
                )
        assert seen == set(reference)


@pytest.mark.slow
def test_overlapped_pipeline_learns(four_ranks):
    out, _, _ = four_ranks
    per_rank = [torch.load(out / f"learn-rank{r}.pt", weights_only=True)["batch_losses"] for r in range(4)]
    loss = [sum(sum(rank[step][1]) for rank in per_rank) for step in range(16)]  # the sum of the 4 module losses
    assert loss[-1] < 0.4 * loss[0], loss
    last_module = [per_rank[3][step][1][0] for step in range(16)]  # the network's own cross-entropy
    assert last_module[-1] < 0.2 * last_module[0], last_module


@pytest.mark.slow
def test_data_parallel_replicas_of_a_stage_stay_identical(four_ranks):
    out, _, _ = four_ranks
    results = [torch.load(out / f"dp-rank{r}.pt", weights_only=True) for r in range(4)]
    assert results[0]["mesh"] == [[0, 1], [2, 3]]  # rank = stage · replicas + replica
    initial = _net("R1E", 2).state_dict()
    for a, b in ((0, 1), (2, 3)):  # DDP keeps a stage's replicas equal; BatchNorm statistics are shared too
        assert results[a]["state"].keys() == results[b]["state"].keys()
        for key, value in results[a]["state"].items():
            assert torch.equal(value, results[b]["state"][key]), key
        assert any(not torch.equal(v, initial[k]) for k, v in results[a]["state"].items() if v.is_floating_point())
    assert [r["images"] for r in results] == [12, 12, 12, 12]  # each replica trains half of every batch of 8
    assert sum(r["test_images"] for r in results[2:]) == 16


@pytest.mark.slow
def test_ranks_with_different_configs_are_refused(four_ranks):
    out, _, _ = four_ranks
    for rank in range(4):
        message = (out / f"refused{rank}.txt").read_text()
        assert "started with different configs: rank 1 has lr=0.2 (rank 0: 0.1)" in message


@pytest.mark.slow
def test_a_rank_that_raises_stops_every_rank_with_its_error(four_ranks):
    out, codes, ended = four_ranks
    assert all(code != 0 for code in codes)
    for rank in set(range(4)) - {FAILING_RANK}:
        err = (out / f"rank{rank}.err").read_text()
        assert "rank 2: RuntimeError: out of memory while allocating 12 GiB (simulated)" in err, err
    assert ended - float((out / "failed_at").read_text()) < FAULT_TIMEOUT + 10


# --- the train command: learning, the run directory, a killed rank, resume ----------------------------------------
TRAIN = [
    "train", "--parallel", "pipeline", "--device", "cpu", "--model", "resnet20", "--num-modules", "4",
    "--split", "uniform", "--epochs", "3", "--limit-train", "128", "--limit-test", "64", "--batch-size", "32",
    "--fault-timeout", "3",
]


def _report(path: str) -> None:
    Path(path, f"rank{os.environ['RANK']}").write_text(f"{os.environ.get('LOCALLEARN_TEST_VALUE')} {os.getcwd()} "
                                                         f"{torch.get_num_threads()} {torch.compiler.is_compiling()} "
                                                         f"{torch._dynamo.config.disable}")


@pytest.mark.slow
def test_spawned_ranks_take_the_environment_directory_and_threads_of_the_call(tmp_path, monkeypatch):
    # the fork server starts with the first call; what the parent changes after must still reach the ranks
    monkeypatch.delenv("TORCH_COMPILE_DISABLE", raising=False)
    for value, threads, disable in (("first", 1, None), ("second", 2, None), ("third", 1, "1")):
        out = tmp_path / value
        out.mkdir()
        monkeypatch.setenv("LOCALLEARN_TEST_VALUE", value)
        if disable:  # read by torch when it is imported: the ranks are spawned to see it
            monkeypatch.setenv("TORCH_COMPILE_DISABLE", disable)
        monkeypatch.chdir(out)
        procs = spawn_local(_report, 2, str(out), threads=threads)
        assert _join(procs, 120) == [0, 0]
        for rank in (0, 1):
            assert (out / f"rank{rank}").read_text() == f"{value} {out} {threads} False {bool(disable)}"


def _cli(argv):
    from locallearn.cli import main

    return main(argv)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_that_learns_of_another_ranks_ctrl_c_exits_as_interrupted(rank, monkeypatch, capsys):
    """A rank blocked in a transfer learns of a Ctrl-C from the failure another rank published (abort): it
    exits with the CLI's 130 (143 where a SIGTERM stopped that rank: it exited 130 whatever the signal), and
    only rank 0 says what was kept; any other failure is an error on every rank."""
    from locallearn.distributed import launch

    def exit_(code):
        raise SystemExit(code)

    monkeypatch.setattr(launch.os, "_exit", exit_)
    for failure, code, said in [
        ("rank 1: Interrupted: interrupted in epoch 2: the last good checkpoint (epoch 1) is kept in runs/x", 130,
         "locallearn: interrupted in epoch 2: the last good checkpoint (epoch 1) is kept in runs/x\n"),
        ("rank 1: KeyboardInterrupt: ", 130, "locallearn: interrupted\n"),
        ("rank 1: Interrupted: stopped by SIGTERM in epoch 3: the last good checkpoint (epoch 2) is kept in runs/x",
         143, "locallearn: stopped by SIGTERM in epoch 3: the last good checkpoint (epoch 2) is kept in runs/x\n"),
        ("rank 1: RuntimeError: boom", 1, f"locallearn: error: rank 1: RuntimeError: boom; rank {rank} stops.\n"),
    ]:
        with pytest.raises(SystemExit) as stop:
            launch.abort(failure, rank)
        assert stop.value.code == code
        assert capsys.readouterr().err == (said if rank == 0 or code == 1 else "")


@pytest.mark.slow
def test_ctrl_c_of_a_pipeline_run_is_said_once_by_rank_0(tmp_path):
    """torchrun passes Ctrl-C (SIGINT) to every rank: each stops at a safe point with status 130, and rank 0
    alone says what is kept, in one line (each rank used to print it, and an error line besides)."""
    run = tmp_path / "pipe"
    _pipeline_stopped_by_ctrl_c(run, tmp_path)
    said = [(tmp_path / f"rank{r}.err").read_text() for r in (0, 1)]
    lines = [line for line in said[0].splitlines() if line.startswith("locallearn")]
    assert len(lines) == 1 and lines[0].startswith("locallearn: interrupted in epoch "), said[0]
    assert "is kept in" in lines[0]  # the command that continues it is the pipeline's, on the ranks it ran on
    assert f"`torchrun --nproc-per-node 2 -m locallearn train --parallel pipeline --out {run} --resume` continues it" in lines[0]
    assert "locallearn" not in said[1] and "Traceback" not in said[0] + said[1], said


@pytest.mark.slow
def test_an_error_under_torchrun_is_said_by_rank_0_before_torchrun_stops_it(tmp_path):
    """torchrun's agent stops every rank once one has exited: the other ranks wait for rank 0 to print the error
    (rank 0 used to wait for them first, as the store's host it is not under torchrun, and was stopped before
    it printed: the user saw torchrun's report and no reason)."""
    import subprocess
    import sys

    run = tmp_path / "pipe"
    run.mkdir()
    (run / "summary.json").write_text("{}")  # a finished run: refused after the ranks have met
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(free_port()), "-m", "locallearn"]
    proc = subprocess.run([*torchrun, *TRAIN, "--out", str(run)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    said = [line for line in proc.stderr.splitlines() if line.startswith("locallearn:")]
    assert proc.returncode != 0 and said == [
        f"locallearn: error: {run} already holds a finished run; pass --overwrite to replace it, or choose another "
        f"--out."], proc.stderr


@pytest.mark.slow
def test_a_rank_that_fails_at_start_up_on_another_machine_is_named_and_nobody_waits(tmp_path):
    """Two torchrun agents, as on two machines; the second one's data folder is missing (data_dir may differ
    by rank). That rank's error was never printed (only rank 0 speaks) and rank 0 waited for it to join for 30
    minutes; now each machine's terminal names it, and rank 0 stops within seconds."""
    import subprocess
    import sys
    import time

    from PIL import Image

    for split in ("train", "test"):
        for name, colour in (("cat", (200, 30, 30)), ("dog", (30, 200, 30))):
            (tmp_path / "pics" / split / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (12, 12), colour).save(tmp_path / "pics" / split / name / f"{i}.png")
    port, missing = free_port(), tmp_path / "missing"
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "job", "--node-rank"]
    argv = [*TRAIN, "--dataset", "imagefolder", "--image-size", "8", "--limit-train", "8", "--limit-test", "4",
            "--batch-size", "4", "--out", str(tmp_path / "pipe")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    first = subprocess.Popen([*agent, "0", "-m", "locallearn", *argv, "--data-dir", str(tmp_path / "pics")],
                             stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(2)  # the first agent hosts the rendezvous, as the machine named by --rdzv-endpoint would
    second = subprocess.run([*agent, "1", "-m", "locallearn", *argv, "--data-dir", str(missing)],
                            capture_output=True, text=True, timeout=120, env=env)
    try:
        _, first_err = first.communicate(timeout=120)
    finally:
        first.kill()
    waited = time.monotonic() - started
    lines = [[line for line in err.splitlines() if line.startswith("locallearn:")]
             for err in (first_err, second.stderr)]
    reason = f"imagefolder: --data-dir {missing} does not exist"
    assert first.returncode != 0 and second.returncode != 0 and waited < 100, (first_err, second.stderr)
    assert len(lines[0]) == 1 and lines[0][0].startswith(f"locallearn: error: rank 1 of 2: {reason}"), first_err
    assert lines[0][0].endswith("; rank 0 stops before training: fix it on that rank's machine and start the job "
                                "again."), first_err
    assert len(lines[1]) == 1 and lines[1][0].startswith(f"locallearn: error: rank 1: {reason}"), second.stderr


@pytest.mark.slow
def test_a_replicas_share_of_one_image_is_refused_for_batchnorm1d(tmp_path):
    run = tmp_path / "pipe"
    argv = [*TRAIN, "--method", "dgl", "--data-parallel", "2", "--batch-size", "2", "--out", str(run)]
    assert _join(spawn_local(_cli, 4, argv, stderr_dir=str(tmp_path)), 120) == [2, 2, 2, 2]
    said = (tmp_path / "rank0.err").read_text()
    assert "not 1; give --batch-size 4 or more (each of the 2 data-parallel replicas" in said, said
    assert not run.exists()


@pytest.mark.slow
def test_a_last_batch_the_replicas_cannot_share_equally_leaves_out_its_last_images(tmp_path):
    """131 training images in batches of 32 on 2 replicas: the last batch of 3 trained as 2 + 1, DDP's equal
    weights making it another gradient than the batch's; it now leaves out its third image."""
    import json

    run = tmp_path / "run"
    argv = [*TRAIN, "--num-modules", "2", "--data-parallel", "2", "--epochs", "1", "--limit-train", "131",
            "--out", str(run)]
    assert _join(spawn_local(_cli, 2, argv, stderr_dir=str(tmp_path)), 180) == [0, 0]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["train_images"] == 130
    # a last batch of 2 is a share of one image each, which DGL's BatchNorm1d heads cannot take: skipped
    argv = [*argv[:-1], str(tmp_path / "dgl"), "--method", "dgl", "--limit-train", "130"]
    assert _join(spawn_local(_cli, 2, argv, stderr_dir=str(tmp_path)), 180) == [0, 0], (
        (tmp_path / "rank0.err").read_text()[-1500:])
    assert json.loads((tmp_path / "dgl" / "metrics.jsonl").read_text().splitlines()[-1])["train_images"] == 128


@pytest.mark.slow
def test_a_pipeline_run_resumed_in_one_process_says_so(tmp_path, capsys):
    """The start line names what a resume changes in how the run runs, the pipeline left included (the resumed
    run took the pipeline's `parallel` from config.yaml and said nothing), and the new checkpoint records it."""
    from locallearn.cli import main

    run = tmp_path / "pipe"
    _pipeline_stopped_by_ctrl_c(run, tmp_path)
    assert main(["train", "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "now with parallel ('pipeline' → 'none')" in out, out
    assert torch.load(run / "checkpoint.pt", weights_only=True)["config"]["processes"]["parallel"] == "none"


@pytest.mark.slow
def test_damaged_checkpoints_of_a_pipeline_run_are_said_once_each_on_resume(tmp_path):
    run = tmp_path / "pipe"
    _pipeline_stopped_by_ctrl_c(run, tmp_path, once="checkpoint.prev.pt")  # two epochs checkpointed
    for name in ("checkpoint.pt", *sorted(p.name for p in (run / "pipeline").glob("stage1-*"))[-1:]):
        with open(run / name if name.startswith("checkpoint") else run / "pipeline" / name, "r+b") as f:
            f.truncate(1000)
    procs = spawn_local(_cli_printing_to, 2, str(tmp_path / "rank0.out"), TRAIN + ["--out", str(run), "--resume"],
                        stderr_dir=str(tmp_path))
    assert _join(procs, 180) == [0, 0], (tmp_path / "rank0.err").read_text()[-2000:]
    said = (tmp_path / "rank0.out").read_text()
    assert said.count("checkpoint.pt cannot be read") == 1 and said.count("; it is not resumed from.") == 1, said
    assert "resuming after epoch 1" in said  # checkpoint.prev.pt, as stage 1's newest file is damaged
    from locallearn.training import RunDir

    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1, 2, 3]


@pytest.mark.slow
def test_a_resume_from_stage_files_ahead_of_checkpoint_pt_writes_it(tmp_path, capsys):
    """Stopped between the last epoch's stage saves and its merged checkpoint.pt: the resume restores the stage
    files and writes checkpoint.pt at once (it finished with checkpoint.pt, eval and load_net an epoch behind
    the summary). Stage files alone are resumed by their own layout only, not started over by another."""
    from locallearn.cli import main
    from locallearn.training import RunDir

    run = tmp_path / "pipe"
    assert _join(spawn_local(_cli, 2, [*TRAIN, "--out", str(run)], stderr_dir=str(tmp_path)), 180) == [0, 0]
    final = torch.load(run / "checkpoint.pt", weights_only=True)
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.prev.pt").rename(run / "checkpoint.pt")  # epoch 2: the merged save of epoch 3 never ran
    (run / "summary.json").unlink()
    procs = spawn_local(_cli, 2, [*TRAIN, "--out", str(run), "--resume"], stderr_dir=str(tmp_path))
    assert _join(procs, 180) == [0, 0], (tmp_path / "rank0.err").read_text()[-2000:]
    written = torch.load(run / "checkpoint.pt", weights_only=True)
    assert written["epoch"] == 3 and all(torch.equal(written["model"][k], v) for k, v in final["model"].items())
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    summary = RunDir(run).read_summary()
    assert f"test accuracy {100 * summary['test_acc']:.2f}%" in capsys.readouterr().out
    # no checkpoint.pt at all: another layout, or one process, refuses the stage files rather than starting over
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "summary.json"):
        (run / name).unlink()
    procs = spawn_local(_cli, 3, [*TRAIN, "--out", str(run), "--resume"], stderr_dir=str(tmp_path))
    codes = _join(procs, 180)  # each rank refuses alike (2), unless rank 0's published refusal reaches a slower
    assert codes[0] == 2 and all(code in (1, 2) for code in codes[1:]), codes  # rank first: the watchdog's exit (1)
    assert ("its pipeline stage files were written by 2 stages × 1 data-parallel (2 ranks), which alone can resume "
            "from them; resume with 2 ranks") in (tmp_path / "rank0.err").read_text()
    assert main(["train", "--out", str(run), "--resume"]) == 2
    said = capsys.readouterr().err
    assert "has no checkpoint.pt, only the stage files of the pipeline that trained it" in said
    assert f"resume it with `torchrun --nproc-per-node 2 -m locallearn train --parallel pipeline --out {run} --resume`" in said
    assert main(["eval", str(run), "--device", "cpu"]) == 2  # eval says the same, not "no epoch finished"
    assert f"trained it; `torchrun --nproc-per-node 2 -m locallearn train --parallel pipeline --out {run} --resume` writes it from them, then eval works" in capsys.readouterr().err
    # the same ranks, another assignment of modules: told which one can resume them
    stored = [b - a + 1 for a, b in torch.load(run / "pipeline" / "stage0-epoch3.pt", weights_only=True)["layout"]["modules"]]
    other = "1,3" if stored != [1, 3] else "3,1"
    procs = spawn_local(_cli, 2, [*TRAIN, "--out", str(run), "--resume", "--pipeline-assign", other],
                        stderr_dir=str(tmp_path))
    assert _join(procs, 180) == [2, 2]
    assert f"which alone can resume from them; resume with --pipeline-assign {','.join(map(str, stored))}, or start " \
        "over with --overwrite." in (tmp_path / "rank0.err").read_text()
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1, 2, 3]  # nothing was started over
    # their own layout with every stage file damaged: nothing sound to resume, results to lose: refused too
    for path in (run / "pipeline").glob("stage*.pt"):
        path.write_bytes(path.read_bytes()[:100])
    procs = spawn_local(_cli, 2, [*TRAIN, "--out", str(run), "--resume"], stderr_dir=str(tmp_path))
    assert _join(procs, 180) == [2, 2]
    assert "holds results (3 epochs in metrics.jsonl) but no sound checkpoint" in (tmp_path / "rank0.err").read_text()
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1, 2, 3]


def _cli_of_rank(argvs):
    """The command line of this rank, ``argvs[RANK]`` (nodes that typed different commands)."""
    return _cli(argvs[int(os.environ["RANK"])])


@pytest.mark.slow
def test_ranks_started_with_and_without_resume_are_refused_in_one_line(tmp_path):
    run = tmp_path / "pipe"
    argv = [*TRAIN, "--out", str(run)]
    procs = spawn_local(_cli_of_rank, 2, [argv + ["--resume"], argv], stderr_dir=str(tmp_path))
    assert _join(procs, 120) == [2, 2]
    said = (tmp_path / "rank0.err").read_text()
    assert ("parallel: the ranks were started with different flags: rank 1 has resume=False (rank 0: True); start "
            "every rank with the same command and options.") in said and "Traceback" not in said, said
    assert not run.exists()


def _pipeline_stopped_by_ctrl_c(run, tmp_path, once="checkpoint.pt"):
    """A 2-rank pipeline run of ``TRAIN`` into ``run``, stopped by Ctrl-C (to every rank, as torchrun passes it)
    once ``run/once`` exists; both ranks stop with status 130. Their standard error is in ``tmp_path``."""
    procs = spawn_local(_cli, 2, TRAIN + ["--out", str(run)], stderr_dir=str(tmp_path))
    while not (run / once).exists():
        assert all(p.is_alive() for p in procs), f"the run ended before {once} was written"
        time.sleep(0.05)
    for p in procs:
        os.kill(p.pid, signal.SIGINT)
    assert _join(procs, 60) == [130, 130]


def _cli_printing_to(path, argv):
    """The command line, rank 0's standard output in ``path``."""
    import sys

    if os.environ["RANK"] == "0":
        sys.stdout = open(path, "w", buffering=1)
    return _cli(argv)


@pytest.mark.slow
def test_train_command_killed_rank_then_resume_equals_single_process(tmp_path):
    from locallearn.training import RunDir, fit, load_config

    run = tmp_path / "pipe"
    argv = TRAIN + ["--out", str(run), "--pipeline-assign", "1,3"]
    procs = spawn_local(_cli, 2, argv, stderr_dir=str(tmp_path))
    while not (run / "checkpoint.pt").exists():  # epoch 1 fully checkpointed (stage files first)
        assert all(p.is_alive() for p in procs), "the run ended before epoch 1 was checkpointed"
        time.sleep(0.05)
    os.kill(procs[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    codes = _join(procs, 60)
    assert codes[1] == -signal.SIGKILL and codes[0] == 1
    assert time.monotonic() - killed < 3 + 4 * 0.75 + 0.5 + 10  # the watchdog bound (Watchdog.bound_s) + slack
    assert "rank 1: stopped responding" in (tmp_path / "rank0.err").read_text()
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert done >= 1 and sorted(os.listdir(run / "pipeline"))[0].startswith("stage0-epoch")

    # resumed with another assignment, which it gets (its stage files fit the old one: checkpoint.pt is read)
    procs = spawn_local(_cli, 2, argv + ["--resume", "--pipeline-assign", "2,2"], stderr_dir=str(tmp_path))
    assert _join(procs, 180) == [0, 0], (tmp_path / "rank0.err").read_text()[-2000:]
    records = RunDir(run).read_metrics()  # checksums verified and removed
    assert [r["epoch"] for r in records] == [1, 2, 3]

    torch.set_num_threads(1)
    single = tmp_path / "single"
    fit(load_config(**_flags(TRAIN + ["--out", str(single)])), log=lambda _: None)
    a = torch.load(run / "checkpoint.pt", weights_only=True)
    b = torch.load(single / "checkpoint.pt", weights_only=True)
    assert list(a["model"]) == list(b["model"])
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    for i, state in b["optimizer"]["state"].items():
        assert torch.equal(a["optimizer"]["state"][i]["momentum_buffer"], state["momentum_buffer"])
    expected = RunDir(single).read_metrics()
    timing = {"epoch_time_s", "train_time_s", "images_per_s", "peak_memory_mb"}
    for got, want in zip(records, expected):
        assert list(got) == list(want) + ["ranks"]  # the same form, plus per-rank throughput and memory
        assert {k: v for k, v in got.items() if k not in timing | {"ranks"}} == {
            k: v for k, v in want.items() if k not in timing
        }
    assert [r["modules"] for r in records[0]["ranks"]] == [[0, 0], [1, 3]]
    assert [r["modules"] for r in records[-1]["ranks"]] == [[0, 1], [2, 3]]
    # a stage's activations are at most the whole network's in one process (which also counts what is held
    # between modules): a received message was a view of one payload, charged whole to a later module of the
    # stage that kept only its labels or image (4 MiB above the single process here)
    for got, want in zip(records[1:], expected[1:]):  # the epochs of stages of two modules each
        assert got["peak_memory_mb"] <= want["peak_memory_mb"], (got["peak_memory_mb"], want["peak_memory_mb"])
    derived = [line for line in (single / "config.yaml").read_text().splitlines() if line.startswith("# cuts")]
    assert derived and derived[0] in (run / "config.yaml").read_text()
    summary = json.loads((run / "summary.json").read_text())
    reference = json.loads((single / "summary.json").read_text())
    assert set(summary) == set(reference) | {"pipeline"}
    assert summary["test_acc"] == reference["test_acc"]
    assert summary["pipeline"]["modules"] == [[0, 1], [2, 3]] and len(summary["pipeline"]["ranks"]) == 2


def _flags(argv):
    """Options from `train` flags (the pipeline ones dropped: the single-process reference)."""
    values, i = {}, 1
    while i < len(argv):
        name = argv[i][2:].replace("-", "_")
        values[name] = argv[i + 1]
        i += 2
    for name in ("parallel", "fault_timeout"):
        values.pop(name, None)
    for name in ("num_modules", "epochs", "limit_train", "limit_test", "batch_size"):
        values[name] = int(values[name])
    return values


def test_a_resumed_stage_keeps_the_classes_its_checkpoint_was_trained_on():
    """What a pipeline resume hands to the class check (fit.check_same_run): the run's identity, class names
    included, from a stage file or the merged checkpoint alike."""
    from locallearn.distributed.runner import _identity

    state = {"format": 2, "run_id": "r", "config": {"net": {}}, "class_names": ["cat", "dog"], "model": {}, "epoch": 3}
    assert _identity(state) == {"format": 2, "run_id": "r", "config": {"net": {}}, "class_names": ["cat", "dog"]}
    assert "class_names" not in _identity({"format": 2, "run_id": "r"})  # a checkpoint of an earlier release


def test_a_pipeline_runs_summary_names_its_classes_as_a_single_process_does():
    """run_summary adds the training data's class names for every runner (a pipeline's summary left them
    out), then the runner's own figures."""
    from types import SimpleNamespace

    from locallearn import build
    from locallearn.training.config import resolve
    from locallearn.training.fit import run_summary

    config = resolve(model="resnet20", method="greedy", num_modules=2, split="uniform", dataset="cifar10")
    net = build(model="resnet20", method="greedy", num_modules=2, split="uniform")
    history = [{"epoch": 1, "test_acc": 0.5, "test_loss": 1.0, "train_time_s": 1.0, "images_per_s": 10.0,
                "epoch_time_s": 1.5, "peak_memory_mb": 1.0, "peak_memory_kind": "saved_tensors"}]
    runner = SimpleNamespace(net=net, class_names=["cat", "dog"], summary=lambda h: {"pipeline": {"stages": 2}})
    summary = run_summary(history, config, runner, parameters=1)
    assert summary["class_names"] == ["cat", "dog"] and summary["pipeline"] == {"stages": 2}
    assert "class_names" not in run_summary(history, config, SimpleNamespace(**{**vars(runner), "class_names": None}), 1)


def test_a_stage_checkpoint_of_another_network_is_one_line():
    """A resumed stage's weights of another shape (the model's code changed) are refused naming the tensor,
    as a single-process resume refuses them, not with load_state_dict's multi-line error."""
    from locallearn import build
    from locallearn.distributed.runner import Layout, _load_owned

    net = build("resnet20", method="greedy", num_modules=2, split="uniform")
    layout = Layout(2, 1, ((0,), (1,)))
    state = dict(net.state_dict())
    key = next(k for k in state if k.endswith("weight") and state[k].dim() == 4)
    _load_owned(net, state, layout, 0)  # its own weights load
    state[key] = torch.zeros(1, *state[key].shape[1:])
    with pytest.raises(ValueError, match=rf"^--resume: the checkpoint of stage 0 holds '{key}' of shape \(1, .*the "
                                         r"network's is .*; it belongs to another network: resume it with the options "
                                         r"and model code it was trained with"):
        _load_owned(net, state, layout, 0)
    state.pop(key)
    with pytest.raises(ValueError, match=rf"^--resume: the checkpoint of stage 0 lacks '{key}'"):
        _load_owned(net, state, layout, 0)


@pytest.mark.slow
def test_resume_with_pipeline_assign_fits_the_runs_own_modules_not_the_flags_default(tmp_path):
    """A run of K = 8 resumed with --pipeline-assign 3,5 and no --num-modules: the counts are checked against
    the run's K (8), not the default K a flag-only config has (4), which refused them before any connection."""
    from locallearn.training import fit, load_config

    run = tmp_path / "k8"
    flags = ["--model", "resnet20", "--num-modules", "8", "--split", "uniform", "--epochs", "1",
             "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--out", str(run)]
    fit(load_config(**_flags(["train", *flags])), log=lambda _: None)
    argv = ["train", "--parallel", "pipeline", "--device", "cpu", "--fault-timeout", "3", "--out", str(run),
            "--resume", "--pipeline-assign", "3,5"]
    procs = spawn_local(_cli_printing_to, 2, str(tmp_path / "out0"), argv, stderr_dir=str(tmp_path))
    assert _join(procs, 120) == [0, 0], (tmp_path / "rank0.err").read_text()[-2000:]
    assert "already finished (1 epoch); nothing to resume" in (tmp_path / "out0").read_text()


def test_each_rank_of_a_machine_gets_its_own_gpu_or_every_rank_refuses(monkeypatch):
    """Ranks beyond the GPUs shared one (LOCAL_RANK modulo the count), which NCCL cannot run; now every rank of a
    machine whose processes (LOCAL_WORLD_SIZE) see more than one GPU but fewer than there are ranks refuses in one
    line (the same on each, so rank 0 says it). One visible GPU is each process's own."""
    from locallearn.distributed.launch import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert [pick_device("cuda", r) for r in (0, 1)] == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert pick_device("cuda:1", 0) == torch.device("cuda", 1)  # a device named by index is taken as given
    assert pick_device("cpu", 1) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU each (CUDA_VISIBLE_DEVICES per task)
    assert pick_device("cuda", 1) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")  # started by hand: LOCAL_RANK falls back to RANK, not a count
    assert pick_device("auto", 5) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    for rank in (0, 2):
        with pytest.raises(ValueError, match=r"^device: 3 ranks on this machine but 2 GPUs, and each rank needs its "
                                             r"own; start at most 2 \(torchrun --nproc-per-node 2\), or train on the "
                                             r"CPU \(--device cpu\)\.$"):
            pick_device("cuda", rank)


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_started_alone_says_it_waits_and_times_out_in_one_line(rank):
    """Ranks started by hand (no torchrun) waited in silence for ranks that never came, then ended in a
    traceback: now a rank still waiting after WAIT_NOTICE_S says so, and the timeout is one ValueError."""
    import subprocess
    import sys

    code = ("import locallearn.distributed.launch as l; l.WAIT_NOTICE_S = 0.5\n"
            "try:\n    l.init_distributed(device='cpu', timeout_s=3, fault_timeout_s=None)\n"
            "except ValueError as err:\n    print('refused:', err)\n")
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    where = f"127.0.0.1:{env['MASTER_PORT']}"
    assert (f"locallearn: rank {rank} of 2 is waiting for the other ranks to join at {where} (for up to 3 s); start "
            "every rank with the same MASTER_ADDR and MASTER_PORT (torchrun starts them all).") in proc.stderr
    assert re.match(rf"refused: parallel: rank {rank} of 2 waited \d+ s at {re.escape(where)} and not every rank "
                    r"joined \(", proc.stdout), proc.stdout + proc.stderr[-2000:]
    # the time it waited (at least the timeout; connecting retries may add to it)
    assert int(re.search(r"waited (\d+) s", proc.stdout)[1]) >= 3


def test_a_rank_that_never_met_the_others_says_its_own_error(tmp_path, monkeypatch, capsys):
    """Rank 0 relays the errors of the others once they have met; one before (the join timed out) is said by
    the rank itself, whatever its rank (the CLI printed nothing on rank 1)."""
    from locallearn.cli import main
    from locallearn.distributed import runner
    from locallearn.distributed.launch import NotJoined

    def never_met(**_):
        raise NotJoined("parallel: rank 1 of 2 waited 1800 s at 127.0.0.1:1 and not every rank joined (...)")

    monkeypatch.setattr(runner, "init_distributed", never_met)
    for name, value in dict(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(name, value)
    assert main([*TRAIN, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == ("locallearn: error: parallel: rank 1 of 2 waited 1800 s at 127.0.0.1:1 and not "
                                       "every rank joined (...)\n")


@pytest.mark.slow
def test_a_pipeline_resume_with_both_checkpoints_damaged_resumes_from_sound_stage_files(tmp_path):
    """checkpoint.pt and checkpoint.prev.pt damaged, the stage files sound: the resume reads the stage files and
    writes checkpoint.pt from them (it was refused and told to start over with --overwrite, which would have
    deleted them), saying what was damaged and what it read instead."""
    from locallearn.training import RunDir

    run = tmp_path / "pipe"
    assert _join(spawn_local(_cli, 2, [*TRAIN, "--out", str(run)], stderr_dir=str(tmp_path)), 180) == [0, 0]
    final = torch.load(run / "checkpoint.pt", weights_only=True)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run / name).write_bytes((run / name).read_bytes()[:1000])
    (run / "summary.json").unlink()
    procs = spawn_local(_cli_printing_to, 2, str(tmp_path / "out0"), [*TRAIN, "--out", str(run), "--resume"],
                        stderr_dir=str(tmp_path))
    assert _join(procs, 180) == [0, 0], (tmp_path / "rank0.err").read_text()[-2000:]
    said = (tmp_path / "out0").read_text()
    assert f"warning: {run / 'checkpoint.pt'} cannot be read, it is damaged" in said
    assert "; resuming from the pipeline's stage files (epoch 3) instead." in said
    written = torch.load(run / "checkpoint.pt", weights_only=True)
    assert written["epoch"] == 3 and all(torch.equal(written["model"][k], v) for k, v in final["model"].items())
    assert RunDir(run).finished and [r["epoch"] for r in RunDir(run).read_metrics()] == [1, 2, 3]


@pytest.mark.slow
def test_a_file_where_the_stage_files_go_is_refused_before_training(tmp_path):
    """A file named pipeline/ in the run directory failed at the first epoch's save, the epoch lost and the error
    said once per rank; now it is refused at the start, in one line."""
    run = tmp_path / "pipe"
    run.mkdir()
    (run / "pipeline").write_text("x")
    procs = spawn_local(_cli, 2, [*TRAIN, "--out", str(run)], stderr_dir=str(tmp_path))
    assert _join(procs, 120) == [2, 2]
    said = [line for line in (tmp_path / "rank0.err").read_text().splitlines() if line.startswith("locallearn")]
    assert said == [f"locallearn: error: {run / 'pipeline'} is not a directory (the pipeline keeps its stage "
                    f"checkpoints there); move it away."], said
    assert not (run / "metrics.jsonl").exists()


def test_the_resume_command_of_a_pipeline_on_several_machines_names_nodes_and_ranks_per_node(tmp_path):
    from locallearn.training import RunDir
    from locallearn.training.runner import resume_command

    run = RunDir(tmp_path / "r")
    tail = f"-m locallearn train --parallel pipeline --out {run.path} --resume"
    assert resume_command(run, pipeline=True, ranks="4", per_node="2") == (
        f"torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id ID {tail}")
    assert resume_command(run, pipeline=True, ranks="2", per_node="2") == f"torchrun --nproc-per-node 2 {tail}"
    assert resume_command(run, pipeline=True, ranks=None) == f"torchrun --nproc-per-node N {tail}"
    assert resume_command(run) == f"locallearn train --out {run.path} --resume"


def test_a_survivor_that_torchrun_stops_before_the_dead_rank_is_named_still_says_so(monkeypatch, capsys):
    """A rank died; the survivor's transfer broke, and it waited for its watchdog to name the dead rank (up to
    --fault-timeout + a few s) while torchrun's agent, which stops every rank once one has failed, sent SIGTERM
    and then SIGKILL: it ended without a line (the run's stop request was dropped as the error left it). A SIGTERM
    before or while it waits ends the wait: one line, status 143."""
    from locallearn.distributed import launch
    from locallearn.training import interrupt

    def exit_(code):
        raise SystemExit(code)

    monkeypatch.setattr(launch.os, "_exit", exit_)
    watchdog = launch.Watchdog(torch.distributed.HashStore(), 1, 2, timeout_s=60.0)  # nobody will name the dead
    watchdog.start()
    env = launch.DistEnv(rank=1, world_size=2, local_rank=1, backend="gloo", device=torch.device("cpu"),
                         ctrl=None, watchdog=watchdog)
    def broken():  # the agent's SIGTERM came while the transfer was blocked: the run's stop request, dropped
        with interrupt.stop_between_batches():  # as the error leaves the run, is remembered
            os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError("[gloo] Connection closed by peer")

    started = time.monotonic()
    try:
        with pytest.raises(SystemExit) as stop:
            launch.run_guarded(env, broken)
    finally:
        interrupt._terminated.clear()
    assert stop.value.code == 143 and time.monotonic() - started < 10
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and said.startswith("locallearn: error: rank 1: RuntimeError: [gloo] Connection closed "
                                                     "by peer (the link to another rank broke) and torchrun stopped")
    # a failure already published is the one said, SIGTERM or not; and a SIGTERM of an earlier run in this
    # process is not this one's (the wait for the watchdog is not cut short by it)
    watchdog.store.set("failure", "rank 0: stopped responding")  # as the watchdog names a dead rank
    for signalled in (True, False):
        interrupt._terminated.set()

        def broken_too():
            with interrupt.stop_between_batches():
                if signalled:
                    os.kill(os.getpid(), signal.SIGTERM)
                raise RuntimeError("[gloo] Connection closed by peer")

        try:
            with pytest.raises(SystemExit) as stop:
                launch.run_guarded(env, broken_too)
        finally:
            interrupt._terminated.clear()
        assert stop.value.code == 1 and capsys.readouterr().err == (
            "locallearn: error: rank 0: stopped responding; rank 1 stops.\n")


def test_a_restarted_attempt_does_not_read_the_start_up_failure_of_the_one_before(monkeypatch, agent_store):
    """torchrun keeps its store across --max-restarts (and counts the restarts per machine): a failure published
    by an earlier attempt stopped the next one before it could start, with the earlier attempt's error. A
    failure is read only where its process started with this one's attempt."""
    from locallearn.distributed import launch

    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("TORCHELASTIC_RUN_ID", "job")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(launch, "START_WAIT_S", 0.2)
    assert launch.start_failure("imagefolder: --data-dir /x does not exist") is True  # rank 0 said nothing
    published = agent_store.get("locallearn/start-failure/job")
    assert launch._fresh(published) == "rank 1 of 2: imagefolder: --data-dir /x does not exist"
    earlier = f"{launch._process_start() - 8:.3f} rank 1 of 2: imagefolder: --data-dir /x does not exist"
    assert launch._fresh(earlier.encode()) is None  # a process of the attempt before (8 s earlier)
