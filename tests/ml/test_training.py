"""Training of the class-aware SAM: config, prompts, losses, caching, checkpoints, resume.

The model is the tiny random SAM from tests/sam_factory.py (image_size 256, logits of
64 x 64). Images are synthetic: flat background with discs (class "a"), squares
(class "b") and flat bars (class "c") of known colour and position.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from ml.class_aware import DecoderOutput, from_sam
from ml.errors import SettingsError
from ml.evaluation import evaluate_instances
from ml.model_files import load_class_aware
from ml.training import (
    STATE_FILE,
    AugmentConfig,
    EmbeddingCache,
    LossTerms,
    LossWeights,
    TrainingConfig,
    TrainingError,
    check_finite,
    compute_losses,
    dice_loss,
    learning_rate_at,
    _evaluation_instances,
    train,
)
from ml.training_data import (
    NUM_TRANSFORMS,
    PromptItem,
    TrainingSample,
    apply_transform,
    balanced_class_weights,
    choose_augmentation,
    jittered_box_xyxy,
    model_input_image,
    model_input_mask,
    sample_points,
)
from tests.sam_factory import make_tiny_sam

CLASS_NAMES = ["a", "b", "c"]
CLASS_COLORS = {0: (180, 60, 60), 1: (60, 60, 180), 2: (60, 160, 60)}
SIZES = [(128, 128), (96, 128), (160, 112), (64, 64), (128, 96), (112, 160)]


def make_sample(seed: int, height: int = 128, width: int = 128, swap_classes: bool = False):
    """Return a synthetic sample with three non-overlapping shapes, one of each class."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 230, dtype=np.uint8)
    rows, cols = np.mgrid[:height, :width]
    masks, classes = [], []
    taken = np.zeros((height, width), dtype=bool)
    for class_index in range(3):
        radius = int(rng.integers(6, 11))
        center_x = int(rng.integers(radius + 2, width - radius - 2))
        center_y = int(rng.integers(radius + 2, height - radius - 2))
        if class_index == 0:
            mask = (cols - center_x) ** 2 + (rows - center_y) ** 2 <= radius**2
        elif class_index == 1:
            mask = (abs(cols - center_x) <= radius) & (abs(rows - center_y) <= radius)
        else:
            mask = (abs(cols - center_x) <= radius) & (abs(rows - center_y) <= radius // 3)
        mask &= ~taken
        taken |= mask
        image[mask] = CLASS_COLORS[class_index]
        masks.append(mask)
        label = {0: 1, 1: 0, 2: 2}[class_index] if swap_classes else class_index
        classes.append(label)
    return TrainingSample(image, np.stack(masks), np.array(classes))


def train_set() -> list[TrainingSample]:
    return [make_sample(seed, *size) for seed, size in enumerate(SIZES)]


def val_set() -> list[TrainingSample]:
    return [make_sample(100 + seed) for seed in range(2)]


def fresh_model():
    torch.manual_seed(0)
    model, _ = from_sam(make_tiny_sam(1), CLASS_NAMES)
    return model


def fast_config(**changes) -> TrainingConfig:
    values = dict(
        epochs=3,
        batch_size=3,
        learning_rate=5e-3,
        warmup_steps=2,
        augment=AugmentConfig(flips=True, rotations_90=True, color_jitter=0.1),
        early_stopping_patience=None,
        seed=7,
    )
    values.update(changes)
    return TrainingConfig(**values)


def decoder_state(model) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@pytest.fixture(autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def three_epoch_run(tmp_path_factory):
    """One uninterrupted 3-epoch run, shared by the tests that only read its outcome."""
    torch.set_num_threads(2)
    model = fresh_model()
    before = decoder_state(model)
    folder = tmp_path_factory.mktemp("three_epochs")
    steps = []
    result = train(
        model, train_set(), val_set(), fast_config(), folder,
        progress=lambda epoch, step, metrics: steps.append((epoch, step, dict(metrics))),
    )
    return {"model": model, "before": before, "result": result, "folder": folder, "steps": steps}


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("changes", "field_name"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"grad_accumulation": 0}, "grad_accumulation"),
        ({"points_per_instance": 0, "use_box_prompts": False}, "points_per_instance"),
        ({"class_weights": "inverse"}, "class_weights"),
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
        ({"device": "tpu"}, "device"),
        ({"bf16_autocast": True}, "bf16_autocast"),
        ({"use_box_prompts": 1}, "use_box_prompts"),
        ({"loss_weights": {"dice": 1}}, "loss_weights"),
        ({"embedding_cache_max_entries": 0}, "embedding_cache_max_entries"),
    ],
)
def test_config_rejects_invalid_value(changes, field_name):
    with pytest.raises(SettingsError, match=field_name):
        TrainingConfig(**changes)


