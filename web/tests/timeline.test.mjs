// Tests of web/lib/timeline.js: `node --test web/tests/`. The shared cases in tests/fixtures/timeline_cases.json are
// the Python parser's outcomes (tests/test_timeline_cases.py checks them against stream_r1/timeline.py), so passing
// them here means the widget reads a timeline exactly as the nodes and the CLI do.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { Worker } from "node:worker_threads";

import * as lib from "../lib/timeline.js";
import {
  TRANSITIONS, TimelineError, chunkAtSeconds, chunkStartFrame, floatRepr, formatClock, formatG, layoutTimeline,
  lineRange, parseTimeline, pyRepr, show, splitLines, streamLength, ticks, timelineEvents, timelineFromJson,
  timelineToJson, timelineToText,
} from "../lib/timeline.js";

const ROOT = new URL("../../", import.meta.url);
const { cases, formats, limits } = JSON.parse(readFileSync(new URL("tests/fixtures/timeline_cases.json", ROOT),
                                                           "utf8"));
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
    if (!(err instanceof TimelineError)) throw err;            // a bug, not the parser's answer
    return { error: c.match === "prefix" && err.message.startsWith(PREFIX) ? PREFIX : err.message };
  }
}

describe("shared cases (tests/fixtures/timeline_cases.json, also run against stream_r1/timeline.py)", () => {
  test("the fixture is there and has both kinds of case", () => {
    assert.ok(cases.length >= 120);
    assert.ok(cases.some((c) => "error" in c) && cases.some((c) => "timeline" in c));
  });
  test("the limits are Python's (stream_r1/timeline.py, recorded in the fixture)", () => {
    assert.deepEqual(Object.keys(limits).sort(), ["MAX_CHUNK", "MAX_ENTRIES", "MAX_JSON_DEPTH", "MAX_SECONDS",
                                                  "MAX_TEXT_CHARS"]);
    for (const [k, v] of Object.entries(limits)) assert.equal(lib[k], v, k);
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

// ---- bounded on hostile input -------------------------------------------------------------------------------------
// The widget re-parses on every keystroke, so a slow or endless parse freezes the browser tab. Each check runs in a
// worker: a busy loop cannot be interrupted on the main thread (a test timeout would never fire), but a worker can
// be terminated, so an old endless layout fails here instead of hanging the test run.
const LIB = new URL("../lib/timeline.js", import.meta.url).href;
const WORKER = `
const { parentPort, workerData } = require("node:worker_threads");
import(workerData.lib).then(async (lib) => {
  const run = new Function("lib", "data", "progress", workerData.body);
  parentPort.postMessage({ result: await run(lib, workerData.data, (i) => parentPort.postMessage({ at: i })) });
}).catch((err) => parentPort.postMessage({ crashed: String(err && err.stack || err) }));
`;

/** `body` (a function body over `lib`, `data` and `progress(i)`) in a worker; rejects when it takes over `ms`. */
function inWorker(body, data, ms) {
  return new Promise((resolve, reject) => {
    const worker = new Worker(WORKER, { eval: true, workerData: { lib: LIB, body, data } });
    let at = null;
    const timer = setTimeout(() => {
      worker.terminate();
      reject(new Error(`did not finish in ${ms} ms${at === null ? "" : ` (stuck at input ${JSON.stringify(at)})`}`));
    }, ms);
    worker.on("message", (m) => {
      if ("at" in m) { at = m.at; return; }
      clearTimeout(timer);
      worker.terminate();
      if ("crashed" in m) reject(new Error(m.crashed));
      else resolve(m.result);
    });
    worker.on("error", (err) => { clearTimeout(timer); reject(err); });
  });
}

const LAYOUT_ONE = `
  const t0 = performance.now();
  const stream = data.stream === "infinite" ? { chunks: Infinity, seconds: Infinity } : data.stream;
  const lay = lib.layoutTimeline(data.text, { stream });
  return { ok: lay.ok, error: lay.error ?? null, end: lay.end, ticks: lay.ticks.length, ms: performance.now() - t0 };
`;

describe("hostile input: bounded, and an error message instead", () => {
  const e308 = '[{"seconds": 0, "prompt": "a"}, {"seconds": 1e308, "prompt": "b"}]';
  const hostile = [
    ["a JSON switch time of 1e308 (end was Infinity: an endless tick loop)", e308, null,
     /^timeline entry 2: timeline entry 'b': time 1e\+308 is too large: switch times go up to 10000000 s/],
    ["a text switch time of 309 digits", `0: a\n1${"0".repeat(308)}: b`, null, /^timeline line 2: .*too large/],
    ["a string switch time of 1e308", '[{"seconds": 0, "prompt": "a"}, {"seconds": "1e308", "prompt": "b"}]', null,
     /too large/],
    ["a chunk of 400 digits", `0: a\n@${"9".repeat(400)}: b`, null, /^timeline line 2: chunk inf is too large/],
    ["JSON nested 100000 deep (pyRepr recursed)", "[".repeat(100_000) + "]".repeat(100_000), null,
     /^timeline JSON is nested more than 32 levels deep/],
    ["an infinite stream length from a generate node", "0: a\n10: b", "infinite", null],
  ];
  for (const [name, text, stream, error] of hostile) {
    test(name, async () => {
      const got = await inWorker(LAYOUT_ONE, { text, stream }, 5000);
      if (error) {
        assert.equal(got.ok, false);
        assert.match(got.error, error);
        assert.equal(splitLines(got.error).length, 1);
      } else {
        assert.ok(got.ok && Number.isFinite(got.end) && got.ticks <= 7, JSON.stringify(got));
      }
      assert.ok(got.ms < 1000, `${got.ms} ms`);
    });
  }

  test("ticks, stream lengths and chunk lookups never loop on Infinity / NaN", async () => {
    const got = await inWorker(`
      return {
        ticks: [Infinity, -Infinity, NaN, 1e308, Number.MAX_VALUE, 5e-324, 1e-300].map((x) => lib.ticks(x).length),
        fewTicks: lib.ticks(100, Infinity).length,
        streams: [{ seconds: 1e308 }, { seconds: Infinity }, { seconds: NaN }, { frames: Infinity },
                  { frames: 1e308 + 1 }, { frames: 2 ** 60 + 1 }, { seconds: 5, framesPerBlock: 0 }]
          .map((s) => lib.streamLength(s)),
        chunk: (() => { try { return lib.chunkAtSeconds(Infinity); } catch (e) { return e.message; } })(),
      };`, null, 5000);
    assert.ok(got.ticks.every((n) => n >= 1 && n <= 7), JSON.stringify(got.ticks));
    assert.ok(got.fewTicks <= 101);
    assert.deepEqual(got.streams, [null, null, null, null, null, null, null]);
    assert.equal(got.chunk, "time inf is not a finite number of seconds");
  });

  test("size limits: text length, entries (text and JSON), all quick", async () => {
    const got = await inWorker(`
      const out = {};
      const time = (name, f) => {
        const t0 = performance.now();
        try {
          out[name] = { value: f() };
        } catch (e) {
          out[name] = { error: e.message, ours: e instanceof lib.TimelineError };
        }
        out[name].ms = performance.now() - t0;
      };
      const many = Array.from({ length: lib.MAX_ENTRIES }, (_, k) => "@" + k + ": p" + (k % 7)).join("\\n");
      time("long", () => lib.parseTimeline("0: a\\n" + "x".repeat(lib.MAX_TEXT_CHARS)));
      time("long astral", () => lib.parseTimeline("0: " + "😀".repeat(lib.MAX_TEXT_CHARS / 2)).entries.length);
      time("max entries", () => lib.layoutTimeline(many).segments.length);
      time("too many lines", () => lib.parseTimeline(many + "\\n@99999: x"));
      time("too many JSON", () => lib.parseTimeline(JSON.stringify(
        Array.from({ length: lib.MAX_ENTRIES + 1 }, (_, k) => ({ chunk: k, prompt: "p" })))));
      return out;`, null, 20000);
    assert.match(got.long.error, /^the timeline text is longer than 1000000 characters/);
    assert.equal(got["long astral"].value, 1);                     // 2 UTF-16 units each, 1 character for Python
    assert.equal(got["max entries"].value, 10_000);
    assert.match(got["too many lines"].error, /^timeline line 10001: more than 10000 entries/);
    assert.match(got["too many JSON"].error, /^the timeline has 10001 entries; at most 10000 are allowed/);
    for (const [name, r] of Object.entries(got)) {
      assert.ok(r.ms < 2000, `${name}: ${r.ms} ms`);
      if ("error" in r) assert.ok(r.ours, name);
    }
  });

  test("worst-case text is linear: long runs of spaces, continuation lines, brackets", async () => {
    const texts = {
      spaces: `0: a\n1${" ".repeat(200_000)}x`,                    // was quadratic: two \s* runs in the line regex
      spacesTransition: `0: a\n1${" ".repeat(200_000)}[flush]${" ".repeat(200_000)}: b`,
      innerSpaces: `0: a${" ".repeat(400_000)}b${"\u3000".repeat(10)}`,   // was quadratic: /\s+$/ in rstrip
      continuations: "0: a\n" + "  more\n".repeat(100_000),
      brackets: `[${"[],".repeat(100_000)}[]]`,
      stringBrackets: `["${"[".repeat(900_000)}`,
    };
    const got = await inWorker(`
      const out = {};
      for (const [name, text] of Object.entries(data)) {
        const t0 = performance.now();
        const lay = lib.layoutTimeline(text);
        out[name] = { ok: lay.ok, ms: performance.now() - t0 };
      }
      return out;`, texts, 20000);
    assert.deepEqual(Object.fromEntries(Object.entries(got).map(([k, v]) => [k, v.ok])),
                     { spaces: false, spacesTransition: true, innerSpaces: true, continuations: true, brackets: false,
                       stringBrackets: false });
    for (const [name, r] of Object.entries(got)) assert.ok(r.ms < 1000, `${name}: ${r.ms} ms`);
  });
});

// ---- property test: seeded random input, every case bounded ------------------------------------------------------
/** mulberry32: a small seeded PRNG, so every run (and every failure) is reproducible. */
function prng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomInputs(seed, count) {
  const rand = prng(seed);
  const int = (n) => Math.floor(rand() * n);
  const pick = (xs) => xs[int(xs.length)];
  const digits = (n) => Array.from({ length: n }, () => int(10)).join("");
  const NUMBERS = ["0", "1", "12.5", "0.75", "1e308", "1e400", "-1", "NaN", "Infinity", "-Infinity", "-0", "4_0",
    "\u0663.\u0665", "12.", "10000000", "10000000.5", "10000001", "9007199254740993", "0.00001", "1e-300"];
  const number = () => (rand() < 0.6 ? pick(NUMBERS) : rand() < 0.5 ? digits(1 + int(12)) : digits(1 + int(500)));
  const SPACES = [" ", "\t", "\u00a0", "\u3000", "\u2003", "\x1f", " ".repeat(200)];
  const BREAKS = ["\n", "\r\n", "\r", "\v", "\f", "\x1c", "\x85", "\u2028"];
  const CHARS = 'abc xyz:@[]{}",.#-_0123456789\\\n\t\u00a0\u3000\u2028\ud83d\ude00\ud800é';
  const junk = (n) => Array.from({ length: n }, () => CHARS[int(CHARS.length)]).join("");
  const time = () => pick([number, () => `${number()}:${number()}`, () => `@${number()}`, () => junk(int(6))])();
  const tr = () => pick(["", "", " [flush]", " [none]", " [recache]", " [FLUSH]", " [fade]", "[ flush]"]);
  const line = () => pick([
    () => `${time()}${tr()}${pick(SPACES)}:${pick(SPACES)}${junk(int(20))}`,
    () => `${time()}${tr()}: prompt ${int(100)}`,
    () => `${pick(SPACES)}${junk(int(10))}`,
    () => `# ${junk(int(10))}`,
    () => junk(int(30)),
  ])();
  const text = () => Array.from({ length: 1 + int(8) }, () => line() + pick(BREAKS)).join("");
  const value = (depth) => {
    const r = rand();
    if (depth > 4 || r < 0.5) {
      return pick([null, true, false, 0, -0, 1.5, 1e308, -1e308, 2 ** 53 + 2, int(1e9), "x", "", " 12 ", "nan", "1e400",
                   "@4", junk(int(8)), pick(["recache", "flush", "none", "fade"])]);
    }
    if (r < 0.75) return Array.from({ length: int(4) }, () => value(depth + 1));
    const keys = ["seconds", "time", "chunk", "prompt", "transition", "format", "version", "default_transition",
                  "base_prompt", "entries", junk(3)];
    return Object.fromEntries(Array.from({ length: int(5) }, () => [pick(keys), value(depth + 1)]));
  };
  const entry = () => ({ [pick(["seconds", "time", "chunk"])]: rand() < 0.5 ? Number(number()) : value(3),
                         prompt: rand() < 0.9 ? `p${int(5)}` : value(3),
                         ...(rand() < 0.3 ? { transition: pick(["flush", "none", "fade", 5]) } : {}) });
  const json = () => {
    const doc = rand() < 0.5 ? Array.from({ length: int(6) }, entry)
      : { entries: Array.from({ length: int(6) }, entry), ...(rand() < 0.3 ? { version: value(3) } : {}),
          ...(rand() < 0.3 ? { base_prompt: value(3) } : {}),
          ...(rand() < 0.2 ? { default_transition: value(4) } : {}) };
    let s = JSON.stringify(rand() < 0.2 ? value(0) : doc);
    for (let k = int(3); k > 0; k -= 1) {                      // mutate: NaN / huge numbers / cuts / brackets
      const at = int(s.length + 1);
      s = s.slice(0, at) + pick(["NaN", "1e400", digits(400), "[[[[", "]", '"', ",", "Infinity", "{"]) +
        s.slice(at + (rand() < 0.5 ? int(3) : 0));
    }
    return s;
  };
  const deep = () => "[".repeat(int(80)) + pick(["", '{"seconds": 0, "prompt": "a"}', '"', "1"]) +
    "]".repeat(int(80));
  const STREAMS = [null, { chunks: 240, seconds: 2877 / 16 }, { chunks: 7, seconds: 81 / 16 },
                   { chunks: Infinity, seconds: Infinity }, { chunks: NaN, seconds: 5 }];
  return Array.from({ length: count }, () => ({
    text: pick([text, text, json, json, deep, () => junk(int(200))])(),
    defaultTransition: pick(["recache", "flush", "none", "fade"]),
    stream: pick(STREAMS),
  }));
}

describe("property: random input gives a valid layout or a one-line error, each case bounded", () => {
  test("3000 seeded cases", async () => {
    const cases = randomInputs(20261207, 3000);
    const got = await inWorker(`
      const bad = [];
      let worst = 0;
      const ok01 = (x) => Number.isFinite(x) && x >= -1e-12 && x <= 1 + 1e-12;
      data.forEach((c, i) => {
        progress(i);
        const t0 = performance.now();
        let why = null;
        try {
          lib.parseTimeline(c.text, c.defaultTransition);
        } catch (err) {
          if (!(err instanceof lib.TimelineError)) why = "not a TimelineError: " + (err && err.stack);
        }
        const lay = lib.layoutTimeline(c.text, { defaultTransition: c.defaultTransition, stream: c.stream });
        if (lay.ok) {
          const segs = lay.segments;
          if (!(Number.isFinite(lay.end) && lay.end > 0)) why = "end " + lay.end;
          else if (!segs.length || segs[0].start !== 0) why = "no segment at 0";
          else if (!segs.every((s) => ok01(s.frac) && ok01(s.width) && ok01(s.frac + s.width) &&
                                      Number.isInteger(s.chunk) && s.chunk >= 0)) why = "segment out of the bar";
          else if (!segs.every((s, k) => k === 0 || s.chunk > segs[k - 1].chunk)) why = "segments out of order";
          else if (!(lay.ticks.length >= 1 && lay.ticks.length <= 7 && lay.ticks.every((t) => ok01(t.frac))))
            why = "ticks " + JSON.stringify(lay.ticks);
        } else if (typeof lay.error !== "string" || !lay.error || lib.splitLines(lay.error).length !== 1 ||
                   lay.error.length > 1000) {
          why = "error message " + JSON.stringify(lay.error);
        }
        const ms = performance.now() - t0;
        worst = Math.max(worst, ms);
        if (ms > 250) why = "took " + ms + " ms";
        if (why && bad.length < 5) bad.push({ i, why, text: c.text.slice(0, 300) });
      });
      return { bad, worst };`, cases, 60000);
    assert.deepEqual(got.bad, []);
    assert.ok(got.worst < 250, `${got.worst} ms`);
  });
});
