"""The pack inside a real ComfyUI server, and its UI workflows in the real frontend (optional).

Runs only when COMFYUI_PATH points at a ComfyUI checkout (0.8.0 is what the workflows target) whose Python
(COMFYUI_PYTHON, default: this interpreter) has ComfyUI's requirements; the browser part also needs Chromium
(CHROMIUM, default `chromium` on PATH) and websocket-client. Example:

    COMFYUI_PATH=/path/to/ComfyUI python -m pytest tests/test_comfyui_server.py

What happens: `main.py --cpu --listen 127.0.0.1 --port <free>` with `--base-directory` a temporary folder
holding custom_nodes/ (this pack linked in, plus a one-node test pack) and models/ (a tiny random student
written by `save_dit_export` in ComfyUI's Wan layout, text_dim 4096, and a tiny random Wan2.1 VAE that the stock
VAELoader detects). The stock umT5 has a fixed XXL size (comfy/text_encoders/umt5_config_xxl.json), far too
big for a CPU test, so the test pack's `StreamR1TestConditioning` stands in for CLIPLoader + CLIPTextEncode:
a seeded [1, 16, 4096] CONDITIONING per prompt text, and `StreamR1TestCLIP` stands in for CLIPLoader where a
node takes the CLIP itself (Stream-R1 Prompt Timeline), encoding the same way. Everything else in the shipped API workflows is run as
shipped, at 64x48 and a few seconds. Every process started here is stopped at the end; nothing listens
beyond 127.0.0.1.
"""
import base64
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI or not Path(COMFYUI, "main.py").is_file(),
                                reason="set COMFYUI_PATH to a ComfyUI checkout to run")
ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
PACK_DIR = "ComfyUI-Stream-R1"
HAVE_WS = importlib.util.find_spec("websocket") is not None
"""websocket-client: with it, the websocket events (chunk events, previews, progress) are checked too."""
TINY_MODEL, TINY_VAE = "tiny_stream_r1.safetensors", "tiny_wan_vae.safetensors"
SIZE = {"width": 64, "height": 48}
SECONDS = {"stream_r1_t2v_5s": 1.0, "stream_r1_30s_to_file": 1.0, "stream_r1_3min_window_sink": 3.0,
           "stream_r1_continue_branch": 1.0, "stream_r1_timeline_3min": 5.0, "stream_r1_resume_stream": 1.0}
"""Seconds per workflow at test size; 3 s = 12 latent frames, past the window of 9, so eviction runs. The
timeline workflow's five prompts move to chunks 0..4 of its 7; the resume workflow continues a 1 s stream."""

TEST_PACK = '''
import hashlib
import torch


class StreamR1TestConditioning:
    """Test stand-in for CLIPLoader(type=wan) + CLIPTextEncode: a seeded umT5-shaped CONDITIONING per text."""
    CATEGORY = "testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True}),
                             "width": ("INT", {"default": 4096, "min": 1, "max": 8192})}}

    def encode(self, text, width):
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return ([[torch.randn(1, 16, width, generator=torch.Generator().manual_seed(seed)), {}]],)


def _cond(text, width=4096):
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return torch.randn(1, 16, width, generator=torch.Generator().manual_seed(seed))


class _TestClip:
    """What Stream-R1 Prompt Timeline calls on a CLIP: tokenize, then encode_from_tokens_scheduled."""

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        return [[_cond(tokens), {}]]


class StreamR1TestCLIP:
    """Test stand-in for CLIPLoader(type=wan): a CLIP that encodes like StreamR1TestConditioning."""
    CATEGORY = "testing"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return (_TestClip(),)


NODE_CLASS_MAPPINGS = {"StreamR1TestConditioning": StreamR1TestConditioning, "StreamR1TestCLIP": StreamR1TestCLIP}
'''