def test_loss_weights_reject_all_zero():
    with pytest.raises(SettingsError, match="loss_weights are all 0"):
        LossWeights(0.0, 0.0, 0.0, 0.0)


def test_augment_rejects_large_jitter():
    with pytest.raises(SettingsError, match=r"augment\.color_jitter is 0\.9"):
        AugmentConfig(color_jitter=0.9)


def test_config_dict_round_trip():
    config = fast_config(loss_weights=LossWeights(2.0, 1.0, 0.5, 0.0), class_weights=None)
    as_json = json.loads(json.dumps(config.to_dict()))
    assert TrainingConfig.from_dict(as_json) == config
    assert as_json["loss_weights"] == {"dice": 2.0, "bce": 1.0, "ce": 0.5, "iou_mse": 0.0}


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(SettingsError, match=r"unknown keys \['epoch'\]"):
        TrainingConfig.from_dict({"epoch": 3})
    with pytest.raises(SettingsError, match=r"augment contains unknown keys \['hue'\]"):
        TrainingConfig.from_dict({"augment": {"hue": 0.1}})


def test_sample_rejects_empty_mask():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2, 2] = True
    with pytest.raises(SettingsError, match=r"instance_masks \[1\] are empty"):
        TrainingSample(image, masks, np.array([0, 1]))


def test_train_rejects_class_index_out_of_range(tmp_path):
    sample = make_sample(0)
    wrong = TrainingSample(sample.image_rgb, sample.instance_masks, np.array([0, 1, 3]))
    with pytest.raises(SettingsError, match="class index 3"):
        train(fresh_model(), [wrong], [], fast_config(), tmp_path)


# ---------------------------------------------------------------------------- data and prompts


def test_prompt_points_lie_inside_mask():
    mask = make_sample(3).instance_masks[0]
    rng = np.random.default_rng(0)
    points = sample_points(mask, 200, rng)
    columns = points[:, 0].astype(int)
    rows = points[:, 1].astype(int)
    assert points.shape == (200, 2)
    assert mask[rows, columns].all()


def test_prompt_points_repeat_for_same_seed():
    mask = make_sample(3).instance_masks[1]
    first = sample_points(mask, 5, np.random.default_rng(42))
    second = sample_points(mask, 5, np.random.default_rng(42))
    other = sample_points(mask, 5, np.random.default_rng(43))
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_box_without_jitter_is_bounding_box():
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:20, 30:45] = True
    box = jittered_box_xyxy(mask, 0.0, np.random.default_rng(0))
    assert box.tolist() == [30.0, 10.0, 45.0, 20.0]


def test_jittered_box_stays_near_and_inside():
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:20, 30:45] = True
    rng = np.random.default_rng(1)
    boxes = np.stack([jittered_box_xyxy(mask, 0.1, rng) for _ in range(100)])
    assert np.abs(boxes - [30, 10, 45, 20]).max() < 8.0
    assert boxes[:, [0, 2]].min() >= 0
    assert boxes[:, [0, 2]].max() <= 60
    assert (boxes[:, 2] > boxes[:, 0]).all()
    assert (boxes[:, 3] > boxes[:, 1]).all()


def test_transform_keeps_image_and_mask_aligned():
    sample = make_sample(5, 96, 128)
    for transform_id in range(NUM_TRANSFORMS):
        choice = choose_augmentation(0, 1, 0, flips=False, rotations_90=False, color_jitter=0.0)
        image = apply_transform(model_input_image(sample, choice, 256), transform_id)
        mask = model_input_mask(sample, 1, transform_id, 256)
        # Bilinear resizing blends the border pixels, so compare the interior only.
        interior = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert interior.sum() > 100
        assert (image[interior] == CLASS_COLORS[1]).all()


def test_augmentation_varies_with_epoch():
    transforms = {
        choose_augmentation(3, epoch, 0, flips=True, rotations_90=True, color_jitter=0.1)
        .transform_id
        for epoch in range(40)
    }
    assert len(transforms) == NUM_TRANSFORMS


