"""The cost of the tile journal to a run: one committed row per tile, against one encoder pass.

A proposal or segmentation run commits each finished tile's outlines to PostgreSQL before
it goes on (apps/annotations/journal.py), so that a worker taking the run over skips that
tile. This script measures that cost on outlines of real kidney tissue. One journal tile
is 1024 px wide and contains a 4 x 4 mosaic of KI tubule masks (256 px at about 1 µm/px).
Each mask is traced into outlines as a run traces SAM's masks. In one process, on a
throw-away PostgreSQL database, it times:

- write: ``RunJournal.record_tile`` of each tile, one committed row;
- resume: ``RunJournal.completed_tiles`` of all rows, what a taking-over worker reads;
- reference: one pass of SAM's image encoder on a 1024 px tile, which every tile costs.
  Its weights are random, which costs as much as trained weights of the same size.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/tile_journal.py --write-docs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.api_latency import (  # noqa: E402
    DOCS_PATH,
    machine_description,
    throwaway_database,
    write_marked_section,
)

DOCS_BEGIN = "<!-- tile-journal:begin -->"
DOCS_END = "<!-- tile-journal:end -->"
DEFAULT_SLIDE = REPO.parent / "shared" / "data" / "wsi" / "cmu-1-small-region.svs"
KI_ROOT = REPO.parent / "shared" / "data" / "kidney_tiles" / "omniseg_KI"
TUBULE_CLASSES = ("0_1_dt", "1_1_pt")
MASK_PX = 256
TILE_PX = 1024
ENCODER_CHOICES = ("vit_b", "vit_l", "vit_h", "tiny")

logger = logging.getLogger("benchmarks.tile_journal")


def tubule_masks(root: Path = KI_ROOT) -> list[Path]:
    """Return the KI tubule mask files, sorted by path."""
    masks = sorted(path for name in TUBULE_CLASSES for path in (root / name).rglob("*_mask_*.png"))
    if not masks:
        raise FileNotFoundError(f"No tubule masks (*_mask_*.png) under {root}.")
    return masks


def read_mask(path: Path) -> np.ndarray:
    """Return a KI mask as a boolean (H, W) array (its RGBA pixels are 0 or 255)."""
    pixels = np.asarray(Image.open(path).convert("L"))
    return pixels > 127


def tile_instances(masks: list[Path], tile_index: int):
    """Return the ml.instances.Instance outlines of journal tile ``tile_index``.

    The tile takes the next 16 masks of ``masks`` (cycling), laid out 4 x 4, and sits in
    a row of tiles along x in level-0 pixels.
    """
    import shapely.affinity

    from ml.instances import Instance
    from ml.polygons import mask_to_polygons

    per_side = TILE_PX // MASK_PX
    instances = []
    for slot in range(per_side * per_side):
        path = masks[(tile_index * per_side * per_side + slot) % len(masks)]
        x_level0 = tile_index * TILE_PX + (slot % per_side) * MASK_PX
        y_level0 = (slot // per_side) * MASK_PX
        for polygon in mask_to_polygons(read_mask(path)):
            instances.append(Instance(
                polygon_level0=shapely.affinity.translate(polygon, x_level0, y_level0),
                predicted_iou=0.9, stability_score=0.95, tile_index=tile_index,
                touches_interior_edge=False,
            ))
    return instances


def tile_payloads(masks: list[Path], tiles: int) -> list[dict]:
    """Return the journal payload of each of ``tiles`` tiles, as a run would record it."""
    from ml.tile_journal import encode_instance, tile_payload

    payloads = []
    for tile_index in range(tiles):
        instances = tile_instances(masks, tile_index)
        rows = [encode_instance(instance) for instance in instances]
        payloads.append(tile_payload(rows, {}, {"masks": len(rows), "kept": len(rows)}))
    return payloads


def encoder_seconds(encoder: str, passes: int) -> float:
    """Return the median seconds of one pass of SAM's image encoder on one tile."""
    import torch

    from ml.sam import ARCHITECTURES, TINY_TEST, build_sam

    torch.manual_seed(0)
    model = build_sam(TINY_TEST if encoder == "tiny" else ARCHITECTURES[encoder]).eval()
    # The official encoders take 1024 px; the tiny test one a smaller input.
    side_px = model.image_encoder.img_size
    image = torch.rand(1, 3, side_px, side_px)
    seconds = []
    with torch.inference_mode():
        for _ in range(passes):
            started = time.perf_counter()
            model.image_encoder(image)
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(slide, payloads: list[dict], *, encoder: str, encoder_passes: int) -> dict:
    """Journal ``payloads`` for a new run on ``slide`` and time the writes, the read and
    the encoder. Returns the result, with the journal read back under ``read_back``."""
    from django.db import connection

    from apps.annotations.journal import RunJournal, clear_journal
    from apps.annotations.models import ProposalRun

    run = ProposalRun.objects.create(slide=slide, settings={})
    journal = RunJournal(run.pk, "0" * 64)
    write_s = []
    for tile_index, payload in enumerate(payloads):
        started = time.perf_counter()
        journal.record_tile(tile_index, payload)
        write_s.append(time.perf_counter() - started)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sum(pg_column_size(payload)) FROM annotations_proposalruntile "
            "WHERE run_id = %s",
            [run.pk],
        )
        stored_bytes = int(cursor.fetchone()[0])
    started = time.perf_counter()
    read_back = journal.completed_tiles()
    resume_s = time.perf_counter() - started
    clear_journal(run.pk)
    run.delete()

    encoder_s = encoder_seconds(encoder, encoder_passes)
    instances = sum(len(payload["instances"]) for payload in payloads)
    write_median_s = statistics.median(write_s)
    return {
        "tiles": len(payloads),
        "instances": instances,
        "instances_per_tile": round(instances / len(payloads), 1),
        "stored_bytes_per_tile": round(stored_bytes / len(payloads)),
        "json_bytes_per_tile": round(
            sum(len(json.dumps(payload)) for payload in payloads) / len(payloads)
        ),
        "write_ms_median": round(1000 * write_median_s, 2),
        "write_ms_max": round(1000 * max(write_s), 2),
        "resume_ms": round(1000 * resume_s, 1),
        "encoder": encoder,
        "encoder_s": round(encoder_s, 3),
        "write_share_of_encoder_pct": round(100 * write_median_s / encoder_s, 3),
        "read_back": read_back,
    }


