"""ComfyUI live (nodes/live.py): the panel pauses, stops and re-prompts a running stream between chunks.

Tiny model on the CPU with ComfyUI's modules stubbed (tests/comfy_stubs.py) and our routes on an aiohttp app; the
node runs on the test's thread or, where the test talks to it meanwhile, on a thread of its own (as ComfyUI's prompt
worker). Actions "between chunks" are taken from the node's own `stream_r1.chunk` event, so they are deterministic.
"""
import asyncio
import base64
import io
import sys
import threading
import time
import zlib

import pytest
import torch

import comfy_stubs as stubs
from stream_r1.video_io import read_video
from test_nodes import SIZE, imported_pack, model, models, run, vae  # noqa: F401 (model, models, vae: fixtures)

web = pytest.importorskip("aiohttp.web")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

PACK = "custom_nodes_x_stream_r1_live_test"
FIVE_CHUNKS = 57                                     # 1 + 4 * (15 - 1) video frames = 5 chunks of 3 latent frames
GRAPH = {"7": {"class_type": "StreamR1Generate", "inputs": {"positive": ["3", 0]}},
         "8": {"class_type": "StreamR1Continue", "inputs": {"positive": ["3", 0]}},
         "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["1", 0]}}}


class FakeCLIP:
    """CLIPTextEncode's interface (tokenize + encode_from_tokens_scheduled); records the thread of each call."""

    def __init__(self):
        self.calls = []

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        self.calls.append((tokens, threading.current_thread().name))
        c = torch.zeros(1, 16, 32)
        c[:, :9] = torch.randn(1, 9, 32, generator=torch.Generator().manual_seed(zlib.crc32(tokens.encode())))
        return [[c, {"pooled_output": None}]]


@pytest.fixture(scope="module")
def pack():
    yield from imported_pack(PACK)


@pytest.fixture
def live(pack):
    return sys.modules[PACK + ".nodes.live"]


@pytest.fixture
def comfy(pack, live, models, tmp_path, monkeypatch):
    """ComfyUI's modules stubbed, with a server that has routes (as ComfyUI's PromptServer) and ours on it."""
    rec = stubs.Recorder()
    for name, mod in stubs.build(models, tmp_path / "output", rec).items():
        monkeypatch.setitem(sys.modules, name, mod)
    server = sys.modules["server"].PromptServer.instance
    server.routes = web.RouteTableDef()
    assert live.register_routes() and live.enabled()
    rec.server = server
    return rec


@pytest.fixture
def nodes(pack):
    return pack.NODE_CLASS_MAPPINGS


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def generate(nodes, model, clip=None, **kw):
    args = dict(positive=encode(FakeCLIP(), "a red fox"), **SIZE, seconds=0, frames=33, seed=3, keep_state=False,
                vae=None, options=None, clip=clip, unique_id="7", prompt=GRAPH)
    return run(nodes["StreamR1Generate"], model=model, **{**args, **kw})


def live_events(rec, kind):
    return [d for e, d in rec.events if e == "stream_r1.live" and d["type"] == kind]


def on_chunk(rec, act):
    """Call act(chunk index) on the node's thread right after each `stream_r1.chunk` event (between chunks)."""
    send = rec.server.send_sync

    def hooked(event, data, sid=None):
        send(event, data, sid)
        if event == "stream_r1.chunk":
            act(data["chunk"])

    rec.server.send_sync = hooked


def off_chunk(rec):
    rec.server.__dict__.pop("send_sync", None)


def http(routes, *requests):
    """[(status, JSON)] of (method, path, kwargs) requests to an app with `routes`, in order."""
    async def go():
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            out = []
            for method, path, kw in requests:
                resp = await client.request(method, path, **kw)
                out.append((resp.status, await resp.json()))
            return out

    return asyncio.run(go())


class NodeThread(threading.Thread):
    """The node on a thread of its own (ComfyUI's prompt worker), so the test can talk to it while it streams."""

    def __init__(self, fn):
        super().__init__(name="prompt-worker", daemon=True)
        self.fn, self.result, self.error = fn, None, None

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as e:                   # noqa: BLE001 (re-raised by finish)
            self.error = e

    def finish(self, timeout=120):
        self.join(timeout)
        assert not self.is_alive(), "the node did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def wait_for(cond, timeout=60.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def one_line_error(status, body, want):
    assert status == want, (status, body)
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]


