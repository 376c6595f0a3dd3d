"""Change the classes of a class-aware SAM while keeping what it learned for each class.

A model version that continues from an earlier one trains on a newer snapshot, whose
class list may differ from the earlier model's. Only the last layer of the class head
depends on the class list: it has one output row (weight row and bias) per class logit.
``change_classes`` rebuilds that layer in the new class order. A class that the model
already has keeps its row, matched by name. A new class gets a freshly initialised row.
A class that the new list lacks loses its row. Every other tensor stays as it is.

Usage::

    model, metadata = load_class_aware(Path("versions/7/best.safetensors"))
    change = change_classes(model, ["glomerulus", "vessel", "atrophic tubule"], seed=0)
    change.added  # ("atrophic tubule",) when model 7 did not have that class
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ml.class_aware import ClassAwareSam
from ml.errors import SettingsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassChange:
    """How ``change_classes`` mapped the old class logits onto the new ones.

    Attributes:
        kept: Classes in both lists, in the new order. Their rows were copied.
        added: Classes only in the new list, in the new order. Their rows are new.
        dropped: Classes only in the old list, in the old order. Their rows are gone.
    """

    kept: tuple[str, ...]
    added: tuple[str, ...]
    dropped: tuple[str, ...]

    @property
    def changed(self) -> bool:
        """Whether any class was added or dropped (a reordering alone is not counted)."""
        return bool(self.added or self.dropped)


def change_classes(
    model: ClassAwareSam, class_names: Sequence[str], *, seed: int = 0
) -> ClassChange:
    """Give ``model`` the logits ``class_names``, in that order, changing it in place.

    New rows are drawn with PyTorch's default ``nn.Linear`` initialisation from a
    generator seeded with ``seed``, so the same seed gives the same rows. The global
    random state is left as it was. A model whose class list already equals
    ``class_names`` is not touched.

    Raises:
        SettingsError: ``class_names`` is empty or names a class twice.
    """
    names = tuple(class_names)
    if not names:
        raise SettingsError("class_names is empty. Give at least one class name.")
    if len(set(names)) != len(names):
        raise SettingsError(f"class_names {list(names)} contains duplicates. Name each once.")

    old_names = tuple(model.class_names)
    old_index = {name: index for index, name in enumerate(old_names)}
    change = ClassChange(
        kept=tuple(name for name in names if name in old_index),
        added=tuple(name for name in names if name not in old_index),
        dropped=tuple(name for name in old_names if name not in set(names)),
    )
    if names == old_names:
        return change

    head = model.mask_decoder.class_prediction_head
    old_layer: nn.Linear = head.layers[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new_layer = nn.Linear(old_layer.in_features, len(names))
    new_layer.to(device=old_layer.weight.device, dtype=old_layer.weight.dtype)
    with torch.no_grad():
        for new_row, name in enumerate(names):
            if name in old_index:
                new_layer.weight[new_row] = old_layer.weight[old_index[name]]
                new_layer.bias[new_row] = old_layer.bias[old_index[name]]
    new_layer.requires_grad_(old_layer.weight.requires_grad)

    head.layers[-1] = new_layer
    model.mask_decoder.num_classes = len(names)
    model.class_names = names
    logger.info(
        "Changed the class head from %d to %d classes: kept %s, added %s, dropped %s",
        len(old_names), len(names), ", ".join(change.kept) or "none",
        ", ".join(change.added) or "none", ", ".join(change.dropped) or "none",
    )
    return change
