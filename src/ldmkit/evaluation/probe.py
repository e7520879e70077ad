"""A linear probe: what a feature network's embedding says about a label, fitted on real images, applied to samples.

Generated images are asked whether they show the right *kind* of thing (an emoji's category, an image's style)
without a classifier trained for the purpose: multinomial logistic regression on standardised features of real
labelled images (the linear evaluation of representation learning), then its predictions on samples.
"""

from __future__ import annotations

import torch


class LinearProbe:
    """Multinomial logistic regression ``softmax(((f - μ) / σ) W + b)`` on features ``f`` [N, D].

    Args:
        features: [N, D] features of real images (float; moved to the CPU).
        labels: [N] integer labels in ``[0, classes)``.
        classes: number of classes (default: the largest label + 1).
        steps: full-batch Adam steps (the problem is convex: a few hundred reach its optimum closely).
        lr: Adam's learning rate.
        l2: weight decay on ``W``, ``l2 · ‖W‖²`` added to the mean cross-entropy (keeps the separable case finite).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, classes: int | None = None, *,
                 steps: int = 400, lr: float = 0.01, l2: float = 1e-3):
        features, labels = features.detach().float().cpu(), labels.detach().long().cpu()
        if features.ndim != 2 or labels.shape != (len(features),):
            raise ValueError(f"features must be [N, D] and labels [N]; got {tuple(features.shape)} and "
                             f"{tuple(labels.shape)}")
        self.classes = int(classes if classes is not None else labels.max() + 1)
        if labels.min() < 0 or labels.max() >= self.classes:
            raise ValueError(f"labels must lie in [0, {self.classes}); got {int(labels.min())}…{int(labels.max())}")
        # standardised per feature, so one learning rate suits features of any scale
        self.mean, self.std = features.mean(0), features.std(0) + 1e-6
        z = (features - self.mean) / self.std  # [N, D]
        weight = torch.zeros(features.shape[1], self.classes, requires_grad=True)  # [D, C]
        bias = torch.zeros(self.classes, requires_grad=True)  # [C]
        optimiser = torch.optim.Adam([weight, bias], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(z @ weight + bias, labels) + l2 * weight.square().sum()
                loss.backward()
                optimiser.step()
        self.weight, self.bias = weight.detach(), bias.detach()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """[N, D] → [N, C]."""
        return ((features.detach().float().cpu() - self.mean) / self.std) @ self.weight + self.bias

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """[N, D] → [N, C], rows summing to 1."""
        return self.logits(features).softmax(dim=1)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """[N, D] → [N] class indices."""
        return self.logits(features).argmax(dim=1)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of rows whose prediction is their label."""
        return float((self.predict(features) == labels.cpu().long()).float().mean())


__all__ = ["LinearProbe"]
