"""The tile journal of proposal and segmentation runs, stored in PostgreSQL.

A run records each finished tile in its own committed row (see ml.tile_journal), so a
worker that takes the run over after a crash segments only the tiles that are missing.
"""

import logging

from .models import ProposalRunTile

logger = logging.getLogger(__name__)


class RunJournal:
    """The journal of one run, for the weights with hash ``weights_sha256``."""

    def __init__(self, run_id: int, weights_sha256: str) -> None:
        self.run_id = run_id
        self.weights_sha256 = weights_sha256

    def completed_tiles(self) -> dict[int, dict]:
        rows = ProposalRunTile.objects.filter(run_id=self.run_id)
        # Tiles computed with other weights would mix two models' outlines in one run.
        stale, _ = rows.exclude(weights_sha256=self.weights_sha256).delete()
        if stale:
            logger.info(
                "Run %s: dropped %d journaled tiles computed with other weights",
                self.run_id, stale,
            )
        return dict(rows.values_list("tile_index", "payload"))

    def record_tile(self, tile_index: int, payload: dict) -> None:
        ProposalRunTile.objects.update_or_create(
            run_id=self.run_id, tile_index=tile_index,
            defaults={"weights_sha256": self.weights_sha256, "payload": payload},
        )


def clear_journal(run_id: int) -> int:
    """Delete a run's journal rows and return how many there were."""
    deleted, _ = ProposalRunTile.objects.filter(run_id=run_id).delete()
    return deleted
