// Mouse editing on the instance overlay: select, edit vertices, draw, SAM prompts.
//
// Modes:
// - review: a click selects the object under the pointer, and a drag pans the slide.
// - edit: handles on the current object's vertices. Drag a handle to move a vertex,
//   double-click an edge to insert one, Alt+click a handle to delete one. A drag that
//   starts off the handles pans, and a click selects another object.
// - draw: each click adds a vertex. A double click or Enter finishes, and a drag pans.
// - sam-point: a click sends a SAM point prompt, and a drag pans.
// - sam-box: a drag spans a rectangle that is sent as a SAM box prompt.
//
// Every completed change (mouse up) is saved at once with the version the user saw
// when the gesture began. Saves of one object run one after another, and a change that
// is still unsaved when the page goes away is sent with a keepalive request.
//
// Pointer presses that start a vertex drag or a box are caught in the capture phase on
// the viewer container, so OpenSeadragon never receives them and cannot pan. Its mouse
// navigation is also disabled for the length of such a drag.
import {
  closedGeometry,
  nearestEdge,
  nearestVertex,
  openPolygons,
  polygonFromVertices,
  withoutNearDuplicates,
} from "./outline_geometry.js";

export const MODES = ["review", "edit", "draw", "sam-point", "sam-box"];

const CLICK_SLOP_PX = 4;
const HANDLE_PICK_PX = 8;
const HANDLE_SIZE_PX = 8;
const MIN_BOX_PX = 4;
const DUPLICATE_VERTEX_PX = 4;

export class Editor {
  // actions: {
  //   currentFeature() -> the current GeoJSON feature or null,
  //   select(feature), message(text), modeChanged(mode),
  //   saveOutline(id, geometry, version) -> Promise of the saved feature, or null on failure,
  //   saveOutlineOnUnload(id, geometry, version), drawPolygon(geometry) -> Promise of bool,
  //   promptSam({point_level0} or {box_level0}),
  // }
  constructor(viewer, overlay, actions) {
    this.viewer = viewer;
    this.overlay = overlay;
    this.actions = actions;
    this.mode = "review";
    this.press = null; // {x, y, pointerId, handle?, boxEnd?} of the pressed primary button
    this.working = null; // {id, type, polygons, baseVersion} while a vertex is dragged
    this.unsaved = null; // {id, geometry, baseVersion} waiting for the save in flight
    this.saving = null; // {id, geometry, version} of the save in flight
    this.drawnVertices = []; // level-0 [x, y] of the polygon being drawn
    this.hoverScreen = null;

    const container = viewer.container;
    container.addEventListener("pointerdown", (event) => this.onPointerDown(event), { capture: true });
    container.addEventListener("pointermove", (event) => this.onHover(event));
    container.addEventListener("pointerleave", () => {
      this.hoverScreen = null;
      this.overlay.requestDraw();
    });
    container.addEventListener("dblclick", (event) => this.onDoubleClick(event));
    this.onPointerMove = this.onPointerMove.bind(this);
    this.onPointerUp = this.onPointerUp.bind(this);
    overlay.addDecorator((context, view) => this.decorate(context, view));
    window.addEventListener("beforeunload", () => this.saveOnUnload());
    window.addEventListener("pagehide", () => this.saveOnUnload());
  }

  setMode(mode) {
    if (!MODES.includes(mode)) throw new Error(`Invalid editor mode "${mode}": expected one of ${MODES.join(", ")}.`);
    this.mode = mode;
    this.drawnVertices = [];
    this.viewer.element.dataset.editorMode = mode;
    this.actions.modeChanged(mode);
    this.overlay.requestDraw();
  }

  // The feature as the overlay should show it: with the outline being edited, if any.
  displayed(feature) {
    if (!feature) return null;
    const pending = [this.working, this.unsaved, this.saving].find((outline) => outline && outline.id === feature.id);
    if (!pending) return feature;
    const geometry = pending.geometry || closedGeometry(pending.type, pending.polygons);
    return { ...feature, geometry };
  }

