"""The benchmark scripts (bench/) end to end on tiny models, and the inference fast path they time:
``optimize_network`` / ``LatentDiffusionPipeline.optimize`` and samplers that never wait for the device."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from ldmkit import samplers
from ldmkit.autoencoders import build_autoencoder
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.cli.main import build_parser
from ldmkit.conditioning import ConditionerConfig, build_conditioner
from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.unet import UNet
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.diffusion.schedules import NoiseSchedule
from ldmkit.errors import ConfigError
from ldmkit.model import LatentDiffusionModel
from ldmkit.pipelines.text2img import LatentDiffusionPipeline, _FreshOutputs, optimize_network

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def bench_module(name: str):
    """A module of bench/ (a scripts folder, not a package), imported from its file; its imports of sibling
    modules resolve as they do when a script runs from bench/."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_script(name: str, *args: str) -> None:
    assert bench_module(name).main(list(args)) == 0


# ------------------------------------------------------------------------------------ GPU benchmark script
def test_gpu_script_runs_every_cpu_section_with_tiny_models(tmp_path):
    pytest.importorskip("diffusers")
    run_script("gpu_vs_diffusers", "--tiny", "--device", "cpu", "--sizes", "8", "--modes", "eager", "--profile",
               "--quantize", "int8", "--out", str(tmp_path))
    report = json.loads((tmp_path / "gpu_vs_diffusers.json").read_text())
    assert report["errors"] == []
    profile = report["train"]["lat8"]["ldmkit"]["eager"]["profile"]
    assert profile["busy_ms"] == pytest.approx(sum(profile["groups_ms"].values()))
    assert profile["groups_ms"]["convolution"] > 0 and profile["groups_ms"]["optimizer"] > 0
    assert profile["top"][0]["ms"] >= profile["top"][-1]["ms"] > 0
    assert report["meta"]["tiny"] and report["meta"]["diffusers"]
    assert report["ceiling"]["bf16_matmul_tflops"] > 0
    unet = report["check"]["unet"]["lat8"]
    assert unet["equal_params"] and unet["equal_fwd_flops"]
    assert unet["ldmkit"]["params"] == unet["diffusers"]["params"] > 0
    vae = report["check"]["vae"]["px32"]
    assert vae["equal_params"] and vae["equal_decode_flops"] and vae["ldmkit"]["decode_flops"] > 0
    converted = report["check"]["converted"]["lat8"]  # a diffusers UNet through the converter: the same outputs
    assert converted["relative_error"] <= 1e-5 and converted["exact_within_1e-5"]
    assert converted["params"] == unet["diffusers"]["params"]
    assert report["infer"]["lat8"]["converted"]["eager"]["evals_s"] > 0
    assert report["infer"]["lat8"]["ldmkit+int8"]["eager"]["evals_s"] > 0  # int8 transformer GEMMs (torchao)
    for impl in ("ldmkit", "diffusers"):
        assert report["infer"]["lat8"][impl]["eager"]["evals_s"] > 0
        assert report["train"]["lat8"][impl]["eager"]["img_s"] > 0
        assert report["vae"][impl]["eager"]["img_s"] > 0
    for f in ("f1", "f4", "f8"):
        assert report["cost"][f]["train_img_s"] > 0 and report["cost"][f]["sample_img_s"] > 0
    assert report["cost"]["f1"]["latent"] == "32x32x3" and report["cost"]["f8"]["latent"] == "4x4x4"
    assert set(report["cost"]["speedup_f8_vs_pixel"]) == {"train_img_s", "train_img_s_encoding_on_the_fly",
                                                          "sample_img_s"}
    assert "skipped" in report["ddp"]  # on CPU only with --ddp-cpu
    assert any(s["item"] == "sync" for s in report["skipped"])  # the sync-debug mode needs CUDA
    table = (tmp_path / "gpu_vs_diffusers.md").read_text()
    for heading in ("Parameters and FLOPs", "converted to ldmkit", "Inference", "Training", "Where a training step",
                    "VAE decode", "Pixel vs latent", "DDP"):
        assert heading in table


