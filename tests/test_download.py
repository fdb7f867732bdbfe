"""`python -m stream_r1 download` against a fake Hugging Face hub on 127.0.0.1 (never the internet).

The fake hub answers the calls huggingface_hub makes: `POST /api/models/<repo>/paths-info/<rev>`,
`GET /api/models/<repo>/tree/<rev>` and `HEAD`/`GET /<repo>/resolve/<rev>/<path>` (with Range). It can cut a
file short (an interrupted download) and serve wrong bytes (a corrupted one). HF_HUB_OFFLINE is lifted only
for calls that go to it, through HF_ENDPOINT.
"""
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from stream_r1 import download as dl
from stream_r1.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _blob(seed: int, size: int) -> bytes:
    out, h = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[:size])


REPOS = {   # repo -> {path: (content, is_lfs)}
    "FrameX-AI/Stream-R1": {"Stream-R1-T2V-1.3B/stream_r1.pt": (_blob(1, 300_001), True),
                            "README.md": (b"# Stream-R1\n", False)},
    "Comfy-Org/Wan_2.1_ComfyUI_repackaged": {
        "split_files/vae/wan_2.1_vae.safetensors": (_blob(2, 120_000), True),
        "split_files/text_encoders/umt5_xxl_fp16.safetensors": (_blob(3, 250_000), True),
        "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors": (_blob(4, 1000), True)},
    "KlingTeam/VideoReward": {".gitattributes": (b"*.pth filter=lfs\n", False),
                              "model_config.json": (b'{"inference_config": {}}\n', False),
                              "checkpoint-11352/model.pth": (_blob(5, 200_000), True),
                              "checkpoint-11352/tokenizer/tokenizer_config.json": (b"{}\n", False)},
}


def _meta(path: str, content: bytes, lfs: bool) -> dict:
    entry = {"type": "file", "path": path, "size": len(content),
             "oid": hashlib.sha1(f"blob {len(content)}\0".encode() + content).hexdigest()}
    if lfs:
        entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
    return entry


class FakeHub:
    """A thread serving `repos` (default REPOS). `cut_at[path] = n`: stop sending after byte n and drop the
    connection (once); `refuse_ranges`: answer 503 to Range requests (the network is gone); `corrupt`: paths served
    with flipped bytes. `requests` records (method, path, Range header)."""

    def __init__(self, repos: dict | None = None):
        self.repos = REPOS if repos is None else repos
        self.cut_at, self.corrupt, self.requests, self.refuse_ranges = {}, set(), [], False
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10                          # a stuck client never holds a server thread for long

            def log_message(self, *args):
                pass

            def _json(self, data, status=200):
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _repo_api(self, parts):          # api/models/<org>/<name>/<verb>/<rev>[/...]
                return "/".join(parts[2:4]), parts[4]

            def do_POST(self):
                parts = unquote(urlparse(self.path).path).strip("/").split("/")
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                hub.requests.append(("POST", self.path, None))
                repo, verb = self._repo_api(parts)
                if verb != "paths-info" or repo not in hub.repos:
                    return self._json({"error": "not found"}, 404)
                wanted = parse_qs(body).get("paths", [])
                self._json([_meta(p, *hub.repos[repo][p]) for p in wanted if p in hub.repos[repo]])

            def do_GET(self):
                self._resolve(send_body=True)

            def do_HEAD(self):
                self._resolve(send_body=False)

            def _resolve(self, send_body):
                url = urlparse(self.path)
                parts = unquote(url.path).strip("/").split("/")
                hub.requests.append((self.command, url.path, self.headers.get("Range")))
                if parts[:2] == ["api", "models"]:
                    repo, verb = self._repo_api(parts)
                    if verb != "tree" or repo not in hub.repos:
                        return self._json({"error": "not found"}, 404)
                    entries = [_meta(p, *v) for p, v in sorted(hub.repos[repo].items())]
                    folders = sorted({p.rsplit("/", 1)[0] for p in hub.repos[repo] if "/" in p})
                    return self._json(entries + [{"type": "directory", "path": f, "oid": "0" * 40} for f in folders])
                repo, path = "/".join(parts[:2]), "/".join(parts[4:])
                if len(parts) < 5 or parts[2] != "resolve" or path not in hub.repos.get(repo, {}):
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                content, lfs = hub.repos[repo][path]
                meta = _meta(path, content, lfs)
                etag = meta["lfs"]["oid"] if lfs else meta["oid"]
                if path in hub.corrupt:
                    content = bytes(b ^ 0xFF for b in content)
                start = 0
                rng = self.headers.get("Range")
                if rng and send_body:
                    if hub.refuse_ranges:
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        return self.end_headers()
                    start = int(rng.split("=")[1].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                if lfs:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(content)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(content) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                self.end_headers()
                if not send_body:
                    return
                stop = min(len(content), hub.cut_at.pop(path, len(content)))
                if start < stop:
                    self.wfile.write(content[start:stop])
                if stop < len(content):               # an interrupted transfer: drop the connection
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def gets(self, path_part: str) -> list:
        return [r for r in self.requests if r[0] == "GET" and path_part in r[1] and "/resolve/" in r[1]]


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants as constants

    fake = FakeHub()
    fake.thread.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)                # only this loopback server is reachable
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 50_000)   # written to disk in 50 kB pieces
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def comfyui(tmp_path):
    (tmp_path / "ComfyUI" / "models").mkdir(parents=True)
    return tmp_path / "ComfyUI"


