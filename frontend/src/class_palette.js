// The class palette: each configured class with its key and colour.
//
// The selected class is the one new polygons and SAM prompts get. Clicking a class does
// what pressing its key does.

export class ClassPalette {
  constructor(root, classes, onPick) {
    this.root = root;
    this.classes = classes;
    this.selected = classes.length > 0 ? classes[0].name : "";
    this.buttons = new Map();
    root.replaceChildren();
    for (const instanceClass of classes) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "class-choice";
      button.dataset.classKey = instanceClass.key;
      button.dataset.className = instanceClass.name;
      button.title = instanceClass.trainable ? instanceClass.name : `${instanceClass.name} (not used for training)`;
      const key = document.createElement("kbd");
      key.textContent = instanceClass.key;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = instanceClass.color;
      const name = document.createElement("span");
      name.textContent = instanceClass.name;
      button.append(key, swatch, name);
      button.addEventListener("click", () => onPick(instanceClass.key));
      root.append(button);
      this.buttons.set(instanceClass.name, button);
    }
    this.render();
  }

  byKey(key) {
    return this.classes.find((c) => c.key === key) || null;
  }

  select(name) {
    this.selected = name;
    this.render();
  }

  render() {
    for (const [name, button] of this.buttons) {
      button.setAttribute("aria-pressed", String(name === this.selected));
    }
  }
}
