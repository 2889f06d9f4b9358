"""``--compile`` (``training.runner.compile_parts``): each distinct call of a part compiles once and nothing
recompiles (no storm past Dynamo's limit, no traced meter hooks), losses and weights stay close to eager
training, and gradient isolation holds with compiled parts. No timing here: benchmarks/compile_speed.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

import locallearn as ll
from locallearn.data import BatchLoader, get_spec
from locallearn.engine import module_objective
from locallearn.training import runner
from locallearn.training.runner import (
    compile_parts,
    compiled_parts,
    evaluate,
    graphs_per_code,
    inductor,
    train_one_epoch,
)

pytestmark = pytest.mark.slow  # about a minute on two cores with an empty Inductor cache


def tiny_net(context: str) -> ll.LocalNet:
    torch.manual_seed(0)
    return ll.build("resnet20", method="contsup", num_modules=2, split="uniform", context=context, dataset="cifar10")


def loader(n: int, *, batch_size: int, train: bool) -> BatchLoader:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return BatchLoader(images, labels, spec=get_spec("cifar10"), batch_size=batch_size, train=train, seed=0, prefetch=0)


def call_signatures(net: ll.LocalNet, run) -> set:
    """The distinct calls of the parts while ``run()`` runs eagerly: (forward's code, architecture, input
    shape, whether the input needs grad, train/eval, grad mode) — what a compiled graph is specialised on."""
    seen: set = set()

    def record(part, args):
        x = args[0]
        seen.add((type(part).forward.__code__, repr(part), tuple(x.shape), x.requires_grad, part.training,
                  torch.is_grad_enabled()))

    handles = [part.register_forward_pre_hook(record) for part in compiled_parts(net)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.fixture
def dynamo():
    """A clean Dynamo whose configuration (``compile_parts`` raises the recompile limit) is restored after,
    and which raises instead of falling back to eager if a code object reaches the recompile limit."""
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(
        recompile_limit=torch._dynamo.config.recompile_limit, fail_on_recompile_limit_hit=True
    ):
        yield
    torch._dynamo.reset()


@pytest.fixture
def codegen_free(monkeypatch):
    """``compile_parts`` with the ``aot_eager`` backend: the same Dynamo graphs, split into forward and
    backward by AOTAutograd as with Inductor, run by eager kernels instead of generated C++. For what
    depends on the graphs and not on their code (graph counts, isolation, weight binding), at a fraction
    of the compile time; the Inductor numerics are tested with R1E, whose parts include every R0 part."""
    monkeypatch.setattr(runner, "inductor", "aot_eager")


@pytest.mark.parametrize("context, backend", [("R0", "aot_eager"), ("R1E", "inductor")])
def test_compiled_training_compiles_each_call_once_and_matches_eager(dynamo, monkeypatch, context, backend):
    if backend != "inductor":
        monkeypatch.setattr(runner, "inductor", backend)
    # 3 steps: the first under the memory meter (eager), then a compiled one, then a smaller last batch (eager)
    train, test = loader(20, batch_size=8, train=True), loader(12, batch_size=8, train=False)
    eager, compiled = tiny_net(context), tiny_net(context)
    probe = copy.deepcopy(eager)
    expected_train = call_signatures(probe, lambda: ll.train_step(probe, *next(iter(train)), _sgd(probe)))
    probe.eval()
    with torch.no_grad():
        expected_eval = call_signatures(probe, lambda: probe(next(iter(test))[0]))

    compile_parts(compiled)
    assert torch._dynamo.config.recompile_limit >= graphs_per_code(compiled_parts(compiled)) > 8
    results = []
    for net in (eager, compiled):
        train.set_epoch(0)
        results.append(train_one_epoch(net, train, _sgd(net)))
        assert counters["stats"]["unique_graphs"] == (len(expected_train) if net is compiled else 0)
    same_weights = tiny_net(context)
    same_weights.load_state_dict(compiled.state_dict())
    evaluations = [evaluate(net, test) for net in (same_weights, compiled)]
    # train: one graph per distinct call, compiled once; eval (full batch) adds its own; the smaller last
    # batches and the metered first step ran eagerly; nothing recompiled
    expected = len(expected_train) + len(expected_eval)
    assert counters["stats"]["unique_graphs"] == expected
    assert counters["frames"]["total"] == expected  # no other frame traced: not the meter's hooks either
    assert not counters["graph_break"]

    m_eager, m_compiled = results
    assert m_compiled["peak_memory_mb"] == m_eager["peak_memory_mb"]  # the meter counts eager's step
    for key in [k for k in m_eager if k.startswith("train_loss")]:
        assert m_compiled[key] == pytest.approx(m_eager[key], rel=1e-4), key
    # weights after the steps: close, relative to each tensor's largest entry (another summation order, amplified
    # by train-mode BatchNorm on batches of 8: single weights of the deepest units differ by up to 1.2e-4 on
    # AVX-512, 5e-4 of their tensor's largest entry; BatchNorm biases, near 0, by a few 1e-5)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        a, b = a.double(), b.double()
        assert float((a - b).abs().max()) <= 1e-3 * float(a.abs().max()) + 1e-4, name
    # the compiled inference forward against eager on the same weights
    assert evaluations[1]["test_loss"] == pytest.approx(evaluations[0]["test_loss"], rel=1e-4)


def test_compiled_parts_keep_gradient_isolation(dynamo, codegen_free):
    net = tiny_net("R1E")
    compile_parts(net)
    images, labels = next(iter(loader(8, batch_size=8, train=True)))
    state = net.begin(images, labels)
    net.train()
    loss0, _, h = module_objective(net, 0, images, state)
    net.zero_grad(set_to_none=True)
    loss1, _, _ = module_objective(net, 1, h, state)  # the hand-off inside detaches h
    loss1.backward()
    assert all(p.grad is None for p in net.module_parameters(0))  # module 1's loss cannot reach module 0
    assert all(p.grad is not None for p in net.module_parameters(1))
    trained_by_1 = {id(p) for p in net.module_parameters(1)}
    assert all(p.grad is None for p in net.parameters() if id(p) not in trained_by_1)
    loss0.backward()  # module 0's own graph is intact: its loss trains exactly its parts
    assert all(p.grad is not None for p in net.module_parameters(0))


def test_a_copy_of_a_compiled_net_computes_with_its_own_weights(dynamo, codegen_free):
    net = tiny_net("R0")
    compile_parts(net)
    clone = copy.deepcopy(net)
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(0.5)
    reference = tiny_net("R0")  # eager, with the clone's weights
    reference.load_state_dict(clone.state_dict())
    images = next(iter(loader(8, batch_size=8, train=False)))[0]
    for model in (net, clone, reference):
        model.eval()
    with torch.no_grad():
        assert torch.allclose(clone(images), reference(images), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(net(images), clone(images), rtol=1e-2)


def _sgd(net: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)



def saved_dtypes(fn, x: torch.Tensor) -> list[torch.dtype]:
    """The dtypes of the tensors a compiled forward saves for its backward."""
    saved: list[torch.dtype] = []

    def pack(t):
        saved.append(t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x).sum().backward()
    return saved


def test_compiled_relu_saves_its_output_not_a_bool_mask_on_cpu(dynamo):
    # the stock decomposition saves a bool mask, which Inductor's CPU code writes slowly; ours saves the
    # output, and the gradient is the same
    x = torch.randn(8, 4, 6, 6, requires_grad=True)
    stock = saved_dtypes(torch.compile(torch.relu, backend="inductor"), x)
    grad_stock = x.grad.clone()
    x.grad = None
    ours = saved_dtypes(torch.compile(torch.relu, backend=inductor), x)
    assert torch.bool in stock
    assert ours and torch.bool not in ours
    assert torch.equal(x.grad, grad_stock)
