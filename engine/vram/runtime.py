"""One component's weights under a ComponentPlan: resident blocks, blocks streamed with prefetch, parking.

Every parameter is at any moment on the compute device, or on the meta device (holding no memory) with its
data in a RAM copy or in the model's safetensors file. Resident blocks are spread evenly through the stack
(Wan2GP's layout), so that while a resident block computes the next streamed one arrives. Streamed blocks are
fetched by a worker thread, one block ahead in the order they last ran (learned on the first pass, wrapping
into the next forward), on a side CUDA stream where there is one: at most two streamed blocks exist on the
device at once, the one computing and the next. Storage in a lower precision than the compute dtype (fp8, or
bf16 under float32) is diffusers' layerwise casting: weights are cast up layer by layer as they run.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from engine.presets import Role
from engine.vram.disk import DiskReader, TensorLocation
from engine.vram.planner import ComponentPlan
from engine.vram.vocabulary import Placement, Precision

logger = logging.getLogger(__name__)

ALIGNMENT = 64  # bytes; a dtype view into a byte buffer needs its offset aligned (and kernels like it so)


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


@dataclass(frozen=True)
class _Block:
    module: torch.nn.Module
    stack: str  # the list holding it, e.g. "transformer_blocks"
    names: tuple[str, ...]  # parameter names, relative to the component's module


def spread(count: int, total: int) -> list[int]:
    """`count` indices spread evenly over range(total)."""
    return sorted({(2 * index + 1) * total // (2 * count) for index in range(count)}) if count else []


def find_blocks(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The repeated blocks (the classes named in `_no_split_modules`), largest stack first, each stack in order."""
    classes = set(getattr(module, "_no_split_modules", None) or ())
    found: list[tuple[str, torch.nn.Module]] = []
    for name, child in module.named_modules():
        if type(child).__name__ in classes and not any(name.startswith(outer + ".") for outer, _ in found):
            found.append((name, child))
    stacks: dict[str, list[tuple[str, torch.nn.Module]]] = {}
    for name, child in found:
        stacks.setdefault(name.rpartition(".")[0], []).append((name, child))

    def size(stack: list[tuple[str, torch.nn.Module]]) -> int:
        return sum(parameter.numel() for _, child in stack for parameter in child.parameters())

    return [block for stack in sorted(stacks.values(), key=size, reverse=True) for block in stack]


