// Keyboard-first review of one slide: the current object, the commands of the shortcut
// table, and applying what the server returns.
//
// The server decides every transition. The browser sends the action with the version
// the user saw and shows the feature that comes back. After a version conflict (409) it
// shows the server's message and replaces its copy with the server's current one.
// Changes run one after another, so a quick "a a a" accepts three objects in turn.
import { api } from "./api.js";
import { ClassPalette } from "./class_palette.js";
import { Editor } from "./editor.js";
import { bboxOfGeometry } from "./overlay.js";
import { ReviewPanel } from "./review_panel.js";
import { ReviewQueue } from "./review_queue.js";
import { SHORTCUTS, installShortcuts, primaryKeyLabel, renderShortcutHelp } from "./shortcuts.js";

// A jump frames the object so that it spans about a quarter of the view's shorter side,
// which leaves the tissue around it in sight.
const JUMP_VIEW_FACTOR = 4;
const MIN_JUMP_SIDE_PX = 64; // level-0 pixels
const PROGRESS_RELOAD_DELAY_MS = 500;
const DRAWING_MODES = ["draw", "sam-point", "sam-box"];

const PAST_TENSE = { accept: "Accepted", reject: "Rejected", reopen: "Reopened", relabel: "Relabelled" };

export class ReviewSession {
  constructor({ root, slideId, viewer, metadata, overlay, events, overlayToggle, classes }) {
    this.root = root;
    this.slideId = slideId;
    this.viewer = viewer;
    this.metadata = metadata;
    this.overlay = overlay;
    this.overlayToggle = overlayToggle;
    this.username = root.dataset.username || "";
    this.allowed = {
      review: root.dataset.canReview === "1",
      relabel: root.dataset.canRelabel === "1",
      delete: root.dataset.canDelete === "1",
      markRegion: root.dataset.canMarkRegion === "1",
    };
    this.current = null;
    this.cursor = 0; // queue index of the current object, or of the one after it once it left
    this.work = Promise.resolve();
    this.progressTimer = null;
    this.regions = [];
    this.connectedBefore = false;
    this.startedQueue = false; // whether the first queue load has selected an object

    overlay.setClassColours(classes);
    const colourOf = (className) => overlay.colourOf(className);
    this.panel = new ReviewPanel(root, { colourOf });
    this.palette = new ClassPalette(root.querySelector("#class-palette"), classes, (key) => this.commands.relabel(key));
    this.queue = new ReviewQueue(root.querySelector("#review-queue"), root.querySelector("#queue-summary"), slideId, {
      onPick: (feature) => this.select(feature),
      onReloaded: () => this.afterQueueReload(),
      colourOf,
    });
    this.editor = new Editor(viewer, overlay, this.editorActions());
    this.commands = this.buildCommands();
    this.help = root.querySelector("#shortcut-help");
    renderShortcutHelp(this.help, this.allowed);
    installShortcuts(
      (command, key) => this.dispatch(command, key),
      this.allowed,
      (shortcut) => this.showError(`Your role does not allow this: ${shortcut.help.toLowerCase()}.`),
    );
    this.renderButtons(root.querySelector("#review-actions"));
    this.editor.setMode("review");

    const order = root.querySelector("#queue-order");
    order.addEventListener("change", () => {
      order.blur();
      this.queue.setOrder(order.value);
    });
    events.on("instance.changed", (message) => this.applyChange(message.instance));
    events.onConnect(() => {
      if (this.connectedBefore) this.resync();
      this.connectedBefore = true;
    });
  }

  async start() {
    this.panel.showCurrent(null);
    this.loadRegions();
    this.reloadProgress();
    await this.queue.reload();
  }

  // ---- commands of the shortcut table -------------------------------------------------

  dispatch(command, key) {
    if (this.help.open && !["help", "cancel"].includes(command)) return;
    this.commands[command](key);
  }

