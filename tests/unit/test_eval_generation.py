"""Sampling-and-scoring a model against reference statistics (``evaluate_generation``, ``ldm eval generation``)."""

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ldmkit.assets import is_fetched
from ldmkit.autoencoders.build import build_autoencoder, load_autoencoder, save_autoencoder
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.cli.main import main
from ldmkit.conditioning import ConditionerConfig
from ldmkit.conditioning.build import build_conditioner
from ldmkit.conditioning.config import TextEncoderConfig
from ldmkit.denoisers import UNet, UNetConfig
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import ConfigError
from ldmkit.evaluation.evaluate import compute_reference_stats
from ldmkit.evaluation.generation import captions_from_data, conditions_for, data_of_reference, evaluate_generation
from ldmkit.evaluation.random_features import RandomConvFeatures
from ldmkit.evaluation.sources import reference_source
from ldmkit.evaluation.stats import StatsMismatchError, load_stats
from ldmkit.model import LatentDiffusionModel
from ldmkit.pipelines import LatentDiffusionPipeline

FAST = {"steps": 2, "sampler": "ddim", "guidance": 1.0, "batch_size": 3, "progress": False}


def tiny_pipeline(kind="class", captions=None):
    torch.manual_seed(0)
    if kind == "class":
        cond_cfg = ConditionerConfig(kind="class", num_classes=3, embed_dim=16)
    else:
        cond_cfg = ConditionerConfig(kind="text", embed_dim=16, text=TextEncoderConfig(width=16, depth=1, heads=2))
    conditioner = build_conditioner(cond_cfg, captions=captions)
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(), num_heads=2, vector_dim=cond_cfg.vector_dim,
                           context_dim=cond_cfg.context_dim))
    return LatentDiffusionPipeline(LatentDiffusionModel(
        unet=unet, schedule=NoiseSchedule(ScheduleConfig()), conditioner=conditioner,
        autoencoder=build_autoencoder(AutoencoderConfig(kind="identity")), latent_size=(16, 16)))


def reference(count=12, size=16, source="test images"):
    images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return compute_reference_stats(images, RandomConvFeatures(), source=source)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def test_result_has_metrics_settings_and_timings(pipe):
    result = evaluate_generation(pipe, reference(), n=8, seed=5, **FAST)
    assert set(result["metrics"]) == {"FD-RandomConv", "KD-RandomConv", "KD-RandomConv-std",
                                      "Precision-RandomConv", "Recall-RandomConv"}
    assert all(isinstance(v, float) for v in result["metrics"].values())
    assert result["num_images"] == 8
    gen = result["settings"]["generation"]
    assert gen["n"] == 8 and gen["steps"] == 2 and gen["sampler"] == "ddim" and gen["seed"] == 5
    assert gen["image_size"] == [16, 16] and gen["conditioning"] == "class" and gen["world_size"] == 1
    assert result["settings"]["feature"] == "random-conv" and result["settings"]["reference"]["count"] == 12
    for key in ("sampling_seconds", "sampling_images_per_second", "evaluation_seconds", "seconds",
                "images_per_second"):
        assert result[key] > 0, key
    assert result["sampling_seconds"] <= result["seconds"]
    json.dumps(result)  # everything is JSON-serialisable


def test_images_do_not_depend_on_batch_size_and_classes_cycle(pipe):
    ref = reference()
    a = evaluate_generation(pipe, ref, n=7, seed=3, metrics=("fd",), **dict(FAST, batch_size=7))
    b = evaluate_generation(pipe, ref, n=7, seed=3, metrics=("fd",), **dict(FAST, batch_size=2))
    assert a["settings"]["samples_fingerprint"] == b["settings"]["samples_fingerprint"]
    assert a["metrics"]["FD-RandomConv"] == pytest.approx(b["metrics"]["FD-RandomConv"], rel=1e-5)
    c = evaluate_generation(pipe, ref, n=7, seed=4, metrics=("fd",), **FAST)
    assert c["settings"]["samples_fingerprint"] != a["settings"]["samples_fingerprint"]
    _, labels = conditions_for(pipe, 7)
    assert labels == [0, 1, 2, 0, 1, 2, 0]
    assert conditions_for(pipe, 4, class_labels=[2])[1] == [2, 2, 2, 2]