# ---- steering --------------------------------------------------------------------------------------------------------
def test_live_changes_land_at_the_next_boundary_and_the_timeline_replays_them(comfy, nodes, model, live):
    clip, promised = FakeCLIP(), {}

    def steer(chunk):
        if chunk == 0:
            promised["b"] = live.get("7").queue_prompt("the fox runs", "recache")
        if chunk == 2:
            promised["c"] = live.get("7").queue_prompt("the fox rests", "flush")

    on_chunk(comfy, steer)
    images, latent, state, timeline = generate(nodes, model, clip, frames=FIVE_CHUNKS, keep_state=True)
    assert promised == {"b": 1, "c": 3}                                     # the next boundary, as answered
    switches = [(w["chunk"], w["action"], w["prompt"]) for w in state.session.switches if "prompt" in w]
    assert switches == [(1, "prompt:recache", "the fox runs"), (3, "prompt:flush", "the fox rests")]
    assert timeline == "0 [none]: a red fox\n0.5625 [recache]: the fox runs\n2.0625 [flush]: the fox rests"
    assert [t for t, _ in clip.calls] == ["the fox runs", "the fox rests"]
    assert {name for _, name in clip.calls} == {threading.current_thread().name}     # encoded on the node's thread
    changes = live_events(comfy, "change")
    assert [(c["chunk"], c["frame"], c["seconds"], c["prompt"], c["transition"], c["source"]) for c in changes] == [
        (1, 9, 0.5625, "the fox runs", "recache", "live"), (3, 33, 2.0625, "the fox rests", "flush", "live")]
    (end,) = live_events(comfy, "end")
    assert end == {"type": "end", "node": "7", "frames": FIVE_CHUNKS, "stopped": False, "cancelled": False,
                   "timeline": timeline}
    assert live.get("7") is None                                            # unregistered with the run
    off_chunk(comfy)

    # replay: the saved workflow with the recorded timeline in Stream-R1 Prompt Timeline, no live machinery
    positive, _ = run(nodes["StreamR1Timeline"], clip=clip, timeline=timeline, default_transition="none")
    _, latent2, state2, timeline2 = generate(nodes, model, positive=positive, frames=FIVE_CHUNKS, keep_state=True,
                                             unique_id=None, prompt=None)
    assert torch.equal(latent2["samples"], latent["samples"])
    assert [(w["chunk"], w["action"], w["prompt"]) for w in state2.session.switches
            if "prompt" in w and w["chunk"] > 0] == switches
    assert timeline2 == timeline                                            # a timeline run records its timeline
    state.release()
    state2.release()


def test_continue_records_whole_stream_times_and_replays(comfy, nodes, model, live):
    clip = FakeCLIP()
    _, _, state, _ = generate(nodes, model, frames=9, keep_state=True, unique_id=None)          # chunk 0
    on_chunk(comfy, lambda chunk: live.get("8").queue_prompt("the fox turns", "none") if chunk == 1 else None)
    more = dict(state=state, positive=encode(clip, "a red fox"), seconds=2.25, keep_state=False)   # chunks 1-3
    _, latent, _, timeline = run(nodes["StreamR1Continue"], **more, clip=clip, unique_id="8", prompt=GRAPH)
    assert timeline == "0 [none]: a red fox\n1.3125 [none]: the fox turns"                 # chunk 2 of the stream
    off_chunk(comfy)
    positive, _ = run(nodes["StreamR1Timeline"], clip=clip, timeline=timeline, default_transition="recache")
    _, replay, _, _ = run(nodes["StreamR1Continue"], **{**more, "positive": positive})
    assert torch.equal(replay["samples"], latent["samples"])
    state.release()


