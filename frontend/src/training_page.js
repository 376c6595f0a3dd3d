// The training page: take snapshots, start model versions, watch them train, cancel them.
//
// Progress arrives on the training websocket. That channel may drop messages, and the
// demo's in-process channel layer never carries the worker's progress to the web server,
// so the page also reloads the versions from the API every few seconds while one is active.
import { api } from "./api.js";
import { timeRemainingText } from "./time_remaining.js";
import { drawCurves } from "./training_curves.js";

const RESYNC_INTERVAL_MS = 3000;
const IDLE_RESYNC_INTERVAL_MS = 15000;
const RECONNECT_DELAY_MS = 2000;
const ACTIVE = new Set(["queued", "running"]);
const NO_VERSIONS = "No model version yet.";
// The base checkpoint name of the small ImageNet EfficientNet-Lite0 model (CPU training).
const EFFICIENTNET_BASE = "efficientnet-lite0";
const EFFICIENTNET_CROP_PX = 256;

const LOSS_SERIES = [
  { key: "train_loss", label: "train total", color: "#1f4fbf" },
  { key: "val_loss", label: "validation total", color: "#c0392b" },
  { key: "train_dice", label: "train Dice", color: "#7f8c8d", dashed: true },
  { key: "train_bce", label: "train BCE", color: "#8e44ad", dashed: true },
  { key: "train_ce", label: "train class CE", color: "#d68910", dashed: true },
  { key: "train_iou_mse", label: "train IoU MSE", color: "#16a085", dashed: true },
];
const ACCURACY_SERIES = [
  { key: "val_class_accuracy", label: "class accuracy", color: "#c0392b" },
  { key: "val_map", label: "mask mAP", color: "#1f4fbf" },
  { key: "val_map50", label: "mask AP50", color: "#1f4fbf", dashed: true },
];

// What a version started from: an earlier version, the EfficientNet model or a SAM checkpoint.
// "3 / 40", and while training "3 / 40, about 5 min left".
function epochsText(version) {
  const done = `${version.metrics.length} / ${(version.config || {}).epochs ?? "?"}`;
  const left = version.status === "running" ? timeRemainingText(version.seconds_remaining) : "";
  return left ? `${done}, ${left}` : done;
}

function baseLabel(version) {
  if (version.base_version) return `version ${version.base_version}`;
  if (version.base_checkpoint === EFFICIENTNET_BASE) return "EfficientNet-Lite0";
  return "SAM checkpoint";
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function formatMetric(value, digits = 4) {
  return typeof value === "number" && Number.isFinite(value) ? value.toPrecision(digits) : "–";
}

// Call handler(version) for every progress message; onConnect runs after each (re)connection.
function openTrainingSocket(handler, onConnect) {
  const socket = new WebSocket(api.trainingSocketUrl());
  socket.addEventListener("open", onConnect);
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "training.progress") handler(message.version);
  });
  socket.addEventListener("close", () => {
    setTimeout(() => openTrainingSocket(handler, onConnect), RECONNECT_DELAY_MS);
  });
}

// ---------------------------------------------------------------------------- snapshots

