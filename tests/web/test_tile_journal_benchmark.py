"""The tile-journal benchmark on a small scale: real KI outlines round-trip the journal."""

import numpy as np
import pytest
import shapely
from scipy import ndimage

from apps.annotations.models import ProposalRun, ProposalRunTile
from apps.slides.services import import_slide
from benchmarks.tile_journal import (
    DOCS_BEGIN,
    DOCS_END,
    docs_section,
    measure,
    read_mask,
    tile_payloads,
    tubule_masks,
)
from ml.tile_journal import decode_instance

pytestmark = pytest.mark.django_db

FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])


@pytest.fixture
def cmu_slide(shared_data):
    return import_slide(shared_data / "wsi" / "cmu-1-small-region.svs")


def test_payloads_hold_every_component_of_the_masks(shared_data):
    masks = tubule_masks(shared_data / "kidney_tiles" / "omniseg_KI")
    payloads = tile_payloads(masks, 2)

    components = [ndimage.label(read_mask(path), FOUR_CONNECTED)[1] for path in masks[:32]]
    assert len(masks) == 32
    assert [len(payload["instances"]) for payload in payloads] == [
        sum(components[:16]), sum(components[16:32])
    ]
    for tile_index, payload in enumerate(payloads):
        outlines = [decode_instance(row, tile_index).polygon_level0 for row in payload["instances"]]
        x_min, y_min, x_max, y_max = shapely.total_bounds(outlines)
        assert x_min >= 1024 * tile_index
        assert y_min >= 0
        assert x_max <= 1024 * (tile_index + 1)
        assert y_max <= 1024
        assert all(outline.is_valid for outline in outlines)


def test_journal_reads_back_what_was_written(cmu_slide, shared_data):
    payloads = tile_payloads(tubule_masks(shared_data / "kidney_tiles" / "omniseg_KI"), 3)

    result = measure(cmu_slide, payloads, encoder="tiny", encoder_passes=1)

    assert result["read_back"] == dict(enumerate(payloads))
    assert result["tiles"] == 3
    assert result["instances"] == sum(len(payload["instances"]) for payload in payloads)
    # PostgreSQL compresses the JSON rows, which are mostly hex digits.
    assert 0 < result["stored_bytes_per_tile"] < result["json_bytes_per_tile"]
    assert result["encoder_s"] > 0
    # The benchmark removes its run and journal rows.
    assert ProposalRun.objects.count() == 0
    assert ProposalRunTile.objects.count() == 0


def test_docs_section_is_marked():
    result = {
        "tiles": 2, "instances": 300, "instances_per_tile": 150.0,
        "stored_bytes_per_tile": 80000, "json_bytes_per_tile": 580000,
        "write_ms_median": 20.0, "write_ms_max": 30.0, "resume_ms": 40.0,
        "encoder": "vit_b", "encoder_s": 4.0, "write_share_of_encoder_pct": 0.5,
        "machine": "x86_64, 2 CPU cores",
    }

    section = docs_section(result)

    assert section.startswith(DOCS_BEGIN)
    assert section.endswith(DOCS_END)
    assert "| write / encoder pass | 0.5 % |" in section
