"""Benchmark grids: validation before anything runs, expansion rules, per-row skips and out-of-memory,
ratios to e2e and the written outputs. Tiny models and batches; nothing is timed."""

import csv
import json

import pytest
import torch

from locallearn.bench import runner
from locallearn.bench.grid import GridSpec, parse_list
from locallearn.bench.report import write_results
from locallearn.bench.runner import RunOptions, add_arithmetic_ratios, run_memory, run_speed
from locallearn.config import resolve_net

TINY = dict(models=("resnet20",), batch_sizes=(2,))


def test_expansion_rules():
    spec = GridSpec(methods=("checkpoint", "contsup", "greedy"), num_modules=(1, 2, 4), splits=("uniform", "auto"),
                    contexts=("R0", "R1E"), **TINY)
    configs = spec.expand()
    assert [c.method for c in configs[:2]] == ["e2e", "checkpoint"]  # the reference comes first, always
    assert all(c.num_modules == 1 and c.split is None for c in configs[:2])
    local = configs[2:]
    assert all(c.num_modules > 1 for c in local)  # a local method at K = 1 would be e2e
    assert len([c for c in local if c.method == "contsup"]) == 2 * 2 * 2  # K × split × context
    assert {c.context for c in local if c.method == "greedy"} == {"R0"}  # contexts multiply ContSup only
    assert len([c for c in local if c.method == "greedy"]) == 2 * 2
    assert all(c.image_size == 32 for c in configs)  # the model's own size
    assert GridSpec(image_size=64, **TINY).expand()[0].image_size == 64
    assert spec.not_run() == [  # what the rules leave out is said (bench memory printed fewer rows unremarked)
        "note: checkpoint trains the network as one module: it runs at K = 1 only; K = 2, 4 left out for it",
        "note: contsup is a local method: it runs at K ≥ 2 only (at K = 1 it would be e2e); K = 1 left out for it",
        "note: greedy is a local method: it runs at K ≥ 2 only (at K = 1 it would be e2e); K = 1 left out for it",
    ]
    assert GridSpec(methods=("contsup",), num_modules=(2, 4), **TINY).not_run() == []


def test_the_default_split_is_each_models_training_default():
    """``default`` (the grid's default) is what a training run without --split gets: the published split of
    the CIFAR ResNets, the computed one of a model without a paper table; given with the split it names,
    once."""
    spec = GridSpec(models=("resnet32", "resnet20"), methods=("greedy",), num_modules=(4,),
                    splits=("default", "paper", "auto"), batch_sizes=(2,))
    local = [(c.model, c.split) for c in spec.expand() if c.method == "greedy"]
    assert local == [("resnet32", "paper"), ("resnet32", "auto"), ("resnet20", "auto"), ("resnet20", "paper")]
    assert [c.split for c in GridSpec(methods=("greedy",), num_modules=(4,), **TINY).expand()][1:] == ["auto"]
    for model in ("resnet32", "resnet20"):
        assert resolve_net(model, "greedy").split == GridSpec(models=(model,), methods=("greedy",),
                                                              num_modules=(4,)).expand()[1].split
    # per K: ResNet-32 has no published cuts for K = 3, Swin's own paper split (its stages) none for K = 3
    for model in ("resnet32", "swin_cifar"):
        splits = [(c.num_modules, c.split) for c in GridSpec(models=(model,), methods=("greedy",),
                                                               num_modules=(2, 3, 4)).expand()[1:]]
        assert splits == [(2, "paper"), (3, "auto"), (4, "paper")]
        assert [resolve_net(model, "greedy", num_modules=k).split for k in (2, 3, 4)] == [s for _, s in splits]


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("models", ("resnet999",), ["models", "resnet999", "resnet110"]),
        ("methods", ("e2e", "magic"), ["methods", "magic", "contsup"]),
        ("splits", ("even",), ["splits", "even", "balanced"]),
        ("contexts", ("R3X",), ["contexts", "R3X", "R1E"]),
        ("num_modules", (0,), ["num_modules", "0"]),
        ("batch_sizes", (-4,), ["batch_sizes", "-4"]),
    ],
)
def test_unknown_grid_values_are_refused_with_the_valid_ones(field, value, words):
    with pytest.raises(ValueError) as err:
        GridSpec(**{**dict(TINY), field: value})
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


