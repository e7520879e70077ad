"""Image folders: nested directories of jpg/png/webp (and bmp/gif/tiff) files.

Labels (``label_source``):

- ``subfolder``: the first directory under the root names the class (``root/cat/a/1.png`` -> "cat");
  classes are numbered in sorted order; images directly in the root get label -1.
- ``manifest``: a CSV (header row) or JSONL file with one row per image: ``file`` (or ``path``,
  ``image``, ``filename``) relative to the root, ``label`` (an integer or a class name), and optionally
  ``caption`` (or ``text``). Integer labels are kept; names are numbered in sorted order.
- ``none``: every label is -1.

Captions come from the manifest when it has them, else from a same-name ``.txt`` file beside the image
(``cat/1.png`` -> ``cat/1.txt``), else "". When a manifest is in use it lists the data set: images it
does not name are left out, and names without a file count as bad files. Hidden files and folders
(starting with ".") are ignored.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path, PurePath

from ldmkit.data.config import DataConfig
from ldmkit.data.files import FileEntry, FileImages, read_utf8
from ldmkit.data.images import IMAGE_SUFFIXES
from ldmkit.data.paths import given_path
from ldmkit.data.splits import select_split
from ldmkit.errors import ConfigError, DataError

#: Most classes a manifest may define (ImageNet-21k has 21,841); integer labels must lie below it.
MAX_CLASSES = 100_000
FILE_COLUMNS = ("file", "path", "image", "filename")
LABEL_COLUMNS = ("label", "class")
CAPTION_COLUMNS = ("caption", "text")


def scan_folder(root: Path) -> tuple[list[Path], set[Path]]:
    """(sorted image files, caption .txt files) under ``root``, recursively."""
    images, texts = [], set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                images.append(path)
            elif suffix == ".txt":
                texts.add(path)
    return images, texts


def find_manifest(root: Path, cfg: DataConfig) -> Path | None:
    if cfg.manifest is not None:
        path = Path(cfg.manifest).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DataError(f"manifest {path} does not exist; check the `manifest` setting")
        return path
    if cfg.label_source != "manifest":
        return None
    for name in ("manifest.csv", "manifest.jsonl"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"label_source=manifest but {root} has no manifest.csv or manifest.jsonl; "
                    "set manifest=FILE")


def read_manifest(path: Path) -> list[dict]:
    """Rows of a CSV (with a header) or JSONL manifest, as dicts."""
    try:
        text = read_utf8(path, "manifest")
    except OSError as exc:
        raise DataError(f"manifest {path} cannot be read: {exc.strerror or exc}") from None
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"manifest {path} line {n} is not JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"manifest {path} line {n} is not a JSON object")
            rows.append(row)
        return rows
    if path.suffix.lower() not in (".csv", ".tsv"):
        raise DataError(f"manifest {path} must be .csv or .jsonl")
    return _csv_rows(text, path, "excel-tab" if path.suffix.lower() == ".tsv" else "excel")


def _csv_rows(text: str, path: Path, dialect: str) -> list[dict]:
    """Rows of a CSV manifest with a header. A field may not run past its line: a quote left open would
    otherwise swallow the rows after it silently."""
    reader = csv.DictReader(text.splitlines(), dialect=dialect, strict=True)
    rows = []
    try:
        reader.fieldnames  # reads the header, so line_num counts from the first row
        while True:
            line = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                return rows
            if any(isinstance(v, str) and "\n" in v for v in row.values()):
                raise csv.Error("a quoted field runs past the end of the line")
            rows.append(dict(row))
    except csv.Error as exc:
        raise DataError(f"manifest {path} line {line}: {exc}; close the quote on that line, or double a quote "
                        'inside a quoted field ("")') from None


def _column(row: dict, names: tuple[str, ...]) -> object:
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
    return None


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _inside(root: Path, name: str, where: str) -> Path:
    """``root / name`` for a relative ``name`` that stays inside ``root``; a DataError otherwise."""
    relative = PurePath(name)
    if relative.is_absolute() or relative.anchor or ".." in relative.parts:
        raise DataError(f"{where}: file '{name}' is outside the data folder {root}; give paths relative to it, "
                        "without '..'")
    return root / relative


def _number_labels(raw: list[object], rows: list[int], manifest: Path) -> tuple[list[int], list[str]]:
    """Manifest labels (of manifest ``rows``) -> (indices, class names): integers stay, names are numbered in
    sorted order."""
    present = [v for v in raw if v is not None]
    ints = [_as_int(v) for v in present]
    if present and all(i is not None for i in ints):
        _check_label_range(raw, rows, manifest)
        top = max(ints)
        return [(-1 if v is None else _as_int(v)) for v in raw], [str(i) for i in range(top + 1)]
    if len(set(map(str, present))) > MAX_CLASSES:
        raise DataError(f"manifest {manifest} names more than {MAX_CLASSES} classes; merge classes or use "
                        "label_source=none")
    names = sorted({str(v) for v in present})
    index = {n: i for i, n in enumerate(names)}
    return [(-1 if v is None else index[str(v)]) for v in raw], names


def _check_label_range(raw: list[object], rows: list[int], manifest: Path) -> None:
    """Integer labels are class indices 0..MAX_CLASSES-1 (the class count is the largest label + 1), or -1 for
    an image without a label."""
    for n, value in zip(rows, raw):
        label = _as_int(value)
        if label is not None and not -1 <= label < MAX_CLASSES:
            raise DataError(f"manifest {manifest} row {n} has label {label}; integer labels are class indices "
                            f"0..{MAX_CLASSES - 1} (-1: no label) and the class count is the largest one + 1, "
                            "so number the classes from 0 or give class names")


def folder_entries(cfg: DataConfig) -> tuple[Path, list[FileEntry], list[str], list[tuple[str, str]]]:
    """(root, every entry, class names, bad entries such as manifest rows without a file)."""
    if cfg.path is None:
        raise ConfigError("source=folder needs path=DIR")
    root = given_path(cfg.path, "image folder")
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory")
    images, texts = scan_folder(root)
    manifest = find_manifest(root, cfg)
    bad: list[tuple[str, str]] = []
    if manifest is not None:
        rows = read_manifest(manifest)
        if not rows:
            raise DataError(f"manifest {manifest} lists no images")
        entries_raw = []
        for n, row in enumerate(rows, 1):
            name = _column(row, FILE_COLUMNS)
            if name is None:
                raise DataError(f"manifest {manifest} row {n} has no file column ({', '.join(FILE_COLUMNS)})")
            path = _inside(root, str(name), f"manifest {manifest} row {n}")
            if not path.is_file():
                bad.append((str(path), "listed in the manifest but missing"))
                continue
            caption = _column(row, CAPTION_COLUMNS)
            entries_raw.append((path, _column(row, LABEL_COLUMNS), None if caption is None else str(caption), n))
        if cfg.label_source == "manifest":
            labels, class_names = _number_labels([r[1] for r in entries_raw], [r[3] for r in entries_raw], manifest)
        else:
            labels, class_names = _subfolder_labels(root, [r[0] for r in entries_raw], cfg)
        entries = [FileEntry(path, path.relative_to(root).as_posix(), label,
                             " ".join(caption.split()) if caption is not None else None,
                             _caption_file(path, texts))
                   for (path, _, caption, _), label in zip(entries_raw, labels)]
    else:
        if not images:
            raise DataError(f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        labels, class_names = _subfolder_labels(root, images, cfg)
        entries = [FileEntry(path, path.relative_to(root).as_posix(), label, None, _caption_file(path, texts))
                   for path, label in zip(images, labels)]
    return root, entries, class_names, bad


def folder_dataset(cfg: DataConfig, split: str = "train") -> FileImages:
    """The images of ``split`` (see :mod:`ldmkit.data.splits`) of the folder ``cfg.path``."""
    root, entries, class_names, bad = folder_entries(cfg)
    entries = select_split(entries, [e.key for e in entries], split, cfg.val_fraction, cfg.split_seed)
    if not entries:
        raise DataError(f"split '{split}' of image folder {root} is empty (val_fraction={cfg.val_fraction:g})")
    images = FileImages(cfg, entries, what=f"image folder {root}", class_names=class_names, bad_entries=bad)
    if cfg.buckets.enabled and split == "train":  # held-out splits stay square: they are scored as one set
        from ldmkit.data.buckets import make_buckets

        images.use_buckets(make_buckets(cfg.resolution, cfg.buckets))
    return images


def _caption_file(path: Path, texts: set[Path]) -> Path | None:
    txt = path.with_suffix(".txt")
    return txt if txt in texts else None


def _subfolder_labels(root: Path, paths: list[Path], cfg: DataConfig) -> tuple[list[int], list[str]]:
    if cfg.label_source != "subfolder":
        return [-1] * len(paths), []
    firsts = [p.relative_to(root).parts for p in paths]
    names = sorted({parts[0] for parts in firsts if len(parts) > 1})
    index = {n: i for i, n in enumerate(names)}
    return [index[parts[0]] if len(parts) > 1 else -1 for parts in firsts], names
