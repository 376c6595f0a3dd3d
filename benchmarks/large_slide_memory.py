"""Worker memory on a 100 000 x 80 000 px slide: bounded by the tiles in flight, not the slide.

Writes a synthetic pyramidal TIFF of ``--size`` level-0 pixels at 0.5 µm/px, blank glass
except for ``--copies`` copies of a sample slide (``ml.sample_slide``) spread
over it, without ever holding a whole level in memory. Then, in a fresh process per
slide, it detects tissue and runs ``ml.segmentation.segment_slide`` with the demo model
on the large slide and on one sample slide alone, and reports each process's peak
resident memory. If memory grew with the slide, the large slide would need far more.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/large_slide_memory.py   # updates docs/benchmarks.md
    .venv/bin/python benchmarks/large_slide_memory.py --size 8192 6144 --copies 1 --no-docs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts benchmarks/ on sys.path, not the repository root.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402

from benchmarks.learn_ki import DOCS_PATH, command_prefix, machine_description, update_docs  # noqa: E402
from ml.errors import NephrowebError  # noqa: E402
from ml.pyramid_tiff import MIN_LEVEL_SIDE_PX, TILE_PX, write_level  # noqa: E402
from ml.sample_slide import GLASS_RGB, write_sample_slide  # noqa: E402

logger = logging.getLogger("benchmarks.large_slide_memory")

SECTION_TITLE = "## Memory on a 100 000 x 80 000 px slide"
WORK_DIR = REPO_ROOT / "var" / "benchmarks" / "large_slide"
MPP = 0.5
DEFAULT_SIZE = (100_000, 80_000)
SAMPLE_SEED = 1


def write_large_slide(
    path: Path,
    size_level0: tuple[int, int],
    patch_rgb: np.ndarray,
    origins_level0: Sequence[tuple[int, int]],
) -> int:
    """Write a blank pyramidal TIFF with ``patch_rgb`` pasted at each origin; return the level count.

    Tiles are made one at a time from the patch (downsampled once per level), so memory
    stays at one patch per level whatever the slide size.
    """
    width_px, height_px = size_level0
    temporary = path.with_name(path.name + ".partial")
    level_count = 0
    with tifffile.TiffWriter(temporary, bigtiff=True) as writer:
        downsample = 1
        while True:
            level_w, level_h = width_px // downsample, height_px // downsample
            patch = (
                patch_rgb
                if downsample == 1
                else cv2.resize(
                    patch_rgb,
                    (patch_rgb.shape[1] // downsample, patch_rgb.shape[0] // downsample),
                    interpolation=cv2.INTER_AREA,
                )
            )
            origins = [(x // downsample, y // downsample) for x, y in origins_level0]
            write_level(
                writer,
                _level_tiles(level_w, level_h, patch, origins),
                mpp=MPP,
                downsample=downsample,
                shape=(level_h, level_w, 3),
                dtype=np.uint8,
            )
            level_count += 1
            if min(level_w, level_h) // 2 < MIN_LEVEL_SIDE_PX:
                break
            downsample *= 2
    os.replace(temporary, path)
    return level_count


def _level_tiles(
    width_px: int, height_px: int, patch: np.ndarray, origins: Sequence[tuple[int, int]]
) -> Iterator[np.ndarray]:
    """Yield the level's tiles row by row; tiles away from every patch share one array."""
    blank = np.empty((TILE_PX, TILE_PX, 3), dtype=np.uint8)
    blank[:] = GLASS_RGB
    patch_h, patch_w = patch.shape[:2]
    for tile_y in range(0, height_px, TILE_PX):
        for tile_x in range(0, width_px, TILE_PX):
            tile = blank
            for origin_x, origin_y in origins:
                x0, y0 = max(tile_x, origin_x), max(tile_y, origin_y)
                x1 = min(tile_x + TILE_PX, origin_x + patch_w, width_px)
                y1 = min(tile_y + TILE_PX, origin_y + patch_h, height_px)
                if x0 >= x1 or y0 >= y1:
                    continue
                if tile is blank:
                    tile = blank.copy()
                tile[y0 - tile_y : y1 - tile_y, x0 - tile_x : x1 - tile_x] = patch[
                    y0 - origin_y : y1 - origin_y, x0 - origin_x : x1 - origin_x
                ]
            yield tile


