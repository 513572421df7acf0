"""Text to Image: prompt in, images out, with a live preview, Cancel, LoRAs, and image-to-image from any result.

build(choices) lays the tab out and returns its components; wire(ui, services) attaches the events. Each
handler is short: the form's values -> GenerateSettings -> one job on the worker -> outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from engine.errors import Cancelled, PresetError
from engine.metadata import parameters_for
from engine.presets import Preset, Tab
from engine.settings import MAX_CFG, MAX_COUNT, GenerateSettings, LoraChoice, fit_to_limits
from engine.sources import resolve
from studio import lora_pickers
from studio.catalog import Availability
from studio.errors import boundary
from studio.history import read_recipe
from studio.jobs import CONCURRENCY_ID, Job
from studio.loras import LORA_SUFFIX
from studio.services import Services
from studio.system import PlanCache, plan_before, plan_used
from studio.widgets import (
    RANDOM_SEED,
    message_html,
    parse_size,
    pick_seed,
    progress_html,
    size_choices,
    size_label,
)

logger = logging.getLogger(__name__)

STEPS_SLIDER_MAX = 100  # the engine takes more; a slider this long is still usable
DEFAULT_STRENGTH = 0.6  # as the CLI: keeps the input's layout, redraws its details
SESSION_RESULTS = 48  # results kept in a session's gallery; all of them stay in the History tab


@dataclass(frozen=True)
class Choices:
    presets: list[tuple[str, str]]  # (title, name) of the presets serving this tab
    preset: Preset | None  # the one the tab opens on; None when there is none at all
    availability: Availability | None  # of that preset's files
    sides: tuple[int, int]  # the smallest and largest side any of the presets takes
    loras: list[str]  # the LoRA files on offer, by name inside loras_dir
    loras_dir: Path


def opening_preset(services: Services) -> Preset | None:
    """The preset asked for with --preset when it is there; else the first one whose files are all here (it
    can generate at once); else the first one serving this tab."""
    presets = services.catalog.presets(Tab.TEXT_TO_IMAGE)
    asked = [p for p in presets if p.name == services.config.preset]
    ready = [p for p in presets if services.catalog.availability(p).present]
    return (asked or ready or presets or [None])[0]


def choices_for(services: Services) -> Choices:
    presets = services.catalog.presets(Tab.TEXT_TO_IMAGE)
    preset = opening_preset(services)
    # The sliders take every preset's range (an API call names any preset); the page narrows them per preset.
    sides = (min((p.limits.min_side for p in presets), default=16),
             max((p.limits.max_side for p in presets), default=2048))
    return Choices([(p.title, p.name) for p in presets], preset,
                   services.catalog.availability(preset) if preset else None, sides,
                   lora_pickers.lora_names(services.config), services.config.loras_dir)


@dataclass
class TextToImageUI:
    preset: gr.Dropdown
    preset_info: gr.Markdown
    prompt: gr.Textbox
    negative: gr.Textbox
    generate: gr.Button
    cancel: gr.Button
    size: gr.Radio
    width: gr.Slider
    height: gr.Slider
    steps: gr.Slider
    cfg: gr.Slider
    seed: gr.Number
    random_seed: gr.Button
    reuse_seed: gr.Button
    count: gr.Slider
    img2img: gr.Accordion
    input_image: gr.Image
    strength: gr.Slider
    loras: lora_pickers.LoraPickers
    restore_png: gr.Image
    progress: gr.HTML
    current: gr.Image
    gallery: gr.Gallery
    info: gr.Markdown
    use_as_input: gr.Button
    results: gr.State  # this session's saved paths, newest first
    last_seed: gr.State
    selected: gr.State  # path of the result picked in the gallery
    used_plan: gr.State  # the System panel's text on the plan the last run used; None until a run finishes


def build(choices: Choices) -> TextToImageUI:
    preset = choices.preset
    defaults = preset.defaults if preset else None
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=340):
            # Custom values pass Gradio's check, so presets added since the start work; the catalog checks names.
            preset_picker = gr.Dropdown(choices.presets, value=preset.name if preset else None, label="Model",
                                        allow_custom_value=True, elem_id="t2i-preset")
            preset_info = gr.Markdown(preset_summary(preset, choices.availability) if preset else "",
                                      elem_id="t2i-preset-info")
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="t2i-prompt",
                                placeholder="a red circle in the top left on a blue background")
            negative = gr.Textbox(label="Negative prompt", lines=1, info="Used when CFG is above 1.",
                                  value=defaults.negative_prompt if defaults else " ", elem_id="t2i-negative")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", scale=3, elem_id="t2i-generate")
                cancel = gr.Button("Cancel", variant="stop", scale=1, elem_id="t2i-cancel")
            size = gr.Radio(size_choices(preset) if preset else [], label="Size",
                            value=f"{defaults.width}x{defaults.height}" if defaults else None, elem_id="t2i-size")
            step = preset.limits.multiple if preset else 16
            with gr.Row():
                width = gr.Slider(*choices.sides, value=defaults.width if defaults else 1024, step=step,
                                  label="Width", elem_id="t2i-width")
                height = gr.Slider(*choices.sides, value=defaults.height if defaults else 1024, step=step,
                                   label="Height", elem_id="t2i-height")
            with gr.Row():
                steps = gr.Slider(1, STEPS_SLIDER_MAX, value=defaults.steps if defaults else 30, step=1,
                                  label="Steps", elem_id="t2i-steps")
                cfg = gr.Slider(1.0, MAX_CFG, value=defaults.cfg if defaults else 4.0, step=0.1, label="CFG",
                                info="1 turns guidance off (twice as fast).", elem_id="t2i-cfg")
            with gr.Row(equal_height=True):
                seed = gr.Number(RANDOM_SEED, label="Seed", info="-1: new random seed each run", precision=0,
                                 minimum=RANDOM_SEED, scale=2, elem_id="t2i-seed")
                with gr.Column(scale=1, min_width=110):
                    random_seed = gr.Button("Random", size="sm", elem_id="t2i-random-seed")
                    reuse_seed = gr.Button("Reuse last", size="sm", elem_id="t2i-reuse-seed")
                count = gr.Slider(1, MAX_COUNT, value=1, step=1, label="Images", scale=2, elem_id="t2i-count")
            with gr.Accordion("Image to image", open=False) as img2img:
                input_image = gr.Image(label="Input image", type="filepath", height=220, elem_id="t2i-input-image")
                strength = gr.Slider(0.05, 1.0, value=DEFAULT_STRENGTH, step=0.05, label="Strength",
                                     info="How much of the input is redrawn: low keeps it, 1 ignores it.",
                                     elem_id="t2i-strength")
            loras = lora_pickers.build(choices.loras, choices.loras_dir, "t2i")
            restore_png = gr.Image(label="Restore settings: drop a studio PNG here or anywhere", type="filepath",
                                   image_mode=None, sources=["upload"], height=140, elem_id="t2i-restore")
        with gr.Column(scale=3, min_width=400):
            progress = gr.HTML(progress_html(None), label="Progress", elem_id="t2i-progress")
            current = gr.Image(label="Image", interactive=False, height=480, format="png", elem_id="t2i-current")
            gallery = gr.Gallery(label="Results", columns=6, height=200, format="png", allow_preview=False,
                                 fit_columns=False, object_fit="contain", interactive=False, elem_id="t2i-gallery")
            with gr.Row():
                info = gr.Markdown(label="Details", elem_id="t2i-info")
                use_as_input = gr.Button("Use as input", scale=0, min_width=140, elem_id="t2i-use-as-input")
    return TextToImageUI(preset_picker, preset_info, prompt, negative, generate, cancel, size, width, height, steps,
                         cfg, seed, random_seed, reuse_seed, count, img2img, input_image, strength, loras, restore_png,
                         progress, current, gallery, info, use_as_input, gr.State([]), gr.State(None), gr.State(None),
                         gr.State(None))


def preset_summary(preset: Preset, availability: Availability | None = None) -> str:
    first_sentence = " ".join(preset.notes.split()).split(". ")[0].rstrip(".") + "." if preset.notes else ""
    lines = [first_sentence or preset.title]
    if availability is not None and not availability.present:
        lines.append("**Its files are not downloaded yet**: get them in the Models tab." if availability.downloadable
                     else f"**Its files are missing** from `{preset.folder}`: see the Models tab.")
    return "  \n".join(lines)


def form_settings(preset: Preset, prompt: str, negative: str, width: float, height: float, steps: float, cfg: float,
                  seed: float | None, count: float, strength: float, image_to_image: bool,
                  loras: tuple[LoraChoice, ...] = ()) -> GenerateSettings:
    """The form's values as checked settings; sizes checked against the model before any waiting."""
    settings = GenerateSettings(prompt=prompt, negative_prompt=negative or " ", width=int(width), height=int(height),
                                steps=int(steps), cfg=float(cfg), seed=pick_seed(seed), count=int(count),
                                strength=float(strength) if image_to_image else 1.0, loras=loras)
    fit_to_limits(settings, preset.limits, preset.title)
    return settings


