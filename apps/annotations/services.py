"""Proposal runs: create, execute (in a worker), cancel, store; and viewport queries."""

import logging
import time
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BooleanField
from django.db.models.expressions import RawSQL
from django.utils import timezone
from shapely import STRtree
from shapely.geometry import shape

from apps.accounts import audit
from ml.errors import NephrowebError
from nephroweb.leases import (
    LeaseLost,
    LeaseRenewal,
    acquire_lease,
    release_lease,
    renewing_lease,
)

from . import events
from .classes import CORTEX_CLASS
from .geometry import instance_row
from .journal import RunJournal, clear_journal
from .models import Instance, ProposalRun

logger = logging.getLogger(__name__)

# A new proposal overlapping a reviewed instance by this fraction of the smaller area is
# dropped: a task never puts a duplicate on top of a human's work.
REVIEWED_OVERLAP_FRACTION = 0.5
PROGRESS_INTERVAL_S = 0.5
# A running run reads its cancel_requested flag at most this often, so fast tiles do not
# cost one query each. The first tile after a start or take-over always reads it.
CANCEL_CHECK_INTERVAL_S = 1.0
FINAL_STATES = (
    ProposalRun.Status.SUCCEEDED, ProposalRun.Status.FAILED, ProposalRun.Status.CANCELLED
)
# Stored as a run's sam_type when its checkpoint matches none of SAM's official types.
CUSTOM_SAM_TYPE = "custom"
# The indexed box expression of migration 0005; a query must repeat it exactly to use the index.
BBOX_EXPRESSION = "box(point(x_min_level0, y_min_level0), point(x_max_level0, y_max_level0))"


class RunStateError(NephrowebError):
    """The requested change does not fit the run's current status."""

    status_code = 409


class RunCancelled(Exception):
    """A user cancelled the run while it ran, so the worker stops without storing anything."""

    def __init__(self, tiles_done: int, tiles_total: int) -> None:
        super().__init__(f"cancelled after {tiles_done} of {tiles_total} tiles")
        self.tiles_done = tiles_done
        self.tiles_total = tiles_total


def proposal_settings(overrides: dict | None = None):
    """Merge the configured defaults with ``overrides`` and validate them (SettingsError)."""
    from ml.proposals import ProposalSettings

    values = {**settings.NEPHROWEB_PROPOSALS, **(overrides or {})}
    return ProposalSettings.from_dict(values)


def start_proposal_run(slide, *, user=None, sam_type=None, overrides=None, enqueue=True):
    """Create a queued run and enqueue its task once the row is committed.

    ``sam_type`` names the variant the checkpoint must be. Without it the run uses the
    configured checkpoint whatever its variant (recorded after loading), or downloads
    NEPHROWEB_SAM_TYPE when no checkpoint is configured.
    """
    run_settings = proposal_settings(overrides)
    sam_type = sam_type or ""
    with transaction.atomic():
        run = ProposalRun.objects.create(
            slide=slide, sam_type=sam_type, settings=run_settings.to_dict(), created_by=user
        )
        audit.record(
            audit.Action.PROPOSE, user=user, target_type=audit.Target.PROPOSAL_RUN,
            target_id=run.pk, slide_id=slide.pk, detail={"sam_type": sam_type},
        )
        if enqueue:
            from .tasks import run_proposals

            transaction.on_commit(lambda: run_proposals.delay(run.pk))
    logger.info("Queued proposal run %s on slide %s", run.pk, slide.pk)
    return run


def run_label(run: ProposalRun) -> str:
    """Name a run as users see it: "Proposal run 3" or "Segmentation run 3"."""
    kind = "Segmentation run" if run.model_version_id else "Proposal run"
    return f"{kind} {run.pk}"


