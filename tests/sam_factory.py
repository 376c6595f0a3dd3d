"""Tiny randomly initialised SAM checkpoints in Meta's official format, for tests.

The weights are random, so the masks they produce show that the pipeline runs end to end,
never how well SAM segments. With ``torch.manual_seed(seed)`` before building, the same
seed gives bit-identical weights on every run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from segment_anything.modeling import Sam

from ml.sam import TINY_TEST, SamArchitecture, build_sam, save_checkpoint

# With this seed the tiny SAM returns 12 masks on the four 1024 px tiles of
# cmu-1-small-region.svs at 1 um/px (4 x 4 points, quality thresholds 0), and 7 of them
# pass the default size and tissue filters. Most other seeds return only whole-tile or
# speckled masks.
DEFAULT_SEED = 1


def make_tiny_sam(seed: int = DEFAULT_SEED, architecture: SamArchitecture = TINY_TEST) -> Sam:
    """Build a SAM with random weights drawn from ``seed``, in eval mode."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return build_sam(architecture)
    finally:
        torch.random.set_rng_state(generator_state)


def save_tiny_checkpoint(
    path: Path, seed: int = DEFAULT_SEED, architecture: SamArchitecture = TINY_TEST
) -> Path:
    """Write a tiny random SAM as a plain state dict with Meta's key names and return ``path``."""
    save_checkpoint(make_tiny_sam(seed, architecture), path)
    return path


# With SAM seed 1 and this class head seed, a tiny class-aware model with the classes
# glomerulus, vessel and background keeps a few instances on cmu-1-small-region.svs
# (4 x 4 points, no thresholds) and calls others background.
CLASS_HEAD_SEED = 7
TINY_CLASS_NAMES = ("glomerulus", "vessel", "background")


def save_tiny_class_aware(path: Path, class_names=TINY_CLASS_NAMES, seed: int = DEFAULT_SEED) -> Path:
    """Write a tiny class-aware SAM with a random class head (safetensors + JSON metadata)."""
    from ml.class_aware import from_sam
    from ml.model_files import ClassAwareMetadata, ClassSpec, save_class_aware

    with torch.random.fork_rng():
        torch.manual_seed(CLASS_HEAD_SEED)
        model, _ = from_sam(make_tiny_sam(seed), list(class_names))
    metadata = ClassAwareMetadata(
        classes=tuple(ClassSpec(name, "#808080") for name in class_names),
        architecture=model.architecture, mpp=1.0, tile_px=1024,
    )
    save_class_aware(model, path, metadata)
    return path