def _build():
    spec = importlib.util.spec_from_file_location("stream_r1_workflows_build_server", WORKFLOWS / "build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_process(proc: subprocess.Popen) -> None:
    """Terminate a child we started (server or browser), killing it if it does not exit in 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Server:
    def __init__(self, base: Path, gpu: bool = False, extra_args: tuple = ()):
        """A ComfyUI process on loopback, on the CPU unless `gpu`. COMFYUI_FRONT_END_ROOT (optional) serves the
        frontend from that folder instead of the comfyui-frontend-package (a host without it can still run the API)."""
        self.base, self.port = base, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / "server.log"
        cmd = [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", *([] if gpu else ["--cpu"]),
               "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", str(base),
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch", *extra_args]
        if os.environ.get("COMFYUI_FRONT_END_ROOT"):
            cmd += ["--front-end-root", os.environ["COMFYUI_FRONT_END_ROOT"]]
        self.proc = subprocess.Popen(cmd, cwd=COMFYUI, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within 120 s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, data: dict):
        req = urllib.request.Request(self.url + path, json.dumps(data).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{path}: HTTP {e.code}: {e.read().decode()[:3000]}") from None

    def run(self, prompt: dict, timeout: float = 300) -> tuple[dict, list]:
        """Queue `prompt`, wait for it; returns (history entry, websocket messages [(type, data)])."""
        client = uuid.uuid4().hex
        messages, done = [], threading.Event()
        ws = None
        try:
            import websocket
            ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client}", timeout=timeout)
        except ImportError:
            pass
        pid = self.post("/prompt", {"prompt": prompt, "client_id": client})["prompt_id"]

        def listen():
            while not done.is_set():
                try:
                    msg = ws.recv()
                except Exception:
                    return
                if isinstance(msg, bytes):
                    messages.append(("binary", msg))
                    continue
                msg = json.loads(msg)
                messages.append((msg["type"], msg["data"]))
                data = msg["data"]
                if msg["type"] in ("execution_success", "execution_error") and data.get("prompt_id") == pid:
                    return

        thread = threading.Thread(target=listen, daemon=True)
        if ws is not None:
            thread.start()
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:        # history is written after execution_success: poll it
                entry = self.get(f"/history/{pid}").get(pid)
                if entry and entry.get("status", {}).get("completed") is not None:
                    if ws is not None:
                        thread.join(5)
                    return entry, messages
                time.sleep(0.3)
            raise AssertionError(f"prompt {pid} did not finish in {timeout} s:\n{self.tail()}")
        finally:
            done.set()
            if ws is not None:
                ws.close()

    def stop(self) -> None:
        _stop_process(self.proc)


@pytest.fixture(scope="module")
def build():
    return _build()


def _base_dir(base: Path, wan, vae_cfg, dtype) -> Path:
    """A ComfyUI base directory: this pack and the test pack in custom_nodes/, a seeded random student `wan`
    (WanConfig) as TINY_MODEL and a random Wan VAE `vae_cfg` as TINY_VAE, in the real layouts."""
    import torch
    from safetensors.torch import save_file

    from stream_r1.checkpoint import save_dit_export
    from stream_r1.config import StreamConfig
    from stream_r1.loaders import random_student
    from stream_r1.vae import WanVAE

    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_DIR).symlink_to(ROOT, target_is_directory=True)
    (base / "custom_nodes" / "stream_r1_test_nodes").mkdir()
    (base / "custom_nodes" / "stream_r1_test_nodes" / "__init__.py").write_text(TEST_PACK)
    save_dit_export(base / "models" / "stream_r1" / TINY_MODEL,
                    random_student(wan, seed=0, dtype=dtype).state_dict(), wan, StreamConfig.stream_r1())
    reward = base / "models" / "stream_r1" / "VideoReward" / "checkpoint-1"   # where the downloader puts it
    reward.mkdir(parents=True)
    torch.save({"rm_head.weight": torch.zeros(1, 4)}, reward / "model.pth")
    torch.manual_seed(0)
    (base / "models" / "vae").mkdir(parents=True)
    save_file({k: v.to(dtype).contiguous() for k, v in WanVAE(vae_cfg).state_dict().items()},
              str(base / "models" / "vae" / TINY_VAE))
    return base


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import torch

    from stream_r1.config import WanConfig
    from stream_r1.vae import VAEConfig

    srv = Server(_base_dir(tmp_path_factory.mktemp("comfyui_base"), WanConfig.tiny_comfy(), VAEConfig.tiny(),
                           torch.float32))
    yield srv
    srv.stop()


def tiny(api: dict, seconds: float, size: dict = SIZE, dtype: str = "fp32") -> dict:
    """A shipped API workflow at test size, with the test conditioning in place of the stock umT5 nodes and a
    prompt timeline moved to chunks 0, 1, 2, ... (its prompts and transitions kept)."""
    from stream_r1.timeline import Timeline

    out = {}
    for nid, node in json.loads(json.dumps(api)).items():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPLoader":
            node = {**node, "class_type": "StreamR1TestCLIP", "inputs": {}}
        elif kind == "StreamR1Timeline":
            tl = Timeline.parse(inputs["timeline"], inputs["default_transition"])
            inputs["timeline"] = "\n".join(f"@{i}{f' [{e.transition}]' if e.transition else ''}: {e.prompt}"
                                           for i, e in enumerate(tl.entries))
        elif kind == "CLIPTextEncode":
            node = {**node, "class_type": "StreamR1TestConditioning", "inputs": {"text": inputs["text"], "width": 4096}}
        elif kind == "VAELoader":
            inputs["vae_name"] = TINY_VAE
        elif kind == "StreamR1ModelLoader":
            inputs.update(model_name=TINY_MODEL, dtype=dtype)
        elif kind in ("StreamR1Generate", "StreamR1GenerateToFile"):
            inputs.update(size, seconds=seconds)
        elif kind == "StreamR1Continue":
            inputs["seconds"] = 1.0
        out[nid] = node
    return out


def generate_node_graph(api: dict) -> dict:
    """`api` with its Stream-R1 Generate to File node replaced by Stream-R1 Generate (same id and inputs,
    keep_state off) -> stock Create Video -> stock Save Video (the next free ids, the same fps and filename
    prefix): the Generate node's own graph, built from the shipped 5-second workflow."""
    out = json.loads(json.dumps(api))
    gen = next(n for n, v in out.items() if v["class_type"] == "StreamR1GenerateToFile")
    inputs = out[gen]["inputs"]
    fps, prefix = inputs.pop("fps"), inputs.pop("filename_prefix")
    links = {k: inputs.pop(k) for k in [k for k, v in inputs.items() if isinstance(v, list)]}
    out[gen] = {"inputs": {**inputs, "keep_state": False, **links}, "class_type": "StreamR1Generate",
                "_meta": {"title": "Stream-R1 Generate"}}
    video, save = (str(max(int(n) for n in out) + i) for i in (1, 2))
    out[video] = {"inputs": {"fps": fps, "images": [gen, 0]}, "class_type": "CreateVideo",
                  "_meta": {"title": "Create Video"}}
    out[save] = {"inputs": {"filename_prefix": prefix, "format": "auto", "codec": "auto", "video": [video, 0]},
                 "class_type": "SaveVideo", "_meta": {"title": "Save Video"}}
    return out


def t2v_5s_generate_node() -> dict:
    """The Generate -> Create Video -> Save Video graph of the shipped 5-second workflow (API format)."""
    return generate_node_graph(json.loads((WORKFLOWS / "api" / "stream_r1_t2v_5s.api.json").read_text()))


def output_file(server: Server, entry: dict, node_id: str) -> Path:
    item = entry["outputs"][node_id]["images"][0]
    assert item["type"] == "output" and entry["outputs"][node_id].get("animated") in ([True], (True,))
    return server.base / "output" / item["subfolder"] / item["filename"]


def frames_of(path: Path) -> np.ndarray:
    from stream_r1.video_io import read_video

    return read_video(path)


def expected_frames(seconds: float) -> int:
    from stream_r1.config import video_frames_for
    from stream_r1.stream import latent_frames_for_seconds

    return video_frames_for(latent_frames_for_seconds(seconds))


# ---- the server ---------------------------------------------------------------------------------------------
def test_the_pack_loads_with_its_templates_and_extension(server):
    log = server.log.read_text(errors="replace")
    assert "IMPORT FAILED" not in "\n".join(line for line in log.splitlines() if PACK_DIR in line)
    templates = server.get("/api/workflow_templates")
    assert sorted(templates[PACK_DIR]) == sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    served = server.get(f"/api/workflow_templates/{PACK_DIR}/stream_r1_t2v_5s.json")
    assert served == json.loads((WORKFLOWS / "stream_r1_t2v_5s.json").read_text())
    for path in WORKFLOWS.glob("*.json"):      # the Templates dialog's thumbnail: <name>.jpg beside the JSON
        thumb = server.get(f"/api/workflow_templates/{PACK_DIR}/{path.stem}.jpg")
        assert thumb == path.with_suffix(".jpg").read_bytes() and thumb[:3] == b"\xff\xd8\xff"
    extensions = server.get("/extensions")
    assert f"/extensions/{PACK_DIR}/stream_r1.js" in extensions
    assert f"/extensions/{PACK_DIR}/lib/stream_state.js" in extensions
    assert f"/extensions/{PACK_DIR}/lib/timeline.js" in extensions
    assert not [e for e in extensions if PACK_DIR in e and "/tests/" in e]


def test_object_info_of_our_nodes_equals_the_export(server, build, monkeypatch):
    live = server.get("/object_info")
    monkeypatch.setenv("STREAM_R1_MODELS", str(server.base / "models"))   # headless file lists = the server's
    pack = build.import_pack()
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        ours = build.export_object_info(cls, name, pack.NODE_DISPLAY_NAME_MAPPINGS[name], f"custom_nodes.{PACK_DIR}")
        theirs = live[name]
        if name == "StreamR1ModelLoader":       # the reward model in models/stream_r1/VideoReward is left out
            assert theirs["input"]["required"]["model_name"][0] == [TINY_MODEL]
        assert theirs == ours, name


def test_recorded_stock_definitions_match_this_server(server, build):
    live, recorded = server.get("/object_info"), build.stock_definitions()
    used = {n["type"] for p in WORKFLOWS.glob("*.json") for n in json.loads(p.read_text())["nodes"]}
    for name in sorted(used & set(recorded)):
        a, b = json.loads(json.dumps(live[name])), json.loads(json.dumps(recorded[name]))
        for d in (a, b):                        # file lists depend on the models folder
            for section in d["input"].values():
                for key in ("clip_name", "vae_name"):
                    if key in section:
                        section[key][0] = []
        assert a == b, name


def saved_state_and_reference(server: Server, resume_api: dict) -> tuple[str, np.ndarray]:
    """Start a 1 s stream (keep_state), save its state with Stream-R1 Save State, and continue the live stream
    by 1 s with the resume workflow's prompt: (state file, the continued frames as saved)."""
    start = tiny(t2v_5s_generate_node(), 1.0)
    gen = next(n for n, v in start.items() if v["class_type"] == "StreamR1Generate")
    start[gen]["inputs"]["keep_state"] = True
    text = next(v["inputs"]["text"] for v in resume_api.values() if v["class_type"] == "CLIPTextEncode")
    start.update({
        "90": {"class_type": "StreamR1SaveState", "inputs": {"state": [gen, 2], "filename_prefix": "stream_r1/state"}},
        "91": {"class_type": "StreamR1TestConditioning", "inputs": {"text": text, "width": 4096}},
        "92": {"class_type": "StreamR1Continue", "inputs": {"state": [gen, 2], "positive": ["91", 0], "seconds": 1.0,
                                                            "keep_state": False}},
        "93": {"class_type": "CreateVideo", "inputs": {"images": ["92", 0], "fps": 16.0}},
        "94": {"class_type": "SaveVideo", "inputs": {"video": ["93", 0], "filename_prefix": "stream_r1/reference",
                                                     "format": "auto", "codec": "auto"}},
    })
    entry, _ = server.run(start)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000] + server.tail()
    return entry["outputs"]["90"]["text"][0], frames_of(output_file(server, entry, "94"))


