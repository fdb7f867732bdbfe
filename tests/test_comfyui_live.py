"""ComfyUI live, end to end: the Generate node's panel steers a running stream in real ComfyUI and its frontend.

The shipped shapes-world workflow (Stream-R1 Shapes Demo Loader: the embedded student, VAE and umT5, on the CPU, no
downloads) is loaded into the real frontend in headless Chromium, with its prompt timeline replaced by a plain CLIP
Text Encode (one prompt), so the live changes are the only switches, and the loader's CLIP wired to the Generate
node's `clip` input. From the page:

1. Steer: queue it, and once chunks play, type two prompts of other colours into the panel's steering box (a real
   key press of Enter), recache then flush, a few chunks apart. Each applies at the chunk boundary after its send
   (the `change` events, the server's reply, the `timeline` output in /history and the `end` event's timeline all
   say the same), and the saved video switches colour there (the shapes checker's colour measure, per range and
   around each boundary). Meanwhile the player plays at 16 fps (its counter over 2 s) and a screenshot of the panel
   with its change marks is taken.
2. Stop: a second run, stopped with the panel's Stop button mid-run, ends early, succeeds, and its file decodes.

Runs only with COMFYUI_PATH (a ComfyUI 0.8.0 checkout), Chromium and websocket-client, and the shapes bundle in
stream_r1/shapes/bundle/ (as tests/test_comfyui_server.py); `browser` is that file's fixture, on this file's
`server`. Where the server's torchvision is an empty stub (ComfyUI 0.8.0 needs the module to start), a shim with the
two names transformers imports takes its place for the server (see `_torchvision_shim`). The screenshot goes to
$STREAM_R1_SCREENSHOTS (default: the test's temporary folder) as comfyui_live_steer.jpg.
"""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from test_comfyui_server import (COMFYUI, WORKFLOWS, Server, _base_dir, browser, frames_of,  # noqa: F401 (browser)
                                 output_file, screenshot_dir)

pytestmark = [
    pytest.mark.skipif(not COMFYUI or not Path(COMFYUI, "main.py").is_file(),
                       reason="set COMFYUI_PATH to a ComfyUI checkout to run"),
    pytest.mark.skipif(not __import__("stream_r1.shapes.bundle", fromlist=["available"]).available(),
                       reason="no shapes-world bundle in stream_r1/shapes/bundle/"),
]

GEN, SAVE = 5, 7                                   # node ids in workflows/shapes_world_no_download.json
RED, BLUE, GREEN = (f"a {c} circle moving right on a black background" for c in ("red", "blue", "green"))
SECONDS, CHUNKS = 15.0, 20                         # 15 s at 16 fps, rounded to whole chunks
FPB = 3                                            # latent frames per chunk of the shapes student
ASKED = 1 + 4 * (CHUNKS * FPB - 1)                 # 237 video frames at 96x96
LAG = 5
"""Most chunks between the newest chunk the page had when a prompt was sent and the boundary it applied at: the
stream runs one chunk ahead of its previews, and on a busy 2-core machine the previews may trail a little more."""


# ---- the server --------------------------------------------------------------------------------------------------
SHIM = {
    "__init__.py": '__version__ = "0.0"\nfrom . import io, models, ops, transforms\n',
    "transforms/__init__.py": '''
        import enum

        from . import functional


        class InterpolationMode(enum.Enum):
            NEAREST = "nearest"
            NEAREST_EXACT = "nearest-exact"
            BILINEAR = "bilinear"
            BICUBIC = "bicubic"
            BOX = "box"
            HAMMING = "hamming"
            LANCZOS = "lanczos"


        def __getattr__(name):
            raise AttributeError(name)
        ''',
    "transforms/functional.py": '''
        def pil_to_tensor(pic):
            raise NotImplementedError("torchvision test shim")


        def __getattr__(name):
            raise AttributeError(name)
        ''',
    **{f"{m}/__init__.py": "def __getattr__(name):\n    raise AttributeError(name)\n" for m in ("io", "models", "ops")},
}


