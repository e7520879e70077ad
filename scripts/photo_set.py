"""The small folder of real photographs the experiments use: scikit-image's bundled photos and the real
photographs among the KDE wallpapers (``apt-get install plasma-workspace-wallpapers``), each at two scales.

Neither source downloads anything: scikit-image ships its photos, Debian the wallpapers. The GPU machine has
scikit-image but no wallpapers, so the folder is written here and carried:

    python scripts/photo_set.py .carry/photos            # here: 55 images (29 photographs, two scales), 4 MiB
    python scripts/photo_set.py .carry/photos-split --held-out chelsea coffee Kite Path   # train/ + held-out/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# scikit-image's real photographs (skimage.data functions; files in skimage's data_dir, no download).
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "stereo_motorcycle")
WALLPAPERS = Path("/usr/share/wallpapers")
# The photographs among the KDE wallpapers (the others are drawings and renders).
WALLPAPER_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                    "Kite", "OneStandsOut", "Path", "summer_1am", "Volna")
SIDES = (256, 512)  # short sides of the two scales


def skimage_photos() -> list[tuple[str, object]]:
    """(name, PIL image) of every bundled scikit-image photograph that can be read (stereo pairs: both views)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = []
    for name in SKIMAGE_PHOTOS:
        try:
            array = getattr(data, name)()
        except Exception as exc:  # noqa: BLE001 - a photo skimage would have to download is left out
            print(f"photos: {name} left out ({type(exc).__name__}: {exc})", flush=True)
            continue
        views = {"motorcycle_left": array[0], "motorcycle_right": array[1]} if name == "stereo_motorcycle" else {
            name: array}
        for view, pixels in views.items():
            pixels = np.asarray(pixels)
            if pixels.dtype != np.uint8:  # e.g. float images in [0, 1]
                pixels = (np.clip(pixels.astype(np.float64) / max(1.0, float(pixels.max())), 0, 1) * 255).round()
                pixels = pixels.astype(np.uint8)
            photos.append((view, Image.fromarray(pixels)))
    return photos


def wallpaper_photos() -> list[tuple[str, object]]:
    """(name, PIL image) of the KDE wallpaper photographs: the largest file of each; none when not installed."""
    from PIL import Image

    if not WALLPAPERS.is_dir():
        print(f"photos: {WALLPAPERS} is missing, so the KDE photographs are left out "
              "(apt-get install plasma-workspace-wallpapers)", flush=True)
        return []
    photos = []
    for name in WALLPAPER_PHOTOS:
        images = WALLPAPERS / name / "contents" / "images"
        if images.is_dir():
            largest = max(images.iterdir(), key=lambda p: p.stat().st_size)
            photos.append((name, Image.open(largest).convert("RGB")))
    return photos


def scaled(image, short_side: int):
    """``image`` with its shorter side ``short_side`` (never enlarged), aspect kept."""
    from PIL import Image

    scale = min(1.0, short_side / min(image.size))
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)


def write_photo_folder(folder: Path, sides: tuple[int, ...] = SIDES, quality: int = 95,
                       held_out: tuple[str, ...] = ()) -> dict:
    """Every photograph at each short side in ``sides`` as ``NAME-SIDE.jpg`` in one flat folder; what was written.

    A photo smaller than a side is written once at its own size (the folder never holds enlarged images). With
    ``held_out`` names, those photos (every scale of each) go to ``folder/held-out`` and the rest to
    ``folder/train``: no held-out photo is seen in training at another scale."""
    folder.mkdir(parents=True, exist_ok=True)
    names, sizes = [], []
    photos = skimage_photos() + wallpaper_photos()
    unknown = set(held_out) - {name for name, _ in photos}
    if unknown:
        raise RuntimeError(f"no photo named {', '.join(sorted(unknown))}; the names: "
                           f"{', '.join(name for name, _ in photos)}")
    for name, image in photos:
        target = folder / ("held-out" if name in held_out else "train") if held_out else folder
        target.mkdir(parents=True, exist_ok=True)
        written = set()
        for side in sides:
            out = scaled(image, side)
            if out.size in written:
                continue
            written.add(out.size)
            path = target / f"{name}-{min(out.size)}.jpg"
            out.convert("L" if image.mode in ("L", "I;16", "I", "F") else "RGB").save(path, quality=quality)
            names.append(str(path.relative_to(folder)))
            sizes.append(f"{out.width}x{out.height}")
    if len(names) < 4:
        raise RuntimeError(f"only {len(names)} photographs could be written; install scikit-image")
    return {"source": "scikit-image data + KDE wallpaper photographs", "images": len(names), "names": names,
            "sizes": sizes, "sides": list(sides), "held_out": list(held_out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--held-out", nargs="+", default=(), metavar="NAME",
                        help="photos written to FOLDER/held-out (every scale), the rest to FOLDER/train")
    args = parser.parse_args()
    try:
        written = write_photo_folder(args.folder, held_out=tuple(args.held_out))
    except RuntimeError as exc:
        raise SystemExit(f"error: {exc}") from None
    (args.folder / ".photo_set.json").write_text(json.dumps(written, indent=2) + "\n")
    size = sum(p.stat().st_size for p in args.folder.rglob("*") if p.is_file())
    print(f"{written['images']} images in {args.folder} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
