"""Reading image files that may be broken, and keeping count of the ones that are.

A file that cannot be read (zero bytes, truncated, not an image, an unknown format, a "decompression
bomb" whose header claims more than ``max_pixels`` pixels) raises :class:`BadImage` with a short reason.
Data sets skip such files with a warning naming them and record them in a :class:`BadFiles` log, which
stops the run with a :class:`~ldmkit.errors.DataError` only when they exceed ``max_bad_fraction``.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ldmkit.errors import DataError

log = logging.getLogger("ldmkit.data")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class BadImage(Exception):
    """A file that is not a readable image; ``str(exc)`` is the reason."""


def _open(source: str | Path | bytes, max_pixels: int) -> Image.Image:
    if isinstance(source, bytes):
        if not source:
            raise BadImage("empty (0 bytes)")
        fp = io.BytesIO(source)
    else:
        try:
            if Path(source).stat().st_size == 0:
                raise BadImage("empty (0 bytes)")
        except FileNotFoundError:
            raise BadImage("file vanished") from None
        fp = source
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces PIL's warning; PIL's hard limit still raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp)
    except Image.DecompressionBombError:
        raise BadImage("too many pixels (decompression bomb)") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse untrusted bytes means "not an image"
        raise BadImage(_reason(exc)) from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage(f"{width}x{height} is more than max_pixels={max_pixels} (decompression bomb?)")
    if width == 0 or height == 0:
        raise BadImage(f"{width}x{height} has no pixels")
    return image


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    if text.startswith("cannot identify image file"):
        return "not an image (unknown format)"
    return text.splitlines()[0][:120]


def probe_image(source: str | Path | bytes, max_pixels: int) -> tuple[int, int, str, str]:
    """(width, height, mode, format) from the header only; raises :class:`BadImage`."""
    image = _open(source, max_pixels)
    return image.size[0], image.size[1], image.mode, image.format or "?"


def load_image(source: str | Path | bytes, max_pixels: int) -> Image.Image:
    """The fully decoded image (a truncated file fails here, not at :func:`probe_image`)."""
    image = _open(source, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if getattr(image, "is_animated", False):
                image.seek(0)
            image.load()
    except Exception as exc:  # noqa: BLE001
        raise BadImage(_reason(exc)) from None
    return image


@dataclass
class BadFiles:
    """Bad files met so far out of ``total``; :meth:`add` warns, :meth:`check` enforces the threshold."""

    total: int
    max_fraction: float
    what: str = "files"
    bad: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, reason: str) -> None:
        if name in self.bad:
            return
        self.bad[name] = reason
        log.warning("skipping bad image %s: %s", name, reason)
        self.check()

    @property
    def fraction(self) -> float:
        return len(self.bad) / max(self.total, 1)

    def exceeded(self) -> bool:
        return self.fraction > self.max_fraction

    def check(self) -> None:
        if self.exceeded():
            first = next(iter(self.bad.items()))
            raise DataError(
                f"{len(self.bad)} of {self.total} {self.what} cannot be read ({self.fraction:.1%}, more than "
                f"max_bad_fraction={self.max_fraction:g}), e.g. {first[0]}: {first[1]}; run `ldm data check` "
                "for the full list, then fix the files or raise max_bad_fraction")