class SnapshotPanel {
  constructor(root, { onChange }) {
    this.root = root;
    this.onChange = onChange;
    this.form = root.querySelector("#snapshot-form");
    this.error = root.querySelector("#snapshot-error");
    this.rows = root.querySelector("#snapshot-rows");
    this.listStatus = root.querySelector("#snapshot-list-status");
    this.parentSelect = root.querySelector("#snapshot-parent");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.create();
    });
  }

  async load() {
    try {
      this.show(await api.trainingSnapshots());
    } catch (error) {
      this.listStatus.textContent = `Could not load snapshots: ${error.message}`;
    }
  }

  async create() {
    const button = this.form.querySelector("button[type=submit]");
    button.disabled = true;
    this.error.textContent = "";
    const values = new FormData(this.form);
    const body = {
      seed: values.get("seed") === "" ? undefined : Number(values.get("seed")),
      validation_fraction:
        values.get("validation_fraction") === "" ? undefined : Number(values.get("validation_fraction")),
      parent: values.get("parent") ? Number(values.get("parent")) : null,
    };
    try {
      const snapshot = await api.createTrainingSnapshot(body);
      this.listStatus.textContent = `Snapshot ${snapshot.id} taken with ${snapshot.instance_count} objects.`;
      await this.load();
    } catch (error) {
      this.error.textContent = error.message;
    } finally {
      button.disabled = false;
    }
  }

  show(snapshots) {
    this.root.dataset.snapshotCount = String(snapshots.length);
    this.rows.replaceChildren();
    for (const snapshot of snapshots) {
      const row = document.createElement("tr");
      row.dataset.snapshotId = String(snapshot.id);
      const counts = Object.entries(snapshot.class_counts)
        .map(([name, count]) => `${name}: ${count}`)
        .join(", ");
      row.append(
        cell(String(snapshot.id)),
        cell(`${new Date(snapshot.created_at).toLocaleString()} by ${snapshot.created_by || "?"}`),
        cell(snapshot.parent ? String(snapshot.parent) : "–"),
        cell(String(snapshot.seed)),
        cell(String(snapshot.validation_fraction)),
        cell(`${snapshot.instance_count} (${counts})`),
        cell(snapshot.train_patients.join(", ") || "–"),
        cell(snapshot.validation_patients.join(", ") || "–"),
      );
      row.children[5].dataset.classCounts = JSON.stringify(snapshot.class_counts);
      this.rows.append(row);
    }
    if (snapshots.length === 0) this.listStatus.textContent = "No snapshot yet.";
    this.fillSelect(this.parentSelect, snapshots, "none");
    this.onChange(snapshots);
  }

  // Offer every snapshot in `select`, newest first, keeping the current choice if it still
  // exists. With `followNewest`, a snapshot newer than any offered before becomes the choice.
  fillSelect(select, snapshots, emptyLabel = null, followNewest = false) {
    const current = select.value;
    const newestBefore = Number(select.dataset.newestId || 0);
    select.replaceChildren();
    if (emptyLabel !== null) select.append(new Option(emptyLabel, ""));
    for (const snapshot of snapshots) {
      select.append(new Option(`Snapshot ${snapshot.id} (${snapshot.instance_count} objects)`, String(snapshot.id)));
    }
    const newest = Math.max(0, ...snapshots.map((snapshot) => snapshot.id));
    select.dataset.newestId = String(newest);
    if (followNewest && newestBefore > 0 && newest > newestBefore) {
      select.value = String(newest);
    } else if ([...select.options].some((option) => option.value === current)) {
      select.value = current;
    }
  }
}

// ---------------------------------------------------------------------------- start form

// Read the value at a dotted path such as "loss_weights.dice".
function valueAt(object, path) {
  return path.split(".").reduce((value, key) => (value == null ? undefined : value[key]), object);
}

function setAt(object, path, value) {
  const keys = path.split(".");
  const last = keys.pop();
  let target = object;
  for (const key of keys) target = target[key] ??= {};
  target[last] = value;
}

// Turn an input's text into the JSON value sent to the server. The server validates it,
// so text that is not a number is sent unchanged and the server's message names it.
function inputValue(input) {
  const kind = input.dataset.kind;
  if (kind === "bool") return input.checked;
  const text = input.value.trim();
  if (kind === "optional-text") return text === "" ? null : text;
  if (kind === "optional-number" && text === "") return null;
  const number = Number(text);
  return text !== "" && Number.isFinite(number) ? number : text;
}

