"""The node path's speed in a real ComfyUI server on a GPU: what a ComfyUI user runs, timed from the outside.

A ComfyUI checkout ($COMFYUI_PATH) is started on CUDA with this pack and a base folder holding a seeded random
Wan2.1-T2V-1.3B student (bf16, real size) and a random real-size Wan2.1 VAE, in the layouts users download (the
text encoder is replaced by a seeded [1, 16, 4096] conditioning node: umT5-XXL weights cannot be had here, and text
encoding is outside the stream). Then, with Load Model's compile on (DiT and decoder):

  five_s          the shipped 5-second workflow (Stream-R1 Generate to File, 81 frames at 832x480, the MP4 encoded
                  while the stream runs): one warm-up run (compiles), then $RUNS runs with new seeds: queue ->
                  execution_success wall time (the saved MP4 written), the node's own streaming time and first-frame
                  time (its INFO log line), per-node times, VRAM and RSS after each run (flat over twenty runs?);
                  five_s_median: their medians
  generate_node   the Generate node's graph of the same workflow (Stream-R1 Generate -> Create Video -> Save Video,
                  the frames as IMAGE, the MP4 encoded by Save Video after the stream): one warm-up run, then $RUNS
                  runs with new seeds, the same figures per run; generate_node_median: their medians
  to_file         the 30-second workflow (Generate to File) at 477 frames: one run after the warm-ups

Every run's record: workflow_seconds, the node's log line (chunks, seconds, first, engine, host, peak_gib), node_fps
(frames / the node's streaming seconds), nodes ({class_type: seconds}), rss_mib, and on a GPU allocated /
reserved / device_used MiB. Also: device, torch, comfyui, date, compile, warmup_seconds,
generate_node_warmup_seconds, peak_device_mib (nvidia-smi every 50 ms, the server's whole life), peak_device_mib_by_phase
(the same samples split by phase: start, warm-up, the five_s runs, generate_node warm-up and runs, to_file),
server_log_tail.

    COMFYUI_PATH=... python3 bench/comfyui_speed.py --json out.json [--runs 20] [--seconds-to-file 29.8]

bench/comfyui_speed.sh runs it beside the CLI bench and the public reference in one device call.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
LINE = re.compile(r"streamed (\d+) chunks in ([\d.]+) s \(first frames after ([\d.]+) s; engine ([\d.]+) s, "
                  r"node host ([\d.]+) s(?:, decode overlapped)?(?:, peak ([\d.]+) GiB)?")


def timed_run(server, prompt: dict, timeout: float = 600) -> tuple[float, dict]:
    """Queue `prompt`; (seconds until the server says execution_success for it (websocket, no polling lag),
    {class_type: seconds} of each node, from the `executing` messages)."""
    import websocket

    client = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={client}", timeout=timeout)
    try:
        t0 = time.perf_counter()
        pid = server.post("/prompt", {"prompt": prompt, "client_id": client})["prompt_id"]
        marks: list = []
        while True:
            msg = ws.recv()
            if isinstance(msg, bytes):
                continue
            msg = json.loads(msg)
            if msg["data"].get("prompt_id") != pid:
                continue
            if msg["type"] == "executing":
                marks.append((msg["data"].get("node"), time.perf_counter()))
            if msg["type"] == "execution_success":
                end = time.perf_counter()
                marks.append((None, end))
                nodes = {prompt[n]["class_type"]: round(b - a, 3) for (n, a), (_, b) in zip(marks, marks[1:])
                         if n in prompt}
                return end - t0, nodes
            if msg["type"] == "execution_error":
                raise RuntimeError(f"prompt failed: {msg['data'].get('exception_message')}\n{server.tail()}")
    finally:
        ws.close()


def node_lines(server, since: int) -> list[dict]:
    """The Generate nodes' summary lines logged after byte `since` of the server log."""
    text = server.log.read_bytes()[since:].decode(errors="replace")
    return [dict(zip(("chunks", "seconds", "first", "engine", "host", "peak_gib"),
                     (float(g) if g is not None else None for g in m.groups())))
            for m in LINE.finditer(text)]


