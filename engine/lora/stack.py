"""A stack of LoRAs on one network: each targeted nn.Linear gets a forward hook adding
sum_i weight_i * scale_i * up_i(down_i(x)) to its output.

The base weights are never touched (STYLE.md #7): no merge, no module swapped. That keeps a weight change or
a removal instant and exact, and it keeps working whatever the VRAM plan does with the base weights (engine/vram
streams blocks between devices, stores them in fp8, rebuilds the network on another plan): the LoRA's own
small matrices follow the input, cast to its device and dtype on first use and cached there. A layer without
a LoRA of nonzero weight has no hook at all, so an empty stack leaves the network exactly as it was.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engine.lora.normalize import LoraDelta

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Factors:
    """One LoRA's matrices for one layer, with copies on the devices and dtypes inputs came in."""

    delta: LoraDelta
    copies: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.copies.get((device, dtype))
        if pair is None:
            pair = (self.delta.down.to(device, dtype), self.delta.up.to(device, dtype))
            self.copies[(device, dtype)] = pair
        return pair


@dataclass
class _Lora:
    factors: dict[str, _Factors]  # layer path -> its matrices
    weight: float


class LoraStack:
    """LoRAs applied to `network` by hooks, each under a key (e.g. its file's path) with a weight."""

    def __init__(self, network: torch.nn.Module):
        self._lock = threading.RLock()
        self._loras: dict[str, _Lora] = {}  # in the order their terms are summed
        self._network = network
        self._layers = _linear_modules(network)
        # Layer path -> the (factors, scale) terms its hook sums. Replaced whole on every change, never edited,
        # so a forward running in another thread sees one consistent set.
        self._terms: dict[str, tuple[tuple[_Factors, float], ...]] = {}
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}

    @property
    def network(self) -> torch.nn.Module:
        return self._network

    @property
    def keys(self) -> list[str]:
        return list(self._loras)

    def weight(self, key: str) -> float:
        return self._lora(key).weight

    def add(self, key: str, deltas: dict[str, LoraDelta], weight: float = 1.0) -> None:
        """Apply a LoRA (layer path -> delta, as normalize returns) under `key`, last in the stack."""
        unknown = sorted(set(deltas) - set(self._layers))
        if unknown:
            raise KeyError(f"the network has no linear layer {unknown[0]!r}")
        with self._lock:
            if key in self._loras:
                raise KeyError(f"a LoRA is already applied as {key!r}")
            self._loras[key] = _Lora({path: _Factors(delta) for path, delta in deltas.items()}, float(weight))
            self._rebuild()

    def set_weight(self, key: str, weight: float) -> None:
        with self._lock:
            self._lora(key).weight = float(weight)
            self._rebuild()

    def remove(self, key: str) -> None:
        with self._lock:
            self._lora(key)
            del self._loras[key]
            self._rebuild()

    def clear(self) -> None:
        with self._lock:
            self._loras.clear()
            self._rebuild()

    def reorder(self, keys: list[str]) -> None:
        """Sum the terms in this order (floating-point sums depend on it; the same settings give the same image)."""
        with self._lock:
            if sorted(keys) != sorted(self._loras):
                raise KeyError(f"reorder needs exactly the applied keys {sorted(self._loras)}, got {sorted(keys)}")
            self._loras = {key: self._loras[key] for key in keys}
            self._rebuild()

    def attach(self, network: torch.nn.Module) -> None:
        """Move the hooks onto another instance of the same network (a VRAM plan built it again)."""
        with self._lock:
            if network is self._network:
                return
            layers = _linear_modules(network)
            targeted = {path for lora in self._loras.values() for path in lora.factors}
            missing = sorted(targeted - set(layers))
            if missing:
                raise KeyError(f"the new network has no linear layer {missing[0]!r}")
            self._remove_hooks()
            self._network, self._layers = network, layers
            self._rebuild()

    def effective_weight(self, path: str) -> torch.Tensor:
        """The weight layer `path` acts with: base + sum of weight * scale * up @ down, float32 on the CPU."""
        base = self._layers[path].weight
        if base.device.type == "meta":
            raise ValueError(f"{path}'s weight is not in memory now (its block is streamed)")
        weight = base.detach().float().cpu().clone()
        for lora in self._loras.values():
            factors = lora.factors.get(path)
            if factors is not None:
                weight += lora.weight * factors.delta.delta()
        return weight

    def _lora(self, key: str) -> _Lora:
        try:
            return self._loras[key]
        except KeyError:
            raise KeyError(f"no LoRA is applied as {key!r}") from None

    def _rebuild(self) -> None:
        """Recompute every layer's terms and hook exactly the layers that have any."""
        terms: dict[str, list[tuple[_Factors, float]]] = {}
        for lora in self._loras.values():
            if lora.weight == 0.0:
                continue
            for path, factors in lora.factors.items():
                terms.setdefault(path, []).append((factors, lora.weight * factors.delta.scale))
        self._terms = {path: tuple(entries) for path, entries in terms.items()}
        for path in list(self._handles):
            if path not in self._terms:
                self._handles.pop(path).remove()
        for path in self._terms:
            if path not in self._handles:
                self._handles[path] = self._layers[path].register_forward_hook(_Hook(self, path))
        logger.debug("LoRA stack: %d LoRAs on %d layers", len(self._loras), len(self._terms))

    def _remove_hooks(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def _add_terms(self, path: str, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        terms = self._terms.get(path)
        if not terms or self._layers.get(path) is not module:
            return None
        x = args[0]
        for factors, scale in terms:
            down, up = factors.on(x.device, x.dtype)
            # PEFT's order of operations (up(down(x)) * scale), so our file matches diffusers' run of it.
            output = output + F.linear(F.linear(x, down), up) * scale
        return output


class _Hook:
    """A layer's forward hook. A deep copy of the network gets this same object, inert there (the stack acts on
    the network it holds), so hooked networks stay copyable and a copy computes without the LoRAs."""

    def __init__(self, stack: LoraStack, path: str):
        self._stack, self._path = stack, path

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return self._stack._add_terms(self._path, module, args, output)

    def __deepcopy__(self, memo: dict) -> _Hook:
        return self


def _linear_modules(network: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: child for name, child in network.named_modules() if isinstance(child, torch.nn.Linear)}