  buildCommands() {
    return {
      next: () => this.step(+1),
      previous: () => this.step(-1),
      accept: () => this.change("accept"),
      reject: () => this.change("reject"),
      reopen: () => this.change("reopen", {}, { advance: false }),
      relabel: (key) => this.relabel(key),
      undo: () => this.undo(),
      edit: () => this.toggleMode("edit"),
      draw: () => this.toggleMode("draw"),
      samPoint: () => this.toggleMode("sam-point"),
      samBox: () => this.toggleMode("sam-box"),
      finish: () => {
        if (this.editor.mode === "draw") this.editor.finishDrawing();
      },
      cancel: () => {
        if (this.help.open) this.help.close();
        else this.editor.setMode("review");
      },
      delete: () => this.deleteCurrent(),
      toggleOverlay: () => {
        this.overlayToggle.checked = !this.overlayToggle.checked;
        this.overlay.setVisible(this.overlayToggle.checked);
      },
      markRegion: () => this.markRegion(),
      zoomIn: () => this.viewer.viewport.zoomBy(1.5).applyConstraints(),
      zoomOut: () => this.viewer.viewport.zoomBy(1 / 1.5).applyConstraints(),
      home: () => this.viewer.viewport.goHome(),
      help: () => (this.help.open ? this.help.close() : this.help.showModal()),
    };
  }

  renderButtons(container) {
    for (const shortcut of SHORTCUTS) {
      if (!shortcut.button || (shortcut.needs && !this.allowed[shortcut.needs])) continue;
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.command = shortcut.command;
      button.title = shortcut.help;
      const key = document.createElement("kbd");
      key.textContent = primaryKeyLabel(shortcut);
      button.append(`${shortcut.label} `, key);
      button.addEventListener("click", () => {
        button.blur(); // keys must not re-press a focused button
        this.dispatch(shortcut.command, shortcut.keys[0]);
      });
      container.append(button);
    }
  }

  toggleMode(mode) {
    const next = this.editor.mode === mode ? "review" : mode;
    if (next === "edit" && !this.current) {
      this.showError("Select an object first: click it, or press j for the next one in the queue.");
      return;
    }
    this.editor.setMode(next);
  }

  // ---- the current object --------------------------------------------------------------

  select(feature, { jump = true } = {}) {
    this.current = feature;
    const index = feature ? this.queue.indexOf(feature.id) : -1;
    if (index >= 0) this.cursor = index;
    this.queue.setCurrent(feature ? feature.id : null);
    this.panel.showCurrent(feature);
    this.overlay.setCurrent(this.editor.displayed(feature));
    if (feature && jump) this.jumpTo(feature);
  }

  step(direction) {
    const index = this.current ? this.queue.indexOf(this.current.id) : -1;
    let target;
    if (index >= 0) target = index + direction;
    else target = direction > 0 ? this.cursor : this.cursor - 1;
    if (this.queue.length === 0) {
      this.showInfo("The queue is empty: no pending objects on this slide.");
      return;
    }
    if (target < 0 || target >= this.queue.length) {
      this.showInfo(direction > 0 ? "This is the last object in the queue." : "This is the first object in the queue.");
      return;
    }
    this.showInfo("");
    this.select(this.queue.at(target));
  }

  // Select the queue's object at the cursor, which is the one after the object that left.
  advance() {
    if (this.queue.length === 0) {
      this.select(null);
      this.showInfo("The queue is empty: every object on this slide has been reviewed.");
      return;
    }
    this.select(this.queue.at(Math.min(this.cursor, this.queue.length - 1)));
  }

  jumpTo(feature) {
    const viewport = this.viewer.viewport;
    const go = () => {
      const [x0, y0, x1, y1] = bboxOfGeometry(feature.geometry);
      const side = Math.max(x1 - x0, y1 - y0, MIN_JUMP_SIDE_PX) * JUMP_VIEW_FACTOR;
      const rect = viewport.imageToViewportRectangle((x0 + x1) / 2 - side / 2, (y0 + y1) / 2 - side / 2, side, side);
      viewport.fitBoundsWithConstraints(rect);
    };
    if (this.viewer.world.getItemCount() > 0) go();
    else this.viewer.addOnceHandler("open", go);
  }

  afterQueueReload() {
    if (this.current) {
      const index = this.queue.indexOf(this.current.id);
      if (index >= 0) this.cursor = index;
    } else if (this.queue.length > 0) {
      // The first load, or proposals arrived on a slide whose queue was empty.
      if (this.startedQueue) this.showInfo("");
      this.startedQueue = true;
      this.select(this.queue.at(0));
    } else if (this.queue.length === 0 && !this.startedQueue) {
      this.startedQueue = true;
      this.showInfo("No pending objects on this slide. Run SAM proposals, segment with a trained model, or draw with d, s or b.");
    }
  }

  // ---- applying server responses and pushed changes ------------------------------------