@pytest.mark.parametrize("name", sorted(SECONDS))
def test_shipped_api_workflow_runs(server, name):
    api = json.loads((WORKFLOWS / "api" / f"{name}.api.json").read_text())
    prompt = tiny(api, SECONDS[name])
    if name == "stream_r1_resume_stream":
        state_file, reference = saved_state_and_reference(server, api)
        load = next(n for n, v in prompt.items() if v["class_type"] == "StreamR1LoadState")
        prompt[load]["inputs"]["state_file"] = state_file
    entry, messages = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000] + server.tail()
    chunks = [d for t, d in messages if t == "stream_r1.chunk"]
    assert bool(chunks) == HAVE_WS

    if name == "stream_r1_continue_branch":
        a, b = (frames_of(output_file(server, entry, n)) for n in ("15", "16"))
        start, added = expected_frames(1.0), expected_frames(1.0) + 3       # 6 more latent frames = 24 frames
        assert a.shape == b.shape == (start + added, SIZE["height"], SIZE["width"], 3)
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff[:start].mean() < 2.0, "both endings start with the same stream"
        assert diff[start:].mean() > 4 * max(diff[:start].mean(), 0.5), "the two prompts give two endings"
        if HAVE_WS:
            by_node = {}
            for d in chunks:
                by_node.setdefault(d["node"], []).append(d)
            assert [d["chunk"] for d in by_node["5"]] == [0, 1]
            for node in ("6", "7"):                          # each Continue goes on from the kept stream
                assert [(d["chunk"], d["chunks_done"], d["chunks"]) for d in by_node[node]] == [(2, 1, 2), (3, 2, 2)]
                assert by_node[node][-1]["frames"] == added
        return

    if name == "stream_r1_resume_stream":
        video = frames_of(output_file(server, entry, "7"))
        assert video.shape == (expected_frames(1.0) + 3, SIZE["height"], SIZE["width"], 3)   # 6 latent = 24 frames
        assert np.abs(video.astype(int) - reference.astype(int)).mean() < 0.5, \
            "continuing the loaded state gives the frames of continuing the live stream"
        assert entry["outputs"]["11"]["images"], "the drift telemetry plot"
        if HAVE_WS:
            assert [(d["chunk"], d["chunks_done"]) for d in chunks] == [(2, 1), (3, 2)]
        return

    check_streamed_video(server, api, entry, messages, SECONDS[name])


