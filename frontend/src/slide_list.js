// Slide list page: upload form with progress and the server's message on refusal.
import { uploadSlide } from "./api.js";

export function initSlideList(root) {
  const form = root.querySelector("#upload-form");
  if (!form) return;
  const progress = form.querySelector("progress");
  const message = form.querySelector(".form-message");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    for (const [key, value] of [...data.entries()]) {
      if (value === "") data.delete(key);
    }
    message.textContent = "Uploading…";
    progress.hidden = false;
    try {
      const slide = await uploadSlide(data, (fraction) => (progress.value = fraction));
      message.textContent = `Imported slide ${slide.id}.`;
      window.location.assign(`/slides/${slide.id}/`);
    } catch (error) {
      message.textContent = `Upload refused: ${error.message}`;
    } finally {
      progress.hidden = true;
    }
  });
}