def run(args) -> dict:
    """Migrate the throw-away database, import the slide and measure."""
    import django
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    call_command("migrate", verbosity=0)
    from apps.slides.services import import_slide

    slide = import_slide(args.slide)
    payloads = tile_payloads(tubule_masks(), args.tiles)
    result = measure(slide, payloads, encoder=args.encoder, encoder_passes=args.encoder_passes)
    connections.close_all()
    result.pop("read_back")
    return {**result, "machine": machine_description().rsplit(", daphne", 1)[0]}


def docs_section(result: dict) -> str:
    """Format ``result`` as the markdown section of docs/benchmarks.md (markers included)."""
    return f"""{DOCS_BEGIN}
## Tile journal

What does the journal that lets a run resume after a crash cost?
`benchmarks/tile_journal.py` journals {result['tiles']} tiles of 1024 px in a throw-away
PostgreSQL database. Each tile is a 4 x 4 mosaic of real KI tubule masks, traced into
{result['instances_per_tile']} outlines on average. The reference is one SAM
image-encoder pass ({result['encoder']}, random weights), timed in the same process.

- Command: `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/tile_journal.py --write-docs`
- Machine: {result['machine']}

| measure | value |
|---|---|
| write of one tile's row, median (max) | {result['write_ms_median']} ms ({result['write_ms_max']} ms) |
| one encoder pass on a 1024 px tile | {result['encoder_s']} s |
| write / encoder pass | {result['write_share_of_encoder_pct']} % |
| stored size of one tile's row (PostgreSQL, compressed) | {result['stored_bytes_per_tile']} bytes |
| the same row as JSON text | {result['json_bytes_per_tile']} bytes |
| resume: read all {result['tiles']} rows | {result['resume_ms']} ms |

A run keeps its journal rows until it ends: on a slide of 2 000 tiles with tissue and
this density of outlines, about {2000 * result['stored_bytes_per_tile'] / 1e6:.0f} MB of
rows by its last tile, and none after.
{DOCS_END}"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", default=str(DEFAULT_SLIDE), help="slide file the run belongs to")
    parser.add_argument("--tiles", type=int, default=200, help="tiles to journal")
    parser.add_argument("--encoder", choices=ENCODER_CHOICES, default="vit_b",
                        help="SAM image encoder of the reference pass")
    parser.add_argument("--encoder-passes", type=int, default=3, help="reference passes")
    parser.add_argument("--write-docs", action="store_true",
                        help=f"write the result into {DOCS_PATH.relative_to(REPO)}")
    args = parser.parse_args(argv)
    if args.tiles < 1 or args.encoder_passes < 1:
        parser.error("--tiles and --encoder-passes must be at least 1.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    server_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    if not server_url.startswith("postgres"):
        parser.error(f"DATABASE_URL must name a PostgreSQL server, got {server_url!r}.")
    with throwaway_database(server_url, "nephroweb_tile_journal"):
        result = run(args)
    if args.write_docs:
        write_marked_section(DOCS_PATH, docs_section(result), DOCS_BEGIN, DOCS_END)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
