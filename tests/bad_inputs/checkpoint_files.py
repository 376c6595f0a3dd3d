"""Bad model files, written at test time into a folder the caller gives.

SAM checkpoints start from the tiny random SAM of ``tests.sam_factory`` (about 1.8 MB),
saved in Meta's format. Class-aware models use the tiny class-aware SAM of the same
module (safetensors weights plus a JSON file beside them).
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import torch

from ml.model_files import metadata_path
from tests.sam_factory import TINY_CLASS_NAMES, save_tiny_checkpoint, save_tiny_class_aware

# A class list one longer than the tiny class-aware model's, for a mismatched JSON file.
OTHER_CLASS_NAMES = (*TINY_CLASS_NAMES, "proximal tubule")


def tiny_sam_checkpoint(folder: Path) -> Path:
    """Write a valid tiny SAM, which is no official architecture (vit_b, vit_l, vit_h)."""
    return save_tiny_checkpoint(folder / "tiny_sam.pth")


def truncated_checkpoint(folder: Path) -> Path:
    """Write the first half of a tiny SAM checkpoint, as an interrupted download leaves it."""
    content = tiny_sam_checkpoint(folder).read_bytes()
    path = folder / "truncated.pth"
    path.write_bytes(content[: len(content) // 2])
    return path


def text_named_checkpoint(folder: Path) -> Path:
    """Write a text file under a checkpoint suffix."""
    path = folder / "readme.pth"
    path.write_text("Download sam_vit_b_01ec64.pth from Meta's release page.\n")
    return path


class ShellCommandOnUnpickle:
    """Pickles as a call to ``os.system``, so unpickling it runs a shell command.

    The command only creates ``marker``. A loader that unpickles arbitrary objects
    creates the file, and a safe loader leaves it absent.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def code_running_checkpoint(folder: Path, marker: Path) -> Path:
    """Write a torch.save file whose one entry runs a shell command when unpickled."""
    path = folder / "sam_vit_b_patched.pth"
    torch.save({"image_encoder.pos_embed": ShellCommandOnUnpickle(marker)}, path)
    return path


def class_aware_with_other_class_count(folder: Path) -> Path:
    """Write tiny class-aware weights of 3 classes beside the JSON of a 4-class save.

    The pair looks like one model (same file names), but the JSON lists 4 classes while
    the class head has 3 outputs: two saves were copied together. Returns the weights.
    """
    weights = save_tiny_class_aware(folder / "model.safetensors")
    other_folder = folder / "other_save"
    other_folder.mkdir()
    other_weights = save_tiny_class_aware(
        other_folder / "model.safetensors", class_names=OTHER_CLASS_NAMES
    )
    shutil.copyfile(metadata_path(other_weights), metadata_path(weights))
    return weights
