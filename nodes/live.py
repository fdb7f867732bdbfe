"""ComfyUI live: the node's panel steers the stream running in that node, between chunks.

A `LiveRun` is registered under the node's UNIQUE_ID for as long as Generate, Continue or Generate to File streams
in it. The panel talks to it through the routes below (aiohttp handlers on the server's event loop thread); the node
reads it on the prompt worker thread at every chunk boundary: a pause holds the stream there (waiting on an Event,
waking every `POLL_S` to honour ComfyUI's Cancel), a stop ends it cleanly, and a queued prompt is encoded with the
node's `clip` and switched in exactly as a prompt-timeline entry (`StreamSession.switch_prompt`, one per boundary).
Every switch is recorded as a timeline entry, so the run can be replayed with the Prompt Timeline node.

Routes (JSON in and out; errors are {"error": one line} with 400 bad input, 404 no stream in that node, 409 the
stream cannot take it):
    GET  /stream_r1/live/{node}           -> state (below; `running` false when nothing streams there)
    POST /stream_r1/live/{node}/prompt    {"text": str, "transition": "recache"|"flush"|"none"}
                                          -> {"ok": true, "at_chunk": k}
    POST /stream_r1/live/{node}/pause | /resume | /stop                -> {"ok": true, "state": state}
    state: {"running", "paused", "held", "stopping", "steerable", "chunk", "frames", "pending": [{"text",
            "transition", "at_chunk"}], "changes": [{"chunk", "frame", "seconds", "prompt", "transition"}]}

Events `stream_r1.live` to every client (only under ComfyUI's server, i.e. when the routes exist), in order:
    {"type": "start", "node", "prompt_id"?, "fps": 16, "width", "height", "total_frames", "steerable", "hint",
     "prompt", "chunk", "chunks"}
    {"type": "frames", "node", "chunk", "first", "frames": [JPEG data URLs], "width", "height"}   per piece
    {"type": "change", "node", "chunk", "frame", "seconds", "prompt", "transition", "source": "live"}
    {"type": "state", "node", "paused", "held", "stopping", "pending"}   on pause / resume / stop / queue / hold / apply
    {"type": "error", "node", "chunk", "message"}                            a live prompt that could not be encoded
    {"type": "end", "node", "frames", "stopped", "cancelled", "timeline"}
Previews are shrunk (longest side `PREVIEW_SIDE`) and JPEG-encoded on a worker thread of the run, never on the
stream loop's thread.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import queue
import re
import sys
import threading
import unicodedata
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..stream_r1.timeline import FPS, TRANSITIONS, Timeline, TimelineEntry, chunk_start_frame, chunk_start_seconds
from . import host, layout
from .state import StreamState, video_frames
from .timeline import _encode

log = logging.getLogger(__name__)

EVENT = "stream_r1.live"
ROUTE = "/stream_r1/live/{node}"
NODE_ID = re.compile(r"[A-Za-z0-9:._-]{1,64}")
MAX_BODY = 16 * 1024
"""Largest request body (bytes)."""
MAX_TEXT = 2000
"""Longest live prompt (characters, after strip)."""
MAX_PENDING = 16
"""Most prompt changes waiting at once (one applies per chunk boundary)."""
POLL_S = 0.5
"""A paused stream wakes this often to see ComfyUI's Cancel."""
PREVIEW_SIDE = 416
PREVIEW_QUALITY = 75
NO_CLIP = "connect the workflow's CLIP (text encoder) to the node's clip input to steer it live"
NO_CLIP_TTS = ("prompts cannot change live under test-time scaling (Stream-R1 Test-Time Scaling): disconnect tts to "
               "steer the stream")
_REFUSED = ("Cc", "Cs", "Zl", "Zp")                 # control characters, lone surrogates, line/paragraph separators


