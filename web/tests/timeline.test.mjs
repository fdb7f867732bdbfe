// Tests of web/lib/timeline.js: `node --test web/tests/`. The shared cases in tests/fixtures/timeline_cases.json are
// the Python parser's outcomes (tests/test_timeline_cases.py checks them against stream_r1/timeline.py), so passing
// them here means the widget reads a timeline exactly as the nodes and the CLI do.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import {
  TRANSITIONS, chunkAtSeconds, chunkStartFrame, floatRepr, formatClock, formatG, layoutTimeline, lineRange,
  parseTimeline, pyRepr, splitLines, streamLength, ticks, timelineEvents, timelineToJson, timelineToText,
} from "../lib/timeline.js";

const ROOT = new URL("../../", import.meta.url);
const { cases, formats } = JSON.parse(readFileSync(new URL("tests/fixtures/timeline_cases.json", ROOT), "utf8"));
const PREFIX = "timeline JSON is not valid: ";

function outcome(c) {
  try {
    const tl = parseTimeline(c.text, c.default_transition ?? "recache");
    const events = timelineEvents(tl, c.frames_per_block ?? 3, c.num_chunks ?? null);
    return {
      timeline: timelineToJson(tl),
      events: events.map(({ chunk, prompt, transition, seconds }) => ({ chunk, prompt, transition, seconds })),
    };
  } catch (err) {
    if (!(err instanceof Error) || err.name === "TypeError" && !/argument must be/.test(err.message)) throw err;
    return { error: c.match === "prefix" && err.message.startsWith(PREFIX) ? PREFIX : err.message };
  }
}

describe("shared cases (tests/fixtures/timeline_cases.json, also run against stream_r1/timeline.py)", () => {
  test("the fixture is there and has both kinds of case", () => {
    assert.ok(cases.length >= 60);
    assert.ok(cases.some((c) => "error" in c) && cases.some((c) => "timeline" in c));
  });
  for (const c of cases) {
    test(c.name, () => {
      const want = Object.fromEntries(["timeline", "events", "error"].filter((k) => k in c).map((k) => [k, c[k]]));
      assert.deepEqual(outcome(c), want);
    });
  }
});

describe("python formatting", () => {
  test("f'{x:g}' with round-half-even on the exact value", () => {
    const cases = [[0, "0"], [-0, "-0"], [12.5, "12.5"], [90, "90"], [0.75, "0.75"], [179.8125, "179.812"],
      [1000.125, "1000.12"], [1000.375, "1000.38"], [999999.5, "1e+06"], [1234567, "1.23457e+06"],
      [0.0001, "0.0001"], [0.00001, "1e-05"], [123456, "123456"], [2.5e-7, "2.5e-07"], [Infinity, "inf"],
      [NaN, "nan"], [5.0625, "5.0625"], [1e100, "1e+100"]];
    for (const [x, s] of cases) assert.equal(formatG(x), s, String(x));
  });

  test("the fixture's numbers as Python formats them", () => {
    assert.ok(formats.length > 50);
    for (const [x, g, r] of formats) {
      assert.equal(formatG(x), g, String(x));
      assert.equal(floatRepr(x), r, String(x));
    }
  });

  test("repr of floats and strings", () => {
    assert.equal(floatRepr(-1), "-1.0");
    assert.equal(floatRepr(1e-5), "1e-05");
    assert.equal(floatRepr(1e16), "1e+16");
    assert.equal(floatRepr(1e15), "1000000000000000.0");
    assert.equal(floatRepr(0.1), "0.1");
    assert.equal(pyRepr("it's"), '"it\'s"');
    assert.equal(pyRepr(`it's "x"`), `'it\\'s "x"'`);
    assert.equal(pyRepr("a\u00a0b\u200bc\n"), "'a\\xa0b\\u200bc\\n'");
    assert.equal(pyRepr("😀 é"), "'😀 é'");
    assert.equal(pyRepr({ a: [1, null, true], b: "x" }), "{'a': [1, None, True], 'b': 'x'}");
  });

  test("str.splitlines", () => {
    assert.deepEqual(splitLines("a\r\nb\rc\n").map((l) => l.text), ["a", "b", "c"]);
    assert.deepEqual(splitLines("\n").map((l) => l.text), [""]);
    assert.deepEqual(splitLines(""), []);
    assert.deepEqual(lineRange("0: a\r\n5: b\n  c\n", 2, 3), [6, 14]);
  });
});

