"""The one place where errors reach the user: the engine's typed errors become messages in the page.

EngineError (bad settings, missing files, unreadable weights) -> gr.Error with its message and hint.
Anything else is a bug or the machine failing (out of memory): logged with its traceback, and shown as a
short message saying the studio is still running. Either way the page keeps the user's inputs.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from engine.errors import EngineError, MissingFilesError

logger = logging.getLogger(__name__)

TITLES: dict[type[EngineError], str] = {MissingFilesError: "Model files missing"}
MISSING_FILES_HINT = "Or download them in the Models tab."


def to_gr_error(error: BaseException) -> gr.Error:
    if isinstance(error, EngineError):
        message = str(error)
        if isinstance(error, MissingFilesError) and "engine download" in error.hint:  # a hub has them
            message = f"{message} {MISSING_FILES_HINT}"
        title = next((title for kind, title in TITLES.items() if isinstance(error, kind)), "Cannot do that")
        return gr.Error(message, title=title, print_exception=False)
    logger.exception("Unexpected error in the studio", exc_info=error)
    return gr.Error(f"Something went wrong: {type(error).__name__}: {error}. The studio is still running; "
                    "the details are in its terminal.", title="Unexpected error", print_exception=False)


def boundary(fn: Callable | None = None, *, on_error: Callable[[str], Any] | None = None) -> Callable:
    """Wrap an event handler (function or generator) so its errors reach the page as messages.

    A generator may also leave the message in the page: on_error(message) is yielded before the error is raised.
    """
    if fn is None:
        return functools.partial(boundary, on_error=on_error)
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as error:
                failure = error if isinstance(error, gr.Error) else to_gr_error(error)
                if on_error is not None:
                    yield on_error(failure.message)
                raise failure from None
        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            raise to_gr_error(error) from None
    return function