  screenPoint(event) {
    const rect = this.viewer.container.getBoundingClientRect();
    return [event.clientX - rect.left, event.clientY - rect.top];
  }

  currentPolygons() {
    if (this.working) return this.working.polygons;
    const feature = this.displayed(this.actions.currentFeature());
    return feature ? openPolygons(feature.geometry) : null;
  }

  onPointerDown(event) {
    if (event.button !== 0 || !this.viewer.canvas.contains(event.target)) return;
    const [x, y] = this.screenPoint(event);
    this.press = { x, y, pointerId: event.pointerId };
    const view = this.overlay.view();
    if (this.mode === "edit") {
      const polygons = this.currentPolygons();
      const handle = polygons && nearestVertex(polygons, [x, y], view.toScreen, HANDLE_PICK_PX);
      if (handle) {
        this.captureGesture(event);
        this.press.handle = handle;
        if (!event.altKey) this.startVertexDrag(polygons);
      }
    } else if (this.mode === "sam-box") {
      this.captureGesture(event);
      this.press.boxEnd = [x, y];
    }
    window.addEventListener("pointermove", this.onPointerMove);
    window.addEventListener("pointerup", this.onPointerUp);
  }

  // Keep this press from OpenSeadragon, so that dragging moves a vertex or spans a box.
  captureGesture(event) {
    event.stopPropagation();
    event.preventDefault();
    this.viewer.setMouseNavEnabled(false);
  }

  startVertexDrag(polygons) {
    const feature = this.actions.currentFeature();
    const savingSameObject = this.saving && this.saving.id === feature.id;
    this.working = {
      id: feature.id,
      type: feature.geometry.type,
      polygons: polygons.map((rings) => rings.map((ring) => ring.map(([x, y]) => [x, y]))),
      // A save of this object in flight will raise its version, and this change builds
      // on that save, so it takes the version the save returns (see flushOutline).
      baseVersion: savingSameObject ? null : feature.properties.version,
    };
  }

  onPointerMove(event) {
    if (!this.press || event.pointerId !== this.press.pointerId) return;
    const [x, y] = this.screenPoint(event);
    if (this.working && this.press.handle) {
      const { polygon, ring, vertex } = this.press.handle;
      this.working.polygons[polygon][ring][vertex] = this.overlay.view().toLevel0(x, y);
      this.overlay.setCurrent(this.displayed(this.actions.currentFeature()));
    } else if (this.press.boxEnd) {
      this.press.boxEnd = [x, y];
      this.overlay.requestDraw();
    }
  }

  onPointerUp(event) {
    if (!this.press || event.pointerId !== this.press.pointerId) return;
    window.removeEventListener("pointermove", this.onPointerMove);
    window.removeEventListener("pointerup", this.onPointerUp);
    const press = this.press;
    this.press = null;
    this.viewer.setMouseNavEnabled(true);
    const [x, y] = this.screenPoint(event);
    const isClick = Math.hypot(x - press.x, y - press.y) <= CLICK_SLOP_PX;

    if (this.working) {
      const working = this.working;
      this.working = null;
      if (!isClick) this.commitOutline(working.id, closedGeometry(working.type, working.polygons), working.baseVersion);
    } else if (press.handle && event.altKey) {
      this.deleteVertex(press.handle);
    } else if (press.boxEnd) {
      this.finishBox(press, [x, y]);
    } else if (isClick) {
      this.onClick(x, y);
    }
    this.overlay.requestDraw();
  }

