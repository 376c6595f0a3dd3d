"""Save and load class-aware SAM models without pickle: safetensors plus JSON metadata.

A saved model is two files side by side:

- ``<name>.safetensors``: the state dict of ``ClassAwareSam``, tensor names as in
  ``model.state_dict()``.
- ``<name>.json``: what the tensors do not record. That is the class names and colours in
  logit order, the working mpp and tile size, the SAM architecture, the training config,
  the data snapshot id, the program version and the SHA-256 of the weights file.

Both files are written to a temporary file in the target folder, fsynced and renamed, so a
reader never sees a half-written file. The weights go first. A crash between the two
renames leaves the old JSON, whose SHA-256 then no longer matches, so loading fails
instead of pairing new weights with old classes.

Usage::

    metadata = ClassAwareMetadata(classes=(ClassSpec("glomerulus", "#ff0000"),),
                                  architecture=model.architecture, mpp=1.0, tile_px=1024,
                                  training_config={"epochs": 20}, data_snapshot_id="snap-7",
                                  program_version="0.3.0")
    save_class_aware(model, Path("models/v7.safetensors"), metadata)
    model, metadata = load_class_aware(Path("models/v7.safetensors"))
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ml.checkpoints import file_sha256
from ml.class_aware import CLASS_HEAD_DEPTH, ClassAwareSam, build_class_aware_sam
from ml.errors import CheckpointError, SettingsError
from ml.sam import SamArchitecture, infer_architecture, sam_type_for, state_dict_problems

logger = logging.getLogger(__name__)

FORMAT_NAME = "nephroweb-class-aware-sam"
FORMAT_VERSION = 1

_CLASS_HEAD_OUTPUT = f"mask_decoder.class_prediction_head.layers.{CLASS_HEAD_DEPTH - 1}.weight"
_COLOR_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class ClassSpec:
    """One output class of the model.

    Attributes:
        name: Class name as stored on annotations.
        color_hex: Display colour as ``#rrggbb``.
    """

    name: str
    color_hex: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise SettingsError(f"Class name {self.name!r} is empty. Give every class a name.")
        if not isinstance(self.color_hex, str) or not _COLOR_HEX.match(self.color_hex):
            raise SettingsError(
                f"Colour {self.color_hex!r} of class {self.name!r} is invalid. "
                "Write it as #rrggbb, for example #ff8800."
            )


@dataclass(frozen=True)
class ClassAwareMetadata:
    """Everything saved beside the weights of a class-aware SAM.

    Attributes:
        classes: One entry per class logit, in logit order.
        architecture: SAM variant of the image encoder and decoder widths.
        mpp: Working resolution of the training tiles in microns per pixel.
        tile_px: Side of the training tiles in working pixels.
        training_config: JSON-serialisable training settings (losses, epochs, ...).
        data_snapshot_id: Identifier of the annotation snapshot the model was trained on.
        program_version: Version of nephroweb that trained the model.
    """

    classes: tuple[ClassSpec, ...]
    architecture: SamArchitecture
    mpp: float
    tile_px: int
    training_config: Mapping[str, Any] = field(default_factory=dict)
    data_snapshot_id: str = ""
    program_version: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        names = self.class_names
        if not names:
            raise SettingsError("classes is empty. A class-aware model needs at least one class.")
        if len(set(names)) != len(names):
            raise SettingsError(f"classes {list(names)} contains duplicate names. Name each once.")
        if isinstance(self.mpp, bool) or not isinstance(self.mpp, (int, float)) or not (
            math.isfinite(self.mpp) and self.mpp > 0
        ):
            raise SettingsError(f"mpp {self.mpp!r} is invalid. Give microns per pixel above 0.")
        if isinstance(self.tile_px, bool) or not isinstance(self.tile_px, int) or self.tile_px < 1:
            raise SettingsError(
                f"tile_px {self.tile_px!r} is invalid. Give a whole number above 0."
            )
        try:
            json.dumps(self.training_config, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SettingsError(
                f"training_config cannot be written as JSON ({exc}). Use only strings, numbers, "
                "booleans, None, lists and dicts with string keys."
            ) from exc

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in logit order."""
        return tuple(spec.name for spec in self.classes)


