"""The studio's engine: presets, sources, loading, schedules and pipelines. Never imports gradio.

`engine.load(...)` is the front door (see engine/api.py); it is imported lazily so that `import engine`
stays cheap for the CLI and the studio's start-up.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("load", "Model"):
        from engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