  onClick(x, y) {
    const level0 = this.overlay.view().toLevel0(x, y);
    if (this.mode === "draw") {
      this.drawnVertices.push(level0);
    } else if (this.mode === "sam-point") {
      this.actions.promptSam({ point_level0: level0.map((v) => Math.round(v)) });
    } else {
      // A click on the selected object selects the next object stacked under the point.
      const hits = this.overlay.hitTestAll(x, y);
      const selected = this.overlay.current ? hits.findIndex((f) => f.id === this.overlay.current.id) : -1;
      const hit = hits.length > 0 ? hits[(selected + 1) % hits.length] : null;
      if (hit) this.actions.select({ id: hit.id, geometry: hit.geometry, properties: hit.properties });
    }
  }

  onHover(event) {
    if (this.mode === "review" || this.mode === "sam-point") return;
    this.hoverScreen = this.screenPoint(event);
    if (this.mode === "draw" || this.mode === "edit") this.overlay.requestDraw();
  }

  onDoubleClick(event) {
    if (!this.viewer.canvas.contains(event.target)) return;
    if (this.mode === "draw") {
      this.finishDrawing();
    } else if (this.mode === "edit") {
      this.insertVertex(this.screenPoint(event));
    }
  }

  insertVertex(screenPoint) {
    const feature = this.actions.currentFeature();
    const polygons = this.currentPolygons();
    if (!feature || !polygons) return;
    const view = this.overlay.view();
    const edge = nearestEdge(polygons, screenPoint, view.toScreen, HANDLE_PICK_PX);
    if (!edge) return;
    // A double click on a vertex also lies on its two edges; a new vertex there adds nothing.
    if (nearestVertex(polygons, screenPoint, view.toScreen, HANDLE_PICK_PX)) return;
    polygons[edge.polygon][edge.ring].splice(edge.vertex, 0, view.toLevel0(...screenPoint));
    this.commitOutline(feature.id, closedGeometry(feature.geometry.type, polygons), this.baseVersionOf(feature));
  }

  deleteVertex(handle) {
    const feature = this.actions.currentFeature();
    const polygons = this.currentPolygons();
    if (!feature || !polygons) return;
    const ring = polygons[handle.polygon][handle.ring];
    if (ring.length <= 3) {
      this.actions.message("An outline needs at least three vertices; reject the object instead.");
      return;
    }
    ring.splice(handle.vertex, 1);
    this.commitOutline(feature.id, closedGeometry(feature.geometry.type, polygons), this.baseVersionOf(feature));
  }

  baseVersionOf(feature) {
    return this.saving && this.saving.id === feature.id ? null : feature.properties.version;
  }

  commitOutline(id, geometry, baseVersion) {
    this.unsaved = { id, geometry, baseVersion };
    this.overlay.setCurrent(this.displayed(this.actions.currentFeature()));
    this.flushOutline();
  }

  async flushOutline() {
    if (this.saving || !this.unsaved) return;
    const outline = this.unsaved;
    this.unsaved = null;
    const current = this.actions.currentFeature();
    const version = outline.baseVersion ?? (current && current.id === outline.id ? current.properties.version : null);
    if (version === null) {
      this.actions.message(`Object ${outline.id} is no longer selected; its last outline change was not saved.`);
      return;
    }
    this.saving = { ...outline, version };
    const saved = await this.actions.saveOutline(outline.id, outline.geometry, version);
    this.saving = null;
    // A change that built on a failed save would overwrite what the server now holds.
    if (!saved && this.unsaved && this.unsaved.id === outline.id && this.unsaved.baseVersion === null) {
      this.unsaved = null;
    }
    this.overlay.setCurrent(this.displayed(this.actions.currentFeature()));
    this.flushOutline();
  }

  saveOnUnload() {
    const outline = this.unsaved || this.working;
    if (!outline) return;
    const geometry = outline.geometry || closedGeometry(outline.type, outline.polygons);
    // NOTE: a change queued behind a save in flight assumes that the save succeeds and
    // raises the version by one. If the save fails, the server returns 409 and only this
    // last change is lost.
    const version = outline.baseVersion ?? (this.saving ? this.saving.version + 1 : null);
    if (version === null) return;
    this.actions.saveOutlineOnUnload(outline.id, geometry, version);
    this.unsaved = null;
    this.working = null;
  }

