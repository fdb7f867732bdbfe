// Tests of the live steering recorder (web/lib/live_timeline.js): `node --test web/tests/`. The round trip goes
// through web/lib/timeline.js, the mirror of stream_r1/timeline.py checked against it on shared cases.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { LiveTimeline, NO_START, oneLine } from "../lib/live_timeline.js";
import { chunkStartFrame, parseTimeline, timelineEvents } from "../lib/timeline.js";

/** A change event as the server sends it: at the start of chunk `chunk` (3 latent frames per chunk). */
const change = (chunk, prompt, transition = "recache") =>
  ({ chunk, frame: chunkStartFrame(chunk), prompt, transition, source: "live" });

describe("live timeline", () => {
  test("the starting prompt at 0, each change at its boundary with its transition", () => {
    const rec = new LiveTimeline({ prompt: "a red fox walks through fresh snow" });
    rec.change(change(5, "the fox starts to run"));
    rec.change(change(11, "close-up of the fox's face", "flush"));
    rec.change(change(12, "the fox rests", "none"));
    assert.equal(rec.toText(), [
      "0: a red fox walks through fresh snow",
      "3.5625 [recache]: the fox starts to run",       // chunk 5 starts at frame 57
      "8.0625 [flush]: close-up of the fox's face",     // frame 129
      "8.8125 [none]: the fox rests",                    // frame 141
    ].join("\n"));
  });

  test("round trip: the parser reads back the same entries, on the same chunks", () => {
    const rec = new LiveTimeline({ prompt: "  a lighthouse at dusk\n waves  " });
    const sent = [change(1, "storm clouds gather"), change(2, "lightning", "flush"), change(40, "calm sea", "none"),
                  change(1234, "dawn, gulls: \"quiet\" [soft]"), change(1235, "#1 sunrise")];
    for (const c of sent) assert.equal(rec.change(c), true);
    const tl = parseTimeline(rec.toText());
    const strip = (e) => ({ prompt: e.prompt, seconds: e.seconds, chunk: e.chunk, transition: e.transition });
    assert.deepEqual(tl.entries.map(strip), rec.entries().map(strip));
    assert.deepEqual(tl.entries.map((e) => e.seconds), [0, ...sent.map((c) => c.frame / 16)]);
    const events = timelineEvents(tl, 3, 2000);
    assert.deepEqual(events.map((e) => e.chunk), [0, ...sent.map((c) => c.chunk)]);
    assert.deepEqual(events.map((e) => e.transition), ["recache", "recache", "flush", "none", "recache", "recache"]);
    assert.equal(events[0].prompt, "a lighthouse at dusk  waves");
  });

  test("prompts become one line; Python's spaces too", () => {
    assert.equal(oneLine("a\nb\r\nc\u2028d\x1ce\x85f"), "a b  c d e f");
    assert.equal(oneLine("  x\t"), "x");
    assert.equal(oneLine(null), "");
    const rec = new LiveTimeline({ prompt: "start" });
    rec.change(change(3, "line one\nline two\x1d"));
    assert.equal(parseTimeline(rec.toText()).entries[1].prompt, "line one line two");
  });

  test("a change at 0 replaces the start; a repeated or earlier boundary replaces what follows", () => {
    const rec = new LiveTimeline({ prompt: "first" });
    rec.change(change(0, "replaced"));
    rec.change(change(4, "a"));
    rec.change(change(8, "b"));
    rec.change(change(8, "b2", "flush"));
    assert.deepEqual(rec.entries().map((e) => [e.seconds, e.prompt, e.transition]),
                     [[0, "replaced", null], [chunkStartFrame(4) / 16, "a", "recache"],
                      [chunkStartFrame(8) / 16, "b2", "flush"]]);
    rec.change(change(6, "c"));
    assert.deepEqual(rec.entries().map((e) => e.prompt), ["replaced", "a", "c"]);
  });

  test("changes the format cannot hold are refused; unknown transitions read as recache", () => {
    const rec = new LiveTimeline({ prompt: "start" });
    assert.equal(rec.change({ frame: 9, prompt: "   " }), false);
    assert.equal(rec.change({ frame: -1, prompt: "x" }), false);
    assert.equal(rec.change({ frame: 2.5, prompt: "x" }), false);
    assert.equal(rec.change({ prompt: "x" }), false);
    assert.equal(rec.change({ frame: 9, prompt: "x", transition: "explode" }), true);
    assert.equal(rec.toText(), "0: start\n0.5625 [recache]: x");
    assert.equal(new LiveTimeline().toText(), "");
    rec.start("new run");
    assert.equal(rec.toText(), "0: new run");
  });

  test("without a starting prompt, a comment says to add one (the text still parses)", () => {
    const rec = new LiveTimeline({ prompt: null });
    rec.change(change(2, "rain"));
    assert.equal(rec.toText(), `${NO_START}\n1.3125 [recache]: rain`);      // chunk 2 starts at frame 21
    assert.deepEqual(parseTimeline(rec.toText()).entries.map((e) => e.prompt), ["rain"]);
  });
});
