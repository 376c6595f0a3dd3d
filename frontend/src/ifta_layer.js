// The IFTA regions of one read-out, filled on the instance overlay's canvas.
//
// Regions arrive as GeoJSON in level-0 pixels and are drawn with the overlay's level-0 to
// screen transform, after the instance outlines. The viewer element's data-ifta-drawn
// attribute is the number of region polygons drawn in the last frame.
import { pathFromGeometry } from "./overlay.js";

const FILL_COLOUR = "rgba(255, 140, 0, 0.3)";
const OUTLINE_COLOUR = "#ff8c00";
const OUTLINE_WIDTH_PX = 2;

export class IftaLayer {
  constructor(overlay) {
    this.overlay = overlay;
    this.paths = [];
    this.visible = false;
    overlay.viewer.element.dataset.iftaDrawn = "0";
    overlay.addDecorator((context, view) => this.draw(context, view));
  }

  // collection: the FeatureCollection of /api/slides/<id>/ifta-regions/.
  setRegions(collection) {
    this.paths = collection.features.map((feature) => pathFromGeometry(feature.geometry));
    this.overlay.requestDraw();
  }

  setVisible(visible) {
    this.visible = visible;
    this.overlay.requestDraw();
  }

  draw(context, view) {
    const element = this.overlay.viewer.element;
    if (!this.visible || this.paths.length === 0) {
      element.dataset.iftaDrawn = "0";
      return;
    }
    context.save();
    view.applyTo(context, window.devicePixelRatio || 1);
    context.fillStyle = FILL_COLOUR;
    context.strokeStyle = OUTLINE_COLOUR;
    context.lineWidth = OUTLINE_WIDTH_PX / view.scale;
    for (const path of this.paths) {
      context.fill(path, "evenodd");
      context.stroke(path);
    }
    context.restore();
    element.dataset.iftaDrawn = String(this.paths.length);
  }
}