class VersionForm {
  constructor(root, defaults, { onStarted }) {
    this.form = root.querySelector("#version-form");
    this.error = root.querySelector("#version-error");
    this.snapshotSelect = root.querySelector("#version-snapshot");
    this.baseSelect = root.querySelector("#version-base");
    this.checkpointInput = root.querySelector("#version-checkpoint");
    this.mppInput = root.querySelector("#version-mpp");
    this.cropInput = root.querySelector("#version-crop-px");
    this.defaults = defaults;
    this.baseVersions = new Map(); // id -> succeeded version offered as a base
    this.onStarted = onStarted;
    this.mppInput.value = String(defaults.mpp);
    this.cropInput.value = String(defaults.crop_px);
    this.baseSelect.addEventListener("change", () => this.applyBase());
    for (const input of this.form.querySelectorAll("[data-config]")) {
      const value = valueAt(defaults.config, input.dataset.config);
      if (input.dataset.kind === "bool") input.checked = Boolean(value);
      else if (input.dataset.kind === "device") input.value = "";
      else input.value = value == null ? "" : String(value);
    }
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.start();
    });
  }

  // Offer the succeeded versions as bases, newest first, keeping the current choice if it is still offered.
  setBaseVersions(versions) {
    const current = this.baseSelect.value;
    const bases = versions.filter((version) => version.status === "succeeded").sort((a, b) => b.id - a.id);
    this.baseVersions = new Map(bases.map((version) => [version.id, version]));
    const options = [
      new Option("SAM checkpoint (configured)", ""),
      new Option("EfficientNet-Lite0, ImageNet (small model for CPUs)", EFFICIENTNET_BASE),
    ];
    for (const version of bases) {
      options.push(new Option(`Version ${version.id}: ${version.name} (snapshot ${version.snapshot})`, String(version.id)));
    }
    this.baseSelect.replaceChildren(...options);
    if (options.some((option) => option.value === current)) {
      this.baseSelect.value = current;
    } else if (current !== "") {
      this.applyBase();
    }
  }

  // A base version brings its working resolution and crop side, and the SAM checkpoint field
  // applies to neither a base version nor the EfficientNet model.
  applyBase() {
    const efficientNet = this.baseSelect.value === EFFICIENTNET_BASE;
    const base = this.baseVersions.get(Number(this.baseSelect.value));
    this.checkpointInput.disabled = Boolean(base) || efficientNet;
    this.mppInput.value = String(base ? base.mpp : this.defaults.mpp);
    const defaultCrop = efficientNet ? EFFICIENTNET_CROP_PX : this.defaults.crop_px;
    this.cropInput.value = String(base ? base.crop_px : defaultCrop);
  }

  request() {
    const config = {};
    for (const input of this.form.querySelectorAll("[data-config]")) {
      // An empty device leaves the choice to the worker: CUDA when it has a GPU.
      if (input.dataset.kind === "device" && input.value === "") continue;
      setAt(config, input.dataset.config, input.dataset.kind === "device" ? input.value : inputValue(input));
    }
    const efficientNet = this.baseSelect.value === EFFICIENTNET_BASE;
    const baseVersion = this.baseSelect.value === "" || efficientNet ? null : Number(this.baseSelect.value);
    let checkpoint = baseVersion === null ? this.checkpointInput.value.trim() : "";
    if (efficientNet) checkpoint = EFFICIENTNET_BASE;
    const body = {
      snapshot: this.snapshotSelect.value === "" ? null : Number(this.snapshotSelect.value),
      name: this.form.querySelector("#version-name").value.trim(),
      base_version: baseVersion,
      checkpoint,
      config,
    };
    for (const field of ["mpp", "crop_px"]) {
      const value = inputValue(this.form.querySelector(`[name=${field}]`));
      if (value !== "") body[field] = value;
    }
    return body;
  }

  async start() {
    const button = this.form.querySelector("button[type=submit]");
    button.disabled = true;
    this.error.textContent = "";
    try {
      this.onStarted(await api.startModelVersion(this.request()));
    } catch (error) {
      this.error.textContent = error.message;
    } finally {
      button.disabled = false;
    }
  }
}

// ---------------------------------------------------------------------------- versions

class VersionList {
  // onChange(versions) runs after every render with the known versions.
  constructor(root, { onChange }) {
    this.root = root;
    this.onChange = onChange;
    this.rows = root.querySelector("#version-rows");
    this.listStatus = root.querySelector("#version-list-status");
    this.detail = root.querySelector("#version-detail");
    this.cancelButton = root.querySelector("#version-cancel");
    this.epochRows = root.querySelector("#version-epoch-rows");
    this.versions = new Map(); // id -> version, as the API or the socket last sent it
    this.selectedId = null;
    this.resyncTimer = null;
    this.cancelButton.addEventListener("click", () => this.cancel(this.selectedId));
  }

  scheduleResync() {
    const active = [...this.versions.values()].some((version) => ACTIVE.has(version.status));
    clearTimeout(this.resyncTimer);
    this.resyncTimer = setTimeout(() => this.resync(), active ? RESYNC_INTERVAL_MS : IDLE_RESYNC_INTERVAL_MS);
  }

  async resync() {
    try {
      const versions = await api.modelVersions();
      this.versions = new Map(versions.map((version) => [version.id, version]));
      this.listStatus.textContent = versions.length === 0 ? NO_VERSIONS : "";
      if (this.selectedId === null && versions.length > 0) this.selectedId = versions[0].id;
      this.render();
    } catch (error) {
      this.listStatus.textContent = `Could not load model versions: ${error.message}`;
    }
    this.scheduleResync();
  }

  // Merge a socket message, which lacks the config and file fields, into the known version.
  applyProgress(progress) {
    const known = this.versions.get(progress.id);
    if (!known) {
      this.resync();
      return;
    }
    this.versions.set(progress.id, { ...known, ...progress });
    this.render();
    this.scheduleResync();
  }

  add(version) {
    this.versions.set(version.id, version);
    this.selectedId = version.id;
    this.render();
    this.scheduleResync();
  }

  async cancel(versionId) {
    if (versionId === null) return;
    this.cancelButton.disabled = true;
    try {
      this.versions.set(versionId, await api.cancelModelVersion(versionId));
      this.render();
    } catch (error) {
      this.listStatus.textContent = `Could not cancel model version ${versionId}: ${error.message}`;
    } finally {
      this.cancelButton.disabled = false;
    }
    this.scheduleResync();
  }