  async finishDrawing() {
    const view = this.overlay.view();
    const vertices = withoutNearDuplicates(this.drawnVertices, view.toScreen, DUPLICATE_VERTEX_PX);
    if (vertices.length < 3) {
      this.actions.message("A polygon needs at least three vertices: click to add them, double-click to finish.");
      return;
    }
    const geometry = polygonFromVertices(vertices);
    this.drawnVertices = [];
    this.overlay.requestDraw();
    const saved = await this.actions.drawPolygon(geometry);
    if (!saved) this.drawnVertices = vertices; // keep the work so that the user can retry
    this.overlay.requestDraw();
  }

  removeLastDrawnVertex() {
    this.drawnVertices.pop();
    this.overlay.requestDraw();
  }

  finishBox(press, end) {
    if (Math.abs(end[0] - press.x) < MIN_BOX_PX || Math.abs(end[1] - press.y) < MIN_BOX_PX) {
      this.actions.message("Drag a rectangle around the object to prompt SAM with a box.");
      return;
    }
    const view = this.overlay.view();
    const [x0, y0] = view.toLevel0(Math.min(press.x, end[0]), Math.min(press.y, end[1]));
    const [x1, y1] = view.toLevel0(Math.max(press.x, end[0]), Math.max(press.y, end[1]));
    this.actions.promptSam({ box_level0: [x0, y0, x1, y1].map((v) => Math.round(v)) });
  }

  // Draw handles, the polygon in progress and the prompt box, in screen pixels.
  decorate(context, view) {
    if (this.mode === "edit") this.drawHandles(context, view);
    if (this.mode === "draw") this.drawPolygonInProgress(context, view);
    if (this.press && this.press.boxEnd) {
      context.strokeStyle = "#ffffff";
      context.lineWidth = 2;
      context.setLineDash([6, 4]);
      const [x1, y1] = this.press.boxEnd;
      context.strokeRect(this.press.x, this.press.y, x1 - this.press.x, y1 - this.press.y);
      context.setLineDash([]);
    }
  }

  drawHandles(context, view) {
    const polygons = this.currentPolygons();
    if (!polygons) return;
    const hovered = this.hoverScreen && nearestVertex(polygons, this.hoverScreen, view.toScreen, HANDLE_PICK_PX);
    context.lineWidth = 1.5;
    context.strokeStyle = "#1d2430";
    polygons.forEach((rings, polygon) =>
      rings.forEach((ring, ringIndex) =>
        ring.forEach(([x, y], vertex) => {
          const [sx, sy] = view.toScreen(x, y);
          const isHovered =
            hovered && hovered.polygon === polygon && hovered.ring === ringIndex && hovered.vertex === vertex;
          const size = isHovered ? HANDLE_SIZE_PX + 4 : HANDLE_SIZE_PX;
          context.fillStyle = isHovered ? "#ffd54f" : "#ffffff";
          context.fillRect(sx - size / 2, sy - size / 2, size, size);
          context.strokeRect(sx - size / 2, sy - size / 2, size, size);
        }),
      ),
    );
  }

  drawPolygonInProgress(context, view) {
    if (this.drawnVertices.length === 0) return;
    const points = this.drawnVertices.map(([x, y]) => view.toScreen(x, y));
    if (this.hoverScreen) points.push(this.hoverScreen);
    context.strokeStyle = "#ffffff";
    context.lineWidth = 2;
    context.beginPath();
    points.forEach(([x, y], i) => (i === 0 ? context.moveTo(x, y) : context.lineTo(x, y)));
    context.stroke();
    context.fillStyle = "#ffffff";
    for (const [x, y] of points.slice(0, this.drawnVertices.length)) context.fillRect(x - 3, y - 3, 6, 6);
  }
}
