"""Per-tile journal of a whole-slide run, so that a run taken over after a crash resumes.

A run writes each finished tile's instances and counters to its journal before it moves
on. A worker that takes the run over reads the journal, skips the tiles in it and only
segments the rest. Polygons are stored as hex WKB, which keeps every coordinate bit for
bit, so the merge gets the same candidates and the resumed run ends with the same
instances as an uninterrupted one.

The storage is the caller's: anything with ``completed_tiles`` and ``record_tile``.
:class:`MemoryJournal` keeps it in a dict; the web app stores it in PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import shapely

from ml.instances import Instance

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TileJournal(Protocol):
    """Storage of finished tiles, keyed by tile index."""

    def completed_tiles(self) -> dict[int, dict]:
        """Return the payload of every recorded tile, by tile index."""

    def record_tile(self, tile_index: int, payload: dict) -> None:
        """Store one finished tile's payload durably before the run goes on."""


class MemoryJournal:
    """A journal in a dict, for library use and tests."""

    def __init__(self) -> None:
        self.tiles: dict[int, dict] = {}

    def completed_tiles(self) -> dict[int, dict]:
        return dict(self.tiles)

    def record_tile(self, tile_index: int, payload: dict) -> None:
        self.tiles[tile_index] = payload


def encode_instance(instance: Instance) -> dict:
    """Return a JSON-ready row of one instance, with the polygon as exact hex WKB."""
    return {
        "wkb": shapely.to_wkb(instance.polygon_level0, hex=True),
        "predicted_iou": float(instance.predicted_iou),
        "stability_score": float(instance.stability_score),
        "touches_interior_edge": bool(instance.touches_interior_edge),
    }


def decode_instance(row: dict, tile_index: int) -> Instance:
    """Rebuild an instance from :func:`encode_instance`'s row."""
    return Instance(
        polygon_level0=shapely.from_wkb(row["wkb"]),
        predicted_iou=row["predicted_iou"],
        stability_score=row["stability_score"],
        tile_index=tile_index,
        touches_interior_edge=row["touches_interior_edge"],
    )


def tile_payload(
    rows: list[dict], counts_before: dict[str, int], counts_after: dict[str, int]
) -> dict:
    """Return a tile's journal payload: its instance rows and what it added to each counter."""
    added = {
        key: counts_after[key] - counts_before.get(key, 0)
        for key in counts_after
        if counts_after[key] != counts_before.get(key, 0)
    }
    return {"instances": rows, "counts": added}


def completed_in_grid(
    journal: TileJournal | None, indices: Iterable[int], slide_name: str
) -> dict[int, dict]:
    """Return the journal's payloads for the given tile indices, or {} without a journal.

    A row for a tile outside ``indices`` (another grid's tile) is left out.
    """
    if journal is None:
        return {}
    in_grid = set(indices)
    completed = journal.completed_tiles()
    journaled = {index: payload for index, payload in completed.items() if index in in_grid}
    if journaled:
        logger.info(
            "Resuming %s: %d of %d tiles with tissue taken from the journal",
            slide_name, len(journaled), len(in_grid),
        )
    return journaled


def replay_tile(
    payload: dict, tile_index: int, counts: dict[str, int], decode_row: Callable[[dict, int], T]
) -> list[T]:
    """Add a journaled tile's counter increments to ``counts`` and return its instances."""
    for key, value in payload["counts"].items():
        counts[key] = counts.get(key, 0) + value
    return [decode_row(row, tile_index) for row in payload["instances"]]


def record_tile(
    journal: TileJournal | None,
    tile_index: int,
    instances: list[T],
    encode_row: Callable[[T], dict],
    counts_before: dict[str, int],
    counts_after: dict[str, int],
) -> None:
    """Record a finished tile's instances and counter increments in ``journal``, if any."""
    if journal is None:
        return
    rows = [encode_row(instance) for instance in instances]
    journal.record_tile(tile_index, tile_payload(rows, counts_before, counts_after))