def test_wrong_reference_network_and_size_fail_before_sampling(pipe, monkeypatch):
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before the checks")

    monkeypatch.setattr(LatentDiffusionPipeline, "__call__", no_sampling)
    with pytest.raises(StatsMismatchError, match="'random-conv', not 'efflite0'"):
        evaluate_generation(pipe, reference(), n=8, feature="efflite0", **FAST)
    with pytest.raises(StatsMismatchError, match="samples are 16x16"):
        evaluate_generation(pipe, reference(size=24), n=8, **FAST)
    with pytest.raises(ConfigError, match="out of range"):
        evaluate_generation(pipe, reference(), n=8, class_labels=[5], **FAST)
    with pytest.raises(ConfigError, match="not on text"):
        evaluate_generation(pipe, reference(), n=8, prompts=["a cat"], **FAST)


def test_text_model_cycles_prompts():
    text = tiny_pipeline("text", captions=["a red circle", "a blue square"])
    with pytest.raises(ConfigError, match="text-conditional"):
        conditions_for(text, 3)
    prompts, labels = conditions_for(text, 3, prompts=["a red circle", "a blue square"])
    assert prompts == ["a red circle", "a blue square", "a red circle"] and labels is None
    result = evaluate_generation(text, reference(), n=4, prompts=["a red circle", "a blue square"],
                                 metrics=("fd",), **FAST)
    assert result["num_images"] == 4 and result["settings"]["generation"]["distinct_prompts"] == 2


def test_captions_from_data_and_reference_source(tmp_path):
    captions = captions_from_data("synthetic-easy", ["synthetic.count=20"], n=30, seed=0)
    assert len(captions) == 30 and all(c.startswith("a ") for c in captions)
    assert len(set(captions[:20])) > 1 and captions == captions_from_data(
        "synthetic-easy", ["synthetic.count=20"], n=30, seed=0)
    # The data set of `ldm eval stats --data` travels in the statistics file as data, not inside the text.
    batches, origin = reference_source("synthetic-easy", ["synthetic.count=12", "resolution=16", "val_fraction=0.5"], split="val",
                                       batch_size=6)
    stats = compute_reference_stats(batches, RandomConvFeatures(), source=origin)
    back = load_stats(stats.save(tmp_path / "ref.npz"))
    config, split = data_of_reference(back)
    assert split == "val" and config["synthetic"]["count"] == 12 and back.source.startswith("data {")
    assert captions_from_data(config, n=4, split=split) == captions_from_data(
        "synthetic-easy", ["synthetic.count=12", "resolution=16", "val_fraction=0.5"], n=4, split="val")
    from_config = captions_from_data({"source": "synthetic", "synthetic": {"count": 20}}, n=5, split="val")
    assert len(from_config) == 5 and all(c.startswith("a ") for c in from_config)
    with pytest.raises(ConfigError, match="--data"):
        data_of_reference(reference(source="folder /x"))