@pytest.mark.slow  # spawns two processes that import torch (10-30 s on 2 busy cores)
def test_gpu_script_ddp_section_launches_two_processes(tmp_path):
    run_script("gpu_vs_diffusers", "--tiny", "--device", "cpu", "--only", "ddp", "--ddp-cpu", "--impl", "ldmkit",
               "--out", str(tmp_path))
    ddp = json.loads((tmp_path / "gpu_vs_diffusers.json").read_text())["ddp"]
    assert ddp["world1"]["img_s"] > 0 and ddp["world2"]["world_size"] == 2 and ddp["world2"]["img_s"] > 0
    assert ddp["world2"]["speedup"] == pytest.approx(ddp["world2"]["img_s"] / ddp["world1"]["img_s"])


@pytest.mark.slow  # spawns two processes that import torch
def test_ddp_worker_errors_come_back_as_the_measurement_error():
    spec = {"device": "cpu", "tiny": True, "size": -1, "batch": 2, "tokens": 8, "channels_last": False,
            "warmup": 1, "iters": 1, "timeout_s": 600}
    with pytest.raises(RuntimeError, match=r"rank \d: RuntimeError"):
        bench_module("ddp_scaling").measure_world(2, spec)


def test_training_variants_script_times_each_variant(tmp_path):
    run_script("train_variants", "--tiny", "--device", "cpu", "--compile-backend", "eager", "--size", "8",
               "--batch", "2", "--profile", "--out", str(tmp_path))
    report = json.loads((tmp_path / "train_variants.json").read_text())
    assert report["errors"] == []
    for variant in ("default", "flash-first", "max-autotune"):
        assert report[variant]["img_s"] > 0 and report[variant]["profile"]["busy_ms"] > 0
    assert [s["item"] for s in report["skipped"]] == ["cudagraphs", "float8"]  # CUDA only
    assert "| flash-first |" in (tmp_path / "train_variants.md").read_text()


def test_trainer_overhead_script_times_the_trainer_and_its_step_taken_apart(tmp_path):
    run_script("trainer_overhead", "--tiny", "--device", "cpu", "--modes", "eager", "--profile", "--out", str(tmp_path))
    report = json.loads((tmp_path / "trainer_overhead.json").read_text())
    assert report["errors"] == []
    for row in ("network", "+ema", "+guard", "trainer"):
        assert report[row]["eager"]["img_s"] > 0
    assert report["trainer"]["eager"]["batch"] == 4 and report["trainer"]["eager"]["logged_points"] >= 2
    assert report["+guard"]["eager"]["profile"]["busy_ms"] > 0
    assert "| +guard |" in (tmp_path / "trainer_overhead.md").read_text()


def test_trainer_overhead_times_only_the_rows_asked_for(tmp_path):
    run_script("trainer_overhead", "--tiny", "--device", "cpu", "--modes", "eager", "--rows", "+guard", "--out",
               str(tmp_path))
    report = json.loads((tmp_path / "trainer_overhead.json").read_text())
    assert report["+guard"]["eager"]["img_s"] > 0
    assert not any(row in report for row in ("network", "+ema", "trainer"))


def test_the_float8_variant_converts_exactly_the_transformer_linears():
    pytest.importorskip("torchao")
    from torchao.float8.float8_linear import Float8Linear

    from ldmkit.pipelines.quantize import transformer_linears

    variants, models = bench_module("train_variants"), bench_module("models")
    net = models.build_unet("ldmkit", models.text_unet_config(True), "cpu")
    chosen = set(transformer_linears(net))
    converted = variants.float8_training(net)
    float8 = {name for name, module in converted.named_modules() if isinstance(module, Float8Linear)}
    assert float8 == chosen and len(chosen) > 0
    assert any(isinstance(m, torch.nn.Linear) and not isinstance(m, Float8Linear) for m in converted.modules())


def test_inference_variants_script_times_each_variant_against_both_baselines(tmp_path):
    run_script("infer_variants", "--tiny", "--device", "cpu", "--compile-backend", "eager",
               "--variants", "graphs", "graphs+freezing", "diffusers", "--out", str(tmp_path))
    report = json.loads((tmp_path / "infer_variants.json").read_text())
    assert report["errors"] == []
    for variant in ("graphs", "graphs+freezing", "diffusers"):
        assert report[variant]["evals_s"] > 0 and report[variant]["compile_s"] >= 0
    table = (tmp_path / "infer_variants.md").read_text()
    assert "| graphs+freezing |" in table and "vs diffusers" in table


