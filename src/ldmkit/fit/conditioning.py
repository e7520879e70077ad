"""What the fitted model is conditioned on, from ``--captions`` / ``--labels`` / ``--unconditional`` and the data.

Without a flag the data decides: captions when every image has one, class labels when every image lies in a
class sub-folder (or has a manifest label) and there are at least two classes, else nothing. Data that would
condition some images and not others is refused, since the model would learn the missing ones as the null
condition of classifier-free guidance.
"""

from __future__ import annotations

from ldmkit.conditioning import ConditionerConfig
from ldmkit.conditioning.config import TextEncoderConfig
from ldmkit.errors import DataError
from ldmkit.fit.survey import DataSurvey

CAPTIONS, LABELS, NONE = "captions", "labels", "none"
DROP_PROB = 0.1  # condition dropout for classifier-free guidance, as every conditional preset uses


def choose_conditioning(survey: DataSurvey, wanted: str | None) -> str:
    """``captions``, ``labels`` or ``none``: ``wanted`` checked against the data, or chosen from it."""
    if wanted == CAPTIONS or (wanted is None and survey.has_captions):
        _check_captions(survey)
        return CAPTIONS
    if wanted == LABELS:
        _check_labels(survey)
        return LABELS
    if wanted is None and survey.all_labelled:
        return LABELS
    return NONE


def _check_captions(survey: DataSurvey) -> None:
    if not survey.has_captions:
        raise DataError(f"--captions, but no image of {survey.path} has a caption; put one beside each image "
                        "(cat/1.png -> cat/1.txt) or in a manifest.csv caption column, or drop --captions")
    if not survey.all_captioned:
        missing = survey.count - survey.captioned
        raise DataError(f"{survey.captioned} of {survey.count} images have captions and {missing} do not "
                        f"(e.g. {', '.join(survey.uncaptioned_examples)}); caption them all, or pass --labels or "
                        "--unconditional to train without captions")


def _check_labels(survey: DataSurvey) -> None:
    if len(survey.class_names) < 2:
        raise DataError(f"--labels needs at least two classes, and {survey.path} has {len(survey.class_names)}; "
                        "put each class's images in its own sub-folder (or a manifest label column)")
    if survey.labelled < survey.count:
        raise DataError(f"{survey.count - survey.labelled} images have no class (e.g. "
                        f"{', '.join(survey.unlabelled_examples)}); move them into a class sub-folder or drop --labels")


def conditioner_config(kind: str, survey: DataSurvey, text_width: int) -> ConditionerConfig:
    """The conditioner of the plan: a text transformer trained with the UNet (no asset needed; the demo's
    design), class embeddings, or none."""
    if kind == CAPTIONS:
        heads = max(1, text_width // 64)
        return ConditionerConfig(kind="text", embed_dim=text_width, drop_prob=DROP_PROB,
                                 text=TextEncoderConfig(width=text_width, depth=2, heads=heads, max_length=32))
    if kind == LABELS:
        return ConditionerConfig(kind="class", num_classes=len(survey.class_names), embed_dim=4 * text_width,
                                 drop_prob=DROP_PROB)
    return ConditionerConfig(kind="none")


__all__ = ["CAPTIONS", "LABELS", "NONE", "choose_conditioning", "conditioner_config"]
