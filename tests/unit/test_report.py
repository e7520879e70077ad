"""`ldm report`: a static page of a real (tiny) training run, with its plots, grids, settings and starts."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from ldmkit.cli.main import main as ldm
from ldmkit.report import read_run, write_report
from ldmkit.report.plots import group_of

TINY = ["--config", "synthetic-kl-f4", "model.base_channels=8", "model.channel_mult=[1,2]",
        "model.num_res_blocks=1", "model.latent_channels=3", "model.mid_attention=false", "loss.perceptual_weight=0",
        "loss.disc_channels=8", "loss.disc_layers=2", "loss.disc_start=2", "data.resolution=16",
        "data.synthetic.count=8", "data.synthetic.supersample=1", "train.batch_size=4", "train.device=cpu",
        "train.progress=false", "train.log_every=1", "train.image_every=2", "train.checkpoint_every=2",
        "scale_samples=4"]


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    assert ldm(["train", "autoencoder", *TINY, f"train.out={out}", "train.steps=2"]) == 0
    assert ldm(["train", "autoencoder", *TINY, f"train.out={out}", "train.steps=4"]) == 0  # resumed and extended
    return out


def test_the_record_holds_every_start_scalar_and_grid(run):
    record = read_run(run)
    assert record.kind == "autoencoder" and record.steps_done == 4 and record.steps_planned == 4
    assert [s["step"] for s in record.starts] == [0, 2] and all(s["torch"] for s in record.starts)
    loss = next(series for tag, series in record.scalars.items() if tag.endswith("/lr"))
    assert [s.step for s in loss] == [1, 2, 3, 4]  # one value per step across both starts
    assert [step for step, _ in next(iter(record.grids.values()))] == [2, 4]
    assert record.checkpoints and record.model == run / "model"


def test_the_page_links_only_images_that_exist_and_shows_the_run(run, capsys):
    assert ldm(["report", str(run)]) == 0
    page = run / "report.html"
    assert f"report written to {page}" in capsys.readouterr().out
    text = page.read_text()
    links = Links()
    links.feed(text)
    plots = [src for src in links.images if src.startswith("report/")]
    assert {Path(p).stem for p in plots} >= {"losses", "learning-rate", "throughput"}
    for src in links.images:
        with Image.open(run / src) as image:  # every linked image is a readable PNG in the run directory
            assert image.format == "PNG" and min(image.size) > 0
    assert "4 of 4" in text and "Starts and hardware" in text and "disc_start: 2" in text
    assert re.search(r"config-history/: step-00000000\.yaml, step-00000002\.yaml", text)


def test_rebuilding_replaces_the_page_and_its_plots(run):
    first = write_report(run).read_text()
    second = write_report(run).read_text()
    strip = lambda t: re.sub(r"written .* by ldm report", "", t)  # noqa: E731
    assert strip(first) == strip(second)


def test_a_directory_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert ldm(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a training run: it has no config.yaml" in err


def test_tags_fall_into_their_figures():
    assert group_of("autoencoder/lr") == "learning rate"
    assert group_of("diffusion/img_per_s") == "throughput"
    assert group_of("diffusion/val_loss") == "validation" and group_of("diffusion/fd_efflite0") == "validation"
    assert group_of("autoencoder/rec_loss") == "losses"


def test_validation_is_drawn_over_wall_clock_minutes_with_steps_on_top():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ldmkit.report.plots import _against_minutes
    from ldmkit.report.run_record import Scalar

    series = [Scalar(100, 1000.0 + 30, 5.0), Scalar(200, 1000.0 + 90, 4.0), Scalar(300, 1000.0 + 210, 3.5)]
    figure, ax = plt.subplots()
    _against_minutes(ax, series, start=1000.0)
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [0.5, 1.5, 3.5] and list(line.get_ydata()) == [5.0, 4.0, 3.5]
    top = [child for child in ax.get_children() if type(child).__name__ == "SecondaryAxis"]
    assert len(top) == 1 and top[0].get_xlabel() == "step"
    plt.close(figure)