def test_a_run_without_changes_is_identical_and_previews_each_piece(comfy, nodes, model, vae, live):
    plain, plain_latent, _, plain_timeline = generate(nodes, model, vae=vae, unique_id=None, prompt=None)
    assert plain_timeline == "" and not live_events(comfy, "start")          # no node id: no live side at all
    images, latent, _, timeline = generate(nodes, model, FakeCLIP(), vae=vae)
    assert torch.equal(images, plain) and torch.equal(latent["samples"], plain_latent["samples"])
    assert timeline == "0 [none]: a red fox"
    (start,) = live_events(comfy, "start")
    assert start == {"type": "start", "node": "7", "fps": 16, "width": 32, "height": 32, "total_frames": 33,
                     "steerable": True, "hint": None, "prompt": "a red fox", "chunk": 0, "chunks": 3}
    shown = live_events(comfy, "frames")
    assert [(f["chunk"], f["first"], len(f["frames"]), f["width"], f["height"]) for f in shown] == [
        (0, 0, 9, 32, 32), (1, 9, 12, 32, 32), (2, 21, 12, 32, 32)]
    from PIL import Image
    url = shown[1]["frames"][0]
    assert url.startswith("data:image/jpeg;base64,")
    jpeg = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert jpeg.format == "JPEG" and jpeg.size == (32, 32)
    assert [d["type"] for e, d in comfy.events if e == "stream_r1.live"] == ["start"] + ["frames"] * 3 + ["end"]


def test_previews_are_compact(live):
    urls, w, h = live.preview_urls(torch.rand(2, 480, 832, 3))
    assert (w, h) == (416, 240) and len(urls) == 2
    from PIL import Image
    img = Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
    assert img.size == (416, 240) and len(urls[0]) < 60_000
    urls, w, h = live.preview_urls(torch.randint(0, 255, (1, 240, 320, 3), dtype=torch.uint8))   # the file's frames
    assert (w, h) == (320, 240)


# ---- pause, resume, stop ---------------------------------------------------------------------------------------------
def thread_cpu(t):
    return time.clock_gettime(time.pthread_getcpuclockid(t.ident))


def test_pause_holds_without_burning_cpu_and_resume_goes_on(comfy, nodes, model, live):
    clip = FakeCLIP()
    on_chunk(comfy, lambda chunk: live.get("7").pause() if chunk == 0 else None)
    node = NodeThread(lambda: generate(nodes, model, clip))                  # 3 chunks
    node.start()
    wait_for(lambda: live.get("7") is not None and live.get("7").snapshot()["held"])
    chunks = len([e for e, _ in comfy.events if e == "stream_r1.chunk"])
    before = thread_cpu(node)
    time.sleep(1.0)
    assert thread_cpu(node) - before < 0.05                                 # waiting on an Event, not spinning
    assert len([e for e, _ in comfy.events if e == "stream_r1.chunk"]) == chunks == 1
    routes, url = comfy.server.routes, "/stream_r1/live/7"
    (s1, b1), (s2, b2), (s3, b3), (s4, b4), (s5, b5) = http(
        routes, ("POST", url + "/prompt", {"json": {"text": "  the fox runs "}}),
        ("POST", url + "/prompt", {"json": {"text": "the fox rests", "transition": "flush"}}),
        ("POST", url + "/prompt", {"json": {"text": "one too many"}}),
        ("GET", url, {}), ("POST", url + "/resume", {}))
    assert (s1, b1) == (200, {"ok": True, "at_chunk": 1}) and (s2, b2) == (200, {"ok": True, "at_chunk": 2})
    one_line_error(s3, b3, 409)
    assert "no chunk boundary is left" in b3["error"]                       # the stream has chunks 0-2
    assert s4 == 200 and b4["running"] and b4["paused"] and b4["held"] and b4["chunk"] == 1 and b4["frames"] == 9
    assert b4["pending"] == [{"text": "the fox runs", "transition": "recache", "at_chunk": 1},
                             {"text": "the fox rests", "transition": "flush", "at_chunk": 2}]
    assert s5 == 200 and b5["ok"] and not b5["state"]["paused"]
    images, _, _, timeline = node.finish()
    assert images.shape[0] == 1 and timeline == "0 [none]: a red fox\n0.5625 [recache]: the fox runs\n" \
                                                "1.3125 [flush]: the fox rests"
    assert {name for _, name in clip.calls} == {"prompt-worker"}             # encoded on the node's thread
    states = live_events(comfy, "state")
    assert any(s["paused"] and s["held"] for s in states) and states[-1]["pending"] == 0
    assert http(routes, ("GET", url, {}))[0] == (200, {"running": False, "paused": False, "held": False,
                                                       "stopping": False, "steerable": False, "chunk": 0, "frames": 0,
                                                       "pending": [], "changes": []})


