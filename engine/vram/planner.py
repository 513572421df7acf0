"""The VRAM planner, a pure function: component sizes + workload + budgets -> VramPlan.

A generation runs in phases (text encoder, transformer, VAE); while one computes, the others may wait in RAM or
on disk, so the peak is the largest phase, not the sum. In each phase the device holds the active component's
resident part, two blocks' worth of prefetch buffers if it streams, its activations and a reserve, plus
whatever stays between phases. The decisions, in order:

1. Transformer: the first storage precision of the ladder (the compute dtype, bf16 under a float32 compute
   dtype, fp8) at which it is wholly resident and can stay on the device through the other phases (beside the
   text encoder's streaming minimum and the tiled VAE); failing that, the last precision with as many resident
   blocks as its own phase allows, the rest streamed. So fp8 only where the full precision would stream.
2. Text encoder: on the device with as many blocks resident as its phase allows (streaming the rest), or on
   the CPU when not even its streaming minimum fits.
3. VAE: whole if its decode fits, else tiled.
4. What stays: wholly resident components keep their place across phases if every phase still fits, in the
   order transformer, VAE, text encoder. The others are parked between phases.
5. RAM: every weight that is streamed or parked has a copy in RAM, or is read from disk when RAM is short.
   RAM goes first to the (small) VAE, then to the transformer (its streamed blocks, read every step, before its
   resident ones, read once per image), then to the text encoder; page-locked (pinned) while the pinnable share
   lasts, transformer first.

The decisions are monotone: a larger VRAM budget never streams more transformer blocks and never reads more of
a component from disk; more RAM never reads more from disk. (How many text-encoder blocks are resident while it
runs may drop when the transformer starts to stay: its transfers happen once per image either way.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from engine.errors import EngineError, SettingsError
from engine.presets import Role
from engine.vram.probe import MachineFacts
from engine.vram.sizes import ComponentSize, ModelSizes
from engine.vram.vocabulary import GIB, Compute, DeviceKind, Mode, Phase, Placement, Precision, gib
from engine.vram.workload import Workload, activation_bytes

PHASE_OF = {Role.TEXT_ENCODER: Phase.ENCODE, Role.TRANSFORMER: Phase.DENOISE, Role.VAE: Phase.DECODE}
PHASE_ORDER = (Role.TEXT_ENCODER, Role.TRANSFORMER, Role.VAE)
# Who keeps the device and gets pinned RAM first: the transformer runs every step, the VAE is small, the text
# encoder runs once per image.
PRIORITY = (Role.TRANSFORMER, Role.VAE, Role.TEXT_ENCODER)
# Who gets RAM first: the small VAE always has its place, so that whether it stays on the device never moves
# another component's blocks to disk; then the transformer, then the text encoder.
RAM_ORDER = (Role.VAE, Role.TRANSFORMER, Role.TEXT_ENCODER)
PREFETCH_BUFFERS = 2  # the block computing and the next one arriving
# Device memory kept free for the allocator's fragmentation, kernels' workspaces and estimation error (ComfyUI keeps
# about 0.8 + 0.4 GB); on the CPU, the runtime itself (Python, torch and the libraries: about 0.4 GB) as well.
RESERVE = {DeviceKind.CUDA: gib(1.2), DeviceKind.MPS: gib(1.2), DeviceKind.CPU: gib(0.75)}
# RAM a GPU process uses besides weights: CUDA context and libraries, Python, tokenizers.
HOST_RESERVE = {DeviceKind.CUDA: gib(3.0), DeviceKind.MPS: gib(3.0), DeviceKind.CPU: 0}


class PlanError(EngineError):
    """The model cannot run within the budget, even streaming everything it can."""


@dataclass(frozen=True)
class Budget:
    device: DeviceKind
    device_bytes: int  # memory the compute device may use; on the CPU, that is the RAM
    host_bytes: int = 0  # RAM besides the device's memory (0 on the CPU)
    pinnable: int = 0
    fp8_storage: bool = True
    compute: Precision = Precision.BF16  # the dtype computations and activations use
    reserve: int = -1  # -1: RESERVE for the device
    host_reserve: int = -1  # -1: HOST_RESERVE for the device

    def __post_init__(self) -> None:
        if self.reserve == -1:
            object.__setattr__(self, "reserve", RESERVE[self.device])
        if self.host_reserve == -1:
            object.__setattr__(self, "host_reserve", HOST_RESERVE[self.device])
        for name in ("device_bytes", "host_bytes", "pinnable", "reserve", "host_reserve"):
            if getattr(self, name) < 0:
                raise ValueError(f"Budget.{name} must not be negative, got {getattr(self, name)}")
        if not self.device.has_own_memory and (self.host_bytes or self.pinnable):
            raise ValueError("Budget: on the CPU the RAM is the device's memory; host_bytes and pinnable must be 0")
        if self.pinnable > self.host_bytes:
            raise ValueError(f"Budget.pinnable ({self.pinnable}) must not exceed host_bytes ({self.host_bytes})")
        if self.compute is Precision.FP8:
            raise ValueError("Budget.compute must be a compute dtype (float32, bfloat16, float16), not fp8")

    @classmethod
    def gpu(cls, vram_gb: float, ram_gb: float, *, pinnable_gb: float | None = None,
            device: DeviceKind = DeviceKind.CUDA, fp8_storage: bool = True,
            compute: Precision = Precision.BF16) -> "Budget":
        """A GPU with `vram_gb` GB and `ram_gb` GB of RAM, half of it pinnable unless said."""
        pinnable = ram_gb / 2 if pinnable_gb is None else pinnable_gb
        return cls(device, gib(vram_gb), gib(ram_gb), gib(pinnable), fp8_storage, compute)

    @classmethod
    def cpu(cls, ram_gb: float, compute: Precision = Precision.FP32) -> "Budget":
        return cls(DeviceKind.CPU, gib(ram_gb), compute=compute)

    @classmethod
    def for_machine(cls, facts: MachineFacts, compute: Precision, vram_gb: float | None = None,
                    ram_gb: float | None = None) -> "Budget":
        """What the probed machine has available, or the limits the user set (which must be within it)."""
        ram = facts.ram_available if ram_gb is None else _limit("ram_gb", ram_gb, facts.ram_total, "RAM")
        if not facts.device.has_own_memory:
            if vram_gb is not None:
                raise SettingsError("vram_gb applies to a GPU, but this model computes on the CPU.",
                                    "Set ram_gb to limit the memory it may use.")
            return cls(DeviceKind.CPU, ram, compute=compute, fp8_storage=facts.fp8_storage)
        vram = facts.vram_available if vram_gb is None else _limit("vram_gb", vram_gb, facts.vram_total, "GPU memory")
        return cls(facts.device, vram, ram, min(facts.pinnable, ram // 2 if ram_gb is not None else facts.pinnable),
                   facts.fp8_storage, compute)

    def scaled(self, factor: float) -> "Budget":
        """The same machine with `factor` times the device memory (fallback after an out-of-memory error)."""
        return replace(self, device_bytes=int(self.device_bytes * factor))

    @property
    def memory_label(self) -> str:
        amount = f"{round(self.device_bytes / GIB, 1):g} GB"
        return amount if self.device.has_own_memory else f"the CPU with {amount} RAM"


def _limit(name: str, value: float, total: int, what: str) -> int:
    if not value > 0:
        raise SettingsError(f"{name} must be a positive number of GB, got {value}.")
    if gib(value) > total:
        raise SettingsError(f"{name} {value:g} is more than the machine's {total / GIB:.1f} GB of {what}.")
    return gib(value)


@dataclass(frozen=True)
class ComponentPlan:
    role: Role
    compute: Compute  # DEVICE: the machine's compute device; CPU: beside it
    precision: Precision  # storage dtype of its blocks; the rest stays in the compute dtype
    blocks: int
    resident_blocks: int  # on its device while it computes (all the time when it stays): the first in block order
    stays: bool  # keeps its place on the device across phases (only when wholly resident)
    parked_in: Placement  # DEVICE when it stays; else where its non-block weights wait: RAM or DISK
    disk_blocks: int  # the first streamed blocks, read from disk at each use; the others stream from RAM
    pinned: bool  # its RAM copies are page-locked
    parked_disk_blocks: int = 0  # the first resident blocks, whose copy is on disk (read each time it resumes)
    tiled: bool = False  # VAE only: decode (and encode) in tiles
    weight_bytes: int = 0  # all its weights at their storage precision
    device_bytes: int = 0  # its resident part on the device
    buffer_bytes: int = 0  # prefetch buffers on the device while it computes
    activation_bytes: int = 0
    ram_bytes: int = 0  # RAM holding its copies (and, computing on the CPU, itself)
    disk_bytes: int = 0  # of its weights, how many bytes are read from disk rather than kept in memory

    def __post_init__(self) -> None:
        name = f"ComponentPlan({self.role.value})"
        if not 0 <= self.resident_blocks <= self.blocks:
            raise ValueError(f"{name}.resident_blocks must be within [0, {self.blocks}], got {self.resident_blocks}")
        if not 0 <= self.disk_blocks <= self.streamed_blocks:
            raise ValueError(f"{name}.disk_blocks must be within [0, streamed_blocks={self.streamed_blocks}], "
                             f"got {self.disk_blocks}")
        if not 0 <= self.parked_disk_blocks <= (0 if self.stays else self.resident_blocks):
            raise ValueError(f"{name}.parked_disk_blocks must be within [0, resident blocks that park], "
                             f"got {self.parked_disk_blocks}")
        if self.stays != (self.parked_in is Placement.DEVICE):
            raise ValueError(f"{name}: stays={self.stays} contradicts parked_in={self.parked_in.value}")
        if self.stays and self.streamed_blocks and self.compute is Compute.DEVICE:
            raise ValueError(f"{name}: a component that stays on the device must be wholly resident, "
                             f"but {self.streamed_blocks} blocks stream")
        if self.tiled and self.role is not Role.VAE:
            raise ValueError(f"{name}.tiled applies to the VAE only")
        if self.compute is Compute.CPU and not self.stays:
            raise ValueError(f"{name}: a component computing on the CPU lives there (stays must be True)")

    @property
    def streamed_blocks(self) -> int:
        return self.blocks - self.resident_blocks

    @property
    def ram_blocks(self) -> int:
        return self.streamed_blocks - self.disk_blocks


@dataclass(frozen=True)
class VramPlan:
    title: str
    workload: Workload
    budget: Budget
    mode: Mode
    components: tuple[ComponentPlan, ...]  # in phase order: text encoder, transformer, VAE
    phase_peaks: tuple[tuple[Phase, int], ...]  # device bytes at the worst moment of each phase
    peak_ram: int
    staging_bytes: int  # page-locked RAM that disk reads pass through on their way to the GPU
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if tuple(component.role for component in self.components) != PHASE_ORDER:
            raise ValueError(f"VramPlan.components must be {[r.value for r in PHASE_ORDER]} in that order")

    def component(self, role: Role) -> ComponentPlan:
        return self.components[PHASE_ORDER.index(role)]

    def with_component(self, component: ComponentPlan) -> "VramPlan":
        """The plan with one component's placement replaced (tests and benchmarks force placements so)."""
        return replace(self, components=tuple(component if c.role is component.role else c for c in self.components))

    @property
    def peak_device(self) -> int:
        return max(peak for _, peak in self.phase_peaks)

    @property
    def explanation(self) -> str:
        from engine.vram.explain import explain

        return explain(self)

    def to_json(self) -> dict:
        from engine.vram.explain import plan_json

        return plan_json(self)