def test_the_generate_node_graph_runs(server):
    """Stream-R1 Generate -> Create Video -> Save Video (the 5-second workflow's Generate node graph) streams and
    saves the video as the shipped workflows do."""
    api = tiny(t2v_5s_generate_node(), 1.0)
    entry, messages = server.run(api)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000] + server.tail()
    check_streamed_video(server, api, entry, messages, 1.0)


def check_streamed_video(server: Server, api: dict, entry: dict, messages: list, seconds: float) -> None:
    """One stream of `seconds` at test size ran: its saved video (Save Video or Generate to File) has the frames,
    and (with websocket-client) a chunk event, a preview and progress came per chunk."""
    save = next(n for n, v in api.items() if v["class_type"] in ("SaveVideo", "StreamR1GenerateToFile"))
    video = frames_of(output_file(server, entry, save))
    assert video.shape == (expected_frames(seconds), SIZE["height"], SIZE["width"], 3)
    assert video.std() > 1.0, "a random model still draws something, not a flat frame"
    if HAVE_WS:
        from stream_r1.stream import latent_frames_for_seconds

        chunks = [d for t, d in messages if t == "stream_r1.chunk"]
        n = latent_frames_for_seconds(seconds) // 3
        assert [d["chunks_done"] for d in chunks] == list(range(1, n + 1))
        assert chunks[-1]["frames"] == video.shape[0] and all(d["fps"] > 0 for d in chunks)
        assert len([m for t, m in messages if t == "binary"]) >= n, "a preview image per chunk"
        assert any(t == "progress" and d["max"] == n for t, d in messages)


