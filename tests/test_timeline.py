"""Prompt timelines: parsing and validation, and the three transitions at exact chunk boundaries (tiny model)."""
import json

import pytest
import torch

from stream_r1.config import StreamConfig
from stream_r1.kv_cache import KVCache
from stream_r1.stream import StreamSession
from stream_r1.timeline import (PromptSchedule, Timeline, TimelineEntry, chunk_at_seconds, chunk_start_frame,
                                chunk_start_seconds)
from helpers import tiny_context as _ctx

H, W = 32, 48                                   # latent 4x6, 6 tokens per frame






# ---- parsing ------------------------------------------------------------------------------------------------------
def test_text_format_parses_every_form():
    tl = Timeline.parse("""
# a comment
0: a red fox walks
   through fresh snow
12.5 [flush]: the fox runs
1:30 [NONE]: close-up
@140: the fox rests
""")
    assert [(e.seconds, e.chunk, e.transition, e.prompt) for e in tl.entries] == [
        (0.0, None, None, "a red fox walks through fresh snow"), (12.5, None, "flush", "the fox runs"),
        (90.0, None, "none", "close-up"), (None, 140, None, "the fox rests")]
    ev = tl.events(frames_per_block=3)
    assert [(e.chunk, e.transition) for e in ev] == [(0, "recache"), (17, "flush"), (120, "none"), (140, "recache")]
    assert ev[1].seconds == 201 / 16                    # 12.5 s -> chunk 17, which starts at video frame 201
    again = Timeline.parse(tl.to_text())
    assert again.entries == tl.entries
    assert Timeline.parse(json.dumps(tl.to_json())) == tl


def test_json_format_and_bare_list():
    data = {"format": "stream_r1.timeline", "version": 1, "default_transition": "flush",
            "entries": [{"seconds": 0, "prompt": "a"}, {"time": 3, "prompt": "b", "transition": "none"},
                        {"chunk": 9, "prompt": "c"}]}
    tl = Timeline.parse(json.dumps(data))
    assert [(e.chunk, e.transition) for e in tl.events()] == [(0, "flush"), (4, "none"), (9, "flush")]
    assert Timeline.from_json([{"seconds": 0, "prompt": "x"}]).entries == (TimelineEntry("x", 0.0),)


def test_chunk_boundaries():
    assert [chunk_start_frame(k) for k in range(4)] == [0, 9, 21, 33]      # 9 frames, then 12 per chunk
    assert chunk_start_seconds(1) == 9 / 16
    assert chunk_at_seconds(0) == 0 and chunk_at_seconds(0.25) == 0 and chunk_at_seconds(0.5) == 1
    assert chunk_at_seconds(180) == 240


def test_cli_prompts_with_and_without_times():
    tl = Timeline.from_prompts(["a fox", "5: a dog", "@9 [flush]: a cat"])
    assert tl.base_prompt == "a fox" and [e.chunk for e in tl.events()] == [0, 7, 9]
    assert Timeline.from_prompts(["3 cats: sitting"]).base_prompt == "3 cats: sitting"   # not a time
    with pytest.raises(ValueError, match="two prompts without a time"):
        Timeline.from_prompts(["a", "b"])


@pytest.mark.parametrize("text, num_chunks, message", [
    ("0: a\n5: b\n3: c", None, r"entry 3 \(3 s\) does not come after entry 2 \(5 s\)"),
    ("0: a\n5: b\n5.2: c", None, r"same chunk boundary \(chunk 7.*at least one chunk \(0.75 s\) apart"),
    ("0: a\n200: b", 240, r"entry 2 \(200 s\) is beyond the stream: it has 240 chunks"),
    ("0: a\n@12: b", 12, r"beyond the stream"),
    ("2: a", None, r"starts at 2 s, so no prompt covers the start"),
    ("0 [fade]: a", None, r"line 1: .*transition 'fade' is not one of recache, flush, none"),
    ("zero: a", None, r"line 1: 'zero: a' is not 'seconds: prompt'"),
    ("0:   ", None, r"line 1: .*empty prompt"),
    ("  indented", None, r"continues a prompt, but no entry"),
    ("{not json", None, r"timeline JSON is not valid"),
    ('{"entries": [{"seconds": -1, "prompt": "a"}]}', None, r"entry 1: .*must be >= 0"),
    ('{"entries": [{"seconds": 0, "prompt": "a", "speed": 2}]}', None, r"unknown keys \['speed'\]"),
    ('{"format": "other", "entries": []}', None, r"not a timeline"),
    ("", None, r"the timeline is empty"),
])
def test_bad_timelines_say_what_is_wrong(text, num_chunks, message):
    with pytest.raises(ValueError, match=message):
        Timeline.parse(text).events(3, num_chunks)


