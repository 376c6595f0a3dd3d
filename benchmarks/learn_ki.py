"""Learnability benchmark: train a small class-aware SAM from scratch on real KI kidney tiles.

The question is whether the training pipeline learns anything from real tissue, not how
good a production model is. One command reads the KI tiles, splits them by source image,
trains a small class-aware SAM on the train side and evaluates it on the held-out side
with ``ml.evaluation`` (pycocotools). The prompt encoder, decoder and class head always
start from random weights. The image encoder is either a frozen ImageNet
EfficientNet-Lite0 (``--encoder efficientnet``, the default) or a small ViT trained from
random weights (``--encoder vit``), which learned too little in the time on this machine
(the mask Dice loss stayed at 0.95 for 30 epochs, 13 minutes). Two references learn
nothing:

- ``prior_disc``: at each prompt point, one disc per class with the median training area
  of that class, scored by the class's share of training instances. It knows the class
  frequencies and sizes but never looks at the image.
- ``random_weights``: the same small model with its random initial weights.

Prompts at evaluation: one foreground point per ground-truth instance, placed on the
instance's innermost pixel (the maximum of its distance transform). Each prompt gives one
prediction: the mask (logit > 0), the most probable class, and the score
``predicted IoU x class probability``. Each KI tile annotates one class only, so a
prompt-grid evaluation as in ``ml.segmentation`` would count every unannotated structure
as a false positive. It is left out for that reason.

Usage::

    .venv/bin/python benchmarks/learn_ki.py            # full run, updates docs/benchmarks.md
    .venv/bin/python benchmarks/learn_ki.py --quick    # plumbing check, 3 epochs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts benchmarks/ on sys.path, not the repository root.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ml.class_aware import ClassAwareSam, build_class_aware_sam  # noqa: E402
from ml.efficientnet_lite import (  # noqa: E402
    efficientnet_architecture,
    load_imagenet_state_dict,
    use_efficientnet_encoder,
)
from ml.evaluation import EvaluationInstance, EvaluationResult, evaluate_instances  # noqa: E402
from ml.sam import SamArchitecture  # noqa: E402
from ml.tile_dataset import TileSample, read_tile_dataset, split_by_source  # noqa: E402
from ml.training import TrainingConfig, train  # noqa: E402
from ml.training_config import AugmentConfig  # noqa: E402
from ml.training_data import TrainingSample  # noqa: E402

logger = logging.getLogger("benchmarks.learn_ki")

KI_ROOT = REPO_ROOT.parent / "shared" / "data" / "kidney_tiles" / "omniseg_KI"
DOCS_PATH = REPO_ROOT / "docs" / "benchmarks.md"
SECTION_TITLE = "## Learnability on KI tiles"
CLASS_NAMES = ("distal tubule", "proximal tubule", "glomerulus", "vessel")
HELD_OUT_FRACTION = 0.25

# Encoder "vit": a SAM sized for a 2-core CPU with 256 px input (the KI tile size, so no
# resampling), a 16 x 16 embedding grid with 64 x 64 mask logits, a 4-block ViT of width
# 96 and about 1.4 M parameters, all trained from random weights.
VIT_ARCHITECTURE = SamArchitecture(
    encoder_embed_dim=96,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1, 3),
    window_size=4,
    prompt_embed_dim=64,
    image_size=256,
    patch_size=16,
)
# Encoder "efficientnet": EfficientNet-Lite0 with ImageNet weights, kept frozen, so its
# embeddings are computed once per tile and transform. The prompt encoder and decoder
# start from random weights.
EFFICIENTNET_ARCHITECTURE = efficientnet_architecture(256)
ENCODERS = ("efficientnet", "vit")
EPOCHS = {("efficientnet", False): 1000, ("vit", False): 60, ("efficientnet", True): 3, ("vit", True): 3}


def build_model(encoder: str, seed: int) -> ClassAwareSam:
    """Build the benchmark model for ``encoder`` with random weights drawn from ``seed``."""
    torch.manual_seed(seed)
    if encoder == "vit":
        return build_class_aware_sam(VIT_ARCHITECTURE, CLASS_NAMES)
    model = build_class_aware_sam(EFFICIENTNET_ARCHITECTURE, CLASS_NAMES)
    use_efficientnet_encoder(model, load_imagenet_state_dict())
    return model


def training_config(encoder: str, quick: bool, seed: int) -> TrainingConfig:
    """Return the run settings: single-point prompts, the ViT trains, EfficientNet is frozen.

    Single-point prompts in training match the prompts at evaluation. From random weights
    the learning rate is ten times the fine-tuning default.
    """
    return TrainingConfig(
        epochs=EPOCHS[(encoder, quick)],
        batch_size=16,
        learning_rate=1e-3,
        weight_decay=0.01,
        warmup_steps=10 if quick else 30,
        points_per_instance=1,
        use_box_prompts=False,
        freeze_image_encoder=encoder == "efficientnet",
        freeze_prompt_encoder=False,
        class_weights="balanced",
        augment=AugmentConfig(flips=True, rotations_90=True, color_jitter=0.1),
        early_stopping_patience=None,
        seed=seed,
        device="cpu",
    )


@dataclass(frozen=True)
class Split:
    """Tiles on each side of a source-wise split and the seed that produced it."""

    train: tuple[TileSample, ...]
    held_out: tuple[TileSample, ...]
    seed: int


def split_covering_classes(
    tiles: Sequence[TileSample], class_names: Sequence[str], first_seed: int
) -> Split:
    """Split by source with the first seed from ``first_seed`` whose held-out side has every class.

    KI has four tiles per class and stain, so some seeds hold out no tile of a class and
    its AP would be undefined.
    """
    for seed in range(first_seed, first_seed + 100):
        train_tiles, held_out = split_by_source(tiles, HELD_OUT_FRACTION, seed)
        held_classes = {tile.class_name for tile in held_out if tile.instances}
        train_classes = {tile.class_name for tile in train_tiles if tile.instances}
        if set(class_names) <= held_classes and set(class_names) <= train_classes:
            return Split(train_tiles, held_out, seed)
    raise RuntimeError(
        f"No seed in {first_seed}..{first_seed + 99} puts every class of {list(class_names)} "
        "on both sides of the split. Read more stains with --stains all."
    )


def to_training_sample(tile: TileSample, class_names: Sequence[str]) -> TrainingSample:
    """Convert a KI tile to a training sample with its instances' class indices."""
    height, width = tile.image_rgb.shape[:2]
    masks = np.zeros((len(tile.instances), height, width), dtype=bool)
    for index, instance in enumerate(tile.instances):
        masks[index] = instance.mask
    classes = np.full(len(tile.instances), class_names.index(tile.class_name), dtype=np.int64)
    return TrainingSample(tile.image_rgb, masks, classes)


