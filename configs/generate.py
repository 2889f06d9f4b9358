"""Write the paper presets: one YAML file per experiment row of docs/methods.md §7-8.

    python configs/generate.py          # rewrites configs/{contsup,infopro,baselines,quickstart,swin,vit}/*.yaml

The YAML files are committed; tests/test_presets.py checks they equal what this script writes, loads
every one and builds its network. Each file is a set of ``locallearn train`` options (flat, as the flags):
``locallearn train --config contsup/resnet32_cifar10_k16_R1E_ce`` runs it, into runs/<file name>.
"""

from __future__ import annotations

import sys
from pathlib import Path

from locallearn.config import resolve_net
from locallearn.training.config import dump_yaml

HERE = Path(__file__).resolve().parent
FAMILIES = ("baselines", "contsup", "infopro", "quickstart", "swin", "vit")

# docs/methods.md §7: SGD (momentum 0.9, Nesterov, weight decay 1e-4), 160 epochs, 10 warm-up epochs from 0.01
# then cosine; batch and lr by dataset. Augmentation comes with the dataset (locallearn.data.specs).
RECIPE = dict(epochs=160, momentum=0.9, nesterov=True, weight_decay=1e-4, warmup_epochs=10, warmup_lr=0.01, seed=0)
BATCH_LR = {"cifar10": (1024, 0.8), "svhn": (1024, 0.8), "stl10": (128, 0.1)}
KS = (2, 4, 8, 16)
# (model, dataset) settings of docs/methods.md §8's baseline table.
SETTINGS = (("resnet32", "cifar10"), ("resnet110", "cifar10"), ("resnet110", "svhn"), ("resnet110", "stl10"))
# docs/methods.md §2.2 / §4: the memory-balanced runs (E*, InfoPro*), by (model, dataset) → K.
BALANCED = {("resnet110", "cifar10"): (2, 3, 4), ("resnet110", "stl10"): (2, 3, 4), ("resnet32", "cifar10"): (2, 4, 8)}

# docs/methods.md §8, published test error (%) by (model, dataset) → method → K (1 for E2E).
PUBLISHED = {
    ("resnet32", "cifar10"): {
        "e2e": {1: 7.37},
        "greedy": dict(zip(KS, (10.30, 16.07, 21.19, 24.59))),
        "dgl": dict(zip(KS, (8.69, 11.48, 14.17, 16.21))),
        "infopro_ce": dict(zip(KS, (8.13, 8.64, 11.40, 14.23))),
        "infopro_contrast": dict(zip(KS, (7.76, 8.58, 11.13, 12.75))),
    },
    ("resnet110", "cifar10"): {
        "e2e": {1: 6.50},
        "greedy": dict(zip(KS, (8.21, 13.16, 15.61, 18.92))),
        "dgl": dict(zip(KS, (7.70, 10.50, 12.46, 13.80))),
        "infopro_ce": dict(zip(KS, (7.01, 7.96, 9.40, 10.78))),
        "infopro_contrast": dict(zip(KS, (6.42, 7.30, 8.93, 9.90))),
    },
    ("resnet110", "svhn"): {
        "e2e": {1: 3.07},
        "greedy": dict(zip(KS, (3.71, 5.39, 5.75, 6.37))),
        "dgl": dict(zip(KS, (3.61, 4.97, 5.35, 5.55))),
        "infopro_ce": dict(zip(KS, (3.41, 3.72, 4.67, 5.14))),
        "infopro_contrast": dict(zip(KS, (3.15, 3.28, 3.62, 3.91))),
    },
    ("resnet110", "stl10"): {
        "e2e": {1: 22.27},
        "greedy": dict(zip(KS, (25.56, 27.97, 29.07, 30.38))),
        "dgl": dict(zip(KS, (24.96, 26.77, 27.33, 27.73))),
        "infopro_ce": dict(zip(KS, (21.02, 21.28, 23.60, 26.05))),
        "infopro_contrast": dict(zip(KS, (20.99, 22.73, 25.15, 26.27))),
    },
}
LOSS_NAME = {"ce": "softmax (cross-entropy)", "contrast": "supervised contrastive"}