@dataclass(frozen=True)
class _Piece:
    """One component's byte figures at a storage precision. Blocks become resident in their order (largest stack
    first, as the runtime fills them); the streamed ones are the rest, the first of them kept in RAM first."""

    size: ComponentSize
    precision: Precision
    blocks: tuple[int, ...]  # bytes of each block
    rest: int
    activation: int

    @property
    def count(self) -> int:
        return len(self.blocks)

    @property
    def whole(self) -> int:
        return self.rest + sum(self.blocks)

    @property
    def file_read(self) -> int:
        """The largest read from disk at a time: a block, or the whole of an unsplit component, as stored."""
        params = self.size.block_params if self.size.blocks else self.size.rest_params
        return int(params * self.size.file_bytes_per_param)

    def part(self, resident: int) -> int:
        return self.rest + sum(self.blocks[:resident])

    def buffers(self, resident: int) -> int:
        return PREFETCH_BUFFERS * max(self.blocks[resident:], default=0)

    def need(self, resident: int) -> int:
        return self.part(resident) + self.buffers(resident) + self.activation

    def minimum(self) -> int:
        """Bytes of its phase with as few blocks resident as possible."""
        return min(self.need(resident) for resident in range(self.count + 1))

    def most_resident(self, room: int) -> int | None:
        """The most blocks that can be resident with its phase within `room`; None when none fits."""
        return next((resident for resident in range(self.count, -1, -1) if self.need(resident) <= room), None)


