"""`python -m engine bench train`: training throughput and memory with the cache and without it.

The same LoRA run (a shapes-world dataset, a synthetic Qwen-Image) is timed twice, each in a fresh child
process so its peak RSS is its own: once with text-encoder and VAE outputs cached before training (the
encoders then leave memory), once encoding every batch as it is drawn. Samples per second are measured over
the steps after the warm-up ones; "RSS training" is the process's memory while the timed steps run, which is
where caching saves (the peak includes the encoders either way, since caching runs them first).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.errors import EngineError

WARMUP_STEPS = 2
MODES = ("cached", "on the fly")


def _synthetic_model(folder: Path) -> Path:
    """A Qwen-Image of ~0.6 GB in float32 with Qwen-Image's proportions: a text encoder about half the
    transformer's size (8.3B against 20.4B), so what caching saves in memory shows as it would at full size."""
    from engine.toyworld.tiny_qwen_image import TinySizes, build_tiny_qwen_image

    sizes = TinySizes(text_hidden=1024, text_layers=6, text_heads=8, text_kv_heads=2, dit_layers=10, dit_heads=8,
                      dit_head_dim=64, rope_axes=(16, 24, 24), vae_base_dim=32)
    return build_tiny_qwen_image(folder, sizes, seed=0)


def _run_toml(model: Path, dataset: Path, out: Path, cache: bool, steps: int, batch_size: int,
              resolution: int) -> str:
    return "\n".join([
        "[model]", f"model = {json.dumps(str(model))}",
        "[dataset]", f"path = {json.dumps(str(dataset))}", f"resolution = {resolution}",
        f"cache = {'true' if cache else 'false'}",
        "[train]", f"steps = {steps}", f"batch_size = {batch_size}", "learning_rate = 1e-4", "rank = 16",
        f"checkpoint_every = {steps}", "log_every = 1", "sample_every = 0",
        "[output]", f"dir = {json.dumps(str(out))}", ""])


def _child(config: Path, batch_size: int) -> dict:
    """Run one training in this process; the figures as a dict (printed as JSON by the caller)."""
    import psutil

    from engine.training.run import run_from_file

    stamps: list[float] = []
    rss: list[float] = []

    def say(line: str) -> None:
        if line.startswith("step "):
            stamps.append(time.perf_counter())
            rss.append(psutil.Process().memory_info().rss / 2**20)

    run_from_file(config, say=say)
    timed = stamps[WARMUP_STEPS - 1:]
    seconds = timed[-1] - timed[0]
    return {"samples_per_s": (len(timed) - 1) * batch_size / seconds if seconds > 0 else float("nan"),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "training_rss_mb": statistics.median(rss[WARMUP_STEPS:] or rss)}


def run_train_bench(args: argparse.Namespace) -> int:
    from engine.toyworld.dataset import write_dataset

    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        root = Path(scratch)
        model = Path(args.model) if args.model else _synthetic_model(root / "model")
        dataset = root / "dataset"
        write_dataset(dataset, count=args.images, size=args.resolution)
        results = {}
        for mode in MODES:
            config = root / f"{mode.replace(' ', '-')}.toml"
            config.write_text(_run_toml(model, dataset, root / mode.replace(" ", "-"), mode == "cached",
                                        args.steps + WARMUP_STEPS, args.batch_size, args.resolution))
            completed = subprocess.run([sys.executable, "-m", "engine.training.bench", str(config),
                                        str(args.batch_size)], capture_output=True, text=True)
            if completed.returncode != 0:
                raise EngineError(f"The {mode} training benchmark failed: "
                                  f"{completed.stderr.strip().splitlines()[-1:]}")
            results[mode] = json.loads(completed.stdout.strip().splitlines()[-1])
    setup = {"model": str(args.model or "synthetic"), "images": args.images, "resolution": args.resolution,
             "batch_size": args.batch_size, "timed_steps": args.steps}
    if args.json:
        print(json.dumps({"setup": setup, **results}, indent=2))
        return 0
    print(f"LoRA training, {setup['model']} model, {args.images} images at {args.resolution}px, batch "
          f"{args.batch_size}, {args.steps} timed steps after {WARMUP_STEPS}, each mode in its own process")
    print(f"{'mode':<12} {'samples/s':>10} {'peak RSS MB':>12} {'RSS training MB':>16}")
    for mode, row in results.items():
        print(f"{mode:<12} {row['samples_per_s']:10.2f} {row['peak_rss_mb']:12.0f} {row['training_rss_mb']:16.0f}")
    return 0


if __name__ == "__main__":
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m engine train` runs (see engine/cli.py)
    print(json.dumps(_child(Path(sys.argv[1]), int(sys.argv[2]))))