def innermost_point_xy(mask: np.ndarray) -> tuple[float, float]:
    """Return the pixel centre (x, y) of the mask pixel farthest from the background."""
    padded = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(col) + 0.5, float(row) + 0.5


def truth_instances(tiles: Sequence[TileSample]) -> list[EvaluationInstance]:
    """Return every instance of the tiles as evaluation ground truth, one image per tile."""
    return [
        EvaluationInstance(image_id=str(tile.image_path), class_name=tile.class_name, mask=instance.mask)
        for tile in tiles
        for instance in tile.instances
    ]


@torch.no_grad()
def model_predictions(
    model: ClassAwareSam, tiles: Sequence[TileSample]
) -> tuple[list[EvaluationInstance], dict[str, float]]:
    """Prompt every instance of ``tiles`` with its innermost point and collect the predictions.

    Returns:
        The non-empty predicted masks as evaluation instances, and prompt-level numbers:
        the share of prompts whose top class is right and the mean mask IoU with the
        prompted instance (class ignored, empty masks count as IoU 0).
    """
    model.eval()
    size = model.image_size
    predictions = []
    correct = 0
    ious = []
    for tile in tiles:
        if not tile.instances:
            continue
        height, width = tile.image_rgb.shape[:2]
        if (height, width) != (size, size):
            raise ValueError(
                f"Tile {tile.image_path} is {width} x {height} px, but the model input is "
                f"{size} x {size}. Use an architecture with image_size {width}."
            )
        image = torch.from_numpy(tile.image_rgb).permute(2, 0, 1)[None].float()
        embedding = model.embed_images(image)
        points = torch.tensor(
            [[innermost_point_xy(instance.mask)] for instance in tile.instances],
            dtype=torch.float32,
        )
        prediction = model.predict(
            embedding, point_coords=points, point_labels=torch.ones(points.shape[:2], dtype=torch.int64)
        )
        probabilities, class_indexes = prediction.class_probabilities.max(dim=1)
        for index, instance in enumerate(tile.instances):
            mask = prediction.masks[index].numpy()
            class_name = model.class_names[int(class_indexes[index])]
            correct += class_name == tile.class_name
            union = np.logical_or(mask, instance.mask).sum()
            ious.append(float(np.logical_and(mask, instance.mask).sum() / union) if union else 0.0)
            if not mask.any():
                continue
            score = float(prediction.iou_predictions[index].clamp(0, 1) * probabilities[index])
            predictions.append(
                EvaluationInstance(str(tile.image_path), class_name, mask=mask, score=score)
            )
    prompt_count = len(ious)
    return predictions, {
        "prompts": prompt_count,
        "class_accuracy": correct / prompt_count,
        "mean_mask_iou": float(np.mean(ious)),
    }


