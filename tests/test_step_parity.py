"""One training step of every method equals the pinned reference (tests/step_parity.py): losses,
gradients, parameters and BatchNorm statistics after the step, within 1e-6 relative."""

import json

import pytest

from step_parity import CASES, REFERENCE, differences, run_case

WANT = json.loads(REFERENCE.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_step_equals_the_pinned_numbers(name):
    assert differences(name, run_case(name), WANT[name]) == []
