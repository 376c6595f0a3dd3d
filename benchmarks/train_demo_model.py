"""Train the demo model recipe (``ml.demo_model``) on the sample slide and measure it.

Writes the synthetic sample slide to a temporary folder, trains the recipe from its
random decoder weights, segments the whole slide with ``segment_slide`` and reports the
share of known objects found at IoU >= 0.5 and their class accuracy.

Usage::

    .venv/bin/python benchmarks/train_demo_model.py            # updates docs/benchmarks.md
    .venv/bin/python benchmarks/train_demo_model.py --epochs 2 # plumbing check
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts benchmarks/ on sys.path, not the repository root.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.learn_ki import (  # noqa: E402
    DOCS_PATH,
    command_prefix,
    machine_description,
    update_docs,
)
from ml.demo_model import (  # noqa: E402
    build_demo_model,
    demo_training_config,
    demo_training_samples,
    measure_demo_model,
)
from ml.sample_slide import write_sample_slide  # noqa: E402
from ml.training import train  # noqa: E402

logger = logging.getLogger("benchmarks.train_demo_model")

SECTION_TITLE = "## Demo model on the sample slide"


def run(epochs: int, work_dir: Path) -> dict:
    """Train and measure the recipe, and return every number as JSON-ready data."""
    started = time.perf_counter()
    truth = write_sample_slide(work_dir / "sample.tiff")
    samples = demo_training_samples(truth)
    model = build_demo_model()
    config = demo_training_config(epochs=epochs)

    train_started = time.perf_counter()
    result = train(model, samples, [], config, work_dir / "checkpoints")
    train_seconds = time.perf_counter() - train_started

    measure_started = time.perf_counter()
    measured = measure_demo_model(model, truth)
    measure_seconds = time.perf_counter() - measure_started
    history = result.history
    return {
        "command": command_prefix() + ".venv/bin/python benchmarks/train_demo_model.py"
        + ("" if epochs == demo_training_config().epochs else f" --epochs {epochs}"),
        "crops": len(samples),
        "instances": sum(sample.num_instances for sample in samples),
        "epochs": len(history),
        "first_epoch_loss": round(history[0].train_loss, 4),
        "last_epoch_loss": round(history[-1].train_loss, 4),
        "last_epoch_dice_loss": round(history[-1].train_dice, 4),
        "last_epoch_class_loss": round(history[-1].train_ce, 4),
        "train_seconds": round(train_seconds, 1),
        "segment_seconds": round(measure_seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "objects": measured.objects,
        "recall_at_iou50": {name: round(value, 4) for name, value in measured.recall_per_class.items()},
        "recall_at_iou50_all": round(measured.recall, 4),
        "class_accuracy_of_matched": round(measured.class_accuracy, 4),
        "predictions": measured.predictions,
        "machine": machine_description(),
    }


def markdown_section(report: dict) -> str:
    """Render the report as the demo model's section of docs/benchmarks.md."""
    recall = ", ".join(
        f"{name} {value:.3f} of {report['objects'][name]}"
        for name, value in report["recall_at_iou50"].items()
    )
    return "\n".join(
        [
            SECTION_TITLE,
            "",
            "Can the offline demo train its own model? The recipe of `ml.demo_model` (frozen "
            "ImageNet EfficientNet-Lite0 encoder, prompt encoder and decoder from random weights, "
            "single-point prompts) trains on the synthetic slide of `ml.sample_slide` and then "
            "segments the whole slide with `ml.segmentation.segment_slide` and "
            "`demo_segmentation_settings()`. A known object counts as found when a predicted "
            "instance overlaps it with IoU >= 0.5.",
            "",
            f"- Command: `{report['command']}`",
            f"- Training: {report['crops']} crops, {report['instances']} instances, "
            f"{report['epochs']} epochs in {report['train_seconds']:.0f} s (loss "
            f"{report['first_epoch_loss']} -> {report['last_epoch_loss']}, last Dice loss "
            f"{report['last_epoch_dice_loss']}, last class loss {report['last_epoch_class_loss']})",
            f"- Segmentation of the slide: {report['segment_seconds']:.0f} s, "
            f"{report['predictions']} instances kept",
            f"- Recall at IoU 0.5: {recall}; all objects {report['recall_at_iou50_all']:.3f}",
            f"- Class accuracy of the found objects: {report['class_accuracy_of_matched']:.3f}",
            f"- Machine: {report['machine']}; other jobs shared the two cores, so times are "
            "upper bounds",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement from the command line and print its report as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=demo_training_config().epochs,
        help="training epochs; the docs are updated only with the recipe's default",
    )
    parser.add_argument(
        "--docs", type=Path, default=DOCS_PATH,
        help="markdown file whose demo model section the run replaces",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    with tempfile.TemporaryDirectory(prefix="demo_model_") as work_dir:
        report = run(args.epochs, Path(work_dir))
    print(json.dumps(report, indent=2))
    if args.epochs == demo_training_config().epochs:
        update_docs(args.docs, markdown_section(report))
        logger.info("Wrote the section %r of %s", SECTION_TITLE, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
