"""Greedy supervised local learning: each module trained by a linear classifier on its pooled output
("0c1f", docs/methods.md §3) with cross-entropy, no context, no reconstruction."""

from locallearn.methods.base import Method, register_method

GREEDY = register_method(Method(
    "greedy",
    defaults=dict(aux_head="linear", local_loss="ce", context="R0", reconstruct=False),
    description="greedy supervised learning: a linear head per module",
))