def _torchvision_shim(folder: Path):
    """A folder to put first on the server's PYTHONPATH, or None. ComfyUI 0.8.0 imports torchvision at start, so a
    host without it runs ComfyUI with a stub; transformers then finds "torchvision" and imports
    `torchvision.transforms.InterpolationMode` (image_utils, reached from modeling_utils), so the shapes bundle's
    umT5 (transformers' UMT5EncoderModel) cannot load. Where the torchvision found is such a stub, this shim takes its
    place: the same empty modules, plus the two names transformers imports at module level."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    probe = "import torchvision, torchvision.transforms as t; t.InterpolationMode; t.functional.pil_to_tensor"
    if subprocess.run([python, "-c", probe], capture_output=True).returncode == 0:
        return None                                                           # a real torchvision
    if subprocess.run([python, "-c", "import torchvision"], capture_output=True).returncode != 0:
        return None                                                           # none at all: ComfyUI says so
    for name, text in SHIM.items():
        path = folder / "torchvision" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """ComfyUI on the CPU with this pack (the shapes bundle inside it); the other file's tiny models are there too."""
    import torch

    from stream_r1.config import WanConfig
    from stream_r1.vae import VAEConfig

    base = _base_dir(tmp_path_factory.mktemp("comfyui_live"), WanConfig.tiny_comfy(), VAEConfig.tiny(),
                     torch.float32)
    shim = _torchvision_shim(tmp_path_factory.mktemp("torchvision_shim"))
    with pytest.MonkeyPatch.context() as mp:
        if shim is not None:
            mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")])))
        srv = Server(base)
    yield srv
    srv.stop()


# ---- the page ----------------------------------------------------------------------------------------------------
SETUP = """(async () => {
  const api = window.comfyAPI?.api?.api ?? app.api;
  if (!window.__live) {            // the live events (without the preview images) and the panel's live requests
    window.__live = [];
    window.__replies = [];
    api.addEventListener("stream_r1.live", ({ detail }) => {
      const images = Array.isArray(detail.frames);                      // a `frames` event: keep the count only
      window.__live.push({ ...detail, ...(images ? { frames: undefined, n: detail.frames.length } : {}),
                           t: performance.now() });
    });
    api.addEventListener("stream_r1.chunk", ({ detail }) => {             // the node's own count and fps
      window.__live.push({ ...detail, type: "chunk", t: performance.now() });
    });
    const fetchApi = api.fetchApi.bind(api);
    api.fetchApi = async (route, options) => {
      const r = await fetchApi(route, options);
      if (String(route).startsWith("/stream_r1/live/")) {
        const body = await r.clone().json().catch(() => null);
        window.__replies.push({ route: String(route), status: r.status, body, t: performance.now() });
      }
      return r;
    };
  }
  await app.loadGraphData(%(ui)s, true, true, "shapes_world_no_download");
  document.querySelectorAll(".p-dialog-mask").forEach((d) => d.remove());
  const g = app.graph, gen = g.getNodeById(%(gen)d), loader = g.getNodeById(1), timeline = g.getNodeById(2);
  const clipOut = loader.findOutputSlot("clip");
  const encode = LiteGraph.createNode("CLIPTextEncode");
  encode.pos = [...timeline.pos];
  g.add(encode);
  encode.widgets.find((w) => w.name === "text").value = %(red)s;
  loader.connect(clipOut, encode, encode.findInputSlot("clip"));
  encode.connect(0, gen, gen.findInputSlot("positive"));
  g.remove(timeline);
  for (const id of [9, 10, 11, 12]) g.remove(g.getNodeById(id));       // the saliency view: not under test
  const clipIn = gen.findInputSlot("clip");
  const shippedClip = gen.inputs[clipIn].link != null;
  if (!shippedClip) loader.connect(clipOut, gen, clipIn);
  const show = LiteGraph.createNode("PreviewAny");                      // the timeline output, into /history
  show.pos = [gen.pos[0], gen.pos[1] + gen.size[1] + 60];
  g.add(show);
  gen.connect(gen.findOutputSlot("timeline"), show, 0);
  gen.widgets.find((w) => w.name === "seconds").value = %(seconds)s;
  gen.setSize([560, gen.size[1]]);
  for (const [i, n] of [g.getNodeById(6), g.getNodeById(%(save)d), show].entries()) {   // out of the screenshot
    n.pos = [gen.pos[0] + gen.size[0] + 600, gen.pos[1] + 300 * i];
  }
  const ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect(), title = LiteGraph.NODE_TITLE_HEIGHT;
  ds.scale = Math.min(1, (r.height - 140) / (gen.size[1] + title));    // the whole node in view, below the menus
  ds.offset = [(120 - r.left) / ds.scale - gen.pos[0], (100 - r.top) / ds.scale - gen.pos[1] + title];
  app.canvas.setDirty(true, true);
  return { shippedClip, show: show.id, size: [...gen.size], scale: ds.scale };
})()"""