def prior_disc_predictions(
    train_tiles: Sequence[TileSample], tiles: Sequence[TileSample], class_names: Sequence[str]
) -> list[EvaluationInstance]:
    """Predict, at each instance's innermost point, one disc per class sized by training data.

    Each disc has the median instance area of its class in ``train_tiles`` and the score
    of that class's share of training instances. No pixel of the image is read.
    """
    areas = {name: [] for name in class_names}
    for tile in train_tiles:
        areas[tile.class_name].extend(instance.area_px for instance in tile.instances)
    total = sum(len(values) for values in areas.values())
    radius_px = {name: float(np.sqrt(np.median(areas[name]) / np.pi)) for name in class_names}
    share = {name: len(areas[name]) / total for name in class_names}

    predictions = []
    for tile in tiles:
        height, width = tile.image_rgb.shape[:2]
        for instance in tile.instances:
            x, y = innermost_point_xy(instance.mask)
            for name in class_names:
                disc = np.zeros((height, width), dtype=np.uint8)
                cv2.circle(disc, (int(x), int(y)), max(1, round(radius_px[name])), 1, thickness=-1)
                predictions.append(
                    EvaluationInstance(str(tile.image_path), name, mask=disc.astype(bool), score=share[name])
                )
    return predictions


def metrics_summary(result: EvaluationResult) -> dict[str, object]:
    """Return per-class AP50 and AP, and their means over classes, rounded to 4 digits."""

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return {
        "per_class": {
            metrics.class_name: {
                "n_truth": metrics.n_truth,
                "ap50": rounded(metrics.ap50),
                "ap": rounded(metrics.ap),
                "recall50": rounded(metrics.recall),
            }
            for metrics in result.per_class
        },
        "map50": rounded(result.mean.ap50),
        "map": rounded(result.mean.ap),
    }


