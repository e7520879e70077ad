from pathlib import Path

import pytest
from PIL import Image

from ldmkit.cli.main import main
from ldmkit.config import from_dict, read_yaml
from ldmkit.config.loading import PRESETS_DIR
from ldmkit.data import DataConfig, write_shards


def _folder(root, n_good=6):
    for i in range(n_good):
        path = root / ("a" if i % 2 else "b") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10 + i, 8), (i * 30, 0, 0)).save(path)
        if i < 2:
            path.with_suffix(".txt").write_text(f"caption {i}")
    return root


def test_presets_validate():
    names = sorted(p.stem for p in (PRESETS_DIR / "data").glob("*.yaml"))
    assert {"synthetic", "synthetic-easy", "fashion-mnist-32", "fluent-emoji-64", "fluent-emoji-128",
            "twemoji-64"} <= set(names)
    for name in names:
        from_dict(DataConfig, read_yaml(PRESETS_DIR / "data" / f"{name}.yaml"))


def test_check_reports_counts_and_bad_files(tmp_path, capsys):
    root = _folder(tmp_path / "d")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "6 images, 6 readable, 0 bad" in out and "captions: 2 of 6" in out and "2 classes: a, b" in out
    assert "labels: 6 of 6" in out and "smallest 10x8" in out
    (root / "a" / "zero.png").write_bytes(b"")
    (root / "b" / "fake.jpg").write_text("hello")
    assert main(["data", "check", str(root)]) == 1
    captured = capsys.readouterr()
    assert "zero.png: empty" in captured.out and "fake.jpg: not an image" in captured.out
    assert "more than max_bad_fraction" in captured.err
    assert main(["data", "check", str(root), "max_bad_fraction=0.5"]) == 0


def test_check_shards_and_missing_path(tmp_path, capsys):
    import io

    def items():
        for i in range(4):
            buf = io.BytesIO()
            Image.new("RGB", (5, 5)).save(buf, format="PNG")
            yield f"k{i}", {"png": buf.getvalue(), "cls": b"1"}
    write_shards(items(), tmp_path / "s", per_shard=3)
    assert main(["data", "check", str(tmp_path / "s")]) == 0
    assert "shards" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and "Traceback" not in err


def test_preview_writes_a_captioned_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["data", "preview", "synthetic-easy", "--out", str(out), "--count", "6", "--columns", "3",
                 "--cell", "40"]) == 0
    grid = Image.open(out)
    assert grid.width == 3 * 44 + 4 and grid.height > 2 * 44  # text lines under each row
    assert "wrote" in capsys.readouterr().out
    out2 = tmp_path / "folder.png"
    root = _folder(tmp_path / "d")
    assert main(["data", "preview", "source=folder", f"path={root}", "resolution=16", "--out", str(out2)]) == 0
    assert Path(out2).stat().st_size > 0


@pytest.mark.parametrize("argv", [["data", "preview", "synthetc"], ["data", "preview", "source=blob"],
                                  ["data", "preview", "source=folder", "path=/does/not/exist"]])
def test_preview_mistakes_are_one_line(argv, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.startswith("error:")