def recipe(dataset: str) -> dict:
    batch_size, lr = BATCH_LR[dataset]
    return dict(dataset=dataset, epochs=RECIPE["epochs"], batch_size=batch_size, lr=lr,
                **{k: v for k, v in RECIPE.items() if k != "epochs"})


def local(model: str, method: str, k: int, *, head: str, loss: str, context: str, reconstruct: bool,
          split: str = "paper") -> dict:
    return dict(model=model, method=method, num_modules=k, split=split, aux_head=head, local_loss=loss,
                reconstruct=reconstruct, context=context)


def published(model: str, dataset: str, key: str, k: int) -> list[str]:
    error = PUBLISHED.get((model, dataset), {}).get(key, {}).get(k)
    return [f"Published test error (docs/methods.md §8): {error:.2f}%"] if error is not None else []


def presets() -> dict[str, tuple[list[str], dict]]:
    """``family/name`` → (comment lines, options)."""
    out: dict[str, tuple[list[str], dict]] = {}

    def add(name: str, comments: list[str], options: dict) -> None:
        out.setdefault(name, (comments, options))  # the first table a row appears in names it

    for model in ("resnet32", "resnet110"):
        # ContSup: context modes at K = 16, and the R0..R16 ablation (softmax local loss).
        for mode in ("R0", "E", "R1", "R1E", "R2", "R4", "R8", "R16"):
            what = "context modes" if mode in ("R0", "E", "R1", "R1E") else "the R0..R16 ablation"
            add(f"contsup/{model}_cifar10_k16_{mode}_ce",
                [f"ContSup, {what} at K=16: {model}, CIFAR-10, context {mode}, softmax local loss."],
                {**local(model, "contsup", 16, head="1c2f", loss="ce", context=mode, reconstruct=False),
                 **recipe("cifar10")})
        # ContSup: E and R1E with either local loss, K = 2/4/8/16.
        for mode in ("E", "R1E"):
            for loss in ("ce", "contrast"):
                for k in KS:
                    add(f"contsup/{model}_cifar10_k{k}_{mode}_{loss}",
                        [f"ContSup, {mode} against K: {model}, CIFAR-10, K={k}, {LOSS_NAME[loss]} local loss."],
                        {**local(model, "contsup", k, head="1c2f", loss=loss, context=mode, reconstruct=False),
                         **recipe("cifar10")})
    # ContSup: ResNet-110, R1E with InfoPro's reconstruction (λ from docs/methods.md §4's table).
    for dataset in ("cifar10", "svhn", "stl10"):
        for loss in ("ce", "contrast"):
            for k in KS:
                add(f"contsup/resnet110_{dataset}_k{k}_R1E_recon_{loss}",
                    [f"ContSup, R1E with reconstruction: ResNet-110, {dataset}, K={k}, {LOSS_NAME[loss]} local loss;",
                     "λ (reconstruction, task) from docs/methods.md §4's table for this model, dataset and K."],
                    {**local("resnet110", "contsup", k, head="1c2f", loss=loss, context="R1E", reconstruct=True),
                     **recipe(dataset)})
    # E* and InfoPro*: memory-balanced splits and λ (docs/methods.md §2.2, §4), contrastive loss, and reconstruction
    # (docs/methods.md §4: memory-balanced runs' λ tables weigh a reconstruction loss, λxx > 0).
    for (model, dataset), ks in BALANCED.items():
        for k in ks:
            for family, mode, name in (("contsup", "E", "Estar"), ("infopro", "R0", "balanced")):
                title = "E*" if family == "contsup" else "InfoPro*"
                lam = "balanced λ" if dataset == "cifar10" else "the usual λ (balanced λ: CIFAR-10 only)"
                add(f"{family}/{model}_{dataset}_k{k}_{name}_contrast",
                    [f"{title} (memory-balanced): {model}, {dataset}, K={k}: the balanced split and {lam},",
                     "supervised contrastive local loss with reconstruction (docs/methods.md §4: memory-balanced runs'",
                     "λ tables weigh a reconstruction loss)."],
                    {**local(model, "contsup" if family == "contsup" else "infopro", k, head="1c2f",
                             loss="contrast", context=mode, reconstruct=True, split="balanced"),
                     **recipe(dataset)})
    for model, dataset in SETTINGS:
        # InfoPro (softmax and contrastive), greedy SL and DGL at K = 2/4/8/16; E2E.
        for k in KS:
            for loss in ("ce", "contrast"):
                add(f"infopro/{model}_{dataset}_k{k}_{loss}",
                    [f"InfoPro {LOSS_NAME[loss]}: {model}, {dataset}, K={k}."]
                    + published(model, dataset, f"infopro_{loss}", k),
                    {**local(model, "infopro", k, head="1c2f", loss=loss, context="R0", reconstruct=True),
                     **recipe(dataset)})
            for method, head in (("greedy", "linear"), ("dgl", "dgl")):
                add(f"baselines/{model}_{dataset}_k{k}_{method}",
                    [f"{'Greedy SL' if method == 'greedy' else 'DGL'}: {model}, {dataset}, K={k}."]
                    + published(model, dataset, method, k),
                    {**local(model, method, k, head=head, loss="ce", context="R0", reconstruct=False),
                     **recipe(dataset)})
        add(f"baselines/{model}_{dataset}_e2e",
            [f"End-to-end: {model}, {dataset}."] + published(model, dataset, "e2e", 1),
            dict(model=model, method="e2e", num_modules=1, **recipe(dataset)))
    for dataset in ("cifar10", "stl10"):  # the memory comparison of docs/methods.md §8
        add(f"baselines/resnet110_{dataset}_checkpoint",
            [f"End-to-end with activation checkpointing: ResNet-110, {dataset} (docs/methods.md §8, memory)."],
            dict(model="resnet110", method="checkpoint", num_modules=1, activation_checkpointing=True, **recipe(dataset)))
    add("quickstart/resnet32_digits_k4_R1E",
        ["The default of `locallearn train`: ResNet-32, ContSup R1E, K=4, on the bundled digits dataset;",
         "a few minutes on a laptop CPU. No warm-up (8 epochs <= 10), cosine from lr 0.1."],
        dict(model="resnet32", method="contsup", num_modules=4, split="paper", aux_head="1c2f", local_loss="ce",
             reconstruct=False, context="R1E", dataset="digits", epochs=8, batch_size=64, lr=0.1, momentum=0.9,
             nesterov=True, weight_decay=1e-4, warmup_epochs=10, warmup_lr=0.01, seed=0))
    swin_presets(add)
    vit_presets(add)
    return out