@pytest.mark.skipif(not __import__("stream_r1.shapes.bundle", fromlist=["available"]).available(),
                    reason="no shapes-world bundle in stream_r1/shapes/bundle/")
def test_the_shapes_world_workflow_runs_on_the_shipped_bundle(server):
    """The shipped shapes-world API workflow, unchanged, in real ComfyUI on the CPU: the bundle's model through a
    three-prompt timeline for 20 s, saved as a video, plus the bundle reward's saliency view. Every prompt of its
    timeline asks for a black background, and the checker reads one in every segment."""
    import torch

    from stream_r1.shapes import check

    api = json.loads((WORKFLOWS / "api" / "shapes_world_no_download.api.json").read_text())
    entry, _ = server.run(api)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000] + server.tail()
    video = frames_of(output_file(server, entry, "7"))
    assert video.shape == (321, 96, 96, 3)
    prompts = [ln.split(":", 1)[1].strip() for ln in api["2"]["inputs"]["timeline"].splitlines()
               if ln and not ln.startswith("#")]
    for seg, prompt in zip(np.array_split(np.arange(video.shape[0]), 3), prompts):
        clip = torch.from_numpy(video[seg]).permute(0, 3, 1, 2).float() / 255      # [T, 3, H, W]
        assert check(clip, prompt)["background_score"] == 1.0, prompt
    saliency = frames_of(output_file(server, entry, "11"))
    assert saliency.shape[0] > 0 and saliency.std() > 1.0
    assert entry["outputs"]["12"]["images"], "the saliency preview images"


