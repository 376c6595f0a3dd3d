// Proposal runs on the slide page: SAM proposals or a segmentation run of a trained model
// version, live progress, per-stage counts, and a button that cancels a queued or running run.
//
// Progress arrives on the slide's websocket. That channel may drop messages, so the panel
// also reloads the runs from the API every few seconds while a run is active and after
// every reconnect.
import { api } from "./api.js";
import { timeRemainingText } from "./time_remaining.js";

const RESYNC_INTERVAL_MS = 3000;
// While no run is active the panel still looks for runs that other users start: the
// demo's in-process channel layer cannot carry the worker's progress to this page.
const IDLE_RESYNC_INTERVAL_MS = 15000;
const ACTIVE = new Set(["queued", "running"]);
const CANCEL_LABEL = "Cancel run";
const CANCELLING_LABEL = "Cancelling…";

const COUNT_LABELS = {
  tiles_total: "tiles in the slide",
  tiles_skipped_no_tissue: "tiles skipped (too little tissue)",
  tiles_processed: "tiles processed",
  tiles_not_reached: "tiles not reached (run stopped)",
  masks_generated: "masks generated",
  prompts_skipped_in_kept_mask: "prompts skipped (inside a kept mask)",
  dropped_low_predicted_iou: "dropped: predicted IoU below the threshold",
  dropped_background: "dropped: classified as background",
  dropped_low_class_probability: "dropped: class probability below the threshold",
  dropped_tile_duplicate: "dropped: duplicate within a tile",
  dropped_too_large: "dropped: larger than the area limit",
  dropped_too_small: "dropped: smaller than the minimum area",
  dropped_outside_tissue: "dropped: mostly outside tissue",
  dropped_invalid_geometry: "dropped: invalid geometry",
  dropped_merge_duplicate: "merged: same object in two tiles",
  dropped_merge_conflict: "merged: overlap lost to a better mask",
  kept: "kept after merging",
  dropped_overlaps_reviewed: "of those, dropped: overlaps a reviewed object",
  components_discarded: "extra parts of split masks (not counted as masks)",
  stored: "stored as proposals",
};

// Why a SAM run that made masks stored none: the filter that dropped the most of them.
export function noProposalsMessage(counts) {
  const drops = Object.entries(COUNT_LABELS)
    .filter(([key]) => key.startsWith("dropped_") && counts[key] > 0)
    .sort(([a], [b]) => counts[b] - counts[a]);
  const topFilter = drops.length
    ? ` The filter that dropped the most: "${drops[0][1].replace("dropped: ", "")}" ` +
      `(${counts[drops[0][0]]} of ${counts.masks_generated} masks).`
    : "";
  return `SAM made ${counts.masks_generated} masks, but no proposal was stored.${topFilter} ` +
    "The counts below list every filter.";
}

// Describe what a queued run waits for, from the API's work_ahead (gpu-queue tasks, oldest first).
export function queueMessage(workAhead) {
  if (workAhead.length === 0) {
    return "Waiting for a worker. Nothing is ahead of this run, so it should start within " +
      "seconds. If it stays queued, ask an administrator to check that a worker serves the " +
      "gpu queue.";
  }
  return `Waiting for a worker, which first finishes: ${workAhead.join("; ")}.`;
}