def _piece(size: ComponentSize, precision: Precision, compute: Precision, activation: int) -> _Piece:
    precision = precision if size.blocks else compute
    return _Piece(size, precision, tuple(block * precision.bytes for block in size.block_sizes),
                  size.rest_params * compute.bytes, activation)


def _ladder(mode: Mode, budget: Budget) -> list[Precision]:
    full = budget.compute
    if mode is Mode.FP8:
        if not budget.fp8_storage:
            raise PlanError(f"fp8 storage is not available on {budget.device.value.upper()}.",
                            "Use mode auto or stream.")
        return [Precision.FP8]
    if mode in (Mode.RESIDENT, Mode.STREAM):
        return [full]
    return [full] + ([Precision.BF16] if full is Precision.FP32 else []) + \
        ([Precision.FP8] if budget.fp8_storage else [])


def plan(sizes: ModelSizes, workload: Workload, budget: Budget, mode: Mode = Mode.AUTO) -> VramPlan:
    """Where every component's weights live for `workload` within `budget`; PlanError when nothing fits."""
    mode, compute = Mode(mode), budget.compute
    architecture, room = sizes.architecture, budget.device_bytes - budget.reserve

    def piece(role: Role, precision: Precision, tiled: bool = False) -> _Piece:
        activation = activation_bytes(role, workload, architecture, compute, tiled,
                                      dense_attention=budget.device is DeviceKind.MPS)
        return _piece(sizes.component(role), precision, compute, activation)

    def failure(needed: int, what: str = "") -> PlanError:
        memory = "VRAM" if budget.device.has_own_memory else "RAM"
        return PlanError(
            f"{architecture.title} at {workload.label} needs at least {(needed + budget.reserve) / GIB:.1f} GB of "
            f"{memory}{what}; the budget is {budget.device_bytes / GIB:.1f} GB.",
            "Use mode auto, which streams blocks or stores them in fp8." if mode is Mode.RESIDENT else
            "Lower the size or the batch, close other programs using that memory, or allow more.")

    text, vae, vae_tiled = piece(Role.TEXT_ENCODER, compute), piece(Role.VAE, compute), piece(Role.VAE, compute, True)
    text_may_use_device = text.minimum() <= room or not budget.device.has_own_memory
    ladder = _ladder(mode, budget)

    # 1. Transformer: the first precision at which it is wholly resident and can stay; else stream at the last.
    transformer, stays = None, False
    for precision in ladder:
        candidate = piece(Role.TRANSFORMER, precision)
        whole = candidate.whole
        if candidate.most_resident(room) == candidate.count and whole + vae_tiled.minimum() <= room and \
                (not text_may_use_device or whole + text.minimum() <= room):
            transformer, stays = candidate, True
            break
    transformer = transformer or piece(Role.TRANSFORMER, ladder[-1])
    resident = transformer.most_resident(room)
    if resident is None or (mode is Mode.RESIDENT and resident < transformer.count):
        if mode is Mode.RESIDENT:
            raise failure(transformer.whole + transformer.activation, " to keep everything resident")
        raise failure(transformer.minimum())
    staying = {Role.TRANSFORMER: transformer.part(resident)} if stays else {}
    left = room - sum(staying.values())

    # 2. Text encoder: on the device, streaming what does not fit, or on the CPU beside it.
    text_resident = text.most_resident(left) if text_may_use_device else None
    if text_resident is None and not budget.device.has_own_memory:
        raise failure(text.minimum())
    text_compute = Compute.CPU if text_resident is None else Compute.DEVICE
    if mode is Mode.RESIDENT and text_compute is Compute.DEVICE and text_resident < text.count:
        raise failure(text.whole + text.activation, " to keep everything resident")

    # 3. VAE: whole, or tiled.
    if vae.whole + vae.activation <= left:
        vae_choice = vae
    elif vae_tiled.minimum() <= left:
        vae_choice = vae_tiled
    else:
        raise failure(vae_tiled.minimum())

    # 4. What stays on the device between phases.
    pieces = {Role.TEXT_ENCODER: text, Role.TRANSFORMER: transformer, Role.VAE: vae_choice}
    residents = {Role.TEXT_ENCODER: text_resident or 0, Role.TRANSFORMER: resident, Role.VAE: 0}
    on_device = {role for role in PHASE_ORDER if role is not Role.TEXT_ENCODER or text_compute is Compute.DEVICE}

    def phase_need(role: Role) -> int:
        return pieces[role].need(residents[role]) if role in on_device else 0

    def peak(role: Role, keep: dict[Role, int]) -> int:
        return phase_need(role) + sum(size for other, size in keep.items() if other is not role)

    for role in (Role.VAE, Role.TEXT_ENCODER):
        candidate = {**staying, role: pieces[role].whole}
        if role in on_device and residents[role] == pieces[role].count and \
                all(peak(other, candidate) <= room for other in PHASE_ORDER):
            staying = candidate

    # 5. RAM and disk.
    layout = _host_layout(pieces, residents, set(staying), text_compute, budget)
    if layout is None:
        needed = budget.host_reserve + (text.minimum() if text_compute is Compute.CPU else 0)
        raise PlanError(f"{architecture.title} needs at least {needed / GIB:.1f} GB of RAM; the budget is "
                        f"{budget.host_bytes / GIB:.1f} GB.", "Close other programs or allow more RAM.")
    components = []
    for role in PHASE_ORDER:
        part, host = pieces[role], layout.hosts[role]
        blocks_resident = layout.cpu_text_resident if role not in on_device else residents[role]
        stays_here = role in staying or role not in on_device
        components.append(ComponentPlan(
            role=role, compute=Compute.DEVICE if role in on_device else Compute.CPU, precision=part.precision,
            blocks=part.count, resident_blocks=blocks_resident, stays=stays_here,
            parked_in=Placement.DEVICE if stays_here else host.parked_in, disk_blocks=host.disk_blocks,
            pinned=host.pinned, parked_disk_blocks=host.parked_disk_blocks, tiled=part is vae_tiled,
            weight_bytes=part.whole, device_bytes=part.part(blocks_resident) if role in on_device else 0,
            buffer_bytes=part.buffers(blocks_resident), activation_bytes=part.activation,
            ram_bytes=host.ram_bytes, disk_bytes=host.disk_bytes))
    phase_peaks = tuple((PHASE_OF[role], peak(role, staying) + budget.reserve) for role in PHASE_ORDER)
    if budget.device.has_own_memory:
        peak_ram = budget.host_reserve + layout.staging + sum(host.ram_bytes for host in layout.hosts.values())
    else:
        peak_ram = max(bytes_ for _, bytes_ in phase_peaks)
    notes = () if sizes.measured else ("Sizes are nominal for components whose files are not on disk yet.",)
    return VramPlan(architecture.title, workload, budget, mode, tuple(components), phase_peaks, peak_ram,
                    layout.staging, notes)


