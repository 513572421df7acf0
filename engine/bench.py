"""`python -m engine bench`: our Qwen-Image pipeline against diffusers' on the same files, in one run.

Each measurement runs in a fresh child process so its peak RSS is its own; the two pipelines alternate
(ours, diffusers, ours, ...) so that drift in the machine's load hits both alike. Seconds per step is the
median interval between step callbacks (the first step, which warms caches, is left out).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from engine.errors import EngineError

BENCH_DIR = Path(".bench")


def ensure_bench_model(folder: Path = BENCH_DIR / "qwen-image-synthetic") -> Path:
    """A synthetic Qwen-Image repo big enough that the transformer, not Python overhead, dominates a step."""
    from engine.toyworld.tiny_qwen_image import TinySizes, build_tiny_qwen_image

    if not (folder / "model_index.json").is_file():
        sizes = TinySizes(text_hidden=256, text_layers=2, text_heads=4, text_kv_heads=2, dit_layers=6,
                          dit_heads=4, dit_head_dim=64, rope_axes=(16, 24, 24))
        build_tiny_qwen_image(folder, sizes, seed=0)
    return folder


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _worker(impl: str, model: Path, width: int, height: int, steps: int, cfg: float) -> dict:
    import torch

    torch.manual_seed(0)
    prompt, negative = "a red circle in the top left on a blue background", "blurry"
    stamps: list[float] = []
    started = time.perf_counter()
    if impl == "ours":
        import engine
        from engine.pipelines.run_control import RunControl

        model_object = engine.load(model, device="cpu")
        loaded = time.perf_counter()
        control = RunControl(on_progress=lambda progress: stamps.append(time.perf_counter()))
        model_object.generate(prompt, negative_prompt=negative, width=width, height=height, steps=steps, cfg=cfg,
                              seed=0, control=control)
    else:
        from diffusers import QwenImagePipeline

        pipe = QwenImagePipeline.from_pretrained(str(model), torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        loaded = time.perf_counter()

        def on_step(pipeline, step, timestep, tensors):
            stamps.append(time.perf_counter())
            return tensors

        stamps.append(time.perf_counter())
        pipe("a red circle in the top left on a blue background", negative_prompt=negative, true_cfg_scale=cfg,
             width=width, height=height, num_inference_steps=steps,
             generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step)
    finished = time.perf_counter()
    intervals = [later - earlier for earlier, later in zip(stamps, stamps[1:])][1:] or [finished - loaded]
    return {"impl": impl, "load_s": loaded - started, "s_per_step": statistics.median(intervals),
            "total_s": finished - loaded, "peak_rss_mb": _peak_rss_mb()}


def _run_child(impl: str, args: argparse.Namespace, model: Path) -> dict:
    return _child_json(["pipeline", impl, str(model), str(args.width), str(args.height), str(args.steps),
                        str(args.cfg)], impl)


def _child_json(arguments: list[str], impl: str) -> dict:
    completed = subprocess.run([sys.executable, "-m", "engine.bench", *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        raise EngineError(f"The {impl} benchmark run failed: {completed.stderr.strip().splitlines()[-1:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_pipeline_bench(args: argparse.Namespace) -> int:
    model = Path(args.model) if args.model else ensure_bench_model()
    runs: dict[str, list[dict]] = {"ours": [], "diffusers": []}
    for _ in range(args.repeats):
        for impl in ("ours", "diffusers"):
            runs[impl].append(_run_child(impl, args, model))
    summary = {impl: {key: statistics.median(run[key] for run in results)
                      for key in ("load_s", "s_per_step", "total_s", "peak_rss_mb")}
               for impl, results in runs.items()}
    summary["ratio_s_per_step"] = summary["ours"]["s_per_step"] / summary["diffusers"]["s_per_step"]
    summary["setup"] = {"model": str(model), "width": args.width, "height": args.height, "steps": args.steps,
                        "cfg": args.cfg, "repeats": args.repeats}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"model {model}  {args.width}x{args.height}, {args.steps} steps, cfg {args.cfg}, "
          f"median of {args.repeats} alternating runs, each in its own process")
    print(f"{'pipeline':<10} {'load s':>8} {'s/step':>9} {'total s':>8} {'peak RSS MB':>12}")
    for impl in ("ours", "diffusers"):
        row = summary[impl]
        print(f"{impl:<10} {row['load_s']:8.2f} {row['s_per_step']:9.4f} {row['total_s']:8.2f} {row['peak_rss_mb']:12.0f}")
    print(f"ours / diffusers, seconds per step: {summary['ratio_s_per_step']:.3f}")
    return 0


def ensure_large_transformer(gigabytes: float) -> Path:
    """A synthetic Qwen-Image transformer of about `gigabytes` GB in float32, sharded like the hub's."""
    from engine.toyworld.tiny_qwen_image import TinySizes, write_transformer

    width, per_block = 1024, 36 * 1024 * 1024 * 4  # ~36 d^2 parameters per block, 4 bytes each
    layers = max(1, round(gigabytes * 1e9 / per_block))
    folder = BENCH_DIR / f"transformer-{layers}x{width}"
    if not (folder / "config.json").is_file():
        write_transformer(folder, TinySizes(text_hidden=256), seed=0, shard_size="300MB", layers=layers,
                          heads=8, head_dim=128, rope_axes=(16, 56, 56))
    return folder