def preset_fields(ui: TextToImageUI) -> list:
    """The fields that follow the chosen preset, in the order fields_for gives their values."""
    return [ui.preset_info, ui.size, ui.width, ui.height, ui.steps, ui.cfg, ui.negative]


def fields_for(preset: Preset, availability: Availability, settings: GenerateSettings | None = None) -> tuple:
    """Values for preset_fields: the preset's ranges and sizes, and its defaults unless settings are given."""
    values = settings or preset.defaults  # both name width, height, steps, cfg and negative_prompt alike
    sides = dict(minimum=preset.limits.min_side, maximum=preset.limits.max_side, step=preset.limits.multiple)
    return (preset_summary(preset, availability),
            gr.Radio(choices=size_choices(preset), value=f"{values.width}x{values.height}"),
            gr.Slider(value=values.width, **sides), gr.Slider(value=values.height, **sides), values.steps, values.cfg,
            values.negative_prompt)


def plan_panel(services: Services, plans: PlanCache, preset_name: str | None, width: float, height: float,
               count: float, cfg: float) -> str:
    """The System panel's text for the form as it is: the VRAM plan for the chosen preset and settings."""
    if not preset_name:
        return ""
    try:
        preset = services.catalog.get(preset_name)
    except PresetError as error:
        return str(error)
    return plan_before(plans, preset, services.catalog.availability(preset), width, height, count, cfg)