@dataclass(frozen=True)
class _Host:
    """Where one component's copies are kept off the device."""

    parked_in: Placement
    disk_blocks: int
    pinned: bool
    ram_bytes: int
    disk_bytes: int
    parked_disk_blocks: int = 0


@dataclass(frozen=True)
class _HostLayout:
    hosts: dict[Role, _Host]
    staging: int
    cpu_text_resident: int  # blocks of a CPU-computed text encoder kept in RAM


def _host_layout(pieces: dict[Role, _Piece], residents: dict[Role, int], staying: set[Role],
                 text_compute: Compute, budget: Budget) -> _HostLayout | None:
    """RAM for the copies of streamed and parked weights, disk for the rest, in RAM_ORDER; None when RAM
    cannot hold even the runtime (and a CPU-computed text encoder's minimum)."""
    if not budget.device.has_own_memory:
        # The RAM is the device's memory: what is neither resident nor staying is read from disk.
        hosts = {}
        for role, piece in pieces.items():
            resident = residents[role]
            parked = 0 if role in staying else resident
            disk = piece.whole - (piece.part(resident) if role in staying else 0)
            hosts[role] = _Host(Placement.DEVICE if role in staying else Placement.DISK, piece.count - resident,
                                False, 0, disk, parked)
        return _HostLayout(hosts, 0, 0)
    text = pieces[Role.TEXT_ENCODER]
    room = budget.host_bytes - budget.host_reserve - (text.minimum() if text_compute is Compute.CPU else 0)
    layout = _fill_ram(pieces, residents, staying, text_compute, room, 0)
    if layout is None:
        return None
    reading = [pieces[role].file_read for role, host in layout.hosts.items()
               if host.disk_bytes and not (role is Role.TEXT_ENCODER and text_compute is Compute.CPU)]
    if reading and budget.device is DeviceKind.CUDA:
        # Disk reads land in a page-locked staging buffer before their copy to the GPU.
        layout = _fill_ram(pieces, residents, staying, text_compute, room - max(reading), max(reading))
        if layout is None:
            return None
    pinnable, hosts = budget.pinnable - layout.staging if budget.device is DeviceKind.CUDA else 0, dict(layout.hosts)
    for role in PRIORITY:
        host = hosts[role]
        cpu_text = role is Role.TEXT_ENCODER and text_compute is Compute.CPU
        if host.ram_bytes and not cpu_text and host.ram_bytes <= pinnable:
            hosts[role] = replace(host, pinned=True)
            pinnable -= host.ram_bytes
    return replace(layout, hosts=hosts)


