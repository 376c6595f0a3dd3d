// The Read-outs panel: IFTA %, glomerulosclerosis %, Banff ci/ct, counts and densities of
// one source (reviewed annotations, a model version, or both), and that source's IFTA
// regions as a viewer layer. The server computes every number; this module only shows them.
import { api } from "./api.js";

// Review changes often come in bursts (accept, next, accept), so reloads are debounced.
const RELOAD_DELAY_MS = 600;

function sourceKey(readout) {
  return readout.model_version ? `${readout.source}:${readout.model_version}` : readout.source;
}

function formatNumber(value, digits) {
  return value === null || value === undefined ? "–" : value.toFixed(digits);
}

function row(list, term, value, key) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dd.dataset.readout = key;
  list.append(dt, dd);
}

export class ReadoutPanel {
  // events: the slide's SlideEvents. Every instance change reloads the read-outs, and so
  // does a reconnection, because changes made while the socket was closed were missed.
  constructor(root, slideId, events, iftaLayer) {
    this.root = root;
    this.slideId = slideId;
    this.iftaLayer = iftaLayer;
    this.readouts = [];
    this.serial = 0;
    this.reloadTimer = null;

    this.select = root.querySelector("#readout-source");
    this.values = root.querySelector("#readout-values");
    this.counts = root.querySelector("#readout-counts");
    this.note = root.querySelector("#readout-note");
    this.message = root.querySelector("#readout-message");
    this.toggle = root.querySelector("#toggle-ifta");

    this.select.addEventListener("change", () => {
      this.select.blur();
      this.render();
      this.loadRegions();
    });
    // Both controls give the focus back, so the review keys work again right away.
    this.toggle.addEventListener("change", () => {
      this.toggle.blur();
      this.iftaLayer.setVisible(this.toggle.checked);
      this.loadRegions();
    });

    let connectedBefore = false;
    events.on("instance.changed", () => this.scheduleReload());
    events.onConnect(() => {
      if (connectedBefore) this.scheduleReload();
      connectedBefore = true;
    });
    this.reload();
  }

  scheduleReload() {
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(() => this.reload(), RELOAD_DELAY_MS);
  }

  async reload() {
    const serial = ++this.serial;
    try {
      const readouts = await api.readouts(this.slideId);
      if (serial !== this.serial) return; // a newer reload was started meanwhile
      this.readouts = readouts;
      this.renderSources();
      this.render();
      this.message.textContent = "";
      await this.loadRegions();
    } catch (error) {
      this.message.textContent = `Could not load read-outs: ${error.message}`;
    }
  }

  selected() {
    return this.readouts.find((readout) => sourceKey(readout) === this.select.value) || this.readouts[0] || null;
  }

  renderSources() {
    const previous = this.select.value;
    this.select.replaceChildren(
      ...this.readouts.map((readout) => {
        const option = document.createElement("option");
        option.value = sourceKey(readout);
        option.textContent = readout.label;
        return option;
      }),
    );
    if (this.readouts.some((readout) => sourceKey(readout) === previous)) this.select.value = previous;
  }

  render() {
    const readout = this.selected();
    this.values.replaceChildren();
    this.counts.replaceChildren();
    this.root.dataset.iftaPct = readout && readout.ifta_pct !== null ? String(readout.ifta_pct) : "";
    if (!readout) return;

    const clusterTubules = readout.ifta_clusters.reduce((sum, cluster) => sum + cluster.n_tubules, 0);
    const cortexMm2 = readout.cortex_area_um2 / 1e6;
    row(this.values, "IFTA", readout.ifta_pct === null ? "–" : `${formatNumber(readout.ifta_pct, 2)} %`, "ifta");
    row(this.values, "Cortex",
      readout.cortex_source ? `${formatNumber(cortexMm2, 3)} mm² (${readout.cortex_source})` : "–", "cortex");
    row(this.values, "Clusters",
      `${readout.ifta_clusters.length} (${clusterTubules} atrophic tubules)`, "clusters");
    row(this.values, "Glomerulosclerosis",
      readout.glomerulosclerosis_pct === null
        ? "–"
        : `${formatNumber(readout.glomerulosclerosis_pct, 1)} % (${readout.sclerotic_count} of ${readout.glomeruli_count})`,
      "glomerulosclerosis");
    row(this.values, "Banff",
      readout.banff_ci === null ? "–" : `ci ${readout.banff_ci} · ct ${readout.banff_ct}`, "banff");
    this.note.textContent = [readout.message, readout.banff_note].filter(Boolean).join(" ");

    for (const [className, count] of Object.entries(readout.counts)) {
      const tr = document.createElement("tr");
      const density = readout.densities_per_mm2[className];
      for (const text of [className, String(count), density === undefined ? "–" : `${formatNumber(density, 1)}/mm²`]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      tr.dataset.count = className;
      this.counts.append(tr);
    }
  }

  async loadRegions() {
    const readout = this.selected();
    if (!this.toggle.checked || !readout) return;
    try {
      this.iftaLayer.setRegions(await api.iftaRegions(this.slideId, readout.source, readout.model_version));
    } catch (error) {
      this.message.textContent = `Could not load IFTA regions: ${error.message}`;
    }
  }
}