def cancel_run(run: ProposalRun, *, user) -> ProposalRun:
    """Cancel a queued run at once, or ask a running one to stop at its next tile.

    The worker of a running run then sets the status to cancelled and stores nothing, so
    the slide's pending proposals stay as they were. A running run whose lease has
    lapsed (its worker died) is cancelled at once as well. ``user`` is stored as the one
    who cancelled and named in the run's message; without one the message names no user.

    Raises:
        RunStateError: The run has already finished (status 409).
    """
    with transaction.atomic():
        run = ProposalRun.objects.select_for_update().get(pk=run.pk)
        if run.status in FINAL_STATES:
            raise RunStateError(
                f"{run_label(run)} has already finished ({run.status}). "
                "Only queued or running runs can be cancelled."
            )
        # A second request while the worker stops keeps the first one's user in the message.
        if not run.cancel_requested:
            run.cancel_requested = True
            run.cancelled_by = user if user is not None and user.is_authenticated else None
        fields = ["cancel_requested", "cancelled_by"]
        queued = run.status == ProposalRun.Status.QUEUED
        lease_lapsed = run.lease_expires_at is None or run.lease_expires_at < timezone.now()
        # A queued run has not started, and a run whose worker died has no worker to stop
        # it, so either ends here.
        if queued or lease_lapsed:
            if queued:
                run.message = cancelled_message(run.cancelled_by)
            else:
                run.message = cancelled_message(run.cancelled_by, run.tiles_done, run.tiles_total)
                clear_journal(run.pk)
            run.status = ProposalRun.Status.CANCELLED
            run.finished_at = timezone.now()
            fields += ["status", "finished_at", "message"]
        run.save(update_fields=fields)
        audit.record(
            audit.Action.CANCEL, user=user, target_type=audit.Target.PROPOSAL_RUN,
            target_id=run.pk, slide_id=run.slide_id, detail={"status": run.status},
        )
    logger.info(
        "%s: cancel requested by %s, status now %s",
        run_label(run), run.cancelled_by or "no signed-in user", run.status,
    )
    events.publish_run(run)
    return run


def cancelled_message(user, tiles_done: int | None = None, tiles_total: int = 0) -> str:
    """Return the message of a cancelled run, e.g. "Cancelled by anna after 2 of 9 tiles.".

    Without ``tiles_done`` the run was cancelled before it started.
    """
    by = f" by {user.get_username()}" if user is not None else ""
    when = (
        "before it started" if tiles_done is None
        else f"after {tiles_done} of {tiles_total} tiles"
    )
    return f"Cancelled{by} {when}."


def _acquire_lease(run_id: int, owner: str) -> bool:
    return acquire_lease(ProposalRun, run_id, owner)


def resolve_checkpoint_for(sam_type: str, explicit_path: str = "", progress=None):
    """Find the checkpoint file: an explicit path, NEPHROWEB_SAM_CHECKPOINT, else the cache
    (downloading the official file once, with a checksum check)."""
    from ml.checkpoints import OFFICIAL_CHECKPOINTS, resolve_checkpoint

    path = explicit_path or settings.NEPHROWEB_SAM_CHECKPOINT or None
    url = None
    if path is None and settings.NEPHROWEB_SAM_DOWNLOAD_BASE_URL and sam_type in OFFICIAL_CHECKPOINTS:
        filename = OFFICIAL_CHECKPOINTS[sam_type].url.rsplit("/", 1)[-1]
        url = settings.NEPHROWEB_SAM_DOWNLOAD_BASE_URL.rstrip("/") + "/" + filename
    return resolve_checkpoint(
        sam_type,
        checkpoint_path=path,
        cache_dir=settings.NEPHROWEB_CHECKPOINT_CACHE,
        url=url,
        progress=progress,
    )


_model_cache: dict = {}


def load_model(path, sam_type):
    """Load a SAM once per worker process; the same file is reused by later runs."""
    from ml.sam import load_sam

    key = (str(path), sam_type)
    if key not in _model_cache:
        _model_cache.clear()
        _model_cache[key] = load_sam(path, sam_type=sam_type)
    return _model_cache[key]