class ComponentRuntime:
    """Owns one component's parameters: installs, releases, copies and streams them as its plan says."""

    def __init__(self, role: Role, module: torch.nn.Module, locations: dict[str, TensorLocation],
                 device: torch.device, compute_dtype: torch.dtype, precision: Precision, blocks: int,
                 reader: DiskReader):
        self.role, self.module, self.device, self.precision = role, module, device, precision
        self._locations, self._reader = locations, reader
        self._owners = {name: _owner(module, name) for name, _ in module.named_parameters()}
        for name in self._owners:
            _set(self._owners[name], torch.empty(self._shape(name), dtype=compute_dtype, device="meta"))
        found = find_blocks(module) if blocks else []
        if len(found) != blocks:
            raise ValueError(f"the plan counts {blocks} blocks in the {role.value} but the module has {len(found)}")
        self._blocks = [_Block(child, prefix.rpartition(".")[0],
                               tuple(f"{prefix}.{name}" for name, _ in child.named_parameters()))
                        for prefix, child in found]
        if Precision.of(compute_dtype) is not precision:
            _cast_layerwise(module, [block.module for block in self._blocks], getattr(torch, precision.value),
                            compute_dtype)
        in_blocks = {name for block in self._blocks for name in block.names}
        self._rest = tuple(name for name in self._owners if name not in in_blocks)
        self._dtypes = {name: _get(self._owners[name]).dtype for name in self._owners}
        self._host: dict[str, torch.Tensor] = {}
        self._staging: torch.Tensor | None = None
        self.plan: ComponentPlan | None = None
        self._resident: list[int] = []
        self._disk: set[int] = set()
        self._parked_disk: set[int] = set()
        self._streamer: BlockStreamer | None = None
        self._active = False
        self._buffers_to_device()

    # ---- putting a plan into effect

    def apply(self, plan: ComponentPlan) -> None:
        """Put `plan` into effect from the current state (all on meta right after construction)."""
        if plan.blocks != len(self._blocks) or plan.precision is not self.precision:
            raise ValueError(f"the {self.role.value}'s runtime cannot take a plan with {plan.blocks} blocks in "
                             f"{plan.precision.value}; rebuild it")
        self.close_streamer()
        order = _resident_order(self._blocks, plan.resident_blocks)
        streamed = [index for index in range(len(self._blocks)) if index not in set(order)]
        # As the planner counts: the first streamed blocks come from disk, and the first resident ones park there.
        self._resident, self._disk = order, set(streamed[:plan.disk_blocks])
        self._parked_disk = set(order[:plan.parked_disk_blocks])
        host_copies = {name for index in streamed if index not in self._disk for name in self._blocks[index].names}
        if not plan.stays:
            host_copies |= {name for index in order if index not in self._parked_disk
                            for name in self._blocks[index].names}
            if plan.parked_in is Placement.RAM:
                host_copies |= set(self._rest)
        pinned = plan.pinned and self.device.type == "cuda"
        host = {name: self._host_copy(name, pinned) for name in sorted(host_copies)}
        kept = set(self._resident_names) if plan.stays else set()
        for name in self._owners:
            if name not in kept:
                self._release(name)
            elif _get(self._owners[name]).device != self.device:
                _set(self._owners[name], self._device_tensor(name))  # from the copy it had, before copies change
        self._host = host
        self._active = plan.stays
        self.plan = plan
        if streamed:
            self._streamer = BlockStreamer(self, streamed)

    def activate(self) -> None:
        """Bring the resident part onto the device (a parked component resuming)."""
        if self._active:
            return
        for name in self._resident_names:
            _set(self._owners[name], self._device_tensor(name))
        self._active = True

    def park(self) -> None:
        """Release the resident part of a component that does not stay; its copies remain."""
        if self._streamer is not None:
            self._streamer.drop()
        if self._active and not self.plan.stays:
            for name in self._resident_names:
                self._release(name)
            self._active = False

    def close_streamer(self) -> None:
        if self._streamer is not None:
            self._streamer.close()
            self._streamer = None

    def close(self) -> None:
        """Release everything: hooks, copies, device memory."""
        self.close_streamer()
        for name in self._owners:
            self._release(name)
        self._host.clear()
        self._staging = None
        self._active = False

    @property
    def streams(self) -> bool:
        return self._streamer is not None

    # ---- used by the streamer

    def load_block(self, index: int, stream: object | None, slot: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Block `index`'s parameters on the device (run on the streamer's worker thread). On the CPU a block read
        from disk lands in `slot`, one of two buffers reused for every block: allocating and freeing blocks
        instead leaves the C heap holding each block's pages, so the process grows to the model's size."""
        names = self._blocks[index].names
        if self.device.type != "cuda":
            if index not in self._disk:
                return {name: self._device_tensor(name) for name in names}
            tensors, offset = {}, 0
            for name in names:
                location, dtype = self._locations[name], self._dtypes[name]
                size = math.prod(location.shape) * dtype.itemsize
                target = slot[offset:offset + size].view(dtype).view(location.shape)
                if location.dtype == dtype:
                    self._reader.read(location, into=slot[offset:])
                else:
                    target.copy_(self._reader.read(location, into=self._cpu_staging()))
                tensors[name] = target
                offset += _aligned(size)
            return tensors
        with torch.cuda.stream(stream):
            if index in self._disk:
                staging, offset, tensors = self._staging_buffer(), 0, {}
                for name in names:
                    raw = self._reader.read(self._locations[name], into=staging[offset:])
                    offset += _aligned(self._locations[name].nbytes)
                    tensors[name] = raw.to(self.device, non_blocking=True).to(self._dtypes[name])
            else:
                tensors = {name: self._host[name].to(self.device, non_blocking=True) for name in names}
        stream.synchronize()  # the staging buffer is reused, and the main stream must see finished copies
        return tensors

    def slot_bytes(self) -> int:
        """Bytes of a buffer holding any disk-streamed block in storage dtype (0 where slots are not used)."""
        if self.device.type == "cuda" or not self._disk:
            return 0
        return max(sum(_aligned(math.prod(self._locations[name].shape) * self._dtypes[name].itemsize)
                       for name in self._blocks[index].names) for index in self._disk)

    def install(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        current = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        for name, tensor in tensors.items():
            if current is not None:
                tensor.record_stream(current)  # made on the side stream: not reusable before this one is done
            _set(self._owners[name], tensor)

    def release_block(self, index: int) -> None:
        for name in self._blocks[index].names:
            self._release(name)

    def block_module(self, index: int) -> torch.nn.Module:
        return self._blocks[index].module

    # ---- moving single tensors

    @property
    def _resident_names(self) -> list[str]:
        """The rest and the resident blocks: what is on the device while the component computes."""
        return list(self._rest) + [name for index in self._resident for name in self._blocks[index].names]

    def _device_tensor(self, name: str) -> torch.Tensor:
        host = self._host.get(name)
        if host is not None:
            return host if self.device.type == "cpu" else host.to(self.device, non_blocking=host.is_pinned())
        current = _get(self._owners[name])
        if current.device.type != "meta":
            return current.to(self.device)
        raw = self._reader.read(self._locations[name])
        return raw.to(self.device).to(self._dtypes[name])

    def _host_copy(self, name: str, pinned: bool) -> torch.Tensor:
        """A RAM copy in storage dtype, from the copy there is, the device, or the file."""
        tensor = self._host.get(name)
        if tensor is None:
            current = _get(self._owners[name])
            tensor = current.to("cpu") if current.device.type != "meta" else \
                self._reader.read(self._locations[name]).to(self._dtypes[name])
        if pinned and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor

    def _release(self, name: str) -> None:
        current = _get(self._owners[name])
        if current.device.type != "meta":
            _set(self._owners[name], torch.empty(current.shape, dtype=self._dtypes[name], device="meta"))

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(_get(self._owners[name]).shape)

    def _staging_buffer(self) -> torch.Tensor:
        """Page-locked bytes for a whole block as stored, between the disk and the GPU."""
        if self._staging is None:
            size = max(sum(_aligned(self._locations[name].nbytes) for name in self._blocks[index].names)
                       for index in self._disk)
            self._staging = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        return self._staging

    def _cpu_staging(self) -> torch.Tensor:
        """Bytes for one tensor as stored, read before its conversion into a slot."""
        if self._staging is None:
            size = max(self._locations[name].nbytes for index in self._disk for name in self._blocks[index].names)
            self._staging = torch.empty(size, dtype=torch.uint8)
        return self._staging

    def _buffers_to_device(self) -> None:
        for child in self.module.modules():
            for name, buffer in list(child._buffers.items()):
                if buffer is not None and buffer.device != self.device and buffer.device.type != "meta":
                    child._buffers[name] = buffer.to(self.device)


class BlockStreamer:
    """Hooks on the streamed blocks: fetch before, release after, prefetch the next block meanwhile."""

    def __init__(self, runtime: ComponentRuntime, streamed: list[int]):
        self._runtime = runtime
        cuda = runtime.device.type == "cuda"
        self._stream = torch.cuda.Stream(runtime.device) if cuda else None
        # On the CPU a block is read when needed: a reader thread would compete with the computation for the same
        # cores, and stalls torch's OpenMP pool (measured 4.5x slower per step than reading in line, 1.1x).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stream-{runtime.role.value}") \
            if cuda else None
        size = runtime.slot_bytes()
        # The block computing and the one arriving: two buffers (see ComponentRuntime.load_block).
        self._free = [torch.empty(size, dtype=torch.uint8) for _ in range(2)] if size else []
        self._slots: dict[int, torch.Tensor] = {}  # block index -> the buffer holding it
        self._pending: tuple[int, Future] | None = None
        self._following: dict[int, int] = {}
        self._last: int | None = None
        self._handles = []
        for index in streamed:
            module = runtime.block_module(index)
            self._handles.append(module.register_forward_pre_hook(lambda _m, _a, index=index: self._before(index)))
            self._handles.append(module.register_forward_hook(lambda _m, _a, _o, index=index: self._after(index),
                                                              always_call=True))

    def _before(self, index: int) -> None:
        if self._last is not None:
            self._following[self._last] = index
        self._last = index
        self._runtime.install(index, self._take(index))
        following = self._following.get(index)
        if self._executor is not None and following is not None and following != index:
            slot = self._claim(following)
            self._pending = (following, self._executor.submit(self._runtime.load_block, following, self._stream, slot))

    def _after(self, index: int) -> None:
        self._runtime.release_block(index)
        self._give_back(index)

    def _take(self, index: int) -> dict[str, torch.Tensor]:
        if self._pending is not None:
            pending, future = self._pending
            self._pending = None
            tensors = future.result()
            if pending == index:
                return tensors
            del tensors  # the order changed (a block was skipped): never hold more than two blocks
            self._give_back(pending)
        return self._runtime.load_block(index, self._stream, self._claim(index))

    def _claim(self, index: int) -> torch.Tensor | None:
        if not self._free:
            return None
        self._slots[index] = self._free.pop()
        return self._slots[index]

    def _give_back(self, index: int) -> None:
        if index in self._slots:
            self._free.append(self._slots.pop(index))

    def drop(self) -> None:
        """Forget a prefetched block (its component is being parked, or memory is being released)."""
        if self._pending is not None:
            pending, future = self._pending
            self._pending = None
            future.exception()  # wait for it; whatever it made is dropped here
            self._give_back(pending)
        self._last = None

    def close(self) -> None:
        self.drop()
        for handle in self._handles:
            handle.remove()
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def _resident_order(blocks: list[_Block], count: int) -> list[int]:
    """Which blocks stay resident: spread evenly within each stack, filling the largest stack first."""
    stacks: list[list[int]] = []
    for index, block in enumerate(blocks):
        if not stacks or blocks[stacks[-1][0]].stack != block.stack:
            stacks.append([])
        stacks[-1].append(index)
    chosen: list[int] = []
    for stack in stacks:
        chosen += [stack[i] for i in spread(min(count - len(chosen), len(stack)), len(stack))]
    return chosen


def _owner(module: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    path, _, attribute = name.rpartition(".")
    return (module.get_submodule(path) if path else module), attribute


def _get(owner: tuple[torch.nn.Module, str]) -> torch.Tensor:
    module, attribute = owner
    return module._parameters[attribute]


def _set(owner: tuple[torch.nn.Module, str], tensor: torch.Tensor) -> None:
    module, attribute = owner
    module._parameters[attribute] = torch.nn.Parameter(tensor, requires_grad=False)


def _cast_layerwise(module: torch.nn.Module, blocks: list[torch.nn.Module], storage: torch.dtype,
                    compute: torch.dtype) -> None:
    """Blocks stored in `storage`, computed in `compute`, layer by layer (diffusers' layerwise casting), skipping
    the layers the model marks as precision-sensitive (norms, embeddings)."""
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    skip = tuple(getattr(module, "_skip_layerwise_casting_patterns", None) or ()) + DEFAULT_SKIP_MODULES_PATTERN
    for block in blocks:
        apply_layerwise_casting(block, storage_dtype=storage, compute_dtype=compute, skip_modules_pattern=skip)