def test_stop_returns_the_frames_so_far(comfy, nodes, model, vae, live):
    on_chunk(comfy, lambda chunk: live.get("7").stop() if chunk == 1 else None)
    images, latent, _, _ = generate(nodes, model, vae=vae, frames=FIVE_CHUNKS)
    assert images.shape == (21, 32, 32, 3) and latent["samples"].shape[2] == 6        # chunks 0 and 1
    (end,) = live_events(comfy, "end")
    assert end["stopped"] and not end["cancelled"] and end["frames"] == 21


def test_stop_finishes_a_playable_file(comfy, nodes, model, vae, live):
    on_chunk(comfy, lambda chunk: live.get("5").stop() if chunk == 1 else None)
    result = run(nodes["StreamR1GenerateToFile"], model=model, positive=encode(FakeCLIP(), "a red fox"), vae=vae,
                 **SIZE, seconds=0, frames=FIVE_CHUNKS, seed=3, filename_prefix="stopped", fps=16.0, unique_id="5")
    path, video, timeline = result["result"]
    assert read_video(path).shape == (21, 32, 32, 3) and video.file == path
    assert timeline == ""                                                    # no graph: the first prompt unknown
    (end,) = live_events(comfy, "end")
    assert end["stopped"] and end["frames"] == 21
    assert [f["first"] for f in live_events(comfy, "frames")] == [0, 9]


def test_cancel_while_paused_ends_the_stream(comfy, nodes, model, live):
    def pause_then_cancel(chunk):
        if chunk == 0:
            live.get("7").pause()
            threading.Timer(0.2, lambda: setattr(comfy, "interrupted", True)).start()

    on_chunk(comfy, pause_then_cancel)
    with pytest.raises(sys.modules["comfy.model_management"].InterruptProcessingException):
        generate(nodes, model)
    (end,) = live_events(comfy, "end")
    assert end["cancelled"] and end["frames"] == 9 and live.get("7") is None