def test_color_jitter_fixed_per_image_and_transform():
    # Limitation: with cached embeddings an image shows one colour jitter per transform.
    choices = [
        choose_augmentation(3, epoch, 0, flips=True, rotations_90=True, color_jitter=0.1)
        for epoch in range(40)
    ]
    by_transform: dict[int, set] = {}
    for choice in choices:
        by_transform.setdefault(choice.transform_id, set()).add(choice.color_scales)
    assert all(len(scales) == 1 for scales in by_transform.values())
    assert len({choice.color_scales for choice in choices}) == NUM_TRANSFORMS


def test_balanced_class_weights_inverse_frequency():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    masks = np.zeros((4, 8, 8), dtype=bool)
    masks[:, 0, 0] = True
    sample = TrainingSample(image, masks, np.array([0, 0, 0, 1]))
    weights = balanced_class_weights([sample], 2)
    assert weights.tolist() == pytest.approx([0.5, 1.5])


# ---------------------------------------------------------------------------- losses


def test_dice_of_identical_masks_is_zero():
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, 0, 2:9, 3:7] = 1
    masks[1, 0, 10:, 10:] = 1
    assert float(dice_loss(masks, masks)) == 0.0


def test_dice_of_disjoint_masks_is_near_one():
    first = torch.zeros(1, 1, 16, 16)
    second = torch.zeros(1, 1, 16, 16)
    first[0, 0, :8] = 1
    second[0, 0, 8:] = 1
    assert float(dice_loss(first, second)) == pytest.approx(1.0, abs=0.01)


def test_losses_near_zero_for_perfect_prediction():
    targets = torch.zeros(2, 1, 16, 16)
    targets[0, 0, 2:9, 3:7] = 1
    targets[1, 0, 10:, 10:] = 1
    classes = torch.tensor([2, 0])
    output = DecoderOutput(
        mask_logits=(targets * 2 - 1) * 30,
        iou_pred=torch.ones(2, 1),
        class_logits=torch.nn.functional.one_hot(classes, 3).float() * 30,
    )
    terms = compute_losses(output, targets, classes, LossWeights())
    assert float(terms.dice) < 1e-6
    assert float(terms.bce) < 1e-6
    assert float(terms.ce) < 1e-6
    assert float(terms.iou_mse) == 0.0
    assert float(terms.total) < 1e-5


def test_iou_target_uses_thresholded_prediction():
    targets = torch.zeros(1, 1, 4, 4)
    targets[0, 0, :2] = 1
    logits = torch.full((1, 1, 4, 4), -5.0)
    logits[0, 0, 0] = 5.0
    output = DecoderOutput(logits, torch.zeros(1, 1), torch.zeros(1, 3))
    terms = compute_losses(output, targets, torch.tensor([0]), LossWeights())
    # Prediction covers 4 of the 8 target pixels, so the real IoU is 0.5.
    assert float(terms.iou_mse) == pytest.approx(0.25)


def test_nonfinite_loss_names_step():
    finite = torch.tensor(0.5)
    terms = LossTerms(finite, finite, torch.tensor(float("nan")), finite, finite)
    with pytest.raises(TrainingError, match=r"epoch 2, optimizer step 17: \{'ce': nan\}"):
        check_finite(terms, 2, 17)


def test_training_raises_on_nan_weights(tmp_path):
    model = fresh_model()
    with torch.no_grad():
        model.mask_decoder.class_prediction_head.layers[-1].bias.fill_(float("nan"))
    with pytest.raises(TrainingError, match="optimizer step 1"):
        train(model, train_set()[:1], [], fast_config(epochs=1), tmp_path)
    assert not (tmp_path / STATE_FILE).exists()


def test_learning_rate_warms_up_then_decays():
    config = TrainingConfig(learning_rate=1.0, warmup_steps=4)
    rates = [learning_rate_at(step, 14, config) for step in range(14)]
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4] == pytest.approx(1.0)
    assert rates[9] == pytest.approx(0.5)
    assert all(later < earlier for earlier, later in zip(rates[4:], rates[5:]))
    assert rates[-1] > 0


# ---------------------------------------------------------------------------- embedding cache


def test_embedding_cache_runs_encoder_once_per_key():
    model = fresh_model()
    cache = EmbeddingCache(model)
    image = model_input_image(
        make_sample(0),
        choose_augmentation(0, 1, 0, flips=False, rotations_90=False, color_jitter=0.0),
        model.image_size,
    )
    first = cache.get(("train", 0, 0), lambda: image)
    second = cache.get(("train", 0, 0), lambda: image)
    cache.get(("train", 0, 1), lambda: image)
    assert cache.encoder_runs == 2
    assert cache.hits == 1
    assert second is first
    assert tuple(first.shape) == (1, 32, 16, 16)


