// Stream-R1 web extension (ComfyUI frontend 1.35.x, legacy `app.registerExtension` / `api` surface).
//
// Adds a status panel to Stream-R1 Generate / Continue / Generate to File: a live player, a strip of recent chunks
// (from ComfyUI's progress previews), a chunk counter with the running FPS and ETA (from our "stream_r1.chunk"
// websocket event), and a clear error box when the node fails. Optional sugar: the nodes work the same without it.
// All decisions live in ./lib/stream_state.js (tested under Node).
//
// ComfyUI live: the player plays the stream's compact previews (the "stream_r1.live" event's `frames`) at the
// video's 16 fps as chunks land, drawn on a canvas from Image objects decoded once each (a few dozen around the
// playhead at a time); play/pause, a scrub bar over the frames received (with the applied prompt changes marked), a
// LIVE marker (click: jump to the live edge) and a frame counter. The steering row sends a new prompt (Enter) with
// a transition, and pauses, resumes or stops the generation (POST /stream_r1/live/{node}/...); the server's refusal
// is shown under it. The buffer and clock live in ./lib/live_player.js, the steering record (as a prompt timeline,
// copied by the "timeline" button) in ./lib/live_timeline.js. Every open tab gets the events and plays on its own.
// For tests: window.StreamR1Live.players is a Map of node id -> LivePlayer (`lastShown`, `counter(now)`).
//
// Stream-R1 Prompt Timeline nodes get a timeline bar under their text: one segment per prompt, as long as the
// prompt stays in force (up to the stream's end when the node feeds a Generate / Generate to File, else up to
// the last switch plus a tail), the switch times, a marker per transition, and the parser's error when the text
// is wrong. Clicking a segment selects its lines in the text. Parsing and layout live in ./lib/timeline.js,
// a mirror of stream_r1/timeline.py checked against the Python parser on shared cases.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  LIVE_EVENT,
  STEER_TRANSITIONS,
  STREAM_NODE_TYPES,
  droppedUrls,
  formatError,
  formatStatus,
  initialState,
  liveRoute,
  progress,
  reduce,
  steerErrorText,
  steerQueuedText,
} from "./lib/stream_state.js";
import { LIVE_FPS, LivePlayer, formatCounter, fractionOfFrame, frameAtFraction } from "./lib/live_player.js";
import { LiveTimeline } from "./lib/live_timeline.js";
import {
  LENGTH_NODE_TYPES,
  TIMELINE_NODE_TYPE,
  formatClock,
  layoutTimeline,
  lineRange,
  streamLength,
} from "./lib/timeline.js";

const EXTENSION = "StreamR1.LivePreview";
const CHUNK_EVENT = "stream_r1.chunk";
const WIDGET = "stream_r1_status";
const PANEL_HEIGHT = 380;
const PLAYER_MIN_HEIGHT = 150;
const PREFETCH = 24;                    // frames decoded ahead of the playhead (1.5 s)
const DECODES_PER_FRAME = 6;            // new Image decodes started per animation frame (after a seek)
const TIMELINE_WIDGET = "stream_r1_timeline_view";
const TIMELINE_HEIGHT = 150;            // the frontend keeps 10 px of margin above and below
const SEGMENT_COLOURS = ["#3f789e", "#8a6a3b", "#4f8a5b", "#7a4f8a", "#8a4f5b", "#3b7f8a", "#6f7a3b", "#5b5f8a"];
const TRANSITION_MARKS = {
  recache: { glyph: "↻", colour: "#6fd39a", title: "recache: the cached frames are re-encoded under the new prompt "
    + "(smooth change)" },
  flush: { glyph: "✂", colour: "#ff7a6b", title: "flush: only the sink and the last frame are kept (a clean cut)" },
  none: { glyph: "→", colour: "#c8c8c8", title: "none: only the text changes (the frame cache is kept)" },
};

const states = new Map(); // node id (string) -> state
const lives = new Map();  // node id (string) -> live session (see liveSession)
const players = new Map(); // node id (string) -> LivePlayer (the same objects as lives' .player)
window.StreamR1Live = { players, sessions: lives, timeline: (id) => liveTimelineText(lives.get(String(id))) };
let executing = null; // id of the node ComfyUI runs now (string) or null
let metadataPreviews = false; // the server sends b_preview_with_metadata (node id included)

function nodeById(id) {
  if (id == null || !app.graph) return null;
  return app.graph.getNodeById(Number(id)) ?? app.graph.getNodeById(id) ?? null;
}

function isStreamNode(node) {
  return !!node && STREAM_NODE_TYPES.includes(node.comfyClass ?? node.type);
}

function dispatch(id, event) {
  const key = String(id);
  const prev = states.get(key) ?? initialState();
  const next = reduce(prev, event);
  if (next === prev) return;
  for (const url of droppedUrls(prev, next)) URL.revokeObjectURL(url);
  states.set(key, next);
  const live = lives.get(key);
  if (live?.running && prev.status === "running" && next.status !== "running") {
    live.running = false;                  // cancelled or failed without an `end` event: play what came
    live.player.finish(performance.now());
  }
  const node = nodeById(key);
  node?.__streamR1View?.update(next);
  node?.setDirtyCanvas?.(true, true);
}