class LiveError(Exception):
    """A refused request: HTTP `status` and a one-line `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ---- checks of what comes from outside ---------------------------------------------------------------------------
def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_node(node: Any) -> str:
    if not isinstance(node, str) or NODE_ID.fullmatch(node) is None:
        raise LiveError(400, f"node id {_show(node)} is not valid: 1-64 characters of A-Z a-z 0-9 : . _ -")
    return node


def check_text(value: Any) -> str:
    """A live prompt: one line of text, 1..MAX_TEXT characters after strip."""
    if not isinstance(value, str):
        raise LiveError(400, 'text must be a string: send {"text": "a prompt", "transition": "recache"}')
    text = value.strip()
    if not text:
        raise LiveError(400, "text is empty: write a prompt")
    if len(text) > MAX_TEXT:
        raise LiveError(400, f"text has {len(text)} characters; at most {MAX_TEXT} are accepted")
    bad = next((c for c in text if unicodedata.category(c) in _REFUSED), None)
    if bad is not None:
        raise LiveError(400, f"text contains a control character (U+{ord(bad):04X}): send one line of plain text")
    return text


def prompt_args(body: dict) -> tuple[str, str]:
    """(text, transition) of a prompt request's JSON object."""
    unknown = sorted(str(k) for k in body if k not in ("text", "transition"))
    if unknown:
        raise LiveError(400, f"unknown key {_show(unknown[0])}: send text and, optionally, transition")
    transition = body.get("transition")
    transition = "recache" if transition is None else transition
    if not isinstance(transition, str) or transition not in TRANSITIONS:
        raise LiveError(400, f"transition {_show(transition)} is not one of {', '.join(TRANSITIONS)}")
    return check_text(body.get("text")), transition


# ---- one live run ---------------------------------------------------------------------------------------------------
def _graph_prompt(graph: Any, node: Optional[str]) -> Optional[str]:
    """Text of the CLIPTextEncode wired straight to the node's `positive` (ComfyUI's hidden PROMPT), else None."""
    try:
        link = graph[str(node)]["inputs"]["positive"]
        source = graph[str(link[0])]
        text = source["inputs"]["text"] if source["class_type"] == "CLIPTextEncode" else None
    except (KeyError, TypeError, IndexError):
        return None
    if not isinstance(text, str):
        return None
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or None   # as the timeline reads it


def _chunk_of(frame: int, frames_per_block: int) -> int:
    """The chunk holding video frame `frame` of the stream (chunk 0: 1 + 4(fpb-1) frames, later ones 4 fpb)."""
    return 0 if frame < chunk_start_frame(1, frames_per_block) else (frame + 3) // (4 * frames_per_block)


def preview_urls(frames: Tensor) -> tuple[list[str], int, int]:
    """Frames [T, H, W, 3] (float in [0, 1] or uint8, on the host) -> (JPEG data URLs with the longest side at most
    `PREVIEW_SIDE`, width, height)."""
    from PIL import Image

    x = frames.float() / 255 if frames.dtype == torch.uint8 else frames.float()
    x = x.permute(0, 3, 1, 2)                                                          # [T, 3, H, W]
    h, w = x.shape[-2:]
    scale = PREVIEW_SIDE / max(h, w)
    if scale < 1:
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()   # [T, h, w, 3]
    urls = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=PREVIEW_QUALITY)
        urls.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
    return urls, arr.shape[2], arr.shape[1]


class _Sender:
    """The run's events, sent in order from a worker thread (previews are encoded there). `put` blocks only when
    `depth` items wait, so a slow client cannot make memory grow."""

    def __init__(self, depth: int = 8):
        self._queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self._failed = False
        self._thread = threading.Thread(target=self._work, name="stream_r1-live", daemon=True)
        self._thread.start()

    def put(self, item: "dict | Callable[[], Optional[dict]]") -> None:
        self._queue.put(item)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        with torch.inference_mode():
            while (item := self._queue.get()) is not None:
                try:
                    data = item() if callable(item) else item
                    if data is not None:
                        host.send_event(EVENT, data)
                except Exception:                                    # noqa: BLE001 (a preview never stops a stream)
                    if not self._failed:
                        log.warning("live event failed (later failures of this run are not logged)", exc_info=True)
                    self._failed = True


