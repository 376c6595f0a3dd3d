"""Speed benchmark: nephroweb's proposals against Meta's automatic mask generator.

One run segments the same slide with the same SAM weights twice:

- ours: ``ml.proposals.propose`` as shipped (its tiles, tissue skip, mask generator,
  tracing and ``ml.merge``);
- the reference: ``benchmarks.reference_proposals`` (Meta's ``SamAutomaticMaskGenerator``
  on tiles with 50 % overlap, OpenCV tracing, a pairwise merge).

It reports the seconds of each stage (read, encoder, mask generation, polygons, merge,
database write), peak memory, the reference/ours ratio per stage and in total, and the
recall at IoU 0.8 of the reference's instances by ours. A separate part times
``ml.merge.merge_instances`` on synthetic instances (``benchmarks.merge_scaling``).

The default weights are a SAM with random weights drawn from ``--seed``. They cost as
much to run as trained weights of the same architecture, but their masks are arbitrary,
so the recall then shows only that both paths find the same arbitrary masks.

Usage::

    .venv/bin/python benchmarks/run.py --quick          # one 1024 px tile at 2 µm/px
    .venv/bin/python benchmarks/run.py                  # the whole small slide at 1 µm/px
    .venv/bin/python benchmarks/run.py --merge-only 100000   # merge only; 100000 updates its docs section
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts benchmarks/ on sys.path, not the repository root.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import shapely  # noqa: E402
import torch  # noqa: E402

from benchmarks.learn_ki import (  # noqa: E402
    DOCS_PATH,
    command_prefix,
    machine_description,
    update_docs,
)
from benchmarks.merge_scaling import measure_merge_scaling  # noqa: E402
from benchmarks.reference_proposals import run_reference  # noqa: E402
from ml.instances import Instance  # noqa: E402
from ml.proposals import ProposalSettings, propose  # noqa: E402
from ml.sam import ARCHITECTURES, TINY_TEST, build_sam, load_sam  # noqa: E402
from ml.slide import open_slide  # noqa: E402
from ml.tissue import detect_tissue  # noqa: E402

logger = logging.getLogger("benchmarks.run")

SLIDE_PATH = REPO_ROOT.parent / "shared" / "data" / "wsi" / "cmu-1-small-region.svs"
SECTION_TITLE = "## Speed against Meta's automatic mask generator"
STAGES = ("read", "encoder", "mask_generation", "polygons", "merge", "database_write")
RECALL_IOU = 0.8
# --quick reads the slide at 2 µm/px, which fits cmu-1-small-region.svs in one 1024 px tile.
QUICK_MPP = 2.0
SAM_TYPES = (*ARCHITECTURES, "tiny")


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
    """Settings of one benchmark run.

    Attributes:
        slide_path: Slide that both paths segment, whole.
        settings: Proposal settings of ours. The reference takes the same values, except
            that its tiles overlap by half a tile.
        sam_type: "vit_b", "vit_l", "vit_h", or "tiny" (a 0.44 M parameter SAM for tests).
        checkpoint: SAM checkpoint in Meta's format, or None for random weights.
        seed: Seed of the random weights.
        merge_instances: Synthetic instances for the merge timing of ours.
        merge_reference_instances: Synthetic instances for the pairwise reference merge.
        trace_python_memory: Run both paths under tracemalloc. It slows code that makes
            many Python objects, such as the run-length encoding of speckled masks.
        command: Command line recorded in the report.
    """

    slide_path: Path
    settings: ProposalSettings
    sam_type: str = "vit_b"
    checkpoint: Path | None = None
    seed: int = 0
    merge_instances: int = 100_000
    merge_reference_instances: int = 2_000
    trace_python_memory: bool = True
    command: str = ""


def build_model(sam_type: str, checkpoint: Path | None, seed: int):
    """Load ``checkpoint``, or build a SAM of ``sam_type`` with random weights from ``seed``."""
    if checkpoint is not None:
        return load_sam(checkpoint, None if sam_type == "tiny" else sam_type).model
    architecture = TINY_TEST if sam_type == "tiny" else ARCHITECTURES[sam_type]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_sam(architecture)


class EncoderTimer:
    """Forward hooks on SAM's image encoder that add up the seconds spent in it."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._started = 0.0
        self._handles = [
            encoder.register_forward_pre_hook(self._start),
            encoder.register_forward_hook(self._stop),
        ]

    def _start(self, *_) -> None:
        self._started = time.perf_counter()

    def _stop(self, *_) -> None:
        self.seconds += time.perf_counter() - self._started
        self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextmanager
