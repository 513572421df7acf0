import pytest

from engine.toyworld.dataset import write_dataset
from engine.toyworld.world import make_sample
from engine.training.data import DatasetError, MetadataFolder, ShapesSamples


def test_shapes_samples_are_the_worlds_samples_of_consecutive_seeds():
    samples = ShapesSamples(3, first_seed=10, size=64)
    assert len(samples) == 3 and samples[2].caption == make_sample(12, size=64).caption
    assert samples[0].image.size == (64, 64)
    assert [example.caption for example in samples[1:]] == [make_sample(s, size=64).caption for s in (11, 12)]


def test_metadata_folder_reads_what_the_sample_command_writes(tmp_path):
    write_dataset(tmp_path, count=4, seed=7, size=64)
    folder = MetadataFolder(tmp_path)
    assert len(folder) == 4
    assert folder[1].caption == make_sample(8, size=64).caption
    assert list(folder[1].image.getdata()) == list(make_sample(8, size=64).image.getdata())


def test_error_names_the_missing_column_when_metadata_lacks_prompt(tmp_path):
    (tmp_path / "metadata.csv").write_text("image,text\na.png,hello\n")
    with pytest.raises(DatasetError, match="prompt"):
        MetadataFolder(tmp_path)


def test_error_names_an_image_that_does_not_exist(tmp_path):
    (tmp_path / "metadata.csv").write_text("image,prompt\nmissing.png,hello\n")
    with pytest.raises(DatasetError, match="missing.png"):
        MetadataFolder(tmp_path)


def test_error_raised_if_the_folder_has_no_metadata(tmp_path):
    with pytest.raises(DatasetError, match="metadata.csv"):
        MetadataFolder(tmp_path)
