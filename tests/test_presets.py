"""Every paper preset under configs/ loads into a run config and builds its network, the files are what
configs/generate.py writes, and every experiment row of docs/methods.md §7-8 has its preset."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from locallearn.models import Backbone
from locallearn.net import build_net
from locallearn.training import load_config, presets
from locallearn.training.config import PRESET_DIR

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_presets", CONFIGS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
# The ResNet presets that configs/generate.py writes (other families, e.g. swin/, have their own tests).
NAMES = [name for name in presets() if name.split("/")[0] in GENERATOR.FAMILIES]


def test_presets_ship_inside_the_package():
    assert PRESET_DIR.resolve() == CONFIGS.resolve()
    assert len(NAMES) > 100


def test_committed_presets_are_what_the_generator_writes(tmp_path):
    GENERATOR.main(tmp_path)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.yaml"))
    assert written == sorted(f"{n}.yaml" for n in NAMES)
    for name in written:
        assert (tmp_path / name).read_text() == (CONFIGS / name).read_text(), f"run configs/generate.py ({name})"


@pytest.fixture(scope="module")
def shared_unit_shapes():
    """Unit shapes depend only on the backbone and the image size: compute them once per pair, not once per
    preset (the shape-finding forward is most of the cost of building a network)."""
    cache: dict = {}
    real = Backbone.unit_shapes

    def cached(self, image_size=None):
        key = (type(self).__name__, tuple(self.unit_keys), image_size or self.image_size)
        if key not in cache:
            cache[key] = real(self, image_size)
        return list(cache[key])

    patch = pytest.MonkeyPatch()
    patch.setattr(Backbone, "unit_shapes", cached)
    yield
    patch.undo()


@pytest.mark.parametrize("name", [n for n in NAMES if not n.startswith(("swin/", "vit/"))])  # test_swin_presets.py
def test_preset_loads_and_builds(name, shared_unit_shapes):
    cfg = load_config(name)
    o = cfg.options()
    assert o["out"] == f"runs/{Path(name).name}"
    if o["dataset"] != "digits":  # docs/methods.md §7
        assert (o["epochs"], o["momentum"], o["nesterov"], o["weight_decay"], o["warmup_epochs"], o["warmup_lr"]) == (
            160, 0.9, True, 1e-4, 10, 0.01)
        assert (o["batch_size"], o["lr"]) == ((128, 0.1) if o["dataset"] == "stl10" else (1024, 0.8))
    net = build_net(cfg.net)
    assert net.num_modules == o["num_modules"]
    if o["reconstruct"] and o["num_modules"] > 1:
        # Every preset's λ comes from a published table, but for STL-10 memory-balanced K = 3, which has none.
        expected = "default" if (o["dataset"], o["num_modules"]) == ("stl10", 3) else "table"
        assert net.lambda_schedule and net.lambda_source.startswith(expected), net.lambda_source


def _rows():
    """(name, expected options) for every experiment row of docs/methods.md §7-8 that the issue lists."""
    rows = []
    for model in ("resnet32", "resnet110"):
        for mode in ("R0", "E", "R1", "R1E", "R2", "R4", "R8", "R16"):  # modes at K=16 and the Rn ablation
            rows.append((f"contsup/{model}_cifar10_k16_{mode}_ce", dict(context=mode, num_modules=16)))
        for mode in ("E", "R1E"):
            for loss in ("ce", "contrast"):
                for k in (2, 4, 8, 16):
                    rows.append((f"contsup/{model}_cifar10_k{k}_{mode}_{loss}",
                                 dict(context=mode, local_loss=loss, num_modules=k, reconstruct=False)))
    for dataset in ("cifar10", "svhn", "stl10"):
        for k in (2, 4, 8, 16):
            rows.append((f"contsup/resnet110_{dataset}_k{k}_R1E_recon_contrast",
                         dict(context="R1E", reconstruct=True, dataset=dataset)))
    for model, dataset, ks in (("resnet110", "cifar10", (2, 3, 4)), ("resnet110", "stl10", (2, 3, 4)),
                               ("resnet32", "cifar10", (2, 4, 8))):
        for k in ks:
            rows.append((f"contsup/{model}_{dataset}_k{k}_Estar_contrast",
                         dict(context="E", split="balanced", local_loss="contrast", num_modules=k)))
    for model, dataset in (("resnet32", "cifar10"), ("resnet110", "cifar10"), ("resnet110", "svhn"),
                           ("resnet110", "stl10")):
        rows.append((f"baselines/{model}_{dataset}_e2e", dict(method="e2e", num_modules=1)))
        for k in (2, 4, 8, 16):
            rows.append((f"baselines/{model}_{dataset}_k{k}_greedy", dict(method="greedy", aux_head="linear")))
            rows.append((f"baselines/{model}_{dataset}_k{k}_dgl", dict(method="dgl", aux_head="dgl")))
            for loss in ("ce", "contrast"):
                rows.append((f"infopro/{model}_{dataset}_k{k}_{loss}",
                             dict(method="infopro", local_loss=loss, reconstruct=True, context="R0")))
    return rows


@pytest.mark.parametrize("name, expected", _rows(), ids=[r[0] for r in _rows()])
def test_every_paper_row_has_its_preset(name, expected):
    assert name in NAMES
    cfg = load_config(name)
    o = cfg.options()
    for key, value in expected.items():
        assert o[key] == value, key


def test_training_schedule_of_a_paper_preset_ends_above_zero():
    from locallearn.training import lr_schedule

    cfg = load_config("contsup/resnet32_cifar10_k16_R1E_ce")

    o = cfg.options()
    schedule = lr_schedule(lr=o["lr"], epochs=o["epochs"], warmup_epochs=o["warmup_epochs"], warmup_lr=o["warmup_lr"])
    assert len(schedule) == 160 and schedule[0] == 0.01 and 0 < schedule[-1] < 1e-3
    assert schedule[10] == pytest.approx(0.4 * (1 + math.cos(math.pi * 10 / 160)))


def test_another_method_over_a_preset_gets_its_own_method_options():
    """`--config contsup/... --method greedy` is greedy (linear heads, no context), not ContSup's heads and
    context under greedy's name; the preset's recipe and K stay, flags still override, and a method of one
    module takes its K."""
    preset = "contsup/resnet32_cifar10_k16_R1E_ce"
    greedy = load_config(preset, method="greedy")
    assert (greedy.net.aux_head, greedy.net.context, greedy.net.local_loss) == ("linear", "R0", "ce")
    assert (greedy.net.num_modules, greedy.optim.lr, greedy.optim.batch_size) == (16, 0.8, 1024)
    assert load_config(preset, method="greedy", aux_head="1c2f").net.aux_head == "1c2f"
    assert load_config(preset, method="e2e").net.num_modules == 1
    infopro = load_config("infopro/resnet32_cifar10_k4_balanced_contrast", method="contsup")
    assert (infopro.net.reconstruct, infopro.net.context, infopro.net.local_loss) == (False, "R1E", "ce")
    same = load_config(preset, method="contsup")  # the preset's own method: nothing replaced
    assert same.net.context == "R1E"


def test_a_method_over_a_config_file_without_one_keeps_the_files_options(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: resnet32\naux_head: 1c2f\nlocal_loss: contrast\n")
    config = load_config(str(recipe), method="greedy")
    assert (config.net.aux_head, config.net.local_loss) == ("1c2f", "contrast")