def test_gpu_script_budget_skips_items_instead_of_running_past_it(tmp_path):
    Runner = bench_module("measure").Runner
    run = Runner(tmp_path, "r", budget_s=10.0, meta={})
    assert run.item(("a",), 1.0, lambda: {"x": 1})["x"] == 1
    assert run.item(("b",), 60.0, lambda: {"x": 2}) is None
    assert run.item(("c",), 1.0, lambda: 1 / 0) is None
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["a"]["x"] == 1 and "b" not in saved and "ZeroDivisionError" in saved["c"]["error"]
    assert [s["item"] for s in saved["skipped"]] == ["b"] and [e["item"] for e in saved["errors"]] == ["c"]


def test_first_call_runs_once_and_resets_the_peak_for_what_follows(monkeypatch):
    measure = bench_module("measure")
    events = []
    monkeypatch.setattr(measure, "reset_peak_memory", lambda device: events.append("reset"))
    monkeypatch.setattr(measure, "peak_memory_gb", lambda device: 1.5 if events[-1] == "call" else 0.0)
    done = measure.first_call(lambda: events.append("call"), torch.device("cpu"))
    # one call between two resets: the one-off peak is reported apart, and the counter starts afresh after it
    assert events == ["reset", "call", "reset"]
    assert done["first_call_peak_gb"] == 1.5 and done["first_call_s"] >= 0.0
    compiled = measure.first_call(lambda: events.append("call"), torch.device("cpu"), compiled=True)
    assert set(compiled) == {"compile_s", "first_call_peak_gb"}  # a compiled function's first call is its compile


