"""The overlapped decode's host-side ordering (StreamSession(overlap_decode=True[, overlap_priority=True])), on the CPU.

CUDA streams and events are replaced by fakes that record what was enqueued where and who waited on what, so the
test checks the schedule the GPU would see: the DiT on its stream, each chunk's decode on the side stream after that
chunk's latents are ready, the decode of chunk k enqueued before the DiT of chunk k + 1 (so after a consumer's sync
it overlaps all of that DiT), the run's first chunk decoded before chunk 2's DiT may start, and every yielded chunk
waited for on the caller's stream. The frames themselves must equal a plain run's. (tests/test_gpu.py runs the real
streams.)
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from stream_r1.config import StreamConfig
from stream_r1.stream import StreamSession
from stream_r1.vae import StreamingDecoder
from helpers import tiny_context

H, W = 32, 48


class FakeEvent:
    def __init__(self, log):
        self.log, self.name = log, None

    def record(self, stream):
        self.name = f"{stream.name}@{len(self.log)}"
        self.log.append(("record", stream.name, self.name))


class FakeStream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_event(self, ev):
        self.log.append(("wait", self.name, ev.name))

    def wait_stream(self, other):
        self.log.append(("wait_stream", self.name, other.name))


@pytest.fixture
def fakes(monkeypatch):
    log: list = []
    state = {"current": FakeStream("main", log)}

    @contextlib.contextmanager
    def stream(s):
        before, state["current"] = state["current"], s
        try:
            yield
        finally:
            state["current"] = before

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: state["current"])
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "Event", lambda *a, **k: FakeEvent(log))
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: log.append(("record_stream", s.name)),
                        raising=False)
    return log, state


def _run(model, vae, n, fakes=None, priority=False):
    s = StreamSession(model, StreamConfig.stream_r1(), tiny_context(), height=H, width=W, seed=3,
                      decoder=StreamingDecoder(vae))
    if fakes is not None:
        log, state = fakes
        s.overlap_decode, s._side = True, FakeStream("side", log)
        s._dit_stream = FakeStream("dit", log) if priority else None
        dit, dec = s.next_chunk, s._decode

        def next_chunk(**kw):
            log.append(("dit", s.chunk_index, state["current"].name))
            assert kw["decode"] is False
            return dit(**kw)

        def decode(x0):
            log.append(("decode", x0.data_ptr(), state["current"].name))
            return dec(x0)
        s.next_chunk, s._decode = next_chunk, decode
    chunks = []
    for c in s.run(n):
        if fakes is not None:
            fakes[0].append(("yield", c.index))
        chunks.append(c)
    return torch.cat([c.latents for c in chunks], 1), torch.cat([c.frames for c in chunks], 1)


@pytest.mark.parametrize("priority", [False, True])
def test_overlapped_decode_schedule_and_frames(tiny_model, vae, fakes, priority):
    ref_latents, ref_frames = _run(tiny_model, vae, 5)
    latents, frames = _run(tiny_model, vae, 5, fakes, priority)
    assert torch.equal(latents, ref_latents) and torch.equal(frames, ref_frames)

    log = fakes[0]
    dit_stream = "dit" if priority else "main"
    steps = [e for e in log if e[0] in ("dit", "decode", "yield")]
    names = [f"{e[0]}{e[1]}" if e[0] != "decode" else "decode" for e in steps]
    # decode(k) before dit(k+1); chunk k yielded once dit(k+1) is enqueued (chunk 0 at once: first frames early)
    assert names == ["dit0", "decode", "yield0", "dit1", "decode", "dit2", "yield1", "decode", "dit3", "yield2",
                     "decode", "dit4", "yield3", "decode", "yield4"]
    assert all(e[2] == dit_stream for e in steps if e[0] == "dit")
    assert all(e[2] == "side" for e in steps if e[0] == "decode")

    def index(pred, start=0):
        return next(i for i in range(start, len(log)) if pred(log[i]))

    for k in range(5):
        d = index(lambda e, k=k: e[:2] == ("dit", k))
        ready = index(lambda e: e[0] == "record" and e[1] == dit_stream, d)        # latents ready on the DiT stream
        dec = index(lambda e: e[0] == "decode", d)
        assert ("wait", "side", log[ready][2]) in log[ready:dec]                    # the decode waits for them
        assert ("record_stream", "side") in log[ready:dec]
        done = index(lambda e: e[0] == "record" and e[1] == "side", dec)
        y = index(lambda e, k=k: e == ("yield", k), done)
        assert ("wait", "main", log[done][2]) in log[done:y]                        # the caller waits before using them
        if priority:                                      # the caller's stream waits for the whole chunk (latents,
            after = index(lambda e: e[0] == "record" and e[1] == "dit", ready + 1)  # clean cache pass): an event the
            assert after < dec and ("wait", "main", log[after][2]) in log[after:dec]  # DiT stream records after them
            assert ("wait_stream", "dit", "main") in log[:d]
        if k == 0:                                                                  # chunk 2's DiT waits for the
            assert ("wait", dit_stream, log[done][2]) in log[done:index(lambda e: e[:2] == ("dit", 1))]  # first decode


def test_cli_generate_overlaps_the_decode_unless_something_reads_the_session_per_chunk(tmp_path, fakes, monkeypatch):
    """`generate` turns the overlap on by itself (on a GPU; here the fake streams stand in) and writes the same video
    and latents as --no-overlap; it leaves it off where a per-chunk reader would see the session one chunk ahead."""
    from stream_r1.cli import main
    from stream_r1.video_io import read_video
    from safetensors.torch import load_file
    log, _ = fakes
    calls = []

    def enable(self, priority=True):
        calls.append(priority)
        self.overlap_decode, self._side = True, FakeStream("side", log)
        self._dit_stream = FakeStream("dit", log) if priority else None
        return True
    monkeypatch.setattr(StreamSession, "enable_overlap", enable)
    common = ["generate", "--frames", "21", "--width", "64", "--height", "48", "--device", "cpu", "--quiet"]
    outs = {}
    for name, extra in (("ov", []), ("plain", ["--no-overlap"])):
        log.clear()
        assert main([*common, *extra, "--out", str(tmp_path / f"{name}.mp4"),
                     "--latents-out", str(tmp_path / f"{name}.safetensors")]) == 0
        outs[name] = (load_file(tmp_path / f"{name}.safetensors")["latents"], read_video(tmp_path / f"{name}.mp4"))
        side = [e for e in log if e[:2] == ("record", "side")]
        assert len(side) == (2 if name == "ov" else 0)        # 21 frames = 6 latent frames = 2 chunks, each decoded there
    assert calls == [True]
    assert torch.equal(outs["ov"][0], outs["plain"][0])
    assert (outs["ov"][1] == outs["plain"][1]).all() and outs["ov"][1].shape[0] == 21
    for extra in (["--save-state-every", "1"], ["--telemetry", str(tmp_path / "t.json")]):
        assert main([*common, *extra, "--out", str(tmp_path / "x.mp4")]) == 0
    assert calls == [True]                                    # never turned on for those