  applyFeature(feature) {
    this.overlay.apply(feature);
    this.queue.apply(feature);
    if (this.current && this.current.id === feature.id) {
      this.current = feature;
      this.panel.showCurrent(feature);
      this.overlay.setCurrent(this.editor.displayed(feature));
    }
    this.scheduleProgressReload();
  }

  removeFeature(id) {
    this.overlay.remove(id);
    this.queue.remove(id);
    if (this.current && this.current.id === id) this.advance();
    this.scheduleProgressReload();
  }

  // A websocket instance.changed message: {id, action, deleted, version, review_state,
  // class_name, geometry, by}. Messages no newer than the local copy are echoes.
  async applyChange(change) {
    this.root.querySelector("#review-panel").dataset.lastChange = `${change.id}:${change.version}`;
    const isCurrent = this.current && this.current.id === change.id;
    const byOther = change.by && change.by !== this.username;
    if (change.deleted) {
      if (isCurrent && byOther) this.showInfo(`Object ${change.id} was deleted by ${change.by}.`);
      this.removeFeature(change.id);
      return;
    }
    const local = (isCurrent && this.current) || this.overlay.get(change.id) || this.queue.at(this.queue.indexOf(change.id));
    if (local && local.properties.version >= change.version) return;
    let feature;
    if (local) {
      feature = {
        id: change.id,
        geometry: change.geometry,
        properties: { ...local.properties, version: change.version, review_state: change.review_state, class_name: change.class_name },
      };
    } else {
      try {
        feature = await api.instance(change.id);
      } catch (error) {
        return; // deleted meanwhile, which the next resync also shows
      }
    }
    this.applyFeature(feature);
    if (isCurrent && byOther) {
      this.showInfo(`Object ${change.id} was changed by ${change.by}: now ${change.review_state}, version ${change.version}.`);
    }
  }

  // After a reconnect: the socket may have missed changes, so reload from the API.
  async resync() {
    this.overlay.fetch();
    this.queue.reload();
    this.reloadProgress();
    this.loadRegions();
    if (!this.current) return;
    try {
      this.applyFeature(await api.instance(this.current.id));
    } catch (error) {
      if (error.status === 404) this.removeFeature(this.current.id);
    }
  }

  // Run server changes one after another, each seeing the result of the one before.
  enqueue(task) {
    const result = this.work.then(task);
    this.work = result.catch(() => undefined);
    return result;
  }

  change(action, extra = {}, { advance = true } = {}) {
    return this.enqueue(async () => {
      const feature = this.current;
      if (!feature) {
        this.showError("No object selected: press j for the next one in the queue, or click an object.");
        return;
      }
      const indexBefore = this.queue.indexOf(feature.id);
      try {
        const updated = await api.changeInstance(feature.id, action, { version: feature.properties.version, ...extra });
        this.applyFeature(updated);
        const label = updated.properties.class_name || "no class";
        this.showInfo(`${PAST_TENSE[action]} #${updated.id} (${label}, ${updated.properties.review_state}).`);
        if (advance && this.current && this.current.id === updated.id) {
          // Still queued: go past it. Left the queue: the next object slid into its place.
          const indexAfter = this.queue.indexOf(updated.id);
          if (indexAfter >= 0) this.cursor = indexAfter + 1;
          else if (indexBefore >= 0) this.cursor = indexBefore;
          this.advance();
        }
      } catch (error) {
        this.showServerError(error);
      }
    });
  }

  relabel(key) {
    const instanceClass = this.palette.byKey(key);
    if (!instanceClass) {
      this.showError(`No class has the key ${key}.`);
      return;
    }
    this.palette.select(instanceClass.name);
    this.panel.showMode(this.editor.mode, instanceClass.name);
    if (DRAWING_MODES.includes(this.editor.mode) || !this.current) {
      this.showInfo(`New objects get the class ${instanceClass.name}.`);
      return;
    }
    this.change("relabel", { class_name: instanceClass.name });
  }

  undo() {
    if (this.editor.mode === "draw" && this.editor.drawnVertices.length > 0) {
      this.editor.removeLastDrawnVertex();
      return;
    }
    this.enqueue(async () => {
      try {
        const result = await api.undo(this.slideId);
        const undone = result.undone;
        if (result.instance) {
          this.applyFeature(result.instance);
          this.select(result.instance);
        } else if (result.deleted_id !== null) {
          this.removeFeature(result.deleted_id);
        }
        this.queue.scheduleReload();
        this.showInfo(`Undid the ${undone.action} of object ${undone.instance_ref}.`);
      } catch (error) {
        this.showServerError(error);
      }
    });
  }