# ---- hostile input: always the parser's ValueError, on one line, in linear time -----------------------------------------
def _deep(n):
    v = []
    for _ in range(n):
        v = [v]
    return v


def _one_line_error(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert type(info.value) is ValueError and len(str(info.value).splitlines()) == 1
    return str(info.value)


@pytest.mark.parametrize("text, message", [
    ('[{"seconds": 0, "prompt": "a"}, {"seconds": 1e308, "prompt": "b"}]', r"entry 2: .*time 1e\+308 is too large: "
     r"switch times go up to 10000000 s"),                                      # was OverflowError in events()
    ('[{"chunk": 1e400, "prompt": "a"}]', r"entry 1: chunk inf is too large: chunk indices go up to 10000000"),
    ('{"version": 1e400, "entries": []}', r"timeline version inf is newer than this reader"),
    ('{"version": [1], "entries": []}', r'timeline version \[1\] is not a whole number: write "version": 1'),
    ('{"version": null, "entries": []}', r"timeline version None is not a whole number"),
    ("[" * 100_000 + "]" * 100_000, r"nested more than 32 levels deep"),     # was RecursionError
    ('[{"seconds": NaN, "prompt": "a"}]', r"not valid: NaN is not a number a timeline can use"),
    ('[{"seconds": -Infinity, "prompt": "a"}]', r"not valid: -Infinity is not a number"),
    ('{"base_prompt": 5, "entries": []}', r"the base prompt 5 is not text: write \"base_prompt\""),   # was accepted
    ('{"base_prompt": " ", "entries": [{"seconds": 0, "prompt": "a"}]}', r"the base prompt is blank"),
    ("0: a\n" + "9" * 400 + ":00: b", r"line 2: .*time inf is too large"),    # was OverflowError (int + float)
    ("0: a\n@" + "9" * 5000 + ": b", r"line 2: chunk inf is too large"),      # was int()'s 4300-digit ValueError
    ('[{"seconds": ' + "9" * 5000 + ', "prompt": "a"}]', r"time inf is too large"),
    ('[{"chunk": "9' + "0" * 30 + '", "prompt": "a"}]', r"chunk 9e\+30 is too large"),
    ('["hello\\nworld"]', r"got 'hello\\nworld'$"),                           # quoted: still one line
], ids=["seconds-1e308", "chunk-1e400", "version-1e400", "version-list", "version-null", "nested-100000",
        "seconds-NaN", "seconds--Infinity", "base-prompt-5", "base-prompt-blank", "minutes-400-digits",
        "chunk-5000-digits", "seconds-5000-digits", "chunk-string-31-digits", "entry-with-line-break"])
def test_hostile_text_is_a_one_line_value_error(text, message):
    _one_line_error(lambda: Timeline.parse(text).events(3, 240), message)


@pytest.mark.parametrize("call, message", [
    (lambda: Timeline.parse(b"0: a"), r"a timeline is text \(str\), not bytes"),
    (lambda: Timeline.parse(None), r"not NoneType"),
    (lambda: Timeline.from_text(5), r"not int"),
    (lambda: Timeline.from_prompts(["0: a", 5]), r"not int"),
    (lambda: Timeline.from_json([{"seconds": 0, "prompt": 5}]), r"expected .*got \{'seconds': 0, 'prompt': 5\}"),
    (lambda: Timeline.from_json({"base_prompt": b"x", "entries": []}), r"base prompt b'x' is not text"),
    (lambda: Timeline.from_json([{"seconds": 10 ** 5000, "prompt": "a"}]), r"time inf is too large"),
    (lambda: Timeline.from_json([{"chunk": -10 ** 5000, "prompt": "a"}]), r"chunk -inf must be >= 0"),
    (lambda: Timeline.from_json([{"seconds": float("nan"), "prompt": "a"}]), r"time nan is not a number"),
    (lambda: Timeline.from_json({"version": 10 ** 5000, "entries": []}), r"version <int> is newer"),
    (lambda: Timeline.from_json({"version": "2", "entries": []}), r"version '2' is newer"),
    (lambda: Timeline.from_json(_deep(100_000)), r"entry 1: expected .*got \[\[\[\[.*\.\.\.$"),
    (lambda: Timeline.from_json([{"seconds": 0, "prompt": "a", "transition": _deep(100_000)}]),
     r"transition \[\[\[.*\.\.\. is not one of"),
    (lambda: Timeline.from_json([{"seconds": 0, "prompt": "a", 1: 2, "b": 3}]), r"unknown keys \['b', 1\]"),
    (lambda: Timeline.from_json({"entries": {"seconds": 0}}), r"needs a list of entries"),
    (lambda: TimelineEntry(5, 0.0), r"prompt must be text \(str\), not int"),
    (lambda: TimelineEntry("a", "5"), r"time '5' is not a number of seconds"),
    (lambda: TimelineEntry("a", chunk=2.5), r"chunk 2.5 is not a whole number"),
    (lambda: TimelineEntry("a", 10 ** 400), r"time inf is too large"),
    (lambda: Timeline((), base_prompt=5), r"base prompt 5 is not text"),
    (lambda: chunk_at_seconds(float("inf")), r"time inf is not a finite number of seconds"),
])
def test_hostile_values_are_one_line_value_errors(call, message):
    _one_line_error(call, message)


def test_a_self_referencing_list_is_quoted_briefly():
    loop = []
    loop.append(loop)
    assert _one_line_error(lambda: Timeline.from_json(loop), r"got \[\[\[").endswith("...")


def test_size_limits():
    from stream_r1.timeline import MAX_ENTRIES, MAX_TEXT_CHARS

    _one_line_error(lambda: Timeline.parse("0: a\n" + "x" * MAX_TEXT_CHARS), r"longer than 1000000 characters")
    many = "\n".join(f"@{k}: p{k % 7}" for k in range(MAX_ENTRIES))
    tl = Timeline.parse(many)
    assert len(tl.events()) == MAX_ENTRIES and tl.prompts == [f"p{k}" for k in range(7)]
    _one_line_error(lambda: Timeline.parse(many + "\n@99999: x"), r"^timeline line 10001: more than 10000 entries")
    too_many = json.dumps([{"chunk": k, "prompt": "p"} for k in range(MAX_ENTRIES + 1)])
    _one_line_error(lambda: Timeline.parse(too_many), r"^the timeline has 10001 entries; at most 10000")
    _one_line_error(lambda: Timeline((TimelineEntry("a", 0.0),) * (MAX_ENTRIES + 1)), r"at most 10000")


@pytest.mark.parametrize("text", [
    "0: a\n" + "  more\n" * 100_000,                        # continuation lines (were joined with a quadratic +=)
    "0: a\n1" + " " * 100_000 + "x",                         # spaces after a time (the line regex was quadratic)
    "0: a\n1" + " " * 100_000 + "[flush]" + " " * 100_000 + ": b",
    "[" + "[]," * 100_000 + "[]]",                           # many brackets, shallow
    '["' + "[" * 900_000,                                    # brackets inside an unclosed string
], ids=["continuations", "spaces", "spaces-transition", "brackets", "string-brackets"])
def test_worst_case_inputs_parse_in_linear_time(text):
    import time

    t0 = time.perf_counter()
    try:
        Timeline.parse(text).events()
    except ValueError as e:
        assert len(str(e).splitlines()) == 1
    assert time.perf_counter() - t0 < 1.0


def test_to_text_writes_times_it_can_read_back():
    tl = Timeline.parse('[{"seconds": 0, "prompt": "a"}, {"seconds": 1234567.5, "prompt": "b"}, '
                        '{"seconds": 2345678.123456789, "prompt": "c"}, {"chunk": 9999999, "prompt": "d"}]')
    assert tl.to_text() == "0: a\n1234567.5: b\n2345678.123456789: c\n@9999999: d"        # was 1.23457e+06
    assert Timeline.parse(tl.to_text()) == tl
    assert Timeline.parse('[{"seconds": 0.00001, "prompt": "a"}]').to_text() == "0.00001: a"


def test_load_refuses_files_that_are_not_utf8_text(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_bytes(b"0: caf\xe9\n")
    _one_line_error(lambda: Timeline.load(bad), r"is not UTF-8 text .*save it as UTF-8")


# ---- transitions ------------------------------------------------------------------------------------------------------
def _session(model, sc=None, seed=4, ctx=0):
    return StreamSession(model, sc or StreamConfig.stream_r1(), _ctx(ctx), height=H, width=W, seed=seed)


def _run(sess, n):
    return torch.cat([c.latents for c in sess.run(n)], dim=1)


def test_none_keeps_the_frame_cache_and_changes_only_the_text(tiny_model):
    s = _session(tiny_model)
    _run(s, 3)
    k, v, idx = s.cache.k.clone(), s.cache.v.clone(), (s.cache.global_end, s.cache.local_end)
    s.set_context(_ctx(1), "none")
    assert torch.equal(s.cache.k, k) and torch.equal(s.cache.v, v) and (s.cache.global_end, s.cache.local_end) == idx
    assert not any(s.cache.cross_valid)


@pytest.mark.parametrize("policy, chunks", [("window_sink", 4), ("longlive", 6), ("full", 3)])
def test_recache_equals_a_fresh_context_pass_over_the_window(tiny_model, policy, chunks):
    """After the switch the cache holds: the sink as it was + the window frames' K/V from clean passes under the new
    prompt, chunk by chunk at their own positions; indices are not rolled back."""
    sc = StreamConfig.for_policy(policy)
    s = _session(tiny_model, sc)
    lat = _run(s, chunks)
    c, fs = s.cache, s.cache.frame_seqlen
    before_k, idx = c.k.clone(), (c.global_end, c.local_end)
    sink, n = c.sink_tokens, (c.local_end - c.sink_tokens) // fs
    assert n > 0
    s.set_context(_ctx(1), "recache")
    assert (c.global_end, c.local_end) == idx
    assert torch.equal(c.k[:, :, :sink], before_k[:, :, :sink])                        # the sink is never written
    assert not torch.equal(c.k[:, :, sink:c.local_end], before_k[:, :, sink:c.local_end])

    # reference: a fresh cache holding only the sink, then clean passes over the window's latents, new prompt
    ref = KVCache.for_model(tiny_model, sc, batch=1, height=H, width=W)
    ref.k[:, :, :sink], ref.v[:, :, :sink] = before_k[:, :, :sink], s.cache.v[:, :, :sink]
    first = lat.shape[1] - n
    ref.global_end, ref.local_end = first * fs, sink
    with torch.no_grad():
        for a in range(first, lat.shape[1], 3):
            x = lat[:, a:a + 3].permute(0, 2, 1, 3, 4)                            # the chunks as generated
            tiny_model(x, torch.zeros(1, 3), _ctx(1), cache=ref, start_frame=a)
    assert torch.equal(ref.k[:, :, :c.local_end], c.k[:, :, :c.local_end])
    assert torch.equal(ref.v[:, :, :c.local_end], c.v[:, :, :c.local_end])


def test_flush_keeps_the_sink_and_the_last_frame(tiny_model):
    s = _session(tiny_model)
    _run(s, 4)                                         # buffer: sink (3) + frames 6..11
    c, fs = s.cache, s.cache.frame_seqlen
    k, g = c.k.clone(), c.global_end
    assert s.flush() == 5
    assert c.local_end == c.sink_tokens + fs and c.global_end == g
    assert torch.equal(c.k[:, :, :c.sink_tokens], k[:, :, :c.sink_tokens])
    assert torch.equal(c.k[:, :, c.sink_tokens:c.local_end], k[:, :, 9 * fs - fs:9 * fs])
    nxt = next(s.run(1))                               # the stream goes on: 3 new frames after the kept one
    assert nxt.start_frame == 12 and c.local_end == c.sink_tokens + 4 * fs and torch.isfinite(nxt.latents).all()


def test_timeline_switches_at_exact_chunk_boundaries(tiny_model):
    calls = []

    def encode(p):
        calls.append(p)
        return {"a": _ctx(0), "b": _ctx(1), "c": _ctx(2)}[p]

    tl = Timeline.parse("0: a\n@2 [none]: b\n@4 [flush]: c\n@5 [recache]: a")
    sched = PromptSchedule.build(tl, 3, num_chunks=6, encode=encode)
    s = _session(tiny_model)
    s.set_timeline(sched)
    got = _run(s, 6)
    assert calls == ["a", "b", "c"]                                          # each prompt encoded once
    assert [(w["chunk"], w["action"]) for w in s.switches if w["action"].startswith("prompt")] == [
        (0, "prompt:none"), (2, "prompt:none"), (4, "prompt:flush"), (5, "prompt:recache")]

    # by hand: prompt a for chunks 0-1, b from chunk 2 (text only), flush + c at 4, recache + a at 5
    ref = _session(tiny_model)
    parts = [_run(ref, 2)]
    ref.set_context(_ctx(1))
    parts.append(_run(ref, 2))
    ref.set_context(_ctx(2), "flush")
    parts.append(_run(ref, 1))
    ref.set_context(_ctx(0), "recache")
    parts.append(_run(ref, 1))
    assert torch.equal(got, torch.cat(parts, 1))
    plain = _run(_session(tiny_model), 2)
    assert torch.equal(got[:, :6], plain)


def test_bad_transition_and_context_are_refused(tiny_model):
    s = _session(tiny_model)
    with pytest.raises(ValueError, match="transition 'fade'"):
        s.set_context(_ctx(1), "fade")
    with pytest.raises(ValueError, match=r"context must be \[1, L, text_dim\]"):
        s.set_context(torch.zeros(2, 4, 32))


# ---- CLI ------------------------------------------------------------------------------------------------------------
def test_cli_timeline_end_to_end(tmp_path):
    from stream_r1.cli import main
    from stream_r1.video_io import read_video

    tl = tmp_path / "t.json"
    tl.write_text(json.dumps({"entries": [{"seconds": 0, "prompt": "a fox"},
                                          {"chunk": 2, "prompt": "a dog", "transition": "flush"}]}))
    out = tmp_path / "v.mp4"
    rc = main(["generate", "--timeline", str(tl), "--frames", "45", "--width", "48", "--height", "32",
               "--out", str(out), "--telemetry", str(tmp_path / "t.telemetry.json"), "--quiet"])
    assert rc == 0 and len(read_video(out)) == 45
    events = json.loads((tmp_path / "t.telemetry.json").read_text())["events"]
    assert [(e["chunk"], e["action"]) for e in events] == [(2, "flush"), (2, "prompt:flush")]

    rc = main(["generate", "--prompt", "0: a", "--prompt", "1 [recache]: b", "--frames", "45", "--width", "48",
               "--height", "32", "--out", str(tmp_path / "w.mp4"), "--no-decode", "--quiet"])
    assert rc == 0


def test_cli_bad_timeline_is_a_clear_error(tmp_path, capsys):
    from stream_r1.cli import main

    rc = main(["generate", "--prompt", "0: a", "--prompt", "30: b", "--frames", "45", "--width", "48", "--height",
               "32", "--no-decode", "--quiet", "--out", str(tmp_path / "x.mp4")])
    assert rc == 2 and "beyond the stream" in capsys.readouterr().err


# ---- node --------------------------------------------------------------------------------------------------------------
PACK = "custom_nodes_x_stream_r1_timeline_test"


@pytest.fixture(scope="module")
def pack():
    from test_nodes import imported_pack
    yield from imported_pack(PACK)


class FakeCLIP:
    """CLIPTextEncode's interface: tokenize + encode_from_tokens_scheduled -> CONDITIONING [[cond, extras]]."""

    def __init__(self):
        self.encoded = []

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        import zlib
        self.encoded.append(tokens)
        c = torch.zeros(1, 16, 32)
        c[:, :9] = _ctx(zlib.crc32(tokens.encode()))
        return [[c, {"pooled_output": None}]]


def _node(pack, name, **inputs):
    cls = pack.NODE_CLASS_MAPPINGS[name]
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(**inputs)


def test_timeline_node_drives_generate_and_continue(pack, tmp_path, monkeypatch):
    import sys

    import comfy_stubs as stubs
    from stream_r1.checkpoint import save_dit_export
    from stream_r1.config import WanConfig
    from stream_r1.wan.model import WanModel

    student = WanModel(WanConfig.tiny(), attention="sdpa").init_weights(seed=0)
    save_dit_export(tmp_path / "models" / "stream_r1" / "tiny.safetensors", student.state_dict(), WanConfig.tiny(),
                    StreamConfig.stream_r1())
    for name, mod in stubs.build(tmp_path / "models", tmp_path / "output", stubs.Recorder()).items():
        monkeypatch.setitem(sys.modules, name, mod)
    model = _node(pack, "StreamR1ModelLoader", model_name="tiny.safetensors", dtype="fp32", attention="sdpa",
                  entry="auto")[0]
    clip = FakeCLIP()
    positive, text = _node(pack, "StreamR1Timeline", clip=clip, timeline="0: a\n@1 [flush]: b\n@4: c\n@5 [none]: a",
                           default_transition="recache")
    assert clip.encoded == ["a", "b", "c"]                                     # each prompt once
    assert json.loads(text)["entries"][1] == {"chunk": 1, "prompt": "b", "transition": "flush"}
    assert torch.equal(positive[0][0], clip.encode_from_tokens_scheduled("a")[0][0])

    first, _ = _node(pack, "StreamR1Timeline", clip=clip, timeline="0: a\n@1 [flush]: b", default_transition="none")
    gen = dict(model=model, positive=first, width=48, height=32, seconds=1.0, frames=33, seed=3, keep_state=True,
               vae=None, options=None, unique_id="1")
    _, latent, state, _ = _node(pack, "StreamR1Generate", **gen)          # chunks 0-2; the whole timeline goes on:
    _, latent2, _, _ = _node(pack, "StreamR1Continue", state=state, positive=positive, seconds=2.25, keep_state=False)

    # the same stream in the core: 6 chunks following the timeline
    conds = {p: clip.encode_from_tokens_scheduled(p)[0][0] for p in "abc"}
    s = StreamSession(model.module, model.stream_config, conds["a"], height=32, width=48, seed=3)
    s.set_timeline(PromptSchedule.build(Timeline.parse("0: a\n@1 [flush]: b\n@4: c\n@5 [none]: a"), 3, 6,
                                        contexts=conds))
    ref = torch.cat([c.latents for c in s.run(6)], 1)
    to_latent = sys.modules[PACK + ".nodes.layout"].latent_from_core
    assert torch.equal(latent["samples"], to_latent(ref[:, :9], torch.device("cpu"))["samples"])
    assert torch.equal(latent2["samples"], to_latent(ref[:, 9:18], torch.device("cpu"))["samples"])

    with pytest.raises(ValueError, match=r"entry 3 \(chunk 4\) is beyond the stream: it has 3 chunks"):
        _node(pack, "StreamR1Generate", **{**gen, "positive": positive})
    with pytest.raises(ValueError, match="does not come after"):
        _node(pack, "StreamR1Timeline", clip=clip, timeline="0: a\n5: b\n2: c", default_transition="none")
