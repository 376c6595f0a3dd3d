"""Class-aware SAM: decoder contract, initialisation from SAM, freezing, save and load.

Every model here is the tiny random SAM from tests/sam_factory.py (image_size 256, an
embedding grid of 16 x 16, decoder width 32), so the tests check plumbing and exact
tensor values, never segmentation quality.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ml.class_aware import (
    ClassAwareSam,
    DecoderOutput,
    InputShapeError,
    from_sam,
    set_trainable,
    trainable_parameter_names,
)
from ml.errors import CheckpointError, SettingsError
from ml.model_files import (
    ClassAwareMetadata,
    ClassSpec,
    load_class_aware,
    metadata_path,
    save_class_aware,
)
from ml.sam import TINY_TEST, VIT_B, build_sam
from tests.sam_factory import make_tiny_sam

CLASS_NAMES = ("proximal tubule", "distal tubule", "glomerulus")
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c")
GRID = TINY_TEST.embedding_grid_size
DIM = TINY_TEST.prompt_embed_dim
LOW_RES = 4 * GRID

NEW_KEYS = (
    "mask_decoder.class_prediction_head.layers.0.bias",
    "mask_decoder.class_prediction_head.layers.0.weight",
    "mask_decoder.class_prediction_head.layers.1.bias",
    "mask_decoder.class_prediction_head.layers.1.weight",
    "mask_decoder.class_prediction_head.layers.2.bias",
    "mask_decoder.class_prediction_head.layers.2.weight",
    "mask_decoder.class_token.weight",
)
DROPPED_KEYS = tuple(
    sorted(
        [
            "mask_decoder.mask_tokens.weight[1:4]",
            "mask_decoder.iou_prediction_head.layers.2.weight[1:4]",
            "mask_decoder.iou_prediction_head.layers.2.bias[1:4]",
        ]
        + [
            f"mask_decoder.output_hypernetworks_mlps.{mask}.layers.{layer}.{kind}"
            for mask in (1, 2, 3)
            for layer in (0, 1, 2)
            for kind in ("weight", "bias")
        ]
    )
)


@pytest.fixture()
def sam():
    return make_tiny_sam(seed=3)


@pytest.fixture()
def model(sam) -> ClassAwareSam:
    return from_sam(sam, CLASS_NAMES).model


def random_images(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = TINY_TEST.image_size
    return torch.rand(count, 3, size, size, generator=generator) * 255


def random_points(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (count, 2, 2) point (x, y) in model-input pixels and (count, 2) labels."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.rand(count, 2, 2, generator=generator) * TINY_TEST.image_size
    labels = torch.tensor([[1, 0]] * count)
    return coords, labels


def total_loss(output: DecoderOutput, seed: int = 0) -> torch.Tensor:
    """Mask BCE + IoU MSE + class cross-entropy against fixed random targets."""
    generator = torch.Generator().manual_seed(seed)
    count = output.mask_logits.shape[0]
    mask_target = (torch.rand(output.mask_logits.shape, generator=generator) > 0.5).float()
    iou_target = torch.rand(count, 1, generator=generator)
    class_target = torch.randint(0, len(CLASS_NAMES), (count,), generator=generator)
    return (
        F.binary_cross_entropy_with_logits(output.mask_logits, mask_target)
        + F.mse_loss(output.iou_pred, iou_target)
        + F.cross_entropy(output.class_logits, class_target)
    )


def tiny_metadata(model: ClassAwareSam) -> ClassAwareMetadata:
    return ClassAwareMetadata(
        classes=tuple(ClassSpec(name, color) for name, color in zip(CLASS_NAMES, COLORS)),
        architecture=model.architecture,
        mpp=1.0,
        tile_px=1024,
        training_config={"epochs": 2, "learning_rate": 1e-4, "losses": ["dice", "bce", "ce"]},
        data_snapshot_id="snapshot-42",
        program_version="0.1.0",
    )


@pytest.fixture()
def saved_model(model: ClassAwareSam, tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_class_aware(model, path, tiny_metadata(model))
    return path


def edit_json(path: Path, edit) -> None:
    json_path = metadata_path(path)
    document = json.loads(json_path.read_text())
    edit(document)
    json_path.write_text(json.dumps(document))


# Forward contract


def test_forward_shapes_prompts_on_one_image(model: ClassAwareSam) -> None:
    embeddings = model.embed_images(random_images(1))
    coords, labels = random_points(5)

    output = model(image_embeddings=embeddings, point_coords=coords, point_labels=labels)

    assert embeddings.shape == (1, DIM, GRID, GRID)
    assert output.mask_logits.shape == (5, 1, LOW_RES, LOW_RES)
    assert output.iou_pred.shape == (5, 1)
    assert output.class_logits.shape == (5, len(CLASS_NAMES))
    for tensor in (output.mask_logits, output.iou_pred, output.class_logits):
        assert torch.isfinite(tensor).all()


def test_forward_prompts_equal_single_runs(model: ClassAwareSam) -> None:
    embeddings = model.embed_images(random_images(1))
    coords, labels = random_points(3)

    with torch.no_grad():
        together = model(image_embeddings=embeddings, point_coords=coords, point_labels=labels)
        for index in range(3):
            alone = model(
                image_embeddings=embeddings,
                point_coords=coords[index : index + 1],
                point_labels=labels[index : index + 1],
            )
            assert torch.allclose(together.mask_logits[index], alone.mask_logits[0], atol=1e-5)
            assert torch.allclose(together.iou_pred[index], alone.iou_pred[0], atol=1e-5)
            assert torch.allclose(together.class_logits[index], alone.class_logits[0], atol=1e-5)


def test_inference_on_one_image_equals_the_training_path(model: ClassAwareSam) -> None:
    # Without gradients, prompts on one image share it (ml.two_way_transformer); with
    # gradients every prompt gets its own copy, as in Meta's decoder.
    embeddings = model.embed_images(random_images(1, seed=3)).detach()
    coords, labels = random_points(11, seed=4)

    trained = model(image_embeddings=embeddings, point_coords=coords, point_labels=labels)
    with torch.no_grad():
        inferred = model(image_embeddings=embeddings, point_coords=coords, point_labels=labels)

    assert trained.mask_logits.requires_grad and not inferred.mask_logits.requires_grad
    for name in ("mask_logits", "iou_pred", "class_logits"):
        expected, got = getattr(trained, name).detach(), getattr(inferred, name)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4, rtol=0), name
    assert trained.mask_logits.std() > 0.01


def test_forward_batch_one_prompt_each(model: ClassAwareSam) -> None:
    images = random_images(2, seed=1)
    boxes = torch.tensor([[10.0, 20.0, 120.0, 90.0], [50.0, 60.0, 200.0, 250.0]])

    with torch.no_grad():
        batch = model(images=images, boxes_xyxy=boxes)
        singles = [model(images=images[i : i + 1], boxes_xyxy=boxes[i : i + 1]) for i in range(2)]

    assert batch.mask_logits.shape == (2, 1, LOW_RES, LOW_RES)
    assert batch.iou_pred.shape == (2, 1)
    assert batch.class_logits.shape == (2, len(CLASS_NAMES))
    assert torch.isfinite(batch.mask_logits).all()
    for index, single in enumerate(singles):
        assert torch.allclose(batch.mask_logits[index], single.mask_logits[0], atol=1e-4)
        assert torch.allclose(batch.class_logits[index], single.class_logits[0], atol=1e-5)
    # Different images must give different outputs, or the pairing is not tested.
    assert not torch.allclose(batch.mask_logits[0], batch.mask_logits[1])


def test_forward_points_and_boxes_together(model: ClassAwareSam) -> None:
    embeddings = model.embed_images(random_images(1))
    coords, labels = random_points(2)
    boxes = torch.tensor([[10.0, 20.0, 120.0, 90.0], [50.0, 60.0, 200.0, 250.0]])

    output = model(
        image_embeddings=embeddings, point_coords=coords, point_labels=labels, boxes_xyxy=boxes
    )

    assert output.mask_logits.shape == (2, 1, LOW_RES, LOW_RES)
    assert torch.isfinite(output.mask_logits).all()


def test_decoder_token_order(model: ClassAwareSam) -> None:
    """Tokens enter the transformer as [IoU, class, mask, prompts] and leave to their heads."""
    decoder = model.mask_decoder
    captured = {}

    def capture(module, inputs, outputs) -> None:
        captured["tokens"] = inputs[2]
        captured["token_out"] = outputs[0]

    embeddings = model.embed_images(random_images(1))
    coords, labels = random_points(2)
    handle = decoder.transformer.register_forward_hook(capture)
    try:
        # With gradients the decoder calls the transformer module itself, so the hook runs.
        output = model(image_embeddings=embeddings, point_coords=coords, point_labels=labels)
        with torch.no_grad():
            sparse, _ = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    finally:
        handle.remove()

    tokens = captured["tokens"]
    token_out = captured["token_out"]
    assert tokens.shape == (2, 3 + sparse.shape[1], DIM)
    assert torch.equal(tokens[0, 0], decoder.iou_token.weight[0])
    assert torch.equal(tokens[0, 1], decoder.class_token.weight[0])
    assert torch.equal(tokens[0, 2], decoder.mask_token.weight[0])
    assert torch.equal(tokens[:, 3:], sparse)
    with torch.no_grad():
        assert torch.allclose(
            output.iou_pred.detach(), decoder.iou_prediction_head(token_out[:, 0])
        )
        assert torch.allclose(
            output.class_logits.detach(), decoder.class_prediction_head(token_out[:, 1])
        )


def test_forward_rejects_batch_mismatch(model: ClassAwareSam) -> None:
    embeddings = torch.zeros(2, DIM, GRID, GRID)
    coords, labels = random_points(3)

    with pytest.raises(InputShapeError, match="contains 2 images for 3 prompts"):
        model(image_embeddings=embeddings, point_coords=coords, point_labels=labels)


def test_forward_rejects_missing_prompt(model: ClassAwareSam) -> None:
    with pytest.raises(InputShapeError, match="No prompt"):
        model(image_embeddings=torch.zeros(1, DIM, GRID, GRID))


def test_forward_rejects_wrong_image_size(model: ClassAwareSam) -> None:
    coords, labels = random_points(1)

    with pytest.raises(InputShapeError, match=r"\(B, 3, 256, 256\)"):
        model(images=torch.zeros(1, 3, 128, 128), point_coords=coords, point_labels=labels)


def test_forward_rejects_unpaired_point_labels(model: ClassAwareSam) -> None:
    coords, _ = random_points(2)

    with pytest.raises(InputShapeError, match="point_labels has shape"):
        model(
            image_embeddings=torch.zeros(1, DIM, GRID, GRID),
            point_coords=coords,
            point_labels=torch.ones(2, 3),
        )


def test_predict_masks_at_input_resolution(model: ClassAwareSam) -> None:
    embedding = model.embed_images(random_images(1))[0]
    coords, labels = random_points(4)

    prediction = model.predict(embedding, point_coords=coords, point_labels=labels)

    size = TINY_TEST.image_size
    assert prediction.masks.shape == (4, size, size)
    assert prediction.masks.dtype == torch.bool
    assert prediction.low_res_logits.shape == (4, 1, LOW_RES, LOW_RES)
    assert prediction.iou_predictions.shape == (4,)
    assert prediction.class_probabilities.shape == (4, len(CLASS_NAMES))
    assert torch.allclose(prediction.class_probabilities.sum(dim=1), torch.ones(4))
    assert prediction.class_names == CLASS_NAMES


def test_predict_threshold_matches_logits(model: ClassAwareSam) -> None:
    embedding = model.embed_images(random_images(1))
    boxes = torch.tensor([[30.0, 30.0, 160.0, 140.0]])

    prediction = model.predict(embedding, boxes_xyxy=boxes, mask_threshold=0.0)

    size = TINY_TEST.image_size
    upsampled = F.interpolate(prediction.low_res_logits, (size, size), mode="bilinear")
    assert torch.equal(prediction.masks, upsampled[:, 0] > 0.0)


def test_predict_refines_with_mask_inputs(model: ClassAwareSam) -> None:
    embedding = model.embed_images(random_images(1))
    coords, labels = random_points(2)
    first = model.predict(embedding, point_coords=coords, point_labels=labels)

    refined = model.predict(
        embedding, point_coords=coords, point_labels=labels, mask_inputs=first.low_res_logits
    )

    assert refined.low_res_logits.shape == first.low_res_logits.shape
    assert torch.isfinite(refined.low_res_logits).all()
    assert not torch.allclose(refined.low_res_logits, first.low_res_logits)


# Gradients and freezing


def test_default_trainable_is_mask_decoder(model: ClassAwareSam) -> None:
    names = trainable_parameter_names(model)

    decoder_names = [
        name for name, _ in model.named_parameters() if name.startswith("mask_decoder.")
    ]
    assert names == decoder_names
    assert "mask_decoder.class_token.weight" in names
    assert "mask_decoder.class_prediction_head.layers.2.weight" in names


def test_from_sam_trains_frozen_source_decoder(sam) -> None:
    """load_sam returns a SAM with gradients off. from_sam still makes the decoder trainable."""
    sam.requires_grad_(False)

    model = from_sam(sam, CLASS_NAMES).model

    names = trainable_parameter_names(model)
    assert names
    assert all(name.startswith("mask_decoder.") for name in names)
    assert "mask_decoder.transformer.layers.0.self_attn.q_proj.weight" in names


def test_gradients_reach_decoder_only(model: ClassAwareSam) -> None:
    model.train()
    set_trainable(model, image_encoder=False, prompt_encoder=False, mask_decoder=True)
    coords, labels = random_points(3)

    output = model(images=random_images(1), point_coords=coords, point_labels=labels)
    total_loss(output).backward()

    for name, parameter in model.named_parameters():
        if name.startswith("mask_decoder."):
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_gradients_reach_trainable_encoder(model: ClassAwareSam) -> None:
    model.train()
    set_trainable(model, image_encoder=True, prompt_encoder=False, mask_decoder=True)
    coords, labels = random_points(2)

    output = model(images=random_images(1), point_coords=coords, point_labels=labels)
    total_loss(output).backward()

    trainable = set(trainable_parameter_names(model))
    assert any(name.startswith("image_encoder.") for name in trainable)
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None, name
            assert parameter.grad.abs().sum() > 0, name
        else:
            assert name.startswith("prompt_encoder."), name
            assert parameter.grad is None, name


# Initialisation from an official SAM


def test_from_sam_copies_single_mask_weights(sam, model: ClassAwareSam) -> None:
    official = sam.mask_decoder
    decoder = model.mask_decoder

    assert torch.equal(decoder.mask_token.weight[0], official.mask_tokens.weight[0])
    assert torch.equal(decoder.iou_token.weight, official.iou_token.weight)
    official_mlp = official.output_hypernetworks_mlps[0].state_dict()
    for key, tensor in decoder.output_hypernetwork_mlp.state_dict().items():
        assert torch.equal(tensor, official_mlp[key]), key
    official_iou = official.iou_prediction_head.layers
    assert torch.equal(decoder.iou_prediction_head.layers[2].weight, official_iou[2].weight[:1])
    assert torch.equal(decoder.iou_prediction_head.layers[2].bias, official_iou[2].bias[:1])
    for layer in (0, 1):
        copied_layer = decoder.iou_prediction_head.layers[layer]
        assert torch.equal(copied_layer.weight, official_iou[layer].weight)
        assert torch.equal(copied_layer.bias, official_iou[layer].bias)


def test_from_sam_copies_encoders_and_transformer(sam, model: ClassAwareSam) -> None:
    source = sam.state_dict()
    target = model.state_dict()
    shared_prefixes = (
        "image_encoder.",
        "prompt_encoder.",
        "mask_decoder.transformer.",
        "mask_decoder.output_upscaling.",
    )
    compared = [key for key in source if key.startswith(shared_prefixes)]

    assert len(compared) > 100
    for key in compared:
        assert torch.equal(target[key], source[key]), key


def test_from_sam_leaves_source_untouched(sam) -> None:
    before = {key: value.clone() for key, value in sam.state_dict().items()}
    model = from_sam(sam, CLASS_NAMES).model

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)

    for key, value in sam.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_from_sam_copies_instead_of_sharing(sam, model: ClassAwareSam) -> None:
    """from_sam copies every tensor, which costs a second model's memory while it runs."""
    source_pointers = {tensor.data_ptr() for tensor in sam.state_dict().values()}

    shared = [
        key for key, tensor in model.state_dict().items() if tensor.data_ptr() in source_pointers
    ]
    assert shared == []


