"""InfoPro (Wang et al., ICLR 2021): each module trained by the 1c2f head with the supervised contrastive
loss and by reconstructing the input image, weighted by the λ tables (docs/methods.md §4).

On a transformer backbone it is InfoPro-Transformer, FeatRecon's baseline (docs/methods.md §6): the token
head and InfoPro's image decoder, trained with cross-entropy and λ = (1, 1, 1, 1), i.e. BCE + cross-entropy
in every local module (our choice: the λ tables are for ResNets). ``aux_head="auto"`` is the backbone
family's head (1c2f on CNNs, the token head on transformers)."""

from locallearn.methods.base import Method, register_method

INFOPRO = register_method(Method(
    "infopro",
    defaults=dict(aux_head="auto", local_loss="contrast", context="R0", reconstruct=True),
    family_defaults={"transformer": dict(local_loss="ce", lambdas=(1.0, 1.0, 1.0, 1.0))},
    description="InfoPro: contrastive loss + image reconstruction (InfoPro-Transformer on transformers)",
))
