"""Train: a LoRA on top of a preset, from a zip or a folder of captioned images, watched as it learns.

build(choices) lays the tab out; wire(ui, services, page_load) attaches the events. Training runs in a child
process (studio/training_runs.py); the page reads its files on a timer, so it stays responsive and a crash in
training leaves the studio running. The finished LoRA lands in the LoRA folder that the pickers list.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from engine.errors import PresetError
from engine.presets import PRESETS_DIR, Preset, Tab, TrainingDefaults
from engine.training.data import DatasetError
from studio.datasets import (
    Dataset,
    caption_rows,
    dataset_folder,
    datasets_root,
    images_with_alpha,
    import_zip,
    read_dataset,
    save_captions,
)
from studio.errors import boundary
from studio.services import Services
from studio.tabs.text_to_image import opening_preset
from studio.training_runs import LossPoint, RunSpec, RunState, RunView

logger = logging.getLogger(__name__)

POLL_S = 1.5  # how often an open page reads the run's files
PLOT_POINTS = 2000  # a longer loss log is thinned for the plot (every point stays in loss.jsonl)
THUMBNAILS = 200
MAX_RESOLUTION = 1024  # the default training side for large models: their 1328 px costs twice the memory
SAMPLE_NAME = re.compile(r"step-(\d+)-(\d+)\.\w+$")


DEFAULT_RUN_NAME = "my-lora"


@dataclass(frozen=True)
class Choices:
    presets: list[tuple[str, str]]  # (title, name) of the presets a LoRA can be trained on
    preset: Preset | None
    training_dir: Path


def choices_for(services: Services) -> Choices:
    presets = services.catalog.presets(Tab.TEXT_TO_IMAGE)
    return Choices([(p.title, p.name) for p in presets], opening_preset(services),
                   Path(services.config.training_dir))


@dataclass
class TrainUI:
    preset: gr.Dropdown
    zip_file: gr.File
    folder: gr.Textbox
    load: gr.Button
    dataset_info: gr.Markdown
    captions: gr.Dataframe
    thumbnails: gr.Gallery
    run_name: gr.Textbox
    trigger_word: gr.Textbox
    steps: gr.Number
    rank: gr.Number
    learning_rate: gr.Number
    resolution: gr.Slider
    alpha_mask: gr.Checkbox
    sample_prompts: gr.Textbox
    sample_every: gr.Number
    start: gr.Button
    stop: gr.Button
    resume: gr.Button
    status: gr.Markdown
    failure: gr.Code
    loss_plot: gr.LinePlot
    samples: gr.Gallery
    timer: gr.Timer
    dataset: gr.State  # the loaded dataset's folder, as a string
    shown_samples: gr.State  # the sample paths the gallery holds
    finished_lora: gr.State  # the LoRA file the last run put in the pickers' folder; its change refreshes them


def resolution_slider(preset: Preset | None) -> dict:
    """The resolution field's range and value for a preset: its largest default side, at most MAX_RESOLUTION."""
    if preset is None:
        return dict(minimum=64, maximum=MAX_RESOLUTION, step=16, value=512)
    limits = preset.limits
    step = max(16, limits.multiple)  # the trainer's buckets take multiples of 16
    value = min(max(preset.defaults.width, preset.defaults.height), MAX_RESOLUTION, limits.max_side)
    return dict(minimum=max(limits.min_side, step), maximum=limits.max_side, step=step, value=value // step * step)


def build(choices: Choices) -> TrainUI:
    opening = choices.preset.training if choices.preset else TrainingDefaults()  # the form follows the preset
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            preset = gr.Dropdown(choices.presets, value=choices.preset.name if choices.preset else None,
                                 label="Base model", allow_custom_value=True, elem_id="train-preset")
            with gr.Row(equal_height=False):
                zip_file = gr.File(label="Dataset zip: images with .txt captions or a metadata.csv",
                                   file_types=[".zip"], type="filepath", height=120, elem_id="train-zip")
                with gr.Column():
                    folder = gr.Textbox(label="…or a dataset folder", elem_id="train-folder",
                                        info=f"Inside {choices.training_dir}",
                                        placeholder=str(datasets_root(choices.training_dir) / "my-dataset"))
                    load = gr.Button("Load folder", size="sm", elem_id="train-load")
            dataset_info = gr.Markdown("No dataset loaded.", elem_id="train-dataset-info")
            captions = gr.Dataframe(headers=["image", "caption"], datatype=["str", "str"], column_count=2,
                                    static_columns=[0], interactive=True, wrap=True, type="array", max_height=320,
                                    label="Captions (editable; saved to metadata.csv on Start)",
                                    elem_id="train-captions")
            thumbnails = gr.Gallery(label="Images", columns=8, height=160, allow_preview=True, interactive=False,
                                    object_fit="cover", elem_id="train-thumbnails")
            with gr.Row():
                run_name = gr.Textbox(DEFAULT_RUN_NAME, label="Run name", elem_id="train-name",
                                      info="Names the run's folder and the LoRA file.")
                trigger_word = gr.Textbox(label="Trigger word", elem_id="train-trigger",
                                          info="The trainer puts it first in every caption that lacks it.")
            with gr.Row():
                steps = gr.Number(opening.steps, label="Steps", precision=0, minimum=1, elem_id="train-steps")
                rank = gr.Number(opening.rank, label="Rank", precision=0, minimum=1, elem_id="train-rank")
                learning_rate = gr.Number(opening.learning_rate, label="Learning rate", minimum=0,
                                          elem_id="train-lr")
            resolution = gr.Slider(label="Resolution", info="Images are scaled to at most this side squared in pixels.",
                                   elem_id="train-resolution", **resolution_slider(choices.preset))
            alpha_mask = gr.Checkbox(False, label="Alpha mask: learn only what is opaque", elem_id="train-alpha-mask",
                                     info="Transparent pixels are left out of the loss, so a cut-out subject is "
                                          "learnt without its background. Images without transparency count "
                                          "everywhere.")
            sample_prompts = gr.Textbox(label="Sample prompts, one per line", lines=2, elem_id="train-prompts",
                                        info="Empty: the first caption, with the trigger word.")
            sample_every = gr.Number(opening.sample_every, label="Sample every (steps; a checkpoint is saved then)",
                                     precision=0, minimum=1, elem_id="train-sample-every")
        with gr.Column(scale=3, min_width=400):
            with gr.Row():
                start = gr.Button("Start", variant="primary", scale=2, elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id="train-stop")
                resume = gr.Button("Resume", scale=1, elem_id="train-resume")
            status = gr.Markdown(describe(None), elem_id="train-status")
            failure = gr.Code(label="The trainer's last words (stderr)", language=None, visible=False,
                              elem_id="train-failure")
            loss_plot = gr.LinePlot(loss_frame(()), x="step", y="loss", title="Loss", height=260,
                                    elem_id="train-loss")
            samples = gr.Gallery(label="Samples (newest first)", columns=4, height=300, interactive=False,
                                 object_fit="contain", elem_id="train-samples")
    return TrainUI(preset, zip_file, folder, load, dataset_info, captions, thumbnails, run_name, trigger_word, steps,
                   rank, learning_rate, resolution, alpha_mask, sample_prompts, sample_every, start, stop, resume,
                   status, failure, loss_plot, samples, gr.Timer(POLL_S, active=False), gr.State(None), gr.State([]),
                   gr.State(None))


def describe(view: RunView | None) -> str:
    """The status line of a run."""
    if view is None:
        return "No training run yet. Load a dataset, check the settings and press **Start**."
    name, where = f"'{view.name}'", f"step {view.step} of {view.total}"
    loss = f" · loss {view.loss:.4g}" if view.loss is not None else ""
    if view.state is RunState.STARTING:
        return f"**Starting** {name}: loading the model and preparing the dataset…"
    if view.state is RunState.RUNNING:
        eta = f" · {_duration(view.eta_s)} left" if view.eta_s is not None else ""
        # Before the first loss the trainer is loading and caching; its message says which.
        doing = f" · {view.message}" if view.message and not view.losses else ""
        return f"**Training** {name} · {where}{loss}{eta}{doing}"
    if view.state is RunState.STOPPING:
        return f"**Stopping** {name} at {where}: saving a checkpoint and the LoRA…"
    lora = f"  \nThe LoRA is in the LoRA pickers: `{view.lora}`" if view.lora else ""
    if view.state is RunState.FINISHED:
        return f"**Finished** {name}: {view.total} steps{loss}.{lora}"
    if view.state is RunState.STOPPED and view.lora is None:
        return f"**Stopped** {name} at {where}, before anything was saved. **Start** begins it again."
    if view.state is RunState.STOPPED:
        return f"**Stopped** {name} at {where}. **Resume** goes on from the last checkpoint.{lora}"
    return f"**Failed** {name} at {where}: {view.message} The studio is still running."


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def loss_frame(points: tuple[LossPoint, ...]):
    import pandas as pd  # gradio's own dependency; imported where the plot needs it

    stride = max(1, -(-len(points) // PLOT_POINTS))
    shown = points[::stride]
    if points and shown[-1] is not points[-1]:
        shown = (*shown, points[-1])  # the latest loss is always on the plot
    return pd.DataFrame({"step": [p.step for p in shown], "loss": [p.loss for p in shown]})


def sample_items(view: RunView | None) -> list[tuple[str, str]]:
    """The sample images, newest first, captioned with their step and prompt number."""
    if view is None:
        return []
    items = []
    for path in reversed(view.samples):
        match = SAMPLE_NAME.search(path.name)
        label = f"step {int(match.group(1))} · prompt {int(match.group(2)) + 1}" if match else path.name
        items.append((str(path), label))
    return items


def show(view: RunView | None, shown: list[str] | None = None) -> tuple:
    """Values for the run's outputs: status, failure, loss plot, samples, the samples shown, timer, finished LoRA.

    The gallery is only sent when new samples arrived, so a sample the user opened stays open between polls.
    """
    failed = view is not None and view.state is RunState.FAILED and bool(view.stderr_tail)
    items = sample_items(view)
    paths = [path for path, _ in items]
    return (describe(view), gr.Code(view.stderr_tail if failed else "", visible=failed),
            loss_frame(view.losses if view else ()), gr.skip() if paths == shown else items, paths,
            gr.Timer(active=view is not None and view.active),
            str(view.lora) if view is not None and view.lora is not None else None)


def dataset_outputs(dataset: Dataset) -> tuple:
    """Values for the dataset's outputs: folder, state, info, caption table, thumbnails."""
    count = len(dataset.rows)
    captioned = sum(1 for row in dataset.rows if row.caption)
    # No full stop after the folder: the page sets a long path as a block, and the stop would sit alone below it.
    info = [f"**{count} image{'s' if count != 1 else ''}**, {captioned} with a caption, in `{dataset.folder}`"]
    transparent = images_with_alpha(dataset)
    if transparent:
        info.append(f"{transparent} of them {'has' if transparent == 1 else 'have'} transparency: tick **Alpha mask** "
                    "to learn only their opaque parts.")
    info.extend(dataset.notes)
    thumbnails = [(str(dataset.folder / row.image), row.image) for row in dataset.rows[:THUMBNAILS]]
    return (str(dataset.folder), str(dataset.folder), "  \n".join(info),
            [[row.image, row.caption] for row in dataset.rows], thumbnails)


def first_prompt(caption: str, trigger: str) -> str:
    """The default sample prompt: the first caption as the trainer reads it, trigger word in front unless it is
    there already (engine.training.run.with_trigger, which imports torch; the studio does not at start)."""
    if not trigger or trigger.lower() in caption.lower().replace(",", " ").split():
        return caption
    return f"{trigger} {caption}".strip()


def base_model(preset: Preset) -> dict:
    """How run.toml names the base model: the engine finds shipped presets by name; others by their folder."""
    shipped = preset.source is not None and Path(preset.source).resolve().parent == PRESETS_DIR.resolve()
    if not shipped and preset.folder is not None:
        return {"model": Path(preset.folder)}
    return {"preset": preset.name}


def wire(ui: TrainUI, services: Services, page_load) -> None:
    config, runner, catalog = services.config, services.training, services.catalog
    training_dir = Path(config.training_dir)
    run_outputs = [ui.status, ui.failure, ui.loss_plot, ui.samples, ui.shown_samples, ui.timer, ui.finished_lora]
    dataset_fields = [ui.folder, ui.dataset, ui.dataset_info, ui.captions, ui.thumbnails]

    def on_load():
        choices = choices_for(services)
        picker = gr.Dropdown(choices=choices.presets, value=choices.preset.name if choices.preset else None)
        return picker, *show(runner.view())

    gr.on([page_load], boundary(on_load), None, [ui.preset, *run_outputs], api_visibility="private")
    def preset_chosen(name: str):
        preset = catalog.get(name)
        training = preset.training
        return (gr.Slider(**resolution_slider(preset)), training.steps, training.rank, training.learning_rate,
                training.sample_every)

    ui.preset.input(boundary(preset_chosen), ui.preset,
                    [ui.resolution, ui.steps, ui.rank, ui.learning_rate, ui.sample_every], api_visibility="private")

    @boundary
    def upload(path: str | None):
        if not path:
            return (gr.skip(),) * len(dataset_fields)
        dataset = import_zip(Path(path), training_dir)
        for note in dataset.notes:
            gr.Warning(note)
        return dataset_outputs(dataset)

    ui.zip_file.upload(upload, ui.zip_file, dataset_fields, api_visibility="private")

    @boundary
    def load_folder(text: str):
        return dataset_outputs(read_dataset(dataset_folder(text, training_dir)))

    gr.on([ui.load.click, ui.folder.submit], load_folder, ui.folder, dataset_fields, api_visibility="private")

    @boundary
    def start(preset_name: str, folder: str | None, table: list[list[str]], name: str, trigger: str, steps: float,
              rank: float, learning_rate: float, resolution: float, alpha_mask: bool, prompts: str,
              sample_every: float):
        if not preset_name:
            raise PresetError("No base model is chosen.", "Pick one in the Base model list.")
        if not folder:
            raise DatasetError("No dataset is loaded.",
                               f"Upload a zip of images, or give a folder under {training_dir} and press Load folder.")
        preset = catalog.get(preset_name)
        name, trigger, folder = (name or "").strip(), (trigger or "").strip(), dataset_folder(folder, training_dir)
        rows = caption_rows(folder, table or [], trigger)
        lines = tuple(line for line in (prompts or "").splitlines() if line.strip()) or (
            first_prompt(rows[0].caption, trigger),)
        spec = RunSpec(name=name, dataset=folder, out_dir=runner.run_dir(name), steps=steps,
                       learning_rate=learning_rate, rank=rank, resolution=resolution, sample_every=sample_every,
                       sample_prompts=lines, trigger_word=trigger, alpha_mask=bool(alpha_mask),
                       models_dir=config.models_dir,
                       batch_size=preset.training.batch_size, **base_model(preset))
        runner.ensure_idle()  # before the captions are written: a running trainer may be reading them
        save_captions(folder, rows)
        return (*show(runner.start(spec)), [[row.image, row.caption] for row in rows])

    ui.start.click(start, [ui.preset, ui.dataset, ui.captions, ui.run_name, ui.trigger_word, ui.steps, ui.rank,
                           ui.learning_rate, ui.resolution, ui.alpha_mask, ui.sample_prompts, ui.sample_every],
                   [*run_outputs, ui.captions], api_visibility="private", concurrency_limit=None)

    @boundary
    def stop():
        if not runner.stop():
            gr.Info("No training run is going.")
        return show(runner.view())

    ui.stop.click(stop, None, run_outputs, api_visibility="private", concurrency_limit=None)
    ui.resume.click(boundary(lambda name: show(runner.resume((name or "").strip()))), ui.run_name, run_outputs,
                    api_visibility="private", concurrency_limit=None)
    ui.timer.tick(boundary(lambda shown: show(runner.view(), shown)), ui.shown_samples, run_outputs,
                  api_visibility="private", concurrency_limit=None, show_progress="hidden")