def test_a_bad_request_fails_with_a_clear_message(server):
    api = tiny(t2v_5s_generate_node(), 1.0)
    api["5"]["inputs"]["height"] = 40                          # allowed by the widget step? no: 40 is not 16k
    req = urllib.request.Request(server.url + "/prompt", json.dumps({"prompt": api}).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            pid = json.loads(r.read())["prompt_id"]
    except urllib.error.HTTPError as e:                        # rejected at validation: fine too
        assert "height" in e.read().decode()
        return
    for _ in range(200):
        entry = server.get(f"/history/{pid}").get(pid)
        if entry and entry["status"].get("completed") is not None:
            break
        time.sleep(0.3)
    assert entry["status"]["status_str"] == "error"
    error = next(d for t, d in entry["status"]["messages"] if t == "execution_error")
    assert error["node_type"] == "StreamR1Generate" and "multiple of 16" in error["exception_message"]


# ---- the real frontend in headless Chromium ----------------------------------------------------------------------
class Chromium:
    """Headless Chromium driven over the DevTools protocol (websocket-client), bound to 127.0.0.1."""

    def __init__(self, binary: str, profile: Path, size=(1800, 1000)):
        import websocket

        self.profile = profile
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--window-size={size[0]},{size[1]}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=open(profile.parent / "chromium.log", "w"))
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not start")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
        self.n, self.events = 0, []

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(json.dumps(r["exceptionDetails"])[:3000])
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                value = self.js(expression)
                if value:
                    return value
            except RuntimeError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {expression}")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self):
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        _stop_process(self.proc)


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    binary = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        pytest.skip("no Chromium (set CHROMIUM or install Debian's chromium)")
    pytest.importorskip("websocket")
    b = Chromium(binary, tmp_path_factory.mktemp("chromium") / "profile")
    try:
        b.call("Page.enable")
        b.call("Runtime.enable")
        b.call("Page.navigate", url=server.url + "/")
        b.wait_for("!!(window.app && window.app.graph && (app.extensions || []).some(e => e.name === "
                   "'StreamR1.LivePreview'))", timeout=90)
        b.js("(async () => { const s = app.extensionManager.setting;"      # no first-run templates, no model dialog
             " await s.set('Comfy.TutorialCompleted', true);"
             " await s.set('Comfy.Workflow.ShowMissingModelsWarning', false); })()")
        yield b
    finally:
        b.close()


def screenshot_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("STREAM_R1_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.json")), ids=lambda p: p.stem)
def test_frontend_loads_the_ui_workflow_as_written_and_prompts_the_api_twin(browser, path):
    ui = json.loads(path.read_text())
    got = browser.js(f"(async () => {{ await app.loadGraphData({json.dumps(ui)}, true, true, {json.dumps(path.name)});"
                     " const p = await app.graphToPrompt(); return {ser: app.graph.serialize(), output: p.output}; })()")
    assert got["output"] == json.loads((WORKFLOWS / "api" / f"{path.stem}.api.json").read_text())
    ours = {n["id"]: n for n in ui["nodes"]}
    for node in got["ser"]["nodes"]:        # the frontend's own serialisation of what it loaded equals the file
        mine = ours[node["id"]]
        for key in ("type", "inputs", "outputs", "widgets_values", "properties", "title", "mode", "size", "pos"):
            assert node.get(key) == mine.get(key), f"{path.name} node {node['id']} {key}"
    assert got["ser"]["links"] == ui["links"] and got["ser"]["groups"] == ui["groups"]


def test_timeline_bar_on_the_timeline_node(browser, tmp_path):
    """The 3-minute timeline workflow: the bar under the text shows five segments up to the stream's end, follows
    edits of the text and the length of the connected stream, and shows the parser's error."""
    ui = json.loads((WORKFLOWS / "stream_r1_timeline_3min.json").read_text())
    browser.js(f"(async () => {{ await app.loadGraphData({json.dumps(ui)}, true, true, 'stream_r1_timeline_3min'); }})()")
    browser.js("document.querySelectorAll('.p-dialog-mask').forEach(d => d.remove())")
    seg = "document.querySelectorAll('.stream-r1-timeline-segment')"
    assert browser.wait_for(f"{seg}.length === 5", timeout=30)
    got = browser.js(f"""(() => {{ const segs = [...{seg}];
      return {{ widths: segs.map(s => parseFloat(s.style.width)), transitions: segs.map(s => s.dataset.transition),
               marks: [...document.querySelectorAll('.stream-r1-timeline-mark')].map(m => m.textContent),
               info: document.querySelector('.stream-r1-timeline-info').textContent,
               serialized: app.graph.serialize().nodes.find(n => n.id === 2).widgets_values }}; }})()""")
    assert got["transitions"] == ["recache", "recache", "none", "recache", "flush"]
    assert got["marks"] == ["↻", "→", "↻", "✂"]
    assert abs(sum(got["widths"]) - 100) < 0.01 and 19 < got["widths"][1] < 21     # 36 s of 179.8 s
    assert "240 chunks" in got["info"], got["info"]
    assert got["serialized"] == ui["nodes"][[n["id"] for n in ui["nodes"]].index(2)]["widgets_values"]
    out = screenshot_dir(tmp_path)
    browser.screenshot(out / "stream_r1_timeline_bar.png")

    # typing in the text re-renders at once; a shorter stream downstream turns a late entry into an error
    browser.js("""(() => { const w = app.graph.getNodeById(2).widgets.find(w => w.name === 'timeline');
      w.inputEl.value = w.inputEl.value + '2:50 [none]: the moon sets'; w.value = w.inputEl.value;
      w.inputEl.dispatchEvent(new Event('input')); })()""")
    assert browser.wait_for(f"{seg}.length === 6", timeout=10)
    browser.js("(() => { app.graph.getNodeById(5).widgets.find(w => w.name === 'seconds').value = 60;"
               " app.graph.setDirtyCanvas(true, true); })()")
    error = browser.wait_for("document.querySelector('.stream-r1-timeline').dataset.error", timeout=10)
    assert error.startswith("timeline entry 3 (72 s) is beyond the stream: it has 80 chunks"), error
    browser.screenshot(out / "stream_r1_timeline_error.png")


