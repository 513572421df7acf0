"""An exponential moving average of a model's weights, the copy that gets shipped.

Sampling from the averaged weights gives cleaner images than the last step's weights, whose noise from
the final minibatches shows in every picture (Karras et al. 2024, https://arxiv.org/abs/2312.02696).
The decay ramps up from 0 over the first steps so that the average is not anchored to the random init.
"""

from __future__ import annotations

import torch


class Ema:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: parameter.detach().float().clone() for name, parameter in module.named_parameters()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        for name, parameter in module.named_parameters():
            self.shadow[name].lerp_(parameter.detach().float(), weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        if set(tensors) != set(self.shadow):
            raise KeyError("the EMA weights in the checkpoint do not match the model's parameters")
        self.shadow = {name: tensor.float().clone() for name, tensor in tensors.items()}

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        for name, parameter in module.named_parameters():
            parameter.copy_(self.shadow[name].to(parameter.dtype))