class LiveRun:
    """The live side of one node run: control (pause, stop, queued prompts), the record of switches, the events.

    `base`: the switches the run follows anyway, [(chunk, prompt, transition)]: the events of the node's prompt
    timeline, or the first prompt at chunk 0 when its text is known. Live changes go to chunk boundaries where the
    timeline has no event (and not to a timeline run's first chunk, where it may switch), so every boundary holds at
    most one switch and the recorded timeline replays exactly."""

    def __init__(self, node: Optional[str], state: StreamState, latent_frames: int, *, clip: Any = None,
                 tts: Any = None, graph: Any = None, events: bool = False):
        session = state.session
        self.node, self.state, self.clip = node, state, clip
        self.fpb = state.cfg.frames_per_block
        self.first_chunk = session.chunk_index
        self.last_chunk = self.first_chunk + state.chunks_for(latent_frames) - 1
        self.frame0 = video_frames(state.latents_emitted)          # stream index of this run's first video frame
        self.total_frames = video_frames(state.latents_emitted + latent_frames) - self.frame0
        self.hint = NO_CLIP_TTS if tts is not None else NO_CLIP if clip is None else None
        schedule = session.timeline
        if schedule is not None:
            self.base = [(e.chunk, e.prompt, e.transition) for e in schedule.events]
            self.prompt: Optional[str] = schedule.in_force(self.first_chunk).prompt
            self.blocked = {e.chunk for e in schedule.events} | {self.first_chunk}
        else:
            self.prompt = _graph_prompt(graph, node)
            self.base = [(0, self.prompt, "none")] if self.prompt else []
            self.blocked = set()
        self.changes: list[dict] = []
        self.stopped = False
        """The stream ended early at the panel's Stop."""
        self._lock = threading.Lock()
        self._resume = threading.Event()
        self._resume.set()
        self._stop = self._held = False
        self._pending: deque[tuple[str, str, int]] = deque()       # (text, transition, chunk it applies at)
        self._next = self.first_chunk                              # the next chunk boundary the node reaches
        self._frames = 0
        self._sender = _Sender() if events else None

    # ---- panel side (any thread) --------------------------------------------------------------------------------
    def queue_prompt(self, text: str, transition: str = "recache") -> int:
        """Queue a prompt change; returns the chunk boundary it will apply at."""
        with self._lock:
            if self.hint is not None:
                raise LiveError(409, self.hint)
            if self._stop:
                raise LiveError(409, "the stream is stopping: queue the workflow again to steer a new one")
            if len(self._pending) >= MAX_PENDING:
                raise LiveError(409, f"{MAX_PENDING} prompt changes are already waiting (one applies per chunk): "
                                     "send more once they have applied")
            at = self._boundary(len(self._pending))
            if at > self.last_chunk:
                raise LiveError(409, f"the stream ends with chunk {self.last_chunk}: no chunk boundary is left for "
                                     "a new prompt")
            self._pending.append((text, transition, at))
        self._send_state()
        return at

    def pause(self) -> dict:
        self._resume.clear()
        self._send_state()
        return self.snapshot()

    def resume(self) -> dict:
        self._resume.set()
        self._send_state()
        return self.snapshot()

    def stop(self) -> dict:
        self._stop = True
        self._resume.set()                    # a held stream wakes to stop
        self._send_state()
        return self.snapshot()

    def snapshot(self) -> dict:
        with self._lock:
            return {"running": True, "paused": not self._resume.is_set(), "held": self._held,
                    "stopping": self._stop, "steerable": self.hint is None, "chunk": self._next,
                    "frames": self._frames,
                    "pending": [{"text": t, "transition": tr, "at_chunk": at} for t, tr, at in self._pending],
                    "changes": [dict(c) for c in self.changes]}

    def _boundary(self, k: int) -> int:
        """The chunk boundary of the k-th waiting change (0-based): the k-th free one from the next on."""
        b = self._next
        while True:
            if b not in self.blocked:
                if k == 0:
                    return b
                k -= 1
            b += 1

    # ---- node side (the prompt worker thread) ------------------------------------------------------------------
    def should_stop(self) -> bool:
        """Checked before every chunk: hold while paused (ComfyUI's Cancel still ends it), then stop if asked."""
        if not self._resume.is_set():
            with self._lock:
                self._held = True
            self._send_state()
            while not self._resume.wait(POLL_S):
                if host.interrupted():
                    break
            with self._lock:
                self._held = False
        if self._stop:
            self.stopped = True
            return True
        return host.interrupted()

    def before_chunk(self, chunk: int) -> None:
        """The session's hook, last before chunk `chunk` starts: switch in the next waiting prompt, if it is due."""
        with self._lock:
            due = self._pending and self._pending[0][2] <= chunk and chunk not in self.blocked and not self._stop
            text, transition, _ = self._pending.popleft() if due else (None, None, None)
            self._next = chunk + 1
        if text is None:
            return
        try:
            context = layout.context_from_conditioning(_encode(self.clip, text), self.state.model.text_dim)
        except Exception as e:                                    # noqa: BLE001 (one bad prompt never ends a stream)
            if host.interrupted():
                raise
            log.warning("live prompt %r not applied at chunk %d: %s", text[:60], chunk, e)
            self._emit({"type": "error", "node": self.node, "chunk": chunk, "message": str(e).splitlines()[0]
                        if str(e) else type(e).__name__})
            return
        self.state.prepare()                  # encoding may have made ComfyUI offload the student: load it back
        applied = self.state.session.switch_prompt(context, transition, text)
        change = {"chunk": chunk, "frame": chunk_start_frame(chunk, self.fpb) - self.frame0,
                  "seconds": chunk_start_seconds(chunk, self.fpb), "prompt": text, "transition": applied}
        with self._lock:
            self.changes.append(change)
        self._emit({"type": "change", "node": self.node, **change, "source": "live"})
        self._send_state()

    def delivered(self, frames: int) -> None:
        """Video frames this run has handed out so far."""
        self._frames = frames

    def frames(self, frames: Tensor, start: int) -> None:
        """A piece of this run's video (batch row 0, [T, H, W, 3] on the host) from frame `start` of the run on:
        previewed to the panel (encoded on the sender thread)."""
        if self._sender is not None:
            self._sender.put(lambda: self._frames_event(frames, start))

    def _frames_event(self, frames: Tensor, start: int) -> dict:
        urls, w, h = preview_urls(frames)
        return {"type": "frames", "node": self.node, "chunk": _chunk_of(self.frame0 + start, self.fpb),
                "first": start, "frames": urls, "width": w, "height": h}

    # ---- the record ---------------------------------------------------------------------------------------------
    def timeline_text(self) -> str:
        """The run's prompt timeline (text format, every transition written): the base switches with the live ones
        (a live change at chunk 0 replaces the first prompt). Empty when nothing is known."""
        at = {c: (p, t) for c, p, t in self.base}
        at.update((c["chunk"], (c["prompt"], c["transition"])) for c in self.changes)
        if not at:
            return ""
        text = Timeline(tuple(TimelineEntry(p, seconds=chunk_start_seconds(c, self.fpb), transition=t)
                              for c, (p, t) in sorted(at.items()))).to_text()
        if 0 not in at:
            text = "# the first prompt is not known here: add '0: <the workflow's prompt>' to replay\n" + text
        return text

    # ---- events ---------------------------------------------------------------------------------------------------
    def _emit(self, data: dict) -> None:
        if self._sender is not None:
            self._sender.put(data)

    def _send_state(self) -> None:
        if self._sender is None:
            return
        with self._lock:
            data = {"type": "state", "node": self.node, "paused": not self._resume.is_set(), "held": self._held,
                    "stopping": self._stop, "pending": len(self._pending)}
        host.send_event(EVENT, data)          # straight from the caller: also from the server's loop (never blocks)

    def open(self) -> None:
        h, w = self.state.size
        start = {"type": "start", "node": self.node, "fps": FPS, "width": w, "height": h,
                 "total_frames": self.total_frames, "steerable": self.hint is None, "hint": self.hint,
                 "prompt": self.prompt, "chunk": self.first_chunk, "chunks": self.last_chunk - self.first_chunk + 1}
        prompt_id = host.prompt_id()
        if prompt_id is not None:
            start["prompt_id"] = prompt_id
        self._emit(start)

    def close(self, cancelled: bool) -> None:
        self._emit({"type": "end", "node": self.node, "frames": self._frames, "stopped": self.stopped,
                    "cancelled": cancelled, "timeline": self.timeline_text()})
        if self._sender is not None:
            self._sender.close()


