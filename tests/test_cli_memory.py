"""`generate` holds flat memory however long the stream: the CLI's real loop over a stub stream at 832x480.

The stub replaces only the heavy parts: the session yields chunks with real-size latents [1, 3, 16, 60, 104] and
frames [1, 12, 3, 480, 832] (fresh tensors each chunk), and the video writer discards the frames. The peak RSS
(VmHWM) is read in the same process after a tenth of the chunks and at the end: two separate processes differ by up
to ~70 MB in their peaks whatever their length (the allocator's layout), which drowns the growth being tested.
"""
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

STUB = r'''
import sys
import torch
import stream_r1.stream as stream
import stream_r1.video_io as video_io
from stream_r1.cli import main

torch.set_num_threads(1)


class Chunk:
    def __init__(self, latents, frames):
        self.latents, self.frames = latents, frames


class StubSession:
    """What the CLI reads of a StreamSession; `run` yields real-size chunks without a model."""

    def __init__(self, model, cfg, context, *, height, width, seed=0, noise=None, decoder=None, device=None,
                 dtype=None):
        self.cfg, self.height, self.width, self.decoder = cfg, height, width, decoder
        self.chunk_index, self.frame_offset, self.interrupted = 0, 0, False
        self.stats = stream.StreamStats()
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def frames_done(self):
        return self.frame_offset + self.chunk_index * self.cfg.frames_per_block

    def set_timeline(self, schedule):
        pass

    def enable_overlap(self, priority=False):
        return False

    def run(self, n, should_stop=None, on_chunk=None):
        global early_hwm
        fpb, h, w = self.cfg.frames_per_block, self.height // 8, self.width // 8
        for i in range(n):
            if i == n // 10:
                early_hwm = hwm()
            latents = torch.randn(1, fpb, 16, h, w, generator=self.generator)
            frames = None
            if self.decoder is not None:
                frames = torch.empty(1, 4 * fpb - (3 if self.chunk_index == 0 else 0), 3, self.height, self.width)
                frames.fill_(0.5)                                  # touched: a kept frame would count in the RSS
            self.chunk_index += 1
            yield Chunk(latents, frames)


class NullWriter:
    def __init__(self, path, fps=16, **kw):
        self.path = path

    def write(self, frames, layout="thwc"):
        pass

    def close(self):
        pass


def hwm():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])


early_hwm = None
stream.StreamSession = StubSession
video_io.VideoWriter = NullWriter
chunks = int(sys.argv[1])
rc = main(["generate", "--frames", str(1 + 4 * (3 * chunks - 1)), "--width", "832", "--height", "480",
           "--device", "cpu", "--quiet", *sys.argv[2:]])
print(f"rc={rc} early_kib={early_hwm} hwm_kib={hwm()}")
'''


def _peak_mib(tmp_path: Path, chunks: int, *extra: str) -> tuple[float, float]:
    """(peak RSS after chunks // 10 chunks, peak RSS at the end) in MiB, of one process streaming `chunks`."""
    script = tmp_path / "stub_stream.py"
    script.write_text(STUB)
    r = subprocess.run([sys.executable, str(script), str(chunks), "--out", str(tmp_path / "x.mp4"), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("rc=0 "), line
    return int(line.split("early_kib=")[1].split()[0]) / 1024, int(line.split("hwm_kib=")[1]) / 1024


def test_a_long_stream_holds_flat_ram(tmp_path):
    """1,000 chunks at 832x480 (~1.2 MB of latents each) peak within 50 MB of 100 chunks: no per-chunk latents are
    kept without --latents-out (the old loop kept them all: ~1.1 GB more here)."""
    short, long = _peak_mib(tmp_path, 1000)
    assert long - short < 50, f"peak RSS {short:.0f} MiB at 100 chunks, {long:.0f} MiB at 1000"


def test_latents_out_is_streamed_to_disk(tmp_path):
    """With --latents-out the latents go to the file as they come: 400 chunks peak within 50 MB of 40 (they are
    ~480 MB), and the file holds every frame asked for (--no-decode: the frames are the other test's)."""
    out = tmp_path / "lat.safetensors"
    short, long = _peak_mib(tmp_path, 400, "--latents-out", str(out), "--no-decode")
    assert long - short < 50, f"peak RSS {short:.0f} MiB at 40 chunks, {long:.0f} MiB at 400"
    lat = load_file(out)["latents"]
    assert lat.shape == (1, 1200, 16, 60, 104) and lat.dtype == torch.float32
    assert not out.with_name(out.name + ".partial").exists()