def spread_origins(
    size_level0: tuple[int, int], patch_hw: tuple[int, int], copies: int
) -> list[tuple[int, int]]:
    """Place ``copies`` patches on a grid over the slide, each in its own cell."""
    columns = int(np.ceil(np.sqrt(copies)))
    rows = int(np.ceil(copies / columns))
    cell_w, cell_h = size_level0[0] // columns, size_level0[1] // rows
    if cell_w < patch_hw[1] or cell_h < patch_hw[0]:
        raise ValueError(
            f"{copies} copies of a {patch_hw[1]} x {patch_hw[0]} px patch do not fit on a "
            f"{size_level0[0]} x {size_level0[1]} px slide. Use fewer copies or a larger size."
        )
    origins = []
    for index in range(copies):
        row, column = divmod(index, columns)
        origins.append(
            (
                column * cell_w + (cell_w - patch_hw[1]) // 2,
                row * cell_h + (cell_h - patch_hw[0]) // 2,
            )
        )
    return origins


def measure(slide_path: Path, weights: Path) -> dict:
    """Segment one slide with the demo model in this process and return its peak memory."""
    import torch

    from ml.demo_model import demo_segmentation_settings, load_demo_model
    from ml.segmentation import segment_slide
    from ml.slide import open_slide
    from ml.tissue import detect_tissue

    torch.manual_seed(0)
    rss_after_imports = resident_mib()
    sampler = PeakSampler()
    sampler.start()
    try:
        model = load_demo_model(weights).eval()
        started = time.perf_counter()
        slide = open_slide(slide_path)
        tissue = detect_tissue(slide)
        result = segment_slide(slide, model, demo_segmentation_settings(), tissue)
    finally:
        sampler.stop()
    return {
        "slide": slide_path.name,
        "width_px": slide.info.width_px,
        "height_px": slide.info.height_px,
        "tiles_total": result.tiles_total,
        "tiles_processed": result.tiles_processed,
        "instances": len(result.instances),
        "seconds": round(time.perf_counter() - started, 1),
        "rss_mib_after_imports": round(rss_after_imports, 1),
        "peak_rss_mib_while_segmenting": round(sampler.peak_mib, 1),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def resident_mib() -> float:
    """Return this process's resident memory now, in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmRSS line; this benchmark needs Linux.")


class PeakSampler:
    """Sample the resident memory every 20 ms in a thread and keep the largest value.

    ``ru_maxrss`` cannot tell the run from the imports before it, because importing
    PyTorch's CUDA build alone may touch more memory than the run needs.
    """

    def __init__(self) -> None:
        self.peak_mib = resident_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, resident_mib())

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mib = max(self.peak_mib, resident_mib())


def measure_in_fresh_process(slide_path: Path, weights: Path) -> dict:
    """Run ``measure`` in a child process, so that earlier work does not count in its peak."""
    completed = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--measure",
            str(slide_path),
            "--weights",
            str(weights),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(completed.stdout)


def run(options: argparse.Namespace) -> dict:
    work_dir = options.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    sample_path = work_dir / "sample.tiff"
    write_sample_slide(sample_path, mpp=MPP, seed=SAMPLE_SEED)
    patch = tifffile.imread(sample_path, key=0)

    size_level0 = tuple(options.size)
    large_path = work_dir / f"large-{size_level0[0]}x{size_level0[1]}-{options.copies}.tiff"
    write_seconds = None
    if not large_path.exists():
        started = time.perf_counter()
        origins = spread_origins(size_level0, patch.shape[:2], options.copies)
        write_large_slide(large_path, size_level0, patch, origins)
        write_seconds = round(time.perf_counter() - started, 1)
    del patch

    small = measure_in_fresh_process(sample_path, options.weights)
    large = measure_in_fresh_process(large_path, options.weights)
    return {
        "command": command_prefix()
        + ".venv/bin/python benchmarks/large_slide_memory.py"
        + ("" if size_level0 == DEFAULT_SIZE else f" --size {size_level0[0]} {size_level0[1]}")
        + ("" if options.copies == 4 else f" --copies {options.copies}"),
        "copies": options.copies,
        "file_mib": round(large_path.stat().st_size / 2**20, 1),
        "write_seconds": write_seconds,
        "sample": small,
        "large": large,
        "machine": machine_description(),
    }


def markdown_section(report: dict) -> str:
    small, large = report["sample"], report["large"]
    lines = [
        SECTION_TITLE,
        "",
        "Does a worker's memory grow with the slide? `benchmarks/large_slide_memory.py` writes a "
        f"{large['width_px']} x {large['height_px']} px pyramidal TIFF at {MPP} µm/px (zlib tiles, "
        f"{report['file_mib']:.0f} MiB on disk), blank glass except for {report['copies']} copies "
        "of a sample slide, tile by tile. A fresh process per slide then detects "
        "tissue and segments it with the demo model (`segment_slide`, "
        "`demo_segmentation_settings()`), sampling its resident memory every 20 ms.",
        "",
        f"- Command: `{report['command']}`",
        f"- Machine: {report['machine']}",
        "",
        "| slide | level-0 px | tiles in grid | tiles segmented | instances | seconds | "
        "RSS after imports MiB | peak RSS while segmenting MiB | ru_maxrss MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in (("sample slide", small), ("large slide", large)):
        lines.append(
            f"| {name} | {row['width_px']} x {row['height_px']} | {row['tiles_total']} | "
            f"{row['tiles_processed']} | {row['instances']} | {row['seconds']} | "
            f"{row['rss_mib_after_imports']:.0f} | {row['peak_rss_mib_while_segmenting']:.0f} | "
            f"{row['max_rss_mib']:.0f} |"
        )
    pixels_ratio = (large["width_px"] * large["height_px"]) / (
        small["width_px"] * small["height_px"]
    )
    lines += [
        "",
        f"The large slide has {pixels_ratio:.0f} times the pixels of the sample slide and "
        f"{large['tiles_processed'] / max(1, small['tiles_processed']):.1f} times its tissue "
        f"tiles; its peak memory while segmenting is "
        f"{large['peak_rss_mib_while_segmenting'] / small['peak_rss_mib_while_segmenting']:.2f} "
        f"times the sample's, and {large['peak_rss_mib_while_segmenting'] / 1024:.2f} GiB in all "
        "(the target was under 3 GB). `ru_maxrss` is the process's high-water mark, imports "
        "included. "
        "The tissue mask is read at a pixel size that caps its long side "
        "(`ml.tissue.MAX_MASK_PX`), tiles are read one at a time, and only the kept instances "
        "of the slide accumulate.",
    ]
    return "\n".join(lines) + "\n"


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=DEFAULT_SIZE,
        metavar=("WIDTH", "HEIGHT"),
        help="level-0 size of the large slide",
    )
    parser.add_argument("--copies", type=int, default=4, help="copies of the sample slide on it")
    parser.add_argument(
        "--weights",
        type=Path,
        default=REPO_ROOT
        / "var"
        / "benchmarks"
        / "whole_slide"
        / "model-40-epochs-6144x4608"
        / "trained.safetensors",
        help="demo model weights (benchmarks/whole_slide.py trains and caches them)",
    )
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR, help="folder for the slides")
    parser.add_argument("--docs", type=Path, default=DOCS_PATH, help="Markdown file to update")
    parser.add_argument("--no-docs", action="store_true", help="print JSON only")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if min(options.size) < MIN_LEVEL_SIDE_PX or options.copies < 1:
        parser.error(
            f"--size must be at least {MIN_LEVEL_SIDE_PX} px a side and --copies at least 1, "
            f"got --size {options.size[0]} {options.size[1]} --copies {options.copies}."
        )
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    if options.measure is not None:
        print(json.dumps(measure(options.measure, options.weights)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not options.weights.exists():
        print(
            f"Demo model weights {options.weights} do not exist. Run benchmarks/whole_slide.py "
            "first, or pass --weights.",
            file=sys.stderr,
        )
        return 2
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
