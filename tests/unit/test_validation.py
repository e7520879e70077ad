"""Validation during training: held-out scores at fixed timesteps and noise, the best model kept, resume exact
with validation on, and a validated run bitwise equal to one without."""

import json

import pytest
import torch
from safetensors.torch import load_file

from ldmkit.assets import is_fetched
from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder
from ldmkit.config import load_config
from ldmkit.data import build_dataset
from ldmkit.model import LatentDiffusionModel
from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask
from ldmkit.training.loop import train
from ldmkit.training.validation import HeldOut, validation_scores


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = AutoencoderConfig(kind="kl", base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=3,
                            mid_attention=False)
    return save_autoencoder(tmp_path_factory.mktemp("ae") / "ae", build_autoencoder(cfg), cfg)


def _run(out, autoencoder, steps, *extra):
    experiment = load_config(DiffusionExperiment, None, [
        f"autoencoder={autoencoder}", "conditioner.kind=class", "conditioner.num_classes=16", "conditioner.embed_dim=8",
        "unet.model_channels=8", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1", "unet.attention_resolutions=[]",
        "unet.num_heads=2", "data.source=synthetic", "data.resolution=16", "data.synthetic.count=40",
        "data.synthetic.supersample=1", "train.batch_size=4", "train.device=cpu", "train.progress=false",
        "train.image_every=0", "train.checkpoint_every=2", "train.lr=1e-3", f"train.steps={steps}",
        f"train.out={out}", "validation.images=4", *extra], group="diffusion")
    dataset = build_dataset(experiment.data, split="train")
    return train(DiffusionTask(experiment, dataset, None), experiment.train, dataset, experiment)


def _records(run):
    return [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]


def test_validation_scores_held_out_items_and_keeps_the_best_model(tmp_path, autoencoder):
    model_dir = _run(tmp_path / "run", autoencoder, 4, "train.validate_every=2")
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        assert set(record["scores"]) == {"loss", "loss_t100", "loss_t300", "loss_t500", "loss_t700", "loss_t900"}
        assert all(0 < v < 10 for v in record["scores"].values())
    assert records[0]["best"] is True
    best_step = max(r["step"] for r in records if r["best"])
    # RUN/best holds the weights that earned the best score: scoring them again gives the recorded number.
    best = LatentDiffusionModel.load(tmp_path / "run" / "best")
    experiment = load_config(DiffusionExperiment, None, [f"autoencoder={autoencoder}", "data.source=synthetic",
                                                         "data.resolution=16", "data.synthetic.count=40",
                                                         "data.synthetic.supersample=1", "validation.images=4"],
                             group="diffusion")
    held_out = HeldOut.build(experiment.validation, experiment.data, best.autoencoder, torch.device("cpu"))
    again = validation_scores(best, held_out, experiment.validation)
    recorded = next(r for r in records if r["step"] == best_step)["scores"]
    assert again["loss"] == pytest.approx(recorded["loss"], rel=1e-5)
    assert (model_dir / "unet.safetensors").is_file()


def test_validation_moves_no_random_state_and_resumes_exactly(tmp_path, autoencoder):
    plain = _run(tmp_path / "plain", autoencoder, 4)
    validated = _run(tmp_path / "validated", autoencoder, 4, "train.validate_every=2")
    a, b = load_file(plain / "unet.safetensors"), load_file(validated / "unet.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # validating changed nothing about the training
    _run(tmp_path / "resumed", autoencoder, 2, "train.validate_every=2")
    _run(tmp_path / "resumed", autoencoder, 4, "train.validate_every=2")
    assert _records(tmp_path / "resumed") == _records(tmp_path / "validated")


@pytest.mark.skipif(not is_fetched("efficientnet-lite0"), reason="efficientnet-lite0 asset not fetched")
def test_validation_fd_is_the_offline_number_of_the_same_weights(tmp_path, autoencoder):
    _run(tmp_path / "run", autoencoder, 2, "train.validate_every=2", "validation.fd_samples=4",
         "validation.steps=2")
    record = _records(tmp_path / "run")[-1]
    assert record["best"] and record["scores"]["fd"] > 0
    experiment = load_config(DiffusionExperiment, None, [f"autoencoder={autoencoder}", "data.source=synthetic",
                                                         "data.resolution=16", "data.synthetic.count=40",
                                                         "data.synthetic.supersample=1", "validation.images=4",
                                                         "validation.fd_samples=4", "validation.steps=2"],
                             group="diffusion")
    best = LatentDiffusionModel.load(tmp_path / "run" / "best")
    held_out = HeldOut.build(experiment.validation, experiment.data, best.autoencoder, torch.device("cpu"))
    assert validation_scores(best, held_out, experiment.validation)["fd"] == pytest.approx(record["scores"]["fd"],
                                                                                          rel=1e-4)
