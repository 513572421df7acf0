"""History: every image in the outputs folder, newest first, across restarts; restore one's settings or use
it as an input in Text to Image.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from studio.services import Services
from studio.tabs.text_to_image import TextToImageUI, describe

SHOWN = 120  # newest images shown; older ones stay on disk


@dataclass
class HistoryUI:
    gallery: gr.Gallery
    refresh: gr.Button
    info: gr.Markdown
    restore: gr.Button
    use_as_input: gr.Button
    paths: gr.State  # what the gallery shows, in its order
    selected: gr.State


def recent(services: Services) -> list[str]:
    return [str(path) for path in services.outputs.recent(SHOWN)]


def build(paths: list[str]) -> HistoryUI:
    with gr.Row():
        refresh = gr.Button("Refresh", scale=0, min_width=120, elem_id="history-refresh")
        info = gr.Markdown("Pick an image to see how it was made.", elem_id="history-info")
        restore = gr.Button("Restore its settings", scale=0, min_width=180, elem_id="history-restore")
        use_as_input = gr.Button("Use as input", scale=0, min_width=140, elem_id="history-use-as-input")
    gallery = gr.Gallery(paths, label="All results, newest first", columns=8, height=640, format="png",
                         allow_preview=True, fit_columns=False, object_fit="contain", interactive=False,
                         elem_id="history-gallery")
    return HistoryUI(gallery, refresh, info, restore, use_as_input, gr.State(paths), gr.State(None))


def wire(ui: HistoryUI, services: Services, t2i: TextToImageUI, tabs: gr.Tabs, t2i_tab: str, own_tab: gr.Tab) -> None:
    """Restore and Use as input act on the Text to Image tab and switch to it."""

    def refresh():
        paths = recent(services)
        return paths, paths

    gr.on([ui.refresh.click, own_tab.select], refresh, None, [ui.gallery, ui.paths], api_visibility="private")

    def select(paths: list[str], evt: gr.SelectData):
        if not 0 <= evt.index < len(paths):
            return gr.skip(), gr.skip()
        return paths[evt.index], describe(paths[evt.index])

    ui.gallery.select(select, ui.paths, [ui.selected, ui.info], api_visibility="private")
    # Restoring goes through the tab's own drop zone, so a picked image and a dropped one restore alike.
    ui.restore.click(lambda path: (path, gr.Tabs(selected=t2i_tab)) if path else (gr.skip(), gr.skip()),
                     ui.selected, [t2i.restore_png, tabs], api_visibility="private")
    ui.use_as_input.click(
        lambda path: (path, gr.Accordion(open=True), gr.Tabs(selected=t2i_tab)) if path else (gr.skip(),) * 3,
        ui.selected, [t2i.input_image, t2i.img2img, tabs], api_visibility="private")
