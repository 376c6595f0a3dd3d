// Entry point: each page marks its root element with data-page.
import { openViewer } from "./viewer.js";
import { InstanceOverlay } from "./overlay.js";
import { RunPanel } from "./runs.js";
import { initSlideList } from "./slide_list.js";

async function initSlidePage(root) {
  const slideId = Number(root.dataset.slideId);
  const { viewer } = await openViewer(root.querySelector("#viewer"), slideId);
  const overlay = new InstanceOverlay(viewer, slideId, root.querySelector("#overlay-status"));
  const toggle = root.querySelector("#toggle-overlay");
  toggle.addEventListener("change", () => overlay.setVisible(toggle.checked));
  new RunPanel(root.querySelector("#run-panel"), slideId, {
    onRunFinished: () => overlay.fetch(),
  });
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
  }
});