def test_live_preview_counter_and_error_on_the_node(browser, server, tmp_path):
    """Load the shipped 5 s workflow (Stream-R1 Generate to File, the same status panel as Generate), swap the umT5
    nodes for the test conditioning at test size, queue it from the page."""
    ui = json.loads((WORKFLOWS / "stream_r1_t2v_5s.json").read_text())
    browser.js(f"(async () => {{ await app.loadGraphData({json.dumps(ui)}, true, true, 'stream_r1_t2v_5s'); }})()")
    browser.js("""(async () => {
      const g = app.graph, gen = g.getNodeById(5), prompt = g.getNodeById(2);
      const cond = LiteGraph.createNode("StreamR1TestConditioning");
      cond.pos = [...prompt.pos]; g.add(cond);
      cond.widgets.find(w => w.name === "text").value = prompt.widgets[0].value;
      cond.connect(0, gen, gen.findInputSlot("positive"));
      g.remove(g.getNodeById(1)); g.remove(prompt);
      const set = (n, name, v) => { g.getNodeById(n).widgets.find(w => w.name === name).value = v; };
      set(3, "vae_name", "%s"); set(4, "model_name", "%s"); set(4, "dtype", "fp32");
      set(5, "width", 64); set(5, "height", 48); set(5, "seconds", 5);
      await app.queuePrompt(0, 1);
    })()""" % (TINY_VAE, TINY_MODEL))
    line = browser.wait_for("(() => { const t = document.querySelector('.stream-r1-status-line')?.textContent;"
                            " return t && /^(done|error)/.test(t) ? t : null; })()", timeout=180)
    assert line.startswith("done: 7 chunks · 81 frames (5.1 s)"), line
    thumbs = browser.js("document.querySelectorAll('.stream-r1-status img[src^=\"blob:\"]').length")
    assert thumbs >= 7, "the newest frame and six chunk thumbnails"
    out = screenshot_dir(tmp_path)
    browser.js("document.querySelectorAll('.p-dialog-mask').forEach(d => d.remove())")
    browser.screenshot(out / "stream_r1_live_preview.png")

    browser.js("(async () => { const g = app.graph; g.getNodeById(5).widgets.find(w => w.name === 'height').value = 40;"
               " await app.queuePrompt(0, 1); })()")
    error = browser.wait_for("(() => { const e = document.querySelector('.stream-r1-error');"
                             " return e && e.style.display !== 'none' ? e.textContent : null; })()", timeout=120)
    assert "multiple of 16" in error, error
    browser.js("document.querySelectorAll('.p-dialog-mask').forEach(d => d.remove())")   # the frontend's own dialog
    browser.screenshot(out / "stream_r1_error.png")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_twenty_consecutive_runs_keep_memory_flat(server):
    """Twenty generations (Stream-R1 Generate -> Create Video -> Save Video) in one ComfyUI process (new seed each,
    so nothing is served from the cache):
    resident memory after the last equals that after the fifth within noise (CPU here; VRAM on a GPU host)."""
    api = tiny(t2v_5s_generate_node(), 1.0)
    gen = next(n for n, v in api.items() if v["class_type"] == "StreamR1Generate")
    rss = []
    for i in range(20):
        api[gen]["inputs"]["seed"] = 1000 + i
        entry, _ = server.run(api)
        assert entry["status"]["status_str"] == "success", server.tail()
        rss.append(_rss_mb(server.proc.pid))
    assert rss[-1] - rss[4] < 40, f"RSS grew from {rss[4]:.0f} MB (run 5) to {rss[-1]:.0f} MB (run 20): {rss}"