def test_parse_list_and_run_options_validate():
    assert parse_list("1, 2,4", "--num-modules", int) == (1, 2, 4)
    with pytest.raises(ValueError, match="--num-modules"):
        parse_list("1,two", "--num-modules", int)
    with pytest.raises(ValueError, match="--models"):
        parse_list(" , ", "--models")
    with pytest.raises(ValueError, match="device"):
        RunOptions(device="tpu")
    with pytest.raises(ValueError, match="rounds"):
        RunOptions(rounds=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            RunOptions(device="cuda")


def test_memory_grid_skips_what_cannot_be_built_and_gives_ratios():
    spec = GridSpec(methods=("e2e", "contsup"), num_modules=(2, 4), splits=("paper", "uniform"), contexts=("R0", "R4"),
                    **TINY)
    rows = run_memory(spec, RunOptions(warmup=0))
    by = {(r["method"], r["num_modules"], r["split"], r["context"]): r for r in rows}
    e2e = by[("e2e", 1, None, "R0")]
    assert e2e["status"] == "ok" and e2e["activation_ratio"] == 1.0 and e2e["peak_allocated_bytes"] is None
    paper = by[("contsup", 2, "paper", "R0")]
    assert paper["status"] == "skipped" and "paper split" in paper["reason"]
    r4 = by[("contsup", 2, "uniform", "R4")]
    assert r4["status"] == "skipped" and "R4" in r4["reason"]
    ok = by[("contsup", 4, "uniform", "R4")]
    assert ok["status"] == "ok" and 0 < ok["activation_ratio"] < 1
    assert ok["activation_reduction"] == pytest.approx(1 / ok["activation_ratio"])
    assert len(ok["module_peak_bytes"]) == 4 and ok["cuts"] and ok["parameters"] > 0


def _raise_oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_marks_the_row_and_the_grid_goes_on(monkeypatch):
    real = runner.measure_memory

    def flaky(case, options):
        if case.net.num_modules == 2:
            _raise_oom()
        return real(case, options)

    monkeypatch.setattr(runner, "measure_memory", flaky)
    spec = GridSpec(methods=("contsup",), num_modules=(2, 4), splits=("uniform",), contexts=("R0",), **TINY)
    rows = run_memory(spec, RunOptions(warmup=0))
    assert [r["status"] for r in rows] == ["ok", "oom", "ok"]
    assert "out of memory" in rows[1]["reason"]
    assert runner.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not runner.is_out_of_memory(RuntimeError("shape mismatch"))


def test_speed_grid_interleaves_and_reports_ratios(monkeypatch):
    calls = []
    real = runner._timed_step

    def recording(case):
        calls.append(case.net.num_modules)
        if case.net.num_modules == 4 and len(calls) > 3:
            _raise_oom()
        return real(case)

    monkeypatch.setattr(runner, "_timed_step", recording)
    spec = GridSpec(methods=("e2e", "contsup"), num_modules=(2, 4), splits=("uniform",), contexts=("R0",), **TINY)
    rows = run_speed(spec, RunOptions(warmup=0, rounds=3))
    assert calls[:3] == [1, 2, 4] and calls[3:5] == [2, 4]  # round 2 starts one configuration later
    e2e, k2, k4 = rows
    assert e2e["time_ratio"] == 1.0 and e2e["rounds"] == 3
    assert k2["status"] == "ok" and k2["time_ratio"] > 0
    assert k2["time_ratio_min"] <= k2["time_ratio_q25"] <= k2["time_ratio_paired"] <= k2["time_ratio_q75"]
    assert k2["time_ratio_q75"] <= k2["time_ratio_max"]
    assert k4["status"] == "oom" and k4["step_time_s"] is None


# --- Swin: the feature-decoder axis, InfoPro-Transformer, FeatRecon's targets --------------------------------
SWIN_TINY = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=2, drop_path_rate=0.0)