def _in_ram(sizes: tuple[int, ...], room: int) -> int:
    """How many of `sizes`, taken in order, fit in `room` (the first that does not ends the run)."""
    count = 0
    for size in sizes:
        if size > room:
            break
        room -= size
        count += 1
    return count


def _fill_ram(pieces: dict[Role, _Piece], residents: dict[Role, int], staying: set[Role], text_compute: Compute,
              room: int, staging: int) -> _HostLayout | None:
    if room < 0:
        return None
    hosts, cpu_text_resident = {}, 0
    for role in RAM_ORDER:
        piece, resident = pieces[role], residents[role]
        if role in staying:
            hosts[role] = _Host(Placement.DEVICE, 0, False, 0, 0)
            if role is Role.VAE:
                room -= min(room, piece.whole)  # set aside all the same (see RAM_ORDER)
        elif role is Role.TEXT_ENCODER and text_compute is Compute.CPU:
            # Computing on the CPU, its minimum was set aside first; what is left holds more of its blocks.
            cpu_text_resident = piece.most_resident(piece.minimum() + room) or 0
            ram = piece.need(cpu_text_resident)
            hosts[role] = _Host(Placement.DEVICE, piece.count - cpu_text_resident, False, ram,
                                piece.whole - piece.part(cpu_text_resident))
        else:
            # From the last block back: the streamed blocks (read at every use) get RAM before the resident ones
            # (read when the component resumes), whatever the split; the rest of the component last.
            held = _in_ram(piece.blocks[::-1], room)
            first_in_ram = piece.count - held
            ram = sum(piece.blocks[first_in_ram:])
            room -= ram
            rest_in_ram = piece.rest <= room
            room -= piece.rest if rest_in_ram else 0
            ram += piece.rest if rest_in_ram else 0
            hosts[role] = _Host(Placement.RAM if rest_in_ram else Placement.DISK, max(0, first_in_ram - resident),
                                False, ram, piece.whole - ram, min(resident, first_in_ram))
    return _HostLayout(hosts, staging, cpu_text_resident)


