"""`python -m engine bench vram`: what plans cost, measured, each run in its own child process.

CPU (default): a synthetic Qwen-Image whose transformer is >= 6 GB of safetensors, generated twice through
engine.load and generate: all in RAM, then under a small RAM budget that makes the plan stream the blocks from
disk. Reports peak RSS against budget + 2 x the largest block, seconds per step both ways, and whether the
pixels are equal.

GPU (--gpu): the full-size Qwen-Image transformer (60 blocks, width 3072) with random bf16 weights written on
the machine itself, at 1328x1328 with cfg: resident, fp8 storage, streaming at given budgets, and diffusers'
own offloading (enable_model_cpu_offload, enable_sequential_cpu_offload, and group offloading with streams)
on the same files. On a machine
without CUDA, --device cpu with a small --layers/--heads runs the same scenarios' code paths, skipping the
ones that need CUDA.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError
from engine.vram.vocabulary import GIB

BENCH_DIR = Path(".bench")


@dataclass(frozen=True)
class Synthetic:
    """A synthetic Qwen-Image: tiny text encoder and VAE, a transformer of the given shape with random weights."""

    layers: int
    heads: int
    head_dim: int = 128
    text_width: int = 256
    dtype: str = "float32"

    @property
    def folder(self) -> Path:
        return BENCH_DIR / f"qwen-image-vram-{self.layers}x{self.heads * self.head_dim}-{self.dtype}"

    @property
    def block_bytes(self) -> int:
        """About 36 width^2 parameters per block: two 6x modulations, two attention streams, two 4x MLPs."""
        width = self.heads * self.head_dim
        return 36 * width * width * (4 if self.dtype == "float32" else 2)


def ensure_synthetic(spec: Synthetic, device: str = "cpu") -> Path:
    """Write the synthetic repo once (the transformer block by block, so RAM holds one block at a time)."""
    from engine.toyworld.tiny_qwen_image import TinySizes, build_tiny_qwen_image

    folder = spec.folder
    if (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file():
        return folder
    needed = spec.layers * spec.block_bytes * 1.1 + GIB
    BENCH_DIR.mkdir(exist_ok=True)
    free = shutil.disk_usage(BENCH_DIR).free
    if free < needed:
        raise EngineError(f"The synthetic model needs {needed / GIB:.1f} GB of disk; {BENCH_DIR} has "
                          f"{free / GIB:.1f} GB.", "Free some disk space or pick a smaller --gb.")
    heads = spec.text_width // 128 if spec.text_width >= 1024 else 4
    build_tiny_qwen_image(folder, TinySizes(text_hidden=spec.text_width, text_layers=1, text_heads=heads,
                                            text_kv_heads=max(1, heads // 7) if heads > 4 else 2), seed=0)
    shutil.rmtree(folder / "transformer")
    write_random_transformer(folder / "transformer", spec, device)
    return folder


def write_random_transformer(folder: Path, spec: Synthetic, device: str = "cpu") -> None:
    """A QwenImageTransformer2DModel's config and random weights in hub layout: one shard per block."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import QwenImageTransformer2DModel
    from safetensors.torch import save_file

    from engine.vram.sizes import block_key

    with init_empty_weights():
        model = QwenImageTransformer2DModel(
            patch_size=2, in_channels=64, out_channels=16, num_layers=spec.layers, attention_head_dim=spec.head_dim,
            num_attention_heads=spec.heads, joint_attention_dim=spec.text_width, axes_dims_rope=(16, 56, 56))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    groups: dict[str, dict[str, torch.Size]] = {}
    for name, tensor in model.state_dict().items():
        key = block_key(name)
        groups.setdefault(f"{key[0]}.{key[1]}" if key else "rest", {})[name] = tensor.shape
    generator = torch.Generator(device).manual_seed(0)
    dtype, weight_map = getattr(torch, spec.dtype), {}
    for number, (group, shapes) in enumerate(groups.items()):
        shard = f"diffusion_pytorch_model-{number + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: _random(name, shape, generator, device, dtype) for name, shape in shapes.items()}
        save_file(tensors, folder / shard, metadata={"format": "pt"})
        weight_map.update({name: shard for name in tensors})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))


def _random(name: str, shape, generator, device: str, dtype):
    import torch

    if name.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    if len(shape) == 1:
        return torch.ones(shape, dtype=dtype)  # norm scales
    scale = 1 / math.sqrt(shape[-1])  # keeps activations near unit size through 60 random blocks
    return (torch.randn(shape, generator=generator, device=device) * scale).to(dtype).cpu()


# ---- one run, in a child process