def test_feature_decoders_multiply_featrecon_only():
    spec = GridSpec(models=("swin_cifar",), methods=("e2e", "infopro", "featrecon"), num_modules=(2, 4),
                    splits=("stages", "balanced"), feature_decoders=("linear", "conv", "transformer"), batch_sizes=(2,))
    configs = spec.expand()
    featrecon = [c for c in configs if c.method == "featrecon"]
    assert len(featrecon) == 2 * 2 * 3 and {c.feature_decoder for c in featrecon} == {"linear", "conv", "transformer"}
    assert all(c.feature_decoder is None for c in configs if c.method != "featrecon")
    assert len([c for c in configs if c.method == "infopro"]) == 2 * 2
    conv = next(c for c in featrecon if c.feature_decoder == "conv")
    assert conv.build_options()["feature_decoder"] == "conv" and conv.label == "featrecon conv stages"
    # InfoPro on a transformer is InfoPro-Transformer (the method's family defaults); on a ResNet, the preset.
    infopro = next(c for c in configs if c.method == "infopro")
    swin = resolve_net(infopro.model, infopro.method, **infopro.build_options())
    assert (swin.aux_head, swin.local_loss, swin.lambdas) == ("token", "ce", (1.0, 1.0, 1.0, 1.0))
    resnet = GridSpec(methods=("infopro",), num_modules=(2,), **TINY).expand()[-1]
    resnet = resolve_net(resnet.model, resnet.method, **resnet.build_options())
    assert (resnet.aux_head, resnet.local_loss) == ("1c2f", "contrast")
    assert resnet.lambda_source.startswith("default") and resnet.lambdas == (5.0, 1.0, 0.0, 0.0)  # no dataset: K=2's
    with pytest.raises(ValueError, match="feature_decoders: unknown value 'mlp'; valid values are .*linear"):
        GridSpec(feature_decoders=("mlp",), **TINY)


def test_aux_heads_multiply_the_local_methods_and_name_their_rows(tmp_path):
    spec = GridSpec(methods=("e2e", "checkpoint", "greedy", "contsup"), num_modules=(2,), splits=("uniform",),
                    contexts=("R0", "R1"), aux_heads=("1c2f", "4c1f"), **TINY)
    configs = spec.expand()
    assert [c.aux_head for c in configs if c.num_modules == 1] == [None, None]  # one module: no head
    greedy = [c for c in configs if c.method == "greedy"]
    contsup = [c for c in configs if c.method == "contsup"]
    assert [c.aux_head for c in greedy] == ["1c2f", "4c1f"] and len(contsup) == 2 * 2
    four = next(c for c in contsup if c.aux_head == "4c1f")
    assert four.build_options()["aux_head"] == "4c1f" and four.label == "contsup R0 4c1f head uniform"
    assert resolve_net(four.model, four.method, **four.build_options()).aux_head == "4c1f"
    assert all(c.aux_head is None for c in GridSpec(methods=("greedy",), num_modules=(2,), **TINY).expand())
    rows = run_memory([four], RunOptions(warmup=0))
    assert rows[0]["status"] == "ok" and rows[0]["aux_head"] == "4c1f"
    assert "| contsup (4c1f head) | 2 |" in write_results(tmp_path, "memory", rows, {})["md"].read_text()
    with pytest.raises(ValueError, match="aux_heads: unknown value '2c2f'; valid values are .*4c1f"):
        GridSpec(aux_heads=("2c2f",), **TINY)


def test_swin_featrecon_and_infopro_transformer_run_in_a_grid(monkeypatch):
    """The grid builds Swin through locallearn.build; a tiny Swin stands in for Swin-Tiny here."""
    import locallearn

    real = locallearn.build
    monkeypatch.setattr(locallearn, "build",
                        lambda model, method, **o: real(model, method, model_kwargs=SWIN_TINY, **o))
    spec = GridSpec(models=("swin_cifar",), methods=("checkpoint", "infopro", "featrecon"), num_modules=(2,),
                    splits=("stages", "balanced"), feature_decoders=("linear", "transformer"), batch_sizes=(2,))
    rows = run_memory(spec, RunOptions(warmup=0))
    assert all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows]
    by = {(r["method"], r["split"], r["feature_decoder"]): r for r in rows}
    assert by[("featrecon", "stages", "linear")]["cuts"] == [[2, 1]]
    assert by[("checkpoint", None, None)]["recompute_bytes"] > 0  # the checkpoint meter's recomputation
    # the balanced split is computed, and no worse than the stage split under the same meter
    for decoder in ("linear", "transformer"):
        bal, stages = by[("featrecon", "balanced", decoder)], by[("featrecon", "stages", decoder)]
        assert bal["peak_activation_bytes"] <= stages["peak_activation_bytes"]