def _pack_host():
    """nodes/host.py of the pack, imported by path as ComfyUI imports packs (`nodes` is ComfyUI's own name)."""
    import importlib
    import importlib.util

    name = "custom_nodes_x_stream_r1_download_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return importlib.import_module(name + ".nodes.host")


def content(repo: str, path: str) -> bytes:
    return REPOS[repo][path][0]


def test_list_prints_every_file_and_its_comfyui_folder_without_network(comfyui, capsys):
    assert main(["download", "--comfyui", str(comfyui), "--list"]) == 0
    out = capsys.readouterr().out
    models = comfyui / "models"
    for line in (f"-> {models / 'stream_r1' / 'stream_r1.pt'}", f"-> {models / 'vae' / 'wan_2.1_vae.safetensors'}",
                 f"-> {models / 'text_encoders' / 'umt5_xxl_fp16.safetensors'}",
                 f"-> {models / 'stream_r1' / 'VideoReward'}", "FrameX-AI/Stream-R1/Stream-R1-T2V-1.3B/stream_r1.pt",
                 "KlingTeam/VideoReward (whole repository)"):
        assert line in out
    assert out.count("[missing]") == 4
    assert main(["download", "--dir", str(models), "--list", "--only", "vae"]) == 0
    assert capsys.readouterr().out.count("->") == 1


def test_bad_arguments_say_what_to_change(tmp_path, capsys):
    assert main(["download", "--dir", str(tmp_path), "--list", "--only", "vae,bogus"]) == 2
    assert "unknown release 'bogus'" in capsys.readouterr().err
    assert main(["download", "--comfyui", str(tmp_path / "nowhere"), "--list"]) == 2
    assert "has no models/ folder" in capsys.readouterr().err