def execute_run(run_id: int, *, owner: str, body) -> ProposalRun | None:
    """Run a queued proposal or segmentation run to the end; idempotent and safe against
    re-delivery.

    ``body(run, report)`` does the work and stores the result; ``report(tiles_done,
    tiles_total)`` saves and publishes progress. A thread renews the lease meanwhile, and
    ``report`` stops the work (LeaseLost) once the run is deleted or another worker took
    it over, and raises RunCancelled once a user cancelled the run. Returns None when
    another worker holds the run's lease. A finished run (succeeded, failed or cancelled)
    is returned as it is. Failures are stored on the run with a message for the user.
    """
    if not _acquire_lease(run_id, owner):
        logger.info("Run %s is held by another worker or no longer exists; skipping", run_id)
        return None
    run = ProposalRun.objects.select_related("slide").get(pk=run_id)
    try:
        if not _mark_running(run):
            logger.info("Run %s is already %s, so there is nothing to do", run_id, run.status)
            return run
        events.publish_run(run)
        with renewing_lease(ProposalRun, run_id, owner) as renewal:
            body(run, _progress_reporter(run, renewal))
        stored = ProposalRun.objects.get(pk=run.pk).counts.get("stored", 0)
        logger.info("Run %s stored %d proposals", run.pk, stored)
    except RunCancelled as exc:
        _finish_cancelled(run, owner, exc.tiles_done, exc.tiles_total)
    except LeaseLost as exc:
        logger.warning("Run %s stopped without storing anything: %s", run_id, exc)
        return run
    except NephrowebError as exc:
        _fail(run, str(exc))
    except Exception as exc:  # noqa: BLE001  stored for the UI, logged with its traceback
        if not ProposalRun.objects.filter(pk=run_id).exists():
            logger.warning(
                "Run %s was deleted while it ran, so it stopped (%s)", run_id, type(exc).__name__
            )
            return run
        logger.exception("Run %s failed", run.pk)
        _fail(run, f"Internal error ({type(exc).__name__}); the worker log has the details.")
    finally:
        release_lease(ProposalRun, run_id, owner)
    run.refresh_from_db()
    events.publish_run(run)
    return run


def _mark_running(run: ProposalRun) -> bool:
    """Set the run's status to running under its row lock, or return False if it has finished.

    Raises:
        RunCancelled: A user cancelled the run while it ran and its worker died before
            it stopped, so this worker stops it before any tile.
    """
    with transaction.atomic():
        locked = ProposalRun.objects.select_for_update().get(pk=run.pk)
        if locked.status in FINAL_STATES:
            run.refresh_from_db()
            return False
        if locked.cancel_requested:
            raise RunCancelled(locked.tiles_done, locked.tiles_total)
        run.status = ProposalRun.Status.RUNNING
        # A run taken over keeps its first start, so the time-remaining estimate counts
        # the tiles taken from the journal as work of that time, not as instant.
        run.started_at = locked.started_at or timezone.now()
        run.message = ""
        run.save(update_fields=["status", "started_at", "message"])
    return True


def _finish_cancelled(run: ProposalRun, owner: str, tiles_done: int, tiles_total: int) -> None:
    """Mark a run cancelled after its worker stopped for the cancel request.

    The run stores nothing. Its journal rows are deleted, and so is the predictions file
    of a segmentation run cancelled between writing that file and storing its instances.
    """
    row = ProposalRun.objects.select_related("cancelled_by").get(pk=run.pk)
    message = cancelled_message(row.cancelled_by, tiles_done, tiles_total)
    with transaction.atomic():
        updated = ProposalRun.objects.filter(pk=run.pk, lease_owner=owner).update(
            status=ProposalRun.Status.CANCELLED, message=message, finished_at=timezone.now(),
            tiles_done=tiles_done, tiles_total=tiles_total, predictions_file="",
        )
        if updated:
            clear_journal(run.pk)
    if not updated:
        logger.warning(
            "%s: stopped for its cancel request, but its lease now belongs to another "
            "worker, which cancels it in turn", run_label(run),
        )
        return
    if row.predictions_file:
        Path(row.predictions_file).unlink(missing_ok=True)
    logger.info("%s: %s", run_label(run), message)


