"""`ldm fit` on images below 32 px: the plan's LPIPS backbone must take images that small.

The CPU row's first-stage preset (synthetic-kl-f4) trains with LPIPS-AlexNet, which refuses images under 32 px;
a folder of 28 px images (Fashion-MNIST as PNGs) is planned at 16 px and stopped at the first autoencoder step
with "LPIPS-alex needs images of at least 32 px a side". The plan now swaps in VGG16 (16 px and up) there.
"""

from __future__ import annotations

import pytest

from ldmkit.autoencoders.lpips import _MIN_SIDE
from ldmkit.fit.estimates import DeviceInfo
from ldmkit.fit.plan import PlanRequest, make_plan
from ldmkit.fit.survey import DataSurvey

CPU = DeviceInfo("cpu", 16 * 2**30)
H200 = DeviceInfo("gpu", 140 * 2**30, 1, "H200")


def survey(side: int, count: int = 60_000) -> DataSurvey:
    return DataSurvey(path="data", count=count, sizes={f"{side}x{side}": count}, short_side=side, channels=1,
                      labelled=count, class_names=("a", "b"), class_counts=(count // 2,) * 2, captioned=0,
                      uncaptioned_examples=(), unlabelled_examples=(), label_source="sub-folder")


@pytest.mark.parametrize("side, device", [(28, CPU), (16, CPU), (28, H200), (32, CPU), (64, CPU)])
def test_the_planned_lpips_backbone_takes_the_planned_resolution(side, device):
    plan = make_plan(survey(side), device, PlanRequest(budget_seconds=3600, conditioning="labels"))
    assert plan.ae_loss.perceptual_weight > 0
    assert plan.resolution >= _MIN_SIDE[plan.ae_loss.perceptual_net]


def test_the_preset_backbone_is_kept_where_it_fits():
    plan = make_plan(survey(32), CPU, PlanRequest(budget_seconds=3600, conditioning="labels"))
    assert plan.resolution == 32 and plan.ae_loss.perceptual_net == "alex"  # synthetic-kl-f4's own choice
