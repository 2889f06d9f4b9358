"""Every example under examples/ runs (with a small workload) and prints what it promises, so the examples and
docs/custom-models.md, which quotes them, cannot rot."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RUNS = {  # example → (arguments that keep it short, what its output must show)
    "sequential_cnn_digits.py": (["--epochs", "1"], "final test accuracy"),
    "custom_backbone.py": (["--steps", "2"], "dgl: cuts [(1, 1), (2, 1)]"),
    "hf_resnet50_contsup.py": (["--steps", "1"], "resnet50 cut at [(1, 2), (2, 3), (3, 5)]"),
    "image_folder.py": (["--epochs", "1"], "done: test accuracy"),
}


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(RUNS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs(name, tmp_path):
    args, expected = RUNS[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = ["--out", str(tmp_path / "run")] if name in ("sequential_cnn_digits.py", "image_folder.py") else []
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args, *out], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expected in proc.stdout, proc.stdout[-2000:]
