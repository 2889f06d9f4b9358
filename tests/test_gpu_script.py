"""benchmarks/gpu.sh, the prepared GPU run, works: the same commands on tiny settings on the CPU
(``--cpu-smoke``), on Fashion-MNIST files of the official size written here."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from locallearn.data.fixtures import write_fashion_mnist

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"


@pytest.mark.slow
def test_the_gpu_script_runs_its_accuracy_grid_on_a_cpu(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "fashion"
    data.mkdir()
    for split, n in (("train", 60_000), ("t10k", 10_000)):
        write_fashion_mnist(data, split, rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, n),
                            gzipped=False)
    results = tmp_path / "results"
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PY": sys.executable, "OUT": str(out)}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke", str(data), str(results)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert "accuracy grid: 2 shards" in proc.stdout and "a shard stopped" not in proc.stdout
    rows = json.loads((results / "gpu_accuracy.json").read_text())["rows"]
    assert {r["cell"] for r in rows} == {"resnet32_e2e_k1_s0", "resnet32_contsup_k4_s0"}
    assert all(r["status"] == "ok" for r in rows) and (results / "gpu_accuracy.png").is_file()
    with tarfile.open(out / "gpu_results.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("gpu_accuracy.md") for n in names) and any(n.endswith("shard1.log") for n in names)