def run_benchmark(
    encoder: str, quick: bool, stains: Sequence[str] | None, seed: int, work_dir: Path
) -> dict:
    """Read, split, train, evaluate, and return every number as JSON-ready data."""
    started = time.perf_counter()
    dataset = read_tile_dataset(KI_ROOT, stains=stains)
    split = split_covering_classes(dataset.samples, CLASS_NAMES, seed)
    train_samples = [to_training_sample(tile, CLASS_NAMES) for tile in split.train]
    config = training_config(encoder, quick, seed)
    model = build_model(encoder, seed)
    truth = truth_instances(split.held_out)
    random_predictions, random_prompts = model_predictions(model, split.held_out)

    train_started = time.perf_counter()
    result = train(model, train_samples, [], config, work_dir / "checkpoints")
    train_seconds = time.perf_counter() - train_started
    trained_predictions, trained_prompts = model_predictions(model, split.held_out)

    evaluations = {
        "trained": (trained_predictions, trained_prompts),
        "random_weights": (random_predictions, random_prompts),
        "prior_disc": (prior_disc_predictions(split.train, split.held_out, CLASS_NAMES), None),
    }
    methods = {}
    for name, (predictions, prompt_numbers) in evaluations.items():
        summary = metrics_summary(evaluate_instances(truth, predictions, CLASS_NAMES))
        if prompt_numbers is not None:
            summary["prompts"] = {key: round(value, 4) for key, value in prompt_numbers.items()}
        methods[name] = summary

    history = result.history
    return {
        "command": command_prefix() + ".venv/bin/python benchmarks/learn_ki.py"
        + (" --quick" if quick else ""),
        "stains": sorted({tile.stain for tile in dataset.samples}),
        "split": {
            "seed": split.seed,
            "train_tiles": len(split.train),
            "held_out_tiles": len(split.held_out),
            "train_instances": dict(Counter(tile.class_name for tile in split.train for _ in tile.instances)),
            "held_out_instances": dict(
                Counter(tile.class_name for tile in split.held_out for _ in tile.instances)
            ),
        },
        "encoder": encoder,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "trained_parameters": sum(
            parameter.numel() for parameter in model.parameters() if parameter.requires_grad
        ),
        "training": {
            "epochs": len(history),
            "first_epoch_loss": round(history[0].train_loss, 4),
            "last_epoch_loss": round(history[-1].train_loss, 4),
            "seconds": round(train_seconds, 1),
            "config": config.to_dict(),
        },
        "methods": methods,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": machine_description(),
    }


def command_prefix() -> str:
    """Return ``OMP_NUM_THREADS=N `` when that variable is set, else an empty string."""
    threads = os.environ.get("OMP_NUM_THREADS")
    return f"OMP_NUM_THREADS={threads} " if threads else ""


def machine_description() -> str:
    """Describe the CPU and thread count that the run used."""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op threads, "
        f"CUDA {'available' if torch.cuda.is_available() else 'not used'}"
    )


