"""A stand-in for `python -m engine train` that writes a run's files on the engine's schedule, in milliseconds.

    python fake_trainer.py [--step-s S] [--crash-at N] [--start-delay-s S] --config run.toml [--resume]

It keeps the contract the studio reads (status.json written atomically, loss.jsonl, samples, checkpoints/,
the LoRA at the end or on STOP / SIGTERM) so the runner and the tab are tested without a model.
--crash-at N dies at step N the way a real crash does: a traceback on stderr, exit 1, status left "running".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import tomllib
from pathlib import Path

from PIL import Image


def write_status(out: Path, **status) -> None:
    partial = out / "status.json.partial"
    partial.write_text(json.dumps(status))
    os.replace(partial, out / "status.json")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--step-s", type=float, default=0.02)
    parser.add_argument("--crash-at", type=int, default=0)
    parser.add_argument("--start-delay-s", type=float, default=0.0, help="before status.json: loading the model")
    args = parser.parse_args()
    run = tomllib.loads(args.config.read_text())
    train, out = run["train"], Path(run["output"]["dir"])
    total, every, prompts = train["steps"], train["sample_every"], train["sample_prompts"]
    lora = out / f"{run['output']['name']}.safetensors"
    checkpoint = out / "checkpoints" / "latest.json"
    stop_signal = []
    signal.signal(signal.SIGTERM, lambda *_: stop_signal.append(True))

    step = json.loads(checkpoint.read_text())["step"] if args.resume else 0
    samples = sorted(str(path.relative_to(out)) for path in (out / "samples").glob("*.png")) if args.resume else []
    started = time.perf_counter()
    print(f"fake trainer: {run['dataset']['path']} from step {step}", flush=True)

    def save(state: str) -> None:
        checkpoint.parent.mkdir(exist_ok=True)
        checkpoint.write_text(json.dumps({"step": step}))
        lora.write_bytes(f"fake LoRA after {step} steps".encode())
        write_status(out, state=state, step=step, total=total, loss=loss, eta_s=0.0, message="", lora=str(lora),
                     samples=samples)

    loss = None
    waited = time.perf_counter() + args.start_delay_s
    while time.perf_counter() < waited and not stop_signal:
        time.sleep(0.01)
    write_status(out, state="running", step=step, total=total, loss=None, eta_s=None, message="", lora=None,
                 samples=samples)
    while step < total:
        if (out / "STOP").exists() or stop_signal:
            save("stopped")
            (out / "STOP").unlink(missing_ok=True)
            return 0
        time.sleep(args.step_s)
        step += 1
        if step == args.crash_at:
            print("Traceback (most recent call last):\n  File \"loop.py\", line 1, in step", file=sys.stderr)
            print("RuntimeError: out of memory in the fake trainer", file=sys.stderr, flush=True)
            return 1
        loss = 1.0 / step
        with (out / "loss.jsonl").open("a") as log:
            log.write(json.dumps({"step": step, "loss": loss, "lr": train["learning_rate"],
                                  "elapsed_s": time.perf_counter() - started}) + "\n")
        if step % every == 0:
            (out / "samples").mkdir(exist_ok=True)
            for index, _ in enumerate(prompts):
                path = out / "samples" / f"step-{step:07d}-{index}.png"
                Image.new("RGB", (32, 32), (step % 256, 0, 0)).save(path)
                samples.append(str(path.relative_to(out)))
        write_status(out, state="running", step=step, total=total, loss=loss, eta_s=(total - step) * args.step_s,
                     message="", lora=None, samples=samples)
    save("finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