class LoadedClassAwareSam(NamedTuple):
    """Result of ``load_class_aware``. It unpacks as ``model, metadata``."""

    model: ClassAwareSam
    metadata: ClassAwareMetadata


def metadata_path(weights_path: str | os.PathLike[str]) -> Path:
    """Return the JSON metadata path that belongs to a weights file."""
    return Path(weights_path).with_suffix(".json")


def save_class_aware(
    model: ClassAwareSam, path: str | os.PathLike[str], metadata: ClassAwareMetadata
) -> str:
    """Write the model's weights to ``path`` and its metadata beside it, atomically.

    Args:
        model: The model to save. Its tensors are copied to CPU.
        path: Weights file, usually ``<name>.safetensors``. The metadata goes to
            ``<name>.json``.
        metadata: Must name the model's classes in order and its architecture.

    Returns:
        The hex SHA-256 of the weights file, also stored in the JSON.

    Raises:
        SettingsError: ``path`` ends in .json, or ``metadata`` does not describe ``model``.
    """
    weights = Path(path)
    json_path = metadata_path(weights)
    if json_path == weights:
        raise SettingsError(
            f"Weights path {weights} ends in .json, which is the metadata file's name. "
            "Use a .safetensors name."
        )
    if metadata.class_names != model.class_names:
        raise SettingsError(
            f"metadata classes {list(metadata.class_names)} differ from the model's classes "
            f"{list(model.class_names)}. List the model's classes in logit order."
        )
    if metadata.architecture != model.architecture:
        raise SettingsError(
            f"metadata architecture {metadata.architecture} differs from the model's "
            f"{model.architecture}. Pass architecture=model.architecture."
        )

    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    write_atomically(weights, lambda temp: save_file(tensors, temp, metadata={"format": "pt"}))
    sha256 = file_sha256(weights)

    document = _metadata_to_json(metadata, weights.name, sha256)
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    write_atomically(json_path, lambda temp: temp.write_text(text, encoding="utf-8"))
    logger.info(
        "Saved class-aware SAM %s with %d classes (sha256 %s) and metadata %s",
        weights, len(metadata.classes), sha256, json_path,
    )
    return sha256