function finishRunning(exceptId) {
  for (const [id, state] of states) {
    if (state.status === "running" && id !== exceptId) dispatch(id, { type: "done" });
  }
}

function el(tag, style, parent) {
  const e = document.createElement(tag);
  Object.assign(e.style, style);
  parent?.appendChild(e);
  return e;
}

// ---- live sessions: one per stream node, fed by the "stream_r1.live" event ---------------------------------------
function liveSession(id) {
  const key = String(id);
  let live = lives.get(key);
  if (!live) {
    live = {
      player: new LivePlayer(), recorder: new LiveTimeline(), running: false, steerable: false, hint: "",
      paused: false, held: false, stopping: false, pending: null, stopped: false, cancelled: false,
      serverTimeline: "", changes: [], chunkFirst: new Map(),
      info: "", error: "", busy: false, run: 0,           // run: counts `start` events (a view drops old images)
    };
    lives.set(key, live);
    players.set(key, live.player);
  }
  return live;
}

function liveTimelineText(live) {
  return live ? live.serverTimeline || live.recorder.toText() : "";
}

/** The `state` event's `pending` (a count; GET's state has a list) as a line. */
function pendingText(pending) {
  const n = Array.isArray(pending) ? pending.length : Number.isInteger(pending) ? pending : 0;
  return n > 0 ? `${n} prompt${n === 1 ? "" : "s"} waiting for a chunk boundary` : "";
}

function onLive(detail) {
  if (detail?.node == null || !isStreamNode(nodeById(detail.node))) return;
  const key = String(detail.node);
  const live = liveSession(key);
  const now = performance.now();
  const hadFrames = live.player.end > 0;
  switch (detail.type) {
    case "start":
      live.player.reset({ fps: Number(detail.fps) || LIVE_FPS, total: detail.total_frames ?? null });
      live.recorder.start(detail.prompt ?? "");
      Object.assign(live, { running: true, steerable: !!detail.steerable, hint: String(detail.hint ?? ""),
                            paused: false, held: false, stopping: false, pending: null, stopped: false,
                            cancelled: false, serverTimeline: "", changes: [], info: "", error: "" });
      live.chunkFirst.clear();
      live.run += 1;
      break;
    case "frames":
      if (!Array.isArray(detail.frames) || !Number.isInteger(detail.first)) return;
      if (!live.player.end && !live.player.ended) live.running = true;          // a tab that joined mid-run
      live.player.append(detail.first, detail.frames, now);
      if (Number.isInteger(detail.chunk)) live.chunkFirst.set(detail.chunk, detail.first);
      break;
    case "change":
      if (live.recorder.change(detail)) {
        live.changes = live.changes.filter((c) => c.frame < detail.frame);
        live.changes.push({ frame: detail.frame, chunk: detail.chunk, prompt: String(detail.prompt ?? ""),
                            transition: detail.transition ?? "recache" });
      }
      live.info = `chunk ${detail.chunk}: new prompt (${detail.transition ?? "recache"}): ${detail.prompt ?? ""}`;
      break;
    case "state":
      applyState(live, detail);
      break;
    case "error":                         // a live prompt the server could not use
      live.error = `chunk ${detail.chunk}: ${detail.message ?? "the prompt could not be applied"}`;
      break;
    case "end":
      live.running = false;
      live.stopped = !!detail.stopped;
      live.cancelled = !!detail.cancelled;
      live.serverTimeline = typeof detail.timeline === "string" ? detail.timeline : "";
      live.player.finish(now, Number.isInteger(detail.frames) ? detail.frames : null);
      live.pending = null;
      break;
    default:
      return;
  }
  const view = nodeById(key)?.__streamR1View;
  if (detail.type === "frames" && hadFrames) view?.requestDraw();      // per chunk: only the frame-driven parts
  else view?.liveChanged();
}

function applyState(live, state) {
  if (!state || typeof state !== "object") return;
  live.paused = !!state.paused;
  live.held = !!state.held;
  live.stopping = !!state.stopping;
  live.pending = state.pending ?? null;
}

/** POST /stream_r1/live/{node}/{action}: {data} or {error} (the line shown under the steering row). */
async function postLive(id, action, body) {
  let r;
  try {
    r = await api.fetchApi(liveRoute(id, action), {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body ?? {}),
    });
  } catch (err) {
    return { error: `${steerErrorText(0, null)} (${err?.message ?? err})` };
  }
  let data = null;
  try {
    data = await r.json();
  } catch {
    data = null;
  }
  if (!r.ok || (data && typeof data.error === "string")) return { error: steerErrorText(r.status, data, r.statusText) };
  return { data: data ?? {} };
}