def test_embedding_cache_evicts_least_recent():
    model = fresh_model()
    cache = EmbeddingCache(model, max_entries=1)
    image = np.zeros((256, 256, 3), dtype=np.uint8)
    cache.get("x", lambda: image)
    cache.get("y", lambda: image)
    cache.get("x", lambda: image)
    assert cache.encoder_runs == 3
    assert len(cache) == 1


# ---------------------------------------------------------------------------- training


def test_training_reduces_loss(three_epoch_run):
    history = three_epoch_run["result"].history
    assert [record.epoch for record in history] == [1, 2, 3]
    assert history[-1].train_loss < 0.9 * history[0].train_loss
    assert all(math.isfinite(record.val_loss) for record in history)


def test_training_counts_encoder_runs_per_key(three_epoch_run):
    config = fast_config()
    keys = {
        (index, choose_augmentation(
            config.seed, epoch, index, flips=True, rotations_90=True, color_jitter=0.1
        ).transform_id)
        for epoch in (1, 2, 3)
        for index in range(len(SIZES))
    }
    expected = len(keys) + len(val_set())
    assert three_epoch_run["result"].encoder_runs == expected
    assert expected < 3 * len(SIZES) + 3 * len(val_set())


def test_frozen_encoder_unchanged_decoder_changed(three_epoch_run):
    before = three_epoch_run["before"]
    after = three_epoch_run["model"].state_dict()
    encoder_keys = [key for key in before if key.startswith(("image_encoder.", "prompt_encoder."))]
    decoder_keys = [key for key in before if key.startswith("mask_decoder.")]
    assert encoder_keys
    assert all(torch.equal(before[key], after[key]) for key in encoder_keys)
    changed = [key for key in decoder_keys if not torch.equal(before[key], after[key])]
    assert "mask_decoder.class_token.weight" in changed
    assert "mask_decoder.class_prediction_head.layers.2.weight" in changed
    assert len(changed) > len(decoder_keys) // 2


def test_progress_reports_steps_and_epochs(three_epoch_run):
    steps = three_epoch_run["steps"]
    # 18 prompts in batches of 3 give 6 optimizer steps per epoch, plus one epoch report.
    assert len(steps) == 3 * (6 + 1)
    assert [step for _, step, metrics in steps if "lr" in metrics] == list(range(1, 19))
    epoch_reports = [metrics for _, _, metrics in steps if "val_loss" in metrics]
    assert len(epoch_reports) == 3


def test_best_model_saved_with_config(three_epoch_run):
    result = three_epoch_run["result"]
    model, metadata = load_class_aware(result.checkpoint_path)
    assert metadata.training_config == fast_config().to_dict()
    assert model.class_names == tuple(CLASS_NAMES)
    best = min(result.history, key=lambda record: record.val_loss)
    assert result.best_epoch == best.epoch


def test_finished_run_returns_stored_result(three_epoch_run):
    stored = three_epoch_run["result"]
    model = fresh_model()
    again = train(model, train_set(), val_set(), fast_config(), three_epoch_run["folder"])
    assert again.encoder_runs == 0
    assert [record.train_loss for record in again.history] == [
        record.train_loss for record in stored.history
    ]


def test_resume_matches_uninterrupted_run(three_epoch_run, tmp_path):
    finished_epochs = []

    def record_epochs(epoch, step, metrics):
        if "val_loss" in metrics:
            finished_epochs.append(epoch)

    # The first call stops before epoch 3 starts, as a killed worker would.
    first = train(
        fresh_model(), train_set(), val_set(), fast_config(), tmp_path,
        progress=record_epochs, should_stop=lambda: finished_epochs == [1, 2],
    )
    assert first.cancelled
    assert [record.epoch for record in first.history] == [1, 2]

    finished_epochs.clear()
    model = fresh_model()
    second = train(
        model, train_set(), val_set(), fast_config(), tmp_path, progress=record_epochs
    )
    assert finished_epochs == [3]
    assert not second.cancelled
    assert [record.epoch for record in second.history] == [1, 2, 3]

    reference = three_epoch_run["model"].state_dict()
    resumed = model.state_dict()
    assert all(torch.allclose(resumed[key], reference[key]) for key in reference)
    assert second.history[-1].train_loss == pytest.approx(
        three_epoch_run["result"].history[-1].train_loss, rel=1e-5
    )


