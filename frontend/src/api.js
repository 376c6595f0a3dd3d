// The one module that talks to the server: REST endpoints and tile URLs.

export class ApiError extends Error {
  // `body` is the parsed JSON error body, e.g. {detail, current} after a version conflict.
  constructor(message, status, body = null) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function errorFrom(response) {
  let detail = `${response.status} ${response.statusText}`;
  let body = null;
  try {
    body = await response.json();
    if (body.detail) {
      detail = body.detail;
    } else if (typeof body === "object") {
      detail = Object.entries(body)
        .map(([field, problems]) => `${field}: ${[].concat(problems).join(" ")}`)
        .join("; ");
    }
  } catch {
    // The body was not JSON; the status line is the message.
  }
  return new ApiError(detail, response.status, body);
}

export async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

export async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

export async function deleteJSON(url) {
  const response = await fetch(url, {
    method: "DELETE",
    credentials: "same-origin",
    headers: { "X-CSRFToken": csrfToken() },
  });
  if (!response.ok) throw await errorFrom(response);
  return response.status === 204 ? null : response.json();
}

// Upload a slide with progress: XMLHttpRequest reports upload progress, fetch does not.
export function uploadSlide(formData, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", "/api/slides/");
    request.setRequestHeader("X-CSRFToken", csrfToken());
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    request.onload = () => {
      let body = {};
      try {
        body = JSON.parse(request.responseText);
      } catch {
        body = { detail: `${request.status} ${request.statusText}` };
      }
      if (request.status >= 200 && request.status < 300) resolve(body);
      else reject(new ApiError(body.detail || JSON.stringify(body), request.status));
    };
    request.onerror = () => reject(new ApiError("The upload failed: network error.", 0));
    request.send(formData);
  });
}

// Upload an annotation file; `mapping` maps the file's class names to classes ("" leaves them out).
export async function importAnnotations(slideId, file, mapping) {
  const form = new FormData();
  form.append("file", file);
  form.append("mapping", JSON.stringify(mapping));
  const response = await fetch(`/api/slides/${slideId}/annotation-imports/`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-CSRFToken": csrfToken() },
    body: form,
  });
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

export const api = {
  tileMetadata: (slideId) => getJSON(`/api/slides/${slideId}/tiles/`),
  tileUrl: (slideId, z, x, y) => `/api/slides/${slideId}/tiles/${z}/${x}/${y}.jpg`,
  instances: (slideId, bboxLevel0, limit = 5000) =>
    getJSON(`/api/slides/${slideId}/instances/?bbox=${bboxLevel0.map((v) => Math.round(v)).join(",")}&limit=${limit}`),
  proposalRuns: (slideId) => getJSON(`/api/slides/${slideId}/proposal-runs/`),
  startProposalRun: (slideId, body = {}) => postJSON(`/api/slides/${slideId}/proposal-runs/`, body),
  // Trained model versions that can segment a slide, newest first.
  segmentationModels: () => getJSON("/api/segmentation-models/"),
  startSegmentationRun: (slideId, modelVersionId) =>
    postJSON(`/api/slides/${slideId}/proposal-runs/`, { model_version: modelVersionId }),
  // A queued run comes back cancelled; a running one with cancel_requested until its worker stops.
  cancelProposalRun: (runId) => postJSON(`/api/proposal-runs/${runId}/cancel/`, {}),
  classes: () => getJSON("/api/classes/"),
  instance: (instanceId) => getJSON(`/api/instances/${instanceId}/`),
  // Pending instances of one slide, most uncertain first; `order` null means the server's default.
  reviewQueue: (slideId, order = null, limit = 200) =>
    getJSON(`/api/review/queue/?slide=${slideId}&limit=${limit}${order ? `&order=${order}` : ""}`),
  reviewProgress: (slideId) => getJSON(`/api/slides/${slideId}/review-progress/`),
  // action is accept, reject, reopen, relabel or edit; body carries the version the user saw.
  changeInstance: (instanceId, action, body) => postJSON(`/api/instances/${instanceId}/${action}/`, body),
  deleteInstance: (instanceId, version) => deleteJSON(`/api/instances/${instanceId}/?version=${version}`),
  draw: (slideId, geometry, className) =>
    postJSON(`/api/slides/${slideId}/draw/`, { geometry, class_name: className }),
  undo: (slideId) => postJSON(`/api/slides/${slideId}/undo/`, {}),
  // prompt is {point_level0: [x, y]} or {box_level0: [x0, y0, x1, y1]}.
  promptSam: (slideId, prompt, className) =>
    postJSON(`/api/slides/${slideId}/prompt/`, { ...prompt, class_name: className }),
  // Clinical read-outs of every source, without geometry: reviewed, then model and combined per version.
  readouts: (slideId) => getJSON(`/api/slides/${slideId}/readouts/`),
  // IFTA regions of one source as GeoJSON in level-0 pixels; modelVersionId is null for "reviewed".
  iftaRegions: (slideId, source, modelVersionId) =>
    getJSON(`/api/slides/${slideId}/ifta-regions/?source=${source}${modelVersionId ? `&model_version=${modelVersionId}` : ""}`),
  evaluationRegions: (slideId) => getJSON(`/api/slides/${slideId}/evaluation-regions/`),
  addEvaluationRegion: (slideId, geometry) =>
    postJSON(`/api/slides/${slideId}/evaluation-regions/`, { geometry }),
  // Save an outline while the page unloads: a keepalive request outlives the page, and
  // unlike sendBeacon it can carry the CSRF header. The response is ignored.
  saveOutlineOnUnload: (instanceId, version, geometry) =>
    fetch(`/api/instances/${instanceId}/edit/`, {
      method: "POST",
      credentials: "same-origin",
      keepalive: true,
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify({ version, geometry }),
    }),
  trainingSnapshots: () => getJSON("/api/training/snapshots/"),
  // body is {seed, validation_fraction, parent}; parent is a snapshot id or null.
  createTrainingSnapshot: (body) => postJSON("/api/training/snapshots/", body),
  modelVersions: () => getJSON("/api/training/versions/"),
  modelVersion: (versionId) => getJSON(`/api/training/versions/${versionId}/`),
  // body is {snapshot, name, base_version, checkpoint, config, mpp, crop_px}; config contains
  // TrainingConfig fields, and base_version is a succeeded version's id or null (a SAM checkpoint).
  startModelVersion: (body) => postJSON("/api/training/versions/", body),
  cancelModelVersion: (versionId) => postJSON(`/api/training/versions/${versionId}/cancel/`, {}),
  trainingSocketUrl: () => {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${window.location.host}/ws/training/`;
  },
  eventsSocketUrl: (slideId) => {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${window.location.host}/ws/slides/${slideId}/events/`;
  },
};