def peak_memory(trace_python: bool = True) -> Iterator[dict[str, float | None]]:
    """Record the peak of Python allocations (tracemalloc) and the process's max RSS, in MiB.

    Max RSS is the maximum over the process's lifetime so far, so only the first path
    measured gets an RSS of its own. Tensors that PyTorch allocates in C++ are not traced.
    Without ``trace_python`` the tracemalloc peak is None.
    """
    measured: dict[str, float | None] = {"tracemalloc_peak_mib": None}
    if trace_python:
        tracemalloc.start()
    try:
        yield measured
    finally:
        if trace_python:
            _, peak_bytes = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            measured["tracemalloc_peak_mib"] = round(peak_bytes / 2**20, 1)
        # Linux reports ru_maxrss in KiB.
        measured["max_rss_mib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        )


def run_ours(slide, model, settings: ProposalSettings, tissue):
    """Run ``propose`` and return (instances, stage seconds, wall seconds, counts).

    The stage seconds are the ones ``propose`` reports in ``ProposalResult.stage_seconds``.
    """
    started = time.perf_counter()
    result = propose(slide, model, settings, tissue)
    wall = time.perf_counter() - started
    stages = {stage: float(result.stage_seconds[stage]) for stage in STAGES[:5]}
    return list(result.instances), stages, wall, dict(result.counts)


def run_reference_timed(slide, model, settings, tissue, encoder_timer: EncoderTimer):
    """Run the reference and return (instances, stage seconds, wall seconds, counts)."""
    encoder_timer.reset()
    started = time.perf_counter()
    result = run_reference(slide, model, settings, tissue)
    wall = time.perf_counter() - started
    stages = dict(result.stage_seconds)
    stages["encoder"] = encoder_timer.seconds
    stages["mask_generation"] = max(0.0, stages["mask_generation"] - encoder_timer.seconds)
    counts = {
        "tiles_processed": result.tiles,
        "masks_generated": result.masks_generated,
        "candidates": result.candidates,
        "kept": len(result.instances),
    }
    return result.instances, stages, wall, counts


def recall_at_iou(
    reference: Sequence, ours: Sequence, iou_threshold: float = RECALL_IOU
) -> float | None:
    """Return the share of ``reference`` polygons that one of ``ours`` matches at IoU >= threshold.

    Each reference polygon is matched on its own (several may match the same polygon of
    ours). Returns None when ``reference`` is empty, because the recall is then undefined.
    """
    if not reference:
        return None
    if not ours:
        return 0.0
    tree = shapely.STRtree(list(ours))
    matched = 0
    for polygon in reference:
        for index in tree.query(polygon, predicate="intersects"):
            other = ours[index]
            intersection = polygon.intersection(other).area
            union = polygon.area + other.area - intersection
            if union > 0 and intersection / union >= iou_threshold:
                matched += 1
                break
    return matched / len(reference)


def time_database_write(
    instances: Sequence[Instance], slide_mpp: float, size_level0: tuple[int, int]
) -> dict:
    """Time building and ``bulk_create``-ing the instance rows into a throw-away slide row.

    Returns ``{"seconds": ..., "rows": ...}``, or ``{"skipped": reason}`` when DATABASE_URL
    is not set or the database cannot be written. The slide row and its instances are
    deleted afterwards.
    """
    if not os.environ.get("DATABASE_URL"):
        return {"skipped": "DATABASE_URL is not set"}
    import django
    from django.conf import settings as django_settings
    from django.db import DatabaseError

    if not django_settings.configured:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nephroweb.settings")
        django.setup()
    from apps.annotations.geometry import instance_row
    from apps.annotations.models import Instance as InstanceRow
    from apps.slides.models import Slide as SlideRow

    width_level0, height_level0 = size_level0
    try:
        slide_row = SlideRow.objects.create(
            name="speed benchmark (deleted after the run)", file_path="", original_filename="",
            origin=SlideRow.Origin.IMPORT, width_px=width_level0, height_px=height_level0,
            mpp=slide_mpp, mpp_source="benchmark", bounds_w_level0=width_level0,
            bounds_h_level0=height_level0,
        )
    except DatabaseError as exc:
        logger.warning("Database write not timed: %s", exc)
        return {"skipped": f"database not writable: {exc}".splitlines()[0]}
    try:
        started = time.perf_counter()
        rows = [
            instance_row(
                instance.polygon_level0, slide=slide_row, mpp=slide_mpp,
                source=InstanceRow.Source.SAM, predicted_iou=instance.predicted_iou,
                stability_score=instance.stability_score,
            )
            for instance in instances
        ]
        InstanceRow.objects.bulk_create(rows, batch_size=2000)
        seconds = time.perf_counter() - started
    finally:
        slide_row.delete()
    return {"seconds": seconds, "rows": len(instances)}


def run_benchmark(options: BenchmarkOptions) -> dict:
    """Run both paths and the merge timing, and return every number as JSON-ready data."""
    settings = options.settings
    model = build_model(options.sam_type, options.checkpoint, options.seed)
    encoder_timer = EncoderTimer(model.image_encoder)
    report: dict = {"paths": {}}
    try:
        with open_slide(options.slide_path) as slide:
            tissue = detect_tissue(slide)
            bounds = slide.info.bounds_level0
            # Ours runs first, so the process's max RSS after it is its own.
            with peak_memory(options.trace_python_memory) as ours_memory:
                ours, ours_stages, ours_wall, ours_counts = run_ours(
                    slide, model, settings, tissue
                )
            with peak_memory(options.trace_python_memory) as reference_memory:
                reference, reference_stages, reference_wall, reference_counts = (
                    run_reference_timed(slide, model, settings, tissue, encoder_timer)
                )
            slide_mpp = slide.mpp
    finally:
        encoder_timer.remove()

    for name, instances, stages, wall, counts, memory in (
        ("ours", ours, ours_stages, ours_wall, ours_counts, ours_memory),
        ("reference", reference, reference_stages, reference_wall, reference_counts,
         reference_memory),
    ):
        written = time_database_write(instances, slide_mpp, (bounds[2], bounds[3]))
        stages["database_write"] = written.get("seconds")
        total = wall + (written.get("seconds") or 0.0)
        report["paths"][name] = {
            "stage_seconds": {stage: _rounded(stages[stage]) for stage in STAGES},
            "wall_seconds": round(wall, 6),
            "total_seconds": round(total, 6),
            "instances": len(instances),
            "counts": counts,
            "peak_memory": memory,
            "database_write": {key: value for key, value in written.items() if key != "seconds"},
        }

    ours_report, reference_report = report["paths"]["ours"], report["paths"]["reference"]
    report["ratios"] = {
        stage: _ratio(
            reference_report["stage_seconds"][stage], ours_report["stage_seconds"][stage]
        )
        for stage in STAGES
    }
    report["ratios"]["total"] = _ratio(
        reference_report["total_seconds"], ours_report["total_seconds"]
    )
    recall = recall_at_iou(
        [instance.polygon_level0 for instance in reference],
        [instance.polygon_level0 for instance in ours],
    )
    report["recall_at_iou_0_8"] = None if recall is None else round(recall, 4)
    if recall is None:
        report["recall_note"] = "undefined: the reference kept no instance"
    report["merge_scaling"] = measure_merge_scaling(
        options.merge_instances, options.merge_reference_instances
    )
    report["settings"] = {
        **settings.to_dict(),
        "sam_type": options.sam_type,
        "weights": str(options.checkpoint) if options.checkpoint else f"random, seed {options.seed}",
        "slide": options.slide_path.name,
        "tracemalloc": options.trace_python_memory,
        "reference_overlap_px": settings.tile_px // 2,
        "ours_overlap_px": settings.resolved_overlap_px,
    }
    report["command"] = options.command
    report["machine"] = machine_description()
    report["date_utc"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    return report


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


def _ratio(reference_seconds: float | None, ours_seconds: float | None) -> float | None:
    if reference_seconds is None or not ours_seconds:
        return None
    return round(reference_seconds / ours_seconds, 3)


def markdown_section(report: dict) -> str:
    """Render the report as the speed section of docs/benchmarks.md."""
    return "\n".join(
        [*_settings_lines(report), *_stage_table(report), *_finding_lines(report), ""]
    )


def _settings_lines(report: dict) -> list[str]:
    settings = report["settings"]
    return [
        SECTION_TITLE,
        "",
        "Both paths segment the same slide with the same SAM weights in one process. Ours is "
        "`ml.proposals.propose` as shipped. The reference (`benchmarks/reference_proposals.py`) "
        "runs segment-anything's `SamAutomaticMaskGenerator` on every tile of a grid with 50 % "
        "overlap, applies the same filters and tracing (`ml.tile_masks.trace_mask`), and "
        "merges by comparing each instance with every kept one, by the rules of `ml.merge`. "
        "The ratio is reference seconds / ours. Encoder seconds come from forward hooks on "
        "the image encoder. "
        + ("Both paths ran under tracemalloc, which slows Python code alike in both."
           if report["settings"]["tracemalloc"] else "tracemalloc was off."),
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {report['date_utc']} UTC",
        f"- Machine: {report['machine']}; other jobs shared the cores, so times are upper "
        "bounds and ratios are the numbers to compare",
        f"- Slide: `{settings['slide']}` at {settings['mpp']} µm/px, tiles of "
        f"{settings['tile_px']} px, {settings['points_per_side']} x {settings['points_per_side']} "
        f"points, overlap {settings['ours_overlap_px']} px (ours) and "
        f"{settings['reference_overlap_px']} px (reference)",
        f"- Weights: {settings['sam_type']}, {settings['weights']}; pred_iou_thresh "
        f"{settings['pred_iou_thresh']}, stability_score_thresh "
        f"{settings['stability_score_thresh']}",
        f"- Ours: mask_generator `{settings['mask_generator']}`, encoder_dtype "
        f"`{settings['encoder_dtype']}`, stage seconds from `ProposalResult.stage_seconds`",
        "",
    ]


def _stage_table(report: dict) -> list[str]:
    ours, reference = report["paths"]["ours"], report["paths"]["reference"]
    lines = [
        "| stage | reference s | ours s | reference / ours |",
        "|---|---|---|---|",
    ]
    for stage in STAGES:
        reference_seconds = reference["stage_seconds"][stage]
        ours_seconds = ours["stage_seconds"][stage]
        # A ratio of two times under a millisecond is timer noise.
        measurable = min(reference_seconds or 0.0, ours_seconds or 0.0) >= 0.001
        ratio = _cell(report["ratios"][stage]) if measurable else "n/a"
        lines.append(
            f"| {stage} | {_cell(reference_seconds)} | {_cell(ours_seconds)} | {ratio} |"
        )
    lines += [
        f"| **total** | {reference['total_seconds']:.3f} | {ours['total_seconds']:.3f} | "
        f"{_cell(report['ratios']['total'])} |",
        "",
    ]
    return lines


def _finding_lines(report: dict) -> list[str]:
    ours, reference = report["paths"]["ours"], report["paths"]["reference"]
    merge = report["merge_scaling"]
    recall = report["recall_at_iou_0_8"]
    lines = [
        f"- Masks generated: reference {reference['counts']['masks_generated']} on "
        f"{reference['counts']['tiles_processed']} tiles, ours "
        f"{ours['counts']['masks_generated']} on {ours['counts']['tiles_processed']} tiles. "
        f"Instances kept after filters and merge: reference {reference['instances']}, "
        f"ours {ours['instances']}",
        f"- Peak memory: Python allocations (tracemalloc) "
        f"{_mib(reference['peak_memory']['tracemalloc_peak_mib'])} reference, "
        f"{_mib(ours['peak_memory']['tracemalloc_peak_mib'])} ours; max RSS after "
        f"ours {ours['peak_memory']['max_rss_mib']} MiB, after both "
        f"{reference['peak_memory']['max_rss_mib']} MiB",
        "- Recall at IoU 0.8 of the reference's instances by ours: "
        + ("undefined (the reference kept no instance)" if recall is None else f"{recall:.3f}"),
    ]
    if report["settings"]["weights"].startswith("random"):
        lines.append(
            "- This recall is not the equivalence check that matters: random weights give "
            "arbitrary masks, so it only shows that both paths find the same arbitrary masks. "
            "A recall on real masks needs a trained SAM checkpoint (`--checkpoint`), or "
            "a trained class-aware model: the section \"Whole slide with a trained model\" "
            "(`benchmarks/whole_slide.py`) has that recall."
        )
    if "skipped" in ours["database_write"]:
        lines.append(f"- Database write: skipped, {ours['database_write']['skipped']}")
    lines += [
        f"- Merge: `merge_instances` on {merge['instances']} synthetic instances took "
        f"{merge['seconds']:.2f} s ({merge['kept']} kept). On {merge['reference_instances']} "
        f"instances the pairwise merge took {merge['reference_seconds']:.2f} s and ours "
        f"{merge['ours_seconds_on_reference_instances']:.3f} s (ratio "
        f"{_cell(merge['ratio_on_reference_instances'])}); same kept set: {merge['same_kept']}",
        f"- Merge at full size: see \"{MERGE_SECTION_TITLE}\" (`{MERGE_ONLY_COMMAND}`).",
    ]
    return lines


def merge_section(report: dict, command: str) -> str:
    """Render a ``--merge-only`` report as its own section of docs/benchmarks.md."""
    return "\n".join([
        MERGE_SECTION_TITLE,
        "",
        f"`merge_instances` on {report['instances']} synthetic instances (discs on a grid, about "
        f"20 % of them duplicates from a neighbouring tile, `benchmarks/merge_scaling.py`) took "
        f"{report['seconds']:.2f} s "
        f"and kept {report['kept']}; the target is under 5 s for 100 000. The pairwise merge "
        f"of the reference took {report['reference_seconds']:.2f} s for "
        f"{report['reference_instances']} of them, and ours "
        f"{report['ours_seconds_on_reference_instances']:.3f} s on the same ones (ratio "
        f"{_cell(report['ratio_on_reference_instances'])}), with the same kept set: "
        f"{report['same_kept']}.",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_description()}",
        "",
    ])


MERGE_SECTION_TITLE = "## Merging 100 000 instances"
MERGE_ONLY_COMMAND = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run.py --merge-only 100000"


def _mib(value: float | None) -> str:
    return "not traced" if value is None else f"{value} MiB"


def _cell(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value < 0.001:
        return "< 0.001"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def parse_options(argv: Sequence[str] | None) -> tuple[argparse.Namespace, BenchmarkOptions]:
    """Parse the command line into the namespace and the benchmark options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"read the slide at {QUICK_MPP} µm/px (one 1024 px tile) and "
                        "merge 10000 synthetic instances")
    parser.add_argument("--slide", type=Path, default=SLIDE_PATH, help="slide to segment, whole")
    parser.add_argument("--mpp", type=float, help="working pixel size in µm/px (default 1.0)")
    parser.add_argument("--sam-type", choices=SAM_TYPES, default="vit_b",
                        help="SAM architecture; 'tiny' is the 0.44 M parameter test model")
    parser.add_argument("--checkpoint", type=Path,
                        help="SAM checkpoint in Meta's format (default: random weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--points-per-side", type=int, default=32,
                        help="prompt points per tile side for both paths")
    parser.add_argument("--points-per-batch", type=int, default=64,
                        help="prompts per decoder batch for both paths")
    parser.add_argument("--pred-iou-thresh", type=float,
                        help="minimum predicted IoU of a mask, 0..1 (default 0.88 with a "
                        "checkpoint, 0 with random weights, whose masks rarely pass 0.88)")
    parser.add_argument("--stability-score-thresh", type=float,
                        help="minimum stability score of a mask, 0..1 (default 0.95 with a "
                        "checkpoint, 0 with random weights)")
    parser.add_argument("--merge-only", type=int, metavar="N",
                        help="only time merge_instances on N synthetic instances")
    parser.add_argument("--merge-reference-instances", type=int,
                        help="synthetic instances for the pairwise reference merge "
                        "(default 2000, 500 with --quick)")
    parser.add_argument("--no-tracemalloc", action="store_true",
                        help="time both paths without tracemalloc (no Python allocation peak)")
    parser.add_argument("--docs", type=Path, default=DOCS_PATH,
                        help="markdown file whose speed section the run replaces")
    args = parser.parse_args(argv)

    with_checkpoint = args.checkpoint is not None
    mpp = args.mpp
    if mpp is None:
        mpp = QUICK_MPP if args.quick else 1.0
    settings = ProposalSettings(
        mpp=mpp,
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=_threshold(args.pred_iou_thresh, 0.88, with_checkpoint),
        stability_score_thresh=_threshold(args.stability_score_thresh, 0.95, with_checkpoint),
    )
    arguments = list(sys.argv[1:] if argv is None else argv)
    # The docs path says only where the report went, so the recorded command leaves it out.
    if "--docs" in arguments:
        position = arguments.index("--docs")
        del arguments[position : position + 2]
    command = command_prefix() + ".venv/bin/python benchmarks/run.py" + "".join(
        f" {arg}" for arg in arguments
    )
    options = BenchmarkOptions(
        slide_path=args.slide,
        settings=settings,
        sam_type=args.sam_type,
        checkpoint=args.checkpoint,
        seed=args.seed,
        merge_instances=args.merge_only or (10_000 if args.quick else 100_000),
        merge_reference_instances=args.merge_reference_instances
        or (500 if args.quick else 2_000),
        trace_python_memory=not args.no_tracemalloc,
        command=command,
    )
    return args, options


def _threshold(value: float | None, with_checkpoint_default: float, with_checkpoint: bool) -> float:
    if value is not None:
        return value
    return with_checkpoint_default if with_checkpoint else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line, print its report as JSON and update the docs."""
    args, options = parse_options(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.merge_only:
        report = measure_merge_scaling(options.merge_instances, options.merge_reference_instances)
        print(json.dumps(report, indent=2))
        if args.merge_only == 100_000:
            update_docs(args.docs, merge_section(report, MERGE_ONLY_COMMAND))
        return 0

    report = run_benchmark(options)
    print(json.dumps(report, indent=2))
    update_docs(args.docs, markdown_section(report))
    logger.info("Wrote the section %r of %s", SECTION_TITLE, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