def _vram_mib(server: Server) -> dict:
    """The server's own view of its CUDA memory (/system_stats, ComfyUI's model_management figures)."""
    d = server.get("/system_stats")["devices"][0]
    assert d["type"] == "cuda", d
    return {"allocated": (d["torch_vram_total"] - d["torch_vram_free"]) / 2**20,
            "reserved": d["torch_vram_total"] / 2**20, "device_used": (d["vram_total"] - d["vram_free"]) / 2**20}


@pytest.mark.gpu
def test_twenty_runs_at_real_size_keep_vram_flat(tmp_path_factory):
    """Flat memory over repeated runs on a GPU host, at real size: a seeded random 1.3B student (bf16) and a random real
    Wan2.1 VAE in a ComfyUI process on CUDA, the 5-second workflow's Generate node graph at 832x480 for 3 s (12 latent
    frames, past the window of 9, so the cache evicts), twenty times with new seeds. Memory allocated by torch (as ComfyUI reports it)
    and resident RAM after run 20 equal those after run 5 within noise. Writes the series to $COMFYUI_MEM_JSON if set."""
    import torch

    from stream_r1.config import WanConfig
    from stream_r1.vae import VAEConfig

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    base = _base_dir(tmp_path_factory.mktemp("comfyui_gpu"), WanConfig.wan_1_3b(), VAEConfig.wan21(), torch.bfloat16)
    server = Server(base, gpu=True)
    try:
        api = tiny(t2v_5s_generate_node(), 3.0, size={"width": 832, "height": 480}, dtype="bf16")
        gen = next(n for n, v in api.items() if v["class_type"] == "StreamR1Generate")
        series = []
        for i in range(20):
            api[gen]["inputs"]["seed"] = 2000 + i
            t0 = time.time()
            entry, _ = server.run(api, timeout=600)
            assert entry["status"]["status_str"] == "success", server.tail()
            series.append({"run": i + 1, "seconds": round(time.time() - t0, 2), "rss_mib": round(_rss_mb(server.proc.pid), 1),
                           **{k: round(v, 1) for k, v in _vram_mib(server).items()}})
        if os.environ.get("COMFYUI_MEM_JSON"):
            Path(os.environ["COMFYUI_MEM_JSON"]).write_text(json.dumps(
                {"device": torch.cuda.get_device_name(0), "comfyui": COMFYUI, "runs": series}, indent=1))
        a, b = series[4], series[-1]
        assert b["allocated"] - a["allocated"] < 64, f"torch-allocated VRAM grew: {series}"
        assert b["reserved"] - a["reserved"] < 512, f"reserved VRAM grew: {series}"
        assert b["rss_mib"] - a["rss_mib"] < 200, f"RSS grew: {series}"
    finally:
        server.stop()


def test_every_open_tab_gets_the_live_stream(server):
    """A second browser tab (another websocket client, not the one that queued the prompt) receives the same live
    events: start, every chunk's compact previews, end. ComfyUI broadcasts a send_sync without a client id."""
    websocket = pytest.importorskip("websocket")
    api = tiny(t2v_5s_generate_node(), 1.0)
    watcher = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={uuid.uuid4().hex}", timeout=120)
    seen: list = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            try:
                msg = watcher.recv()
            except Exception:
                return
            if isinstance(msg, str):
                m = json.loads(msg)
                if m["type"] == "stream_r1.live":
                    seen.append(m["data"])
                    if m["data"]["type"] == "end":
                        return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        entry, messages = server.run(api)
        assert entry["status"]["status_str"] == "success", server.tail()
        thread.join(timeout=30)
    finally:
        done.set()
        watcher.close()
    mine = [d for t, d in messages if t == "stream_r1.live"]
    kinds = [d["type"] for d in seen]
    assert kinds[0] == "start" and kinds[-1] == "end" and "frames" in kinds, kinds
    assert kinds == [d["type"] for d in mine]                                   # the same events, in the same order
    frames = [f for d in seen if d["type"] == "frames" for f in d["frames"]]
    assert len(frames) == seen[-1]["frames"] == 21                             # 1 s at 16 fps: 21 frames
    assert all(f.startswith("data:image/jpeg;base64,") for f in frames)
