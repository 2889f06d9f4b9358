"""The project's own benchmark targets (benchmarks/targets.py): met, missed and not measured; the automatic
split against the papers' tables; FeatRecon against InfoPro-Transformer; what benchmarks/run.py writes."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from locallearn.bench.grid import GridSpec
from locallearn.bench.runner import RunOptions, run_memory, run_speed

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # benchmarks/run.py imports its neighbour targets.py, as a script does


def _load(name):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


targets = _load("targets")
evaluate = targets.evaluate
TINY = dict(models=("resnet20",), batch_sizes=(2,))


def _row(**fields):
    row = dict(model="resnet110", method="contsup", num_modules=16, split="paper", context="R0", batch_size=32,
               image_size=32, device="cpu", status="ok", reason=None, peak_activation_bytes=100,
               activation_reduction=9.5)
    row.update(fields)
    return row


def test_targets_met_missed_and_not_measured():
    rows = [
        _row(),
        _row(context="R1E", activation_reduction=5.0),
        _row(num_modules=4, split="balanced", peak_activation_bytes=100, activation_reduction=3.6),
        _row(num_modules=4, split="auto", peak_activation_bytes=90, activation_reduction=4.0),
        _row(num_modules=16, split="balanced", peak_activation_bytes=10),  # no table at K=16: not compared
        _row(num_modules=16, split="auto", peak_activation_bytes=20),
    ]
    found = {t["target"]: t for t in evaluate(rows, "memory")}
    assert found["ResNet-110, K=16, paper split, ContSup R0: ≥ 9× below e2e"]["status"] == "met"
    assert found["ResNet-110, K=16, paper split, ContSup R1E: ≥ 6× below e2e"]["status"] == "missed"
    assert found["ResNet-32, K=16, paper split, ContSup R0: ≥ 6× below e2e"]["status"] == "not measured"
    split = [t for name, t in found.items() if name.startswith("automatic split")]
    assert len(split) == 1 and split[0]["status"] == "met" and split[0]["measured"] == pytest.approx(0.9)
    assert split[0]["target"].endswith("contsup R0, K=4")


def test_swin_targets_and_featrecon_against_infopro_transformer():
    def row(method, k, split, ratio, peak, decoder=None):
        return _row(model="swin_tiny", method=method, num_modules=k, split=split, context="R0", batch_size=2,
                    image_size=224, feature_decoder=decoder, activation_ratio=ratio, peak_activation_bytes=peak)

    rows = [row("e2e", 1, None, 1.0, 100), row("infopro", 2, "stages", 1.05, 105),
            row("featrecon", 2, "stages", 0.60, 60, "linear"), row("featrecon", 2, "stages", 0.70, 95, "conv"),
            row("featrecon", 4, "balanced", 0.30, 30, "linear")]  # no InfoPro-Transformer partner
    found = evaluate(rows, "memory")
    stage2 = [t for t in found if t["target"].startswith("Swin-Tiny, K=2, stages split, FeatRecon")]
    assert [(t["where"].split(", ")[-1], t["status"]) for t in stage2] == [("linear decoder", "met"),
                                                                          ("conv decoder", "missed")]
    pair = [t for t in found if t["target"].startswith("Swin-Tiny: FeatRecon ≥ 12% below InfoPro")]
    assert [round(t["measured"], 3) for t in pair] == [round(60 / 105, 3), round(95 / 105, 3)]
    assert [t["status"] for t in pair] == ["met", "missed"]  # the published 12% less: ≤ 0.88
    assert all(t["threshold"] == 0.88 and t["target"].endswith("featrecon, K=2, stages split") for t in pair)
    balanced4 = next(t for t in found if t["target"].startswith("Swin-Tiny, K=4, balanced split, FeatRecon"))
    assert balanced4["status"] == "met" and balanced4["threshold"] == 0.35


def test_compiled_rows_against_the_same_configuration_eager():
    rows = [_row(model="resnet32", context=c, compiled=comp, step_time_s=t) for c, comp, t in
            (("R1", False, 2.0), ("R1", True, 1.5), ("R1E", False, 4.0), ("R1E", True, 5.0), ("E", True, 1.0))]
    found = [t for t in evaluate(rows, "speed") if "compiled ÷" in t["target"]]
    by_context = {t["target"].split(": contsup ")[1].split(",")[0]: t for t in found if "ResNet-32" in t["target"]}
    assert by_context["R1"]["measured"] == pytest.approx(0.75) and by_context["R1E"]["measured"] == pytest.approx(1.25)
    assert "E" not in by_context  # no eager partner: not compared
    assert by_context["R1"]["status"] == "met" and by_context["R1E"]["status"] == "missed"  # compiling must pay
    assert by_context["R1"]["op"] == "<=" and by_context["R1"]["threshold"] == 1.0


def test_benchmark_script_writes_targets_and_the_gpu_section(tmp_path):
    spec = GridSpec(methods=("e2e", "contsup"), num_modules=(2,), splits=("uniform", "paper"), contexts=("R0",), **TINY)
    rows = run_memory(spec, RunOptions(warmup=0))
    paths = _load("run").write(tmp_path, "memory", rows, {"command": "test", "torch": torch.__version__})
    data = json.loads(paths["json"].read_text())
    assert data["targets"] and {t["status"] for t in data["targets"]} >= {"not measured"}
    text = paths["md"].read_text()
    assert "### Targets" in text and "Pending" in text  # no GPU rows


def test_the_gpu_part_of_the_script_writes_its_files_on_tiny_settings(tmp_path):
    """``run.py --gpu-only`` on a GPU runs these grids at batch 1024; ``--quick`` runs the same code on a CPU."""
    run = _load("run")
    assert run.main(["--gpu-only", "--quick", "--out", str(tmp_path)]) == 0
    memory = json.loads((tmp_path / "gpu_memory.json").read_text())
    speed = json.loads((tmp_path / "gpu_speed.json").read_text())
    assert {r["method"] for r in memory["rows"]} == {"e2e", "infopro", "contsup"}
    assert all(r["status"] == "ok" for r in memory["rows"] + speed["rows"])
    assert all(r["time_ratio"] > 0 and r["inference_macs"] > 0 for r in speed["rows"])
    assert not (tmp_path / "memory.json").exists()  # the CPU tables are not rewritten by the GPU run
    full = run.gpu_grids(compiled=True)
    compiled = [c for g in full for c in g.expand() if c.compiled]
    assert {(c.method, c.num_modules) for c in compiled} == {("e2e", 1), ("infopro", 4), ("contsup", 4), ("contsup", 16)}
    assert all(c.batch_size == 1024 and c.model == "resnet110" for g in full for c in g.expand())


def test_render_only_rewrites_the_tables_from_stored_json(tmp_path):
    """``run.py --render-only`` runs nothing: it rewrites the markdown from the JSON in --out, with the
    columns a newer report derives (here the training-arithmetic ratios a stored run lacks)."""
    run = _load("run")
    spec = GridSpec(methods=("e2e", "contsup"), num_modules=(2,), splits=("paper",), contexts=("R1",), **TINY)
    meta = {"command": "test", "torch": torch.__version__}
    run.write(tmp_path, "memory", run_memory(spec, RunOptions(warmup=0)), meta)
    speed = run_speed(spec, RunOptions(warmup=0, rounds=1))
    for row in speed:
        row.pop("flops_ratio"), row.pop("time_per_flop_ratio")
    run.write(tmp_path, "speed", speed, meta)
    assert "| – | – |" in (tmp_path / "speed.md").read_text()
    (tmp_path / "speed.md").unlink()
    assert run.main(["--render-only", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "speed.md").read_text()
    assert "| MACs × e2e | training FLOPs × e2e | median step s | × e2e | time per FLOP × e2e |" in text
    e2e = next(line for line in text.splitlines() if line.startswith("| resnet20 | e2e |"))
    cells = [c.strip() for c in e2e.split("|")]
    assert cells[8:10] == ["1.00", "1.00"] and cells[11:13] == ["1.00", "1.00"]  # each ratio against itself
    assert (tmp_path / "summary.png").exists()


def test_the_committed_tables_are_what_their_json_renders(tmp_path):
    """results/memory.md and speed.md are generated: rendering their committed JSON again gives them back (a
    change to the renderer re-renders them with ``run.py --render-only``)."""
    import shutil

    run = _load("run")
    results = BENCHMARKS / "results"
    for kind in ("memory", "speed"):
        shutil.copy(results / f"{kind}.json", tmp_path / f"{kind}.json")
    assert run.main(["--render-only", "--out", str(tmp_path)]) == 0
    for kind in ("memory", "speed"):
        assert (tmp_path / f"{kind}.md").read_text() == (results / f"{kind}.md").read_text(), kind


def test_conv_rates_finds_every_convolution_of_a_step_by_role(tmp_path):
    """``benchmarks/conv_rates.py`` on tiny settings: the E encoders' two convolutions at each of the K − 1
    boundaries, the backbone's multiply-adds those of the network's inference forward, the first
    convolution of each module without an input gradient (a detached input; E adds a trained encoder's
    output, so only the stem's image input)."""
    rates = _load("conv_rates")
    assert rates.main(["--model", "resnet20", "--num-modules", "4", "--batch-size", "2", "--rounds", "1",
                       "--out", str(tmp_path / "cr")]) == 0
    data = json.loads((tmp_path / "cr.json").read_text())
    rows = data["rows"]
    calls = lambda role: sum(r["calls_per_step"] for r in rows if r["role"] == role)  # noqa: E731
    assert calls("image encoder") == 2 * 3 and calls("head") == 3 and calls("residual encoder") == 0
    backbone = sum(r["macs"] * r["calls_per_step"] for r in rows if r["role"] == "backbone")
    assert backbone == pytest.approx(2 * (40.8e6 - 640), rel=2e-3)  # two images, less the classifier's 64×10
    assert [r["input"][1] for r in rows if not r["input_grad"]] == [3, 3]  # the stem and the encoders' image input
    assert all(r["forward_gmacs"] > 0 and r["backward_gmacs"] > 0 for r in rows)
    assert {r["role"] for r in data["roles"]} == {"backbone", "head", "image encoder"}
    assert "| image encoder |" in (tmp_path / "cr.md").read_text()


def test_the_script_says_bad_input_in_one_line(tmp_path):
    """No traceback: a --render-only without results, a device the machine lacks (checked before any grid)."""
    import subprocess

    def script(*args):
        done = subprocess.run([sys.executable, str(BENCHMARKS / "run.py"), *args], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(BENCHMARKS.parent / "src")}, timeout=300)
        return done.returncode, done.stderr.strip()

    assert script("--render-only", "--out", str(tmp_path)) == (
        2, f"run.py: error: --render-only: {tmp_path / 'memory.json'} does not exist; run the benchmarks into "
           f"{tmp_path} first (without --render-only), or give the --out that holds them.")
    (tmp_path / "memory.json").write_text("{}")
    code, err = script("--render-only", "--out", str(tmp_path))
    assert code == 2 and err.startswith("run.py: error: --render-only:") and "is not a results file" in err
    if not torch.cuda.is_available():
        assert script("--device", "cuda", "--gpu-only", "--out", str(tmp_path / "gpu")) == (
            2, "run.py: error: device: cuda is not available on this machine; use --device cpu.")
        assert not (tmp_path / "gpu").exists()


def test_the_committed_convolution_rates_are_what_their_json_renders(tmp_path):
    """results/conv_rates*.md are generated: ``conv_rates.py --render-only`` gives them back from their JSON."""
    import shutil

    rates = _load("conv_rates")
    for name in ("conv_rates", "conv_rates_R1"):
        shutil.copy(BENCHMARKS / "results" / f"{name}.json", tmp_path / f"{name}.json")
        assert rates.main(["--render-only", "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / f"{name}.md").read_text() == (BENCHMARKS / "results" / f"{name}.md").read_text(), name
