"""DGL, decoupled greedy learning (Belilovsky, Eickenberg, Oyallon, ICML 2020): each module trained by DGL's
auxiliary network (``heads.DGLHead``: pooling, 1×1 convolutions, an MLP) with cross-entropy."""

from locallearn.methods.base import Method, register_method

DGL = register_method(Method(
    "dgl",
    defaults=dict(aux_head="dgl", local_loss="ce", context="R0", reconstruct=False),
    description="decoupled greedy learning (DGL's auxiliary network)",
))
