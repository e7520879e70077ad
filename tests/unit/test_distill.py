"""Latent consistency distillation: the consistency function, multistep consistency sampling on the exact flow of
Gaussian data, the guidance input of a student, and `ldm distill` end to end (train, resume, sample)."""

import json

import pytest
import torch

from ldmkit import samplers
from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers import UNet, UNetConfig
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.diffusion.consistency import boundary_coefficients, consistency_output, skipping_timesteps
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import ConfigError
from ldmkit.samplers import SamplerOptions

MU = torch.tensor([1.0, -0.5], dtype=torch.float64).view(1, 2, 1, 1)
STD = torch.tensor([0.5, 2.0], dtype=torch.float64).view(1, 2, 1, 1)


def test_the_consistency_function_is_the_identity_at_zero_and_the_estimate_elsewhere():
    c_skip, c_out = boundary_coefficients(torch.tensor([0.0, 1.0, 19.0, 999.0]))
    assert c_skip[0] == 1 and c_out[0] == 0  # f(x, 0) = x
    assert c_skip[2] < 2e-4 and c_out[2] > 0.9999 and c_skip[3] < 1e-6  # from the first skipped step on: x̂0
    x, x0 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(consistency_output(x, x0, torch.tensor([0.0, 0.0])), x)
    assert torch.equal(skipping_timesteps(1000, 20), torch.arange(19, 1000, 20))