def fits(plan_: VramPlan, sizes: ModelSizes, workload: Workload) -> bool:
    """Whether `plan_`'s placement also fits `workload`'s activations within its budget."""
    if workload == plan_.workload:
        return True
    budget = plan_.budget
    staying = {c.role: c.device_bytes for c in plan_.components if c.stays and c.compute is Compute.DEVICE}
    for component in plan_.components:
        need = 0
        if component.compute is Compute.DEVICE:
            need = component.device_bytes + component.buffer_bytes + activation_bytes(
                component.role, workload, sizes.architecture, budget.compute, component.tiled,
                dense_attention=budget.device is DeviceKind.MPS)
        others = sum(size for role, size in staying.items() if role is not component.role)
        if need + others + budget.reserve > budget.device_bytes:
            return False
    return True


def smallest_budget(sizes: ModelSizes, workload: Workload, budget: Budget, mode: Mode = Mode.AUTO) -> int | None:
    """The least device memory (bytes, within 0.1% of the budget) with which `budget`'s machine gets a plan; None
    if even budget.device_bytes gets none. Feasibility only grows with memory, so a bisection finds it."""
    def feasible(device_bytes: int) -> bool:
        try:
            plan(sizes, workload, replace(budget, device_bytes=device_bytes), mode)
            return True
        except PlanError:
            return False

    low, high = budget.reserve, budget.device_bytes
    if not feasible(high):
        return None
    while high - low > max(budget.device_bytes // 1000, 1):
        middle = (low + high) // 2
        low, high = (low, middle) if feasible(middle) else (middle, high)
    return high