// ---- one animation loop for every player on the page --------------------------------------------------------------
const animating = new Set();
let rafId = 0;

function animate() {
  rafId = 0;
  const now = performance.now();
  for (const view of [...animating]) {
    if (!view.draw(now)) animating.delete(view);
  }
  if (animating.size) rafId = requestAnimationFrame(animate);
}

function startAnimation(view) {
  animating.add(view);
  if (!rafId) rafId = requestAnimationFrame(animate);
}

// ---- the status panel --------------------------------------------------------------------------------------------
function button(text, title, parent, className) {
  const b = el("button", {
    font: "inherit", padding: "1px 6px", color: "inherit", background: "rgba(127,127,127,.25)",
    border: "1px solid rgba(127,127,127,.5)", borderRadius: "3px", cursor: "pointer", flex: "0 0 auto",
  }, parent);
  b.type = "button";
  b.textContent = text;
  b.title = title;
  if (className) b.className = className;
  return b;
}

function createView(node) {
  const key = () => String(node.id);
  const root = el("div", {
    display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%", boxSizing: "border-box",
    padding: "4px", font: "11px ui-monospace, SFMono-Regular, Menlo, monospace",
    color: "var(--input-text, #ddd)", background: "var(--comfy-input-bg, #222)", borderRadius: "6px",
    overflow: "hidden",
  });
  root.className = "stream-r1-status";

  // The player: the canvas the previews are drawn on; ComfyUI's newest preview stands in until live frames come
  // (servers without the live event).
  const player = el("div", {
    position: "relative", flex: "1 1 auto", minHeight: `${PLAYER_MIN_HEIGHT}px`, background: "#000",
    borderRadius: "4px", overflow: "hidden", contain: "strict",
  }, root);
  player.className = "stream-r1-player";
  const canvas = el("canvas", { position: "absolute", inset: "0", width: "100%", height: "100%",
                                objectFit: "contain", display: "none" }, player);
  canvas.width = 416;
  canvas.height = 240;
  const ctx = canvas.getContext("2d", { alpha: false });
  const latest = el("img", { position: "absolute", inset: "0", width: "100%", height: "100%", objectFit: "contain",
                             display: "none" }, player);
  latest.alt = "newest chunk";
  const marker = el("div", {
    position: "absolute", top: "4px", left: "4px", padding: "0 5px", borderRadius: "3px", lineHeight: "15px",
    fontWeight: "bold", cursor: "pointer", background: "rgba(0,0,0,.6)", color: "#999", display: "none",
  }, player);
  marker.className = "stream-r1-live";
  marker.textContent = "● LIVE";
  marker.title = "playing at the live edge (click: jump to the newest frames)";
  marker.dataset.live = "0";
  const waiting = el("div", {
    position: "absolute", right: "4px", top: "4px", padding: "0 5px", borderRadius: "3px", lineHeight: "15px",
    background: "rgba(0,0,0,.6)", display: "none",
  }, player);

  // Transport: play/pause, the scrub bar (frames received, playhead, prompt changes), the counter.
  const transport = el("div", { display: "flex", alignItems: "center", gap: "6px", flex: "0 0 auto" }, root);
  const play = button("❚❚", "pause playback (the generation goes on)", transport, "stream-r1-play");
  const scrub = el("div", { position: "relative", flex: "1 1 auto", height: "16px", cursor: "pointer",
                            touchAction: "none" }, transport);
  scrub.className = "stream-r1-scrub";
  el("div", { position: "absolute", left: "0", right: "0", top: "6px", height: "4px", borderRadius: "2px",
              background: "rgba(127,127,127,.3)" }, scrub);
  const kept = el("div", { position: "absolute", left: "0", width: "0", top: "6px", height: "4px",
                           borderRadius: "2px", background: "rgba(68,170,153,.8)" }, scrub);
  const marks = el("div", { position: "absolute", inset: "0", pointerEvents: "none" }, scrub);
  const head = el("div", { position: "absolute", left: "0", top: "2px", width: "3px", height: "12px",
                           marginLeft: "-1px", background: "#fff", borderRadius: "1px", pointerEvents: "none" }, scrub);
  const counter = el("span", { flex: "0 0 auto", minWidth: "12ch", textAlign: "right",
                               fontVariantNumeric: "tabular-nums" }, transport);
  counter.className = "stream-r1-frame-counter";
  counter.textContent = formatCounter({ shown: 0, received: 0 });
  const rate = el("span", { flex: "0 0 auto", opacity: "0.7" }, transport);
  rate.textContent = `· ${LIVE_FPS} fps`;

  // Steering: the next prompt (Enter sends it), its transition, pause / resume / stop, the recorded timeline.
  const steer = el("div", { display: "flex", alignItems: "center", gap: "4px", flex: "0 0 auto" }, root);
  steer.className = "stream-r1-steer";
  const input = el("input", {
    flex: "1 1 auto", minWidth: "0", font: "inherit", padding: "2px 4px", color: "inherit",
    background: "rgba(0,0,0,.25)", border: "1px solid rgba(127,127,127,.5)", borderRadius: "3px",
  }, steer);
  input.type = "text";
  const select = el("select", { font: "inherit", color: "inherit", background: "var(--comfy-input-bg, #222)",
                                border: "1px solid rgba(127,127,127,.5)", borderRadius: "3px" }, steer);
  for (const t of STEER_TRANSITIONS) {
    const o = el("option", {}, select);
    o.value = t;
    o.textContent = t;
    o.title = TRANSITION_MARKS[t].title;
  }
  select.title = "how the stream switches to the new prompt (recache: smooth; flush: a clean cut; none: text only)";
  const pause = button("Pause", "pause the generation at the next chunk boundary (playback goes on)", steer,
                       "stream-r1-pause");
  const stop = button("Stop", "end the stream at the next chunk boundary (the node finishes with what it has)", steer,
                      "stream-r1-stop");
  const copy = button("timeline", "copy this run's prompts as a prompt timeline (paste it into a Stream-R1 Prompt "
                      + "Timeline node to replay the steering)", steer, "stream-r1-copy-timeline");
  const info = el("div", { flex: "0 0 auto", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis",
                           opacity: "0.8", lineHeight: "1.3" }, root);
  info.className = "stream-r1-steer-info";
  const steerError = el("div", {
    display: "none", flex: "0 0 auto", whiteSpace: "pre-wrap", padding: "2px 4px", maxHeight: "42px",
    overflowY: "auto", background: "#5a1d1d", color: "#ffd7d7", border: "1px solid #c33", borderRadius: "4px",
  }, root);
  steerError.className = "stream-r1-steer-error";

  // ComfyUI's per-chunk previews (click one: play from that chunk), the progress bar, the status line, the error.
  const strip = el("div", { display: "flex", flexWrap: "nowrap", gap: "2px", flex: "0 0 auto", height: "30px",
                            overflow: "hidden" }, root);
  strip.className = "stream-r1-thumbs";
  const bar = el("div", { height: "4px", flex: "0 0 auto", background: "rgba(127,127,127,.3)", borderRadius: "2px" },
                 root);
  const fill = el("div", { height: "100%", width: "0%", background: "#4a9", borderRadius: "2px" }, bar);
  const line = el("div", { whiteSpace: "normal", overflowWrap: "anywhere", lineHeight: "1.3", flex: "0 0 auto" }, root);
  line.className = "stream-r1-status-line";
  const error = el("div", {
    display: "none", flex: "0 1 auto", whiteSpace: "pre-wrap", overflowY: "auto", maxHeight: "84px", padding: "4px",
    background: "#5a1d1d", color: "#ffd7d7", border: "1px solid #c33", borderRadius: "4px",
  }, root);
  error.className = "stream-r1-error";

  const widget = node.addDOMWidget(WIDGET, WIDGET, root, {
    serialize: false, // never in widgets_values nor in the prompt
    hideOnZoom: false,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => PANEL_HEIGHT,
  });
  widget.serialize = false;

  const live = () => lives.get(key());
  const images = new Map();         // frame index -> {img, ready}: decoded previews around the playhead
  let drawn = -1;                   // frame on the canvas
  let drawnRun = -1;                // the run it belongs to: a new run drops the decoded images
  let shownLive = null, shownCounter = "", shownHead = "", shownWaiting = "", marksKey = "";

  function prefetch(p, from) {
    let started = 0;
    const last = Math.min(p.end - 1, from + PREFETCH);
    for (let i = Math.max(from, p.base); i <= last && started < DECODES_PER_FRAME; i += 1) {
      if (images.has(i)) continue;
      const src = p.frame(i);
      if (typeof src !== "string") continue;
      const rec = { img: new Image(), ready: false };
      rec.img.decoding = "async";
      rec.img.src = src;
      rec.img.decode().then(() => { rec.ready = true; view.requestDraw(); }, () => { rec.failed = true; });
      images.set(i, rec);
      started += 1;
    }
    for (const i of images.keys()) if (i < from - 2 || i > from + PREFETCH || i < p.base) images.delete(i);
  }

  function seekTo(clientX) {
    const l = live();
    if (!l?.player.end) return;
    const r = scrub.getBoundingClientRect();
    l.player.seek(frameAtFraction(l.player, (clientX - r.left) / Math.max(1, r.width)), performance.now());
    view.requestDraw();
  }

  scrub.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    e.stopPropagation();
    scrub.setPointerCapture?.(e.pointerId);
    seekTo(e.clientX);
  });
  scrub.addEventListener("pointermove", (e) => {
    if (scrub.hasPointerCapture?.(e.pointerId)) seekTo(e.clientX);
  });
  play.addEventListener("click", () => {
    const l = live();
    if (!l) return;
    l.player.toggle(performance.now());
    view.liveChanged();
  });
  marker.addEventListener("click", () => {
    live()?.player.goLive(performance.now());
    view.liveChanged();
  });
  for (const type of ["keydown", "keyup", "keypress"]) input.addEventListener(type, (e) => e.stopPropagation());
  input.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || e.isComposing) return;
    e.preventDefault();
    send();
  });

  async function request(action, body, onOk) {
    const l = liveSession(key());
    l.busy = true;
    view.liveChanged();
    const { data, error: err } = await postLive(key(), action, body);
    l.busy = false;
    l.error = err ?? "";
    if (!err) onOk?.(data, l);
    view.liveChanged();
  }

  function send() {
    const text = input.value.trim();
    if (!text) return;
    const transition = select.value || STEER_TRANSITIONS[0];
    request("prompt", { text, transition }, (data, l) => {
      l.info = steerQueuedText(data, transition) + `: ${text}`;
      if (input.value.trim() === text) input.value = "";
    });
  }
  pause.addEventListener("click", () => {
    const l = live();
    request(l?.paused ? "resume" : "pause", {}, (data, s) => applyState(s, data?.state));
  });
  stop.addEventListener("click", () => request("stop", {}, (data, s) => {
    s.stopping = true;
    applyState(s, data?.state);
  }));
  copy.addEventListener("click", async () => {
    const l = live();
    const text = liveTimelineText(l);
    if (!l || !text) return;
    try {
      await navigator.clipboard.writeText(text);
      l.info = `copied the timeline (${text.split("\n").length} prompts)`;
    } catch (err) {
      l.info = `could not copy (${err?.message ?? err}); the timeline:\n${text}`;
    }
    view.liveChanged();
  });

  const view = {
    update(state) {
      const text = formatStatus(state);
      line.textContent = text || "Stream-R1: waiting for a run";
      line.title = text;
      fill.style.width = `${Math.round(progress(state) * 100)}%`;
      fill.style.background = state.status === "error" ? "#c33" : state.status === "interrupted" ? "#c93" : "#4a9";
      if (state.latest && latest.src !== state.latest) latest.src = state.latest;
      latest.dataset.has = state.latest ? "1" : "0";
      strip.replaceChildren(...state.thumbs.map((t) => {
        const img = el("img", { height: "100%", borderRadius: "2px", outline: "1px solid rgba(127,127,127,.4)",
                                cursor: "pointer" });
        img.src = t.url;
        img.title = `chunk ${t.chunk} (click: play from here)`;
        img.addEventListener("click", () => {
          const l = live(), first = l?.chunkFirst.get(t.chunk);
          if (first == null) return;
          l.player.seek(first, performance.now());
          view.liveChanged();
        });
        return img;
      }));
      error.style.display = state.error ? "" : "none";
      error.textContent = state.error ? formatError(state.error) : "";
      error.title = error.textContent;
      this.liveChanged();
    },

    /** Everything but the per-frame parts: controls, lines, marks; then one draw. */
    liveChanged() {
      const l = live();
      const p = l?.player;
      const hasFrames = !!p?.end;
      canvas.style.display = hasFrames ? "" : "none";
      marker.style.display = hasFrames ? "" : "none";
      latest.style.display = !hasFrames && latest.dataset.has === "1" ? "" : "none";
      play.textContent = p && !p.playing ? "▶" : "❚❚";
      play.title = p && !p.playing ? "play" : "pause playback (the generation goes on)";
      play.disabled = !hasFrames;
      rate.textContent = `· ${p?.fps ?? LIVE_FPS} fps`;
      const running = !!l?.running;
      input.disabled = !running || !!l?.stopping;
      select.disabled = input.disabled;
      input.placeholder = !running ? "steer a running stream: type a prompt, Enter"
        : l.steerable ? "next prompt (Enter sends it)" : l.hint || "this stream cannot be steered";
      input.title = running && !l.steerable ? l.hint : "";
      pause.disabled = !running || !!l?.stopping || !!l?.busy;
      pause.textContent = l?.paused ? "Resume" : "Pause";
      stop.disabled = !running || !!l?.stopping;
      stop.textContent = l?.stopping ? "Stopping…" : "Stop";
      copy.disabled = !liveTimelineText(l);
      const pendingLine = pendingText(l?.pending);
      const parts = [];
      if (l?.paused && running) parts.push(l.held ? "generation paused" : "pausing at the next chunk boundary…");
      if (pendingLine && running) parts.push(pendingLine);
      if (l && !running && l.stopped) parts.push("stopped by the user");
      if (l && !running && l.cancelled) parts.push("cancelled");
      if (l?.info) parts.push(l.info);
      info.textContent = parts.join(" · ");
      info.title = info.textContent;
      info.style.display = info.textContent ? "" : "none";
      steerError.style.display = l?.error ? "" : "none";
      steerError.textContent = l?.error ?? "";
      this.renderMarks(l);
      this.requestDraw();
    },

    renderMarks(l) {
      const p = l?.player;
      const k = p ? `${p.total}|${p.end}|${l.changes.map((c) => `${c.frame}${c.transition}`).join(",")}` : "";
      if (k === marksKey) return;
      marksKey = k;
      marks.replaceChildren(...(l?.changes ?? []).map((c) => {
        const t = TRANSITION_MARKS[c.transition] ?? TRANSITION_MARKS.recache;
        const m = el("div", { position: "absolute", top: "0", bottom: "0", width: "2px", marginLeft: "-1px",
                              left: `${fractionOfFrame(p, c.frame) * 100}%`, background: t.colour });
        m.className = "stream-r1-change-mark";
        m.dataset.frame = String(c.frame);
        m.title = `frame ${c.frame} (chunk ${c.chunk}), ${c.transition}: ${c.prompt}`;
        return m;
      }));
    },

    requestDraw() {
      startAnimation(view);
    },

    /** One animation frame: returns whether it wants the next one. */
    draw(now) {
      const l = live();
      if (!l || !root.isConnected) return false;
      const p = l.player;
      if (drawnRun !== l.run) {
        drawnRun = l.run;
        drawn = -1;
        images.clear();
      }
      const idx = p.tick(now);
      if (idx >= 0) {
        prefetch(p, idx);
        const rec = images.get(idx);
        if (idx !== drawn && rec?.ready) {
          const { naturalWidth: w, naturalHeight: h } = rec.img;
          if (w && h && (canvas.width !== w || canvas.height !== h)) {
            canvas.width = w;
            canvas.height = h;
          }
          ctx.drawImage(rec.img, 0, 0, canvas.width, canvas.height);
          drawn = idx;
        }
      }
      const c = formatCounter({ shown: drawn + 1, received: p.end });
      if (c !== shownCounter) counter.textContent = shownCounter = c;
      const isLive = p.isLive(now);
      if (isLive !== shownLive) {
        shownLive = isLive;
        marker.dataset.live = isLive ? "1" : "0";
        marker.style.color = isLive ? "#ff4d4d" : "#999";
      }
      const w = !p.isWaiting(now) || !p.end ? "" : !p.started ? "buffering"
        : l.paused ? "generation paused" : "waiting for the next chunk";
      if (w !== shownWaiting) {
        shownWaiting = w;
        waiting.textContent = w;
        waiting.style.display = w ? "" : "none";
      }
      const h = `${(fractionOfFrame(p, Math.max(0, drawn)) * 100).toFixed(2)}%|` +
        `${(fractionOfFrame(p, p.base) * 100).toFixed(2)}%|${(fractionOfFrame(p, p.end - 1) * 100).toFixed(2)}%`;
      if (h !== shownHead) {
        shownHead = h;
        const [at, from, to] = h.split("|");
        head.style.left = at;
        kept.style.left = from;
        kept.style.width = `${Math.max(0, parseFloat(to) - parseFloat(from))}%`;
        if (p.total == null) this.renderMarks(l);        // the bar's span grows with the stream
      }
      const pendingDecode = idx >= 0 && idx !== drawn && !images.get(idx)?.failed;
      return p.end > 0 && ((p.playing && !(p.ended && idx >= p.end - 1)) || pendingDecode);
    },
  };
  view.update(states.get(String(node.id)) ?? initialState());
  return view;
}


