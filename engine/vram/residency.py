"""Phases: which component holds the device now. When a component starts computing, the others that do not stay
are parked first (their resident parts dropped from the device, their copies kept), then it resumes.

When every component stays resident there is nothing to switch and no hook is added. Otherwise the switch
happens in forward pre-hooks on each component's entry modules (the transformer and text encoder
themselves, the VAE's encoder, decoder and quantisation convolutions), so the pipeline needs no changes. One
lock per model serialises these forwards: a parked component can never be computing, even when two threads
share the model; the hook that releases it runs even when the forward raises (out of memory, cancel).
"""

from __future__ import annotations

import threading
from functools import partial

import torch

from engine.presets import Role
from engine.vram.runtime import ComponentRuntime


class Residency:
    def __init__(self, runtimes: dict[Role, ComponentRuntime], entries: dict[Role, list[torch.nn.Module]]):
        self.runtimes = runtimes
        self._lock = threading.RLock()
        self._held = threading.local()  # the entry modules this thread holds the lock for, innermost last
        self._active: Role | None = None
        self._handles = []
        if all(runtime.plan.stays and not runtime.streams for runtime in runtimes.values()):
            return  # everything stays where it is: no phase ever moves anything, so no hooks (modules stay copyable)
        for role, modules in entries.items():
            for module in modules:
                self._handles.append(module.register_forward_pre_hook(partial(self._enter, role)))
                self._handles.append(module.register_forward_hook(self._exit, always_call=True))

    @property
    def active(self) -> Role | None:
        return self._active

    def switch(self, role: Role) -> None:
        """Make `role` the computing component: park the others that do not stay, then resume it."""
        with self._lock:
            if self._active is role:
                return
            for other, runtime in self.runtimes.items():
                if other is not role:
                    runtime.park()
            self._active = None
            self.runtimes[role].activate()
            self._active = role

    def release(self) -> None:
        """Park everything that does not stay (after an out-of-memory error, before planning again)."""
        with self._lock:
            for runtime in self.runtimes.values():
                runtime.park()
            self._active = None

    def unhook(self) -> None:
        """Remove the phase hooks (the runtimes keep their weights; a new Residency takes over)."""
        with self._lock:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._active = None

    def detach(self) -> None:
        """Remove the hooks and release every runtime's memory; the modules are unusable afterwards."""
        with self._lock:
            self.unhook()
            for runtime in self.runtimes.values():
                runtime.close()

    def _enter(self, role: Role, module: torch.nn.Module, _args: tuple) -> None:
        self._lock.acquire()  # released by _exit, which runs even when this raises
        held = self._held.__dict__.setdefault("modules", [])
        held.append(module)
        self.switch(role)

    def _exit(self, module: torch.nn.Module, _args: tuple, _output: object) -> None:
        # An earlier pre-hook may have raised before _enter ran: release only what this thread took here.
        held = self._held.__dict__.get("modules", [])
        if held and held[-1] is module:
            held.pop()
            self._lock.release()