def load_class_aware(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> LoadedClassAwareSam:
    """Load a model written by ``save_class_aware``, checking the weights against the JSON.

    The model is returned in eval mode with gradients off. Call ``set_trainable`` to
    fine-tune it further.

    Raises:
        CheckpointError: A file is missing, truncated or unreadable, or the JSON is
            invalid. Also raised when the class count or architecture in the JSON differs
            from the tensor shapes, when tensors are missing or unexpected, and when the
            weights file is not the one the JSON was written for.
    """
    weights = Path(path)
    json_path = metadata_path(weights)
    if not weights.is_file():
        raise CheckpointError(
            f"Class-aware model weights {weights} were not found. Check the path."
        )
    if not json_path.is_file():
        raise CheckpointError(
            f"Metadata file {json_path} for model weights {weights} was not found. "
            "save_class_aware writes it beside the weights; copy both files together."
        )

    metadata, expected_sha256 = _read_metadata(json_path)
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"Class-aware model weights {weights} cannot be read ({exc}). The file may be "
            "truncated or corrupt. Copy it again or save the model again."
        ) from exc

    _check_against_metadata(tensors, metadata, weights, json_path)
    model = build_class_aware_sam(metadata.architecture, metadata.class_names)
    _load_strict(model, tensors, weights)

    sha256 = file_sha256(weights)
    if sha256 != expected_sha256:
        raise CheckpointError(
            f"Weights file {weights} has SHA-256 {sha256}, but its metadata {json_path} was "
            f"written for {expected_sha256}. The two files belong to different saves. "
            "Copy the matching pair."
        )

    model.to(device)
    model.eval()
    model.requires_grad_(False)
    logger.info(
        "Loaded class-aware SAM %s with classes %s on %s (sha256 %s)",
        weights, ", ".join(metadata.class_names), device, sha256,
    )
    return LoadedClassAwareSam(model, metadata)


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file beside ``target``, fsync it and rename it over."""
    fd, temp_name = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    temp_path = Path(temp_name)
    try:
        write(temp_path)
        with open(temp_path, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temp_path, target)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def _metadata_to_json(metadata: ClassAwareMetadata, weights_name: str, sha256: str) -> dict:
    architecture = asdict(metadata.architecture)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "weights_file": weights_name,
        "weights_sha256": sha256,
        "classes": [{"name": spec.name, "color": spec.color_hex} for spec in metadata.classes],
        "mpp": metadata.mpp,
        "tile_px": metadata.tile_px,
        "sam_variant": {"sam_type": sam_type_for(metadata.architecture), **architecture},
        "training_config": dict(metadata.training_config),
        "data_snapshot_id": metadata.data_snapshot_id,
        "program_version": metadata.program_version,
    }


def _read_metadata(json_path: Path) -> tuple[ClassAwareMetadata, str]:
    """Parse the JSON metadata and return it with the expected weights SHA-256."""
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"Metadata file {json_path} cannot be read as JSON ({exc}). Save the model again."
        ) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"Metadata file {json_path} is not class-aware SAM metadata (its format field is "
            f"not {FORMAT_NAME!r}). Pass the weights file written by save_class_aware."
        )
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"Metadata file {json_path} has format_version {document.get('format_version')!r}, "
            f"but this program reads version {FORMAT_VERSION}. Use the matching program version."
        )

    try:
        variant = document["sam_variant"]
        architecture_fields = {spec.name for spec in fields(SamArchitecture)}
        architecture = SamArchitecture(
            **{key: value for key, value in variant.items() if key in architecture_fields}
        )
        classes = tuple(ClassSpec(entry["name"], entry["color"]) for entry in document["classes"])
        metadata = ClassAwareMetadata(
            classes=classes,
            architecture=architecture,
            mpp=document["mpp"],
            tile_px=document["tile_px"],
            training_config=document["training_config"],
            data_snapshot_id=document["data_snapshot_id"],
            program_version=document["program_version"],
        )
        sha256 = document["weights_sha256"]
    except KeyError as exc:
        raise CheckpointError(
            f"Metadata file {json_path} is missing the field {exc.args[0]!r}. Save the model again."
        ) from None
    except (TypeError, AttributeError, SettingsError) as exc:
        raise CheckpointError(
            f"Metadata file {json_path} contains an invalid value ({exc}). Save the model again."
        ) from exc
    return metadata, sha256


def _check_against_metadata(
    tensors: dict[str, torch.Tensor],
    metadata: ClassAwareMetadata,
    weights: Path,
    json_path: Path,
) -> None:
    """Compare the architecture and class count in the JSON with the tensor shapes.

    Only a ViT architecture can be read from the tensors. Other encoders are checked by
    the strict load that follows.
    """
    try:
        architecture = (
            infer_architecture(tensors)
            if metadata.architecture.image_encoder == "vit"
            else metadata.architecture
        )
    except CheckpointError as exc:
        raise CheckpointError(f"Class-aware model weights {weights}: {exc}") from exc
    if architecture != metadata.architecture:
        raise CheckpointError(
            f"Metadata file {json_path} describes SAM architecture {metadata.architecture}, "
            f"but the tensors in {weights} describe {architecture}. Copy the matching pair."
        )

    class_head = tensors.get(_CLASS_HEAD_OUTPUT)
    if class_head is not None and class_head.shape[0] != len(metadata.classes):
        raise CheckpointError(
            f"Metadata file {json_path} lists {len(metadata.classes)} classes "
            f"({', '.join(metadata.class_names)}), but the class head in {weights} has "
            f"{class_head.shape[0]} outputs. Copy the matching pair."
        )


def _load_strict(model: ClassAwareSam, tensors: dict[str, torch.Tensor], weights: Path) -> None:
    """Load every tensor, reporting missing, unexpected and mis-shaped keys by name."""
    problems = state_dict_problems(model, tensors)
    if problems:
        raise CheckpointError(
            f"Class-aware model weights {weights} do not match the layout in their metadata. "
            + ". ".join(problems)
            + ". Save the model again with save_class_aware."
        )
    model.load_state_dict(tensors, strict=True)
