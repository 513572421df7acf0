"""Models: every preset with whether its files are here and their size, downloads with a progress bar,
and registering a model folder already on disk.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from engine.presets import Preset, Tab
from engine.sources import HUB_TITLES, Hub, download, human_bytes
from studio.errors import boundary
from studio.services import Services

logger = logging.getLogger(__name__)

HEADERS = ["Preset", "Title", "Files", "On disk", "Tabs"]
POLL_S = 0.25


@dataclass(frozen=True)
class Choices:
    rows: list[list[str]]
    presets: list[tuple[str, str]]  # (title, name)
    details: str  # about the first preset, which the picker opens on


@dataclass
class ModelsUI:
    table: gr.Dataframe
    problems: gr.Markdown
    preset: gr.Dropdown
    details: gr.Markdown
    hub: gr.Radio
    download: gr.Button
    status: gr.Markdown
    folder: gr.Textbox
    register: gr.Button


def table_rows(services: Services) -> list[list[str]]:
    rows = []
    for preset in services.catalog.presets():
        availability = services.catalog.availability(preset)
        tabs = ", ".join(tab.value.replace("_", " ") for tab in preset.tabs)
        rows.append([preset.name, preset.title, "present" if availability.present else "missing",
                     human_bytes(availability.size_bytes), tabs])
    return rows


def choices_for(services: Services) -> Choices:
    presets = services.catalog.presets()
    return Choices(rows=table_rows(services), presets=[(preset.title, preset.name) for preset in presets],
                   details=describe_preset(services, presets[0]) if presets else "No presets found.")


def build(choices: Choices) -> ModelsUI:
    table = gr.Dataframe(choices.rows, headers=HEADERS, interactive=False, label="Presets", elem_id="models-table")
    problems = gr.Markdown()
    with gr.Row(equal_height=False):
        with gr.Column():
            preset = gr.Dropdown(choices.presets, value=choices.presets[0][1] if choices.presets else None,
                                 label="Preset", allow_custom_value=True, elem_id="models-preset")
            details = gr.Markdown(choices.details, elem_id="models-details")
            hub = gr.Radio([(HUB_TITLES[h], h.value) for h in Hub], value=Hub.MODELSCOPE.value, label="Download from")
            download_button = gr.Button("Download missing files", variant="primary", elem_id="models-download")
            status = gr.Markdown(elem_id="models-status")
        with gr.Column():
            folder = gr.Textbox(label="Register a model folder on this machine",
                                placeholder="/data/models/Qwen-Image (the folder holding model_index.json)",
                                elem_id="models-folder")
            register = gr.Button("Register folder", elem_id="models-register")
    return ModelsUI(table, problems, preset, details, hub, download_button, status, folder, register)


def describe_preset(services: Services, preset: Preset) -> str:
    availability = services.catalog.availability(preset)
    lines = [f"### {preset.title}", preset.notes or ""]
    if availability.present:
        lines.append(f"All files present ({human_bytes(availability.size_bytes)}).")
    else:
        listed = "\n".join(f"- `{item}`" for item in availability.missing[:8])
        more = f"\n- and {len(availability.missing) - 8} more" if len(availability.missing) > 8 else ""
        lines.append(f"Missing files, looked for under `{services.config.models_dir}`:\n{listed}{more}")
    return "\n\n".join(line for line in lines if line)


def wire(ui: ModelsUI, services: Services, preset_pickers: list[tuple[Tab, gr.Dropdown]]) -> None:
    """preset_pickers: the other tabs' Model lists, which a registered folder joins."""
    catalog = services.catalog

    def refresh():
        problems = "\n".join(f"- {problem}" for problem in catalog.problems())
        return table_rows(services), f"**Left out:**\n{problems}" if problems else ""

    ui.preset.change(boundary(lambda name: describe_preset(services, catalog.get(name)) if name else ""),
                     ui.preset, ui.details, api_visibility="private")

    @boundary
    def fetch(name: str, hub: str, progress=gr.Progress()):
        preset = catalog.get(name)
        latest: dict = {}
        outcome: dict = {}

        def report(done: int, total: int, filename: str) -> None:  # from the hub's threads
            latest.update(done=done, total=total, name=filename)

        def work() -> None:
            try:
                download(preset, services.config.models_dir, Hub(hub), report)
            except BaseException as error:  # shown by the handler below
                outcome["error"] = error

        thread = threading.Thread(target=work, name=f"download-{name}", daemon=True)
        thread.start()
        progress(0.0, desc=f"Asking {HUB_TITLES[Hub(hub)]} for {preset.title}…")
        while thread.is_alive():
            thread.join(POLL_S)
            if latest.get("total"):
                progress(latest["done"] / latest["total"], desc=f"{human_bytes(latest['done'])} of "
                         f"{human_bytes(latest['total'])} · {Path(latest['name']).name}")
        if "error" in outcome:
            raise outcome["error"]
        return f"{preset.title}: all files present.", describe_preset(services, preset)

    ui.download.click(fetch, [ui.preset, ui.hub], [ui.status, ui.details], api_name="download",
                      concurrency_id="download", concurrency_limit=1).then(
        refresh, None, [ui.table, ui.problems], api_visibility="private")

    @boundary
    def register(folder: str):
        preset = catalog.register_folder(Path(folder.strip()))
        names = [(p.title, p.name) for p in catalog.presets()]
        pickers = [gr.Dropdown(choices=[(p.title, p.name) for p in catalog.presets(tab)]) for tab, _ in preset_pickers]
        return (f"Registered `{preset.folder}` as **{preset.name}**; it is now in the Model lists.",
                gr.Dropdown(choices=names, value=preset.name), *pickers)

    ui.register.click(register, ui.folder, [ui.status, ui.preset, *(picker for _, picker in preset_pickers)],
                      api_name="register_folder").then(refresh, None, [ui.table, ui.problems], api_visibility="private")
