"""python -m engine VERB ...: generate, models, download, plan, bench, train.

Exit 0 on success; 2 on bad input, with one line on stderr and no traceback (DESIGN.md's CLI contract).
Heavy imports (torch, diffusers) happen inside the verbs, so `--help` and errors in arguments are instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.settings import LoraChoice

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; the contract is one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see: {self.prog} --help)\n")


def _add_model_choice(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", help="preset name (see: python -m engine models); default tiny-shapes")
    group.add_argument("--model", type=Path, help="a model folder in the diffusers layout (model_index.json)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="where hub repos live (default ./models)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m engine", description="The studio's engine from the command line.")
    parser.add_argument("--verbose", action="store_true", help="log what the engine does")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=OneLineParser)

    generate = verbs.add_parser("generate", help="make images from a prompt (or an input image)")
    _add_model_choice(generate)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--negative", help="negative prompt (used when cfg > 1)")
    generate.add_argument("--width", type=int)
    generate.add_argument("--height", type=int)
    generate.add_argument("--steps", type=int)
    generate.add_argument("--cfg", type=float)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--count", type=int, default=1, help="images, with seeds seed..seed+count-1")
    generate.add_argument("--input-image", type=Path, help="start from this image (image-to-image)")
    generate.add_argument("--strength", type=float, help="image-to-image strength in (0, 1]; default 0.6")
    generate.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                          help="apply a LoRA (.safetensors) at WEIGHT (default 1); repeat for several")
    generate.add_argument("--device", help="cuda, cpu, mps; default: cuda when present")
    generate.add_argument("--out", type=Path, required=True, help="PNG to write (with -1, -2... for several)")

    models = verbs.add_parser("models", help="list presets, whether their files are present, size on disk")
    models.add_argument("--models-dir", type=Path, default=Path("models"))

    download = verbs.add_parser("download", help="fetch a preset's files from ModelScope or Hugging Face")
    download.add_argument("--preset", required=True)
    download.add_argument("--hub", choices=["modelscope", "huggingface"], default="modelscope")
    download.add_argument("--models-dir", type=Path, default=Path("models"))

    plan = verbs.add_parser("plan", help="where each component's weights would live, and the expected peak memory")
    _add_model_choice(plan)
    plan.add_argument("--vram", type=float, help="plan for a GPU with this many GB (default: this machine's)")
    plan.add_argument("--ram", type=float, help="GB of RAM to plan with (default: what this machine has free)")
    plan.add_argument("--device", choices=["cuda", "mps", "cpu"], help="the kind of device to plan for")
    plan.add_argument("--width", type=int)
    plan.add_argument("--height", type=int)
    plan.add_argument("--count", type=int, default=1, help="images made at once")
    plan.add_argument("--cfg", type=float, help="guidance scale; above 1 runs an unconditional pass too")
    plan.add_argument("--mode", choices=["auto", "resident", "stream", "fp8"], default="auto",
                      help="force a strategy (default: auto)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    bench = verbs.add_parser("bench", help="benchmarks: pipeline (ours vs diffusers), load (peak memory), vram")
    benches = bench.add_subparsers(dest="bench", required=True, parser_class=OneLineParser)
    pipeline = benches.add_parser("pipeline", help="time our pipeline against diffusers' on the same files")
    pipeline.add_argument("--model", type=Path, help="model folder; default: a synthetic Qwen-Image made in .bench/")
    pipeline.add_argument("--width", type=int, default=256)
    pipeline.add_argument("--height", type=int, default=256)
    pipeline.add_argument("--steps", type=int, default=8)
    pipeline.add_argument("--cfg", type=float, default=4.0)
    pipeline.add_argument("--repeats", type=int, default=3, help="alternating runs of each pipeline")
    pipeline.add_argument("--json", action="store_true", help="print the figures as JSON")
    load = benches.add_parser("load", help="peak RSS while loading a synthetic transformer, against its file size")
    load.add_argument("--gb", type=float, default=1.0, help="size of the synthetic transformer in GB (float32)")
    load.add_argument("--json", action="store_true")
    vram = benches.add_parser("vram", help="VRAM plans measured: disk streaming on the CPU, or --gpu strategies")
    vram.add_argument("--gpu", action="store_true", help="resident, fp8, streaming and diffusers' offloading compared")
    vram.add_argument("--gb", type=float, default=6.0, help="CPU: size of the synthetic transformer in GB")
    vram.add_argument("--ram-gb", type=float, default=1.5, help="CPU: the RAM budget of the streamed run")
    vram.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="--gpu: where to run")
    vram.add_argument("--layers", type=int, default=60, help="--gpu: transformer blocks (Qwen-Image: 60)")
    vram.add_argument("--heads", type=int, default=24, help="--gpu: attention heads of 128 (Qwen-Image: 24)")
    vram.add_argument("--budgets", type=float, nargs="+", default=[24.0, 16.0, 8.0], help="--gpu: VRAM budgets")
    vram.add_argument("--size", type=int, help="image side (default 128 on the CPU, 1328 with --gpu)")
    vram.add_argument("--steps", type=int, default=4)
    vram.add_argument("--cfg", type=float, default=1.0, help="CPU: guidance scale (--gpu always uses 4)")
    vram.add_argument("--repeats", type=int, default=3, help="CPU: alternating runs of each")
    vram.add_argument("--json", action="store_true")
    bench_train = benches.add_parser("train", help="training samples/s and peak RSS, with and without caching")
    bench_train.add_argument("--model", type=Path, help="model folder; default: a synthetic Qwen-Image made in .bench/")
    bench_train.add_argument("--images", type=int, default=16, help="dataset images (shapes world)")
    bench_train.add_argument("--resolution", type=int, default=128)
    bench_train.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    bench_train.add_argument("--batch-size", type=int, default=4)
    bench_train.add_argument("--json", action="store_true")

    train = verbs.add_parser("train", help="train a LoRA (or the full transformer) as a run.toml says")
    train.add_argument("--config", type=Path, required=True, help="the run.toml")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in its output dir")
    return parser


def _out_paths(out: Path, count: int) -> list[Path]:
    if out.suffix.lower() != ".png":
        raise EngineError(f"--out must name a .png file, got {out}.")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{index + 1}{out.suffix}") for index in range(count)]


def parse_lora(text: str) -> LoraChoice:
    """FILE[:WEIGHT]. Split at the last ':' only when what follows is a number, so that a Windows path
    (C:\\loras\\star.safetensors) or any other path with a colon is taken whole."""
    from engine.settings import LoraChoice

    path, colon, weight = text.rpartition(":")
    if not colon or any(separator in weight for separator in "/\\") or weight.lower().endswith(".safetensors"):
        return LoraChoice(path=text)
    try:
        value = float(weight)
    except ValueError:
        raise EngineError(f"--lora {text}: the weight after the last ':' must be a number, got {weight!r}.",
                          "Write --lora FILE or --lora FILE:WEIGHT, e.g. --lora star.safetensors:0.8.") from None
    return LoraChoice(path=path, weight=value)


def _progress_printer():
    if not sys.stderr.isatty():
        return None

    def show(progress) -> None:
        end = "\n" if progress.step == progress.total else ""
        eta = f", {progress.eta_s:.1f}s left" if progress.step else ""
        sys.stderr.write(f"\rstep {progress.step}/{progress.total}{eta}   {end}")
        sys.stderr.flush()

    return show


def run_generate(args: argparse.Namespace) -> int:
    import engine.api as api
    from engine.lora.files import read_lora_info
    from engine.metadata import lora_records, parameters_for, save_png
    from engine.pipelines.run_control import RunControl
    from engine.presets import DEFAULT_PRESET
    from engine.settings import fit_to_limits

    target = args.model if args.model is not None else (args.preset or DEFAULT_PRESET)
    if args.model is not None and not args.model.is_dir():
        raise EngineError(f"--model {args.model} is not a folder.")
    if args.input_image is None and args.strength is not None:
        raise EngineError("--strength needs --input-image.")
    paths = _out_paths(args.out, args.count)
    # Everything that can be checked without weights is checked before the (slow) load.
    loras = [parse_lora(text) for text in args.lora]
    for lora in loras:
        read_lora_info(Path(lora.path))  # missing, damaged or pickle files: said now, not after loading
    preset = api.resolve_preset(target)
    strength = args.strength if args.strength is not None else (0.6 if args.input_image is not None else None)
    settings = api.settings_for(preset, args.prompt, negative_prompt=args.negative, width=args.width,
                                height=args.height, steps=args.steps, cfg=args.cfg, seed=args.seed,
                                count=args.count, strength=strength, loras=loras)
    fit_to_limits(settings, preset.limits, preset.title)
    image = None
    if args.input_image is not None:
        from engine.pipelines.qwen_image import load_input_image

        image = load_input_image(str(args.input_image))
    model = api.load(target, models_dir=args.models_dir, device=args.device)
    result = model.generate(settings, input_image=image, control=RunControl(on_progress=_progress_printer()))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    preset_name = model.preset.name
    input_name = str(args.input_image) if args.input_image is not None else None
    for path, picture, seed in zip(paths, result.images, result.seeds):
        parameters = parameters_for(result.settings, preset_name, seed, loras=lora_records(result.settings),
                                    input_image=input_name)
        save_png(picture, path, parameters)
        print(path)
    return 0


def run_models(args: argparse.Namespace) -> int:
    from engine.presets import all_presets
    from engine.sources import component_status, human_bytes

    rows = [("preset", "files", "on disk", "title")]
    for preset in all_presets():
        statuses = component_status(preset, args.models_dir)
        present = all(status.present for status in statuses)
        size = sum(status.size_bytes for status in statuses)
        rows.append((preset.name, "present" if present else "missing", human_bytes(size), preset.title))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
    return 0


def run_download(args: argparse.Namespace) -> int:
    from engine.presets import load_preset
    from engine.sources import Hub, download

    preset = load_preset(args.preset)
    last = {"percent": -1}

    def progress(done: int, total: int, filename: str) -> None:
        percent = int(done * 100 / total) if total else 0
        if percent != last["percent"]:
            last["percent"] = percent
            print(f"\r{percent:3d}% {filename[-60:]}", end="", file=sys.stderr, flush=True)

    download(preset, args.models_dir, Hub(args.hub), progress)
    print(f"\n{preset.name}: all files present under {args.models_dir}", file=sys.stderr)
    return 0


def run_plan(args: argparse.Namespace) -> int:
    import json

    import engine.api as api
    from engine.presets import DEFAULT_PRESET
    from engine.settings import fit_to_limits
    from engine.vram.explain import plan_lines
    from engine.vram.planner import Budget
    from engine.vram.preset_plan import COMPUTE, hypothetical_budget, plan_for_preset
    from engine.vram.probe import probe

    target = args.model if args.model is not None else (args.preset or DEFAULT_PRESET)
    preset = api.resolve_preset(target)
    settings = api.settings_for(preset, "plan", width=args.width, height=args.height, cfg=args.cfg, count=args.count)
    settings, notes = fit_to_limits(settings, preset.limits, preset.title)
    machine = None
    if args.device or args.vram is not None or args.ram is not None:
        budget = hypothetical_budget(args.device, args.vram, args.ram, args.models_dir)
    else:
        facts = probe(None, args.models_dir)
        budget, machine = Budget.for_machine(facts, COMPUTE[facts.device]), facts.summary()
    plan = plan_for_preset(preset, settings, budget=budget, mode=args.mode, models_dir=args.models_dir)
    if args.json:
        print(json.dumps({"preset": preset.name, **plan.to_json()}, indent=2))
        return 0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print("\n".join(([f"machine: {machine}"] if machine else []) + plan_lines(plan)))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from engine import bench

    if args.bench == "vram":
        from engine.vram import bench as vram_bench

        args.size = args.size or (1328 if args.gpu else 128)
        return (vram_bench.run_gpu if args.gpu else vram_bench.run_cpu)(args)
    if args.bench == "train":
        from engine.training import bench as train_bench

        return train_bench.run_train_bench(args)
    return {"pipeline": bench.run_pipeline_bench, "load": bench.run_load_bench}[args.bench](args)


def run_train(args: argparse.Namespace) -> int:
    """Progress lines on stdout; status.json in the output folder says the same to a watcher. A stopped run
    (STOP file, SIGTERM, Ctrl-C) exits 0 with its checkpoint and LoRA written."""
    import os

    # Training shares the machine's cores with whatever else runs: OpenMP threads that spin while waiting for
    # each other then stall every step (measured on 2 busy cores: 10 s per step instead of 0.05 s); sleeping
    # threads degrade gracefully. Must be set before torch loads its OpenMP runtime, which the verbs import late.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from engine.training.run import run_from_file

    def say(line: str) -> None:
        print(line, flush=True)

    run_from_file(args.config, resume=args.resume, say=say)
    return 0


VERBS = {"generate": run_generate, "models": run_models, "download": run_download, "plan": run_plan,
         "bench": run_bench, "train": run_train}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return VERBS[args.verb](args)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted; nothing was saved.", file=sys.stderr)
        return 130
