// Instance polygons drawn on a canvas above the viewer, fetched by viewport.
//
// Geometry stays in level-0 pixels: each polygon becomes a Path2D once, and every frame
// draws all paths under one affine transform from level-0 to screen pixels, which keeps
// panning smooth with thousands of polygons.
import OpenSeadragon from "openseadragon";
import { api } from "./api.js";

const CLASS_COLOURS = {
  "proximal tubule": "#0000ff",
  "distal tubule": "#ffff00",
  "atrophic tubule": "#87cefa",
  glomerulus: "#ff00ff",
  "sclerotic glomerulus": "#800080",
  vessel: "#ff0000",
  background: "#000000",
  "unspecified tubule": "#808080",
};
const PROPOSAL_COLOUR = "#00c853";
const FETCH_DELAY_MS = 150;
const VIEWPORT_MARGIN = 0.25;

function pathFromGeometry(geometry) {
  const path = new Path2D();
  const polygons = geometry.type === "MultiPolygon" ? geometry.coordinates : [geometry.coordinates];
  for (const rings of polygons) {
    for (const ring of rings) {
      ring.forEach(([x, y], i) => (i === 0 ? path.moveTo(x, y) : path.lineTo(x, y)));
      path.closePath();
    }
  }
  return path;
}

export class InstanceOverlay {
  constructor(viewer, slideId, statusElement) {
    this.viewer = viewer;
    this.slideId = slideId;
    this.statusElement = statusElement;
    this.features = [];
    this.visible = true;
    this.fetchTimer = null;
    this.requestSerial = 0;

    this.canvas = document.createElement("canvas");
    this.canvas.className = "instance-overlay";
    this.canvas.id = "instance-overlay";
    this.canvas.dataset.drawn = "0";
    viewer.canvas.appendChild(this.canvas);

    viewer.addHandler("update-viewport", () => this.draw());
    viewer.addHandler("resize", () => this.draw());
    viewer.addHandler("animation-finish", () => this.scheduleFetch());
    viewer.addHandler("open", () => this.scheduleFetch());
  }

  setVisible(visible) {
    this.visible = visible;
    this.draw();
  }

  scheduleFetch() {
    clearTimeout(this.fetchTimer);
    this.fetchTimer = setTimeout(() => this.fetch(), FETCH_DELAY_MS);
  }

  viewportBboxLevel0() {
    const bounds = this.viewer.viewport.getBounds(true);
    const rect = this.viewer.viewport.viewportToImageRectangle(bounds);
    const marginX = rect.width * VIEWPORT_MARGIN;
    const marginY = rect.height * VIEWPORT_MARGIN;
    return [rect.x - marginX, rect.y - marginY, rect.x + rect.width + marginX, rect.y + rect.height + marginY];
  }

  async fetch() {
    const serial = ++this.requestSerial;
    try {
      const collection = await api.instances(this.slideId, this.viewportBboxLevel0());
      if (serial !== this.requestSerial) return; // the response for a newer viewport arrived first
      this.features = collection.features.map((feature) => ({
        id: feature.id,
        properties: feature.properties,
        path: pathFromGeometry(feature.geometry),
      }));
      this.statusElement.textContent = collection.truncated
        ? `${this.features.length} objects shown (zoom in to see all)`
        : `${this.features.length} objects in view`;
      this.draw();
    } catch (error) {
      this.statusElement.textContent = `Could not load objects: ${error.message}`;
    }
  }

  draw() {
    const ratio = window.devicePixelRatio || 1;
    const container = this.viewer.container;
    const width = container.clientWidth;
    const height = container.clientHeight;
    if (this.canvas.width !== width * ratio || this.canvas.height !== height * ratio) {
      this.canvas.width = width * ratio;
      this.canvas.height = height * ratio;
      this.canvas.style.width = `${width}px`;
      this.canvas.style.height = `${height}px`;
    }
    const context = this.canvas.getContext("2d");
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.clearRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.visible || this.viewer.world.getItemCount() === 0) {
      this.canvas.dataset.drawn = "0";
      return;
    }
    const viewport = this.viewer.viewport;
    const origin = viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const unit = viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(1, 0));
    const scale = unit.x - origin.x; // screen pixels per level-0 pixel
    context.setTransform(scale * ratio, 0, 0, scale * ratio, origin.x * ratio, origin.y * ratio);
    context.lineWidth = 1.5 / scale;
    for (const feature of this.features) {
      const colour = CLASS_COLOURS[feature.properties.class_name] || PROPOSAL_COLOUR;
      context.strokeStyle = colour;
      context.stroke(feature.path);
    }
    this.canvas.dataset.drawn = String(this.features.length);
  }
}