def timed_runs(server, prompt: dict, node_class: str, runs: int, first_seed: int, vram) -> list[dict]:
    """`runs` runs of `prompt` with seeds first_seed, first_seed + 1, ... on its `node_class` node: per run the
    wall time, the node's log line and FPS, per-node times, RSS and (`vram(server)`) GPU memory afterwards."""
    from test_comfyui_server import _rss_mb

    gen = next(n for n, v in prompt.items() if v["class_type"] == node_class)
    frames = video_frames(prompt[gen]["inputs"]["seconds"])
    out = []
    for i in range(runs):
        prompt[gen]["inputs"]["seed"] = first_seed + i
        since = server.log.stat().st_size
        wall, per_node = timed_run(server, prompt)
        line = (node_lines(server, since) or [{}])[-1]
        out.append({"run": i + 1, "workflow_seconds": round(wall, 3), **line, "nodes": per_node,
                    "node_fps": round(frames / line["seconds"], 2) if line else None,
                    "rss_mib": round(_rss_mb(server.proc.pid), 1),
                    **{k: round(v, 1) for k, v in vram(server).items()}})
        print(node_class, json.dumps(out[-1]), flush=True)
    return out


def phase_peaks(smi_lines: list[str], phases: list[tuple[str, float, float]]) -> dict:
    """Peak device memory (MiB) per phase from `nvidia-smi --query-gpu=timestamp,memory.used` CSV lines
    ("2026/12/07 23:52:01.123, 3670", local time) and (name, start, end) in `time.time()` seconds; samples outside
    every phase go to "other". Phases with no sample are left out."""
    from datetime import datetime

    peaks: dict = {}
    for line in smi_lines:
        stamp, _, used = line.rpartition(",")
        try:
            t = datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            mib = int(used)
        except ValueError:
            continue                                                    # a partial line at the end, a header
        name = next((n for n, a, b in phases if a <= t <= b), "other")
        peaks[name] = max(peaks.get(name, 0), mib)
    return peaks


