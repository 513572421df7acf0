"""`python -m engine bench train`: both modes run in their own process and report throughput and memory."""

from __future__ import annotations

import json

from engine.cli import main


def test_bench_reports_samples_per_second_and_memory_with_and_without_the_cache(tiny_qwen_dir, capsys):
    code = main(["bench", "train", "--model", str(tiny_qwen_dir), "--images", "4", "--resolution", "64",
                 "--steps", "2", "--batch-size", "2", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["setup"] == {"model": str(tiny_qwen_dir), "images": 4, "resolution": 64, "batch_size": 2,
                               "timed_steps": 2}
    for mode in ("cached", "on the fly"):
        row = report[mode]
        assert row["samples_per_s"] > 0 and row["peak_rss_mb"] >= row["training_rss_mb"] > 100
