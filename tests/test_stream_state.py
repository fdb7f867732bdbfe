"""Stream state files: resume == uninterrupted (bit-identical on CPU fp32), branching, bad files, atomic saves,
prefill (image-to-video / extension), the CLI flags, the save/load nodes, and flat cost over 10x the window."""
import gc
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from stream_r1.config import StreamConfig, WanConfig
from stream_r1.stream import StreamSession
from stream_r1.stream_state import load_stream_state
from stream_r1.timeline import PromptSchedule, Timeline
from stream_r1.vae import StreamingDecoder, VAEConfig, WanVAE
from stream_r1.wan.model import WanModel
from helpers import tiny_context as _ctx

H, W = 32, 48
ROOT = Path(__file__).resolve().parents[1]








def _session(model, vae=None, sc=None, seed=3, ctx=0, noise=None):
    return StreamSession(model, sc or StreamConfig.stream_r1(), _ctx(ctx), height=H, width=W, seed=seed,
                         noise=noise, decoder=StreamingDecoder(vae) if vae is not None else None)


def _take(sess, n):
    chunks = list(sess.run(n))
    frames = [c.frames for c in chunks if c.frames is not None]
    return torch.cat([c.latents for c in chunks], 1), (torch.cat(frames, 1) if frames else None)


# ---- resume / branch ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy, k", [("window_sink", 4), ("longlive", 5), ("full", 2)])
def test_save_at_chunk_k_and_resume_equals_the_uninterrupted_stream(tiny_model, vae, tmp_path, policy, k):
    sc = StreamConfig.for_policy(policy)
    sc = sc.replace(full_cache_frames=21) if policy == "full" else sc
    noise = torch.randn(1, 4, 16, 4, 6, generator=torch.Generator().manual_seed(9))     # part given, part drawn
    lat, frames = _take(_session(tiny_model, vae, sc, noise=noise), 7 if policy != "full" else 5)

    a = _session(tiny_model, vae, sc, noise=noise)
    _take(a, k)
    a.save_state(tmp_path / "s.safetensors")
    b = StreamSession.from_state(tiny_model, tmp_path / "s.safetensors", decoder=StreamingDecoder(vae))
    assert b.chunk_index == k and b.cfg == sc and (b.height, b.width) == (H, W)
    lat_b, frames_b = _take(b, lat.shape[1] // 3 - k)
    assert torch.equal(lat_b, lat[:, 3 * k:])                                   # DiT, cache, sink EMA, RNG
    assert torch.equal(frames_b, frames[:, 1 + 4 * (3 * k - 1):])              # decoder state


def test_version_1_files_resume_and_rotated_key_files_are_refused(tiny_model, tmp_path):
    """A version-1 file resumes bit for bit; a file whose window keys were stored rotated (the retired
    rotate_keys_once) is refused with a message; an unknown version is refused."""
    from safetensors import safe_open
    sc = StreamConfig.stream_r1()
    lat, _ = _take(_session(tiny_model, sc=sc), 6)
    a = _session(tiny_model, sc=sc)
    _take(a, 4)
    a.save_state(tmp_path / "s.safetensors")
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert "cache.rotated" not in tensors
    save_file(tensors, tmp_path / "v1.safetensors", metadata={**meta, "version": "1"})
    b = _session(tiny_model, sc=sc)
    b.load_state(tmp_path / "v1.safetensors")
    lat_b, _ = _take(b, 2)
    assert torch.equal(lat_b, lat[:, 12:])
    rotated = {**tensors, "cache.rotated": torch.tensor([*tiny_model.cfg.rope_split(), 2, 3])}
    save_file(rotated, tmp_path / "rot.safetensors", metadata=meta)
    with pytest.raises(ValueError, match="rotate_keys_once, retired"):
        load_stream_state(tmp_path / "rot.safetensors")
    save_file(tensors, tmp_path / "v3.safetensors", metadata={**meta, "version": "3"})
    with pytest.raises(ValueError, match="reads versions 1, 2"):
        load_stream_state(tmp_path / "v3.safetensors")


def test_resume_applies_a_timeline_switch_at_the_saved_boundary(tiny_model, tmp_path):
    tl = Timeline.parse("0: a\n@3 [recache]: b")
    ctxs = {"a": _ctx(0), "b": _ctx(1)}
    one = _session(tiny_model)
    one.set_timeline(PromptSchedule.build(tl, 3, 6, contexts=ctxs))
    full, _ = _take(one, 6)
    s = _session(tiny_model)
    s.set_timeline(PromptSchedule.build(tl, 3, 6, contexts=ctxs))
    _take(s, 3)
    s.save_state(tmp_path / "s.safetensors")                   # saved before the switch at chunk 3 is applied
    r = StreamSession.from_state(tiny_model, tmp_path / "s.safetensors")
    assert r.prompt == "a"
    r.set_timeline(PromptSchedule.build(tl, 3, 6, contexts=ctxs))
    rest, _ = _take(r, 3)
    assert torch.equal(rest, full[:, 9:])


def test_branch_is_identical_up_to_the_branch_point_and_differs_after(tiny_model, tmp_path):
    base = _session(tiny_model)
    a, _ = _take(base, 3)
    base.save_state(tmp_path / "s.safetensors")
    a_rest, _ = _take(base, 3)

    branch = StreamSession.from_state(tiny_model, tmp_path / "s.safetensors")
    tl = Timeline.parse("0: a\n@1 [recache]: b")            # the prompt in force at the resume point is b
    branch.set_timeline(PromptSchedule.build(tl, 3, 6, contexts={"a": _ctx(0), "b": _ctx(1)}))
    b_rest, _ = _take(branch, 3)
    assert [w["action"] for w in branch.switches] == ["recache", "prompt:recache"]
    assert (a_rest - b_rest).abs().mean() > 1e-3

    # the same branch, as one stream: identical frames up to the branch point, then the branch's
    one = _session(tiny_model)
    one.set_timeline(PromptSchedule.build(Timeline.parse("0: a\n@3 [recache]: b"), 3, 6,
                                          contexts={"a": _ctx(0), "b": _ctx(1)}))
    whole, _ = _take(one, 6)
    assert torch.equal(whole[:, :9], a) and torch.equal(whole[:, 9:], b_rest)


def test_state_file_contents(tiny_model, vae, tmp_path):
    s = _session(tiny_model, vae)
    _take(s, 4)
    path = s.save_state(tmp_path / "s.safetensors", extra_tensors={"x": torch.ones(2)}, extra_meta={"y": 1})
    saved = load_stream_state(path)
    t = saved.tensors
    fs = s.cache.frame_seqlen
    assert t["cache.k"].shape == (2, 1, 9 * fs, 2, 32) and t["cache.index"].tolist() == [12 * fs, 9 * fs, fs, 9 * fs,
                                                                                          3 * fs]
    assert t["recent_latents"].shape == (1, 9, 16, 4, 6) and t["sink_latents"].shape == (1, 3, 16, 4, 6)
    assert t["rng"].dtype == torch.uint8 and "decoder.latent_frames" in t and "cache.cross_k" in t
    assert saved.chunk_index == 4 and saved.frames_done == 12 and saved.dtype == "float32"
    assert torch.equal(saved.extra_tensors["x"], torch.ones(2)) and saved.extra == {"y": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # no temporary file left
    twin = s.cache.clone()
    twin.k.zero_()
    assert twin.local_end == s.cache.local_end and s.cache.k.abs().sum() > 0       # an independent copy


# ---- bad files --------------------------------------------------------------------------------------------------------
@pytest.fixture
def state_file(tiny_model, tmp_path):
    s = _session(tiny_model)
    _take(s, 2)
    return s.save_state(tmp_path / "s.safetensors")


@pytest.mark.parametrize("keep", [0.5, 0.99, 40])
def test_truncated_state_file_is_a_clear_error(state_file, keep):
    data = state_file.read_bytes()
    state_file.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(ValueError, match="not a readable stream state"):
        load_stream_state(state_file)


def test_foreign_state_files_are_clear_errors(tiny_model, state_file, tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"latents": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not a Stream-R1 stream state"):
        load_stream_state(other)
    with pytest.raises(FileNotFoundError):
        load_stream_state(tmp_path / "missing.safetensors")

    retrained = WanModel(WanConfig.tiny(), attention="sdpa").init_weights(seed=1).eval()
    with pytest.raises(ValueError, match="saved with other weights"):
        StreamSession.from_state(retrained, state_file)
    bigger = WanModel(WanConfig.tiny().__class__(dim=96, ffn_dim=128, num_heads=3, num_layers=2, text_dim=32),
                      attention="sdpa").init_weights(seed=0)
    with pytest.raises(ValueError, match=r"saved from a model with dim 64 / 2 layers / 2 heads / text_dim 32 \(another "
                                         r"model architecture: dim 64 vs 96, num_heads 2 vs 3 in this model\): load "
                                         r"the model it was made with"):
        StreamSession.from_state(bigger, state_file)
    with pytest.raises(ValueError, match="saved in float32; this stream runs in bfloat16"):
        StreamSession.from_state(tiny_model, state_file, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"another cache layout \{'window_frames': \(9, 12\)"):
        StreamSession.from_state(tiny_model, state_file, config=StreamConfig.stream_r1().replace(window_frames=12))
    with pytest.raises(ValueError, match="is a 48x32 stream"):
        StreamSession(tiny_model, StreamConfig.stream_r1(), _ctx(), height=48, width=48).load_state(state_file)
    with pytest.raises(ValueError, match="holds no decoder state"):
        torch.manual_seed(0)
        StreamSession.from_state(tiny_model, state_file, decoder=StreamingDecoder(WanVAE(VAEConfig.tiny())))


def _rewritten(path: Path, out: Path, meta=None, session=None, stream_config=None, model=None, tensors=None) -> Path:
    """A copy of state file `path` with its metadata / JSON fields / tensors changed by the given functions."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        m, t = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for key, fn in (("session", session), ("stream_config", stream_config), ("model", model)):
        if fn is not None:
            d = json.loads(m[key])
            fn(d)
            m[key] = json.dumps(d)
    if meta is not None:
        meta(m)
    if tensors is not None:
        tensors(t)
    save_file(t, out, metadata=m)
    return out


def _set(key, value):
    def f(d):
        d[key] = value
    return f


def _drop(key):
    return lambda d: d.pop(key)


def _index(i, value):
    def f(t):
        t["cache.index"] = t["cache.index"].clone()
        t["cache.index"][i] = value
    return f


BAD_STATES = {   # what a file says (edited, damaged, or written by someone else) -> the one-line error
    "model is a list": (dict(meta=_set("model", "[64, 128, 2, 2]")), r"metadata 'model' must be a JSON object, got a list"),
    "session is a list": (dict(meta=_set("session", "[]")), r"metadata 'session' must be a JSON object, got a list"),
    "extra is a string": (dict(meta=_set("extra", '"x"')), r"metadata 'extra' must be a JSON object, got a str"),
    "metadata key missing": (dict(meta=_drop("stream_config")), r"metadata 'stream_config' is missing"),
    "session key missing": (dict(session=_drop("height")), r"session\.height is missing"),
    "model key missing": (dict(model=_drop("num_layers")), r"model\.num_layers is missing"),
    "string number": (dict(session=_set("chunk_index", "2")),
                      r"session\.chunk_index must be an integer >= 0, got '2'"),
    "string number in the config": (dict(stream_config=_set("frames_per_block", "3")),
                                    r"stream_config\.frames_per_block must be an integer >= 0, got '3'"),
    "string number in the model": (dict(model=_set("dim", "64")), r"model\.dim must be an integer >= 1, got '64'"),
    "a bool for an int": (dict(session=_set("batch", True)), r"session\.batch must be an integer >= 1, got True"),
    "negative frame offset": (dict(session=_set("frame_offset", -3)),
                              r"session\.frame_offset must be an integer >= 0, got -3"),
    "negative cache position": (dict(tensors=_index(1, -6)), r"cache\.index positions \(global_end 36, local_end -6"),
    "cache past its capacity": (dict(tensors=_index(1, 600)), r"cache\.index positions .* within the 9-frame cache"),
    "NaN": (dict(stream_config=_set("timestep_shift", float("nan"))),
            r"stream_config\.timestep_shift must be a finite number, got nan"),
    "a short patch size": (dict(model=_set("patch_size", [1, 2])), r"model\.patch_size must be a list of 3 numbers"),
    "invalid settings": (dict(stream_config=_set("cache_policy", "bogus")),
                         r"stream_config is not a valid StreamConfig \(cache_policy must be one of"),
    "seed out of range": (dict(session=_set("seed", 2 ** 70)), r"session\.seed must be a 64-bit integer or null"),
    "size off the grid": (dict(session=_set("width", 40)), r"session size 40x32 is not a multiple of 16"),
    "absurd size": (dict(session=_set("height", 2 ** 20)), r"session size 48x1048576 is larger than 16384"),
    "absurd schedule": (dict(stream_config=_set("num_train_timesteps", 10 ** 12)), r"over a 1000000000000-step grid"),
    "pieces reversed": (dict(session=_set("pieces", [[3, 1]])), r"session\.pieces must be a list of \[start, end\]"),
    "pieces past the stream": (dict(session=_set("pieces", [[0, 99]])),
                               r"session\.pieces \[\[0, 99\]\] reach past the 6 frames"),
    "unknown dtype": (dict(meta=_set("dtype", "nn")),
                      r"metadata 'dtype' must be one of float32, bfloat16, float16, float64, got 'nn'"),
    "dtype not the tensors'": (dict(meta=_set("dtype", "bfloat16")), r"tensor 'cache\.k' is float32, expected bfloat16"),
    "version not a number": (dict(meta=_set("version", "two")), r"is stream state version 'two'; this code reads "
                                                                 r"versions 1, 2: update the node pack"),
    "keys of another shape": (dict(tensors=lambda t: t.update({"cache.k": t["cache.k"][:1]})),
                              r"tensor 'cache\.k' has shape \[1, 1, 36, 2, 32\], expected \[2, 1, 36, 2, 32\] "
                              r"\(cached keys"),
    "context of another text_dim": (dict(tensors=lambda t: t.update({"context": torch.zeros(1, 9, 48)})),
                                    r"tensor 'context' has shape \[1, 9, 48\], expected \[1, \*, 32\]"),
    "index as floats": (dict(tensors=lambda t: t.update({"cache.index": t["cache.index"].float()})),
                        r"tensor 'cache\.index' is float32, expected int64"),
    "tokens per frame": (dict(tensors=_index(2, 7)), r"cache\.index says 7 tokens per frame; a 48x32 stream of this "
                                                     r"model has 6"),
    "half the text K/V": (dict(tensors=lambda t: t.pop("cache.cross_v")), r"only one of cache\.cross_k / cache\.cross_v"),
    "generator state garbage": (dict(tensors=lambda t: t.update({"rng": torch.zeros_like(t["rng"])})),
                                r"tensor 'rng' is not a CPU generator state"),
    "generator state size": (dict(tensors=lambda t: t.update({"rng": t["rng"][:16].clone()})),
                             r"tensor 'rng' holds 16 bytes; a CPU generator's state is 5056"),
    "a tensor it never writes": (dict(tensors=lambda t: t.update({"evil": torch.zeros(1)})),
                                 r"tensor 'evil' is not part of a stream state"),
    "deeply nested JSON": (dict(meta=_set("session", "[" * 100_000 + "]" * 100_000)),
                           r"metadata 'session' is not valid JSON"),
    "an integer of 5000 digits": (dict(meta=_set("session", '{"height": ' + "9" * 5000 + "}")),
                                  r"metadata 'session' is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_STATES))
def test_state_metadata_and_tensors_are_checked_before_use(state_file, tmp_path, case):
    """Each of these loaded before (and failed later with a misleading message, or not at all): now one line that
    names the field, before anything uses the file."""
    edits, message = BAD_STATES[case]
    bad = _rewritten(state_file, tmp_path / "bad.safetensors", **edits)
    with pytest.raises(ValueError, match=message) as e:
        load_stream_state(bad)
    text = str(e.value)
    assert "\n" not in text and text.startswith(str(bad)) and len(text) < 400
    assert text.endswith(("save the stream again", "update the node pack to resume it"))


def test_a_state_of_another_model_size_is_refused_before_any_cache_is_sized(state_file, monkeypatch):
    """Before, the session (and its KV cache) was built for the new model first; in the CLI the context's width
    was the first thing that disagreed, reported as a context-shape error."""
    from stream_r1.kv_cache import KVCache
    from stream_r1.stream_state import check_state_model

    big = WanConfig.wan_1_3b()
    with pytest.raises(ValueError, match=r"saved from a model with dim 64 / 2 layers / 2 heads / text_dim 32 \(another "
                                         r"model architecture: dim 64 vs 1536, .*num_layers 2 vs 30.*\): load the model "
                                         r"it was made with"):
        check_state_model(load_stream_state(state_file), big)

    def no_cache(*a, **k):
        raise AssertionError("a cache was sized for a model the state does not belong to")

    monkeypatch.setattr(KVCache, "for_model", no_cache)
    other = WanModel(WanConfig.tiny().__class__(dim=64, ffn_dim=128, num_heads=2, num_layers=3, text_dim=48),
                     attention="sdpa").init_weights(seed=0)
    with pytest.raises(ValueError, match=r"another model architecture: num_layers 2 vs 3, text_dim 32 vs 48"):
        StreamSession.from_state(other, state_file)


def test_a_failed_save_keeps_the_previous_state(tiny_model, state_file, monkeypatch):
    import safetensors.torch as st

    before = state_file.read_bytes()
    s = _session(tiny_model)
    _take(s, 3)

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        s.save_state(state_file)
    assert state_file.read_bytes() == before
    assert sorted(p.name for p in state_file.parent.iterdir()) == ["s.safetensors"]


def test_a_state_after_a_skipped_context_pass_is_refused(tiny_model, tmp_path):
    s = _session(tiny_model, sc=StreamConfig.stream_r1().replace(skip_last_context_pass=True))
    _take(s, 2)
    with pytest.raises(ValueError, match="skip_last_context_pass"):
        s.save_state(tmp_path / "s.safetensors")


# ---- prefill (image-to-video / extension) -----------------------------------------------------------------------------
def test_prefill_writes_the_same_cache_as_generating_those_frames(tiny_model, vae):
    ref = _session(tiny_model, vae)
    lat, frames = _take(ref, 2)
    s = _session(tiny_model, vae, seed=11)
    primed = s.prefill(lat)
    c, r = s.cache, ref.cache
    assert (c.global_end, c.local_end) == (r.global_end, r.local_end) and s.frames_done == 6 and s.chunk_index == 0
    assert torch.equal(c.k, r.k) and torch.equal(c.v, r.v)
    assert torch.equal(primed, frames)                                             # the decoder is primed too
    nxt = next(s.run(1))
    assert nxt.start_frame == 6 and nxt.frames.shape[1] == 12                      # continues, no first-frame decode
    with pytest.raises(ValueError, match="call it before the first chunk"):
        s.prefill(lat)
    with pytest.raises(ValueError, match=r"prefill latents must be \[1, F, 16, 4, 6\]"):
        _session(tiny_model).prefill(torch.zeros(1, 2, 16, 8, 8))


def test_refresh_sink_rewrites_the_first_frames(tiny_model):
    s = _session(tiny_model)
    _take(s, 2)
    sink = s.cache.sink_tokens
    k0 = s.cache.k[:, :, :sink].clone()                 # the sink as first written (no eviction yet)
    _take(s, 3)
    assert not torch.equal(s.cache.k[:, :, :sink], k0)  # EMA blended evicted frames in
    assert s.refresh_sink()
    assert torch.equal(s.cache.k[:, :, :sink], k0)      # same prompt: exactly the first chunk's clean K/V again


# ---- CLI ------------------------------------------------------------------------------------------------------------
def _cli(tmp_path, name, *extra):
    from stream_r1.cli import main

    return main(["generate", "--width", "48", "--height", "32", "--quiet", "--out", str(tmp_path / f"{name}.mp4"),
                 "--latents-out", str(tmp_path / f"{name}.safetensors"), *extra])


def test_cli_resume_after_ctrl_c_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    from stream_r1.video_io import read_video

    assert _cli(tmp_path, "a", "--frames", "57", "--telemetry", str(tmp_path / "a.json")) == 0

    real = StreamSession._remember

    def ctrl_c_in_chunk_2(self, x0, start):
        real(self, x0, start)
        if self.chunk_index == 1:
            signal.raise_signal(signal.SIGINT)              # first Ctrl-C: stop after this chunk, save the state

    monkeypatch.setattr(StreamSession, "_remember", ctrl_c_in_chunk_2)
    assert _cli(tmp_path, "b", "--frames", "57", "--telemetry", str(tmp_path / "b.json"),
                "--save-state-every", "5") == 128 + signal.SIGINT                # stopped by Ctrl-C: status 130
    monkeypatch.setattr(StreamSession, "_remember", real)
    state = tmp_path / "b.state.safetensors"
    assert load_stream_state(state).chunk_index == 2
    assert _cli(tmp_path, "c", "--frames", "57", "--resume", str(state), "--telemetry", str(tmp_path / "c.json"),
                "--save-state", str(state)) == 0
    a, b, c = (load_file(tmp_path / f"{n}.safetensors")["latents"] for n in "abc")
    assert torch.equal(torch.cat([b, c], 1), a)
    assert [len(read_video(tmp_path / f"{n}.mp4")) for n in "abc"] == [57, 21, 36]
    ja, jc = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ac")
    assert ja["chunks"] == jc["chunks"]                                          # telemetry carried in the state
    assert load_stream_state(state).chunk_index == 5
    with pytest.raises(SystemExit, match="already has 5 chunks"):                 # nothing left to generate
        _cli(tmp_path, "d", "--frames", "57", "--resume", str(state))


def test_cli_branch_and_bad_state(tmp_path, capsys):
    assert _cli(tmp_path, "a", "--frames", "21", "--save-state", str(tmp_path / "s.safetensors"), "--no-decode") == 0
    assert _cli(tmp_path, "b", "--frames", "45", "--resume", str(tmp_path / "s.safetensors"), "--no-decode") == 0
    assert _cli(tmp_path, "c", "--frames", "45", "--resume", str(tmp_path / "s.safetensors"), "--no-decode",
                "--prompt", "a blue square", "--transition", "flush") == 0
    b, c = (load_file(tmp_path / f"{n}.safetensors")["latents"] for n in "bc")
    assert b.shape == c.shape == (1, 6, 16, 4, 6) and (b - c).abs().mean() > 1e-3
    assert _cli(tmp_path, "d", "--frames", "45", "--resume", str(tmp_path / "s.safetensors")) == 2
    assert "holds no decoder state" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    assert _cli(tmp_path, "e", "--frames", "45", "--resume", str(tmp_path / "bad.safetensors")) == 2
    assert "not a readable stream state" in capsys.readouterr().err


def test_cli_image_to_video(tmp_path):
    import numpy as np
    from PIL import Image

    from stream_r1.video_io import read_video

    Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype("uint8")).save(tmp_path / "i.png")
    assert _cli(tmp_path, "v", "--frames", "25", "--init", str(tmp_path / "i.png")) == 0
    assert len(read_video(tmp_path / "v.mp4")) == 1 + 24                 # the image, then 6 generated latent frames
    assert load_file(tmp_path / "v.safetensors")["latents"].shape == (1, 6, 16, 4, 6)


# ---- nodes ------------------------------------------------------------------------------------------------------------
PACK = "custom_nodes_x_stream_r1_state_test"


@pytest.fixture(scope="module")
def pack():
    from test_nodes import imported_pack
    yield from imported_pack(PACK)


@pytest.fixture
def comfy(pack, tmp_path, monkeypatch):
    import comfy_stubs as stubs
    from stream_r1.checkpoint import save_dit_export

    models = tmp_path / "models"
    student = WanModel(WanConfig.tiny(), attention="sdpa").init_weights(seed=0)
    save_dit_export(models / "stream_r1" / "tiny.safetensors", student.state_dict(), WanConfig.tiny(),
                    StreamConfig.stream_r1())
    rec = stubs.Recorder()
    for name, mod in stubs.build(models, tmp_path / "output", rec).items():
        monkeypatch.setitem(sys.modules, name, mod)
    return stubs


def _node(pack, name, **inputs):
    cls = pack.NODE_CLASS_MAPPINGS[name]
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(**inputs)


def _cond(seed):
    return [[_ctx(seed, 12), {"pooled_output": None}]]


def test_save_and_load_state_nodes_continue_exactly(pack, comfy, tmp_path):
    vae = comfy.FakeWanVAE()
    model = _node(pack, "StreamR1ModelLoader", model_name="tiny.safetensors", dtype="fp32", attention="sdpa",
                  entry="auto")[0]
    _, _, state, _ = _node(pack, "StreamR1Generate", model=model, positive=_cond(0), width=48, height=32, seconds=1.0,
                        frames=0, seed=3, keep_state=True, vae=vae, unique_id="1")
    out = _node(pack, "StreamR1SaveState", state=state, filename_prefix="stream_r1/state")
    path = out["result"][0]
    assert path == str(tmp_path / "output" / "stream_r1" / "state_00001_.safetensors") and os.path.isfile(path)
    assert out["ui"]["text"] == ["stream_r1/state_00001_.safetensors"]            # the name Load State lists
    direct = _node(pack, "StreamR1Continue", state=state, positive=_cond(0), seconds=1.0, keep_state=False)
    cls = pack.NODE_CLASS_MAPPINGS["StreamR1LoadState"]
    assert cls.INPUT_TYPES()["required"]["state_file"][0] == ["stream_r1/state_00001_.safetensors"]
    loaded = _node(pack, "StreamR1LoadState", model=model, state_file="stream_r1/state_00001_.safetensors", vae=vae)[0]
    again = _node(pack, "StreamR1Continue", state=loaded, positive=_cond(0), seconds=1.0, keep_state=False)
    assert torch.equal(direct[0], again[0]) and torch.equal(direct[1]["samples"], again[1]["samples"])
    assert cls.IS_CHANGED(state_file="stream_r1/state_00001_.safetensors") != ""
    with pytest.raises(FileNotFoundError, match="is not one of the listed state files"):     # a path: never opened
        _node(pack, "StreamR1LoadState", model=model, state_file=path)


# ---- flat cost --------------------------------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensor_bytes() -> int:
    """Bytes of every tensor the garbage collector can reach: exact, unlike RSS (allocator pools, arenas)."""
    import warnings
    with warnings.catch_warnings():                     # isinstance() pokes deprecated module attributes
        warnings.simplefilter("ignore")
        return sum(o.numel() * o.element_size() for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_flat_cost_over_ten_times_the_window(tiny_model, vae):
    """Window 9 latent frames; stream 90 (30 chunks) with decoding and telemetry: per-chunk time and RSS stay flat."""
    from stream_r1.telemetry import DriftTelemetry

    s = _session(tiny_model, vae)
    tel = DriftTelemetry(session=s)
    kv, times, rss, live = s.cache.nbytes(), [], [], []
    for chunk in s.run(10 * s.cfg.window_frames // s.cfg.frames_per_block, on_chunk=tel.on_chunk):
        times.append(chunk.seconds)
        if chunk.index in (14, 29):                       # after warm-up (allocator pools, first decodes)
            del chunk
            gc.collect()
            rss.append(_rss())
            live.append(_live_tensor_bytes())
    assert s.frames_done == 90 and s.cache.nbytes() == kv and s.cache.frames_cached == 9
    assert s._recent.shape[1] == 9 and len(s._pieces) <= 4
    early, late = min(times[4:10]), min(times[-6:])       # minima: robust to other load on a shared machine
    assert late / early < 2.0, (early, late)
    # a leak of one decoded chunk per chunk would add ~220 kB a chunk here: the tensor count sees it exactly;
    # RSS only guards against gross growth (glibc arenas alone move it by tens of MB on a busy machine)
    assert abs(live[1] - live[0]) < 64 * 2 ** 10, f"live tensors went {live[0]} -> {live[1]} bytes"
    assert rss[1] - rss[0] < 64 * 2 ** 20, f"RSS grew by {(rss[1] - rss[0]) / 2 ** 20:.1f} MB"
    assert len(tel.records) == 30


def test_cli_resume_with_another_model_names_the_model_not_the_context(tmp_path, capsys):
    """A state saved from another model architecture is refused before anything is sized for it, saying so."""
    from safetensors.torch import save_file

    from stream_r1.checkpoint import save_dit_export
    from stream_r1.config import WanConfig
    from stream_r1.wan.model import WanModel

    tiny = tmp_path / "tiny.safetensors"
    save_dit_export(tiny, WanModel(WanConfig.tiny()).init_weights(seed=0).state_dict(), WanConfig.tiny(),
                    StreamConfig.stream_r1())
    save_file({"context": torch.randn(1, 8, WanConfig.tiny().text_dim)}, str(tmp_path / "ctx.safetensors"))
    assert _cli(tmp_path, "a", "--frames", "9", "--checkpoint", str(tiny), "--context", str(tmp_path / "ctx.safetensors"),
                "--no-decode", "--save-state", str(tmp_path / "s.safetensors")) == 0
    capsys.readouterr()
    assert _cli(tmp_path, "b", "--frames", "21", "--resume", str(tmp_path / "s.safetensors"), "--no-decode") == 2
    err = capsys.readouterr().err
    assert "made with" in err and "context must be" not in err and err.count("\n") == 1