// ---- the timeline bar of Stream-R1 Prompt Timeline ---------------------------------------------------------------
function widgetValue(node, name) {
  return node?.widgets?.find((w) => w.name === name)?.value;
}

/** The stream length asked for by the first Generate / Generate to File that this node's conditioning feeds. */
function connectedStream(node) {
  const graph = node.graph ?? app.graph;
  for (const id of node.outputs?.[0]?.links ?? []) {
    const link = graph?.links?.get?.(id) ?? graph?.links?.[id];
    const target = link && graph.getNodeById(link.target_id);
    if (!target || !LENGTH_NODE_TYPES.includes(target.comfyClass ?? target.type)) continue;
    const stream = streamLength({ seconds: Number(widgetValue(target, "seconds")),
                                  frames: Number(widgetValue(target, "frames") ?? 0) });
    if (stream) return { ...stream, from: target.title || target.type };
  }
  return null;
}

function createTimelineView(node) {
  const root = el("div", {
    display: "flex", flexDirection: "column", gap: "3px", width: "100%", height: "100%", boxSizing: "border-box",
    padding: "4px 4px 2px", font: "11px ui-monospace, SFMono-Regular, Menlo, monospace",
    color: "var(--input-text, #ddd)", background: "var(--comfy-input-bg, #222)", borderRadius: "6px",
    overflow: "hidden",
  });
  root.className = "stream-r1-timeline";
  const marks = el("div", { position: "relative", height: "13px", flex: "0 0 auto" }, root);
  const bar = el("div", {
    position: "relative", height: "30px", flex: "0 0 auto", borderRadius: "4px", overflow: "hidden",
    background: "rgba(127,127,127,.18)",
  }, root);
  bar.className = "stream-r1-timeline-bar";
  const axis = el("div", { position: "relative", height: "13px", flex: "0 0 auto", opacity: "0.75" }, root);
  const info = el("div", { whiteSpace: "normal", overflowWrap: "anywhere", lineHeight: "1.3", flex: "1 1 auto",
                           overflowY: "auto", minHeight: "0" }, root);
  info.className = "stream-r1-timeline-info";
  const legend = el("div", { display: "flex", gap: "10px", flex: "0 0 auto", lineHeight: "13px", opacity: "0.85" }, root);
  for (const [name, t] of Object.entries(TRANSITION_MARKS)) {
    const item = el("span", {}, legend);
    el("span", { color: t.colour, fontWeight: "bold" }, item).textContent = t.glyph;
    item.append(` ${name}`);
    item.title = t.title;
  }

  const widget = node.addDOMWidget(TIMELINE_WIDGET, TIMELINE_WIDGET, root, {
    serialize: false, hideOnZoom: false, getValue: () => "", setValue: () => {},
    getMinHeight: () => TIMELINE_HEIGHT, getMaxHeight: () => TIMELINE_HEIGHT,
  });
  widget.serialize = false;

  const text = () => node.widgets?.find((w) => w.name === "timeline");
  function select(lines) {
    const input = text()?.inputEl;
    if (!lines || !input?.setSelectionRange) return;
    const [start, end] = lineRange(input.value, lines[0], lines[1]);
    input.focus();
    input.setSelectionRange(start, end);
    const lineHeight = parseFloat(getComputedStyle(input).lineHeight) || 14;
    input.scrollTop = Math.max(0, (lines[0] - 2) * lineHeight);
  }

  let shown = null;
  const view = {
    /** Re-render when the text, the default transition or the connected stream's length changed. Runs on every
     * keystroke and every draw: the comparison is of the values themselves (no JSON.stringify of a long text per
     * frame), and layoutTimeline is bounded (length, entries and times are capped; see ./lib/timeline.js). */
    refresh(force = false) {
      const stream = connectedStream(node);
      const value = String(text()?.value ?? "");
      const transition = String(widgetValue(node, "default_transition") ?? "recache");
      const length = stream ? `${stream.chunks}|${stream.seconds}|${stream.from}` : "";
      if (!force && shown && shown.value === value && shown.transition === transition && shown.length === length) {
        return;
      }
      shown = { value, transition, length };
      let lay;
      try {
        lay = layoutTimeline(value, { defaultTransition: transition, stream });
      } catch (err) {                        // a bug here must not break the canvas draw that called us
        lay = { ok: false, error: `timeline view: ${err?.message ?? err}`, errorLine: null, segments: [], end: 0,
                known: !!stream, ticks: [] };
      }
      this.render(lay, lay.known ? stream : null);          // a length the layout refused is not shown either
    },
    render(lay, stream) {
      root.dataset.segments = String(lay.segments.length);
      root.dataset.error = lay.ok ? "" : lay.error;
      for (const part of [marks, bar, axis]) part.style.display = lay.ok ? "" : "none";
      legend.style.display = lay.ok ? "flex" : "none";
      Object.assign(info.style, lay.ok ? { color: "", background: "", padding: "0", border: "none" }
        : { color: "#ffd7d7", background: "#5a1d1d", padding: "4px", border: "1px solid #c33", borderRadius: "4px" });
      info.style.cursor = !lay.ok && lay.errorLine ? "pointer" : "";
      info.onclick = !lay.ok && lay.errorLine ? () => select([lay.errorLine, lay.errorLine]) : null;
      if (!lay.ok) {
        info.textContent = lay.error;
        info.title = lay.errorLine ? `${lay.error}\n(click: select line ${lay.errorLine} in the text)` : lay.error;
        return;
      }
      bar.replaceChildren(...lay.segments.map((s) => {
        const seg = el("div", {
          position: "absolute", top: "0", bottom: "0", left: `${s.frac * 100}%`, width: `${s.width * 100}%`,
          boxSizing: "border-box", padding: "2px 4px", overflow: "hidden", whiteSpace: "nowrap",
          textOverflow: "ellipsis", lineHeight: "13px", color: "#fff", cursor: s.lines ? "pointer" : "default",
          background: SEGMENT_COLOURS[s.index % SEGMENT_COLOURS.length],
          borderLeft: s.index ? `2px solid ${TRANSITION_MARKS[s.transition].colour}` : "none",
        });
        if (s.open) seg.style.maskImage = "linear-gradient(to right, #000 60%, transparent)";
        seg.className = "stream-r1-timeline-segment";
        seg.dataset.transition = s.transition;
        const label = el("div", { overflow: "hidden", textOverflow: "ellipsis", fontWeight: "bold" }, seg);
        label.textContent = s.time;
        const prompt = el("div", { overflow: "hidden", textOverflow: "ellipsis", opacity: "0.9" }, seg);
        prompt.textContent = s.prompt;
        const until = s.open ? "…" : formatClock(s.end);
        seg.title = `${s.time} → ${until} (chunk ${s.chunk}, from ${formatClock(s.start)}), ` +
          `${s.index ? s.transition : "start"}\n${s.prompt}` + (s.lines ? "\n(click: select in the text)" : "");
        seg.addEventListener("pointerdown", (e) => {
          if (e.button !== 0 || !s.lines) return;
          e.stopPropagation();
          select(s.lines);
        });
        return seg;
      }));
      marks.replaceChildren(...lay.segments.filter((s) => s.index > 0).map((s) => {
        const t = TRANSITION_MARKS[s.transition];
        const m = el("div", { position: "absolute", left: `${s.frac * 100}%`, transform: "translateX(-50%)",
                              color: t.colour, fontWeight: "bold", lineHeight: "13px" });
        m.className = "stream-r1-timeline-mark";
        m.textContent = t.glyph;
        m.title = t.title;
        return m;
      }));
      axis.replaceChildren(...lay.ticks.map((t, i) => {
        const tick = el("div", { position: "absolute", left: `${t.frac * 100}%`, lineHeight: "13px",
                                 transform: i === 0 ? "none" : t.frac > 0.97 ? "translateX(-100%)" : "translateX(-50%)" });
        tick.textContent = t.label;
        return tick;
      }));
      const n = lay.segments.length;
      const length = stream ? `${formatClock(lay.end)} stream (${stream.chunks} chunks, from ${stream.from})`
        : `length unknown: shown to the last switch + ${formatClock(lay.end - lay.segments[n - 1].start)}`;
      info.textContent = `${n} prompt${n === 1 ? "" : "s"} · ${length}`;
      info.title = info.textContent;
    },
  };
  const input = text()?.inputEl;
  input?.addEventListener?.("input", () => view.refresh());
  return view;
}