def _progress_reporter(run: ProposalRun, renewal: LeaseRenewal):
    last_report = [0.0]
    last_cancel_check = [None]

    def report(tiles_done: int, tiles_total: int) -> None:
        renewal.check()
        now = time.monotonic()
        if last_cancel_check[0] is None or now - last_cancel_check[0] >= CANCEL_CHECK_INTERVAL_S:
            last_cancel_check[0] = now
            if ProposalRun.objects.filter(pk=run.pk, cancel_requested=True).exists():
                raise RunCancelled(tiles_done, tiles_total)
        if tiles_done < tiles_total and now - last_report[0] < PROGRESS_INTERVAL_S:
            return
        last_report[0] = now
        run.tiles_done, run.tiles_total = tiles_done, tiles_total
        ProposalRun.objects.filter(pk=run.pk).update(tiles_done=tiles_done, tiles_total=tiles_total)
        events.publish_run(run)

    return report


def open_run_slide(run: ProposalRun):
    """Open the run's slide file with its given mpp, if any (a context manager)."""
    from ml.slide import open_slide

    slide = run.slide
    return open_slide(slide.file_path, mpp=slide.mpp if slide.mpp_source == "given" else None)


def execute_proposal_run(run_id: int, *, owner: str, checkpoint_path: str = "") -> ProposalRun | None:
    """Run a queued SAM proposal run to the end (see execute_run)."""

    def propose_and_store(run: ProposalRun, report) -> None:
        from ml.proposals import ProposalSettings, propose
        from ml.tissue import detect_tissue

        # A run taken over after a crash has "custom" stored for a checkpoint of no
        # official type, so its type is inferred from the file again.
        requested_type = run.sam_type if run.sam_type not in ("", CUSTOM_SAM_TYPE) else None
        checkpoint = resolve_checkpoint_for(
            requested_type or settings.NEPHROWEB_SAM_TYPE, checkpoint_path or run.checkpoint
        )
        loaded = load_model(checkpoint, requested_type)
        run.checkpoint = str(checkpoint)
        run.checkpoint_sha256 = loaded.sha256 or ""
        run.sam_type = loaded.sam_type or CUSTOM_SAM_TYPE
        run.save(update_fields=["checkpoint", "checkpoint_sha256", "sam_type"])

        run_settings = ProposalSettings.from_dict(run.settings)
        with open_run_slide(run) as slide_file:
            tissue = detect_tissue(slide_file)
            result = propose(
                slide_file, loaded.model, run_settings, tissue, progress=report,
                journal=RunJournal(run.pk, run.checkpoint_sha256),
            )
        store_proposals(run, result)

    return execute_run(run_id, owner=owner, body=propose_and_store)


def _fail(run: ProposalRun, message: str) -> None:
    logger.warning("Proposal run %s failed: %s", run.pk, message)
    with transaction.atomic():
        ProposalRun.objects.filter(pk=run.pk).update(
            status=ProposalRun.Status.FAILED, message=message, finished_at=timezone.now()
        )
        clear_journal(run.pk)


def store_proposals(run: ProposalRun, result) -> None:
    """Replace the slide's pending SAM proposals with this run's, in one transaction.

    Reviewed instances are never touched, and a new proposal that overlaps one of them is
    dropped and counted as ``dropped_overlaps_reviewed``.
    """
    candidates = [
        (instance.polygon_level0, {
            "predicted_iou": instance.predicted_iou,
            "stability_score": instance.stability_score,
        })
        for instance in result.instances
    ]
    store_run_instances(
        run, candidates, source=Instance.Source.SAM, counts=dict(result.counts),
        tiles_total=result.tiles_processed,
    )


