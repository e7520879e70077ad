"""The web demo of one model (``ldm serve``): gradio tabs over the pipelines.

:class:`ServedModel` (no gradio) loads a model directory once and has a plain handler per task;
:func:`build_app` (imports gradio) lays the tabs the model supports out and wires them to the handlers.
"""

from __future__ import annotations

from typing import Any

from ldmkit.serve.model import MAX_IMAGES, TASK_LABELS, ServedModel


def build_app(model: ServedModel) -> Any:
    """The ``gradio.Blocks`` app of ``model`` (gradio is imported only now)."""
    from ldmkit.serve.app import build_app as _build

    return _build(model)


__all__ = ["MAX_IMAGES", "TASK_LABELS", "ServedModel", "build_app"]
