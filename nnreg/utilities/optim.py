"""A plain Adam for the per-pair optimisations (the affine stage, the refinement).

Why not ``torch.optim.Adam``: constructing any ``torch.optim`` optimiser imports ``torch._dynamo`` (torch >= 2.x
wraps ``Optimizer.__init__`` with a lazily imported dynamo guard), which costs 2-5 s of a command that should take
seconds; a per-pair optimisation needs nothing but the update rule. Same update as ``torch.optim.Adam`` with its defaults
(betas 0.9/0.999, eps 1e-8, no weight decay, not amsgrad), parameter groups with their own ``lr``.
"""
from __future__ import annotations

from typing import Any

import torch


class Adam:
    """``torch.optim.Adam``'s update for ``param_groups`` (dicts with ``params`` and ``lr``)."""

    def __init__(self, groups: list[dict[str, Any]], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.param_groups = [dict(group, params=list(group["params"])) for group in groups]
        self.betas, self.eps, self.steps = betas, eps, 0
        self._moments = {id(p): (torch.zeros_like(p), torch.zeros_like(p))
                         for group in self.param_groups for p in group["params"]}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step on every parameter that has a gradient."""
        self.steps += 1
        beta1, beta2 = self.betas
        correction1, correction2 = 1 - beta1 ** self.steps, 1 - beta2 ** self.steps
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                m, v = self._moments[id(p)]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denominator = (v / correction2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denominator, value=-group["lr"] / correction1)