# FeatRecon (docs/methods.md §6): Swin-Tiny at 224 (the datasets' images resized inside the network), stage splits.
# Recipe (our choice; the FeatRecon paper gives none): the usual transformer recipe — AdamW, weight decay 0.05 (not
# on biases, norms and position tables), a 10-epoch warm-up from 1e-6 and a cosine stepped at every step — with
# Swin's base rate 5e-4 per 512 images scaled to batch 128 (1.25e-4), 160 epochs as the ResNet rows.
SWIN_DATASETS = ("cifar10", "cifar100", "stl10", "svhn")
TRANSFORMER_RECIPE = dict(epochs=160, batch_size=128, optimizer="adamw", lr=1.25e-4, weight_decay=0.05, warmup_epochs=10,
                          warmup_lr=1e-6, schedule="step", seed=0)
SWIN_RECIPE = TRANSFORMER_RECIPE
SWIN_TINY_224 = dict(model="swin_tiny", model_kwargs={"resolution": 224})


def method_options(model: str, method: str, dataset: str) -> dict:
    """The network options a method's preset sets on this model (``Method.preset``: InfoPro on Swin is
    InfoPro-Transformer), resolved (``aux_head="auto"`` → the model's head); λ only where the preset sets them
    (elsewhere the run resolves them from the tables, and records that source)."""
    resolved = resolve_net(model, method, dataset=dataset)
    options = {name: getattr(resolved, name) for name in ("aux_head", "local_loss", "reconstruct", "context")}
    if resolved.lambda_source == "config":
        options["lambdas"] = list(resolved.lambdas)
    return options


