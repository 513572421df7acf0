"""Start the studio: python app.py [--host --port --share --auth user:pass --models-dir --outputs-dir --preset].

Argument parsing and launch only; the studio itself is in studio/.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.presets import DEFAULT_PRESET, PRESETS_DIR
from studio.auth import AuthError, access_for
from studio.config import DEFAULT_HOST, DEFAULT_PORT, StudioConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description="The studio, in your browser.")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to serve on (default {DEFAULT_HOST}; "
                        "0.0.0.0 for every network interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument("--share", action="store_true", help="also serve on a public gradio.live link "
                        "(asks for a login: --auth, or a generated password printed once)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="ask every visitor, local ones too, for this login")
    parser.add_argument("--models-dir", type=Path, default=Path("models"),
                        help="where hub repos live (default ./models)")
    parser.add_argument("--outputs-dir", type=Path, default=Path("outputs"),
                        help="where images are saved, in date folders (default ./outputs)")
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help=f"the model the tabs open on (default {DEFAULT_PRESET})")
    parser.add_argument("--presets-dir", type=Path, default=PRESETS_DIR, help="where preset files are read from "
                        "(default: the studio's presets/)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu... (default: cuda when present)")
    parser.add_argument("--verbose", action="store_true", help="log what the engine does")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        access = access_for(args.share, args.auth)
    except AuthError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if access.notice:
        print(access.notice, flush=True)  # once, on this terminal only: never logged
    config = StudioConfig(host=args.host, port=args.port, share=args.share, credentials=access.credentials,
                          models_dir=args.models_dir, outputs_dir=args.outputs_dir, presets_dir=args.presets_dir,
                          preset=args.preset, device=args.device)
    from studio.services import (
        Services,  # gradio: imported after the arguments are known to be good
    )
    from studio.shell import launch

    try:
        launch(Services.from_config(config), access)
    except OSError as error:  # the port is taken, or the address is not this machine's
        print(f"error: cannot serve on {args.host}:{args.port}: {str(error).split('. ')[0]}. Is the studio already "
              "running? Start it with another --port.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
