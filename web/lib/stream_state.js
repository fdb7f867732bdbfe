// Pure logic of the Stream-R1 web extension: the per-node state of a running stream, driven by ComfyUI's
// websocket events, plus FPS averaging and the text shown on the node. No DOM and no ComfyUI imports, so it
// runs (and is tested) under plain Node: `node --test web/tests/`.
//
// Events (what stream_r1.js feeds in):
//   {type: "start"}                                   the node began executing
//   {type: "preview", url}                            a progress preview image of the node (an object URL)
//   {type: "chunk", data}                             the "stream_r1.chunk" payload: node, chunk, chunks_done,
//                                                      chunks, frames, latent_frames, fps, seconds
//   {type: "done"}                                    the node finished (the graph moved on, or success)
//   {type: "error", message, exceptionType, nodeType} execution_error on this node
//   {type: "interrupted"}                             the user pressed Cancel
//   {type: "reset"}

export const STREAM_NODE_TYPES = Object.freeze(["StreamR1Generate", "StreamR1Continue", "StreamR1GenerateToFile"]);
export const VIDEO_FPS = 16;        // Wan2.1's native rate: what the streamed frames play at
export const MAX_THUMBS = 6;        // chunk thumbnails kept on the node (older object URLs are released)
export const FPS_WINDOW = 4;        // chunks in the "now" FPS average
export const MAX_ERROR_CHARS = 400;

export function initialState() {
  return Object.freeze({
    status: "idle",           // idle | running | done | error | interrupted
    chunk: null,              // index of the newest chunk in the stream (continues across Continue nodes)
    chunksDone: 0,            // chunks computed in this run
    chunks: 0,                // chunks this run will compute
    frames: 0,                // video frames produced in this run
    seconds: 0,               // seconds since the run's first chunk started (server clock)
    fps: 0,                   // end-to-end video frames per second of this run (server's figure)
    samples: Object.freeze([]),   // [{frames, seconds}] per chunk, newest last (for the windowed FPS)
    latest: null,             // object URL of the newest preview
    pending: null,            // a preview that arrived before its chunk event
    thumbs: Object.freeze([]),    // [{chunk, url}] newest last, at most MAX_THUMBS
    error: null,              // {message, exceptionType, nodeType}
  });
}

function freeze(state) {
  return Object.freeze({ ...state, samples: Object.freeze(state.samples), thumbs: Object.freeze(state.thumbs) });
}

/** state, event -> new state. Never mutates its arguments; unknown events return the state unchanged. */
export function reduce(state, event) {
  const s = state ?? initialState();
  switch (event?.type) {
    case "reset":
      return initialState();
    case "start":
      return freeze({ ...initialState(), status: "running" });
    case "preview": {
      if (!event.url) return s;
      return freeze({ ...s, latest: event.url, pending: event.url });
    }
    case "chunk": {
      const d = event.data ?? {};
      const frames = num(d.frames, s.frames);
      const seconds = num(d.seconds, s.seconds);
      const samples = [...s.samples, { frames, seconds }].slice(-(FPS_WINDOW + 1));
      let thumbs = s.thumbs;
      if (s.pending) thumbs = [...thumbs, { chunk: num(d.chunk, s.chunksDone), url: s.pending }].slice(-MAX_THUMBS);
      return freeze({
        ...s,
        status: "running",
        chunk: num(d.chunk, s.chunk),
        chunksDone: num(d.chunks_done, s.chunksDone + 1),
        chunks: num(d.chunks, s.chunks),
        frames,
        seconds,
        fps: num(d.fps, seconds > 0 ? frames / seconds : 0),
        samples,
        thumbs,
        pending: null,
        error: null,
      });
    }
    case "done":
      return s.status === "running" ? freeze({ ...s, status: "done" }) : s;
    case "interrupted":
      return s.status === "running" ? freeze({ ...s, status: "interrupted" }) : s;
    case "error":
      return freeze({
        ...s,
        status: "error",
        error: {
          message: String(event.message ?? "unknown error"),
          exceptionType: event.exceptionType ?? null,
          nodeType: event.nodeType ?? null,
        },
      });
    default:
      return s;
  }
}