# ---- the registry ----------------------------------------------------------------------------------------------------
_RUNS: dict[str, LiveRun] = {}
_RUNS_LOCK = threading.Lock()
_SERVER: Any = None
"""The PromptServer our routes were added to."""


def get(node: str) -> Optional[LiveRun]:
    with _RUNS_LOCK:
        return _RUNS.get(node)


def enabled() -> bool:
    """Events go out only where the panel can reach the routes: under the ComfyUI server they were added to."""
    return _SERVER is not None and host.prompt_server() is _SERVER


@contextmanager
def running(node: Optional[str], state: StreamState, latent_frames: int, *, clip: Any = None, tts: Any = None,
            graph: Any = None) -> Iterator[LiveRun]:
    """The node's run with its live side: registered under `node` (when given) and hooked into the session between
    chunks for the block; the start / end events around it (under the server)."""
    run = LiveRun(node, state, latent_frames, clip=clip, tts=tts, graph=graph, events=node is not None and enabled())
    session = state.session
    if node is not None:
        with _RUNS_LOCK:
            _RUNS[node] = run
        if tts is None:
            session.before_chunk = run.before_chunk
    cancelled = True
    try:
        run.open()
        yield run
        cancelled = False
    finally:
        session.before_chunk = None
        if node is not None:
            with _RUNS_LOCK:
                if _RUNS.get(node) is run:
                    del _RUNS[node]
        run.close(cancelled)


