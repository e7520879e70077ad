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

Default directories: ``$LDMKIT_HOME/<set>`` for the set ``emoji_set`` names (``fluent-emoji-3d``,
``twemoji``, ``noto-emoji``), or ``path``.

Each image matched to an entry becomes a sample with caption = the lower-cased name ("man: white hair";
skin-tone variants add ", medium skin tone"; a missing name falls back to the short name), or with
``emoji_captions=described`` the name, subcategory and category ("grinning face, face smiling, smileys and
emotion"), and label = the index of its category in :data:`CATEGORIES` (categories not listed there follow in
sorted order). Images that match no entry are left out (logged). Transparent pixels go onto ``background``.
There is no official split: ``val``/``test`` hold out ``val_fraction`` of the emoji by ``split_seed``.

Several sets train together with ``emoji_set: fluent-emoji-3d+twemoji+noto-emoji``: each caption then begins
with its set's style (:data:`STYLES`: "a flat emoji of grinning face"), keys are ``<set>/<code points>``, and an
emoji held out is held out of every set, so no held-out caption is seen in another style.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ldmkit.data.config import DataConfig, emoji_sets
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
#: What begins a caption when sets are mixed, so a prompt can ask for one set's look.
STYLES = {"fluent-emoji-3d": "a 3d render of", "twemoji": "a flat emoji of", "noto-emoji": "a cartoon emoji of"}


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


@dataclass(frozen=True)
class EmojiName:
    """What emoji.json says of one image: its caption ("man: white hair", skin tone appended), category
    ("People & Body") and subcategory ("person-role"; "" when absent)."""

    caption: str
    category: str
    subcategory: str = ""

    def described(self) -> str:
        """The caption with its subcategory and category: "grinning face, face smiling, smileys and emotion"."""
        words = [self.caption, self.subcategory.replace("-", " "), self.category.replace("&", "and").lower()]
        return ", ".join(" ".join(w.split()) for w in dict.fromkeys(words) if w.strip())


def read_emoji_json(path: Path) -> dict[str, EmojiName]:
    """Normalised code points -> what the entry says of them, skin-tone variants included."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not a readable emoji.json: {exc}") from None
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a JSON list of emoji entries (emoji-datasource format)")
    table: dict[str, EmojiName] = {}
    for entry in data:
        if not isinstance(entry, dict) or not entry.get("unified"):
            continue
        name = EmojiName(_readable(entry), str(entry.get("category") or ""), str(entry.get("subcategory") or ""))
        for field in ("unified", "non_qualified"):
            if entry.get(field):
                table.setdefault(normalize_codepoints(entry[field]), name)
        for tones, variant in (entry.get("skin_variations") or {}).items():
            if not isinstance(variant, dict) or not variant.get("unified"):
                continue
            words = [SKIN_TONES.get(t, "") for t in normalize_codepoints(tones).split("-")]
            words = list(dict.fromkeys(w for w in words if w))
            sep = ", " if ":" in name.caption else ": "
            caption = name.caption + (sep + ", ".join(words) if words else "")
            table.setdefault(normalize_codepoints(variant["unified"]), dataclasses.replace(name, caption=caption))
    if not table:
        raise DataError(f"{path} holds no emoji entries with a 'unified' field")
    return table


def category_names(categories: set[str]) -> list[str]:
    return [c for c in CATEGORIES if c in categories] + sorted(categories - set(CATEGORIES) - {""})


def emoji_roots(cfg: DataConfig) -> list[tuple[str, Path]]:
    """(set name, directory) of each set ``cfg`` trains on: ``path`` (one set), else under ``$LDMKIT_HOME``."""
    names = emoji_sets(cfg.emoji_set)
    if cfg.path is not None:
        if len(names) > 1:
            raise DataError(f"path names one emoji directory but emoji_set mixes {len(names)} sets; set path=null "
                            "so each set is found under $LDMKIT_HOME, or name one set")
        return [(names[0], given_path(cfg.path, "emoji"))]
    return [(name, asset_dir(name)) for name in names]


def _read_set(root: Path) -> tuple[dict[str, EmojiName], list[Path]]:
    meta, images = root / "emoji.json", root / "images"
    if not meta.is_file() or not images.is_dir():
        raise DataError(f"{root} is not an emoji directory: it needs emoji.json and images/ "
                        "(see ldmkit.data.emoji for the layout)")
    return read_emoji_json(meta), sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def emoji_dataset(cfg: DataConfig, split: str = "train") -> FileImages:
    roots = emoji_roots(cfg)
    mixed = len(roots) > 1
    sets = [(name, root, *_read_set(root)) for name, root in roots]
    classes = category_names({n.category for _, _, table, _ in sets for n in table.values()})
    index = {c: i for i, c in enumerate(classes)}
    entries, emoji = [], []  # the samples, and the code points of each (the same emoji in every set)
    for name, root, table, images in sets:
        matched = 0
        for path in images:
            key = normalize_codepoints(path.stem)
            if key not in table:
                continue
            found = table[key]
            caption = found.described() if cfg.emoji_captions == "described" else found.caption
            if mixed:  # the style tells the sets apart: "a flat emoji of grinning face"
                caption = f"{STYLES[name]} {caption}"
            entries.append(FileEntry(path, f"{name}/{key}" if mixed else key, index.get(found.category, -1), caption))
            emoji.append(key)
            matched += 1
        if matched < len(images):
            log.info("%d images in %s match no entry of emoji.json and are left out", len(images) - matched,
                     root / "images")
        if not matched:
            raise DataError(f"no image in {root / 'images'} matches an entry of {root / 'emoji.json'}; images must "
                            "be named by code points")
    # Split by emoji, not by image: a held-out caption is then never trained on in another set's style.
    entries = select_split(entries, emoji, split, cfg.val_fraction, cfg.split_seed)
    what = f"emoji set {roots[0][1]}" if not mixed else f"emoji sets {cfg.emoji_set}"
    if not entries:
        raise DataError(f"split '{split}' of {what} is empty (val_fraction={cfg.val_fraction:g})")
    return FileImages(cfg, entries, what=what, class_names=classes)
