// Annotation import on the slide page. The panel uploads a file. When the server reports
// class names it does not know, the panel shows one choice per name and sends the file
// again with the mapping. The server decides which names are known.
import { importAnnotations } from "./api.js";

export class ImportPanel {
  constructor(root, slideId, classes, { onImported }) {
    this.root = root;
    this.slideId = slideId;
    this.classes = classes;
    this.onImported = onImported;
    this.form = root.querySelector("#import-form");
    this.fileInput = root.querySelector("#import-file");
    this.mappingBox = root.querySelector("#import-mapping");
    this.message = root.querySelector("#import-message");
    this.report = root.querySelector("#import-report");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.fileInput.addEventListener("change", () => this.mappingBox.replaceChildren());
  }

  currentMapping() {
    const mapping = {};
    for (const select of this.mappingBox.querySelectorAll("select")) {
      mapping[select.dataset.sourceClass] = select.value;
    }
    return mapping;
  }

  async submit() {
    const file = this.fileInput.files[0];
    if (!file) {
      this.message.textContent = "Choose an annotation file first.";
      return;
    }
    this.message.textContent = `Importing ${file.name}…`;
    this.report.replaceChildren();
    try {
      const report = await importAnnotations(this.slideId, file, this.currentMapping());
      this.showReport(report);
      this.mappingBox.replaceChildren();
      this.onImported(report);
    } catch (error) {
      this.message.textContent = error.message;
      if (error.body && error.body.unknown_classes) this.askMapping(error.body.unknown_classes);
    }
  }

  askMapping(unknownClasses) {
    this.mappingBox.replaceChildren();
    const intro = document.createElement("p");
    intro.textContent = "Choose a class for each name, or leave its objects out, then import again.";
    this.mappingBox.append(intro);
    for (const [name, count] of Object.entries(unknownClasses)) {
      const label = document.createElement("label");
      label.textContent = `${name} (${count}) → `;
      const select = document.createElement("select");
      select.dataset.sourceClass = name;
      const leaveOut = new Option("leave out", "");
      select.append(leaveOut, ...this.classes.map((c) => new Option(c.name, c.name)));
      label.append(select);
      this.mappingBox.append(label);
    }
  }

  showReport(report) {
    const noun = report.created === 1 ? "object" : "objects";
    this.message.textContent = `Imported ${report.created} ${noun} from ${report.source}.`;
    const lines = [
      ...Object.entries(report.created_per_class).map(([name, n]) => `${name}: ${n}`),
      ...Object.entries(report.left_out_by_mapping).map(([name, n]) => `left out (${name}): ${n}`),
      ...report.skipped.map((s) => `not imported: object ${s.index}: ${s.reason}`),
    ];
    if (report.clipped) lines.push(`clipped to the slide: ${report.clipped}`);
    if (report.repaired) lines.push(`repaired outlines: ${report.repaired}`);
    if (report.approximated_splines) lines.push(`splines stored as polygons: ${report.approximated_splines}`);
    for (const line of lines) {
      const item = document.createElement("li");
      item.textContent = line;
      this.report.append(item);
    }
  }
}
