"""The studio: a Gradio web app over the engine. Holds no model logic; it reaches models only through
engine.api (load, Model.generate), and imports that lazily so that `python app.py` answers in seconds.
"""
