"""Whole DiT passes as graphs (`stream_r1.pass_graphs`), on the CPU with a fake graph backend.

A real CUDA graph records a pass's device work without running it, and a replay runs only that work: the host
effects of the capture (the cache's plan and commit) happen once, at capture. The fake below keeps exactly that
split on the CPU: capturing runs the pass for its host effects and undoes its device effects (the cache buffers);
replaying re-runs the pass with the host indices it was captured with, keeps its device effects and restores the
host indices. So a wrong key (a pass replayed with another pass's plan) or wrong bookkeeping shows up as different
latents. The real backend is tested against eager on the GPU (tests/test_gpu.py).
"""
import pytest
import torch

from stream_r1.config import StreamConfig
from stream_r1.pass_graphs import PassGraphs
from stream_r1.stream import StreamSession
from helpers import tiny_context as _ctx

H, W = 32, 48


class FakeGraph:
    def __init__(self, fn, cache, host, out):
        self.fn, self.cache, self.host, self.out = fn, cache, host, out
        self.replays = 0

    def replay(self):
        c = self.cache
        saved = (c.local_end, c.global_end, c._plan)
        c.local_end, c.global_end, c._plan = *self.host, None
        self.out.copy_(self.fn())
        c.local_end, c.global_end, c._plan = saved
        self.replays += 1


class FakeCapture:
    """capture(fn, pool): host effects now, device effects only on replay."""

    def __init__(self, cache, fail: bool = False):
        self.cache, self.fail, self.graphs = cache, fail, []

    def __call__(self, fn, pool):
        c = self.cache
        host = (c.local_end, c.global_end)
        device = [t.clone() for t in (c.k, c.v, c.cross_k, c.cross_v)]
        out = fn()
        for t, saved in zip((c.k, c.v, c.cross_k, c.cross_v), device):
            t.copy_(saved)
        if self.fail:                     # a capture that fails has run nothing on the device either
            raise RuntimeError("operation not permitted when stream is capturing")
        g = FakeGraph(fn, c, host, torch.full_like(out, float("nan")))    # static output: garbage until replayed
        self.graphs.append(g)
        return g.out, g, "pool"


def _session(model, sc, graphs=True, **kw):
    sess = StreamSession(model, sc, _ctx(), height=H, width=W, seed=3)
    if graphs:
        sess.graphs = PassGraphs(model, capture=FakeCapture(sess.cache, **kw), device_types=("cpu",))
    return sess


def _run(sess, chunks):
    with torch.no_grad():
        lat = torch.cat([c.latents for c in sess.run(chunks)], 1)
    return lat, sess.cache


@pytest.mark.parametrize("rotate_once", [False, True])
def test_graph_replays_give_the_eager_stream_through_evictions(tiny_model, rotate_once):
    """7 chunks of window 9 / sink 3: the cache fills over 3 chunks, then every chunk evicts (roll + EMA sink) in
    its first pass. Latents and cache equal the eager stream's exactly; the passes split as the keys predict."""
    sc = StreamConfig.stream_r1().replace(rotate_keys_once=rotate_once)
    ref, ref_cache = _run(_session(tiny_model, sc, graphs=False), 7)
    sess = _session(tiny_model, sc)
    lat, cache = _run(sess, 7)
    assert torch.equal(lat, ref)
    assert torch.equal(cache.k, ref_cache.k) and torch.equal(cache.v, ref_cache.v)
    assert (cache.local_end, cache.global_end) == (ref_cache.local_end, ref_cache.global_end)
    # 35 passes: the text pass + the first pass of 4 keys (3 filling chunks, the evicting pass) run eagerly,
    # 4 are captured (chunk 1-3's second pass, chunk 5's evicting pass), the other 26 replay
    assert sess.graphs.counts == dict(eager=5, captured=4, replayed=26)
    assert len(sess.graphs._graphs) == 4


def test_a_prompt_switch_recomputes_the_text_eagerly_then_replays_with_it(tiny_model):
    """The graphs read the cached text K/V: after a switch the first pass encodes the new prompt eagerly and the
    replays use it (the same stream as eager)."""
    sc = StreamConfig.stream_r1()
    out = []
    for graphs in (False, True):
        sess = _session(tiny_model, sc, graphs=graphs)
        with torch.no_grad():
            lat = [c.latents for c in sess.run(5, prompt_at=lambda i: _ctx(seed=5) if i == 3 else None)]
        out.append(torch.cat(lat, 1))
    assert torch.equal(out[0], out[1])
    assert sess.graphs.counts["replayed"] > 10


def test_passes_that_cannot_be_graphs_run_eagerly(tiny_model):
    sc = StreamConfig.stream_r1()
    sess = _session(tiny_model, sc)
    x, t = torch.randn(1, 16, 3, 4, 6), torch.zeros(1, 3)
    g = sess.graphs
    assert g.key(x, t, sess.cache, 0) is None                     # the text K/V are not cached yet
    sess.cache.cross_valid = [True] * sess.cache.num_layers
    with torch.no_grad():
        assert g.key(x, t, sess.cache, 0) is not None
        assert g.key(x, t, sess.cache.clone().fork(), 0) is not None        # a plain KVCache of its own
        from stream_r1.kv_pages import BatchedKV
        assert g.key(x, t, BatchedKV([sess.cache]), 0) is None               # Stream-T1 beams
    assert g.key(x, t, sess.cache, 0) is None                     # autograd
    cuda_only = PassGraphs(tiny_model)
    with torch.no_grad():
        assert cuda_only.key(x, t, sess.cache, 0) is None         # the default backend is CUDA's


def test_a_pass_that_cannot_be_captured_runs_eagerly_from_then_on(tiny_model, caplog):
    sc = StreamConfig.stream_r1()
    ref, _ = _run(_session(tiny_model, sc, graphs=False), 5)
    sess = _session(tiny_model, sc, fail=True)
    lat, _ = _run(sess, 5)
    assert torch.equal(lat, ref)                                  # host indices restored after the failed capture
    assert sess.graphs.counts["captured"] == sess.graphs.counts["replayed"] == 0
    assert len(sess.graphs._refused) == 4 and "runs eagerly" in caplog.text


def test_max_graphs_bounds_the_captures(tiny_model):
    sc = StreamConfig.stream_r1()
    ref, _ = _run(_session(tiny_model, sc, graphs=False), 6)
    sess = _session(tiny_model, sc)
    sess.graphs.max_graphs = 1
    lat, _ = _run(sess, 6)
    assert torch.equal(lat, ref)
    assert sess.graphs.counts["captured"] == 1 and len(sess.graphs._graphs) == 1


def test_cuda_graphs_is_a_speed_setting_free_to_change_on_resume(tiny_model, tmp_path):
    from stream_r1.stream_state import SPEED_FIELDS
    assert "cuda_graphs" in SPEED_FIELDS
    sess = StreamSession(tiny_model, StreamConfig.stream_r1(), _ctx(), height=H, width=W, seed=3)
    with torch.no_grad():
        list(sess.run(2))
    sess.save_state(tmp_path / "s.safetensors")
    resumed = StreamSession.from_state(tiny_model, tmp_path / "s.safetensors",
                                       config=StreamConfig.stream_r1().replace(cuda_graphs=True))
    assert resumed.cfg.cuda_graphs and resumed.graphs is None     # CPU: the flag is accepted, no graphs