  render() {
    const versions = [...this.versions.values()].sort((a, b) => b.id - a.id);
    if (versions.length > 0 && this.listStatus.textContent === NO_VERSIONS) this.listStatus.textContent = "";
    this.rows.replaceChildren();
    for (const version of versions) {
      const row = document.createElement("tr");
      row.dataset.versionId = String(version.id);
      row.dataset.status = version.status;
      row.classList.toggle("selected", version.id === this.selectedId);
      const show = document.createElement("button");
      show.type = "button";
      show.textContent = "Show";
      show.addEventListener("click", () => {
        this.selectedId = version.id;
        this.render();
      });
      const actions = document.createElement("td");
      actions.append(show);
      row.append(
        cell(String(version.id)),
        cell(version.name),
        cell(String(version.snapshot)),
        cell(baseLabel(version)),
        cell(version.status),
        cell(epochsText(version)),
        cell(version.best_epoch ? String(version.best_epoch) : "–"),
        actions,
      );
      this.rows.append(row);
    }
    const selected = this.versions.get(this.selectedId);
    if (selected) this.renderDetail(selected);
    this.onChange(versions);
  }

  renderDetail(version) {
    const epochs = (version.config || {}).epochs || version.metrics.length || 1;
    const detail = this.detail;
    detail.hidden = false;
    detail.dataset.versionId = String(version.id);
    detail.dataset.status = version.status;
    detail.dataset.epochsDone = String(version.metrics.length);
    detail.dataset.bestEpoch = String(version.best_epoch || 0);
    detail.dataset.baseVersion = version.base_version ? String(version.base_version) : "";
    const start = `from ${baseLabel(version)}`;
    detail.querySelector("#version-detail-title").textContent =
      `Model version ${version.id}: ${version.name} (snapshot ${version.snapshot}, ${start})`;
    const progress = detail.querySelector("#version-epoch-progress");
    progress.max = epochs;
    progress.value = version.metrics.length;
    const best = version.best_epoch ? `, best epoch ${version.best_epoch}` : "";
    const stopping = version.cancel_requested && ACTIVE.has(version.status) ? " (cancel requested)" : "";
    const left = version.status === "running" ? timeRemainingText(version.seconds_remaining) : "";
    const detailStatus = detail.querySelector("#version-detail-status");
    detailStatus.textContent =
      `${version.status}${stopping}: epoch ${version.metrics.length} of ${epochs}${best}${left ? `, ${left}` : ""}`;
    detailStatus.dataset.secondsRemaining = version.seconds_remaining ?? "";
    detail.querySelector("#version-detail-message").textContent =
      version.status === "failed" || version.status === "cancelled" ? version.message : "";
    this.cancelButton.hidden = !ACTIVE.has(version.status);
    detail.querySelector("#version-detail-files").textContent = version.weights_path
      ? `Weights: ${version.weights_path} (sha256 ${version.weights_sha256.slice(0, 12)}…)`
      : "";

    this.renderEpochRows(version.metrics);

    drawCurves(detail.querySelector("#loss-chart"), {
      title: "Loss (weighted total; train terms unweighted)",
      series: LOSS_SERIES, rows: version.metrics, epochs, bestEpoch: version.best_epoch,
    });
    drawCurves(detail.querySelector("#accuracy-chart"), {
      title: "Validation class accuracy and mask mAP",
      series: ACCURACY_SERIES, rows: version.metrics, epochs, bestEpoch: version.best_epoch, yRange: [0, 1],
      // Epochs without validation values mean the snapshot contains no validation patients.
      emptyText: version.metrics.length > 0 ? "No validation set: the snapshot has no validation patients" : "No finished epoch yet",
    });
  }

  // One table row per finished epoch, with the values the curves plot.
  renderEpochRows(metrics) {
    this.epochRows.replaceChildren();
    for (const row of metrics) {
      const tableRow = document.createElement("tr");
      tableRow.dataset.epoch = String(row.epoch);
      tableRow.append(
        cell(String(row.epoch)),
        cell(formatMetric(row.train_loss)),
        cell(formatMetric(row.val_loss)),
        cell(formatMetric(row.val_class_accuracy, 3)),
        cell(formatMetric(row.val_map, 3)),
        cell(formatMetric(row.val_map50, 3)),
        cell(formatMetric(row.learning_rate, 3)),
        cell(formatMetric(row.seconds, 3)),
      );
      this.epochRows.append(tableRow);
    }
  }
}

export function initTrainingPage(root) {
  const defaults = JSON.parse(root.querySelector("#training-defaults").textContent);
  let versionForm = null;
  const versions = new VersionList(root, {
    onChange: (rows) => versionForm && versionForm.setBaseVersions(rows),
  });
  const snapshots = new SnapshotPanel(root, {
    onChange: (rows) => versionForm && snapshots.fillSelect(versionForm.snapshotSelect, rows, null, true),
  });
  versionForm = new VersionForm(root, defaults, { onStarted: (version) => versions.add(version) });
  openTrainingSocket((progress) => versions.applyProgress(progress), () => versions.resync());
  snapshots.load();
  versions.resync();
}