describe("chunk boundaries and stream length", () => {
  test("as stream_r1.timeline", () => {
    assert.deepEqual([0, 1, 2, 3].map((k) => chunkStartFrame(k)), [0, 9, 21, 33]);
    assert.equal(chunkAtSeconds(0.25), 0);
    assert.equal(chunkAtSeconds(0.5), 1);
    assert.equal(chunkAtSeconds(180), 240);
  });

  test("a generate node's seconds / frames", () => {
    assert.deepEqual(streamLength({ seconds: 5 }), { chunks: 7, seconds: 81 / 16 });
    assert.deepEqual(streamLength({ seconds: 180 }), { chunks: 240, seconds: 2877 / 16 });
    assert.deepEqual(streamLength({ seconds: 30 }), { chunks: 40, seconds: 477 / 16 });
    assert.deepEqual(streamLength({ seconds: 5, frames: 33 }), { chunks: 3, seconds: 33 / 16 });
    assert.equal(streamLength({ frames: 32 }), null);
  });
});

describe("the bar's layout", () => {
  const five = cases.find((c) => c.name.startsWith("five prompts")).text;

  test("a known stream: segments proportional to their durations, ending at the stream's end", () => {
    const stream = streamLength({ seconds: 180 });
    const lay = layoutTimeline(five, { stream });
    assert.ok(lay.ok && lay.known);
    assert.equal(lay.end, 2877 / 16);
    assert.deepEqual(lay.segments.map((s) => s.chunk), [0, 48, 96, 144, 192]);
    assert.deepEqual(lay.segments.map((s) => s.transition), ["recache", "recache", "none", "recache", "flush"]);
    assert.deepEqual(lay.segments.map((s) => s.time), ["0:00", "0:36", "1:12", "1:48", "2:24"]);
    assert.deepEqual(lay.segments.map((s) => s.lines), [[2, 2], [3, 3], [4, 4], [5, 5], [6, 6]]);
    const total = lay.segments.reduce((a, s) => a + s.width, 0);
    assert.ok(Math.abs(total - 1) < 1e-12);
    assert.ok(Math.abs(lay.segments[1].width - 48 * 12 / 16 / lay.end) < 1e-12);
    assert.ok(!lay.segments.some((s) => s.open));
    assert.deepEqual(lay.ticks.map((t) => t.label), ["0:00", "0:30", "1:00", "1:30", "2:00", "2:30"]);
  });

  test("unknown length: the last entry plus a tail, the last segment open", () => {
    const lay = layoutTimeline("0: a\n10: b\n20: c");
    assert.ok(lay.ok && !lay.known);
    const last = lay.segments[2];
    assert.ok(last.open && last.start === 20.0625);
    assert.equal(lay.end, 20.0625 + 20.0625 / 2);
    assert.equal(layoutTimeline("0: a").end, 5);
  });

  test("errors name the line; a stream too short for the timeline is an error", () => {
    const bad = layoutTimeline("0: a\n5 [fade]: b");
    assert.equal(bad.ok, false);
    assert.equal(bad.errorLine, 2);
    assert.match(bad.error, /transition 'fade'/);
    const short = layoutTimeline(five, { stream: streamLength({ seconds: 60 }) });
    assert.match(short.error, /^timeline entry 3 \(72 s\) is beyond the stream: it has 80 chunks/);
  });

  test("continuation lines and chunk entries", () => {
    const lay = layoutTimeline("0: a\n  more\n@8 [flush]: b", { defaultTransition: "none" });
    assert.deepEqual(lay.segments.map((s) => [s.time, s.transition, s.lines]), [["0:00", "none", [1, 2]],
      ["@8", "flush", [3, 3]]]);
    const json = layoutTimeline('{"base_prompt": "b", "entries": [{"seconds": 3, "prompt": "x"}]}');
    assert.deepEqual(json.segments.map((s) => [s.time, s.lines]), [["base", null], ["0:03", null]]);
  });

  test("clock labels and ticks", () => {
    assert.equal(formatClock(0), "0:00");
    assert.equal(formatClock(65.5), "1:05.5");
    assert.equal(formatClock(3725), "1:02:05");
    assert.deepEqual(ticks(10).map((t) => t.t), [0, 2, 4, 6, 8, 10]);
    assert.ok(ticks(7200).length <= 7);
  });

  test("the text round-trips through to_text", () => {
    const tl = parseTimeline("0: a\n12.5 [flush]: b\n@40: c");
    assert.equal(timelineToText(tl), "0: a\n12.5 [flush]: b\n@40: c");
    assert.deepEqual(TRANSITIONS, ["recache", "flush", "none"]);
  });
});
