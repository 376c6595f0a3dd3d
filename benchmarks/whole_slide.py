"""A whole slide against Meta's automatic mask generator, with a model that gives real masks.

Random SAM weights (``benchmarks/run.py``) give arbitrary masks, so they measure cost but
not whether the fast path finds the same objects. This benchmark uses the demo model
instead: the class-aware recipe of ``ml.demo_model`` (ImageNet EfficientNet-Lite0
encoder) trained on a sample slide of ``ml.sample_slide``, then run on a
second sample slide with another random layout that it never saw.

- Ours: ``ml.segmentation.segment_slide`` as the segment task runs it, with
  ``demo_segmentation_settings()``.
- Reference: segment-anything's ``SamAutomaticMaskGenerator`` driving the same model
  through ``ClassAwareAsSam`` on every tile of a grid with 50 % overlap, 32 x 32 points
  per tile, the same class, size and tissue filters and tracing, and the pairwise merge
  (``benchmarks/reference_proposals.py``).

Both run in one process on the same slide and weights. The ratio is reference seconds /
ours, and the recall is the share of the reference's instances that one of ours matches
at IoU >= 0.8.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/whole_slide.py      # updates docs/benchmarks.md
    .venv/bin/python benchmarks/whole_slide.py --size 1024 768 --epochs 1 --no-docs  # plumbing
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts benchmarks/ on sys.path, not the repository root.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import shapely  # noqa: E402
import torch  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402

from benchmarks.learn_ki import DOCS_PATH, command_prefix, machine_description, update_docs  # noqa: E402
from benchmarks.reference_proposals import ClassAwareAsSam, run_reference  # noqa: E402
from benchmarks.run import EncoderTimer, recall_at_iou  # noqa: E402
from ml.demo_model import (  # noqa: E402
    build_demo_model,
    demo_segmentation_settings,
    demo_training_config,
    demo_training_samples,
    load_demo_model,
)
from ml.errors import NephrowebError  # noqa: E402
from ml.sample_slide import write_sample_slide  # noqa: E402
from ml.segmentation import segment_slide  # noqa: E402
from ml.slide import open_slide  # noqa: E402
from ml.tissue import detect_tissue  # noqa: E402
from ml.training import train  # noqa: E402

logger = logging.getLogger("benchmarks.whole_slide")

SECTION_TITLE = "## Whole slide with a trained model"
WORK_DIR = REPO_ROOT / "var" / "benchmarks" / "whole_slide"
TRAIN_SEED = 0
BENCHMARK_SEED = 1
RECALL_IOU = 0.8


def trained_demo_model(work_dir: Path, epochs: int, size_level0: tuple[int, int]):
    """Return the demo model trained on the training sample slide, training it if not cached.

    The weights are kept in ``work_dir`` per epoch count and slide size, so a rerun
    measures speed without training again. Returns (model, training seconds or None).
    """
    model_dir = work_dir / f"model-{epochs}-epochs-{size_level0[0]}x{size_level0[1]}"
    # best.safetensors exists from the first epoch on, so only a finished run writes this.
    weights = model_dir / "trained.safetensors"
    if weights.exists():
        logger.info("Using the trained demo model in %s", weights)
        return load_demo_model(weights), None
    truth = write_sample_slide(work_dir / "train.tiff", size_level0=size_level0, seed=TRAIN_SEED)
    model = build_demo_model()
    started = time.perf_counter()
    result = train(
        model, demo_training_samples(truth), [], demo_training_config(epochs=epochs), model_dir
    )
    seconds = time.perf_counter() - started
    if result.checkpoint_path is None:
        raise RuntimeError(f"Training wrote no checkpoint in {model_dir}.")
    partial = weights.with_name(weights.name + ".partial")
    shutil.copyfile(result.checkpoint_path, partial)
    os.replace(partial, weights)
    return load_demo_model(weights), seconds


def max_rss_mib() -> float:
    """Return the process's peak resident memory so far in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(options: argparse.Namespace) -> dict:
    """Run both paths on the benchmark sample slide and return every number as JSON-ready data.

    Besides ours as shipped, two variants of ours run. One uses the reference's tiles and
    prompt grid, so only the code paths differ and their results should agree. The other
    skips prompts inside kept masks.
    """
    work_dir = options.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    size_level0 = tuple(options.size)
    model, train_seconds = trained_demo_model(work_dir, options.epochs, size_level0)
    model.eval()
    truth = write_sample_slide(
        work_dir / "benchmark.tiff", size_level0=size_level0, seed=BENCHMARK_SEED
    )
    slide = open_slide(truth.path)
    tissue = detect_tissue(slide)
    settings = demo_segmentation_settings()
    variants = {
        "ours": settings,
        "ours_reference_grid": replace(
            settings,
            points_per_side=options.reference_points_per_side,
            overlap_px=settings.tile_px // 2,
        ),
        "ours_skipping": replace(settings, skip_prompts_in_kept_masks=True),
    }
    timer = EncoderTimer(model.image_encoder)

    results, seconds, cpu_seconds, encoder_seconds = {}, {}, {}, {}
    for name, variant in variants.items():
        timer.reset()
        started, cpu_started = time.perf_counter(), time.process_time()
        results[name] = segment_slide(slide, model, variant, tissue)
        seconds[name] = time.perf_counter() - started
        cpu_seconds[name] = time.process_time() - cpu_started
        encoder_seconds[name] = timer.seconds
    ours_rss = max_rss_mib()

    timer.reset()
    adapter = ClassAwareAsSam(model, settings.background_class, settings.min_class_probability)
    generator = SamAutomaticMaskGenerator(
        adapter,
        points_per_side=options.reference_points_per_side,
        points_per_batch=settings.points_per_batch,
        pred_iou_thresh=settings.min_predicted_iou,
        stability_score_thresh=0.0,
        box_nms_thresh=settings.duplicate_box_iou,
        output_mode="binary_mask",
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    reference = run_reference(slide, adapter, settings, tissue, generator)
    reference_seconds = time.perf_counter() - started
    reference_cpu_seconds = time.process_time() - cpu_started
    reference_encoder = timer.seconds
    timer.remove()

    reference_polygons = [instance.polygon_level0 for instance in reference.instances]
    truth_polygons = [drawn.polygon_level0 for drawn in truth.objects]
    # The reference's instances that outline a drawn object well: the masks that matter.
    truth_tree = shapely.STRtree(truth_polygons)
    reference_correct = [
        polygon
        for polygon in reference_polygons
        if recall_at_iou(
            [polygon], [truth_polygons[i] for i in truth_tree.query(polygon)], RECALL_IOU
        )
    ]

    def recalls(found: list) -> dict:
        """Return the recalls of ``found``; None where there is nothing to recall (see note)."""
        return {
            "note": (
                "undefined where the reference kept no instance or has no correct one"
                if not reference_polygons or not reference_correct
                else ""
            ),
            "of_reference_at_iou80": _rounded(recall_at_iou(reference_polygons, found, RECALL_IOU)),
            "of_reference_at_iou50": _rounded(recall_at_iou(reference_polygons, found, 0.5)),
            "of_reference_correct_at_iou80": _rounded(
                recall_at_iou(reference_correct, found, RECALL_IOU)
            ),
            "of_truth_at_iou50": _rounded(recall_at_iou(truth_polygons, found, 0.5)),
            "of_truth_at_iou80": _rounded(recall_at_iou(truth_polygons, found, RECALL_IOU)),
        }

    report_variants = {}
    for name, variant in variants.items():
        result = results[name]
        polygons = [instance.polygon_level0 for instance in result.instances]
        report_variants[name] = {
            "points_per_side": variant.points_per_side,
            "skip_prompts_in_kept_masks": variant.skip_prompts_in_kept_masks,
            "seconds": _rounded(seconds[name]),
            "encoder_seconds": _rounded(encoder_seconds[name]),
            "after_encoder_seconds": _rounded(seconds[name] - encoder_seconds[name]),
            "tiles_total": result.tiles_total,
            "tiles_processed": result.tiles_processed,
            "overlap_px": result.overlap_px,
            "prompts": result.counts["masks_generated"],
            "instances": len(result.instances),
            "speedup": _rounded(reference_seconds / seconds[name]),
            "cpu_seconds": _rounded(cpu_seconds[name]),
            "cpu_speedup": _rounded(reference_cpu_seconds / cpu_seconds[name]),
            "recall": recalls(polygons),
        }
    return {
        "command": command_prefix()
        + ".venv/bin/python benchmarks/whole_slide.py"
        + _non_default_arguments(options),
        "slide": {
            "width_px": truth.width_px,
            "height_px": truth.height_px,
            "mpp": truth.mpp,
            "objects": len(truth.objects),
        },
        "settings": {
            "mpp": settings.mpp,
            "tile_px": settings.tile_px,
            "min_predicted_iou": settings.min_predicted_iou,
            "min_class_probability": settings.min_class_probability,
        },
        "training_seconds": _rounded(train_seconds),
        "epochs": options.epochs,
        "reference": {
            "points_per_side": options.reference_points_per_side,
            "overlap_px": settings.tile_px // 2,
            "seconds": _rounded(reference_seconds),
            "cpu_seconds": _rounded(reference_cpu_seconds),
            "encoder_seconds": _rounded(reference_encoder),
            "after_encoder_seconds": _rounded(reference_seconds - reference_encoder),
            "stage_seconds": {
                name: _rounded(value) for name, value in reference.stage_seconds.items()
            },
            "tiles": reference.tiles,
            "prompts": reference.tiles * options.reference_points_per_side**2,
            "masks_generated": reference.masks_generated,
            "instances": len(reference.instances),
            "correct_instances": len(reference_correct),
            "truth_recall_at_iou50": _rounded(
                recall_at_iou(truth_polygons, reference_polygons, 0.5)
            ),
            "truth_recall_at_iou80": _rounded(
                recall_at_iou(truth_polygons, reference_polygons, RECALL_IOU)
            ),
        },
        "variants": report_variants,
        "max_rss_mib_after_ours": round(ours_rss, 1),
        "max_rss_mib_after_all": round(max_rss_mib(), 1),
        "machine": machine_description(),
    }


def _non_default_arguments(options: argparse.Namespace) -> str:
    parts = []
    if tuple(options.size) != DEFAULT_SIZE:
        parts.append(f" --size {options.size[0]} {options.size[1]}")
    if options.epochs != demo_training_config().epochs:
        parts.append(f" --epochs {options.epochs}")
    if options.reference_points_per_side != 32:
        parts.append(f" --reference-points-per-side {options.reference_points_per_side}")
    return "".join(parts)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def markdown_section(report: dict) -> str:
    """Render the report as the whole-slide section of docs/benchmarks.md."""
    slide, reference, variants = report["slide"], report["reference"], report["variants"]
    ours, dense, skipping = (
        variants["ours"],
        variants["ours_reference_grid"],
        variants["ours_skipping"],
    )
    training = (
        f"trained for {report['epochs']} epochs in {report['training_seconds']:.0f} s"
        if report["training_seconds"] is not None
        else f"trained for {report['epochs']} epochs in an earlier run (cached weights)"
    )
    columns = (reference, ours, dense, skipping)

    def row(label: str, values) -> str:
        return f"| {label} | " + " | ".join(str(value) for value in values) + " |"

    lines = [
        SECTION_TITLE,
        "",
        "Does the fast path find the objects that Meta's generator finds, with a model whose "
        "masks are real? `benchmarks/whole_slide.py` trains the demo model (EfficientNet-Lite0 "
        "class-aware SAM, `ml.demo_model`) on one sample slide and segments a second sample "
        "slide with another random layout in one process. Ours is "
        "`ml.segmentation.segment_slide` as the segment task runs it, and two variants of it. "
        "The reference is segment-anything's `SamAutomaticMaskGenerator` driving the same "
        "model through `ClassAwareAsSam`. That adapter gives one mask per prompt and folds the "
        "background and class-probability filters into the predicted IoU. The reference runs "
        "on every tile of a grid with 50 % overlap, then applies the same size, tissue and "
        "tracing rules and the pairwise merge.",
        "",
        f"- Command: `{report['command']}`",
        f"- Machine: {report['machine']}. Other jobs may have shared the two cores, and the "
        "runs follow each other, so wall times can differ by load. The CPU seconds of this "
        "process (`time.process_time`) depend far less on other jobs, so their ratio is the "
        "number to compare.",
        f"- Slide: {slide['width_px']} x {slide['height_px']} px at {slide['mpp']} µm/px, "
        f"{slide['objects']} drawn objects, segmented at {report['settings']['mpp']} µm/px in "
        f"tiles of {report['settings']['tile_px']} px",
        f"- Model: demo model {training}",
        "",
        "| | reference | ours | ours on the reference's tiles and points | ours, skipping prompts in kept masks |",
        "|---|---|---|---|---|",
        row("points per tile", [f"{column['points_per_side']}²" for column in columns]),
        row("tile overlap px", [column["overlap_px"] for column in columns]),
        row(
            "tiles segmented",
            [reference["tiles"]]
            + [f"{column['tiles_processed']} of {column['tiles_total']}" for column in columns[1:]],
        ),
        row("prompts decoded", [column["prompts"] for column in columns]),
        row("encoder s", [f"{column['encoder_seconds']:.1f}" for column in columns]),
        row(
            "after the encoder s", [f"{column['after_encoder_seconds']:.1f}" for column in columns]
        ),
        row("**total s**", [f"{column['seconds']:.1f}" for column in columns]),
        row(
            "reference s / this",
            ["(itself)"] + [f"{column['speedup']:.1f}" for column in columns[1:]],
        ),
        row("CPU s of this process", [f"{column['cpu_seconds']:.1f}" for column in columns]),
        row(
            "**reference CPU s / this**",
            ["(itself)"] + [f"**{column['cpu_speedup']:.1f}**" for column in columns[1:]],
        ),
        row("instances kept", [column["instances"] for column in columns]),
        row(
            "recall of the reference's instances, IoU 0.8",
            ["(itself)"]
            + [_share(column["recall"]["of_reference_at_iou80"]) for column in columns[1:]],
        ),
        row(
            "recall of the reference's correct instances, IoU 0.8",
            ["(itself)"]
            + [_share(column["recall"]["of_reference_correct_at_iou80"]) for column in columns[1:]],
        ),
        row(
            "recall of the drawn objects, IoU 0.5",
            [_share(reference["truth_recall_at_iou50"])]
            + [_share(column["recall"]["of_truth_at_iou50"]) for column in columns[1:]],
        ),
        row(
            "recall of the drawn objects, IoU 0.8",
            [_share(reference["truth_recall_at_iou80"])]
            + [_share(column["recall"]["of_truth_at_iou80"]) for column in columns[1:]],
        ),
        "",
        f"- The reference's correct instances are the {reference['correct_instances']} of its "
        f"{reference['instances']} instances that match a drawn object at IoU >= 0.8.",
        f"- Peak resident memory: {report['max_rss_mib_after_ours']:.0f} MiB after our runs, "
        f"{report['max_rss_mib_after_all']:.0f} MiB after all.",
    ]
    return "\n".join(lines) + "\n"


def _ratio(reference: float | None, ours: float | None) -> str:
    if not reference or not ours:
        return "n/a"
    return f"{reference / ours:.1f}"


def _share(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


DEFAULT_SIZE = (6144, 4608)


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=DEFAULT_SIZE,
        metavar=("WIDTH", "HEIGHT"),
        help="level-0 size of both sample slides",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=demo_training_config().epochs,
        help="training epochs of the demo model",
    )
    parser.add_argument(
        "--reference-points-per-side",
        type=int,
        default=32,
        help="prompt grid of the reference per tile",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=WORK_DIR,
        help="folder for the slides and the cached model weights",
    )
    parser.add_argument("--docs", type=Path, default=DOCS_PATH, help="Markdown file to update")
    parser.add_argument("--no-docs", action="store_true", help="print JSON only")
    options = parser.parse_args(argv)
    if min(options.size) < 512:
        parser.error(
            f"--size must be at least 512 512 px, got {options.size[0]} {options.size[1]}."
        )
    if options.epochs < 1 or options.reference_points_per_side < 1:
        parser.error("--epochs and --reference-points-per-side must be at least 1.")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    try:
        report = run(options)
    except (NephrowebError, ValueError) as error:
        print(f"{Path(__file__).name}: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    if not options.no_docs:
        update_docs(options.docs, markdown_section(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
