"""One registry says which tasks a model can do; every pipeline refuses an unsuited model the same way."""

from __future__ import annotations

import pytest

from ldmkit.conditioning import ConcatConfig, ConditionerConfig
from ldmkit.errors import ConfigError
from ldmkit.pipelines import TASKS, check_task, tasks_for

PLAIN = ["generate", "img2img", "inpaint"]


@pytest.mark.parametrize("kind", ["none", "class", "text", "pretrained_text"])
def test_models_without_an_image_condition_generate_edit_and_inpaint(kind):
    extra = {"num_classes": 3} if kind == "class" else {}
    assert tasks_for(ConditionerConfig(kind=kind, **extra)) == PLAIN


@pytest.mark.parametrize("concat,tasks", [("masked_image", ["inpaint"]), ("low_res", ["upscale"]),
                                          ("semantic", ["synthesize"])])
def test_image_conditioned_models_do_the_task_they_were_trained_for(concat, tasks):
    conditioning = ConditionerConfig(concat=ConcatConfig(kind=concat, semantic_classes=3))
    assert tasks_for(conditioning) == tasks
    for name in set(TASKS.names()) - set(tasks):
        with pytest.raises(ConfigError, match=f"'{concat}'") as refused:
            check_task(name, conditioning)
        assert len(str(refused.value).splitlines()) == 1


def test_every_task_names_its_pipeline_and_has_a_place():
    specs = [TASKS.get(name) for name in TASKS.names()]
    assert sorted(s.order for s in specs) == list(range(1, len(specs) + 1))
    assert all(callable(s.pipeline) and s.label for s in specs)
    with pytest.raises(ConfigError, match="unknown task"):
        TASKS.get("upscal")
