// The slide's websocket: run progress and changed instances, pushed by the server.
//
// The socket is a fast path only. The server's channel layer drops messages past its
// capacity, and nothing arrives while the socket is closed, so every listener of
// `onConnect` reloads its state from the REST API when the socket (re)opens.
import { api } from "./api.js";

const RECONNECT_DELAY_MS = 2000;

export class SlideEvents {
  constructor(slideId) {
    this.slideId = slideId;
    this.handlers = new Map(); // message type -> [handler]
    this.connectHandlers = [];
    this.connected = false;
    this.connect();
  }

  // Call handler(message) for every message of this type, e.g. "instance.changed".
  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(handler);
  }

  // Call handler() after every (re)connection, the moment to resynchronise from the API.
  onConnect(handler) {
    this.connectHandlers.push(handler);
  }

  connect() {
    const socket = new WebSocket(api.eventsSocketUrl(this.slideId));
    socket.addEventListener("open", () => {
      this.connected = true;
      for (const handler of this.connectHandlers) handler();
    });
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      for (const handler of this.handlers.get(message.type) || []) handler(message);
    });
    socket.addEventListener("close", () => {
      this.connected = false;
      setTimeout(() => this.connect(), RECONNECT_DELAY_MS);
    });
  }
}