def medians(runs: list[dict]) -> dict:
    """Median wall time, node FPS and first-frame time of `timed_runs` records (None where none has it)."""
    def med(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    return {"workflow_seconds": med(r["workflow_seconds"] for r in runs), "node_fps": med(r["node_fps"] for r in runs),
            "first_frame_seconds": med(r.get("first") for r in runs)}


def video_frames(seconds: float) -> int:
    """Frames a stream of `seconds` gives (81 for 5 s)."""
    from stream_r1.config import video_frames_for
    from stream_r1.stream import latent_frames_for_seconds

    return video_frames_for(latent_frames_for_seconds(seconds))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--node-runs", type=int, default=None, help="runs of Generate -> Create/Save Video "
                    "(default: --runs); the shipped workflow always gets --runs")
    ap.add_argument("--seconds-to-file", type=float, default=29.75, help="477 frames = 29.75 s")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model, 64x48, no GPU figures")
    args = ap.parse_args()
    import torch
    from test_comfyui_server import WORKFLOWS, Server, _base_dir, _vram_mib, generate_node_graph, tiny

    from stream_r1.config import WanConfig
    from stream_r1.vae import VAEConfig

    base = Path(os.environ.get("COMFY_BASE", "/tmp/comfy_speed_base"))
    if base.exists():
        import shutil
        shutil.rmtree(base)
    base.mkdir(parents=True)
    t0 = time.perf_counter()
    if args.tiny:
        _base_dir(base, WanConfig.tiny_comfy(), VAEConfig.tiny(), torch.float32)
    else:
        _base_dir(base, WanConfig.wan_1_3b(), VAEConfig.wan21(), torch.bfloat16)
    print(f"weights written in {time.perf_counter() - t0:.0f} s", flush=True)
    server = Server(base, gpu=not args.tiny, extra_args=["--verbose", "DEBUG"])
    import subprocess
    smi_log = base / "smi.txt"
    smi = subprocess.Popen(["true"] if args.tiny else ["nvidia-smi", "--query-gpu=timestamp,memory.used",
                                                       "--format=csv,noheader,nounits", "-lms", "50"],
                           stdout=open(smi_log, "w"), stderr=subprocess.DEVNULL)
    phases: list[tuple[str, float, float]] = []
    mark = [time.time()]

    def phase(name: str) -> None:                                   # the phase that ends now
        now = time.time()
        phases.append((name, mark[0], now))
        mark[0] = now
    size, dtype = ({"width": 64, "height": 48}, "fp32") if args.tiny else ({"width": 832, "height": 480}, "bf16")
    vram = (lambda _: {}) if args.tiny else _vram_mib
    result: dict = {"device": "cpu" if args.tiny else torch.cuda.get_device_name(0), "torch": torch.__version__, "comfyui": "0.8.0",
                    "date": time.strftime("%Y-%m-%d"), "compile": not args.no_compile}
    try:
        five = tiny(json.loads((WORKFLOWS / "api" / "stream_r1_t2v_5s.api.json").read_text()), 5.0, size=size,
                    dtype=dtype)
        load = next(n for n, v in five.items() if v["class_type"] == "StreamR1ModelLoader")
        five[load]["inputs"]["compile"] = not args.no_compile
        phase("start")
        warm, _ = timed_run(server, five)
        phase("warmup")
        result["warmup_seconds"] = round(warm, 2)
        print(f"warm-up (load + compile + run): {warm:.1f} s", flush=True)
        result["five_s"] = timed_runs(server, five, "StreamR1GenerateToFile", args.runs, 1000, vram)
        result["five_s_median"] = medians(result["five_s"])
        phase("five_s")

        graph = generate_node_graph(five)        # the same loaders (cached) and inputs, Generate -> Create/Save Video
        warm, _ = timed_run(server, graph)
        phase("generate_node_warmup")
        result["generate_node_warmup_seconds"] = round(warm, 2)
        print(f"generate_node warm-up: {warm:.1f} s", flush=True)
        result["generate_node"] = timed_runs(server, graph, "StreamR1Generate", args.node_runs or args.runs, 2000,
                                             vram)
        result["generate_node_median"] = medians(result["generate_node"])
        phase("generate_node")

        tf = tiny(json.loads((WORKFLOWS / "api" / "stream_r1_30s_to_file.api.json").read_text()),
                  args.seconds_to_file, size=size, dtype=dtype)
        tload = next(n for n, v in tf.items() if v["class_type"] == "StreamR1ModelLoader")
        tf[tload]["inputs"]["compile"] = not args.no_compile
        since = server.log.stat().st_size
        wall, _ = timed_run(server, tf)
        line = (node_lines(server, since) or [{}])[-1]
        frames = 1 + 4 * (3 * int(line.get("chunks", 0)) - 1) if line else 0
        result["to_file"] = {"workflow_seconds": round(wall, 2), **line, "frames": frames,
                             "node_fps": round(frames / line["seconds"], 2) if line else None}
        print("to_file", json.dumps(result["to_file"]), flush=True)
        phase("to_file")
    finally:
        server.stop()
        smi.terminate()
        by_phase = phase_peaks(Path(smi_log).read_text().splitlines(), phases)
        result["peak_device_mib"] = max(by_phase.values(), default=None)   # nvidia-smi, every 50 ms: the whole life
        result["peak_device_mib_by_phase"] = by_phase
        result["server_log_tail"] = server.tail(40)
        Path(args.json).write_text(json.dumps(result, indent=1))
    m, g = result.get("five_s_median", {}), result.get("generate_node_median", {})
    print(f"ComfyUI 5 s workflow (Generate to File): median {m.get('workflow_seconds')} s queue->MP4, node "
          f"{m.get('node_fps')} FPS, first frame {m.get('first_frame_seconds')} s; Generate -> Create/Save Video: "
          f"{g.get('workflow_seconds')} s queue->MP4, node {g.get('node_fps')} FPS; "
          f"to file 477: {result.get('to_file', {}).get('node_fps')} FPS; device peak MiB by phase "
          f"{result.get('peak_device_mib_by_phase')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
