"""``standard``: the reference architecture of "Towards Monosemanticity" (ReLU, L1, unit-norm decoder
rows, Anthropic resampling), whose behaviour is :class:`saelab.saes.base.SAE`'s own. Its only param is
``sae.l1_coeff``, its sparsity knob."""

from __future__ import annotations

from saelab.registry import register
from saelab.saes.base import SAE

Standard = register(SAE)