def _load_worker(impl: str, folder: Path) -> dict:
    import torch
    from diffusers import QwenImageTransformer2DModel

    from engine.loading import load_diffusers_module
    from engine.presets import Role
    from engine.sources import ResolvedComponent

    baseline = _current_rss_mb()
    started = time.perf_counter()
    if impl == "ours":
        component = ResolvedComponent(role=Role.TRANSFORMER, folder=folder, config_folder=folder)
        model = load_diffusers_module(QwenImageTransformer2DModel, component, torch.float32, torch.device("cpu"))
    else:
        model = QwenImageTransformer2DModel.from_pretrained(str(folder), torch_dtype=torch.float32)
    elapsed = time.perf_counter() - started
    parameters_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {"impl": impl, "load_s": elapsed, "baseline_rss_mb": baseline, "peak_rss_mb": _peak_rss_mb(),
            "parameters_mb": parameters_mb}


def _current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_load_bench(args: argparse.Namespace) -> int:
    folder = ensure_large_transformer(args.gb)
    file_mb = sum(path.stat().st_size for path in folder.glob("*.safetensors")) / 2**20
    results = {impl: _child_json(["load", impl, str(folder)], impl) for impl in ("ours", "diffusers")}
    for row in results.values():
        row["peak_over_baseline_mb"] = row["peak_rss_mb"] - row["baseline_rss_mb"]
        row["peak_over_file_size"] = row["peak_over_baseline_mb"] / file_mb
    if args.json:
        print(json.dumps({"file_mb": file_mb, **results}, indent=2))
        return 0
    print(f"synthetic transformer {folder}: {file_mb:.0f} MB of safetensors, loaded as float32 on the CPU")
    print(f"{'loader':<10} {'load s':>7} {'RSS before MB':>14} {'peak RSS MB':>12} {'peak - before':>14} {'/ file size':>12}")
    for impl, row in results.items():
        print(f"{impl:<10} {row['load_s']:7.2f} {row['baseline_rss_mb']:14.0f} {row['peak_rss_mb']:12.0f} "
              f"{row['peak_over_baseline_mb']:14.0f} {row['peak_over_file_size']:12.2f}")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "pipeline":
        impl_name, model_path, width, height, steps, cfg = sys.argv[2:8]
        print(json.dumps(_worker(impl_name, Path(model_path), int(width), int(height), int(steps), float(cfg))))
    else:
        print(json.dumps(_load_worker(sys.argv[2], Path(sys.argv[3]))))
