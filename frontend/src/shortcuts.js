// The keyboard shortcuts of the slide page, declared once: the key handler, the help
// overlay and the action buttons are all built from SHORTCUTS.
//
// Key names are KeyboardEvent.key values, letters in lower case, with "Ctrl+" in front
// when Ctrl or Cmd is held. OpenSeadragon's own keyboard navigation is switched off
// (viewer.js), so these are the only keys the page handles.

export const SHORTCUTS = [
  { command: "next", keys: ["j", "ArrowDown", "ArrowRight"], label: "Next", help: "Next object in the queue" },
  { command: "previous", keys: ["k", "ArrowUp", "ArrowLeft"], label: "Previous", help: "Previous object in the queue" },
  { command: "accept", keys: ["a"], label: "Accept", help: "Accept the current object", needs: "review", button: true },
  { command: "reject", keys: ["x"], label: "Reject", help: "Reject the current object", needs: "review", button: true },
  {
    command: "relabel",
    keys: ["1", "2", "3", "4", "5", "6", "7", "8", "9"],
    label: "Class",
    help: "Relabel the current object with the class of that key (in draw and SAM modes: choose the class to draw)",
    needs: "relabel",
  },
  { command: "reopen", keys: ["o"], label: "Reopen", help: "Reopen the current object for review", needs: "review", button: true },
  { command: "undo", keys: ["z", "Ctrl+z"], label: "Undo", help: "Undo your last change on this slide (while drawing: the last vertex)", needs: "review", button: true },
  { command: "edit", keys: ["e"], label: "Edit", help: "Edit the outline: drag a vertex, double-click an edge to add one, Alt+click to delete one", needs: "review", button: true },
  { command: "draw", keys: ["d"], label: "Draw", help: "Draw a polygon: click the vertices, double-click or Enter to finish", needs: "review", button: true },
  { command: "samPoint", keys: ["s"], label: "SAM click", help: "SAM click: click an object and SAM outlines it", needs: "review", button: true },
  { command: "samBox", keys: ["b"], label: "SAM box", help: "SAM box: drag a box around an object and SAM outlines it", needs: "review", button: true },
  { command: "finish", keys: ["Enter"], label: "Finish", help: "Finish the polygon being drawn" },
  { command: "cancel", keys: ["Escape"], label: "Cancel", help: "Leave the current mode (discards a polygon being drawn)" },
  { command: "delete", keys: ["Delete"], label: "Delete", help: "Delete the current object (undo brings it back)", needs: "delete", button: true },
  { command: "toggleOverlay", keys: ["h"], label: "Hide", help: "Hide or show the polygons" },
  { command: "markRegion", keys: ["r"], label: "Mark reviewed", help: "Mark the visible area as fully reviewed (an evaluation region)", needs: "markRegion", button: true },
  { command: "zoomIn", keys: ["+", "="], label: "Zoom in", help: "Zoom in" },
  { command: "zoomOut", keys: ["-"], label: "Zoom out", help: "Zoom out" },
  { command: "home", keys: ["0"], label: "Whole slide", help: "Show the whole slide" },
  { command: "help", keys: ["?"], label: "Help", help: "Show or hide this list", button: true },
];

const KEY_LABELS = {
  ArrowDown: "↓",
  ArrowUp: "↑",
  ArrowLeft: "←",
  ArrowRight: "→",
  Escape: "Esc",
  "Ctrl+z": "Ctrl+Z",
};

// The name of a key press in the notation of SHORTCUTS.
export function keyName(event) {
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  return event.ctrlKey || event.metaKey ? `Ctrl+${key}` : key;
}

function isTyping(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName));
}

// Route key presses to dispatch(command, key). Keys of commands the user's role lacks
// (allowed[needs] false) go to onRefused(shortcut). Returns the shortcut lookup table.
export function installShortcuts(dispatch, allowed, onRefused) {
  const byKey = new Map();
  for (const shortcut of SHORTCUTS) {
    for (const key of shortcut.keys) byKey.set(key, shortcut);
  }
  // The capture phase on window runs before OpenSeadragon's listeners on its canvas.
  window.addEventListener(
    "keydown",
    (event) => {
      if (isTyping(event.target) || event.altKey) return;
      const key = keyName(event);
      const shortcut = byKey.get(key);
      if (!shortcut) return;
      event.preventDefault();
      event.stopPropagation();
      if (shortcut.needs && !allowed[shortcut.needs]) {
        onRefused(shortcut);
        return;
      }
      dispatch(shortcut.command, key);
    },
    { capture: true },
  );
  return byKey;
}

// Fill a <dialog> with the table of shortcuts.
export function renderShortcutHelp(dialog, allowed) {
  const table = document.createElement("table");
  for (const shortcut of SHORTCUTS) {
    const row = document.createElement("tr");
    if (shortcut.needs && !allowed[shortcut.needs]) row.classList.add("not-allowed");
    const keys = document.createElement("td");
    const keyLabels = shortcut.command === "relabel" ? ["1", "…", "9"] : shortcut.keys.map((k) => KEY_LABELS[k] || k);
    for (const label of keyLabels) {
      const kbd = document.createElement("kbd");
      kbd.textContent = label;
      keys.append(kbd, " ");
    }
    const help = document.createElement("td");
    help.textContent = shortcut.help + (shortcut.needs && !allowed[shortcut.needs] ? ". Not allowed for your role." : "");
    row.append(keys, help);
    table.append(row);
  }
  const title = document.createElement("h3");
  title.textContent = "Keyboard shortcuts";
  const close = document.createElement("p");
  close.className = "note";
  close.textContent = "Press ? or Esc to close.";
  dialog.replaceChildren(title, table, close);
}

// The first key of a command, as shown on buttons, e.g. "a" for accept.
export function primaryKeyLabel(shortcut) {
  const key = shortcut.keys[0];
  return KEY_LABELS[key] || key;
}
