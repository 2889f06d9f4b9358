"""Checks that several test files make on different networks (imported as ``checks``: pytest puts
``tests/`` on the path)."""

import contextlib

import pytest

from locallearn.training import RunDir


def assert_gradient_isolation(net, x, y):
    """Run each module's forward and local loss by hand: its backward reaches its own parameters (some
    gradient non-zero) and no other module's — the greedy-local-learning contract (docs/methods.md §1)."""
    state, inp = net.begin(x, y), x
    for k in range(net.num_modules):
        net.zero_grad(set_to_none=True)
        h = net.module_forward(k, inp, state)
        loss, _ = net.local_loss(k, h, inp, state)
        loss.backward()
        own = {id(p) for p in net.module_parameters(k)}
        for name, p in net.named_parameters():
            if id(p) not in own:
                assert p.grad is None, f"module {k}'s loss reached {name}"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.module_parameters(k)), (
            f"module {k}'s loss reached none of its own parameters"
        )
        if k < net.num_modules - 1:
            inp = net.handoff(k, h, state)


def hub_unreachable(monkeypatch):
    """Online as far as the Hugging Face libraries know (no offline switch, no proxy), but the hub's endpoint
    does not answer: every connection fails at once with "no route to host"."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr("socket.create_connection", no_network)


@contextlib.contextmanager
def ctrl_c_before_checkpoint(epoch: int):
    """Inside: a run is interrupted (KeyboardInterrupt) where it would write epoch ``epoch``'s checkpoint, after
    that epoch's metrics line; every earlier checkpoint is written as usual."""
    real = RunDir.save_checkpoint

    def save(self, state):
        if state["epoch"] == epoch:
            raise KeyboardInterrupt
        real(self, state)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunDir, "save_checkpoint", save)
        yield
