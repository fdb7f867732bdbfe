// Stream-R1 web extension (ComfyUI frontend 1.35.x, legacy `app.registerExtension` / `api` surface).
//
// Adds a status panel to Stream-R1 Generate / Continue / Generate to File: the newest chunk's frame and a
// strip of recent chunks (from ComfyUI's progress previews), a chunk counter with the running FPS and ETA
// (from our "stream_r1.chunk" websocket event), and a clear error box when the node fails. Optional sugar:
// the nodes work the same without it. All decisions live in ./lib/stream_state.js (tested under Node).
//
// Stream-R1 Prompt Timeline nodes get a timeline bar under their text: one segment per prompt, as long as the
// prompt stays in force (up to the stream's end when the node feeds a Generate / Generate to File, else up to
// the last switch plus a tail), the switch times, a marker per transition, and the parser's error when the text
// is wrong. Clicking a segment selects its lines in the text. Parsing and layout live in ./lib/timeline.js,
// a mirror of stream_r1/timeline.py checked against the Python parser on shared cases.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  STREAM_NODE_TYPES,
  droppedUrls,
  formatError,
  formatStatus,
  initialState,
  progress,
  reduce,
} from "./lib/stream_state.js";
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
const PANEL_HEIGHT = 150;
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

function createView(node) {
  const root = el("div", {
    display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%", boxSizing: "border-box",
    padding: "4px", font: "11px ui-monospace, SFMono-Regular, Menlo, monospace",
    color: "var(--input-text, #ddd)", background: "var(--comfy-input-bg, #222)", borderRadius: "6px",
    overflow: "hidden",
  });
  root.className = "stream-r1-status";
  const top = el("div", { display: "flex", gap: "6px", flex: "1 1 auto", minHeight: "0" }, root);
  const latest = el("img", { height: "100%", maxWidth: "45%", objectFit: "contain", display: "none" }, top);
  latest.alt = "newest chunk";
  const strip = el("div", { display: "flex", flexWrap: "wrap", gap: "2px", alignContent: "flex-start", flex: "1" }, top);
  const bar = el("div", { height: "4px", background: "rgba(127,127,127,.3)", borderRadius: "2px" }, root);
  const fill = el("div", { height: "100%", width: "0%", background: "#4a9", borderRadius: "2px" }, bar);
  const line = el("div", { whiteSpace: "normal", overflowWrap: "anywhere", lineHeight: "1.3" }, root);
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

  const view = {
    update(state) {
      const text = formatStatus(state);
      line.textContent = text || "Stream-R1: waiting for a run";
      line.title = text;
      fill.style.width = `${Math.round(progress(state) * 100)}%`;
      fill.style.background = state.status === "error" ? "#c33" : state.status === "interrupted" ? "#c93" : "#4a9";
      latest.style.display = state.latest ? "" : "none";
      if (state.latest && latest.src !== state.latest) latest.src = state.latest;
      strip.replaceChildren(...state.thumbs.map((t) => {
        const img = el("img", { height: "40px", borderRadius: "2px", outline: "1px solid rgba(127,127,127,.4)" });
        img.src = t.url;
        img.title = `chunk ${t.chunk}`;
        return img;
      }));
      error.style.display = state.error ? "" : "none";
      error.textContent = state.error ? formatError(state.error) : "";
      error.title = error.textContent;
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
      this.setSize?.([Math.max(w, 340), h]);
      return result;
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      const key = String(this.id);
      const state = states.get(key);
      if (state) for (const url of droppedUrls(state, initialState())) URL.revokeObjectURL(url);
      states.delete(key);
      return onRemoved?.apply(this, arguments);
    };
  },

  setup() {
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