def wire(ui: TextToImageUI, services: Services, page_load, system_plan: gr.Markdown | None = None) -> None:
    """page_load: the app's load event, on which the tab catches up with presets added since the start.
    system_plan: the System panel's plan line, which follows this tab's settings and shows the plan a run used."""
    catalog, worker, outputs = services.catalog, services.worker, services.outputs
    followers = preset_fields(ui)

    def fields(preset: Preset, settings: GenerateSettings | None = None) -> tuple:
        return fields_for(preset, catalog.availability(preset), settings)

    def on_load():
        choices = choices_for(services)
        if choices.preset is None:
            return gr.Dropdown(choices=[], value=None), *(gr.skip(),) * len(followers)
        return gr.Dropdown(choices=choices.presets, value=choices.preset.name), *fields(choices.preset)

    gr.on([page_load], boundary(on_load), None, [ui.preset, *followers], api_visibility="private")
    ui.preset.input(boundary(lambda name: fields(catalog.get(name))), ui.preset, followers,
                    api_visibility="private")
    ui.size.input(parse_size, ui.size, [ui.width, ui.height], api_visibility="private", queue=False)
    ui.random_seed.click(lambda: RANDOM_SEED, None, ui.seed, api_visibility="private", queue=False)
    ui.reuse_seed.click(lambda last: gr.skip() if last is None else last, ui.last_seed, ui.seed,
                        api_visibility="private", queue=False)

    # One parameter per LoRA picker and weight (lora_pickers.ROWS of each), so API callers can name them.
    @boundary(on_error=lambda message: {ui.progress: message_html(message, failed=True), ui.used_plan: None})
    def generate(preset_name: str, prompt: str, negative: str, width: float, height: float, steps: float,
                 cfg: float, seed: float | None, count: float, input_image: str | None, strength: float,
                 lora_1: str, weight_1: float, lora_2: str, weight_2: float, lora_3: str, weight_3: float,
                 lora_4: str, weight_4: float, results: list[str], request: gr.Request, progress=gr.Progress()):
        if not preset_name:
            raise PresetError("No model is chosen.", "Pick one in the Model list; the Models tab shows what is there.")
        preset = catalog.get(preset_name)
        loras = lora_pickers.chosen_loras(services.config, [lora_1, weight_1, lora_2, weight_2, lora_3, weight_3,
                                                            lora_4, weight_4])
        settings = form_settings(preset, prompt, negative, width, height, steps, cfg, seed, count, strength,
                                 input_image is not None, loras)
        resolve(preset, services.config.models_dir)  # missing files: said at once, not after a wait in the queue
        run = worker.start(Job(request.session_hash, preset, settings, input_image))
        yield {ui.used_plan: None}  # until this run finishes, the System panel keeps what it shows
        try:
            for update in run.updates():
                if update.progress is not None:
                    progress((update.progress.step, update.progress.total), desc="Denoising")
                preview = update.preview.resize((settings.width, settings.height)) if update.preview else gr.skip()
                yield {ui.progress: progress_html(update, preset.title), ui.current: preview}
            result = run.result()
        except Cancelled as cancelled:
            yield {ui.progress: message_html(str(cancelled)), ui.used_plan: None}
            return
        finally:
            run.control.cancel()  # no-op once finished; stops the job when the page went away mid-run
        for note in result.notes:
            gr.Info(note)
        input_name = Path(input_image).name if input_image else None
        paths = [str(outputs.save(image, parameters_for(result.settings, preset.name, image_seed,
                                                         input_image=input_name)))
                 for image, image_seed in zip(result.images, result.seeds)]
        results = (paths + results)[:SESSION_RESULTS]  # newest run first, each in seed order
        saved = f"{len(paths)} image{'s' if len(paths) > 1 else ''}"
        yield {ui.progress: message_html(f"Done: {saved} saved in {Path(paths[0]).parent}"),
               ui.current: paths[0], ui.gallery: results, ui.results: results, ui.last_seed: result.settings.seed,
               ui.selected: paths[0], ui.info: describe(paths[0]), ui.used_plan: plan_used(result.plan, result.notes)}

    event = gr.on([ui.generate.click, ui.prompt.submit], generate,
                  [ui.preset, ui.prompt, ui.negative, ui.width, ui.height, ui.steps, ui.cfg, ui.seed, ui.count,
                   ui.input_image, ui.strength, *ui.loras.fields, ui.results],
                  [ui.progress, ui.current, ui.gallery, ui.results, ui.last_seed, ui.selected, ui.info, ui.used_plan],
                  api_name="generate", concurrency_id=CONCURRENCY_ID, concurrency_limit=1,
                  show_progress="minimal", show_progress_on=[ui.gallery])
    if system_plan is not None:
        wire_plan(ui, services, page_load, event, system_plan)

    def cancel(request: gr.Request):
        stopped = worker.cancel(request.session_hash)  # returns once the job has left the device
        # With nothing running, a job of this page may still have been waiting: Gradio took it out of the queue.
        return message_html("Cancelled: nothing from that run was saved." if stopped else "Cancelled.")

    # Gradio's cancels= takes a waiting job out of the queue and drops a running one's handler; the worker
    # stops the engine at its next step. The message is written after both, so it is the one that stays.
    ui.cancel.click(cancel, None, ui.progress, api_name="cancel", concurrency_limit=None, cancels=[event])

    def select(results: list[str], evt: gr.SelectData):
        if not 0 <= evt.index < len(results):
            return gr.skip(), gr.skip(), gr.skip()
        path = results[evt.index]
        return path, path, describe(path)

    ui.gallery.select(select, ui.results, [ui.selected, ui.current, ui.info], api_visibility="private")
    ui.use_as_input.click(lambda path: (path, gr.Accordion(open=True)) if path else (gr.skip(), gr.skip()),
                          ui.selected, [ui.input_image, ui.img2img], api_visibility="private")

    @boundary
    def restore(path: str | None, current_preset: str | None):
        recipe = read_recipe(Path(path)) if path else None
        if recipe is None:
            if path:
                gr.Warning("This image carries no studio settings (no \"parameters\" chunk); nothing was changed.")
            return (gr.skip(),) * (len(followers) + 4)
        name = current_preset
        if recipe.preset in {preset.name for preset in catalog.presets()}:
            name = recipe.preset
        elif recipe.preset is not None:
            gr.Warning(f"The image was made with '{recipe.preset}', which is not installed here; "
                       "its other settings were restored.")
        s = recipe.settings
        restored = fields(catalog.get(name), s) if name else (gr.skip(),) * len(followers)
        strength = s.strength if recipe.input_image else gr.skip()
        return (name or gr.skip(), *restored, s.prompt, s.seed, strength, "Restored from " + Path(path).name)

    restored = ui.restore_png.change(restore, [ui.restore_png, ui.preset],
                                     [ui.preset, *followers, ui.prompt, ui.seed, ui.strength, ui.info],
                                     api_name="restore")

    @boundary
    def restore_loras(path: str | None):
        recipe = read_recipe(Path(path)) if path else None
        if recipe is None:
            return (gr.skip(),) * (len(ui.loras.fields) + 1)
        values, warnings = lora_pickers.restored_values(services.config, recipe.settings.loras)
        for warning in warnings:
            gr.Warning(warning + " The other settings were restored.")
        return gr.Accordion(open=True) if recipe.settings.loras else gr.skip(), *values

    # A step of its own, so the restore endpoint's answer stays as API callers know it.
    restored.success(restore_loras, ui.restore_png, [ui.loras.accordion, *ui.loras.fields],
                     api_visibility="private")
    lora_pickers.wire(ui.loras, services.config, page_load)


