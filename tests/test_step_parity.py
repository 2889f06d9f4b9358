"""One training step of every method equals the pinned numbers (tests/step_parity.py): losses, gradients,
parameters and BatchNorm statistics after the step. In float64 on every machine (relative tolerance 1e-9);
in float32, the bits of a run, where this platform has a pin (1e-6)."""

import json

import pytest
import torch

from step_parity import CASES, FLOAT64, RTOL, differences, float32_pin, platform_key, run_case


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_float64_step_equals_the_pinned_numbers(name):
    want = json.loads(FLOAT64.read_text())[name]
    assert differences(name, run_case(name, torch.float64), want, rtol=RTOL[torch.float64]) == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_float32_step_equals_this_platforms_pinned_bits(name):
    if not float32_pin().is_file():
        pytest.skip(f"no float32 pin for this platform ({platform_key()}): float32 sums are the CPU's; "
                    "`python tests/step_parity.py --pin-platform` records one")
    want = json.loads(float32_pin().read_text())[name]
    assert differences(name, run_case(name, torch.float32), want, rtol=RTOL[torch.float32]) == []


def test_a_changed_step_is_caught_by_the_float64_pin(monkeypatch):
    """The float64 pin sees a change far below float32's resolution: SGD's learning rate 1e-7 off."""
    real = torch.optim.SGD

    def nudged(params, lr, **options):
        return real(params, lr=lr * (1 + 1e-7), **options)

    monkeypatch.setattr(torch.optim, "SGD", nudged)
    want = json.loads(FLOAT64.read_text())["greedy_k4"]
    problems = differences("greedy_k4", run_case("greedy_k4", torch.float64), want, rtol=RTOL[torch.float64])
    assert problems and all(": params " in p for p in problems)
