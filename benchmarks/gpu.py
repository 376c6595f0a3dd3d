"""GPU path measurements in one prepared run: encoder, a slide's proposals, a training epoch.

GPU machines are lent for minutes at a time, so every GPU measurement runs from one
command and prints one JSON document:

1. ``encoder``: seconds per 1024 px tile of the SAM image encoder, float32 and bfloat16
   autocast, after warm-up, with the device synchronised around every pass.
2. ``proposals``: ``ml.proposals.propose`` as shipped (fast mask generator) on
   cmu-1-small-region.svs at 1 µm/px, float32 and bfloat16 encoder, with its stage seconds.
3. ``training_epoch``: one epoch of ``ml.training.train`` on the KI PAS tiles for a
   class-aware SAM of the same architecture, float32 and with ``bf16_autocast``.

Weights are random (a fixed seed): they cost the same time as trained ones, and no
pretrained SAM can be downloaded here. ``--device cpu --sam-type tiny`` checks the
plumbing on any machine in seconds; the numbers that matter come from ``--device cuda``.

Usage::

    .venv/bin/python benchmarks/gpu.py --out /tmp/gpu.json          # on the GPU machine
    .venv/bin/python benchmarks/gpu.py --device cpu --sam-type tiny  # plumbing check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ml.class_aware import build_class_aware_sam  # noqa: E402
from ml.proposals import ProposalSettings, propose  # noqa: E402
from ml.sam import ARCHITECTURES, TINY_TEST, build_sam  # noqa: E402
from ml.slide import open_slide  # noqa: E402
from ml.tile_dataset import read_tile_dataset  # noqa: E402
from ml.tissue import detect_tissue  # noqa: E402
from ml.training import train  # noqa: E402
from ml.training_config import TrainingConfig  # noqa: E402

logger = logging.getLogger("benchmarks.gpu")

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SLIDE_PATH = SHARED_DATA / "wsi" / "cmu-1-small-region.svs"
KI_ROOT = SHARED_DATA / "kidney_tiles" / "omniseg_KI"
CLASS_NAMES = ("distal tubule", "proximal tubule", "glomerulus", "vessel")
DTYPES = ("float32", "bfloat16")


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_passes(run: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Run ``run`` ``warmup`` times untimed, then return the seconds of ``repeats`` runs."""
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        synchronise(device)
        started = time.perf_counter()
        run()
        synchronise(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def measure_encoder(architecture, device: torch.device, warmup: int, repeats: int) -> dict:
    """Seconds per tile of the image encoder in each precision."""
    torch.manual_seed(0)
    sam = build_sam(architecture).to(device).eval()
    size = sam.image_encoder.img_size
    tile = torch.rand(1, 3, size, size, device=device) * 255
    result = {"image_px": size}
    with torch.inference_mode():
        reference = None
        for dtype in DTYPES:
            with autocast(device, dtype):
                seconds = timed_passes(
                    lambda: sam.image_encoder(sam.preprocess(tile)), device, warmup, repeats
                )
                embedding = sam.image_encoder(sam.preprocess(tile)).float()
            if reference is None:
                reference = embedding
            result[dtype] = {
                "median_s": float(np.median(seconds)),
                "seconds": [round(value, 4) for value in seconds],
                "max_abs_difference_to_float32": float((embedding - reference).abs().max()),
            }
    return result


def measure_proposals(architecture, device: torch.device, points_per_side: int) -> dict:
    """Seconds and stage seconds of ``propose`` on the sample region in each precision."""
    torch.manual_seed(0)
    sam = build_sam(architecture).to(device).eval()
    result = {"slide": SLIDE_PATH.name, "points_per_side": points_per_side}
    with open_slide(SLIDE_PATH) as slide:
        tissue = detect_tissue(slide)
        for dtype in DTYPES:
            settings = ProposalSettings(
                mpp=1.0, points_per_side=points_per_side, encoder_dtype=dtype,
                tile_px=sam.image_encoder.img_size,
            )
            synchronise(device)
            started = time.perf_counter()
            proposed = propose(slide, sam, settings, tissue)
            synchronise(device)
            result[dtype] = {
                "seconds": time.perf_counter() - started,
                "stage_seconds": {k: round(v, 4) for k, v in proposed.stage_seconds.items()},
                "tiles_processed": proposed.tiles_processed,
                "masks_generated": proposed.counts["masks_generated"],
            }
    return result


def measure_training_epoch(architecture, device: torch.device, tiles: int) -> dict:
    """Seconds of one training epoch on KI PAS tiles, float32 and bfloat16 autocast."""
    from benchmarks.learn_ki import to_training_sample

    dataset = read_tile_dataset(KI_ROOT, stains=["pas"])
    samples = [
        to_training_sample(tile, CLASS_NAMES)
        for tile in dataset.samples if tile.instances and tile.class_name in CLASS_NAMES
    ][:tiles]
    result = {"tiles": len(samples)}
    for dtype in DTYPES:
        if dtype == "bfloat16" and device.type != "cuda":
            result[dtype] = {"skipped": "bf16_autocast is supported on CUDA only"}
            continue
        torch.manual_seed(0)
        model = build_class_aware_sam(architecture, CLASS_NAMES)
        config = TrainingConfig(
            epochs=1, batch_size=8, freeze_image_encoder=False, early_stopping_patience=None,
            device=device.type, bf16_autocast=dtype == "bfloat16",
        )
        with tempfile.TemporaryDirectory() as folder:
            synchronise(device)
            started = time.perf_counter()
            trained = train(model, samples, [], config, Path(folder))
            synchronise(device)
        result[dtype] = {
            "seconds": time.perf_counter() - started,
            "train_loss": trained.history[-1].train_loss if trained.history else None,
        }
    return result


def machine() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cpu_threads": torch.get_num_threads(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--sam-type", default="vit_b", choices=(*ARCHITECTURES, "tiny"))
    parser.add_argument("--repeats", type=int, default=5, help="timed encoder passes")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--training-tiles", type=int, default=12)
    parser.add_argument("--skip", action="append", default=[],
                        choices=("encoder", "proposals", "training_epoch"))
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: CUDA is not available on this machine. Run it on a GPU "
              "machine, or use --device cpu --sam-type tiny to check the plumbing.",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    architecture = TINY_TEST if args.sam_type == "tiny" else ARCHITECTURES[args.sam_type]
    report = {"machine": machine(), "device": args.device, "sam_type": args.sam_type}
    steps = {
        "encoder": lambda: measure_encoder(architecture, device, 2, args.repeats),
        "proposals": lambda: measure_proposals(architecture, device, args.points_per_side),
        "training_epoch": lambda: measure_training_epoch(architecture, device, args.training_tiles),
    }
    for name, step in steps.items():
        if name in args.skip:
            continue
        logger.info("Measuring %s on %s", name, args.device)
        report[name] = step()
        if args.out is not None:
            args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
