"""ContSup (Yu et al., arXiv 2312.07636): greedy local learning with context supply — encoded copies of the
image (E) and/or of earlier hand-offs (Rn) added to each module's input (``context.ContextSupply``;
docs/methods.md §5). Its objective is the 1c2f head with cross-entropy (optionally with InfoPro's
reconstruction); the context encoders belong to the network's forward path, not to the objective."""

from locallearn.methods.base import Method, register_method

CONTSUP = register_method(Method(
    "contsup",
    defaults=dict(aux_head="auto", local_loss="ce", context="R1E", reconstruct=False),
    description="ContSup: context supply (default R1E) with 1c2f heads",
))