def test_profile_groups_kernels_by_what_they_do():
    group_of = bench_module("profile_step").group_of
    assert group_of("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32") == "convolution"
    assert group_of("nvjet_tst_128x256_64x4_2x1_v_bz_coopB_TNT") == "matmul"
    assert group_of("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    assert group_of("void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<float>") == "normalization"
    assert group_of("void at::native::(anonymous namespace)::fused_adamw_kernel") == "optimizer"
    assert group_of("triton_poi_fused_add_silu_3") == "elementwise & reductions"
    nocast = "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::{}>"
    assert group_of(nocast.format("CUDAFunctor_add<c10::BFloat16>")) == "elementwise & reductions"
    assert group_of(nocast.format("direct_copy_kernel_cuda(at::TensorIteratorBase&)")) == "layout & copies"
    assert group_of("some_unknown_kernel") == "other"


def _layout_step(x: torch.Tensor, w: torch.Tensor):
    def step():
        torch.nn.functional.conv2d(x.contiguous(memory_format=torch.channels_last), w)  # one explicit copy

    return step


def test_copy_origins_name_the_op_its_shapes_and_the_line_that_asked():
    profile_steps = bench_module("profile_step").profile_steps
    x, w = torch.randn(2, 3, 16, 16), torch.randn(4, 3, 3, 3)
    out = profile_steps(_layout_step(x, w), torch.device("cpu"), steps=2, warmup=1, origins=True)
    by_shape = {o["shapes"].split("], ")[0] + "]": o for o in out["copy_origins"]}
    assert set(by_shape) == {"[[2, 3, 16, 16]", "[[4, 3, 3, 3]"}, out["copy_origins"]
    # the step's own copy, once per step at the outermost op (its clone → copy_ are not rows of their own) ...
    mine = by_shape["[[2, 3, 16, 16]"]
    assert (mine["op"], mine["calls"], mine["within"]) == ("aten::contiguous", 1, "")
    assert "test_bench_script.py" in mine["caller"]
    # ... and the one it causes: a convolution of a channels-last input converts its contiguous weight
    weight = by_shape["[[4, 3, 3, 3]"]
    assert weight["calls"] == 1 and "aten::_convolution" in weight["within"]
    assert "test_bench_script.py" in weight["caller"]
    assert "copy_origins" not in profile_steps(_layout_step(x, w), torch.device("cpu"), steps=1, warmup=0)


def test_stored_profiles_lose_the_annotation_ranges_they_counted_twice():
    drop_annotations = bench_module("profile_step").drop_annotations
    adam = "void at::native::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata<4>, fused_adamw>"
    conv = "sm90_xmma_fprop_implicit_gemm_bf16"
    stored = {"busy_ms": 30.0, "wall_ms": 40.0, "groups_ms": {"optimizer": 18.0, "convolution": 12.0},
              "top": [{"name": "Optimizer.step#AdamW.step"}, {"name": adam}, {"name": conv}],
              "kernels": {"Optimizer.step#AdamW.step": [9.0, 1], adam: [9.0, 46], conv: [12.0, 10]}}
    fixed = drop_annotations(stored)
    assert fixed["busy_ms"] == 21.0 and fixed["groups_ms"] == {"convolution": 12.0, "optimizer": 9.0}
    assert fixed["idle_share"] == pytest.approx(1 - 21 / 40)
    assert [k["name"] for k in fixed["top"]] == [adam, conv] and "Optimizer.step#AdamW.step" not in fixed["kernels"]
    assert stored["busy_ms"] == 30.0  # the stored report is not changed in place


def test_count_check_tells_equal_from_different_networks():
    pytest.importorskip("diffusers")
    models = bench_module("models")
    compare, unet_counts = models.compare, models.unet_counts
    cfg = models.text_unet_config(tiny=True)
    same = compare({"ldmkit": unet_counts("ldmkit", cfg, 8, 4), "diffusers": unet_counts("diffusers", cfg, 8, 4)})
    assert same["equal_params"] and same["equal_fwd_flops"]
    deeper = dataclasses.replace(cfg, transformer_depth=2)  # one more transformer block per attention level
    differ = compare({"ldmkit": unet_counts("ldmkit", deeper, 8, 4), "diffusers": unet_counts("diffusers", cfg, 8, 4)})
    assert not differ["equal_params"] and not differ["equal_fwd_flops"] and differ["ratio_params"] > 1


# ------------------------------------------------------------------------------------ CPU sampling script
def test_cpu_sampling_script_compares_precisions(tmp_path):
    run_script("cpu_sampling", "--tiny", "--threads", "1", "--out", str(tmp_path))
    report = json.loads((tmp_path / "cpu_sampling.json").read_text())
    assert report["errors"] == []
    for model in ("demo", "ldm8-256"):
        for key in ("fp32_t1", "bf16_t1"):
            entry = report["models"][model][key]
            assert entry["seconds"] > 0 and 0 <= entry["decode_share"] <= 1
        assert set(report["speedups"][model]) == {"bf16_vs_fp32_t1"}
    assert report["models"]["demo"]["fp32_t1"]["guidance"] == 4.0  # the demo samples with guidance
    assert report["models"]["ldm8-256"]["fp32_t1"]["image_size"] == "64x64"
    assert "| demo |" in (tmp_path / "cpu_sampling.md").read_text()


def test_cpu_sampling_script_compares_thread_counts(tmp_path):
    run_script("cpu_sampling", "--tiny", "--models", "demo", "--precisions", "fp32", "--threads", "1", "2",
               "--out", str(tmp_path))
    report = json.loads((tmp_path / "cpu_sampling.json").read_text())
    assert report["models"]["demo"]["fp32_t2"]["threads"] == 2
    assert set(report["speedups"]["demo"]) == {"fp32_t2_vs_t1"}
    assert torch.get_num_threads() == 1  # the test session's setting is restored


# ---------------------------------------------------------------------------------------- fast inference path
def tiny_unet() -> UNet:
    torch.manual_seed(0)
    net = UNet.from_preset("tiny-cond")
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # a non-zero output to compare
    return net.eval()


def tiny_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    cond = Conditioning(context=torch.randn(2, 3, 12, generator=g), vector=torch.randn(2, 6, generator=g),
                        concat=torch.randn(2, 2, 8, 8, generator=g))
    return x, torch.tensor([10, 900]), cond


def test_optimize_network_bf16_channels_last_matches_fp32():
    net = tiny_unet()
    x, t, cond = tiny_inputs()
    with torch.no_grad():
        reference = net(x, t, cond)
        fast = optimize_network(net, compile=False)
        assert fast is net and net.conv_in.weight.dtype == torch.bfloat16
        assert net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fast(x, t, cond)
    assert out.shape == reference.shape
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)


