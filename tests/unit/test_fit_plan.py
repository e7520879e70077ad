"""The plan of `ldm fit` is a pure function of the data survey, the device and the budget (ldmkit.fit.plan)."""

from __future__ import annotations

import pytest

from ldmkit.errors import ConfigError
from ldmkit.fit.estimates import DeviceInfo
from ldmkit.fit.plan import (EPOCH_CAP_FLOOR, GOOD_LDM_IMAGES, MAX_EPOCHS, MIN_AE_STEPS, MIN_LDM_STEPS, PlanRequest,
                             _plan_at, make_plan, replan)
from ldmkit.fit.survey import DataSurvey
from ldmkit.fit.table import CPU_ROWS, GPU_ROWS

GIB = 2**30
H200 = DeviceInfo("gpu", 140 * GIB, 1, "H200")
CPU = DeviceInfo("cpu", 16 * GIB)


def survey(count: int, side: int, channels: int = 3, classes: int = 3) -> DataSurvey:
    return DataSurvey(path="data", count=count, sizes={f"{side}x{side}": count}, short_side=side, channels=channels,
                      labelled=count, class_names=tuple(f"c{i}" for i in range(classes)),
                      class_counts=(count // classes,) * classes, captioned=0, uncaptioned_examples=(),
                      unlabelled_examples=(), label_source="sub-folder")


# (images, side, device, budget minutes) -> (row, resolution, f)
CASES = [
    (60_000, 32, H200, 60, "gpu-32", 32, 2),
    (60_000, 28, H200, 60, "gpu-32", 16, 2),  # 28 px images train at the 16 px size below them
    (3_000, 64, H200, 60, "gpu-64", 64, 4),
    (3_000, 128, H200, 60, "gpu-128", 128, 4),
    (30_000, 512, H200, 60, "gpu-256", 256, 4),
    (30_000, 512, H200, 5, "gpu-64", 64, 4),  # a short budget falls back to a smaller size
    (24, 16, CPU, 10, "cpu-32", 16, 2),  # f lowered so the latent keeps 8 cells a side
    (3_000, 64, CPU, 60, "cpu-64", 64, 4),
    (3_000, 64, CPU, 5, "cpu-32", 32, 4),
    (3_000, 512, CPU, 600, "cpu-64", 64, 4),  # CPU plans stop at 64 px
]


@pytest.mark.parametrize("count, side, device, minutes, row, resolution, f", CASES)
def test_the_plan_follows_the_data_the_device_and_the_budget(count, side, device, minutes, row, resolution, f):
    plan = make_plan(survey(count, side), device, PlanRequest(minutes * 60, "labels"))
    assert (plan.row, plan.resolution, plan.downsample_factor) == (row, resolution, f)
    assert plan.latent_shape[1] >= 8
    assert plan.ae.steps >= MIN_AE_STEPS and plan.ldm.steps >= MIN_LDM_STEPS
    assert plan.ldm.batch <= count and plan.ae.batch <= count
    # The trainers stop on time: each gets its share of the budget, and the whole plan fits it.
    assert plan.ae.minutes + plan.ldm.minutes <= minutes
    assert plan.estimate.total_minutes <= minutes * 1.05
    assert plan.conditioner.takes_labels and plan.conditioner.num_classes == 3


def test_more_time_means_more_steps_up_to_the_presets():
    steps = [make_plan(survey(60_000, 32), H200, PlanRequest(m * 60, "labels")).ldm.steps for m in (5, 20, 600)]
    assert steps[0] < steps[1] <= steps[2] == 20_000  # fashion-mnist-class trains 20,000 steps


def test_a_gpu_plan_trains_a_smaller_size_rather_than_a_larger_one_briefly():
    # A 5-minute fit of 3,374 emoji at 128 px trained 32 k diffusion images and scored FD 253 (docs/results/fit.md).
    data = survey(3_374, 256)
    short, long = (make_plan(data, H200, PlanRequest(m * 60, "labels")) for m in (5, 60))
    assert short.resolution < long.resolution
    for plan in (short, long):
        assert plan.ldm.steps * plan.ldm.batch >= GOOD_LDM_IMAGES
        larger = 2 * plan.resolution
        if larger <= 256:  # the size above it would have trained too little in the same budget
            row = next(r for r in GPU_ROWS if r.resolution >= larger)
            above = _plan_at(row, larger, data, H200, PlanRequest(plan.budget_minutes * 60, "labels"))
            assert above is None or above.ldm.steps * above.ldm.batch < GOOD_LDM_IMAGES
    # On a CPU no size reaches that many: the size stays the largest the budget trains at all.
    assert make_plan(survey(3_000, 64), CPU, PlanRequest(3600, "labels")).resolution == 64


def test_small_data_caps_the_steps_by_epochs():
    plan = make_plan(survey(24, 16), H200, PlanRequest(600 * 60, "labels"))
    assert plan.ldm.steps < 2_000


def test_the_epoch_cap_leaves_a_tiny_folder_enough_first_stage_steps():
    # 100 epochs of 49 photos were 153 steps; 108 reconstructed worse than bicubic (docs/results/fit.md).
    plan = make_plan(survey(55, 128), H200, PlanRequest(600 * 60, "none"))
    assert plan.ae.steps == EPOCH_CAP_FLOOR["ae"] > MAX_EPOCHS["ae"] * 49 / plan.ae.batch


def test_the_evaluation_samples_in_batches_of_the_diffusion_batch():
    # Sampling 16 at a time drew 40 img/s on an H200; the trained batch is known to fit in memory.
    big = make_plan(survey(60_000, 32), H200, PlanRequest(600 * 60, "labels"))
    small = make_plan(survey(30_000, 256), DeviceInfo("gpu", 24 * GIB), PlanRequest(600 * 60, "none"))
    assert big.sampling_batch == big.ldm.batch == 256
    assert small.sampling_batch == small.ldm.batch < big.sampling_batch
    lowered = replan(big, ["ldm.batch=32"], H200, survey(60_000, 32))
    assert lowered.sampling_batch == 32  # follows a diffusion batch lowered for memory
    assert replan(big, ["ldm.batch=32", "eval.batch=8"], H200, survey(60_000, 32)).sampling_batch == 8


def test_grey_images_get_one_latent_channel_per_three():
    colour = make_plan(survey(60_000, 32, channels=3), H200, PlanRequest(3600, "none"))
    grey = make_plan(survey(60_000, 32, channels=1), H200, PlanRequest(3600, "none"))
    assert (colour.autoencoder.latent_channels, grey.autoencoder.latent_channels) == (3, 1)
    assert grey.autoencoder.in_channels == 1 and grey.conditioner.unconditional


def test_a_small_device_lowers_the_batch():
    big = make_plan(survey(30_000, 256), H200, PlanRequest(600 * 60, "none"))
    small = make_plan(survey(30_000, 256), DeviceInfo("gpu", 24 * GIB), PlanRequest(600 * 60, "none"))
    assert small.ae.batch < big.ae.batch or small.resolution < big.resolution
    assert small.estimate.ae_memory_bytes <= 0.85 * 24 * GIB


def test_reusing_an_autoencoder_gives_its_time_to_the_diffusion_model():
    trained = make_plan(survey(60_000, 32), H200, PlanRequest(10 * 60, "labels"))
    first = {"kind": "kl", "channel_mult": [1, 2], "latent_channels": 3, "base_channels": 16}
    reused = make_plan(survey(60_000, 32), H200, PlanRequest(10 * 60, "labels", autoencoder_dir="ae",
                                                            autoencoder_config=first))
    assert not reused.trains_autoencoder and reused.ldm.steps > trained.ldm.steps
    assert reused.autoencoder.base_channels == 16


def test_overrides_change_the_plan_and_its_estimate():
    plan = make_plan(survey(24, 16), CPU, PlanRequest(600, "labels"))
    tiny = replan(plan, ["ldm.steps=4", "unet.model_channels=16", "unet.num_head_channels=8"], CPU, survey(24, 16))
    assert tiny.ldm.steps == 4 and tiny.unet.model_channels == 16
    assert tiny.estimate.unet_parameters < plan.estimate.unet_parameters
    with pytest.raises(ConfigError, match="unknown config key 'ldm.stpes'"):
        replan(plan, ["ldm.stpes=4"], CPU, survey(24, 16))
    assert replan(plan, ["eval.lpips_net=alex"], CPU, survey(24, 16)).eval.lpips_net == "alex"
    with pytest.raises(ConfigError, match="lpips_net"):
        replan(plan, ["eval.lpips_net=squeeze"], CPU, survey(24, 16))


def test_a_budget_too_small_for_any_plan_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"a time budget of 5s is too small for any plan.*give --time \d+m") as err:
        make_plan(survey(24, 16), CPU, PlanRequest(5, "labels"))
    assert "\n" not in str(err.value)


def test_a_device_too_small_for_the_smallest_plan_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="too small for the smallest plan") as err:
        make_plan(survey(600, 32), DeviceInfo("gpu", 2**28, 1, "tiny GPU"), PlanRequest(3600, "labels"))
    assert "\n" not in str(err.value)


def test_every_row_cites_its_presets_and_numbers():
    from ldmkit.config.loading import resolve_preset

    for row in GPU_ROWS + CPU_ROWS:
        resolve_preset(row.autoencoder_preset, "autoencoder")
        resolve_preset(row.diffusion_preset, "diffusion")
        assert "docs/results/" in row.source or "demo" in row.source or "extrapolated" in row.source