class ExactConsistency(torch.nn.Module):
    """The exact consistency function of Gaussian data as an x0-predicting network: the probability-flow ODE
    from x_t back to t = 0, x0 = μ + s (x_t - sqrt(ᾱ) μ) / sqrt(ᾱ s² + 1 - ᾱ). Counts its calls."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.calls = 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        ab = self.schedule.alpha_bar(t, dtype=torch.float64).view(-1, 1, 1, 1)
        return (MU + STD * (x.double() - ab.sqrt() * MU) / (ab * STD**2 + 1 - ab).sqrt()).to(x.dtype)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampling_with_the_exact_consistency_function_draws_the_data_distribution(steps):
    schedule = NoiseSchedule(ScheduleConfig(kind="linear", prediction="x0"))
    noise = torch.randn(20000, 2, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = samplers.sample(SamplerOptions(sampler="lcm", steps=steps, guidance=1.0, seed=1),
                          Denoiser(ExactConsistency(schedule), schedule), noise)
    mean, std = out.mean(dim=0).flatten(), out.std(dim=0).flatten()
    assert torch.allclose(mean, MU.flatten(), atol=0.04) and torch.allclose(std, STD.flatten(), rtol=0.03)


def test_one_step_is_the_ode_map_exactly():
    schedule = NoiseSchedule(ScheduleConfig(kind="linear", prediction="x0"))
    z = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64).view(3, 1, 1, 1).expand(3, 2, 1, 1).contiguous()
    out = samplers.sample(SamplerOptions(sampler="lcm", steps=1, guidance=1.0), Denoiser(ExactConsistency(schedule),
                                                                                        schedule), z)
    ab = schedule.alphas_cumprod[-1]
    assert torch.allclose(out, MU + STD * (z - ab.sqrt() * MU) / (ab * STD**2 + 1 - ab).sqrt(), atol=1e-6)


def _unet(**kw):
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(), num_heads=2, vector_dim=4, **kw))
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if not name.startswith("guidance_embedding.linear_2"):
                parameter.add_(torch.randn_like(parameter) * 0.05)
    return net.eval()


def test_a_student_starts_as_its_teacher_and_then_follows_its_guidance_input():
    teacher = _unet()
    student = UNet(UNetConfig(**{**teacher.config.__dict__, "guidance_embed": True})).eval()
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("guidance_embedding.") for k in missing)
    x, t, vector = torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), torch.randn(2, 4)
    reference = teacher(x, t, Conditioning(vector=vector))
    for w in (1.0, 7.5):
        assert torch.equal(student(x, t, Conditioning(vector=vector, guidance=torch.full((2,), w))), reference)
    with torch.no_grad():
        student.guidance_embedding.linear_2.weight.normal_()
    low = student(x, t, Conditioning(vector=vector, guidance=torch.full((2,), 1.0)))
    assert not torch.allclose(low, student(x, t, Conditioning(vector=vector, guidance=torch.full((2,), 7.5))))
    with pytest.raises(ConfigError, match="guidance-distilled"):
        student(x, t, Conditioning(vector=vector))
    with pytest.raises(ConfigError, match="no guidance embedding"):
        teacher(x, t, Conditioning(vector=vector, guidance=torch.ones(2)))


def _tiny_teacher(root):
    from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder
    from ldmkit.conditioning import ConditionerConfig, build_conditioner
    from ldmkit.config import to_dict
    from ldmkit.data import DataConfig
    from ldmkit.model import LatentDiffusionModel

    cond = ConditionerConfig(kind="class", num_classes=16, embed_dim=4)
    data = DataConfig(source="synthetic", resolution=16)
    data = {**to_dict(data), "synthetic": {**to_dict(data)["synthetic"], "count": 16, "supersample": 1}}
    model = LatentDiffusionModel(unet=_unet(), schedule=NoiseSchedule(ScheduleConfig()),
                                 conditioner=build_conditioner(cond).eval(),
                                 autoencoder=build_autoencoder(AutoencoderConfig(kind="identity")),
                                 latent_size=(16, 16))
    return model.save(root / "teacher", experiment={"data": data})


def test_distill_trains_resumes_and_the_student_samples_guided_in_one_pass_per_step(tmp_path, capsys):
    from ldmkit.cli.main import main as ldm
    from ldmkit.model import LatentDiffusionModel
    from ldmkit.pipelines import LatentDiffusionPipeline

    teacher = _tiny_teacher(tmp_path)
    common = ["--model", str(teacher), "--out", str(tmp_path / "run"), "train.batch_size=4", "train.device=cpu",
              "train.progress=false", "train.image_every=0", "skip=100"]
    assert ldm(["distill", *common, "train.steps=2"]) == 0
    assert ldm(["distill", *common, "train.steps=4"]) == 0  # resumes at step 2
    steps = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert steps[-1] == 4
    starts = [json.loads(line) for line in (tmp_path / "run" / "starts.jsonl").read_text().splitlines()]
    assert [s.get("step", s.get("resumed_from")) for s in starts][-1] in (2, "2")
    student = LatentDiffusionModel.load(tmp_path / "run" / "model")
    assert student.takes_guidance and student.extra["sampling"] == {"sampler": "lcm", "steps": 4}
    calls = []
    student.unet.register_forward_hook(lambda module, args, out: calls.append(args[2].guidance.clone()))
    images = LatentDiffusionPipeline(student)(class_label=[1, 2], sampler="lcm", steps=3, guidance=5.0,
                                              output="tensor", progress=False)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert len(calls) == 3 and all(torch.equal(w, torch.full((2,), 5.0)) for w in calls)  # no unguided pass
    # Named no sampler, it samples as it records: lcm at 4 steps (the CLI too, and says so in settings.json).
    calls.clear()
    LatentDiffusionPipeline(student)(class_label=[1], guidance=2.0, output="tensor", progress=False)
    assert len(calls) == 4
    assert ldm(["sample", "--model", str(tmp_path / "run" / "model"), "--class", "1", "--n", "1", "--device", "cpu",
                "--out", str(tmp_path / "s")]) == 0
    settings = json.loads((tmp_path / "s" / "settings.json").read_text())
    assert (settings["sampler"], settings["steps"]) == ("lcm", 4)


def test_distill_refuses_a_student_as_teacher_and_a_missing_model(tmp_path):
    from ldmkit.training.distill_task import DistillExperiment, run_distillation

    with pytest.raises(ConfigError, match="'model' is required"):
        DistillExperiment()
    with pytest.raises(ConfigError, match="guidance_max"):
        DistillExperiment(model="x", guidance_min=5.0, guidance_max=2.0)
    teacher = _tiny_teacher(tmp_path)
    run = tmp_path / "run"
    run_distillation([f"model={teacher}", f"train.out={run}", "train.steps=1", "train.batch_size=2",
                      "train.device=cpu", "train.progress=false", "train.image_every=0"])
    with pytest.raises(ConfigError, match="already a distilled student"):
        run_distillation([f"model={run / 'model'}", f"train.out={tmp_path / 'again'}", "train.steps=1",
                          "train.batch_size=2", "train.device=cpu", "train.progress=false", "train.image_every=0"])


def test_lcm_lora_trains_adapters_of_the_teacher_alone_and_they_make_it_sample_in_few_steps(tmp_path):
    from safetensors import safe_open

    from ldmkit.cli.main import main as ldm
    from ldmkit.model import LatentDiffusionModel
    from ldmkit.pipelines import LatentDiffusionPipeline

    teacher_dir = _tiny_teacher(tmp_path)
    run = tmp_path / "run"
    common = ["--model", str(teacher_dir), "--out", str(run), "lora.rank=4", "lora.targets=[convolutions]",
              "train.lr=1e-3", "train.batch_size=4", "train.device=cpu", "train.progress=false", "skip=100"]
    assert ldm(["distill", *common, "train.steps=2", "train.image_every=2"]) == 0
    assert ldm(["distill", *common, "train.steps=3", "train.image_every=0"]) == 0  # resumes at step 2
    assert (run / "images" / "samples-00000002.png").is_file()
    # The base written beside the adapter is the teacher, weight for weight, and takes no guidance input.
    teacher, base = LatentDiffusionModel.load(teacher_dir), LatentDiffusionModel.load(run / "model")
    assert not base.takes_guidance and "sampling" not in base.extra
    theirs = base.unet.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in teacher.unet.state_dict().items())
    assert theirs.keys() == teacher.unet.state_dict().keys()
    adapter = run / "model" / "adapters" / "lora.safetensors"
    with safe_open(str(adapter), "pt") as f:
        info = json.loads(f.metadata()["ldmkit_lora"])
    assert info["sampling"] == {"sampler": "lcm", "steps": 4, "guidance": 1.0} and info["rank"] == 4
    # Loaded onto the teacher, the adapter changes its few-step samples (its B factors left zero).
    pipe = LatentDiffusionPipeline(teacher)
    kwargs = dict(class_label=[1, 2], sampler="lcm", steps=2, guidance=1.0, output="tensor", progress=False)
    plain = pipe(**kwargs)
    pipe.load_lora(adapter)
    adapted = pipe(**kwargs)
    assert torch.isfinite(adapted).all() and not torch.equal(adapted, plain)
    assert ldm(["sample", "--model", str(teacher_dir), "--lora", str(adapter), "--sampler", "lcm", "--steps", "2",
                "--guidance", "1", "--class", "1", "--n", "1", "--device", "cpu", "--out", str(tmp_path / "s")]) == 0


def test_an_lcm_lora_adapts_the_unet_only():
    from ldmkit.adapters.config import LoraConfig
    from ldmkit.training.distill_task import DistillExperiment

    with pytest.raises(ConfigError, match="LCM-LoRA adapts the UNet only"):
        DistillExperiment(model="x", lora=LoraConfig(rank=4, targets=("attention", "text_encoder")))