def markdown_section(report: dict) -> str:
    """Render the report as the "Learnability on KI tiles" section of docs/benchmarks.md."""
    methods = report["methods"]
    split = report["split"]
    lines = [
        SECTION_TITLE,
        "",
        "Does the class-aware SAM learn from real kidney tissue? A small class-aware SAM "
        f"({report['parameters'] / 1e6:.2f} M parameters, {report['trained_parameters'] / 1e6:.2f} M "
        f"trained; image encoder `{report['encoder']}`, see `benchmarks/learn_ki.py`) trains from "
        f"random weights on the train side of the KI tiles ({', '.join(report['stains'])}), "
        "split by source image so that no source is on both sides. With the encoder "
        "`efficientnet`, only the image encoder is pretrained (ImageNet EfficientNet-Lite0, "
        "frozen); the prompt encoder, the decoder and the class head start from random weights. "
        "It is evaluated on the held-out side with `ml.evaluation` (pycocotools). Each "
        "ground-truth instance is prompted with one foreground point on its innermost pixel and "
        "gives one mask, class and score (predicted IoU x class probability).",
        "",
        "References that learn nothing: `prior_disc` puts, at each prompt point, one disc per "
        "class with that class's median training area, scored by the class's share of training "
        "instances. `random_weights` is the same model before training.",
        "",
        "The encoder `vit` (a 4-block ViT of width 96 trained from random weights) cost about "
        "27 s per epoch here and its mask Dice loss stayed at 0.95 for 30 epochs, so the "
        "default is `efficientnet`.",
        "",
        f"- Command: `{report['command']}`",
        f"- Wall time: {report['wall_seconds']:.0f} s in all, training {report['training']['seconds']:.0f} s "
        f"for {report['training']['epochs']} epochs (loss {report['training']['first_epoch_loss']} -> "
        f"{report['training']['last_epoch_loss']})",
        f"- Machine: {report['machine']}; other jobs shared the two cores, so times are upper bounds",
        f"- Split (seed {split['seed']}): {split['train_tiles']} train tiles, "
        f"{split['held_out_tiles']} held-out tiles; held-out instances "
        + ", ".join(f"{name} {count}" for name, count in sorted(split["held_out_instances"].items())),
        "",
        "| class | held-out instances | AP50 trained | AP50 prior_disc | AP50 random_weights "
        "| AP trained | AP prior_disc |",
        "|---|---|---|---|---|---|---|",
    ]
    for class_name in CLASS_NAMES:
        row = [methods[name]["per_class"][class_name] for name in ("trained", "prior_disc", "random_weights")]
        lines.append(
            f"| {class_name} | {row[0]['n_truth']} | {_cell(row[0]['ap50'])} | {_cell(row[1]['ap50'])} "
            f"| {_cell(row[2]['ap50'])} | {_cell(row[0]['ap'])} | {_cell(row[1]['ap'])} |"
        )
    lines.append(
        f"| **mean** | | {_cell(methods['trained']['map50'])} | {_cell(methods['prior_disc']['map50'])} "
        f"| {_cell(methods['random_weights']['map50'])} | {_cell(methods['trained']['map'])} "
        f"| {_cell(methods['prior_disc']['map'])} |"
    )
    trained_prompts = methods["trained"]["prompts"]
    random_prompts = methods["random_weights"]["prompts"]
    lines += [
        "",
        f"Per prompt: class accuracy {trained_prompts['class_accuracy']:.3f} trained vs "
        f"{random_prompts['class_accuracy']:.3f} with random weights; mean mask IoU with the "
        f"prompted instance {trained_prompts['mean_mask_iou']:.3f} vs "
        f"{random_prompts['mean_mask_iou']:.3f}.",
        "",
        "Reading the numbers: training learns where `trained` beats `prior_disc`, and "
        "`random_weights` shows the pipeline's floor. The held-out side has few tiles, so one "
        "instance moves a class's AP by several points. KI tiles annotate one class each, so a "
        "structure of another class in the same tile is never ground truth.",
        "",
    ]
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def update_docs(path: Path, section: str) -> None:
    """Replace the section of ``path`` whose heading is ``section``'s first line, or append it.

    Other sections stay as they are. The file is replaced atomically.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    title = section.split("\n", 1)[0]
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line and print its report as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true",
        help="train 3 epochs as a plumbing check and leave the docs unchanged",
    )
    parser.add_argument(
        "--encoder", choices=ENCODERS, default="efficientnet",
        help="image encoder: frozen ImageNet EfficientNet-Lite0, or a small ViT trained from scratch",
    )
    parser.add_argument(
        "--stains", default="pas",
        help="comma-separated KI stain folders (pas, he, sil, tri) or 'all'; default pas",
    )
    parser.add_argument("--seed", type=int, default=0, help="first split seed and training seed")
    parser.add_argument(
        "--docs", type=Path, default=DOCS_PATH,
        help="markdown file whose benchmark section a full run replaces",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stains = None if args.stains == "all" else [name.strip() for name in args.stains.split(",")]

    with tempfile.TemporaryDirectory(prefix="learn_ki_") as work_dir:
        report = run_benchmark(args.encoder, args.quick, stains, args.seed, Path(work_dir))
    for name, default in (("encoder", "efficientnet"), ("stains", "pas"), ("seed", 0)):
        if getattr(args, name) != default:
            report["command"] += f" --{name} {getattr(args, name)}"
    print(json.dumps(report, indent=2))
    if not args.quick:
        update_docs(args.docs, markdown_section(report))
        logger.info("Wrote the section %r of %s", SECTION_TITLE, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