def _setup(browser) -> dict:
    ui = json.loads((WORKFLOWS / "shapes_world_no_download.json").read_text())
    return browser.js(SETUP % {"ui": json.dumps(ui), "gen": GEN, "save": SAVE, "red": json.dumps(RED),
                               "seconds": SECONDS})


def _queue(browser, seed: int) -> str:
    """Queue the graph from the page with `seed`; returns the prompt id (from the run's `start` event)."""
    browser.js(f"""(async () => {{ window.__live.length = 0; window.__replies.length = 0;
      app.graph.getNodeById({GEN}).widgets.find((w) => w.name === "seed").value = {seed};
      await app.queuePrompt(0, 1); }})()""")
    return browser.wait_for(f"window.__live.find((e) => e.type === 'start' && e.node === '{GEN}')?.prompt_id",
                            timeout=120)


def _events(browser, kind: str) -> list:
    return browser.js(f"window.__live.filter((e) => e.type === '{kind}')")


def _newest_chunk(browser) -> int:
    return browser.js("Math.max(-1, ...window.__live.filter((e) => e.type === 'frames').map((e) => e.chunk))")


def _wait_chunk(browser, chunk: int, timeout: float = 120) -> None:
    browser.wait_for(f"window.__live.some((e) => e.type === 'frames' && e.chunk >= {chunk})", timeout=timeout)


def _steer(browser, text: str, transition: str) -> int:
    """Type `text` into the panel's steering box, choose `transition`, press Enter (real key events). Returns the
    newest chunk the page had seen just before the key press."""
    browser.js(f"""(() => {{ const row = document.querySelector('.stream-r1-steer');
      const select = row.querySelector('select');
      select.value = {json.dumps(transition)};
      select.dispatchEvent(new Event('change', {{ bubbles: true }}));
      const input = row.querySelector('input');
      input.value = '';
      input.focus(); }})()""")
    browser.call("Input.insertText", text=text)
    seen = _newest_chunk(browser)
    key = dict(key="Enter", code="Enter", windowsVirtualKeyCode=13, nativeVirtualKeyCode=13)
    browser.call("Input.dispatchKeyEvent", type="keyDown", text="\r", **key)
    browser.call("Input.dispatchKeyEvent", type="keyUp", **key)
    return seen