app.registerExtension({
  name: EXTENSION,

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === TIMELINE_NODE_TYPE) {
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = created?.apply(this, arguments);
        this.__streamR1Timeline = createTimelineView(this);
        this.__streamR1Timeline.refresh(true);
        return result;
      };
      const configured = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const result = configured?.apply(this, arguments);
        this.__streamR1Timeline?.refresh(true);
        return result;
      };
      // Widget values set by loading a workflow, a changed seconds widget downstream, a new link: all show up at
      // the next draw (refresh compares a small key and does nothing when it is unchanged).
      const drawn = nodeType.prototype.onDrawForeground;
      nodeType.prototype.onDrawForeground = function () {
        const result = drawn?.apply(this, arguments);
        this.__streamR1Timeline?.refresh();
        return result;
      };
      return;
    }
    if (!STREAM_NODE_TYPES.includes(nodeData?.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.__streamR1View = createView(this);
      const [w, h] = this.size;
      const min = this.computeSize?.()?.[1] ?? h;
      this.setSize?.([Math.max(w, 420), Math.max(h, min)]);
      return result;
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      const key = String(this.id);
      const state = states.get(key);
      if (state) for (const url of droppedUrls(state, initialState())) URL.revokeObjectURL(url);
      states.delete(key);
      lives.delete(key);
      players.delete(key);
      return onRemoved?.apply(this, arguments);
    };
  },

  setup() {
    api.addEventListener(LIVE_EVENT, ({ detail }) => onLive(detail));
    api.addEventListener(CHUNK_EVENT, ({ detail }) => {
      if (detail?.node != null) dispatch(detail.node, { type: "chunk", data: detail });
    });
    api.addEventListener("executing", ({ detail }) => {
      const id = detail == null ? null : String(detail);
      finishRunning(id); // the graph moved on: a stream node that was running is done
      executing = id;
      if (id != null && isStreamNode(nodeById(id))) dispatch(id, { type: "start" });
    });
    api.addEventListener("execution_success", () => finishRunning(null));
    api.addEventListener("execution_error", ({ detail }) => {
      const id = detail?.node_id;
      if (id != null && isStreamNode(nodeById(id))) {
        dispatch(id, {
          type: "error", message: detail.exception_message, exceptionType: detail.exception_type,
          nodeType: detail.node_type,
        });
      }
    });
    api.addEventListener("execution_interrupted", ({ detail }) => {
      const id = detail?.node_id ?? executing;
      if (id != null && states.has(String(id))) dispatch(id, { type: "interrupted" });
    });
    api.addEventListener("b_preview_with_metadata", ({ detail }) => {
      metadataPreviews = true;
      const id = detail?.displayNodeId ?? detail?.nodeId;
      if (id != null && isStreamNode(nodeById(id))) dispatch(id, { type: "preview", url: URL.createObjectURL(detail.blob) });
    });
    api.addEventListener("b_preview", ({ detail }) => {
      // Older servers send previews without a node id: they belong to the node that is executing.
      if (metadataPreviews || executing == null || !isStreamNode(nodeById(executing))) return;
      dispatch(executing, { type: "preview", url: URL.createObjectURL(detail) });
    });
  },
});
