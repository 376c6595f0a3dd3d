// The one module that talks to the server: REST endpoints and tile URLs.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function errorFrom(response) {
  let detail = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
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
  return new ApiError(detail, response.status);
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

export const api = {
  tileMetadata: (slideId) => getJSON(`/api/slides/${slideId}/tiles/`),
  tileUrl: (slideId, z, x, y) => `/api/slides/${slideId}/tiles/${z}/${x}/${y}.jpg`,
  instances: (slideId, bboxLevel0, limit = 5000) =>
    getJSON(`/api/slides/${slideId}/instances/?bbox=${bboxLevel0.map((v) => Math.round(v)).join(",")}&limit=${limit}`),
  proposalRuns: (slideId) => getJSON(`/api/slides/${slideId}/proposal-runs/`),
  startProposalRun: (slideId, body = {}) => postJSON(`/api/slides/${slideId}/proposal-runs/`, body),
  eventsSocketUrl: (slideId) => {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${window.location.host}/ws/slides/${slideId}/events/`;
  },
};
