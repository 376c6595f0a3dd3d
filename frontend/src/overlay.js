// Instance polygons drawn on a canvas above the viewer, fetched by viewport.
//
// Coordinates: "level-0" is the slide's full-resolution pixel grid, in which every
// geometry is stored. "screen" is CSS pixels inside the viewer element, origin top left.
// Each polygon becomes a Path2D in level-0 pixels once, and every frame strokes the paths
// under one affine transform from level-0 to screen pixels, which keeps panning smooth
// with thousands of polygons. Polygons smaller than MIN_OUTLINE_PX on screen are drawn as
// dots, and polygons outside the view are skipped.
import OpenSeadragon from "openseadragon";
import { api } from "./api.js";

const PROPOSAL_COLOUR = "#00c853";
const FETCH_DELAY_MS = 150;
const VIEWPORT_MARGIN = 0.25;
const MIN_OUTLINE_PX = 2;
const OUTLINE_WIDTH_PX = 1.5;
const PENDING_DASH_PX = [6, 4];
const REGION_DASH_PX = [10, 6];
const HIT_TOLERANCE_PX = 4;

export function pathFromGeometry(geometry) {
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

// Bounding box [x_min, y_min, x_max, y_max] of a GeoJSON (Multi)Polygon, level-0 pixels.
export function bboxOfGeometry(geometry) {
  const polygons = geometry.type === "MultiPolygon" ? geometry.coordinates : [geometry.coordinates];
  const bbox = [Infinity, Infinity, -Infinity, -Infinity];
  for (const rings of polygons) {
    for (const [x, y] of rings[0] || []) {
      bbox[0] = Math.min(bbox[0], x);
      bbox[1] = Math.min(bbox[1], y);
      bbox[2] = Math.max(bbox[2], x);
      bbox[3] = Math.max(bbox[3], y);
    }
  }
  return bbox;
}

// A GeoJSON feature with what drawing and hit testing need: its Path2D and bounding box.
function displayFeature(feature) {
  return {
    id: feature.id,
    geometry: feature.geometry,
    properties: feature.properties,
    path: pathFromGeometry(feature.geometry),
    bbox: bboxOfGeometry(feature.geometry),
  };
}

function withAlpha(hexColour, alpha) {
  const value = parseInt(hexColour.slice(1), 16);
  return `rgba(${(value >> 16) & 255}, ${(value >> 8) & 255}, ${value & 255}, ${alpha})`;
}

export class InstanceOverlay {
  constructor(viewer, slideId, statusElement) {
    this.viewer = viewer;
    this.slideId = slideId;
    this.statusElement = statusElement;
    this.features = new Map(); // id -> display feature
    // When each id was last changed or removed locally (performance.now() ms), so that a
    // viewport response requested before the change cannot bring back the old state.
    this.changedAt = new Map();
    this.classColours = new Map();
    this.current = null;
    this.regions = [];
    this.decorators = [];
    this.visible = true;
    this.fetchTimer = null;
    this.frameRequest = null;
    this.requestSerial = 0;
    this.styleGroups = null;

    this.canvas = document.createElement("canvas");
    this.canvas.className = "instance-overlay";
    this.canvas.id = "instance-overlay";
    this.canvas.dataset.drawn = "0";
    this.context = this.canvas.getContext("2d");
    viewer.canvas.appendChild(this.canvas);

    // OpenSeadragon raises update-viewport inside its own animation frame, so drawing
    // right away keeps the polygons in step with the deep-zoom tiles.
    viewer.addHandler("update-viewport", () => this.draw());
    viewer.addHandler("resize", () => this.requestDraw());
    viewer.addHandler("animation-start", () => (viewer.element.dataset.animating = "1"));
    viewer.addHandler("animation-finish", () => {
      viewer.element.dataset.animating = "0";
      this.recordView();
      this.scheduleFetch();
    });
    viewer.addHandler("open", () => {
      this.recordView();
      this.scheduleFetch();
    });
    // The slide may have opened while the page still waited for other requests.
    if (viewer.world.getItemCount() > 0) {
      this.recordView();
      this.scheduleFetch();
    }
  }

  setClassColours(classes) {
    this.classColours = new Map(classes.map((c) => [c.name, c.color]));
    this.styleGroups = null;
    this.requestDraw();
  }

  colourOf(className) {
    return this.classColours.get(className) || PROPOSAL_COLOUR;
  }

  setVisible(visible) {
    this.visible = visible;
    this.requestDraw();
  }

  // The object the reviewer works on: drawn on top, highlighted, even when not fetched.
  setCurrent(feature) {
    this.current = feature ? displayFeature(feature) : null;
    this.requestDraw();
  }

  setRegions(regions) {
    this.regions = regions.map((region) => ({ id: region.id, path: pathFromGeometry(region.geometry) }));
    this.requestDraw();
  }

  // Add a function(context, view) that draws in screen pixels after the polygons.
  addDecorator(decorator) {
    this.decorators.push(decorator);
  }

  get(id) {
    return this.features.get(id) || null;
  }

  // Store the server's copy of a feature. Rejected ones are hidden, as in the viewport API.
  apply(feature) {
    if (feature.properties.review_state === "rejected") {
      this.remove(feature.id);
      return;
    }
    this.features.set(feature.id, displayFeature(feature));
    this.changedAt.set(feature.id, performance.now());
    this.styleGroups = null;
    this.requestDraw();
  }

  remove(id) {
    this.features.delete(id);
    this.changedAt.set(id, performance.now());
    this.styleGroups = null;
    this.requestDraw();
  }

  scheduleFetch() {
    clearTimeout(this.fetchTimer);
    this.fetchTimer = setTimeout(() => this.fetch(), FETCH_DELAY_MS);
  }

  // The visible part of the slide in level-0 pixels: [x_min, y_min, x_max, y_max].
  viewBboxLevel0() {
    const bounds = this.viewer.viewport.getBounds(true);
    const rect = this.viewer.viewport.viewportToImageRectangle(bounds);
    return [rect.x, rect.y, rect.x + rect.width, rect.y + rect.height];
  }

  // Publish the settled view on the viewer element, for tests and for debugging.
  recordView() {
    this.viewer.element.dataset.viewLevel0 = this.viewBboxLevel0().map((v) => v.toFixed(2)).join(",");
  }

  async fetch() {
    const serial = ++this.requestSerial;
    const requestedAt = performance.now();
    const [x0, y0, x1, y1] = this.viewBboxLevel0();
    const marginX = (x1 - x0) * VIEWPORT_MARGIN;
    const marginY = (y1 - y0) * VIEWPORT_MARGIN;
    try {
      const collection = await api.instances(this.slideId, [x0 - marginX, y0 - marginY, x1 + marginX, y1 + marginY]);
      if (serial !== this.requestSerial) return; // the response for a newer viewport arrived first
      const fetched = new Map(collection.features.map((feature) => [feature.id, feature]));
      const merged = new Map();
      // A local change made after the request was sent is newer than the response.
      const changedSinceRequest = (id) => (this.changedAt.get(id) || 0) > requestedAt;
      for (const [id, feature] of fetched) {
        if (!changedSinceRequest(id)) merged.set(id, displayFeature(feature));
      }
      for (const [id, feature] of this.features) {
        if (changedSinceRequest(id)) merged.set(id, feature);
      }
      this.features = merged;
      this.styleGroups = null;
      this.statusElement.textContent = collection.truncated
        ? `${this.features.size} objects shown (zoom in to see all)`
        : `${this.features.size} objects in view`;
      this.requestDraw();
    } catch (error) {
      this.statusElement.textContent = `Could not load objects: ${error.message}`;
    }
  }

  // Transform between level-0 and screen pixels for the current frame.
  view() {
    const viewport = this.viewer.viewport;
    const origin = viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const unit = viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(1, 0));
    const scale = unit.x - origin.x; // screen pixels per level-0 pixel
    return {
      scale,
      toScreen: (x, y) => [origin.x + x * scale, origin.y + y * scale],
      toLevel0: (x, y) => [(x - origin.x) / scale, (y - origin.y) / scale],
      // Set the context's transform so that level-0 paths land on the screen.
      applyTo: (context, ratio) =>
        context.setTransform(scale * ratio, 0, 0, scale * ratio, origin.x * ratio, origin.y * ratio),
    };
  }

  requestDraw() {
    if (this.frameRequest !== null) return;
    this.frameRequest = requestAnimationFrame(() => this.draw());
  }

  // Features grouped by stroke style, so a frame changes canvas state once per group.
  groupsByStyle() {
    if (this.styleGroups) return this.styleGroups;
    const groups = new Map();
    for (const feature of this.features.values()) {
      const colour = this.colourOf(feature.properties.class_name);
      const pending = feature.properties.review_state === "pending";
      const key = `${colour}|${pending}`;
      if (!groups.has(key)) groups.set(key, { colour, pending, features: [] });
      groups.get(key).features.push(feature);
    }
    this.styleGroups = [...groups.values()];
    return this.styleGroups;
  }

  resizeCanvas(ratio) {
    const width = this.viewer.container.clientWidth;
    const height = this.viewer.container.clientHeight;
    if (this.canvas.width !== width * ratio || this.canvas.height !== height * ratio) {
      this.canvas.width = width * ratio;
      this.canvas.height = height * ratio;
      this.canvas.style.width = `${width}px`;
      this.canvas.style.height = `${height}px`;
    }
  }

  draw() {
    if (this.frameRequest !== null) cancelAnimationFrame(this.frameRequest);
    this.frameRequest = null;
    const ratio = window.devicePixelRatio || 1;
    this.resizeCanvas(ratio);
    const context = this.context;
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.clearRect(0, 0, this.canvas.width, this.canvas.height);
    if (this.viewer.world.getItemCount() === 0) {
      this.canvas.dataset.drawn = "0";
      return;
    }
    const view = this.view();
    if (this.visible) {
      view.applyTo(context, ratio);
      this.drawRegions(context, view.scale);
      this.drawFeatures(context, view.scale);
      this.drawCurrent(context, view.scale);
    }
    this.canvas.dataset.drawn = this.visible ? String(this.features.size) : "0";
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    for (const decorator of this.decorators) decorator(context, view);
  }

  drawRegions(context, scale) {
    context.lineWidth = 2 / scale;
    context.setLineDash(REGION_DASH_PX.map((v) => v / scale));
    context.strokeStyle = "#ffffff";
    for (const region of this.regions) context.stroke(region.path);
    context.setLineDash([]);
  }

  drawFeatures(context, scale) {
    const [vx0, vy0, vx1, vy1] = this.viewBboxLevel0();
    const minSide = MIN_OUTLINE_PX / scale;
    context.lineWidth = OUTLINE_WIDTH_PX / scale;
    for (const group of this.groupsByStyle()) {
      context.strokeStyle = group.colour;
      context.setLineDash(group.pending ? PENDING_DASH_PX.map((v) => v / scale) : []);
      const dots = new Path2D();
      for (const feature of group.features) {
        const [x0, y0, x1, y1] = feature.bbox;
        if (x1 < vx0 || x0 > vx1 || y1 < vy0 || y0 > vy1) continue;
        if (this.current && feature.id === this.current.id) continue;
        if (x1 - x0 < minSide && y1 - y0 < minSide) {
          dots.rect((x0 + x1) / 2 - minSide / 2, (y0 + y1) / 2 - minSide / 2, minSide, minSide);
        } else {
          context.stroke(feature.path);
        }
      }
      context.fillStyle = group.colour;
      context.fill(dots);
    }
    context.setLineDash([]);
  }

  drawCurrent(context, scale) {
    if (!this.current) return;
    const colour = this.colourOf(this.current.properties.class_name);
    context.fillStyle = withAlpha(colour, 0.12);
    context.fill(this.current.path, "evenodd");
    context.strokeStyle = "#ffffff";
    context.lineWidth = 6 / scale;
    context.stroke(this.current.path);
    context.strokeStyle = colour;
    context.lineWidth = 3 / scale;
    context.stroke(this.current.path);
  }

  // The smallest visible object under a screen point, or null.
  hitTest(screenX, screenY) {
    return this.hitTestAll(screenX, screenY)[0] || null;
  }

  // Every visible object under a screen point, smallest first (ties by id), so repeated
  // clicks can step through stacked objects. Hit tests use Path2D under the same level-0
  // to screen transform as drawing, with a few pixels of tolerance on the outline so that
  // thin objects can be picked.
  hitTestAll(screenX, screenY) {
    if (!this.visible) return [];
    const ratio = window.devicePixelRatio || 1;
    const view = this.view();
    const [x, y] = view.toLevel0(screenX, screenY);
    const slack = HIT_TOLERANCE_PX / view.scale;
    const context = this.context;
    context.save();
    view.applyTo(context, ratio);
    context.lineWidth = (2 * HIT_TOLERANCE_PX) / view.scale;
    const hits = [];
    const candidates = [...this.features.values()];
    if (this.current && !this.features.has(this.current.id)) candidates.push(this.current);
    for (const feature of candidates) {
      const [x0, y0, x1, y1] = feature.bbox;
      if (x < x0 - slack || x > x1 + slack || y < y0 - slack || y > y1 + slack) continue;
      const inside =
        context.isPointInPath(feature.path, screenX * ratio, screenY * ratio, "evenodd") ||
        context.isPointInStroke(feature.path, screenX * ratio, screenY * ratio);
      if (inside) hits.push({ feature, area: (x1 - x0) * (y1 - y0) });
    }
    context.restore();
    hits.sort((a, b) => a.area - b.area || a.feature.id - b.feature.id);
    return hits.map((hit) => hit.feature);
  }
}
