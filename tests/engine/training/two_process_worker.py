"""Run by test_distributed.py under torchrun: `python -m engine train` as each process runs it, plus a record of
which examples the process trained on and the adapter it ended with (rank-N.json / rank-N.safetensors)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(config: str, record_dir: str) -> int:
    from safetensors.torch import save_file

    from engine import cli
    from engine.training import adapter, bucketed, run

    picks: list[dict] = []
    pick = bucketed.BucketedCache.pick

    def recording_pick(self, train_config, step, process=0, processes=1):
        part, positions = pick(self, train_config, step, process, processes)
        picks.append({"step": step, "process": process, "processes": processes, "positions": positions.tolist()})
        return part, positions

    trained = {}
    train = run.train

    def capturing_train(transformer, *args, **kwargs):
        trained["model"] = transformer
        return train(transformer, *args, **kwargs)

    bucketed.BucketedCache.pick = recording_pick
    run.train = capturing_train
    code = cli.main(["train", "--config", config])
    rank = os.environ["RANK"]
    save_file(adapter.lora_state_dict(trained["model"]), str(Path(record_dir) / f"rank-{rank}.safetensors"))
    (Path(record_dir) / f"rank-{rank}.json").write_text(json.dumps(picks))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
