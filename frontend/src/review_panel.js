// The review panel's read-outs: the current object, review progress, the mode and the
// last message. The server's error messages are shown as they arrive.

const MODE_LABELS = {
  review: "Review",
  edit: "Edit outline",
  draw: "Draw polygon",
  "sam-point": "SAM click",
  "sam-box": "SAM box",
};
const STATES = ["pending", "accepted", "edited", "rejected"];

function formatScore(value) {
  return value === null || value === undefined ? "–" : value.toFixed(2);
}

export class ReviewPanel {
  // pageRoot contains #review-panel and the progress panel beside it.
  constructor(pageRoot, { colourOf }) {
    this.root = pageRoot.querySelector("#review-panel");
    this.colourOf = colourOf;
    this.current = pageRoot.querySelector("#current-object");
    this.progress = pageRoot.querySelector("#review-progress");
    this.message = pageRoot.querySelector("#review-message");
    this.mode = pageRoot.querySelector("#review-mode");
  }

  showMode(mode, className) {
    this.root.dataset.mode = mode;
    const drawsClass = ["draw", "sam-point", "sam-box"].includes(mode);
    this.mode.textContent = drawsClass ? `${MODE_LABELS[mode]} · new objects: ${className}` : MODE_LABELS[mode];
  }

  showCurrent(feature) {
    const element = this.current;
    if (!feature) {
      element.dataset.instanceId = "";
      element.replaceChildren(document.createTextNode("No object selected. Press j for the next one in the queue."));
      return;
    }
    const properties = feature.properties;
    element.dataset.instanceId = String(feature.id);
    element.dataset.version = String(properties.version);
    element.dataset.reviewState = properties.review_state;
    element.dataset.className = properties.class_name;
    element.dataset.source = properties.source || "";

    const heading = document.createElement("div");
    heading.className = "current-heading";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = this.colourOf(properties.class_name);
    const title = document.createElement("strong");
    title.textContent = `#${feature.id} ${properties.class_name || "no class"}`;
    const state = document.createElement("span");
    state.className = `state state-${properties.review_state}`;
    state.textContent = properties.review_state;
    heading.append(swatch, title, state);

    const details = document.createElement("dl");
    const rows = [
      ["Predicted IoU", formatScore(properties.predicted_iou)],
      ["Class confidence", formatScore(properties.class_confidence)],
      ["Area", properties.area_um2 === undefined ? "–" : `${Math.round(properties.area_um2)} µm²`],
      ["Source", sourceLabel(properties)],
      ["Version", String(properties.version)],
    ];
    for (const [name, value] of rows) {
      const term = document.createElement("dt");
      term.textContent = name;
      const description = document.createElement("dd");
      description.textContent = value;
      details.append(term, description);
    }
    element.replaceChildren(heading, details);
  }

  showProgress(progress) {
    const reviewed = progress.total - progress.by_state.pending;
    const bar = document.createElement("progress");
    bar.max = Math.max(progress.total, 1);
    bar.value = reviewed;
    const summary = document.createElement("p");
    const percent = progress.total ? ` (${Math.round((100 * reviewed) / progress.total)}%)` : "";
    summary.textContent = `${reviewed} of ${progress.total} reviewed${percent}`;
    const table = document.createElement("table");
    for (const state of STATES) {
      const row = document.createElement("tr");
      const name = document.createElement("th");
      name.textContent = state;
      const count = document.createElement("td");
      count.dataset.stateCount = state;
      count.textContent = String(progress.by_state[state] ?? 0);
      row.append(name, count);
      table.append(row);
    }
    this.progress.replaceChildren(summary, bar, table);
  }

  // kind is "info" or "error". status is the HTTP status of a failed request, if any.
  showMessage(text, { kind = "info", status = "" } = {}) {
    this.message.textContent = text;
    this.message.className = kind === "error" ? "error" : "note";
    this.message.dataset.status = String(status);
  }
}

// "model (model-3)" for a model version's prediction, else the source as stored.
function sourceLabel(properties) {
  if (!properties.source) return "–";
  if (!properties.model_version_name) return properties.source;
  return `${properties.source} (${properties.model_version_name})`;
}