function num(value, fallback) {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

/** Object URLs held by `prev` and no longer by `next` (the caller revokes them). */
export function droppedUrls(prev, next) {
  const keep = new Set([next.latest, next.pending, ...next.thumbs.map((t) => t.url)]);
  const old = new Set([prev.latest, prev.pending, ...prev.thumbs.map((t) => t.url)]);
  return [...old].filter((url) => url && !keep.has(url));
}

/** Video frames per second over the last `n` chunks of `samples` ([{frames, seconds}], cumulative figures);
 *  null until two samples exist or when no time passed. */
export function windowFps(samples, n = FPS_WINDOW) {
  if (!samples || samples.length < 2) return null;
  const tail = samples.slice(-(n + 1));
  const first = tail[0];
  const last = tail[tail.length - 1];
  const dt = last.seconds - first.seconds;
  return dt > 0 ? (last.frames - first.frames) / dt : null;
}

/** Seconds left, from the mean time per chunk so far; null when unknown. */
export function etaSeconds(state) {
  if (!state.chunksDone || !state.chunks || state.seconds <= 0) return null;
  return Math.max(0, (state.seconds / state.chunksDone) * (state.chunks - state.chunksDone));
}

/** 42 -> "0:42", 3725 -> "1:02:05". */
export function formatDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  const total = Math.max(0, Math.round(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

export function formatFps(fps) {
  return fps == null || !Number.isFinite(fps) ? "–" : fps >= 100 ? fps.toFixed(0) : fps.toFixed(1);
}

/** The status line shown on the node (the error itself goes to its own box: formatError). */
export function formatStatus(state) {
  const s = state ?? initialState();
  const video = `${s.frames} frames (${(s.frames / VIDEO_FPS).toFixed(1)} s)`;
  switch (s.status) {
    case "idle":
      return "";
    case "running": {
      if (!s.chunksDone) return "starting: loading the model, first chunk…";
      const now = windowFps(s.samples);
      const parts = [`chunk ${s.chunksDone}/${s.chunks}`, video, `${formatFps(s.fps)} fps`];
      if (now != null) parts.push(`now ${formatFps(now)} fps`);
      if (s.chunksDone < s.chunks) parts.push(`ETA ${formatDuration(etaSeconds(s))}`);
      return parts.join(" · ");
    }
    case "done":
      return `done: ${s.chunksDone} chunk${s.chunksDone === 1 ? "" : "s"} · ${video} in ` +
        `${formatDuration(s.seconds)} · ${formatFps(s.fps)} fps`;
    case "interrupted":
      return `cancelled after chunk ${s.chunksDone}/${s.chunks} · ${video}`;
    case "error":
      return s.chunksDone ? `failed after chunk ${s.chunksDone}/${s.chunks} · ${video}` : "failed before the first chunk";
    default:
      return "";
  }
}

/** "error: ValueError: resolution 100x100 is not a multiple of 16 ..." on one block, capped in length. */
export function formatError(error) {
  if (!error) return "";
  const message = String(error.message ?? "").trim().replace(/\s+\n/g, "\n");
  const head = error.exceptionType && !message.startsWith(error.exceptionType) ? `${error.exceptionType}: ` : "";
  const text = `error: ${head}${message}`;
  return text.length > MAX_ERROR_CHARS ? `${text.slice(0, MAX_ERROR_CHARS - 1)}…` : text;
}

/** Fraction 0..1 of this run's chunks done (for a progress bar). */
export function progress(state) {
  return state.chunks ? Math.min(1, state.chunksDone / state.chunks) : 0;
}

// ---- live playback and steering (the "stream_r1.live" event and the /stream_r1/live/{node}/... routes) -----------
export const LIVE_EVENT = "stream_r1.live";
export const STEER_TRANSITIONS = Object.freeze(["recache", "flush", "none"]);   // the first is the default

/** "/stream_r1/live/5/prompt" (for api.fetchApi, which adds the /api prefix). */
export function liveRoute(node, action = "") {
  const path = `/stream_r1/live/${encodeURIComponent(String(node))}`;
  return action ? `${path}/${action}` : path;
}

/** The line shown under the steering row when the server refused a request: "409: <its error>" (HTTP status and
 * the JSON body's `error`, else the status text), capped like the error box. */
export function steerErrorText(status, body, statusText = "") {
  const reason = typeof body?.error === "string" && body.error.trim() ? body.error.trim()
    : statusText || (status ? "request failed" : "no answer from the server");
  const text = status ? `${status}: ${reason}` : reason;
  return text.length > MAX_ERROR_CHARS ? `${text.slice(0, MAX_ERROR_CHARS - 1)}…` : text;
}

/** What the panel says after the server took a prompt: "next prompt from chunk 12 (recache)". */
export function steerQueuedText(reply, transition) {
  const at = Number.isInteger(reply?.at_chunk) ? `from chunk ${reply.at_chunk}` : "at the next chunk";
  return `next prompt ${at} (${transition})`;
}