def test_write_results(tmp_path):
    spec = GridSpec(methods=("e2e", "contsup"), num_modules=(2,), splits=("uniform", "paper"), contexts=("R0",), **TINY)
    rows = run_memory(spec, RunOptions(warmup=0))
    paths = write_results(tmp_path, "memory", rows, {"command": "test", "torch": torch.__version__})
    data = json.loads(paths["json"].read_text())
    assert data["kind"] == "memory" and len(data["rows"]) == 3 and "targets" not in data  # the library sets none
    with open(paths["csv"]) as f:
        assert len(list(csv.DictReader(f))) == 3
    text = paths["md"].read_text()
    assert "| resnet20 | contsup | 2 | uniform | R0 |" in text and "skipped: split" in text and "Targets" not in text
    assert paths["png"].stat().st_size > 1000


def test_speed_rows_carry_the_arithmetic_beside_the_time():
    """Multiply-adds of the inference forward: ResNet-32 at 32×32 is 69.1 M; ContSup's R1 adds 4.2 M and E
    61.6 M at K = 16 (the reference code's counts); the training step's FLOPs are counted too."""
    spec = GridSpec(models=("resnet32",), methods=("e2e", "contsup"), num_modules=(16,), contexts=("R1", "E"),
                    batch_sizes=(2,))
    rows = {r["method"] + r["context"]: r for r in run_speed(spec, RunOptions(warmup=0, rounds=1))}
    e2e, r1, e = rows["e2eR0"], rows["contsupR1"], rows["contsupE"]
    assert e2e["inference_macs"] == pytest.approx(69.12e6, rel=1e-3)
    assert r1["inference_macs"] - e2e["inference_macs"] == pytest.approx(4.24e6, rel=1e-2)
    assert e["inference_macs"] - e2e["inference_macs"] == pytest.approx(61.6e6, rel=1e-2)
    assert e["macs_ratio"] == pytest.approx(e["inference_macs"] / e2e["inference_macs"])
    assert e2e["train_flops"] > 2 * 2 * e2e["inference_macs"]  # forward and backward
    # a training step of E trains 15 encoders from the image: more than its inference share of arithmetic
    assert e["flops_ratio"] == pytest.approx(e["train_flops"] / e2e["train_flops"]) and e["flops_ratio"] > e["macs_ratio"]
    assert e["time_per_flop_ratio"] == pytest.approx(e["time_ratio"] / e["flops_ratio"])
    assert e2e["flops_ratio"] == 1 and e2e["time_per_flop_ratio"] == 1


def test_arithmetic_ratios_are_against_the_eager_e2e_of_each_group():
    """A compiled e2e row in the same group is not the reference; a skipped row and a group without e2e get
    no ratios."""
    base = dict(batch_size=64, image_size=32, device="cpu", status="ok", inference_macs=10.0)
    rows = [
        dict(base, model="a", method="e2e", compiled=True, train_flops=30.0, time_ratio=0.5),
        dict(base, model="a", method="e2e", compiled=False, train_flops=60.0, time_ratio=1.0),
        dict(base, model="a", method="contsup", compiled=False, train_flops=90.0, time_ratio=2.0, inference_macs=15.0),
        dict(base, model="a", method="contsup", compiled=False, status="skipped", train_flops=None, time_ratio=None),
        dict(base, model="b", method="contsup", compiled=False, train_flops=90.0, time_ratio=2.0),
    ]
    add_arithmetic_ratios(rows)
    assert rows[2]["macs_ratio"] == 1.5 and rows[2]["flops_ratio"] == 1.5
    assert rows[2]["time_per_flop_ratio"] == pytest.approx(2.0 / 1.5)
    assert rows[0]["flops_ratio"] == 0.5 and rows[0]["time_per_flop_ratio"] == 1.0
    assert "flops_ratio" not in rows[3] and "flops_ratio" not in rows[4]


def test_compiled_copies_come_after_the_eager_grid_and_are_labelled():
    spec = GridSpec(methods=("e2e", "contsup"), num_modules=(2,), splits=("uniform",), contexts=("R0",),
                    compiled=(False, True), **TINY)
    configs = spec.expand()
    assert [c.compiled for c in configs] == [False, False, True, True]
    assert configs[2].label == "e2e compiled" and configs[3].fields()["compiled"] is True
    with pytest.raises(ValueError, match="compiled: expected true or false"):
        GridSpec(compiled=("yes",), **TINY)
