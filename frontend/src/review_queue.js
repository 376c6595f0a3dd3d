// The review queue: this slide's pending objects in the order the server gives.
//
// The server decides the order, so the queue is reloaded whenever an object may have
// (re)entered it. Locally it only drops objects that are no longer pending.
import { api } from "./api.js";

const RELOAD_DELAY_MS = 400;

function formatScore(value) {
  return value === null || value === undefined ? "–" : value.toFixed(2);
}

export class ReviewQueue {
  // onPick(feature) runs when the user clicks an entry, and colourOf(className) gives its colour.
  constructor(listElement, summaryElement, slideId, { onPick, onReloaded, colourOf }) {
    this.listElement = listElement;
    this.summaryElement = summaryElement;
    this.slideId = slideId;
    this.onPick = onPick;
    this.onReloaded = onReloaded;
    this.colourOf = colourOf;
    this.items = [];
    this.order = null; // null: the server's default order
    this.currentId = null;
    this.reloadTimer = null;
    this.requestSerial = 0;
    this.loaded = false;
  }

  setOrder(order) {
    this.order = order || null;
    return this.reload();
  }

  scheduleReload() {
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(() => this.reload(), RELOAD_DELAY_MS);
  }

  async reload() {
    clearTimeout(this.reloadTimer);
    const serial = ++this.requestSerial;
    try {
      const items = await api.reviewQueue(this.slideId, this.order);
      if (serial !== this.requestSerial) return;
      this.items = items;
      this.loaded = true;
      this.render();
      this.onReloaded();
    } catch (error) {
      this.summaryElement.textContent = `Could not load the review queue: ${error.message}`;
    }
  }

  indexOf(id) {
    return this.items.findIndex((item) => item.id === id);
  }

  at(index) {
    return this.items[index] || null;
  }

  get length() {
    return this.items.length;
  }

  // Apply the server's copy of an object: keep it while pending, drop it otherwise.
  apply(feature) {
    const index = this.indexOf(feature.id);
    if (feature.properties.review_state !== "pending") {
      if (index >= 0) this.items.splice(index, 1);
    } else if (index >= 0) {
      this.items[index] = feature;
    } else {
      this.scheduleReload();
    }
    this.render();
  }

  remove(id) {
    const index = this.indexOf(id);
    if (index >= 0) this.items.splice(index, 1);
    this.render();
  }

  setCurrent(id) {
    this.currentId = id;
    this.render();
  }

  render() {
    const fragment = document.createDocumentFragment();
    let currentEntry = null;
    for (const feature of this.items) {
      const entry = document.createElement("li");
      entry.dataset.instanceId = String(feature.id);
      const properties = feature.properties;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = this.colourOf(properties.class_name);
      const text = document.createElement("span");
      text.textContent = `#${feature.id} ${properties.class_name || "no class"} · IoU ${formatScore(properties.predicted_iou)}`;
      entry.append(swatch, text);
      if (feature.id === this.currentId) {
        entry.classList.add("current");
        entry.setAttribute("aria-current", "true");
        currentEntry = entry;
      }
      entry.addEventListener("click", () => this.onPick(feature));
      fragment.append(entry);
    }
    this.listElement.replaceChildren(fragment);
    this.listElement.dataset.count = String(this.items.length);
    const position = this.indexOf(this.currentId);
    const where = position >= 0 ? `, current is ${position + 1}` : "";
    this.summaryElement.textContent = this.loaded
      ? `${this.items.length} pending${this.items.length >= 200 ? " shown (more load as you work)" : ""}${where}`
      : "Loading the queue…";
    if (currentEntry) currentEntry.scrollIntoView({ block: "nearest" });
  }
}
