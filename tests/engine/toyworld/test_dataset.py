import csv

import pytest

from engine.toyworld.__main__ import main
from engine.toyworld.dataset import write_dataset
from engine.toyworld.world import make_sample


def test_writes_images_and_metadata_in_diffsynth_layout_when_sampling(tmp_path):
    metadata = write_dataset(tmp_path, count=3, seed=5)
    with metadata.open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [r["image"] for r in rows] == ["000000.png", "000001.png", "000002.png"]
    assert [r["prompt"] for r in rows] == [make_sample(seed).caption for seed in (5, 6, 7)]
    assert all((tmp_path / r["image"]).is_file() for r in rows)


def test_cli_writes_count_images_when_run_with_sample(tmp_path):
    assert main(["sample", "--out", str(tmp_path), "--count", "2", "--seed", "1", "--shapes", "star"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000.png", "000001.png", "metadata.csv"]


def test_cli_exits_2_with_one_line_and_writes_nothing_if_count_is_zero(tmp_path, capsys):
    out = tmp_path / "data"
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--out", str(out), "--count", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not out.exists()