def store_run_instances(run: ProposalRun, candidates, *, source: str, counts: dict,
                        tiles_total: int, class_names=()) -> int:
    """Replace the slide's pending instances of ``source`` with ``candidates`` and finish the run.

    ``tiles_total`` is the number of tiles with tissue that the run segmented, the unit
    of its progress. The counts keep the whole grid (``tiles_total`` there).
    ``candidates`` are (level-0 polygon, extra Instance fields) pairs. Everything happens
    in one transaction. Reviewed instances are never touched, and a candidate that
    overlaps one of them is dropped and counted as ``dropped_overlaps_reviewed``. With
    ``class_names`` the counts also get ``stored_per_class``. Returns the number stored.
    """
    slide = run.slide
    with transaction.atomic():
        # Lock the run row, so that a worker whose lease was taken over meanwhile, or
        # whose run was deleted, stores nothing.
        locked = ProposalRun.objects.select_for_update().filter(pk=run.pk).first()
        if locked is None or locked.lease_owner != run.lease_owner:
            raise LeaseLost(f"Run {run.pk}: deleted or taken over before its result was stored")
        # A cancel request committed before this lock wins over the finished result.
        if locked.cancel_requested:
            raise RunCancelled(tiles_total, tiles_total)
        Instance.objects.filter(
            slide=slide, source=source, review_state=Instance.ReviewState.PENDING
        ).delete()
        Instance.objects.filter(proposal_run=run).delete()
        reviewed = [
            shape(g) for g in Instance.objects.filter(slide=slide)
            .exclude(review_state=Instance.ReviewState.PENDING)
            .exclude(class_name=CORTEX_CLASS)
            .values_list("geometry", flat=True)
        ]
        tree = STRtree(reviewed) if reviewed else None
        rows, dropped_reviewed = [], 0
        for polygon, fields in candidates:
            if tree is not None and overlaps_any(polygon, tree, reviewed):
                dropped_reviewed += 1
                continue
            rows.append(instance_row(
                polygon, slide=slide, mpp=slide.mpp, proposal_run=run, source=source, **fields
            ))
        Instance.objects.bulk_create(rows, batch_size=2000)
        clear_journal(run.pk)
        counts["dropped_overlaps_reviewed"] = dropped_reviewed
        counts["stored"] = len(rows)
        if class_names:
            counts["stored_per_class"] = {
                name: sum(row.class_name == name for row in rows) for name in class_names
            }
        ProposalRun.objects.filter(pk=run.pk).update(
            status=ProposalRun.Status.SUCCEEDED,
            counts=counts,
            tiles_done=tiles_total,
            tiles_total=tiles_total,
            finished_at=timezone.now(),
        )
    return len(rows)


def overlaps_any(polygon, tree, reviewed) -> bool:
    """Return whether ``polygon`` and one of ``reviewed`` overlap by half the smaller area or more.

    ``tree`` is an STRtree over ``reviewed``. Read-outs use the same rule to merge a
    model's predictions with reviewed annotations.
    """
    for index in tree.query(polygon):
        other = reviewed[int(index)]
        smaller = min(polygon.area, other.area)
        if smaller > 0 and polygon.intersection(other).area >= REVIEWED_OVERLAP_FRACTION * smaller:
            return True
    return False


def instances_in_viewport(slide, x_min, y_min, x_max, y_max, limit):
    """Up to ``limit`` instances whose bounding box overlaps the level-0 box, unordered.

    Overlap includes touching edges and instances that start outside the box. On
    PostgreSQL the box test ``&&`` uses the GiST index of migration 0005, and the four
    comparisons state the same test for other databases. The query has no ORDER BY, so
    PostgreSQL can stop after ``limit`` rows. Sorting all matches by id took about 0.5 s
    at whole-slide zoom on 100 000 instances (PostgreSQL 15, 2 shared CPU cores).
    NOTE: when more than ``limit`` instances match, which of them come back is up to the
    database (the first it finds), not the lowest ids.
    """
    queryset = Instance.objects.filter(
        slide=slide,
        x_max_level0__gte=x_min,
        x_min_level0__lte=x_max,
        y_max_level0__gte=y_min,
        y_min_level0__lte=y_max,
    ).exclude(review_state=Instance.ReviewState.REJECTED)
    if connection.vendor == "postgresql":
        queryset = queryset.filter(RawSQL(
            f"{BBOX_EXPRESSION} && box(point(%s, %s), point(%s, %s))",
            (x_min, y_min, x_max, y_max),
            output_field=BooleanField(),
        ))
    return queryset.order_by()[:limit]