def test_refuses_to_download_while_offline(comfyui, capsys):
    import huggingface_hub.constants as constants

    assert constants.HF_HUB_OFFLINE       # the test session's setting (conftest)
    assert main(["download", "--comfyui", str(comfyui), "--only", "vae"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_downloads_every_release_into_comfyui_folders_verified(hub, comfyui, capsys):
    assert main(["download", "--comfyui", str(comfyui)]) == 0
    m = comfyui / "models"
    assert (m / "stream_r1" / "stream_r1.pt").read_bytes() == content("FrameX-AI/Stream-R1",
                                                                      "Stream-R1-T2V-1.3B/stream_r1.pt")
    repack = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"
    assert (m / "vae" / "wan_2.1_vae.safetensors").read_bytes() == content(repack, "split_files/vae/wan_2.1_vae.safetensors")
    assert (m / "text_encoders" / "umt5_xxl_fp16.safetensors").read_bytes() == \
        content(repack, "split_files/text_encoders/umt5_xxl_fp16.safetensors")
    vr = m / "stream_r1" / "VideoReward"
    files = sorted(p.relative_to(vr).as_posix() for p in vr.rglob("*") if p.is_file())
    assert files == ["checkpoint-11352/model.pth", "checkpoint-11352/tokenizer/tokenizer_config.json",
                     "model_config.json"]                      # .gitattributes skipped
    assert (vr / "checkpoint-11352" / "model.pth").read_bytes() == content("KlingTeam/VideoReward",
                                                                          "checkpoint-11352/model.pth")
    assert not (m / dl.STAGING).exists()                        # nothing partial left behind
    assert not (m / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors").exists()   # only what is listed
    out = capsys.readouterr().out
    assert out.count("downloaded") == 6 and "verified: sha256" in out and "verified: git blob id" in out

    host = _pack_host()                                         # what Stream-R1 Load Model then offers
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STREAM_R1_MODELS", str(m))
        assert host.model_files() == ["stream_r1.pt"]           # not VideoReward/checkpoint-*/model.pth

    hub.requests.clear()                                        # a second run keeps what is there
    assert main(["download", "--comfyui", str(comfyui)]) == 0
    assert not hub.gets("/resolve/") and capsys.readouterr().out.count("kept") == 6


def test_an_interrupted_download_resumes_where_it_stopped(hub, comfyui, capsys):
    path = "split_files/text_encoders/umt5_xxl_fp16.safetensors"
    hub.cut_at[path] = 100_000                                  # the transfer breaks at 100 kB ...
    hub.refuse_ranges = True                                    # ... and the network stays down for this run
    assert main(["download", "--comfyui", str(comfyui), "--only", "umt5"]) == 4
    assert "run the command again to continue" in capsys.readouterr().err
    final = comfyui / "models" / "text_encoders" / "umt5_xxl_fp16.safetensors"
    assert not final.exists()                                   # no half file under the final name
    partial = list((comfyui / "models" / dl.STAGING).rglob("*.part"))
    assert len(partial) == 1 and partial[0].stat().st_size == 100_000

    hub.refuse_ranges = False                                   # the next run
    hub.requests.clear()
    hub.cut_at[path] = 200_000                                  # breaks again: resumed inside the run this time
    dl.fetch(dl.select(["umt5"]), comfyui / "models", say=lambda s: None)
    assert final.read_bytes() == content("Comfy-Org/Wan_2.1_ComfyUI_repackaged", path)
    assert [r[2] for r in hub.gets(path)] == ["bytes=100000-", "bytes=200000-"]   # only the missing parts


def test_a_corrupted_download_is_refused_and_deleted(hub, comfyui, capsys):
    path = "Stream-R1-T2V-1.3B/stream_r1.pt"
    hub.corrupt.add(path)
    assert main(["download", "--comfyui", str(comfyui), "--only", "stream_r1"]) == 3
    err = capsys.readouterr().err
    assert "sha256" in err and "differs from the hub's" in err
    models = comfyui / "models"
    assert not (models / "stream_r1" / "stream_r1.pt").exists()
    assert not [p for p in (models / dl.STAGING).rglob("stream_r1.pt")]   # not kept in staging either

    hub.corrupt.clear()                                         # a damaged file in place is replaced
    (models / "stream_r1").mkdir(exist_ok=True)
    (models / "stream_r1" / "stream_r1.pt").write_bytes(b"\0" * 300_001)
    assert main(["download", "--comfyui", str(comfyui), "--only", "stream_r1"]) == 0
    assert "does not match the hub" in capsys.readouterr().out
    assert (models / "stream_r1" / "stream_r1.pt").read_bytes() == content("FrameX-AI/Stream-R1", path)


def test_command_line_end_to_end_in_a_fresh_process(hub, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf_home"),
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "stream_r1", "download", "--dir", str(tmp_path / "m"), "--only", "vae"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "vae" / "wan_2.1_vae.safetensors").stat().st_size == 120_000
    assert not (tmp_path / "hf_home").exists()                  # local_dir downloads: the hub cache is untouched


def test_release_table_matches_the_published_names():
    r = dl.BY_NAME
    assert r["stream_r1"].url == "https://huggingface.co/FrameX-AI/Stream-R1/resolve/main/Stream-R1-T2V-1.3B/stream_r1.pt"
    assert r["vae"].url.endswith("Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/vae/wan_2.1_vae.safetensors")
    assert (r["umt5"].folder, r["umt5"].filename) == ("text_encoders", "umt5_xxl_fp16.safetensors")
    assert r["videoreward"].destination(Path("m")) == Path("m/stream_r1/VideoReward")


def test_the_readme_download_command_runs_as_written(hub, comfyui):
    """The download command of the README's "Files to download", taken from the README itself (only the ComfyUI
    path filled in), in a fresh process against the loopback hub: the three files the workflows need, in place."""
    import re
    import shlex

    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("python -m stream_r1 download"))
    argv = shlex.split(line.split("#", 1)[0].replace("/path/to/ComfyUI", str(comfyui)))
    assert argv[:4] == ["python", "-m", "stream_r1", "download"] and re.search(r"--only \S+", line)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(comfyui.parent / "hf_home"),
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=120,
                       cwd=comfyui.parent)
    assert r.returncode == 0, r.stderr
    m = comfyui / "models"
    assert (m / "stream_r1" / "stream_r1.pt").is_file() and (m / "vae" / "wan_2.1_vae.safetensors").is_file()
    assert (m / "text_encoders" / "umt5_xxl_fp16.safetensors").is_file()
    assert not (m / "stream_r1" / "VideoReward").exists()       # --only: nothing else
