"""Dataset folders: kohya-style images with .txt captions, metadata.csv, and the errors a user can fix."""

from __future__ import annotations

import pytest
from PIL import Image

from engine.toyworld.dataset import write_dataset
from engine.training.data import CaptionedFolder, DatasetError, MetadataFolder, fit_to_size, open_dataset


def write_image(path, size=(40, 30), color=(200, 10, 10)):
    Image.new("RGB", size, color).save(path)


def test_kohya_folder_pairs_each_image_with_its_caption_file(tmp_path):
    write_image(tmp_path / "b.png", (40, 30))
    (tmp_path / "b.txt").write_text("a red picture\n")
    write_image(tmp_path / "a.jpg", (30, 40))
    (tmp_path / "a.txt").write_text("zxq star")
    (tmp_path / "notes.md").write_text("not part of the dataset")
    dataset = open_dataset(tmp_path)
    assert isinstance(dataset, CaptionedFolder) and len(dataset) == 2
    assert [example.caption for example in dataset] == ["zxq star", "a red picture"]
    assert dataset.image_size(0) == (30, 40) and dataset[1].image.mode == "RGB"


def test_metadata_csv_wins_over_caption_files_and_keeps_extra_columns_out_of_the_way(tmp_path):
    write_dataset(tmp_path, count=2, size=64)
    text = (tmp_path / "metadata.csv").read_text().splitlines()
    rows = [text[0] + ",edit_image"] + [line + ",x.png" for line in text[1:]]
    (tmp_path / "metadata.csv").write_text("\n".join(rows))
    dataset = open_dataset(tmp_path)
    assert isinstance(dataset, MetadataFolder) and len(dataset) == 2 and dataset.image_size(1) == (64, 64)


def test_error_names_the_images_without_a_caption_file(tmp_path):
    for name in ("one", "two"):
        write_image(tmp_path / f"{name}.png")
    (tmp_path / "one.txt").write_text("a caption")
    with pytest.raises(DatasetError) as caught:
        open_dataset(tmp_path)
    assert str(caught.value) == (f"1 image(s) in {tmp_path} have no caption file: two.png. Write each caption into a "
                                 ".txt file with the image's name (e.g. two.txt).")


def test_error_says_what_a_dataset_folder_needs_when_it_holds_no_images(tmp_path):
    with pytest.raises(DatasetError) as caught:
        open_dataset(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path} holds no images and no metadata.csv.")


def test_error_names_an_unreadable_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    (tmp_path / "broken.txt").write_text("a caption")
    dataset = open_dataset(tmp_path)
    with pytest.raises(DatasetError) as caught:
        dataset.image_size(0)
    assert str(caught.value).startswith(f"Cannot read the image {tmp_path / 'broken.png'}: ")
    assert str(caught.value).endswith("Replace or remove that file.")
    with pytest.raises(DatasetError, match="broken.png"):
        dataset[0]


def test_fitting_scales_to_cover_and_crops_the_centre():
    image = Image.new("RGB", (200, 100), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 30, 100))  # a red band at the left edge is cropped away
    fitted = fit_to_size(image, 64, 64)
    assert fitted.size == (64, 64)
    assert fitted.getpixel((0, 32)) == (0, 0, 255) and fitted.getpixel((63, 32)) == (0, 0, 255)
    same = Image.new("RGB", (64, 48))
    assert fit_to_size(same, 64, 48) is same  # no resampling when the size is already right


def test_kohya_repeat_folders_list_each_image_repeats_times_captioned_by_txt_or_folder_name(tmp_path):
    (tmp_path / "3_zxq star").mkdir()
    write_image(tmp_path / "3_zxq star" / "a.png")
    write_image(tmp_path / "3_zxq star" / "b.png")
    (tmp_path / "3_zxq star" / "b.txt").write_text("zxq star, yellow\n")
    (tmp_path / "1_circle").mkdir()
    write_image(tmp_path / "1_circle" / "c.png", (30, 40))
    (tmp_path / "notes").mkdir()  # not <repeats>_<name>: not part of the dataset
    write_image(tmp_path / "notes" / "d.png")
    dataset = open_dataset(tmp_path)
    assert isinstance(dataset, CaptionedFolder)
    assert dataset.rows == [("1_circle/c.png", "circle")] + [("3_zxq star/a.png", "zxq star")] * 3 + \
        [("3_zxq star/b.png", "zxq star, yellow")] * 3
    assert dataset.image_size(0) == (30, 40) and dataset[6].caption == "zxq star, yellow"


def test_error_raised_for_a_repeat_folder_of_zero_repeats(tmp_path):
    (tmp_path / "0_star").mkdir()
    write_image(tmp_path / "0_star" / "a.png")
    with pytest.raises(DatasetError) as caught:
        open_dataset(tmp_path)
    assert str(caught.value) == "The folder 0_star asks for 0 repeats. Name it with 1 or more repeats, e.g. 1_star."


def test_error_raised_when_the_repeat_folders_hold_no_images(tmp_path):
    (tmp_path / "5_star").mkdir()
    (tmp_path / "5_star" / "readme.txt").write_text("nothing here")
    with pytest.raises(DatasetError) as caught:
        open_dataset(tmp_path)
    assert str(caught.value) == f"The repeat folders of {tmp_path} (5_star) hold no images."


def write_rgba(path, alpha_left: int, alpha_right: int, size=(64, 64)):
    """A red image whose left half has alpha alpha_left and right half alpha_right."""
    image = Image.new("RGBA", size, (200, 10, 10, alpha_right))
    image.paste((200, 10, 10, alpha_left), (0, 0, size[0] // 2, size[1]))
    image.save(path)


def test_alpha_mask_gives_each_example_its_images_alpha_and_full_weight_to_opaque_images(tmp_path):
    write_rgba(tmp_path / "a.png", 255, 0)
    (tmp_path / "a.txt").write_text("left half")
    write_image(tmp_path / "b.png", (64, 64))
    (tmp_path / "b.txt").write_text("no alpha")
    masked = open_dataset(tmp_path, alpha_mask=True)
    first, second = masked[0], masked[1]
    assert first.image.mode == "RGB" and first.image.getpixel((50, 5)) == (200, 10, 10)  # colour kept under alpha 0
    assert first.loss_mask.mode == "L" and first.loss_mask.getpixel((5, 5)) == 255
    assert first.loss_mask.getpixel((50, 5)) == 0
    assert second.loss_mask.getextrema() == (255, 255)
    assert open_dataset(tmp_path)[0].loss_mask is None  # without alpha_mask the alpha is ignored


def test_error_raised_for_an_image_transparent_everywhere_under_alpha_mask(tmp_path):
    write_rgba(tmp_path / "ghost.png", 0, 0)
    (tmp_path / "ghost.txt").write_text("nothing")
    with pytest.raises(DatasetError) as caught:
        open_dataset(tmp_path, alpha_mask=True)[0]
    assert str(caught.value) == (f"The image {tmp_path / 'ghost.png'} is transparent everywhere, so with alpha_mask it "
                                 "would teach nothing. Give it an alpha channel that marks what to learn, or remove it.")