def test_optimize_network_compiled_form_gives_the_same_output():
    net = tiny_unet()
    x, t, cond = tiny_inputs()
    with torch.no_grad():
        reference = net(x, t, cond)
        compiled = optimize_network(net, compile=True, mode="default", bf16_weights=False, channels_last=False,
                                    backend="eager")  # traced by dynamo; the eager backend keeps the test fast
        assert compiled is not net
        torch.testing.assert_close(compiled(x, t, cond), reference)
    with pytest.raises(ConfigError, match="compile mode"):
        optimize_network(net, mode="fastest")


def test_cuda_graph_outputs_are_copied_out_of_the_replay_buffer():
    buffer = torch.zeros(1)

    class Replays(torch.nn.Module):  # stands in for a CUDA-graph replay: the same output tensor each call
        def forward(self, x, t, cond=None):
            return buffer.copy_(x)

    wrapped = _FreshOutputs(Replays())
    first = wrapped(torch.ones(1), None)
    second = wrapped(torch.full((1,), 2.0), None)
    assert first.item() == 1.0 and second.item() == 2.0 and first.data_ptr() != buffer.data_ptr()


def tiny_pipeline() -> LatentDiffusionPipeline:
    ae = build_autoencoder(AutoencoderConfig(kind="kl", base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                             latent_channels=4, mid_attention=False))
    net = UNet.from_preset("tiny")
    return LatentDiffusionPipeline(LatentDiffusionModel(
        unet=net, schedule=NoiseSchedule(), conditioner=build_conditioner(ConditionerConfig(kind="none")),
        autoencoder=ae.eval(), latent_size=(4, 4)))


def test_pipeline_optimize_is_a_no_op_on_cpu():
    pipe = tiny_pipeline()
    network = pipe.denoiser.network
    before = pipe(n=1, steps=2, output="tensor", progress=False)
    assert pipe.optimize() is pipe
    assert pipe.optimizations == () and pipe.denoiser.network is network and pipe.precision == "auto"
    assert pipe.unet.conv_in.weight.dtype == torch.float32
    torch.testing.assert_close(pipe(n=1, steps=2, output="tensor", progress=False), before)
    with pytest.raises(ConfigError, match="compile mode"):
        pipe.optimize(mode="fastest")


def test_pipeline_optimize_converts_weights_and_still_samples(monkeypatch):
    """The GPU fast path without compiling, run on the CPU: bf16 UNet and autoencoder, channels-last."""
    from ldmkit.pipelines import text2img

    monkeypatch.setattr(text2img, "_has_fast_path", lambda device: True)
    pipe = tiny_pipeline()
    reference = pipe(n=2, steps=2, output="tensor", progress=False)
    assert pipe.optimize(compile=False) is pipe
    assert pipe.optimizations == ("bf16_weights", "channels_last") and pipe.precision == "bf16"
    assert pipe.unet.conv_in.weight.dtype == torch.bfloat16
    assert pipe.autoencoder.decoder.conv_out.weight.dtype == torch.bfloat16
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    images = pipe(n=2, steps=2, output="tensor", progress=False)
    assert images.dtype == torch.float32 and images.shape == reference.shape
    torch.testing.assert_close(images, reference, atol=0.1, rtol=0.1)
    assert pipe.optimize() is pipe and pipe.optimizations == ("bf16_weights", "channels_last")  # once only


def test_pipeline_optimize_compiles_the_decoder_too(monkeypatch):
    """With compile, decoding goes through torch.compile of the first stage's decoder (traced here by dynamo
    without inductor's code generation, which keeps the test fast on a CPU) and gives the same images."""
    from ldmkit.pipelines import text2img

    monkeypatch.setattr(text2img, "_has_fast_path", lambda device: True)
    real, decodes = torch.compile, []

    def tracing_only(fn, **kwargs):
        traced = real(fn, backend="eager")
        if getattr(fn, "__name__", "") != "decode":
            return traced
        return lambda *a, **k: decodes.append(1) or traced(*a, **k)

    monkeypatch.setattr(torch, "compile", tracing_only)
    pipe = tiny_pipeline()
    reference = pipe(n=2, steps=2, output="tensor", progress=False)
    pipe.optimize(bf16_weights=False, channels_last=False)
    assert pipe.optimizations == ("compile:reduce-overhead", "compile_decoder")
    images = pipe(n=2, steps=2, output="tensor", progress=False)
    assert decodes == [1]  # one batch decoded, through the compiled decoder
    torch.testing.assert_close(images, reference)
    eager = tiny_pipeline().optimize(bf16_weights=False, channels_last=False, compile_decoder=False)
    assert eager.model.fast_decode is None and "compile_decoder" not in eager.optimizations