export class RunPanel {
  constructor(root, slideId, events, { onRunFinished }) {
    this.root = root;
    this.slideId = slideId;
    this.onRunFinished = onRunFinished;
    this.button = root.querySelector("#start-proposals");
    this.segmentButton = root.querySelector("#start-segmentation");
    this.cancelButton = root.querySelector("#cancel-run");
    this.modelSelect = root.querySelector("#segment-model");
    this.progress = root.querySelector("#run-progress");
    this.status = root.querySelector("#run-status");
    this.queue = root.querySelector("#run-queue");
    this.message = root.querySelector("#run-message");
    this.counts = root.querySelector("#run-counts");
    this.lastStatus = null;
    this.lastRunId = null; // null until the first look at the slide's runs
    // The worker's progress messages carry the run as it loaded it, without a later cancel
    // request, so the panel remembers the run it asked to stop.
    this.cancelRequestedRunId = null;
    this.resyncTimer = null;

    this.active = false;
    this.hasModels = false;

    if (this.button) this.button.addEventListener("click", () => this.start());
    if (this.cancelButton) this.cancelButton.addEventListener("click", () => this.cancel(this.lastRunId));
    if (this.segmentButton) {
      this.segmentButton.addEventListener("click", () => this.start(Number(this.modelSelect.value)));
      this.loadModels();
    }
    events.on("run.progress", (message) => this.show(message.run));
    events.onConnect(() => this.resync());
    this.resync();
  }

  async loadModels() {
    let versions = [];
    try {
      versions = await api.segmentationModels();
    } catch (error) {
      this.message.textContent = `Could not load the trained models: ${error.message}`;
    }
    const options = versions.map((version) => {
      const option = document.createElement("option");
      option.value = String(version.id);
      option.textContent = `${version.name} (${version.class_names.length} classes)`;
      return option;
    });
    if (options.length === 0) {
      const none = document.createElement("option");
      none.value = "";
      none.textContent = "no trained model yet (see the Training page)";
      options.push(none);
    }
    this.modelSelect.replaceChildren(...options);
    this.modelSelect.disabled = versions.length === 0;
    this.hasModels = versions.length > 0;
    this.updateButtons();
  }

  updateButtons() {
    if (this.button) this.button.disabled = this.active;
    if (this.segmentButton) this.segmentButton.disabled = this.active || !this.hasModels;
  }

  // Start SAM proposals, or a segmentation run when a model version id is given.
  async start(modelVersionId = null) {
    this.active = true;
    this.updateButtons();
    this.message.textContent = "";
    try {
      const run = modelVersionId
        ? await api.startSegmentationRun(this.slideId, modelVersionId)
        : await api.startProposalRun(this.slideId);
      this.show(run);
    } catch (error) {
      const what = modelVersionId ? "segmentation" : "proposals";
      this.message.textContent = `Could not start ${what}: ${error.message}`;
      this.active = false;
      this.updateButtons();
    }
    this.scheduleResync();
  }

  // Cancel the shown run. A running run shows "Cancelling…" until its worker has stopped.
  async cancel(runId) {
    if (!runId) return;
    this.cancelButton.disabled = true;
    this.cancelButton.textContent = CANCELLING_LABEL;
    try {
      const run = await api.cancelProposalRun(runId);
      this.cancelRequestedRunId = run.id;
      this.show(run);
    } catch (error) {
      this.message.textContent = `Could not cancel run ${runId}: ${error.message}`;
      this.resync();
      return;
    }
    this.scheduleResync();
  }

  scheduleResync(delayMs = RESYNC_INTERVAL_MS) {
    clearTimeout(this.resyncTimer);
    this.resyncTimer = setTimeout(() => this.resync(), delayMs);
  }

  async resync() {
    // A model version that finishes training while the page is open becomes selectable.
    if (this.segmentButton && !this.hasModels) this.loadModels();
    try {
      const runs = await api.proposalRuns(this.slideId);
      if (runs.length > 0) this.show(runs[0]);
      else if (this.lastRunId === null) this.lastRunId = 0;
      if (runs.length > 0 && ACTIVE.has(runs[0].status)) this.scheduleResync();
      else this.scheduleResync(IDLE_RESYNC_INTERVAL_MS);
    } catch (error) {
      this.status.textContent = `Could not load proposal runs: ${error.message}`;
      this.scheduleResync();
    }
  }

