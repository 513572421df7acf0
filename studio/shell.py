"""The studio's frame: header, notices, one tab per capability, History, Models, the System panel; and launch.

Tabs are built from what is on disk at start and refreshed when a page loads, so a preset or an image added
while the studio runs shows on the next visit.
"""

from __future__ import annotations

import logging

import gradio as gr

from engine.presets import Preset, Tab
from engine.sources import download_command
from studio import lora_pickers
from studio.auth import Access
from studio.errors import boundary
from studio.services import Services
from studio.system import describe as describe_system
from studio.system import system_facts
from studio.tabs import history, models, text_to_image, train

logger = logging.getLogger(__name__)

TITLE = "Studio"
T2I_TAB = "text_to_image"

# System fonts: the studio works offline, and a web font would be fetched from the internet on every visit.
THEME = gr.themes.Soft(primary_hue="indigo", font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "monospace"])
CSS = """
.studio-progress { min-height: 2.6em; }
.studio-progress-track { height: 8px; border-radius: 4px; background: var(--neutral-200); overflow: hidden; }
.studio-progress-fill { height: 100%; background: var(--primary-500); transition: width 0.15s linear; }
.studio-progress-text { font-size: var(--text-sm); margin-top: 4px; color: var(--body-text-color-subdued); }
.studio-progress-text.studio-failed { color: var(--error-text-color); font-weight: 600; }
#studio-notice { border-left: 4px solid var(--primary-500); padding-left: 12px; }
#studio-system, #studio-plan { text-align: right; font-size: var(--text-sm); color: var(--body-text-color-subdued); }
#t2i-generate { background: var(--primary-600); color: white; }
#t2i-generate:hover { background: var(--primary-700); }
#t2i-current img { width: 100%; height: 100%; object-fit: contain; }
#t2i-gallery .progress-text { font-size: var(--text-md); font-weight: 600; color: var(--primary-600); }
"""
# Dropping an image anywhere on the page, outside an upload box, hands it to Text to Image's "restore settings"
# box: the PNG's settings fill the form, as in the tools users come from.
HEAD = """
<script>
document.addEventListener("dragover", (event) => {
  if (event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files")) event.preventDefault();
});
document.addEventListener("drop", (event) => {
  const files = event.dataTransfer ? event.dataTransfer.files : null;
  if (!files || !files.length || (event.target.closest && event.target.closest("[aria-dropeffect]"))) return;
  event.preventDefault();  // never let the browser leave the studio to show the file
  const input = document.querySelector("#t2i-restore input[type=file]");
  if (!input) return;
  input.files = files;
  input.dispatchEvent(new Event("change", {bubbles: true}));
});
</script>
"""


def notice(services: Services, opening: Preset | None) -> str:
    """What the user must know before generating: a missing default preset, or a model without its files."""
    config = services.config
    presets = services.catalog.presets(Tab.TEXT_TO_IMAGE)
    if not presets:
        return (f"**No model is available**: no preset in `{config.presets_dir}` serves Text to Image. "
                "Add a preset there, or register a model folder in the Models tab.")
    lines = []
    if opening is None or opening.name != config.preset:
        listing = ", ".join(f"**{p.title}** (`{p.name}`)" for p in presets)
        lines.append(f"**The preset `{config.preset}` is not installed** (looked in `{config.presets_dir}`). "
                     f"Available: {listing}. Pick one in the Model list, or start with `--preset NAME`.")
    availability = services.catalog.availability(opening) if opening is not None else None
    if availability is not None and not availability.present:
        if availability.downloadable:
            lines.append(f"**The files of {opening.title} are not downloaded yet.** Download them in the Models tab, "
                         f"or run `{download_command(opening)}`.")
        else:
            lines.append(f"**The files of {opening.title} are missing from `{opening.folder}`**, so it cannot "
                         "generate yet; the Models tab lists what is missing. Pick another model meanwhile.")
    return "\n\n".join(lines)


def build(services: Services) -> gr.Blocks:
    opening = text_to_image.opening_preset(services)
    # Gradio copies every image it shows into its cache; an hourly sweep drops copies older than a day (the
    # originals stay in the outputs folder).
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 86400)) as app:
        with gr.Row(equal_height=True):
            gr.Markdown(f"# {TITLE}", elem_id="studio-title")
            with gr.Column(scale=3):
                system = gr.Markdown("Reading the device…", elem_id="studio-system")
                system_plan = gr.Markdown("", elem_id="studio-plan")
            refresh_system = gr.Button("Refresh", size="sm", scale=0, min_width=90, elem_id="studio-system-refresh")
        text = notice(services, opening)
        banner = gr.Markdown(text, visible=bool(text), elem_id="studio-notice")
        with gr.Tabs() as tabs:
            with gr.Tab("Text to Image", id=T2I_TAB):
                t2i = text_to_image.build(text_to_image.choices_for(services))
            with gr.Tab("History", id="history") as history_tab:
                past = history.build(history.recent(services))
            with gr.Tab("Train", id="train"):
                trainer = train.build(train.choices_for(services))
            with gr.Tab("Models", id="models"):
                catalog_ui = models.build(models.choices_for(services))

        text_to_image.wire(t2i, services, app.load, system_plan)
        history.wire(past, services, t2i, tabs, T2I_TAB, history_tab)
        train.wire(trainer, services, app.load)
        lora_pickers.refresh_on(t2i.loras, services.config, [trainer.finished_lora.change])
        models.wire(catalog_ui, services, [(Tab.TEXT_TO_IMAGE, t2i.preset)])

        read_system = boundary(lambda: describe_system(system_facts(services.config.device)))
        refresh_system.click(read_system, None, system, api_visibility="private")

        def on_load():
            services.worker.warm_up()
            text = notice(services, text_to_image.opening_preset(services))
            paths = history.recent(services)
            catalog_now = models.choices_for(services)
            return (gr.Markdown(text, visible=bool(text)), paths, paths, catalog_now.rows,
                    gr.Dropdown(choices=catalog_now.presets))

        app.load(boundary(on_load), None, [banner, past.gallery, past.paths, catalog_ui.table, catalog_ui.preset],
                 api_visibility="private")
        app.load(read_system, None, system, api_visibility="private")
    return app


def launch(services: Services, access: Access, block: bool = True) -> gr.Blocks:
    """Serve the studio; returns once the server answers when block is False (tests)."""
    config = services.config
    app = build(services)
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=config.host, server_port=config.port, share=config.share,
               auth=[access.credentials] if access.credentials else None,
               auth_message="Log in to the studio." if access.credentials else None,
               allowed_paths=[str(config.outputs_dir.resolve()), str(config.training_dir.resolve())],
               prevent_thread_lock=True, ssr_mode=False,
               theme=THEME, css=CSS, head=HEAD, footer_links=["api", "settings"], quiet=False, show_error=True)
    if block:
        app.block_thread()
    return app
