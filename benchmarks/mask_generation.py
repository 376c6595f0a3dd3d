"""Time SAM's encoder in float32 and bfloat16, and mask generation by Meta's and the fast generator.

Builds a SAM with random weights in-process (vit_b by default, or the tiny test model),
reads one tile of a slide at 1 µm/px and prints one JSON object:

- ``encoder_seconds``: interleaved encoder runs per dtype;
- ``bfloat16_mask_iou``: IoU of the fast generator's masks with a bfloat16 encoder
  against float32, all three masks of every prompt, no filters;
- ``after_encoder_seconds``: seconds after the encoder for Meta's and the fast
  generator, with the given thresholds and with none.

Random weights measure cost only, never mask quality.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mask_generation.py --points-per-side 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.mask_generation import FastMaskGenerator, ReferenceMaskGenerator, encoder_precision  # noqa: E402
from ml.sam import TINY_TEST, VIT_B, build_sam  # noqa: E402
from ml.slide import open_slide  # noqa: E402

DEFAULT_SLIDE = Path("/work/shared/data/wsi/cmu-1-small-region.svs")


def encoder_seconds(model, image_rgb: np.ndarray, encoder_dtype: str) -> float:
    """Return the wall seconds of one ``SamPredictor.set_image`` call."""
    predictor = SamPredictor(model)
    started = time.perf_counter()
    with torch.no_grad(), encoder_precision(torch.device("cpu"), encoder_dtype):
        predictor.set_image(image_rgb)
    return time.perf_counter() - started


def bfloat16_mask_iou(model, image_rgb: np.ndarray, points_per_side: int) -> dict[str, float]:
    """Return the share of float32 masks with IoU >= 0.9 to their bfloat16 mask, and the median."""
    unfiltered = dict(
        points_per_side=points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        box_nms_thresh=1.0,
    )
    float32 = FastMaskGenerator(model, **unfiltered).generate(image_rgb).records
    bfloat16 = FastMaskGenerator(model, **unfiltered, encoder_dtype="bfloat16").generate(
        image_rgb
    ).records
    # With NMS off both lists hold every mask. A mask's partner is the best match among
    # the masks whose predicted IoU differs by under 1e-3.
    ious = []
    for first in float32:
        best = 0.0
        for second in bfloat16:
            if abs(first.predicted_iou - second.predicted_iou) >= 1e-3:
                continue
            union = np.logical_or(first.mask, second.mask).sum()
            iou = np.logical_and(first.mask, second.mask).sum() / union if union else 1.0
            best = max(best, float(iou))
        ious.append(best)
    return {
        "masks": len(ious),
        "share_iou_at_least_0.9": float(np.mean(np.array(ious) >= 0.9)),
        "median_iou": float(np.median(ious)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=DEFAULT_SLIDE, help="slide file")
    parser.add_argument("--model", choices=("vit_b", "tiny"), default="vit_b",
                        help="SAM architecture with random weights")
    parser.add_argument("--points-per-side", type=int, default=8, help="prompt grid per side")
    parser.add_argument("--repeats", type=int, default=3, help="encoder runs per dtype")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_sam(VIT_B if args.model == "vit_b" else TINY_TEST).requires_grad_(False)
    with open_slide(args.slide) as slide:
        image_rgb = slide.working_frame(1.0).read(slide, 0, 0, 1024, 1024)

    report = {"model": args.model, "threads": torch.get_num_threads(), "encoder_seconds": {}}
    for _ in range(args.repeats):
        for encoder_dtype in ("float32", "bfloat16"):
            seconds = encoder_seconds(model, image_rgb, encoder_dtype)
            report["encoder_seconds"].setdefault(encoder_dtype, []).append(round(seconds, 3))
    report["bfloat16_mask_iou"] = bfloat16_mask_iou(model, image_rgb, args.points_per_side)

    report["after_encoder_seconds"] = {}
    for pred_iou_thresh, stability_score_thresh in ((0.88, 0.95), (0.0, 0.0)):
        settings = dict(
            points_per_side=args.points_per_side, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
        )
        reference = ReferenceMaskGenerator(model, **settings).generate(image_rgb)
        fast = FastMaskGenerator(model, **settings).generate(image_rgb)
        report["after_encoder_seconds"][f"{pred_iou_thresh}/{stability_score_thresh}"] = {
            "reference": round(reference.mask_generation_seconds, 2),
            "fast": round(fast.mask_generation_seconds, 2),
            "reference_masks": len(reference.records),
            "fast_masks": len(fast.records),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
