"""What the web app refuses before a handler runs: numbers outside a widget's bounds, files that are not images.

gradio hands a request's raw values to each widget's ``preprocess``, and a browser or an API caller can send
anything there (a steps count past the slider's end, a seed of 2**70, a text file named ``.png``). These
checks say what is wrong in one line that names the widget and what to do; :mod:`ldmkit.serve.app` raises
them as the page's error message. No gradio here.
"""

from __future__ import annotations

from typing import Any

from ldmkit.config.checks import is_finite_number
from ldmkit.data.images import BadImage, load_image
from ldmkit.pipelines.img2img import MAX_PIXELS

#: The largest seed the page takes: the largest whole number a browser's number box keeps exactly (2**53 - 1).
MAX_SEED = 2**53 - 1


def _plain(value: float) -> str:
    """``value`` as a person writes it: whole numbers without a decimal point or an exponent."""
    return str(int(value)) if float(value).is_integer() else str(value)


def number_problem(label: str, value: Any, minimum: float, maximum: float) -> str | None:
    """Why ``value`` is not a number in ``minimum..maximum`` for the widget ``label``; None when it is."""
    if is_finite_number(value) and minimum <= value <= maximum:
        return None
    given = _plain(value) if is_finite_number(value) else repr(value)
    return f"{label} must be a number from {_plain(minimum)} to {_plain(maximum)}; got {given}"


def uploaded_paths(payload: Any) -> list[str]:
    """The files of a widget's upload: an image or a file (``.path``), or an image editor's background,
    layers and composite."""
    if payload is None:
        return []
    path = getattr(payload, "path", None)
    if path:
        return [str(path)]
    parts = [getattr(payload, "background", None), getattr(payload, "composite", None),
             *(getattr(payload, "layers", None) or [])]
    return [found for part in parts for found in uploaded_paths(part)]


def upload_problem(label: str, payload: Any) -> str | None:
    """Why an upload to the widget ``label`` cannot be used (a file that is not an image, a corrupt or
    truncated one, a decompression bomb); None when every file in it decodes."""
    for path in uploaded_paths(payload):
        try:
            load_image(path, MAX_PIXELS)
        except BadImage as exc:
            return f"{label}: the uploaded file is not a readable image ({exc}); upload a PNG or JPEG image"
    return None


__all__ = ["MAX_SEED", "number_problem", "upload_problem", "uploaded_paths"]