def _child(folder: str, options: dict) -> dict:
    """Load under the given limits and generate; timings, peak memory, the plan and a digest of the pixels."""
    import torch

    import engine
    from engine.pipelines.run_control import RunControl

    started = time.perf_counter()
    kind = options.get("kind", "engine")
    stamps: list[float] = []
    settings = dict(width=options["size"], height=options["size"], steps=options["steps"], cfg=options["cfg"], seed=0)
    if kind == "engine":
        model = engine.load(Path(folder), device=options["device"], vram_gb=options.get("vram_gb"),
                            ram_gb=options.get("ram_gb"), mode=options.get("mode", "auto"))
        loaded = time.perf_counter()
        result = model.generate("a red circle in the top left", **settings,
                                control=RunControl(on_progress=lambda _: stamps.append(time.perf_counter())))
        pixels, explanation = result.pixels, result.plan.explanation
    else:
        pixels, loaded = _diffusers_run(folder, options, stamps)
        explanation = kind
    largest = _largest_block_bytes(Path(folder))
    intervals = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    steady = intervals[1:] or intervals
    cuda = options["device"] == "cuda"
    return {
        "label": options["label"], "plan": explanation, "load_s": loaded - started,
        "s_per_step": statistics.median(steady) if steady else float("nan"),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
        "peak_vram_gb": torch.cuda.max_memory_reserved() / GIB if cuda else 0.0,
        "largest_block_gb": largest / GIB,
        "pixels_sha256": hashlib.sha256(pixels.float().cpu().numpy().tobytes()).hexdigest(),
    }


def _diffusers_run(folder: str, options: dict, stamps: list[float]):
    """diffusers' pipeline on the same files, with its own offloading: the pixels and when loading ended."""
    import torch
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    if options["kind"] == "diffusers-model-offload":
        pipe.enable_model_cpu_offload()
    elif options["kind"] == "diffusers-sequential-offload":
        pipe.enable_sequential_cpu_offload()
    elif options["kind"] == "diffusers-group-offload":
        pipe.enable_group_offload(torch.device("cuda"), offload_type="block_level", num_blocks_per_group=1,
                                  use_stream=True, record_stream=True)
    loaded = time.perf_counter()

    def on_step(_pipe, _step, _timestep, tensors):
        stamps.append(time.perf_counter())
        return tensors

    stamps.append(time.perf_counter())
    image = pipe("a red circle in the top left", true_cfg_scale=options["cfg"], negative_prompt=" ",
                 width=options["size"], height=options["size"], num_inference_steps=options["steps"],
                 generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step, output_type="pt").images
    return image, loaded


def _largest_block_bytes(folder: Path) -> int:
    from engine.loading import weight_files
    from engine.vram.sizes import size_from_files
    from engine.presets import Role

    size = size_from_files(Role.TRANSFORMER, weight_files(folder / "transformer", "diffusion_pytorch_model"))
    return int(size.block_params * size.file_bytes_per_param)


