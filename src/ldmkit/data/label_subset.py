"""Training on some of a data set's classes (``data.labels``): only the items of the named labels, in order.

A source that can say its items' labels without decoding images offers ``item_labels()`` and ``subset(indices)``
(Fashion-MNIST, image folders, emoji sets). The class count stays the source's, so a model trained on classes
0–4 has the embeddings of 5–9 waiting to be learned by fine-tuning (docs/results/adapt.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ldmkit.errors import ConfigError, DataError


def keep_labels(dataset: Any, labels: Sequence[int], source: str, split: str) -> Any:
    """``dataset`` restricted to the items whose label is in ``labels`` (all of it when ``labels`` is empty)."""
    if not labels:
        return dataset
    if not callable(getattr(dataset, "item_labels", None)):
        raise ConfigError(f"data.labels: the {source} source cannot pick items by class; use a folder, an emoji set "
                          "or Fashion-MNIST, or set data.labels=[]")
    names = list(getattr(dataset, "class_names", []) or [])
    outside = sorted(int(label) for label in labels if names and int(label) >= len(names))
    if outside:  # a typo would otherwise drop its class silently
        raise ConfigError(f"data.labels: {outside} not among the source's {len(names)} classes (0..{len(names) - 1})")
    item_labels = [int(label) for label in dataset.item_labels()]
    wanted = set(int(label) for label in labels)
    keep = [i for i, label in enumerate(item_labels) if label in wanted]
    if not keep:
        present = sorted(set(item_labels) - {-1})
        raise DataError(f"data.labels={sorted(wanted)}: the {split} split has no item of these classes (its labels: "
                        f"{present[:20]}{' …' if len(present) > 20 else ''})")
    return dataset.subset(keep)


__all__ = ["keep_labels"]