# ---- routes ----------------------------------------------------------------------------------------------------------
async def _body(request: Any, required: bool) -> dict:
    """The request's JSON object (at most MAX_BODY bytes); {} for an empty body unless `required`."""
    usage = 'send a JSON object: {"text": "a prompt", "transition": "recache"}' if required else "send {} or nothing"
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise LiveError(400, f"the body has {request.content_length} bytes; at most {MAX_BODY} are accepted")
    raw = bytearray()
    while len(raw) <= MAX_BODY:
        piece = await request.content.read(MAX_BODY + 1 - len(raw))
        if not piece:
            break
        raw += piece
    if len(raw) > MAX_BODY:
        raise LiveError(400, f"the body has more than {MAX_BODY} bytes: {usage}")
    if not raw.strip():
        if required:
            raise LiveError(400, f"the body is empty: {usage}")
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise LiveError(400, f"the body is not valid JSON (UTF-8): {usage}") from None
    if not isinstance(data, dict):
        raise LiveError(400, f"the body is a JSON {type(data).__name__}, not an object: {usage}")
    return data


def _running(node: str) -> LiveRun:
    run = get(node)
    if run is None:
        raise LiveError(404, f"no stream is running in node {node}: queue the workflow, then steer it while it "
                             "streams")
    return run


async def handle_state(request: Any) -> dict:
    run = get(check_node(request.match_info.get("node")))
    if run is None:
        return {"running": False, "paused": False, "held": False, "stopping": False, "steerable": False, "chunk": 0,
                "frames": 0, "pending": [], "changes": []}
    return run.snapshot()


async def handle_prompt(request: Any) -> dict:
    node = check_node(request.match_info.get("node"))
    text, transition = prompt_args(await _body(request, required=True))
    return {"ok": True, "at_chunk": _running(node).queue_prompt(text, transition)}


def _action(name: str) -> Callable:
    async def handle(request: Any) -> dict:
        node = check_node(request.match_info.get("node"))
        await _body(request, required=False)
        return {"ok": True, "state": getattr(_running(node), name)()}

    handle.__name__ = f"handle_{name}"
    return handle


def _json_route(fn: Callable) -> Callable:
    """An aiohttp handler around `fn(request) -> dict`: LiveError -> its status and {"error": message}; anything
    else -> 500 with one line (the traceback goes to the log only)."""
    async def route(request: Any) -> Any:
        from aiohttp import web

        try:
            status, data = 200, await fn(request)
        except LiveError as e:
            status, data = e.status, {"error": e.message}
        except Exception as e:                                    # noqa: BLE001
            log.exception("live route %s failed", getattr(request, "path", "?"))
            status, data = 500, {"error": f"internal error ({type(e).__name__}); see the ComfyUI log"}
        return web.json_response(data, status=status)

    route.__name__ = fn.__name__
    return route


ROUTES = [("GET", ROUTE, handle_state), ("POST", ROUTE + "/prompt", handle_prompt),
          *[("POST", f"{ROUTE}/{name}", _action(name)) for name in ("pause", "resume", "stop")]]


def register_routes() -> bool:
    """Add the routes to ComfyUI's server, once per server. Only where ComfyUI's `server` module is already loaded
    (it is, before custom nodes are imported): importing the pack headless imports nothing and adds nothing."""
    global _SERVER
    srv = sys.modules.get("server")
    server = getattr(getattr(srv, "PromptServer", None), "instance", None)
    routes = getattr(server, "routes", None)
    if routes is None or not hasattr(routes, "route"):
        return False
    if _SERVER is not server:
        for method, path, fn in ROUTES:
            routes.route(method, path)(_json_route(fn))
        _SERVER = server
    return True


try:
    register_routes()
except Exception:                                                 # noqa: BLE001 (the nodes work without the panel)
    log.warning("Stream-R1 live routes not registered", exc_info=True)