def _run_child(folder: Path, options: dict) -> dict:
    command = [sys.executable, "-m", "engine.vram.bench", str(folder), json.dumps(options)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines()
        raise EngineError(f"The {options['label']} run failed: {lines[-1] if lines else completed.returncode}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _attempt(folder: Path, options: dict) -> dict:
    """A run's figures, or NaNs and the reason when it failed (one strategy failing must not end the comparison)."""
    try:
        return _run_child(folder, options)
    except EngineError as error:
        nan = float("nan")
        return {"label": options["label"], "plan": f"failed: {error}", "load_s": nan, "s_per_step": nan,
                "peak_rss_gb": nan, "peak_vram_gb": nan, "largest_block_gb": nan, "pixels_sha256": ""}


# ---- the two benchmarks


def run_cpu(args: argparse.Namespace) -> int:
    """Disk streaming under a small RAM budget against the all-in-RAM run, on the CPU."""
    width = 1024
    spec = Synthetic(layers=max(1, math.ceil(args.gb * GIB / Synthetic(1, width // 128).block_bytes)),
                     heads=width // 128)
    folder = ensure_synthetic(spec)
    common = dict(device="cpu", size=args.size, steps=args.steps, cfg=args.cfg)
    options = [{**common, "label": "all in RAM"},
               {**common, "label": f"disk streaming, RAM {args.ram_gb:g} GB", "ram_gb": args.ram_gb, "mode": "stream"}]
    # Alternating runs, so that changes in the machine's load hit both alike; medians of seconds per step.
    repeats = [[_run_child(folder, option) for option in options] for _ in range(args.repeats)]
    runs = [{**group[0], "s_per_step": statistics.median(run["s_per_step"] for run in group),
             "best_s_per_step": min(run["s_per_step"] for run in group),
             "peak_rss_gb": max(run["peak_rss_gb"] for run in group)} for group in zip(*repeats)]
    file_gb = sum(path.stat().st_size for path in (folder / "transformer").glob("*.safetensors")) / GIB
    bound = args.ram_gb + 2 * runs[1]["largest_block_gb"]
    summary = {
        "transformer_file_gb": file_gb, "ram_budget_gb": args.ram_gb, "largest_block_gb": runs[1]["largest_block_gb"],
        "rss_bound_gb": bound, "rss_within_bound": runs[1]["peak_rss_gb"] <= bound,
        "slowdown": runs[1]["s_per_step"] / runs[0]["s_per_step"],
        "slowdown_best": runs[1]["best_s_per_step"] / runs[0]["best_s_per_step"],
        "pixels_equal": len({run["pixels_sha256"] for group in repeats for run in group}) == 1, "runs": runs,
        "s_per_step_each_run": {run["label"]: [r["s_per_step"] for r in group]
                                for run, group in zip(runs, zip(*repeats))},
        "setup": {**common, "folder": str(folder), "layers": spec.layers, "width": width, "repeats": args.repeats},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"synthetic Qwen-Image transformer: {spec.layers} blocks of width {width}, {file_gb:.2f} GB of float32 "
          f"safetensors; {args.size}x{args.size}, {args.steps} steps, cfg {args.cfg:g}; {args.repeats} alternating "
          "runs of each, each in its own process (median seconds per step, largest peak RSS)")
    _table(runs, ("label", "load_s", "s_per_step", "best_s_per_step", "peak_rss_gb"))
    print(f"plan under {args.ram_gb:g} GB: {runs[1]['plan']}")
    print(f"peak RSS {runs[1]['peak_rss_gb']:.2f} GB vs budget + 2 x largest block = {args.ram_gb:g} + 2 x "
          f"{runs[1]['largest_block_gb']:.3f} = {bound:.2f} GB: {'within' if summary['rss_within_bound'] else 'ABOVE'}")
    print(f"seconds per step, streamed / in RAM: {summary['slowdown']:.2f} (medians), {summary['slowdown_best']:.2f} "
          f"(best runs); pixels "
          f"{'bitwise equal' if summary['pixels_equal'] else 'DIFFERENT'}")
    return 0


def run_gpu(args: argparse.Namespace) -> int:
    """Resident, fp8, streaming at several budgets, and diffusers' offloading, on one synthetic transformer."""
    import torch

    cuda = torch.cuda.is_available() and args.device == "cuda"
    if args.device == "cuda" and not cuda:
        raise EngineError("No CUDA device here.", "Run with --device cpu and a small --layers to try the code path.")
    spec = Synthetic(layers=args.layers, heads=args.heads, text_width=3584 if args.heads >= 24 else 256,
                     dtype="bfloat16" if cuda else "float32")
    folder = ensure_synthetic(spec, device=args.device)
    common = dict(device=args.device, size=args.size, steps=args.steps, cfg=4.0)
    scenarios = [{"label": "resident", "mode": "resident"}, {"label": "fp8 storage", "mode": "fp8"}]
    scenarios += [{"label": f"stream at {budget:g} GB", "mode": "stream", "vram_gb": budget} for budget in args.budgets]
    scenarios.append({"label": f"auto at {args.budgets[-1]:g} GB", "mode": "auto", "vram_gb": args.budgets[-1]})
    if not cuda:
        for scenario in scenarios:  # on the CPU the budget is RAM
            scenario["ram_gb"] = scenario.pop("vram_gb", None)
    if cuda:
        scenarios += [{"label": kind, "kind": kind, "steps": 2 if "sequential" in kind else args.steps}
                      for kind in ("diffusers-model-offload", "diffusers-sequential-offload",
                                   "diffusers-group-offload")]
    runs = [_attempt(folder, {**common, **scenario}) for scenario in scenarios]
    resident = runs[0]["s_per_step"]
    for run in runs:
        run["vs_resident"] = run["s_per_step"] / resident
    if args.json:
        print(json.dumps({"setup": {**common, "folder": str(folder), "layers": spec.layers,
                                    "width": spec.heads * spec.head_dim, "cuda": cuda}, "runs": runs}, indent=2))
        return 0
    print(f"synthetic Qwen-Image transformer: {spec.layers} blocks of width {spec.heads * spec.head_dim}, "
          f"{spec.dtype}; {args.size}x{args.size} with cfg, {args.steps} steps, on {args.device}")
    _table(runs, ("label", "s_per_step", "vs_resident", "peak_vram_gb", "peak_rss_gb"))
    for run in runs:
        print(f"{run['label']}: {run['plan']}")
    if not cuda:
        print("diffusers' offloading (model, sequential, group) needs CUDA: not run here.")
    return 0


def _table(runs: list[dict], columns: tuple[str, ...]) -> None:
    cells = [[_cell(run[column]) for column in columns] for run in runs]
    widths = [max(len(column), *(len(row[index]) for row in cells)) for index, column in enumerate(columns)]
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths)))
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def _cell(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], json.loads(sys.argv[2]))))
