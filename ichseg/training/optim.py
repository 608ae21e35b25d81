"""Optimisers: Keras 2's Adam (what the paper's models were trained with) beside PyTorch's.

Keras 2.3 (and tf.keras 2) Adam at step t = 1, 2, ...:

    m = β1·m + (1 − β1)·g,  v = β2·v + (1 − β2)·g²
    p = p − lr·√(1 − β2^t)/(1 − β1^t) · m / (√v + ε)

PyTorch's Adam divides by √v̂ + ε with the bias-corrected v̂ = v/(1 − β2^t). Both are the
same update with ε_torch = ε_keras / √(1 − β2^t): no constant PyTorch eps equals a Keras ε, and
the difference is largest in the first steps (at t = 1, ε_keras = 1e-7 acts like ε_torch ≈ 3e-6).
`KerasAdam` applies the Keras form exactly. Keras' `decay` argument (inverse-time decay per step,
lr / (1 + decay·t), the authors' decay = lr / EPOCHS) is `inverse_time_decay`, a scheduler usable
with either optimiser.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from ichseg.config_schema import check_keys


class KerasAdam(torch.optim.Optimizer):
    """Adam with Keras 2's placement of epsilon: added to the uncorrected √v (see module doc)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One Keras Adam update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = group["lr"] * (1 - beta2**t) ** 0.5 / (1 - beta1**t)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size)
        return loss


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, eps: float, weight_decay: float
) -> torch.optim.Optimizer:
    """`keras_adam` or `adam` (torch.optim.Adam) with the given learning rate and epsilon."""
    check_keys({"model.module.optimizer": name})
    if name == "keras_adam":
        return KerasAdam(params, lr=lr, eps=eps, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay)


def inverse_time_decay(optimizer: torch.optim.Optimizer, decay: float) -> LambdaLR:
    """Keras' `decay`: the learning rate of step k (0-based) is lr / (1 + decay·k)."""
    check_keys({"model.module.lr_decay": decay})
    return LambdaLR(optimizer, lambda k: 1.0 / (1.0 + decay * k))
