"""FeatRecon (Pathak, Zhang, Samaras, arXiv 2212.14215): local learning on transformers by feature
reconstruction. Each local module k ends in a classification head (LayerNorm → token mean → Linear,
cross-entropy: the ``token`` head) and a decoder that reconstructs the module's own detached input features
(``decoders.FEATURE_DECODERS``), the patch embedding for module 0:

    L_k = L_ce + λ · MSE(decoder(h_k), sg(input_k)),   λ = ``feature_weight`` (1 by default, our choice).

The objective is the shared ``SupervisedObjective`` with a feature decoder (``methods.base``); module 0's
target is read from the first unit's output as module 0 computes it (a *tap*), not recomputed."""

from locallearn.methods.base import Method, register_method

FEATRECON = register_method(Method(
    "featrecon",
    defaults=dict(aux_head="auto", local_loss="ce", context="R0", reconstruct=False, feature_decoder="linear"),
    description="FeatRecon: token head + reconstruction of each module's input features",
))