def test_ldm_sample_accepts_compile_with_an_optional_mode():
    parser = build_parser()
    assert parser.parse_args(["sample", "--model", "m", "--compile"]).compile == "reduce-overhead"
    assert parser.parse_args(["sample", "--model", "m", "--compile", "max-autotune"]).compile == "max-autotune"
    assert parser.parse_args(["sample", "--model", "m"]).compile is None


# ------------------------------------------------------------------------------- no host syncs while sampling
HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize("name", samplers.names())
def test_sampling_steps_never_read_tensors_on_the_host(name, monkeypatch):
    """After the ladder is prepared, a step must not read a tensor's value on the host: on a GPU each such read
    (.item(), float(t), if t: …) waits for the device and stalls the launch queue."""
    guard = {"on": False, "reads": []}

    def forbid(method_name):
        original = getattr(torch.Tensor, method_name)

        def checked(self, *args, **kwargs):
            if guard["on"]:
                guard["reads"].append(method_name)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method_name, checked)

    for method_name in HOST_READS:
        forbid(method_name)
    from ldmkit.samplers import run as sampling_run

    class GuardAfterPreparation(sampling_run.LadderModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            guard["on"] = True  # the ladder and the guided model are ready: what follows is the sampling loop

    monkeypatch.setattr(sampling_run, "LadderModel", GuardAfterPreparation)
    net = tiny_unet()
    x, _, cond = tiny_inputs()
    uncond = Conditioning(context=torch.zeros_like(cond.context), vector=torch.zeros_like(cond.vector),
                          concat=cond.concat)
    options = samplers.SamplerOptions(sampler=name, steps=3, guidance=2.0, guidance_rescale=0.5,
                                      eta=1.0 if samplers.get(name).eta else 0.0)
    out = samplers.sample(options, Denoiser(net, NoiseSchedule()), x, cond, uncond,
                          generator=torch.Generator().manual_seed(0))
    guard["on"] = False
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert guard["reads"] == []


# ------------------------------------------------------------------------------------ round-2 benchmark scripts
def test_vae_tiling_script_measures_both_sides_whole_and_tiled(tmp_path):
    pytest.importorskip("diffusers")
    run_script("vae_tiling", "--tiny", "--device", "cpu", "--out", str(tmp_path))
    report = json.loads((tmp_path / "vae_tiling.json").read_text())
    for size in ("64", "128"):
        for side in ("ldmkit", "diffusers"):
            row = report["decode"][size][side]
            assert row["whole_ms"] > 0 and row["tiled_ms"] > 0 and row["tiled_vs_whole"] >= 0
    assert report["decode"]["128"]["ldmkit"]["tiled_vs_whole"] < 0.1  # the blend hides the seams on random weights


def test_finetune_memory_script_trains_every_variant_with_tiny_unets(tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    run_script("finetune_memory", "--tiny", "--device", "cpu", "--iters", "1", "--out", str(tmp_path))
    report = json.loads((tmp_path / "finetune_memory.json").read_text())
    rows = report["train"]
    assert set(rows) == {"full", "full+ckpt", "lora", "lora+ckpt"}  # 8-bit AdamW needs CUDA: skipped and listed
    assert any("8-bit" in s["reason"] for s in report["skipped"])
    for side in ("ldmkit", "diffusers"):
        assert rows["lora"][side]["trainable"] < rows["full"][side]["trainable"] / 5
        assert rows["full"][side]["img_s"] > 0


def test_latency_script_times_every_part_of_one_image_on_both_sides(tmp_path):
    pytest.importorskip("diffusers")
    run_script("latency", "--tiny", "--device", "cpu", "--iters", "1", "--out", str(tmp_path))
    report = json.loads((tmp_path / "latency.json").read_text())
    for side in ("ldmkit", "diffusers"):
        row = report["latency"][side]
        assert all(row[k] > 0 for k in ("text_ms", "unet_eval_ms", "sampling_ms", "decode_ms", "end_to_end_ms"))
        assert row["sampling_ms"] > row["unet_eval_ms"]  # 25 guided steps cost more than one evaluation
