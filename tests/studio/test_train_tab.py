"""The Train tab's parts: datasets from a zip or a folder, run.toml, and the child-process runner.

The runner is driven with tests/studio/fake_trainer.py, which writes a run's files on the engine's schedule in
milliseconds; test_the_real_trainer_* runs `python -m engine train` on the tiny random model once.
"""

from __future__ import annotations

import csv
import io
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from engine.training.data import DatasetError, open_dataset
from studio.config import StudioConfig
from studio.datasets import caption_rows, dataset_folder, datasets_root, import_zip, read_dataset, save_captions
from studio.loras import list_loras
from studio.tabs.train import (
    base_model,
    dataset_outputs,
    describe,
    first_prompt,
    loss_frame,
    resolution_slider,
    sample_items,
)
from studio.training_runs import (
    RunSpec,
    RunState,
    TrainingError,
    TrainingRunner,
    read_status,
    toml_text,
)

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
WAIT_S = 30


def png_bytes(color: str = "red", size: tuple[int, int] = (32, 32), mode: str = "RGB") -> bytes:
    """A PNG of one color; in RGBA mode opaque in its middle only, like a cut-out."""
    buffer = io.BytesIO()
    image = Image.new(mode, size, color)
    if mode == "RGBA":
        image.putalpha(0)
        image.paste(color, (size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def config(tmp_path) -> StudioConfig:
    return StudioConfig(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs")


@pytest.fixture()
def dataset(config) -> Path:
    folder = datasets_root(config.training_dir) / "shapes"
    folder.mkdir(parents=True)
    for index, color in enumerate(("red", "green", "blue")):
        (folder / f"{index}.png").write_bytes(png_bytes(color))
        (folder / f"{index}.txt").write_text(f"a {color} star")
    return folder


def runner_for(config: StudioConfig, *fake_args: str) -> TrainingRunner:
    return TrainingRunner(config, command=(sys.executable, str(FAKE_TRAINER), *fake_args))


def spec_for(config: StudioConfig, dataset: Path, name: str = "star", steps: int = 20, **changes) -> RunSpec:
    values = dict(name=name, dataset=dataset, out_dir=Path(config.training_dir) / name, steps=steps,
                  learning_rate=1e-4, rank=4, resolution=64, sample_every=5, sample_prompts=("zxq star",),
                  preset="tiny-shapes", trigger_word="zxq")
    return RunSpec(**{**values, **changes})


def wait_for(predicate, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- the runner ---------------------------------------------------------------------------------------------


def test_a_run_goes_to_the_end_with_losses_samples_and_its_lora_in_the_lora_folder(config, dataset):
    runner = runner_for(config)
    runner.start(spec_for(config, dataset))
    assert runner.wait(WAIT_S)
    view = runner.view()
    assert view.state is RunState.FINISHED and (view.step, view.total) == (20, 20)
    assert [point.step for point in view.losses] == list(range(1, 21))
    assert view.losses[-1].loss == pytest.approx(1 / 20)
    assert [path.name for path in view.samples] == [f"step-{step:07d}-0.png" for step in (5, 10, 15, 20)]
    assert view.lora == Path(config.loras_dir) / "star.safetensors"
    assert view.lora.read_bytes() == b"fake LoRA after 20 steps"
    assert list_loras(config) == [view.lora]
    assert describe(view) == ("**Finished** 'star': 20 steps · loss 0.05.  \n"
                              f"The LoRA is in the LoRA pickers: `{view.lora}`")


def test_progress_is_read_while_the_run_goes(config, dataset):
    runner = runner_for(config, "--step-s", "0.05")
    runner.start(spec_for(config, dataset, steps=400))
    wait_for(lambda: len(runner.view().losses) >= 3)
    view = runner.view()
    assert view.state is RunState.RUNNING and view.active
    assert 3 <= view.step < 400 and view.loss == pytest.approx(1 / view.step)
    assert describe(view).startswith(f"**Training** 'star' · step {view.step} of 400 · loss ")
    runner.shutdown()


def test_stop_keeps_a_checkpoint_and_the_lora_and_resume_goes_on_from_it(config, dataset):
    runner = runner_for(config, "--step-s", "0.02")
    spec = spec_for(config, dataset, steps=300)
    runner.start(spec)
    wait_for(lambda: runner.view().step >= 5)
    assert runner.stop()
    assert runner.view().state in (RunState.STOPPING, RunState.STOPPED)
    assert runner.wait(WAIT_S)
    stopped = runner.view()
    assert stopped.state is RunState.STOPPED and 5 <= stopped.step < 300
    assert not (spec.out_dir / "STOP").exists()
    assert (spec.out_dir / "checkpoints" / "latest.json").is_file()
    assert stopped.lora.read_bytes() == f"fake LoRA after {stopped.step} steps".encode()
    assert describe(stopped).startswith(f"**Stopped** 'star' at step {stopped.step} of 300. **Resume** goes on")
    assert not runner.stop()  # nothing runs now

    runner.resume("star")
    assert runner.wait(WAIT_S)
    resumed = runner.view()
    assert resumed.state is RunState.FINISHED and resumed.step == 300
    steps = [point.step for point in resumed.losses]
    assert steps == list(range(1, 301))  # one log across the stop, no step twice
    assert resumed.lora.read_bytes() == b"fake LoRA after 300 steps"


def test_a_crash_shows_the_trainers_last_stderr_lines_and_installs_nothing(config, dataset):
    runner = runner_for(config, "--crash-at", "3")
    runner.start(spec_for(config, dataset))
    assert runner.wait(WAIT_S)
    view = runner.view()
    assert view.state is RunState.FAILED and not view.active
    assert view.message == "The trainer exited with code 1."
    assert view.stderr_tail.splitlines()[-1] == "RuntimeError: out of memory in the fake trainer"
    assert describe(view) == ("**Failed** 'star' at step 2 of 20: The trainer exited with code 1. "
                              "The studio is still running.")
    assert view.lora is None and list_loras(config) == []


def test_a_second_start_while_one_runs_is_refused_with_a_clear_message(config, dataset):
    runner = runner_for(config, "--start-delay-s", "30")
    runner.start(spec_for(config, dataset, name="first"))
    with pytest.raises(TrainingError) as refused:
        runner.start(spec_for(config, dataset, name="second"))
    assert str(refused.value) == ("A training run is already going: 'first' (starting). "
                                  "Stop it first, or wait until it ends.")
    with pytest.raises(TrainingError):
        runner.resume("first")
    assert not (Path(config.training_dir) / "second").exists()
    runner.shutdown()


def test_studio_exit_stops_the_child_which_saves_first(config, dataset):
    runner = runner_for(config, "--step-s", "0.02")
    runner.start(spec_for(config, dataset, steps=1000))
    wait_for(lambda: runner.view().step >= 2)
    runner.shutdown(grace_s=WAIT_S)  # what atexit calls: SIGTERM to the child's group, which saves and stops
    view = runner.view()
    assert view.state is RunState.STOPPED and view.step < 1000
    assert view.lora is not None


def test_a_taken_run_name_or_lora_name_is_refused_and_resume_needs_a_stopped_run(config, dataset):
    runner = runner_for(config)
    runner.start(spec_for(config, dataset))
    assert runner.wait(WAIT_S)
    with pytest.raises(TrainingError) as taken:
        runner.start(spec_for(config, dataset))
    assert str(taken.value) == (f"A run named 'star' already exists in {Path(config.training_dir) / 'star'}. "
                                "Resume it, or pick another run name.")
    Path(config.loras_dir, "mine.safetensors").write_bytes(b"someone's LoRA")
    with pytest.raises(TrainingError) as replaced:
        runner.start(spec_for(config, dataset, name="mine"))
    assert str(replaced.value) == (f"A LoRA named 'mine' is already in {config.loras_dir}. "
                                   "Pick another run name, so that it is not replaced.")
    with pytest.raises(TrainingError) as finished:
        runner.resume("star")
    assert str(finished.value) == "The run 'star' has finished all its 20 steps. Start a new run to train longer."
    with pytest.raises(TrainingError) as unknown:
        runner.resume("nope")
    assert str(unknown.value) == (f"There is no run named 'nope' to resume in {config.training_dir}. "
                                  "Check the run name, or start a new run.")


def test_run_toml_is_what_the_engine_reads(config, dataset):
    from engine.training.run_config import read_run_config

    spec = spec_for(config, dataset, sample_prompts=('a "quoted" étoile', "second"), models_dir=config.models_dir)
    spec.out_dir.mkdir(parents=True)
    (spec.out_dir / "run.toml").write_text(toml_text(spec.tables()))
    read = read_run_config(spec.out_dir / "run.toml")
    assert read.model.preset == "tiny-shapes" and read.model.models_dir == Path(config.models_dir).resolve()
    assert read.dataset.path == dataset.resolve() and read.dataset.resolution == 64
    assert (read.train.steps, read.train.lora_rank, read.train.lora_alpha) == (20, 4, 4.0)
    assert read.train.learning_rate == 1e-4 and read.train.checkpoint_every == 5
    assert read.samples.prompts == ('a "quoted" étoile', "second") and read.samples.every == 5
    assert read.trigger_word == "zxq" and read.name == "star"
    assert read.output_dir == spec.out_dir.resolve() and read.lora_path == spec.lora_path.resolve()
    assert read.dataset.alpha_mask is False


def test_the_alpha_mask_switch_reaches_the_engines_dataset_settings(config, dataset):
    from engine.training.run_config import read_run_config

    spec = spec_for(config, dataset, alpha_mask=True)
    spec.out_dir.mkdir(parents=True)
    (spec.out_dir / "run.toml").write_text(toml_text(spec.tables()))
    assert read_run_config(spec.out_dir / "run.toml").dataset.alpha_mask is True


def test_the_dataset_info_counts_the_images_with_transparency(dataset):
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(dataset / "1.png")
    Image.new("P", (64, 64)).save(dataset / "2.png", transparency=0)
    info = dataset_outputs(read_dataset(dataset))[2]
    assert "2 of them have transparency: tick **Alpha mask** to learn only their opaque parts." in info
    (dataset / "2.png").write_bytes(b"not a png")  # unreadable: the trainer names it later, the count skips it
    (dataset / "1.png").unlink()
    (dataset / "1.txt").unlink()
    assert "transparency" not in dataset_outputs(read_dataset(dataset))[2]


def test_toml_text_round_trips_through_tomllib():
    tables = {"a": {"text": 'quote " back\\slash\nnew line, ünïcode', "int": 3, "float": 1e-4, "yes": True,
                    "list": ["x", "y"]}}
    assert tomllib.loads(toml_text(tables)) == tables


@pytest.mark.parametrize(("changes", "message"), [
    (dict(name="../up"), "Run name must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
                         "digit; got '../up'. It names the run's folder and its LoRA file."),
    (dict(steps=0), "Steps must be a whole number of at least 1, got 0."),
    (dict(resolution=100), "Resolution must be a multiple of 16, got 100. The model works on 16-pixel patches."),
    (dict(alpha_mask="yes"), "Alpha mask must be on or off, got 'yes'."),
    (dict(rank=None), "Rank must be a whole number of at least 1, got None."),
    (dict(learning_rate=2.0), "Learning rate must be a number between 0 and 1, got 2.0. 1e-4 is a common start "
                              "for LoRA."),
    (dict(sample_prompts=(" ",)), "Sample prompts are empty. Write at least one prompt, one per line."),
])
def test_error_raised_if_a_form_value_is_bad(config, dataset, changes, message):
    from engine.errors import SettingsError

    with pytest.raises(SettingsError) as error:
        spec_for(config, dataset, **changes)
    assert str(error.value) == message


# --- datasets ------------------------------------------------------------------------------------------------


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def test_error_raised_if_a_zip_member_leaves_the_folder_and_nothing_is_unpacked(config, tmp_path):
    archive = make_zip(tmp_path / "evil.zip", {"a.png": png_bytes(), "../../escape.png": png_bytes()})
    with pytest.raises(DatasetError) as error:
        import_zip(archive, config.training_dir)
    assert str(error.value) == ("The zip holds a file whose path leaves the dataset folder: ../../escape.png. "
                                "Nothing was unpacked. Make the zip again from the dataset folder itself, so every "
                                "path is inside it.")
    assert list(datasets_root(config.training_dir).glob("*")) == []
    assert not (tmp_path / "escape.png").exists()


@pytest.mark.parametrize("name", ["/etc/cron.d/x.png", "C:/Windows/x.png", "a\\..\\..\\x.png"])
def test_error_raised_if_a_zip_member_is_absolute_or_climbs_with_backslashes(config, tmp_path, name):
    with pytest.raises(DatasetError, match="leaves the dataset folder"):
        import_zip(make_zip(tmp_path / "evil.zip", {name: png_bytes()}), config.training_dir)


def test_a_zip_unpacks_to_a_flat_folder_the_engine_reads_with_its_captions(config, tmp_path):
    archive = make_zip(tmp_path / "my stars.zip", {
        "stars/one.png": png_bytes("red"), "stars/one.txt": "a red star\n",
        "stars/more/two.png": png_bytes("blue"), "stars/more/two.txt": "a  blue\nstar",
        "stars/three.jpg": b"not really a jpeg",
        "stars/notes.pdf": b"%PDF", "stars/readme.md": b"hi",
        "__MACOSX/stars/._one.png": b"apple double", "stars/.DS_Store": b"x",
    })
    imported = import_zip(archive, config.training_dir)
    assert imported.folder == datasets_root(config.training_dir) / "my-stars"
    assert [(row.image, row.caption) for row in imported.rows] == [("more_two.png", "a blue star"),
                                                                    ("one.png", "a red star")]
    assert imported.notes[0] == "Skipped 2 file(s) that are not images: stars/notes.pdf, stars/readme.md."
    assert imported.notes[1].startswith("Left out 1 image(s) that cannot be read: stars/three.jpg (")
    engine_view = open_dataset(imported.folder)
    assert engine_view.rows == [("more_two.png", "a blue star"), ("one.png", "a red star")]
    assert sorted(path.name for path in imported.folder.iterdir()) == ["metadata.csv", "more_two.png", "one.png"]
    again = import_zip(archive, config.training_dir)
    assert again.folder.name == "my-stars-2"  # a second upload never mixes into the first


def test_a_zip_with_a_metadata_csv_keeps_its_captions(config, tmp_path):
    archive = make_zip(tmp_path / "set.zip", {"metadata.csv": "image,prompt\na.png,a star at the top\n",
                                              "a.png": png_bytes(), "b.png": png_bytes("blue")})
    imported = import_zip(archive, config.training_dir)
    assert [(row.image, row.caption) for row in imported.rows] == [("a.png", "a star at the top"), ("b.png", "")]


def test_a_zip_of_kohya_repeat_folders_captions_by_folder_name_and_says_repeats_are_not_applied(config, tmp_path):
    archive = make_zip(tmp_path / "kohya.zip", {
        "img/10_zxq star/a.png": png_bytes("red"), "img/10_zxq star/b.png": png_bytes("blue"),
        "img/10_zxq star/b.txt": "a blue zxq star", "img/1_circle/c.png": png_bytes("green"),
    })
    imported = import_zip(archive, config.training_dir)
    assert [(row.image, row.caption) for row in imported.rows] == [
        ("10_zxq star_a.png", "zxq star"), ("10_zxq star_b.png", "a blue zxq star"), ("1_circle_c.png", "circle")]
    assert imported.notes == ("The repeat counts of the kohya folder(s) 10_zxq star are not used here: each image "
                              "counts once. To train with them, give the folder to python -m engine train.",)


def test_error_raised_if_a_zip_has_no_readable_image(config, tmp_path):
    with pytest.raises(DatasetError) as error:
        import_zip(make_zip(tmp_path / "bad.zip", {"x.png": b"garbage"}), config.training_dir)
    assert str(error.value).startswith("None of the 1 image(s) in bad.zip can be read: x.png (")
    with pytest.raises(DatasetError) as empty:
        import_zip(make_zip(tmp_path / "docs.zip", {"x.pdf": b"%PDF"}), config.training_dir)
    assert str(empty.value).startswith("docs.zip holds no images.")
    (tmp_path / "plain.zip").write_bytes(b"this is no zip")
    with pytest.raises(DatasetError, match=r"^plain.zip is not a readable zip file"):
        import_zip(tmp_path / "plain.zip", config.training_dir)
    assert list(datasets_root(config.training_dir).glob("*")) == []


def test_error_raised_if_a_zip_declares_more_than_the_size_limit(config, tmp_path, monkeypatch):
    import studio.datasets

    monkeypatch.setattr(studio.datasets, "MAX_UNPACKED_BYTES", 1000)
    archive = make_zip(tmp_path / "big.zip", {"a.png": png_bytes(size=(300, 300)) + bytes(2000)})
    with pytest.raises(DatasetError) as error:
        import_zip(archive, config.training_dir)
    assert str(error.value).startswith("big.zip unpacks to 0.0 GB; a dataset may take at most 0 GB.")


def test_a_folder_outside_the_training_folder_is_refused(config, dataset, tmp_path):
    root = Path(config.training_dir).resolve()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(DatasetError) as error:
        dataset_folder(str(outside), config.training_dir)
    assert str(error.value) == (f"The folder {outside} is outside the studio's training folder {root}. Copy the "
                                f"dataset into {root / 'datasets'} and give its path, or upload it as a zip.")
    (datasets_root(config.training_dir) / "link").symlink_to(outside)
    with pytest.raises(DatasetError, match="is outside the studio's training folder"):
        dataset_folder("datasets/link", config.training_dir)
    with pytest.raises(DatasetError, match="is outside"):
        dataset_folder("datasets/../../..", config.training_dir)
    assert dataset_folder("datasets/shapes", config.training_dir) == dataset.resolve()
    assert dataset_folder(str(dataset), config.training_dir) == dataset.resolve()


def test_captions_are_read_from_txt_files_and_edits_are_written_to_metadata_csv(dataset):
    assert [(row.image, row.caption) for row in read_dataset(dataset).rows] == [
        ("0.png", "a red star"), ("1.png", "a green star"), ("2.png", "a blue star")]
    rows = caption_rows(dataset, [["0.png", "a  red star, big"], ["1.png", "a green star"], ["2.png", ""]], "zxq")
    save_captions(dataset, rows)
    assert open_dataset(dataset).rows == [("0.png", "a red star, big"), ("1.png", "a green star"), ("2.png", "")]
    assert [(row.image, row.caption) for row in read_dataset(dataset).rows][0] == ("0.png", "a red star, big")


def test_editing_captions_keeps_the_other_columns_of_metadata_csv(dataset):
    (dataset / "metadata.csv").write_text("image,prompt,edit_image\n0.png,old,0.png\n1.png,old,1.png\n")
    save_captions(dataset, caption_rows(dataset, [["0.png", "new zero"], ["1.png", "new one"]]))
    with (dataset / "metadata.csv").open(newline="") as file:
        assert list(csv.DictReader(file)) == [{"image": "0.png", "prompt": "new zero", "edit_image": "0.png"},
                                              {"image": "1.png", "prompt": "new one", "edit_image": "1.png"}]


def test_error_raised_if_the_caption_table_names_other_images_or_leaves_captions_empty(dataset):
    with pytest.raises(DatasetError) as unknown:
        caption_rows(dataset, [["0.png", "x"], ["../secret.png", "y"]])
    assert str(unknown.value) == (f"The caption table names images that are not in {dataset}: ../secret.png. "
                                  "Only the captions can be edited; load the dataset again to reset the names.")
    with pytest.raises(DatasetError) as empty:
        caption_rows(dataset, [["0.png", " "], ["1.png", "x"]])
    assert str(empty.value) == ("1 image(s) have no caption: 0.png. Write a caption for each in the table, "
                                "or set a trigger word.")


# --- the tab's pure parts -------------------------------------------------------------------------------------


def test_the_base_model_is_named_by_preset_when_shipped_else_by_its_folder(studio_presets, tiny_qwen_dir):
    from engine.presets import PRESETS_DIR, load_preset

    assert base_model(load_preset("tiny-shapes", PRESETS_DIR)) == {"preset": "tiny-shapes"}
    assert base_model(load_preset("tiny-test", studio_presets)) == {"model": tiny_qwen_dir}
    assert base_model(load_preset("qwen-image", studio_presets)) == {"preset": "qwen-image"}


def test_the_default_sample_prompt_is_the_first_caption_as_the_trainer_reads_it():
    assert first_prompt("a red star", "zxq") == "zxq a red star"
    assert first_prompt("zxq, a red star", "zxq") == "zxq, a red star"
    assert first_prompt("a red star", "") == "a red star"
    assert first_prompt("", "zxq") == "zxq"


def test_the_resolution_follows_the_preset_and_stays_a_multiple_of_16(studio_presets):
    from engine.presets import load_preset

    tiny = resolution_slider(load_preset("tiny-test", studio_presets))
    assert (tiny["minimum"], tiny["maximum"], tiny["step"], tiny["value"]) == (32, 256, 16, 64)
    large = resolution_slider(load_preset("qwen-image", studio_presets))
    assert large["value"] == 1024 and large["value"] % 16 == 0


def test_the_form_opens_on_the_presets_training_defaults(tmp_path):
    import gradio as gr

    from engine.presets import load_preset
    from studio.tabs.train import Choices, build

    tiny = load_preset("tiny-shapes")
    with gr.Blocks():
        ui = build(Choices([(tiny.title, tiny.name)], tiny, tmp_path))
    assert (ui.steps.value, ui.rank.value, ui.learning_rate.value, ui.sample_every.value) == (1500, 16, 1e-3, 250)


def test_a_long_loss_log_is_thinned_for_the_plot_but_keeps_the_latest_point():
    from studio.training_runs import LossPoint

    points = tuple(LossPoint(step, 1 / step, 1e-4, step) for step in range(1, 5002))
    frame = loss_frame(points)
    assert len(frame) <= 2001 and frame["step"].iloc[0] == 1 and frame["step"].iloc[-1] == 5001
    assert list(loss_frame(()).columns) == ["step", "loss"]


def test_samples_are_shown_newest_first_with_their_step(config, dataset):
    runner = runner_for(config)
    runner.start(spec_for(config, dataset, steps=10, sample_prompts=("one", "two")))
    assert runner.wait(WAIT_S)
    labels = [label for _, label in sample_items(runner.view())]
    assert labels == ["step 10 · prompt 2", "step 10 · prompt 1", "step 5 · prompt 2", "step 5 · prompt 1"]
    assert read_status(runner.view().out_dir).state == "finished"


@pytest.mark.slow
def test_the_real_trainer_runs_through_the_runner_and_its_lora_reaches_the_pickers(config, tiny_qwen_dir):
    """`python -m engine train` on the tiny random Qwen-Image, 4 steps: the contract the fake keeps, kept."""
    from engine.lora.files import read_lora_info

    folder = datasets_root(config.training_dir) / "real"
    folder.mkdir(parents=True)
    for index, color in enumerate(("red", "blue")):
        (folder / f"{index}.png").write_bytes(png_bytes(color, (64, 64)))
        (folder / f"{index}.txt").write_text(f"a {color} star")
    runner = TrainingRunner(config)
    runner.start(spec_for(config, folder, name="real", steps=4, sample_every=2, sample_steps=2, rank=4,
                          learning_rate=1e-3, preset=None, model=tiny_qwen_dir))
    assert runner.wait(300)
    view = runner.view()
    assert view.state is RunState.FINISHED, (view.message, view.stderr_tail)
    assert (view.step, view.total) == (4, 4)
    assert [point.step for point in view.losses] == [1, 2, 3, 4]  # log_every 1 for a run this short
    assert [path.name for path in view.samples] == ["step-0000002-0.png", "step-0000004-0.png"]
    assert list_loras(config) == [Path(config.loras_dir) / "real.safetensors"] == [view.lora]
    info = read_lora_info(view.lora)
    assert (info.rank, info.steps, info.trigger_words) == (4, 4, ("zxq",))


def test_stop_reaches_a_trainer_still_loading_and_the_name_can_start_again(config, dataset):
    # A child that has not set up its stop handling yet (torch still importing): SIGTERM ends it at once.
    runner = TrainingRunner(config, command=(sys.executable, "-c", "import time; time.sleep(60)"))
    runner.start(spec_for(config, dataset))
    assert runner.view().state is RunState.STARTING
    assert runner.stop()
    assert runner.wait(WAIT_S)
    view = runner.view()
    assert (view.state, view.message) == (RunState.STOPPED, "Stopped before the first checkpoint: nothing was saved.")
    assert describe(view) == "**Stopped** 'star' at step 0 of 20, before anything was saved. **Start** begins it again."
    with pytest.raises(TrainingError, match="has no checkpoint to resume from"):
        runner.resume("star")
    runner.command = (sys.executable, str(FAKE_TRAINER))
    runner.start(spec_for(config, dataset))
    assert runner.wait(WAIT_S) and runner.view().state is RunState.FINISHED


def test_the_lora_and_training_folders_follow_the_models_and_outputs_folders(tmp_path):
    config = StudioConfig(models_dir=tmp_path / "m", outputs_dir=tmp_path / "o")
    assert (config.loras_dir, config.training_dir) == (tmp_path / "m" / "loras", tmp_path / "o" / "training")
    chosen = StudioConfig(loras_dir=tmp_path / "mine", training_dir=tmp_path / "runs")
    assert (chosen.loras_dir, chosen.training_dir) == (tmp_path / "mine", tmp_path / "runs")


def test_list_loras_finds_safetensors_in_subfolders_by_name(config):
    assert list_loras(config) == []  # no folder yet
    folder = Path(config.loras_dir)
    (folder / "styles").mkdir(parents=True)
    for name in ("b.safetensors", "styles/A.safetensors", "notes.txt", "c.ckpt"):
        (folder / name).write_bytes(b"x")
    assert list_loras(config) == [folder / "b.safetensors", folder / "styles" / "A.safetensors"]
