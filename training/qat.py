"""Quantization-aware training: a full model learns to live with 4-bit weights.

The bundled model is stored inside a 40 MB limit (issue 8). Plain rounding of a trained
model's projections to 4 bits costs it strength (``benchmarks/quant_probe.py``: about half
of what the last model growth gained). Here the named projections compute, in every training
forward, with exactly the weights the 4-bit store will keep (:func:`engine.int8store.fake_int4`),
while the gradient updates the full-precision weights as if the rounding were not there
(the straight-through estimator). The model then learns weights whose rounded form works.

The swap changes only the modules' ``forward``: parameter names, the state dict and
checkpoints stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from engine.int8store import fake_int4


class FakeInt4Linear(torch.nn.Linear):
    """A ``Linear`` whose forward uses its weight rounded to int4 (straight-through)."""

    qat_group: int = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        rounded = w + (fake_int4(w.detach(), self.qat_group) - w).detach()
        return F.linear(x, rounded, self.bias)


def apply_fake_int4(model: Any, modules: Iterable[str], group: int) -> list[str]:
    """Make every ``nn.Linear`` of ``model`` whose name ends in one of ``modules`` compute with
    int4-rounded weights. Returns the names of the swapped modules; none is an error."""
    wanted = set(modules)
    swapped = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in wanted and type(module) is torch.nn.Linear:
            cols = module.in_features
            if cols % group or cols % 2:
                raise ValueError(
                    f"qat: {name} has {cols} inputs, which a 4-bit scale group of {group} does not divide"
                )
            module.__class__ = FakeInt4Linear
            setattr(module, "qat_group", group)  # noqa: B010 - a plain int attribute of the swapped module
            swapped.append(name)
    if not swapped:
        raise ValueError(f"qat.int4_modules {sorted(wanted)}: no nn.Linear of the model has such a name")
    return swapped
