"""Paged copy-on-write KV cache (stream_r1.kv_pages): same stream as KVCache, real page sharing, no aliasing,
refcounts, batched rows."""
import pytest
import torch

from stream_r1.config import StreamConfig
from stream_r1.kv_pages import BatchedKV, PagedKVCache, layout_key
from stream_r1.stream import StreamSession
from helpers import tiny_context as _ctx

H, W = 32, 48


def _session(model, sc, seed=3, paged=False):
    s = StreamSession(model, sc, _ctx(), height=H, width=W, seed=seed)
    if paged:
        s.cache = PagedKVCache.from_cache(s.cache)
    return s


def _snapshot(c: PagedKVCache):
    k, v = c.read_tokens(0, c.local_end)
    return k.clone(), v.clone()


@pytest.mark.parametrize("policy", ["window_sink", "longlive", "full"])
def test_paged_stream_equals_contiguous_stream(tiny_model, policy):
    """Eviction by dropping pages and the window_sink EMA on pages give the contiguous cache's stream exactly."""
    sc = StreamConfig.for_policy(policy)
    n = 6 if policy != "full" else 5
    a = [c.latents for c in _session(tiny_model, sc).run(n)]
    ps = _session(tiny_model, sc, paged=True)
    b = [c.latents for c in ps.run(n)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    kv = ps.cache.to_cache()                                           # and back to a contiguous cache
    ref = _session(tiny_model, sc)
    list(ref.run(n))
    sa, sb = ref.cache.state_dict(), kv.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fork_shares_pages_and_writes_never_alias(tiny_model):
    sc = StreamConfig.longlive()                                       # window 12 = sink 3 + 3 chunks
    s = _session(tiny_model, sc, paged=True)
    list(s.run(2))
    parent = s.cache
    f1, f2 = parent.fork(), parent.fork()
    ptrs = [p.k.data_ptr() for p in parent.pages]
    assert [p.k.data_ptr() for p in f1.pages] == ptrs == [p.k.data_ptr() for p in f2.pages]   # no copy
    assert all(p.refs == 3 for p in parent.pages)
    snap_p, snap_2 = _snapshot(parent), _snapshot(f2)
    state = s.branch_state() | dict(cache=f1, generator=torch.Generator().manual_seed(9),
                                    _pieces=list(s._pieces), _sink_pieces=list(s._sink_pieces))
    with s.branch(state):
        s.next_chunk()                                                 # a new page of its own: nothing copied
    assert f1.pages[:2] == parent.pages and [p.k.data_ptr() for p in f1.pages[:2]] == ptrs
    assert len(f1.pages) == 3 and f1.pages[2].refs == 1 and parent.pool.copies == 0
    with s.branch(state):
        s.next_chunk()
        s.next_chunk()                                                 # rolls: drops pages, still no copy
    assert f1.local_end == 12 * f1.frame_seqlen and parent.pool.copies == 0
    assert f1.pages[0] is parent.pages[0]                              # the sink page is still shared
    k1, v1 = f1.read_tokens(0, 3 * f1.frame_seqlen)
    f1.write_tokens(0, k1 + 1.0, v1 - 1.0)                             # a write to a shared page copies it
    assert f1.pages[0] is not parent.pages[0] and parent.pool.copies == 1
    assert f1.pages[0].k.data_ptr() != ptrs[0]
    for c, snap in ((parent, snap_p), (f2, snap_2)):                   # the parent and the sibling never changed
        k, v = _snapshot(c)
        assert torch.equal(k, snap[0]) and torch.equal(v, snap[1])
        assert [p.k.data_ptr() for p in c.pages] == ptrs
    assert torch.equal(f1.read_tokens(0, 3 * f1.frame_seqlen)[0], k1 + 1.0)


def test_refcounts_return_and_pages_are_freed(tiny_model):
    s = _session(tiny_model, StreamConfig.stream_r1(), paged=True)
    list(s.run(2))
    pool, parent = s.cache.pool, s.cache
    base = pool.live_pages()
    forks = [parent.fork() for _ in range(3)]
    assert pool.live_pages() == base                                   # forks allocate no pages
    for f in forks:
        st = s.branch_state() | dict(cache=f, generator=torch.Generator().manual_seed(1),
                                     _pieces=list(s._pieces), _sink_pieces=list(s._sink_pieces))
        with s.branch(st):
            s.next_chunk()
    assert pool.live_pages() == base + 3
    del forks, st, f
    assert pool.live_pages() == base and all(p.refs == 1 for p in parent.pages)


def test_window_sink_ema_copies_only_a_shared_sink(tiny_model):
    s = _session(tiny_model, StreamConfig.stream_r1(), paged=True)     # window 9 = sink 3 + 2 chunks
    list(s.run(3))
    pool = s.cache.pool
    list(s.run(1))                                                     # evicts + blends the sink: not shared
    assert pool.copies == 0
    f = s.cache.fork()
    sink_ptr = s.cache.pages[0].k.data_ptr()
    list(s.run(1))                                                     # now shared with f: copy the sink page
    assert pool.copies == 1 and f.pages[0].k.data_ptr() == sink_ptr != s.cache.pages[0].k.data_ptr()


@torch.no_grad()
def test_batched_rows_see_their_own_caches(tiny_model):
    """One model call over two caches as batch rows = two separate calls (fp32, tight tolerance)."""
    sc = StreamConfig.stream_r1()
    s = _session(tiny_model, sc, paged=True)
    list(s.run(3))
    a, b = s.cache.fork(), s.cache.fork()
    k, v = a.read_tokens(0, a.local_end)
    a.write_tokens(0, k * 0.5, v * 0.5)                                # make the two caches differ
    assert layout_key(a) == layout_key(b)
    x = torch.randn(2, 16, 3, H // 8, W // 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((2, 3), 500.0)
    start = s.frames_done
    a2, b2 = a.fork(), b.fork()
    ya = tiny_model(x[:1], t[:1], s.context, cache=a2, start_frame=start)
    yb = tiny_model(x[1:], t[1:], s.context, cache=b2, start_frame=start)
    yab = tiny_model(x, t, s.context.repeat(2, 1, 1), cache=BatchedKV([a, b]), start_frame=start)
    assert torch.allclose(yab, torch.cat([ya, yb]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ya, yb)
    list(s.run(2))                                                     # one chunk further than a2
    with pytest.raises(ValueError, match="layout"):
        BatchedKV([s.cache, a2])