def swin_presets(add) -> None:
    """swin/: FeatRecon (each decoder), InfoPro-Transformer and end-to-end Swin-Tiny; the CPU demo."""
    for dataset in SWIN_DATASETS:
        data = dict(dataset=dataset, **SWIN_RECIPE)
        add(f"swin/swin_tiny_{dataset}_e2e", [f"End-to-end: Swin-Tiny at 224, {dataset}."],
            dict(**SWIN_TINY_224, method="e2e", num_modules=1, **data))
        for k in (2, 4):
            for decoder in ("linear", "conv", "transformer"):
                add(f"swin/swin_tiny_{dataset}_k{k}_featrecon_{decoder}",
                    [f"FeatRecon: Swin-Tiny at 224, {dataset}, K={k} at stage boundaries, {decoder} feature decoder;",
                     "loss per local module: cross-entropy of the token head + 1.0 · MSE of its input features."],
                    dict(**SWIN_TINY_224, method="featrecon", num_modules=k, split="stages", aux_head="token",
                         local_loss="ce", reconstruct=False, context="R0", feature_decoder=decoder,
                         feature_weight=1.0, **data))
            add(f"swin/swin_tiny_{dataset}_k{k}_infopro",
                [f"InfoPro-Transformer: Swin-Tiny at 224, {dataset}, K={k} at stage boundaries: FeatRecon's modules",
                 "and token head with InfoPro's image decoder; λ = (1, 1, 1, 1), i.e. BCE + cross-entropy (our choice)."],
                dict(**SWIN_TINY_224, method="infopro", num_modules=k, split="stages",
                     **method_options("swin_tiny", "infopro", dataset), **data))
    add("swin/swin_cifar_digits_k2_featrecon",
        ["FeatRecon on the 32×32 Swin variant, cut down (width 16, one block per stage, patch 4) for a CPU:",
         "K=2 at stage boundaries, linear decoder, the bundled digits dataset; about a minute, ~90% test accuracy."],
        dict(model="swin_cifar", method="featrecon", num_modules=2, split="stages", aux_head="token", local_loss="ce",
             reconstruct=False, context="R0", feature_decoder="linear", feature_weight=1.0,
             model_kwargs={"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "patch_size": 4,
                           "drop_path_rate": 0.0},
             dataset="digits", epochs=8, batch_size=64, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4,
             warmup_epochs=10, warmup_lr=0.01, seed=0))


def vit_presets(add) -> None:
    """vit/: ViT-Small (no CLS token, patch tokens pooled: models/vit.py) on CIFAR-10 at 32×32 with 4×4 patches
    (an 8×8 token grid), end to end and cut into K = 4 groups of three layers: FeatRecon, InfoPro-Transformer and
    ContSup; the transformer recipe of the Swin rows (our choice: no paper trains ViT locally on CIFAR)."""
    vit = dict(model="vit_small", model_kwargs={"patch_size": 4}, dataset="cifar10", **TRANSFORMER_RECIPE)
    add("vit/vit_small_cifar10_e2e", ["End-to-end: ViT-Small, CIFAR-10 at 32×32, 4×4 patches."],
        dict(**vit, method="e2e", num_modules=1))
    for method, extra in (("featrecon", dict(feature_decoder="linear")), ("infopro", {}), ("contsup", {})):
        add(f"vit/vit_small_cifar10_k4_{method}",
            [f"{method}: ViT-Small, CIFAR-10 at 32×32 with 4×4 patches, K=4 (three layers per module)."],
            dict(**vit, method=method, num_modules=4, split="stages", **method_options("vit_small", method, "cifar10"),
                 **extra))


def render(comments: list[str], options: dict) -> str:
    return dump_yaml(options, header=comments)


def main(root: Path = HERE) -> int:
    wanted = {f"{name}.yaml": render(*spec) for name, spec in presets().items()}
    for family in FAMILIES:  # drop presets this script no longer writes
        for path in (root / family).glob("*.yaml"):
            if str(path.relative_to(root)) not in wanted:
                path.unlink()
    for name, text in wanted.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    print(f"{len(wanted)} presets in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