  show(run) {
    const active = ACTIVE.has(run.status);
    this.root.dataset.runStatus = run.status;
    this.active = active;
    this.updateButtons();
    this.progress.max = Math.max(run.tiles_total, 1);
    this.progress.value = run.tiles_done;
    // A run that is stopping for a cancel request has no time left to estimate.
    const stopping = this.cancelRequested(run);
    const left = run.status === "running" && !stopping ? timeRemainingText(run.seconds_remaining) : "";
    const tiles = run.tiles_total
      ? ` (${run.tiles_done} / ${run.tiles_total} tiles with tissue${left ? `, ${left}` : ""})`
      : "";
    const kind = run.model_version_name
      ? `Segmentation run ${run.id} with ${run.model_version_name}`
      : `SAM proposal run ${run.id}`;
    const shownStatus =
      run.status === "running" && stopping ? "stopping after the current tile" : run.status;
    this.status.textContent = `${kind}: ${shownStatus}${tiles}`;
    this.status.dataset.secondsRemaining = run.seconds_remaining ?? "";
    this.queue.textContent = run.status === "queued" ? queueMessage(run.work_ahead || []) : "";
    this.message.textContent = run.status === "failed" || run.status === "cancelled" ? run.message : "";
    // A cancel is the user's choice, not an error, so its message is not shown in red.
    this.message.classList.toggle("neutral", run.status === "cancelled");
    this.showCancelButton(run);
    if (run.model_version_name && run.status === "succeeded" && run.counts
        && run.counts.masks_generated > 0 && run.counts.stored === 0) {
      this.message.textContent =
        "The model kept no outline: every mask fell below its thresholds or was background.";
    } else if (!run.model_version_name && run.status === "succeeded" && run.counts
        && run.counts.masks_generated === 0) {
      const settings = run.settings || {};
      this.message.textContent =
        `SAM produced no mask above its quality thresholds (predicted IoU ${settings.pred_iou_thresh}, ` +
        `stability ${settings.stability_score_thresh}). Lower NEPHROWEB_PRED_IOU_THRESH and ` +
        "NEPHROWEB_STABILITY_SCORE_THRESH, or check the checkpoint.";
    } else if (!run.model_version_name && run.status === "succeeded" && run.counts
        && run.counts.masks_generated > 0 && run.counts.stored === 0) {
      this.message.textContent = noProposalsMessage(run.counts);
    }
    this.renderCounts(run.counts || {});
    if (active) this.scheduleResync();
    // A run this page saw running has finished, or one it never saw started and ended
    // between two looks: either way the slide has new proposals.
    const unseenRun = this.lastRunId !== null && run.id !== this.lastRunId;
    const sawItRun = this.lastStatus && ACTIVE.has(this.lastStatus) && run.id === this.lastRunId;
    if (run.status === "succeeded" && (sawItRun || unseenRun)) {
      this.onRunFinished(run);
    }
    this.lastStatus = run.status;
    this.lastRunId = run.id;
  }

  // Whether a cancel of this run was requested, by the server's flag or by this page.
  cancelRequested(run) {
    return run.cancel_requested || run.id === this.cancelRequestedRunId;
  }

  showCancelButton(run) {
    if (!this.cancelButton) return;
    const cancelling = ACTIVE.has(run.status) && this.cancelRequested(run);
    this.cancelButton.hidden = !ACTIVE.has(run.status);
    this.cancelButton.disabled = cancelling;
    this.cancelButton.textContent = cancelling ? CANCELLING_LABEL : CANCEL_LABEL;
  }

  renderCounts(counts) {
    this.counts.replaceChildren();
    const rows = Object.entries(COUNT_LABELS)
      .filter(([key]) => key in counts)
      .map(([key, label]) => [key, label, counts[key]]);
    for (const [className, count] of Object.entries(counts.stored_per_class || {})) {
      rows.push([`stored:${className}`, `stored as ${className}`, count]);
    }
    for (const [key, label, count] of rows) {
      const row = document.createElement("tr");
      const name = document.createElement("th");
      name.textContent = label;
      const value = document.createElement("td");
      value.textContent = String(count);
      value.dataset.count = key;
      row.append(name, value);
      this.counts.append(row);
    }
  }
}
