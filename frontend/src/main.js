// Entry point: each page marks its root element with data-page.
import { api } from "./api.js";
import { openViewer } from "./viewer.js";
import { InstanceOverlay } from "./overlay.js";
import { ReviewSession } from "./review.js";
import { RunPanel } from "./runs.js";
import { SlideEvents } from "./slide_events.js";
import { initSlideList } from "./slide_list.js";
import { ImportPanel } from "./import_panel.js";
import { initTrainingPage } from "./training_page.js";
import { IftaLayer } from "./ifta_layer.js";
import { ReadoutPanel } from "./readout_panel.js";

async function initSlidePage(root) {
  const slideId = Number(root.dataset.slideId);
  const [{ viewer, metadata }, classes] = await Promise.all([
    openViewer(root.querySelector("#viewer"), slideId),
    api.classes(),
  ]);
  const overlay = new InstanceOverlay(viewer, slideId, root.querySelector("#overlay-status"));
  const events = new SlideEvents(slideId);
  const toggle = root.querySelector("#toggle-overlay");
  toggle.addEventListener("change", () => overlay.setVisible(toggle.checked));
  const review = new ReviewSession({
    root, slideId, viewer, metadata, overlay, events, overlayToggle: toggle, classes,
  });
  const readouts = new ReadoutPanel(root.querySelector("#readout-panel"), slideId, events, new IftaLayer(overlay));
  new RunPanel(root.querySelector("#run-panel"), slideId, events, {
    onRunFinished: () => {
      overlay.fetch();
      readouts.scheduleReload();
      review.queue.reload();
      review.reloadProgress();
    },
  });
  const importRoot = root.querySelector("#import-panel");
  if (importRoot) {
    new ImportPanel(importRoot, slideId, classes, {
      onImported: () => {
        overlay.fetch();
        readouts.scheduleReload();
        review.queue.reload();
        review.reloadProgress();
      },
    });
  }
  await review.start();
}

document.addEventListener("DOMContentLoaded", () => {
  const root = document.querySelector("[data-page]");
  if (!root) return;
  if (root.dataset.page === "slide") {
    initSlidePage(root).catch((error) => {
      root.querySelector("#viewer").textContent = `Could not open the slide: ${error.message}`;
    });
  } else if (root.dataset.page === "slide-list") {
    initSlideList(root);
  } else if (root.dataset.page === "training") {
    initTrainingPage(root);
  }
});