def describe(path: str) -> str:
    """One line on how a saved image was made, and where it is."""
    recipe = read_recipe(Path(path))
    if recipe is None:
        return f"`{path}`"
    s = recipe.settings
    parts = [recipe.preset or "?", f"seed {s.seed}", f"{s.steps} steps", f"CFG {s.cfg:g}",
             size_label(s.width, s.height)]
    if recipe.input_image:
        parts.append(f"from {recipe.input_image} at strength {s.strength:g}")
    parts += [f"LoRA {Path(lora.path).name.removesuffix(LORA_SUFFIX)} {lora.weight:g}" for lora in s.loras]
    return " · ".join(parts) + f"  \n`{path}`"


def wire_plan(ui: TextToImageUI, services: Services, page_load, generated, system_plan: gr.Markdown) -> None:
    """The System panel's plan: for the form's preset, size, count and CFG as they change (each plan computed
    once); after a run, the plan the run used."""
    plans = PlanCache(services.config.models_dir, services.config.device)
    form = [ui.preset, ui.width, ui.height, ui.count, ui.cfg]
    gr.on([page_load] + [field.change for field in form],
          boundary(lambda *values: plan_panel(services, plans, *values)), form, system_plan, api_name="plan",
          trigger_mode="always_last", show_progress="hidden")
    generated.then(lambda used: used or gr.skip(), ui.used_plan, system_plan, api_visibility="private",
                   show_progress="hidden", queue=False)
