"""The tasks a model can do, in one registry that the pipelines, the command line and the web demo read.

A task is suited to a model by what its conditioning offers: models without an image condition generate,
edit (img2img) and inpaint zero-shot; a model trained with the masked image inpaints; one trained with a
low-resolution image upscales; one trained with segmentation maps synthesizes from maps. Each pipeline
module registers its task; :func:`tasks_for` lists a model's tasks and :func:`check_task` refuses an
unsuited one in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ldmkit.conditioning.config import ConditionerConfig
from ldmkit.config import Registry
from ldmkit.errors import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    label: str  # how a user interface names it
    order: int  # where interfaces list it
    pipeline: type  # the pipeline class that runs it
    suits: Callable[[ConditionerConfig], bool]
    refusal: Callable[[ConditionerConfig], str]  # why it does not suit a model, in one line


TASKS: Registry[TaskSpec] = Registry("task")


def register_task(spec: TaskSpec) -> TaskSpec:
    return TASKS.register(spec.name)(spec)


def tasks_for(conditioning: ConditionerConfig) -> list[str]:
    """The names of the tasks a model with this conditioning can do, in interface order."""
    specs = [TASKS.get(name) for name in TASKS.names()]
    return [spec.name for spec in sorted(specs, key=lambda s: s.order) if spec.suits(conditioning)]


def check_task(name: str, conditioning: ConditionerConfig) -> None:
    spec = TASKS.get(name)
    if not spec.suits(conditioning):
        raise ConfigError(spec.refusal(conditioning))


def without_image_condition(conditioning: ConditionerConfig) -> bool:
    return not conditioning.concat.present


def plain_model_refusal(task: str) -> Callable[[ConditionerConfig], str]:
    """The refusal of a task that works with any model without an image condition of its own."""
    return lambda c: (f"this model takes a '{c.concat.kind}' image condition; {task} works with unconditional, "
                      "class or text models — use the pipeline of the task it was trained for")


__all__ = ["TASKS", "TaskSpec", "check_task", "plain_model_refusal", "register_task", "tasks_for",
           "without_image_condition"]