def test_resume_rejects_other_settings(three_epoch_run, tmp_path):
    folder = three_epoch_run["folder"]
    with pytest.raises(SettingsError, match="different settings: learning_rate"):
        train(fresh_model(), train_set(), val_set(), fast_config(learning_rate=1e-3), folder)
    with pytest.raises(SettingsError, match="different training or validation samples"):
        train(fresh_model(), train_set()[:2], val_set(), fast_config(), folder)


def test_should_stop_cancels_before_first_step(tmp_path):
    model = fresh_model()
    before = decoder_state(model)
    result = train(model, train_set(), val_set(), fast_config(), tmp_path, should_stop=lambda: True)
    assert result.cancelled
    assert result.history == ()
    assert result.checkpoint_path is None
    assert not (tmp_path / STATE_FILE).exists()
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_early_stopping_on_worsening_val(tmp_path):
    # Each validation instance covers its whole image. Training on small shapes teaches
    # the decoder to predict mostly background, so the validation loss rises.
    whole_image = [
        TrainingSample(
            sample.image_rgb,
            np.ones((1, *sample.image_rgb.shape[:2]), dtype=bool),
            np.array([0]),
        )
        for sample in val_set()
    ]
    config = fast_config(epochs=5, early_stopping_patience=1)
    result = train(fresh_model(), train_set(), whole_image, config, tmp_path)
    val_losses = [record.val_loss for record in result.history]
    assert result.stopped_early
    assert len(result.history) == 2
    assert val_losses[1] > val_losses[0]
    assert result.best_epoch == 1
    _, metadata = load_class_aware(result.checkpoint_path)
    assert metadata.training_config["early_stopping_patience"] == 1


def test_trainable_encoder_changes_and_runs_every_batch(tmp_path):
    model = fresh_model()
    before = decoder_state(model)
    samples = train_set()[:2]
    config = fast_config(epochs=1, batch_size=2, freeze_image_encoder=False)
    result = train(model, samples, [], config, tmp_path)
    after = model.state_dict()
    key = "image_encoder.patch_embed.proj.weight"
    assert not torch.equal(before[key], after[key])
    # 6 prompts in batches of 2 from 2 images: each batch encodes its 1 or 2 distinct images.
    assert 3 <= result.encoder_runs <= 6


def _validation_batch(class_logits):
    """Two images, three instances: squares at the logit resolution, predicted exactly."""
    targets = torch.zeros(3, 1, 16, 16)
    targets[0, 0, 2:6, 2:6] = 1
    targets[1, 0, 8:14, 8:14] = 1
    targets[2, 0, 4:10, 4:10] = 1
    output = DecoderOutput(
        mask_logits=torch.where(targets > 0.5, 8.0, -8.0),
        iou_pred=torch.ones(3, 1),
        class_logits=torch.tensor(class_logits, dtype=torch.float32),
    )
    batch = SimpleNamespace(target_masks=targets, target_classes=torch.tensor([0, 1, 0]))
    items = [PromptItem(0, 0), PromptItem(0, 1), PromptItem(1, 0)]
    return items, output, batch


def test_validation_map_of_exact_masks_is_one():
    items, output, batch = _validation_batch([[5, 0], [0, 5], [5, 0]])
    truth, predictions = _evaluation_instances(items, output, batch, ["tubule", "glomerulus"])
    assert (len(truth), len(predictions)) == (3, 3)
    result = evaluate_instances(truth, predictions, ["tubule", "glomerulus"])
    assert result.mean.ap == pytest.approx(1.0)
    assert result.mean.ap50 == pytest.approx(1.0)


def test_validation_map_counts_wrong_class_as_miss():
    # The glomerulus is called a tubule, so it is a tubule false positive and a missed
    # glomerulus.
    items, output, batch = _validation_batch([[5, 0], [5, 0], [5, 0]])
    truth, predictions = _evaluation_instances(items, output, batch, ["tubule", "glomerulus"])
    result = evaluate_instances(truth, predictions, ["tubule", "glomerulus"])
    per_class = {metrics.class_name: metrics for metrics in result.per_class}
    assert per_class["glomerulus"].ap == 0.0
    assert per_class["glomerulus"].recall == 0.0
    assert per_class["tubule"].recall == 1.0
    assert per_class["tubule"].precision == pytest.approx(2 / 3)


def test_epochs_record_validation_map(three_epoch_run):
    history = three_epoch_run["result"].history
    assert all(0.0 <= record.val_map <= record.val_map50 <= 1.0 for record in history)