# ---- routes ----------------------------------------------------------------------------------------------------------
def test_routes_refuse_bad_input_with_one_line(comfy, nodes, model, live):
    on_chunk(comfy, lambda chunk: live.get("7").pause() if chunk == 0 else None)
    node = NodeThread(lambda: generate(nodes, model))                       # no clip: pause and stop only
    node.start()
    wait_for(lambda: live.get("7") is not None and live.get("7").snapshot()["held"])
    url = "/stream_r1/live/7"
    bad = [("POST", url + "/prompt", {"data": "not json"}),
           ("POST", url + "/prompt", {"data": b"\xff\xfe"}),
           ("POST", url + "/prompt", {}),
           ("POST", url + "/prompt", {"json": ["a list"]}),
           ("POST", url + "/prompt", {"json": {"text": ""}}),
           ("POST", url + "/prompt", {"json": {"text": "   "}}),
           ("POST", url + "/prompt", {"json": {"text": 5}}),
           ("POST", url + "/prompt", {"json": {"text": "two\nlines"}}),
           ("POST", url + "/prompt", {"json": {"text": "a\u2028b"}}),
           ("POST", url + "/prompt", {"json": {"text": "x" * 2001}}),
           ("POST", url + "/prompt", {"json": {"text": "b", "transition": "fade"}}),
           ("POST", url + "/prompt", {"json": {"text": "b", "transition": 1}}),
           ("POST", url + "/prompt", {"json": {"text": "b", "seed": 1}}),
           ("POST", url + "/prompt", {"data": "{" + " " * 17_000 + "}"}),
           ("POST", url + "/prompt", {"data": "[" * 10_000 + "]" * 10_000}),
           ("POST", url + "/pause", {"json": [1]}),
           ("POST", "/stream_r1/live/a%20b/pause", {}),
           ("GET", "/stream_r1/live/" + "x" * 65, {}),
           ("POST", "/stream_r1/live/%3Cscript%3E/stop", {})]
    missing = [("POST", "/stream_r1/live/9/prompt", {"json": {"text": "b"}}),
               *[("POST", f"/stream_r1/live/9/{a}", {}) for a in ("pause", "resume", "stop")]]
    replies = http(comfy.server.routes, *bad, *missing, ("POST", url + "/prompt", {"json": {"text": "b"}}),
                   ("GET", "/stream_r1/live/9", {}), ("POST", url + "/pause", {"json": {}}),
                   ("POST", url + "/stop", {}))
    for (status, body), req in zip(replies, bad):
        one_line_error(status, body, 400)
    for status, body in replies[len(bad):len(bad) + len(missing)]:
        one_line_error(status, body, 404)
    (s_clip, b_clip), (s_get, b_get), (s_pause, b_pause), (s_stop, b_stop) = replies[len(bad) + len(missing):]
    one_line_error(s_clip, b_clip, 409)
    assert b_clip["error"] == "connect the workflow's CLIP (text encoder) to the node's clip input to steer it live"
    assert s_get == 200 and b_get["running"] is False
    assert s_pause == 200 and b_pause["state"]["paused"] and not b_pause["state"]["steerable"]
    assert s_stop == 200 and b_stop["state"]["stopping"] and not b_stop["state"]["paused"]
    images, _, _, _ = node.finish()
    assert images.shape[0] == 1                                             # no VAE: the placeholder frame
    assert live_events(comfy, "end")[0]["frames"] == 9 and live_events(comfy, "end")[0]["stopped"]


# ---- headless --------------------------------------------------------------------------------------------------------
def test_without_the_server_nothing_is_sent_and_no_thread_starts(pack, live, models, vae, tmp_path, monkeypatch):
    assert "server" not in sys.modules and live.register_routes() is False      # headless: nothing to add to
    rec = stubs.Recorder()
    for name, mod in stubs.build(models, tmp_path / "output", rec).items():
        monkeypatch.setitem(sys.modules, name, mod)                          # a server without our routes
    assert not live.enabled()
    nodes = pack.NODE_CLASS_MAPPINGS
    model = run(nodes["StreamR1ModelLoader"], model_name="tiny_stream_r1.safetensors", dtype="fp32",
                attention="sdpa", entry="auto")[0]
    seen, rec.server = [], sys.modules["server"].PromptServer.instance
    on_chunk(rec, lambda chunk: seen.append([t.name for t in threading.enumerate()]))
    generate(nodes, model, vae=vae)
    assert {e for e, _ in rec.events} == {"stream_r1.chunk"}
    assert seen and not any("stream_r1-live" in names for names in seen)
