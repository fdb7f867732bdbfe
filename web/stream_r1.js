// Stream-R1 web extension (ComfyUI frontend 1.35.x, legacy `app.registerExtension` / `api` surface).
//
// Adds a status panel to Stream-R1 Generate / Continue / Generate to File: the newest chunk's frame and a
// strip of recent chunks (from ComfyUI's progress previews), a chunk counter with the running FPS and ETA
// (from our "stream_r1.chunk" websocket event), and a clear error box when the node fails. Optional sugar:
// the nodes work the same without it. All decisions live in ./lib/stream_state.js (tested under Node).
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

const EXTENSION = "StreamR1.LivePreview";
const CHUNK_EVENT = "stream_r1.chunk";
const WIDGET = "stream_r1_status";
const PANEL_HEIGHT = 150;

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

app.registerExtension({
  name: EXTENSION,

  async beforeRegisterNodeDef(nodeType, nodeData) {
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
