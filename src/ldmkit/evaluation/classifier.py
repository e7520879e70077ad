"""Accuracy of class-conditional samples under a classifier supplied by the user.

A classifier is any callable ``images [B, 3, H, W] in [-1, 1] → logits [B, K]``. :func:`load_classifier`
also builds one from

- ``"efflite0"``: the ImageNet-1k EfficientNet-Lite0 of the ``efficientnet-lite0`` asset (for models
  conditioned on ImageNet class indices), or
- a model directory of kind ``classifier`` whose config names a registered architecture, e.g.
  ``{"architecture": "efficientnet-lite0", "num_classes": 10, "resolution": 224}`` with its weights in
  ``model.safetensors`` (written with :func:`ldmkit.io.model_dir.save_model_dir`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ldmkit.config import Registry, from_dict, option
from ldmkit.errors import ConfigError
from ldmkit.io.model_dir import load_state_strict, load_weights, read_model_dir

Classifier = Callable[[torch.Tensor], torch.Tensor]
ClassifierSource = str | Path | Classifier

CLASSIFIER_KIND = "classifier"
# architecture name → factory(num_classes) → nn.Module returning logits (or (features, logits)).
CLASSIFIER_ARCHITECTURES: Registry[Callable[[int], nn.Module]] = Registry("classifier architecture")


@dataclass(frozen=True)
class ClassifierConfig:
    """``config`` of a ``classifier`` model directory."""

    architecture: str = option("efficientnet-lite0", help="registered classifier network")
    num_classes: int = option(1000, help="number of classes (logits)", min=2)
    resolution: int = option(224, help="square input side the images are resized to", min=8)


@CLASSIFIER_ARCHITECTURES.register("efficientnet-lite0")
def _efficientnet_lite0(num_classes: int) -> nn.Module:
    from ldmkit.evaluation.efficientnet_lite import EfficientNetLite0

    return EfficientNetLite0(num_classes=num_classes)


class ModelDirClassifier:
    """A classifier network with the efflite preprocessing (8-bit, antialiased resize, (x − 0.5) / 0.5)."""

    def __init__(self, network: nn.Module, resolution: int, device: torch.device | str = "cpu"):
        self.network = network.eval().requires_grad_(False).to(device)
        self.resolution = resolution
        self.device = torch.device(device)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from ldmkit.evaluation.efficientnet_lite import preprocess_efflite

        out = self.network(preprocess_efflite(images.to(self.device), self.resolution))
        logits = out[-1] if isinstance(out, tuple) else out
        return logits.float()  # [B, K]


def load_classifier(source: ClassifierSource, *, device: torch.device | str = "cpu") -> Classifier:
    """A callable classifier from a callable, ``"efflite0"`` or a ``classifier`` model directory."""
    if callable(source):
        return source
    if str(source) == "efflite0":
        from ldmkit.evaluation.efficientnet_lite import build_efflite0

        return build_efflite0(device=device).logits
    info = read_model_dir(source, kind=CLASSIFIER_KIND)
    config = from_dict(ClassifierConfig, info.config)
    network = CLASSIFIER_ARCHITECTURES.get(config.architecture)(config.num_classes)
    load_state_strict(network, load_weights(info), str(info.path))
    return ModelDirClassifier(network, config.resolution, device)


def classification_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class equals the label: logits [N, K], labels [N]."""
    if logits.shape[0] != labels.shape[0]:
        raise ConfigError(f"{logits.shape[0]} predictions but {labels.shape[0]} labels")
    if labels.numel() == 0:
        raise ConfigError("classifier accuracy needs at least one labelled sample")
    if int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
        raise ConfigError(f"labels range over [{int(labels.min())}, {int(labels.max())}] but the classifier has "
                          f"{logits.shape[1]} classes")
    return float((logits.argmax(dim=1).cpu() == labels.cpu().long()).double().mean())