def _worker(rank, world, init_file, out_file, ref_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = evaluate_generation(tiny_pipeline(), ref_file, n=5, seed=2, metrics=("fd",), **FAST)
        if rank == 0:
            with open(out_file, "w") as handle:
                json.dump(result, handle)
    finally:
        dist.destroy_process_group()


def test_two_ranks_sample_the_same_images_as_one(pipe, tmp_path):
    ref_file = reference().save(tmp_path / "ref.npz")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out.json"), str(ref_file)), nprocs=2)
    shared = json.loads((tmp_path / "out.json").read_text())
    single = evaluate_generation(pipe, ref_file, n=5, seed=2, metrics=("fd",), **FAST)
    assert shared["num_images"] == 5 and shared["settings"]["generation"]["world_size"] == 2
    assert shared["settings"]["samples_fingerprint"] == single["settings"]["samples_fingerprint"]


def test_cli_writes_json(pipe, tmp_path, capsys):
    ae_cfg = AutoencoderConfig(kind="identity")
    save_autoencoder(tmp_path / "ae", build_autoencoder(ae_cfg), ae_cfg)
    model = LatentDiffusionModel(unet=pipe.unet, schedule=NoiseSchedule(ScheduleConfig()), conditioner=pipe.conditioner,
                                 autoencoder=load_autoencoder(tmp_path / "ae"), latent_size=(16, 16),
                                 autoencoder_source=Path(tmp_path / "ae"))
    model.save(tmp_path / "model")
    ref_file = reference().save(tmp_path / "ref.npz")
    out = tmp_path / "gen.json"
    args = ["eval", "generation", "--model", str(tmp_path / "model"), "--reference", str(ref_file), "--n", "6",
            "--steps", "2", "--sampler", "ddim", "--guidance", "1", "--batch-size", "4", "--device", "cpu",
            "--class", "1", "2", "--out", str(out), "-q"]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == 6 and "FD-RandomConv" in result["metrics"]
    assert result["settings"]["generation"]["class_labels"] == [1, 2]
    assert result["settings"]["generation"]["model"] == str((tmp_path / "model").resolve())
    assert main(args[:-4] + ["--feature", "efflite0"]) == 2  # wrong network: a one-line error
    assert "random-conv" in capsys.readouterr().err
    assert main(args[:-4] + ["--data", "synthetic-easy"]) == 2  # --data only chooses captions of text models
    assert "--prompts-from-data" in capsys.readouterr().err
    assert main([*args, "--metrics", "fd,accuracy"]) == 2  # accuracy without a classifier: one line, no sampling
    assert "the accuracy metric needs a classifier" in capsys.readouterr().err
    if is_fetched("efficientnet-lite0"):  # ImageNet's classifier on a 3-class model: a number, not a good one
        assert main([*args, "--metrics", "fd,accuracy", "--classifier", "efflite0"]) == 0
        assert 0.0 <= json.loads(out.read_text())["metrics"]["Accuracy"] <= 1.0


def test_accuracy_scores_each_sample_against_its_own_intended_class(pipe):
    """A classifier that recognises each of the n samples (by its nearest twin drawn one at a time) and returns
    that sample's class: accuracy 1 only if every sample travels with its own label, across batch boundaries."""
    n, seed = 7, 3
    twins = torch.cat([pipe(class_label=[i % 3], seed=seed + i, output="tensor", progress=False,
                            **{k: v for k, v in FAST.items() if k in ("steps", "sampler", "guidance")})
                       for i in range(n)])  # [7, 3, 16, 16], classes 0, 1, 2, 0, …
    classes = torch.tensor([i % 3 for i in range(n)])

    def recognise(images, shift=0):
        nearest = torch.cdist(images.flatten(1).float(), twins.flatten(1).float()).argmin(1)
        return torch.nn.functional.one_hot((classes[nearest] + shift) % 3, 3).float()

    ref = reference()
    right = evaluate_generation(pipe, ref, n=n, seed=seed, metrics=("fd", "accuracy"), classifier=recognise, **FAST)
    assert right["metrics"]["Accuracy"] == 1.0
    wrong = evaluate_generation(pipe, ref, n=n, seed=seed, metrics=("accuracy",),
                                classifier=lambda x: recognise(x, shift=1), **FAST)
    assert wrong["metrics"]["Accuracy"] == 0.0
    with pytest.raises(ConfigError, match="accuracy metric needs a classifier"):
        evaluate_generation(pipe, ref, n=n, metrics=("accuracy",), **FAST)
    text = tiny_pipeline("text", captions=["a red circle"])
    with pytest.raises(ConfigError, match="needs a class-conditional model"):
        evaluate_generation(text, ref, n=n, metrics=("accuracy",), classifier=recognise, prompts=["a red circle"],
                            **FAST)