  deleteCurrent() {
    this.enqueue(async () => {
      const feature = this.current;
      if (!feature) {
        this.showError("No object selected to delete.");
        return;
      }
      try {
        await api.deleteInstance(feature.id, feature.properties.version);
        const index = this.queue.indexOf(feature.id);
        if (index >= 0) this.cursor = index;
        this.removeFeature(feature.id);
        this.showInfo(`Deleted object ${feature.id}; z undoes it.`);
      } catch (error) {
        this.showServerError(error);
      }
    });
  }

  async loadRegions() {
    try {
      this.regions = await api.evaluationRegions(this.slideId);
      this.overlay.setRegions(this.regions);
    } catch (error) {
      this.showServerError(error);
    }
  }

  // Mark the visible part of the slide, clipped to the slide, as fully reviewed.
  markRegion() {
    const [x0, y0, x1, y1] = this.overlay.viewBboxLevel0();
    const left = Math.max(0, Math.round(x0));
    const top = Math.max(0, Math.round(y0));
    const right = Math.min(this.metadata.width_px, Math.round(x1));
    const bottom = Math.min(this.metadata.height_px, Math.round(y1));
    const geometry = {
      type: "Polygon",
      coordinates: [[[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]],
    };
    this.enqueue(async () => {
      try {
        const region = await api.addEvaluationRegion(this.slideId, geometry);
        this.regions.push(region);
        this.overlay.setRegions(this.regions);
        this.showInfo(`Marked ${right - left} × ${bottom - top} px as fully reviewed (region ${region.id}).`);
      } catch (error) {
        this.showServerError(error);
      }
    });
  }

  scheduleProgressReload() {
    clearTimeout(this.progressTimer);
    this.progressTimer = setTimeout(() => this.reloadProgress(), PROGRESS_RELOAD_DELAY_MS);
  }

  async reloadProgress() {
    try {
      this.panel.showProgress(await api.reviewProgress(this.slideId));
    } catch (error) {
      this.showServerError(error);
    }
  }

  // ---- messages --------------------------------------------------------------------------

  showInfo(text) {
    this.panel.showMessage(text);
  }

  showError(text, status = "") {
    this.panel.showMessage(text, { kind: "error", status });
  }

  // Show the server's message as it is. After a version conflict, take the server's copy.
  showServerError(error) {
    if (error.status === 409 && error.body && error.body.current) this.applyFeature(error.body.current);
    this.showError(error.message, error.status ?? "");
  }

  // ---- what the editor may ask for ---------------------------------------------------------

  editorActions() {
    return {
      currentFeature: () => this.current,
      select: (feature) => this.select(feature, { jump: false }),
      message: (text) => this.showError(text),
      modeChanged: (mode) => this.panel.showMode(mode, this.palette.selected),
      saveOutline: (id, geometry, version) =>
        this.enqueue(async () => {
          try {
            const saved = await api.changeInstance(id, "edit", { version, geometry });
            this.applyFeature(saved);
            this.showInfo(`Saved the outline of #${id} (version ${saved.properties.version}).`);
            return saved;
          } catch (error) {
            this.showServerError(error);
            return null;
          }
        }),
      saveOutlineOnUnload: (id, geometry, version) => api.saveOutlineOnUnload(id, version, geometry),
      drawPolygon: (geometry) =>
        this.enqueue(async () => {
          try {
            const drawn = await api.draw(this.slideId, geometry, this.palette.selected);
            this.applyFeature(drawn);
            this.select(drawn, { jump: false });
            this.showInfo(`Drew #${drawn.id} (${drawn.properties.class_name}).`);
            return true;
          } catch (error) {
            this.showServerError(error);
            return false;
          }
        }),
      promptSam: (prompt) =>
        this.enqueue(async () => {
          this.showInfo("SAM is outlining the object…");
          try {
            const drawn = await api.promptSam(this.slideId, prompt, this.palette.selected);
            this.applyFeature(drawn);
            this.select(drawn, { jump: false });
            this.showInfo(`SAM drew #${drawn.id} (${drawn.properties.class_name}).`);
          } catch (error) {
            if (error.status === 404 && !(error.body && error.body.detail)) {
              this.showError("This server has no SAM prompt endpoint (POST /prompt/ returned 404).", 404);
            } else {
              this.showServerError(error);
            }
          }
        }),
    };
  }
}
