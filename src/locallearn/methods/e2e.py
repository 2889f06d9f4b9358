"""The baselines that train the whole network as one module: end-to-end backpropagation, and the same with
activation checkpointing (recompute each segment's activations during backward instead of keeping them;
non-reentrant, about √units segments; docs/methods.md §8 reports its memory and time in InfoPro's setting)."""

from locallearn.methods.base import Method, register_method

E2E = register_method(Method(
    "e2e",
    defaults=dict(num_modules=1, aux_head=None, context="R0", reconstruct=False),
    single_module=True,
    description="end-to-end backpropagation, the reference of every comparison",
))

CHECKPOINT = register_method(Method(
    "checkpoint",
    defaults=dict(num_modules=1, aux_head=None, context="R0", reconstruct=False, activation_checkpointing=True),
    single_module=True,
    description="end-to-end with activation checkpointing",
))
