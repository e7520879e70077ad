"""Emoji sets (Fluent Emoji 3D, Twemoji, Noto) with names as captions and categories as labels.

Expected layout of an emoji directory (what ``ldm assets fetch <set>`` writes under ``$LDMKIT_HOME``)::

    <dir>/emoji.json          emoji-datasource format: a JSON list of objects with "unified"
                              ("1F468-200D-1F9B3"), "name" ("MAN: WHITE HAIR"), "category"
                              ("People & Body"), optionally "non_qualified", "short_name",
                              "short_names", "subcategory" and "skin_variations"
                              ({"1F3FB": {"unified": "1F468-1F3FB-200D-1F9B3", ...}, ...})
    <dir>/images/<code points>.webp|png
                              one image per emoji, named by its code points in hex joined by "-"
                              ("1f468-200d-1f9b3.webp"); case, "_" for "-", an "emoji_u" prefix and
                              FE0F variation selectors do not matter

Default directories: ``$LDMKIT_HOME/fluent-emoji-3d``, ``$LDMKIT_HOME/twemoji``
(``emoji_set``), or ``path``.

Each image matched to an entry becomes a sample with caption = the lower-cased name ("man: white hair";
skin-tone variants add ", medium skin tone"; a missing name falls back to the short name) and label =
the index of its category in :data:`CATEGORIES` (categories not listed there follow in sorted order).
Images that match no entry are left out (logged). Transparent pixels go onto ``background``. There is
no official split: ``val``/``test`` hold out ``val_fraction`` of the emoji by ``split_seed``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ldmkit.data.config import DataConfig
from ldmkit.data.files import FileEntry, FileImages
from ldmkit.data.paths import asset_dir, given_path
from ldmkit.data.splits import select_split
from ldmkit.errors import DataError

log = logging.getLogger("ldmkit.data")

CATEGORIES = ("Smileys & Emotion", "People & Body", "Component", "Animals & Nature", "Food & Drink",
              "Travel & Places", "Activities", "Objects", "Symbols", "Flags")
SKIN_TONES = {"1f3fb": "light skin tone", "1f3fc": "medium-light skin tone", "1f3fd": "medium skin tone",
              "1f3fe": "medium-dark skin tone", "1f3ff": "dark skin tone"}
IMAGE_SUFFIXES = (".webp", ".png")


def normalize_codepoints(text: str) -> str:
    """"1F468-200D-1F9B3", "emoji_u1f468_200d_1f9b3" -> "1f468-200d-1f9b3" (FE0F dropped)."""
    text = text.lower().removeprefix("emoji_u").replace("_", "-")
    return "-".join(p for p in text.split("-") if p and p != "fe0f")


def _readable(entry: dict) -> str:
    name = entry.get("name")
    if not name:
        short = entry.get("short_name") or (entry.get("short_names") or [""])[0]
        name = str(short).replace("_", " ")
    return " ".join(str(name).lower().split())


def read_emoji_json(path: Path) -> dict[str, tuple[str, str]]:
    """Normalised code points -> (caption, category), skin-tone variants included."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not a readable emoji.json: {exc}") from None
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a JSON list of emoji entries (emoji-datasource format)")
    table: dict[str, tuple[str, str]] = {}
    for entry in data:
        if not isinstance(entry, dict) or not entry.get("unified"):
            continue
        caption, category = _readable(entry), str(entry.get("category") or "")
        for field in ("unified", "non_qualified"):
            if entry.get(field):
                table.setdefault(normalize_codepoints(entry[field]), (caption, category))
        for tones, variant in (entry.get("skin_variations") or {}).items():
            if not isinstance(variant, dict) or not variant.get("unified"):
                continue
            words = [SKIN_TONES.get(t, "") for t in normalize_codepoints(tones).split("-")]
            words = list(dict.fromkeys(w for w in words if w))
            sep = ", " if ":" in caption else ": "
            table.setdefault(normalize_codepoints(variant["unified"]),
                             (caption + (sep + ", ".join(words) if words else ""), category))
    if not table:
        raise DataError(f"{path} holds no emoji entries with a 'unified' field")
    return table


def category_names(categories: set[str]) -> list[str]:
    return [c for c in CATEGORIES if c in categories] + sorted(categories - set(CATEGORIES) - {""})


def emoji_root(cfg: DataConfig) -> Path:
    if cfg.path is not None:
        return given_path(cfg.path, "emoji")
    return asset_dir(cfg.emoji_set)


def emoji_dataset(cfg: DataConfig, split: str = "train") -> FileImages:
    root = emoji_root(cfg)
    meta, images = root / "emoji.json", root / "images"
    if not meta.is_file() or not images.is_dir():
        raise DataError(f"{root} is not an emoji directory: it needs emoji.json and images/ "
                        "(see ldmkit.data.emoji for the layout)")
    table = read_emoji_json(meta)
    classes = category_names({category for _, category in table.values()})
    index = {c: i for i, c in enumerate(classes)}
    entries, unmatched = [], 0
    for path in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        key = normalize_codepoints(path.stem)
        if key not in table:
            unmatched += 1
            continue
        caption, category = table[key]
        entries.append(FileEntry(path, key, index.get(category, -1), caption))
    if unmatched:
        log.info("%d images in %s match no entry of emoji.json and are left out", unmatched, images)
    if not entries:
        raise DataError(f"no image in {images} matches an entry of {meta}; images must be named by code points")
    entries = select_split(entries, [e.key for e in entries], split, cfg.val_fraction, cfg.split_seed)
    if not entries:
        raise DataError(f"split '{split}' of emoji set {root} is empty (val_fraction={cfg.val_fraction:g})")
    return FileImages(cfg, entries, what=f"emoji set {root}", class_names=classes)
