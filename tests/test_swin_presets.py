"""The transformer presets under configs/swin/ and configs/vit/ (written by configs/generate.py): each loads
into a run config with the FeatRecon / InfoPro-Transformer / ContSup / end-to-end options its name says and
the transformer recipe (AdamW, a warm-up and a cosine per step); one of each kind builds its network."""

from pathlib import Path

import pytest

from locallearn.net import build_net
from locallearn.training import load_config, presets

NAMES = [n for n in presets() if n.startswith("swin/")]
DATASETS = ("cifar10", "cifar100", "stl10", "svhn")


def test_every_swin_experiment_has_its_preset():
    expected = {f"swin/swin_tiny_{d}_e2e" for d in DATASETS}
    expected |= {f"swin/swin_tiny_{d}_k{k}_featrecon_{dec}" for d in DATASETS for k in (2, 4)
                 for dec in ("linear", "conv", "transformer")}
    expected |= {f"swin/swin_tiny_{d}_k{k}_infopro" for d in DATASETS for k in (2, 4)}
    expected.add("swin/swin_cifar_digits_k2_featrecon")
    assert set(NAMES) == expected


@pytest.mark.parametrize("name", NAMES)
def test_swin_preset_loads(name):
    cfg = load_config(name)
    o = cfg.options()
    assert o["out"] == f"runs/{Path(name).name}"
    stem = Path(name).name
    if o["model"] == "swin_tiny":
        assert o["model_kwargs"] == {"resolution": 224} and o["dataset"] in stem
        assert (o["optimizer"], o["schedule"], o["weight_decay"], o["momentum"]) == ("adamw", "step", 0.05, None)
    if "featrecon" in stem:
        assert (o["method"], o["aux_head"], o["local_loss"], o["split"]) == ("featrecon", "token", "ce", "stages")
        assert o["feature_decoder"] == (stem.rsplit("_", 1)[1] if o["model"] == "swin_tiny" else "linear")
        assert not o["reconstruct"] and o["feature_weight"] == 1.0
    elif "infopro" in stem:
        assert (o["method"], o["aux_head"], o["reconstruct"], o["feature_decoder"]) == ("infopro", "token", True, None)
        assert o["lambdas"] == [1.0, 1.0, 1.0, 1.0]
    else:
        assert (o["method"], o["num_modules"]) == ("e2e", 1)


@pytest.mark.parametrize(
    "name",
    ["swin/swin_cifar_digits_k2_featrecon", "swin/swin_tiny_cifar10_k4_featrecon_transformer", "swin/swin_tiny_stl10_k2_infopro"],
)
def test_swin_preset_builds(name):
    cfg = load_config(name)
    o = cfg.options()
    net = build_net(cfg.net)
    assert net.num_modules == o["num_modules"]
    if o["model"] == "swin_tiny":
        assert net.cuts == ([(1, 1), (2, 1), (3, 5)] if o["num_modules"] == 4 else [(2, 1)])


VIT = [n for n in presets() if n.startswith("vit/")]


def test_vit_presets():
    assert VIT == [f"vit/vit_small_cifar10_{kind}" for kind in ("e2e", "k4_contsup", "k4_featrecon", "k4_infopro")]
    for name in VIT:
        o = load_config(name).options()
        assert (o["model"], o["model_kwargs"], o["image_size"], o["optimizer"], o["schedule"]) == (
            "vit_small", {"patch_size": 4}, 32, "adamw", "step")
        assert o["num_modules"] == (1 if name.endswith("e2e") else 4) and o["aux_head"] in (None, "token")
    net = build_net(load_config("vit/vit_small_cifar10_k4_featrecon").net)
    assert net.num_modules == 4 and [b - a for a, b in net.bounds] == [4, 3, 3, 4]  # embedding + 3 layers, 3, 3, 3 + head
