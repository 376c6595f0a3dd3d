"""SAM building, architecture inference and checkpoint loading with tiny random models."""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
import torch
from segment_anything import sam_model_registry

from ml.checkpoints import file_sha256
from ml.errors import CheckpointError, SettingsError
from ml.sam import (
    ARCHITECTURES,
    TINY_TEST,
    VIT_B,
    VIT_H,
    VIT_L,
    SamArchitecture,
    build_sam,
    infer_architecture,
    load_sam,
    sam_type_for,
    save_checkpoint,
)
from tests.sam_factory import make_tiny_sam, save_tiny_checkpoint

META_BUILDERS = {name: sam_model_registry[name] for name in ("vit_b", "vit_l", "vit_h")}


def shapes(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state_dict.items()}


@pytest.fixture()
def tiny_checkpoint(tmp_path: Path) -> Path:
    return save_tiny_checkpoint(tmp_path / "tiny_sam.pth")


@pytest.mark.parametrize("sam_type", ["vit_b", "vit_l", "vit_h"])
def test_official_layout_matches_meta(sam_type: str) -> None:
    # The meta device allocates no memory, so even vit_h builds in about a second.
    with torch.device("meta"):
        ours = build_sam(ARCHITECTURES[sam_type]).state_dict()
        meta = META_BUILDERS[sam_type]().state_dict()

    assert shapes(ours) == shapes(meta)


@pytest.mark.parametrize(
    ("sam_type", "architecture"), [("vit_b", VIT_B), ("vit_l", VIT_L), ("vit_h", VIT_H)]
)
def test_infer_official_architectures(sam_type: str, architecture: SamArchitecture) -> None:
    with torch.device("meta"):
        state_dict = META_BUILDERS[sam_type]().state_dict()

    inferred = infer_architecture(state_dict)

    assert inferred == architecture
    assert sam_type_for(inferred) == sam_type


def test_infer_tiny_architecture() -> None:
    inferred = infer_architecture(make_tiny_sam().state_dict())

    assert inferred == TINY_TEST
    assert inferred.encoder_global_attn_indexes == (1,)
    assert inferred.window_size == 4
    assert sam_type_for(inferred) is None


def test_round_trip_same_weights_and_output(tiny_checkpoint: Path) -> None:
    original = make_tiny_sam()

    loaded = load_sam(tiny_checkpoint)

    assert loaded.architecture == TINY_TEST
    assert loaded.sam_type is None
    assert loaded.path == tiny_checkpoint.resolve()
    assert loaded.sha256 == file_sha256(tiny_checkpoint)
    assert not loaded.model.training
    assert not any(parameter.requires_grad for parameter in loaded.model.parameters())
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key

    image = torch.rand(1, 3, TINY_TEST.image_size, TINY_TEST.image_size)
    with torch.no_grad():
        assert torch.equal(loaded.model.image_encoder(image), original.image_encoder(image))


def test_different_seeds_differ() -> None:
    first = make_tiny_sam(seed=1).state_dict()
    second = make_tiny_sam(seed=2).state_dict()

    assert not torch.equal(first["image_encoder.patch_embed.proj.weight"],
                           second["image_encoder.patch_embed.proj.weight"])


def test_sha256_optional(tiny_checkpoint: Path) -> None:
    assert load_sam(tiny_checkpoint, compute_sha256=False).sha256 is None


def test_wrong_sam_type_names_both(tiny_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        load_sam(tiny_checkpoint, sam_type="vit_b")

    message = str(excinfo.value)
    assert "requested as vit_b" in message
    assert "non-official architecture" in message
    assert "encoder_embed_dim=32" in message


def test_unknown_sam_type_rejected(tiny_checkpoint: Path) -> None:
    with pytest.raises(SettingsError, match="'vit_x'"):
        load_sam(tiny_checkpoint, sam_type="vit_x")


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="absent.pth was not found"):
        load_sam(tmp_path / "absent.pth")


class _TouchOnUnpickle:
    """Pickles as a call to Path.touch, so unpickling it would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.touch, (self.marker,))


def test_code_running_pickle_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    checkpoint = tmp_path / "evil.pth"
    torch.save({"image_encoder.pos_embed": _TouchOnUnpickle(marker)}, checkpoint)

    with pytest.raises(CheckpointError, match="not a plain state dict; refusing to unpickle"):
        load_sam(checkpoint)

    assert not marker.exists()


def test_wrapped_state_dict_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "wrapped.pth"
    torch.save({"model": make_tiny_sam().state_dict(), "epoch": 3}, checkpoint)

    with pytest.raises(CheckpointError, match="wrapped.pth is not a plain state dict"):
        load_sam(checkpoint)


def test_truncated_file_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pth"
    data = tiny_checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match="truncated.pth cannot be read"):
        load_sam(truncated)


def test_missing_and_unexpected_keys_named(tmp_path: Path) -> None:
    state_dict = make_tiny_sam().state_dict()
    del state_dict["mask_decoder.iou_token.weight"]
    state_dict["mask_decoder.class_token.weight"] = torch.zeros(1, 32)
    checkpoint = tmp_path / "edited.pth"
    torch.save(state_dict, checkpoint)

    with pytest.raises(CheckpointError) as excinfo:
        load_sam(checkpoint)

    message = str(excinfo.value)
    assert "Missing keys: mask_decoder.iou_token.weight" in message
    assert "Unexpected keys: mask_decoder.class_token.weight" in message


def test_mismatched_shape_named(tmp_path: Path) -> None:
    state_dict = make_tiny_sam().state_dict()
    state_dict["mask_decoder.iou_token.weight"] = torch.zeros(1, 16)
    checkpoint = tmp_path / "reshaped.pth"
    torch.save(state_dict, checkpoint)

    expected = r"mask_decoder.iou_token.weight \(1, 16\) != \(1, 32\)"
    with pytest.raises(CheckpointError, match=expected):
        load_sam(checkpoint)


def test_not_sam_state_dict_rejected(tmp_path: Path) -> None:
    checkpoint = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), checkpoint)

    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        load_sam(checkpoint)


def test_save_checkpoint_atomic_and_plain(tmp_path: Path) -> None:
    target = tmp_path / "models" / "sam.pth"

    sha256 = save_checkpoint(make_tiny_sam(), target)

    assert sha256 == file_sha256(target)
    assert sorted(path.name for path in target.parent.iterdir()) == ["sam.pth"]
    payload = torch.load(target, map_location="cpu", weights_only=True)
    assert isinstance(payload, dict)
    assert "image_encoder.patch_embed.proj.weight" in payload
    assert all(isinstance(value, torch.Tensor) for value in payload.values())


def test_architecture_validation() -> None:
    with pytest.raises(SettingsError, match="encoder_num_heads 5"):
        SamArchitecture(32, 2, 5, (1,))
    with pytest.raises(SettingsError, match="patch_size 15"):
        SamArchitecture(32, 2, 2, (1,), image_size=256, patch_size=15)
    with pytest.raises(SettingsError, match=r"\[0, 1\]"):
        SamArchitecture(32, 2, 2, (2,))