def _wait_history(server: Server, prompt_id: str, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(0.3)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s:\n{server.tail()}")


def _player_rate(browser, seconds: float = 2.0) -> dict:
    """Sample the node's player (its clock and the drawn counter) every 50 ms for `seconds`. When the playhead is
    less than 2.5 s behind the newest frame (chunks arriving at or below 16 fps), scrub back first with the panel's
    scrub bar (a real pointer press), so the playback runs free for the whole window."""
    lead = browser.js(f"""(() => {{ const p = window.StreamR1Live.players.get('{GEN}');
      return p.end - 1 - p.counter(performance.now()).index; }})()""")
    scrubbed = lead < 40
    if scrubbed:
        r = browser.js("(() => { const r = document.querySelector('.stream-r1-scrub').getBoundingClientRect();"
                       " return [r.left + 2, r.top + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            browser.call("Input.dispatchMouseEvent", type=kind, x=r[0], y=r[1], button="left", clickCount=1)
    got = browser.js(f"""(async () => {{ const p = window.StreamR1Live.players.get('{GEN}');
      const counter = document.querySelector('.stream-r1-frame-counter');
      const out = [];
      const t0 = performance.now(), arrived = p.end;
      while (performance.now() - t0 < {seconds * 1000}) {{
        const now = performance.now(), c = p.counter(now);
        out.push([now, c.index, c.received, parseInt(counter.textContent.split(' ')[1], 10)]);
        await new Promise((r) => setTimeout(r, 50));
      }}
      return {{ out, arrival: (p.end - arrived) / ((performance.now() - t0) / 1000) }}; }})()""")
    s = np.array(got["out"], dtype=float)                                 # [n, (ms, index, received, drawn)]
    dt = (s[-1, 0] - s[0, 0]) / 1000
    return {"fps": (s[-1, 1] - s[0, 1]) / dt, "drawn_fps": (s[-1, 3] - s[0, 3]) / dt, "lead_before": lead,
            "arrival_fps": round(got["arrival"], 1),
            "scrubbed": scrubbed, "min_lead": float((s[:, 2] - 1 - s[:, 1]).min()), "samples": len(s)}


def _screenshot(browser, path: Path) -> int:
    """The Generate node from its title to just below its panel (the progress line), as a JPEG of at most
    150 kB. Returns its size in bytes."""
    import base64

    clip = browser.js(f"""(() => {{ const n = app.graph.getNodeById({GEN}), ds = app.canvas.ds;
      const r = app.canvas.canvas.getBoundingClientRect(), title = LiteGraph.NODE_TITLE_HEIGHT;
      const panel = document.querySelector('.stream-r1-status').getBoundingClientRect();
      const x = (n.pos[0] + ds.offset[0]) * ds.scale + r.left - 8;
      const y = (n.pos[1] - title + ds.offset[1]) * ds.scale + r.top - 8;
      return {{ x, y, width: n.size[0] * ds.scale + 16, height: panel.bottom + 48 - y, scale: 1 }}; }})()""")
    for quality in (85, 70, 55):
        data = base64.b64decode(browser.call("Page.captureScreenshot", format="jpeg", quality=quality,
                                             clip=clip)["data"])
        if len(data) < 150_000:
            break
    path.write_bytes(data)
    return len(data)


# ---- the colour measure ------------------------------------------------------------------------------------------
def _dominant(feats: dict, start: int, end: int) -> str:
    """The palette colour covering most of frames [start, end) (the checker's eroded core area, per colour)."""
    from stream_r1.shapes.prompts import COLORS

    return list(COLORS)[int(feats["core"][start:end].mean(0).argmax())]              # analyze's colour order


# ---- the tests -------------------------------------------------------------------------------------------------
def test_steering_from_the_panel_switches_the_video_at_the_next_chunk_boundaries(browser, server, tmp_path):
    from stream_r1.shapes.check import analyze, check
    from stream_r1.timeline import Timeline, chunk_start_frame

    got = _setup(browser)
    t_queue = time.time()
    prompt_id = _queue(browser, seed=42)
    _wait_chunk(browser, 1)

    sends = []
    for text, transition in ((BLUE, "recache"), (GREEN, "flush")):
        if sends:                                          # a few chunks after the previous change applied
            _wait_chunk(browser, sends[-1]["change"]["chunk"] + 2)
        seen = _steer(browser, text, transition)
        change = browser.wait_for(f"window.__live.find((e) => e.type === 'change' && e.prompt === {json.dumps(text)})",
                                  timeout=60)
        reply = browser.js(f"window.__replies.filter((r) => r.route.endsWith('/prompt'))[{len(sends)}]")
        sends.append({"seen": seen, "change": change, "reply": reply, "transition": transition, "text": text})

    _wait_chunk(browser, sends[-1]["change"]["chunk"] + 1)
    marks = browser.wait_for("(() => { const m = document.querySelectorAll('.stream-r1-change-mark');"
                             " return m.length === 2 ? [...m].map((x) => +x.dataset.frame) : null; })()", timeout=10)
    shot = screenshot_dir(tmp_path) / "comfyui_live_steer.jpg"
    shot_bytes = _screenshot(browser, shot)
    player = _player_rate(browser)

    entry = _wait_history(server, prompt_id)
    wall = time.time() - t_queue
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000] + server.tail()
    end = _events(browser, "end")[-1]
    stream_fps = _events(browser, "chunk")[-1]["fps"]                      # video frames per second of the run

    # each change applied at the boundary the server promised, after what the page had seen when it was sent
    for s in sends:
        c = s["change"]
        assert s["reply"]["status"] == 200 and s["reply"]["body"]["at_chunk"] == c["chunk"], s
        assert s["seen"] < c["chunk"] <= s["seen"] + LAG, s
        assert c["transition"] == s["transition"] and c["source"] == "live"
        assert c["frame"] == chunk_start_frame(c["chunk"], FPB) and c["seconds"] == c["frame"] / 16
    c1, c2 = (s["change"]["chunk"] for s in sends)
    assert c2 >= c1 + 2
    assert marks == [chunk_start_frame(c1, FPB), chunk_start_frame(c2, FPB)]

    # the record: the timeline output (in /history) equals the end event's, and replays the same switches
    text = entry["outputs"][str(got["show"])]["text"][0]
    assert text == end["timeline"] and not end["stopped"] and not end["cancelled"] and end["frames"] == ASKED
    events = [(e.chunk, e.prompt, e.transition) for e in Timeline.parse(text).events(FPB, CHUNKS)]
    assert events == [(0, RED, "none"), (c1, BLUE, "recache"), (c2, GREEN, "flush")], text

    # the saved video switches colour at those boundaries
    video = frames_of(output_file(server, entry, str(SAVE)))
    assert video.shape == (ASKED, 96, 96, 3)
    feats = analyze(video)
    b1, b2 = chunk_start_frame(c1, FPB), chunk_start_frame(c2, FPB)
    ranges = [(0, b1, RED), (b1, b2, BLUE), (b2, ASKED, GREEN)]
    scores = {(a, p2): check(None, p2, a, b, feats=feats)["color_score"] for a, b, _ in ranges
              for p2 in (RED, BLUE, GREEN)}
    for a, b, p in ranges:
        others = [scores[(a, q)] for q in (RED, BLUE, GREEN) if q != p]
        assert scores[(a, p)] == 1.0 and max(others) < 1.0, (a, b, p, scores)
    around = [(_dominant(feats, max(0, b - 12), b), _dominant(feats, b + 12, b + 24)) for b in (b1, b2)]
    assert around == [("red", "blue"), ("blue", "green")], around

    # the player plays at the video's 16 fps, free of the stream's arrival
    assert player["min_lead"] > 0 and 14 <= player["fps"] <= 18, player
    assert 14 <= player["drawn_fps"] <= 18, player
    assert shot_bytes < 150_000
    print(json.dumps({"shipped_clip_link": got["shippedClip"], "stream_fps": round(stream_fps, 1),
                      "arrival_fps_at_sampling": player["arrival_fps"],
                      "wall_s": round(wall, 1), "player": player,
                      "sends": [{k: s[k] for k in ("seen", "transition")} | {"chunk": s["change"]["chunk"]}
                                for s in sends],
                      "boundaries": [b1, b2], "around": around,
                      "scores": {f"{a}:{p.split()[1]}": v for (a, p), v in scores.items()},
                      "screenshot": [str(shot), shot_bytes]}))


def test_stop_from_the_panel_ends_the_run_early_with_a_playable_file(browser, server):
    import av

    from stream_r1.timeline import Timeline

    got = _setup(browser)
    prompt_id = _queue(browser, seed=7)
    _wait_chunk(browser, 2)
    seen = _newest_chunk(browser)
    r = browser.js("(() => { const b = document.querySelector('.stream-r1-stop'), r = b.getBoundingClientRect();"
                   " const x = r.left + r.width / 2, y = r.top + r.height / 2;"
                   " return [x, y, document.elementFromPoint(x, y) === b, b.disabled]; })()")
    assert r[2] and not r[3], "the Stop button is on top and enabled"
    for kind in ("mousePressed", "mouseReleased"):
        browser.call("Input.dispatchMouseEvent", type=kind, x=r[0], y=r[1], button="left", clickCount=1)

    entry = _wait_history(server, prompt_id)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000] + server.tail()
    end = _events(browser, "end")[-1]
    assert end["stopped"] and not end["cancelled"] and 9 <= end["frames"] < ASKED, end
    chunks = 1 + (end["frames"] - 9) // 12
    assert (end["frames"] - 9) % 12 == 0 and chunks <= seen + 1 + LAG, ("stopped at a boundary soon after", seen, end)
    text = entry["outputs"][str(got["show"])]["text"][0]
    assert text == end["timeline"] and [(e.chunk, e.prompt) for e in Timeline.parse(text).events(FPB)] == [(0, RED)]
    path = output_file(server, entry, str(SAVE))
    with av.open(str(path)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == end["frames"], (decoded, end)
    assert frames_of(path).shape == (end["frames"], 96, 96, 3)
    line = browser.wait_for("(() => { const t = document.querySelector('.stream-r1-steer-info')?.textContent;"
                            " return t && t.includes('stopped by the user') ? t : null; })()", timeout=10)
    print(json.dumps({"seen_at_click": seen, "stopped_at_frames": end["frames"], "chunks": chunks, "asked": ASKED,
                      "panel": line}))



def test_the_player_stays_smooth_with_832x480_previews_arriving_twice_as_fast(browser, server):
    """The panel at the product's real size and speed, without a GPU: the 5-second workflow loaded in the real
    frontend, then the events a 832x480 stream sends at 34 FPS (compact previews: 416x240 JPEGs, 12 per chunk,
    a chunk every 12/34 s) dispatched on the page's own api. The drawn frame counter advances at 16 +/- 2 fps and
    never stalls: no gap between drawn frames over 3 frame periods (188 ms)."""
    import base64
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    urls = []
    for i in range(24):                                   # textured frames: JPEGs of a realistic size (~20 kB)
        x = np.linspace(0, 1, 416)[None, :, None] * 255 * np.array([1.0, 0.6, 0.3]) * (0.5 + i / 48)
        img = np.clip(x + rng.normal(0, 18, (240, 416, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=75)
        urls.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    ui = json.loads((WORKFLOWS / "stream_r1_t2v_5s.json").read_text())
    node = next(n["id"] for n in ui["nodes"] if n["type"] == "StreamR1GenerateToFile")
    got = browser.js(f"""(async () => {{
      await app.loadGraphData({json.dumps(ui)}, true, true, "stream_r1_t2v_5s");
      document.querySelectorAll(".p-dialog-mask").forEach((d) => d.remove());
      const api = window.comfyAPI?.api?.api ?? app.api, urls = {json.dumps(urls)}, node = "{node}";
      const send = (detail) => api.dispatchEvent(new CustomEvent("stream_r1.live", {{ detail: {{ node, ...detail }} }}));
      send({{ type: "start", fps: 16, width: 832, height: 480, total_frames: 241, steerable: true, prompt: "x",
              chunk: 0, chunks: 20 }});
      const t0 = performance.now();
      for (let c = 0; c < 20; c++) {{                      // 34 video frames per second arrive
        setTimeout(() => send({{ type: "frames", chunk: c, first: c * 12, width: 416, height: 240,
          frames: Array.from({{ length: c === 0 ? 13 : 12 }}, (_, i) => urls[(c * 12 + i) % urls.length]) }}),
          (c * 12 / 34) * 1000);
      }}
      const counter = () => parseInt(document.querySelector(".stream-r1-frame-counter")?.textContent
                                        .split(" ")[1] ?? "-1", 10);
      const seen = [];                                    // [ms, drawn frame] at every animation frame
      await new Promise((done) => {{
        const tick = (now) => {{ seen.push([now - t0, counter()]); now - t0 < 4500 ? requestAnimationFrame(tick) : done(); }};
        requestAnimationFrame(tick);
      }});
      return seen;
    }})()""")
    s = np.array(got, dtype=float)                        # [n, (ms, frame)]
    window = s[(s[:, 0] >= 1500) & (s[:, 0] <= 4500)]     # after the start buffer, while frames still arrive
    fps = (window[-1, 1] - window[0, 1]) / ((window[-1, 0] - window[0, 0]) / 1000)
    changes = window[np.flatnonzero(np.diff(window[:, 1])) + 1, 0]
    gap = float(np.diff(changes).max())
    assert 14.0 <= fps <= 18.0, f"player at {fps:.2f} fps"
    assert gap <= 188, f"a {gap:.0f} ms stall between drawn frames"
    assert np.all(np.diff(window[:, 1]) >= 0), "frames drawn out of order"