def test_from_sam_report_official_layout() -> None:
    """An official-shaped SAM (vit_b, random weights) maps 296 tensors and adds 7."""
    sam = build_sam(VIT_B)
    model, report = from_sam(sam, CLASS_NAMES)

    assert len(sam.state_dict()) == 314
    assert len(report.copied) == 296
    assert report.new == NEW_KEYS
    assert report.dropped == DROPPED_KEYS
    assert model.mask_decoder.mask_token.weight.shape == (1, 256)
    assert model.mask_decoder.class_prediction_head.layers[2].weight.shape == (3, 256)

    coords = torch.tensor([[[100.0, 200.0]], [[800.0, 500.0]]])
    labels = torch.ones(2, 1)
    embeddings = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    with torch.no_grad():
        output = model.mask_decoder(
            image_embeddings=embeddings,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
    assert output.mask_logits.shape == (2, 1, 256, 256)
    assert output.iou_pred.shape == (2, 1)
    assert output.class_logits.shape == (2, 3)
    assert torch.isfinite(output.mask_logits).all()


def test_from_sam_report_names_keys(sam) -> None:
    model, report = from_sam(sam, CLASS_NAMES)

    assert report.new == NEW_KEYS
    assert report.dropped == DROPPED_KEYS
    assert set(report.copied) | set(report.new) == set(model.state_dict())
    assert not set(report.copied) & set(report.new)
    assert "mask_decoder.mask_token.weight" in report.copied
    assert "mask_decoder.output_hypernetwork_mlp.layers.2.weight" in report.copied
    # Official keys minus 18 hypernetwork tensors of masks 1-3, renamed or sliced ones kept.
    assert len(report.copied) == len(sam.state_dict()) - 18


def test_from_sam_logs_report(sam, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ml.class_aware"):
        from_sam(sam, CLASS_NAMES)

    assert "7 new" in caplog.text
    assert "21 dropped" in caplog.text
    assert "mask_decoder.class_token.weight" in caplog.text
    assert "mask_decoder.mask_tokens.weight[1:4]" in caplog.text


def test_from_sam_mask_like_meta_shape(sam, model: ClassAwareSam) -> None:
    """The class-aware mask has the shape of Meta's single-mask output and is finite.

    The values differ from Meta's by design: the class token joins the transformer's
    attention, so no exact comparison is possible.
    """
    images = random_images(1)
    coords, labels = random_points(1)

    with torch.no_grad():
        embeddings = model.embed_images(images)
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        meta_masks, meta_iou = sam.mask_decoder(
            image_embeddings=embeddings,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        output = model(image_embeddings=embeddings, point_coords=coords, point_labels=labels)

    assert output.mask_logits.shape == meta_masks.shape
    assert output.iou_pred.shape == meta_iou.shape
    assert torch.isfinite(output.mask_logits).all()


def test_from_sam_rejects_empty_classes(sam) -> None:
    with pytest.raises(SettingsError, match="class_names is empty"):
        from_sam(sam, [])


def test_from_sam_rejects_duplicate_classes(sam) -> None:
    with pytest.raises(SettingsError, match="duplicates"):
        from_sam(sam, ["glomerulus", "glomerulus"])


# Saving and loading


def test_save_load_round_trip(model: ClassAwareSam, saved_model: Path) -> None:
    loaded, metadata = load_class_aware(saved_model)
    images = random_images(1, seed=5)
    coords, labels = random_points(3, seed=5)

    with torch.no_grad():
        expected = model(images=images, point_coords=coords, point_labels=labels)
        actual = loaded(images=images, point_coords=coords, point_labels=labels)

    assert torch.equal(actual.mask_logits, expected.mask_logits)
    assert torch.equal(actual.iou_pred, expected.iou_pred)
    assert torch.equal(actual.class_logits, expected.class_logits)
    assert metadata == tiny_metadata(model)
    assert loaded.class_names == CLASS_NAMES
    assert loaded.architecture == TINY_TEST
    assert trainable_parameter_names(loaded) == []


def test_save_writes_metadata_json(saved_model: Path) -> None:
    document = json.loads(metadata_path(saved_model).read_text())

    assert metadata_path(saved_model) == saved_model.with_suffix(".json")
    assert document["classes"][2] == {"name": "glomerulus", "color": "#2ca02c"}
    assert document["mpp"] == 1.0
    assert document["tile_px"] == 1024
    assert document["sam_variant"]["sam_type"] is None
    assert document["sam_variant"]["encoder_depth"] == TINY_TEST.encoder_depth
    assert document["sam_variant"]["image_size"] == 256
    assert document["training_config"]["losses"] == ["dice", "bce", "ce"]
    assert document["data_snapshot_id"] == "snapshot-42"
    assert document["program_version"] == "0.1.0"
    assert document["weights_file"] == "model.safetensors"
    assert sorted(path.name for path in saved_model.parent.iterdir()) == [
        "model.json",
        "model.safetensors",
    ]


def test_save_rejects_other_class_names(model: ClassAwareSam, tmp_path: Path) -> None:
    metadata = tiny_metadata(model)
    reordered = ClassAwareMetadata(
        classes=tuple(reversed(metadata.classes)),
        architecture=metadata.architecture,
        mpp=metadata.mpp,
        tile_px=metadata.tile_px,
    )

    with pytest.raises(SettingsError, match="differ from the model's classes"):
        save_class_aware(model, tmp_path / "model.safetensors", reordered)
    assert list(tmp_path.iterdir()) == []


def test_metadata_rejects_invalid_colour() -> None:
    with pytest.raises(SettingsError, match="#rrggbb"):
        ClassSpec("vessel", "red")


def test_metadata_rejects_non_json_config() -> None:
    with pytest.raises(SettingsError, match="training_config"):
        ClassAwareMetadata(
            classes=(ClassSpec("vessel", "#aa0000"),),
            architecture=TINY_TEST,
            mpp=1.0,
            tile_px=1024,
            training_config={"optimizer": object()},
        )


def test_load_rejects_wrong_class_count(saved_model: Path) -> None:
    edit_json(
        saved_model,
        lambda document: document["classes"].append({"name": "vessel", "color": "#d62728"}),
    )

    with pytest.raises(CheckpointError, match="lists 4 classes .* has 3 outputs"):
        load_class_aware(saved_model)


def test_load_rejects_wrong_architecture(saved_model: Path) -> None:
    def deepen(document: dict) -> None:
        document["sam_variant"]["encoder_depth"] = 3

    edit_json(saved_model, deepen)

    with pytest.raises(CheckpointError, match="describes SAM architecture") as error:
        load_class_aware(saved_model)
    assert "encoder_depth=3" in str(error.value)
    assert "encoder_depth=2" in str(error.value)


def test_load_rejects_missing_json(saved_model: Path) -> None:
    metadata_path(saved_model).unlink()

    with pytest.raises(CheckpointError, match=r"model\.json .* was not found"):
        load_class_aware(saved_model)


def test_load_rejects_truncated_weights(saved_model: Path) -> None:
    data = saved_model.read_bytes()
    saved_model.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match="truncated"):
        load_class_aware(saved_model)


def test_load_rejects_renamed_tensor(saved_model: Path) -> None:
    tensors = load_file(saved_model)
    renamed = tensors.pop("mask_decoder.class_token.weight")
    tensors["mask_decoder.class_token_renamed.weight"] = renamed
    save_file(tensors, saved_model)

    with pytest.raises(CheckpointError) as error:
        load_class_aware(saved_model)
    message = str(error.value)
    assert "Missing keys: mask_decoder.class_token.weight" in message
    assert "Unexpected keys: mask_decoder.class_token_renamed.weight" in message


def test_load_rejects_weights_of_other_save(
    sam, saved_model: Path, tmp_path: Path
) -> None:
    other = from_sam(sam, CLASS_NAMES).model
    other_path = tmp_path / "other" / "model.safetensors"
    save_class_aware(other, other_path, tiny_metadata(other))
    saved_model.write_bytes(other_path.read_bytes())

    with pytest.raises(CheckpointError, match="belong to different saves"):
        load_class_aware(saved_model)


def test_load_rejects_invalid_metadata_value(saved_model: Path) -> None:
    edit_json(saved_model, lambda document: document.update(mpp=-1))

    with pytest.raises(CheckpointError, match="mpp -1 is invalid"):
        load_class_aware(saved_model)
