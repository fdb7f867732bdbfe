// Tests of the extension's pure logic (web/lib/stream_state.js): `node --test web/tests/` (no dependencies).
// Named *.mjs: ComfyUI loads every *.js under web/ into the page as an extension, these files must stay out.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  FPS_WINDOW, LIVE_EVENT, MAX_ERROR_CHARS, MAX_THUMBS, STEER_TRANSITIONS, STREAM_NODE_TYPES, droppedUrls, etaSeconds,
  formatDuration, formatError, formatFps, formatStatus, initialState, liveRoute, progress, reduce, steerErrorText,
  steerQueuedText, windowFps,
} from "../lib/stream_state.js";

// What nodes/generate.py sends per chunk (host.CHUNK_EVENT): a 5 s run = 7 chunks, 12 frames each after the 9 of
// the first; here at a steady 0.5 s per chunk.
function chunkEvent(i, { chunks = 7, secondsPerChunk = 0.5, node = "5", start = 0 } = {}) {
  const frames = 9 + 12 * i;
  const seconds = secondsPerChunk * (i + 1);
  return { type: "chunk", data: { node, chunk: start + i, chunks_done: i + 1, chunks, frames,
                                  latent_frames: 3 * (start + i + 1), fps: frames / seconds, seconds } };
}

function run(events, state = initialState()) {
  return events.reduce(reduce, state);
}

describe("reducer", () => {
  test("starts idle and ignores unknown events without copying", () => {
    const s = initialState();
    assert.equal(s.status, "idle");
    assert.equal(reduce(s, { type: "nonsense" }), s);
    assert.equal(reduce(s, undefined), s);
    assert.equal(reduce(undefined, { type: "start" }).status, "running");
  });

  test("counts chunks, frames and fps from the chunk events", () => {
    const s = run([{ type: "start" }, chunkEvent(0), chunkEvent(1), chunkEvent(2)]);
    assert.equal(s.status, "running");
    assert.equal(s.chunksDone, 3);
    assert.equal(s.chunks, 7);
    assert.equal(s.chunk, 2);
    assert.equal(s.frames, 33);
    assert.equal(s.seconds, 1.5);
    assert.equal(s.fps, 22);
  });

  test("never mutates the previous state (frozen)", () => {
    const a = run([{ type: "start" }, chunkEvent(0)]);
    const snapshot = JSON.stringify(a);
    const b = reduce(a, chunkEvent(1));
    assert.notEqual(a, b);
    assert.equal(JSON.stringify(a), snapshot);
    assert.ok(Object.isFrozen(b) && Object.isFrozen(b.samples) && Object.isFrozen(b.thumbs));
    assert.throws(() => { "use strict"; b.frames = 0; });
  });

  test("pairs each progress preview with the chunk event that follows it", () => {
    const s = run([{ type: "start" }, { type: "preview", url: "blob:a" }, chunkEvent(0),
                   { type: "preview", url: "blob:b" }, chunkEvent(1), chunkEvent(2)]);
    assert.deepEqual(s.thumbs, [{ chunk: 0, url: "blob:a" }, { chunk: 1, url: "blob:b" }]);
    assert.equal(s.latest, "blob:b");
    assert.equal(s.pending, null);
  });

  test("keeps at most MAX_THUMBS thumbnails and reports the URLs it let go", () => {
    let s = run([{ type: "start" }]);
    const released = [];
    for (let i = 0; i < MAX_THUMBS + 3; i++) {
      const next = run([{ type: "preview", url: `blob:${i}` }, chunkEvent(i, { chunks: 20 })], s);
      released.push(...droppedUrls(s, next));
      s = next;
    }
    assert.equal(s.thumbs.length, MAX_THUMBS);
    assert.deepEqual(s.thumbs.map((t) => t.chunk), [3, 4, 5, 6, 7, 8]);
    assert.deepEqual(released, ["blob:0", "blob:1", "blob:2"]);
    assert.deepEqual(droppedUrls(s, initialState()).sort(), s.thumbs.map((t) => t.url).sort());
  });

  test("a chunk without a preview (no VAE) leaves the thumbnails alone", () => {
    const s = run([{ type: "start" }, chunkEvent(0), chunkEvent(1)]);
    assert.deepEqual(s.thumbs, []);
    assert.equal(s.latest, null);
  });

  test("done, cancelled and failed runs", () => {
    const running = run([{ type: "start" }, chunkEvent(0), chunkEvent(1)]);
    assert.equal(reduce(running, { type: "done" }).status, "done");
    assert.equal(reduce(running, { type: "interrupted" }).status, "interrupted");
    const idle = initialState();
    assert.equal(reduce(idle, { type: "done" }), idle);          // only a running stream finishes
    const failed = reduce(running, { type: "error", message: "boom", exceptionType: "ValueError" });
    assert.equal(failed.status, "error");
    assert.deepEqual(failed.error, { message: "boom", exceptionType: "ValueError", nodeType: null });
    assert.equal(reduce(failed, { type: "done" }), failed);       // an error stays on the node
    const again = reduce(failed, { type: "start" });
    assert.equal(again.status, "running");
    assert.equal(again.error, null);
    assert.equal(again.chunksDone, 0);
  });

  test("a new run starts clean and lets go of the previous run's images", () => {
    const before = run([{ type: "start" }, { type: "preview", url: "blob:x" }, chunkEvent(0)]);
    const after = reduce(before, { type: "start" });
    assert.equal(after.latest, null);
    assert.deepEqual(after.thumbs, []);
    assert.deepEqual(droppedUrls(before, after), ["blob:x"]);
  });

  test("Continue: the chunk index goes on while this run counts from 1", () => {
    const s = run([{ type: "start" }, chunkEvent(0, { start: 7, chunks: 3 })]);
    assert.equal(s.chunk, 7);
    assert.equal(s.chunksDone, 1);
    assert.equal(formatStatus(s).startsWith("chunk 1/3"), true);
  });

  test("tolerates missing or malformed fields", () => {
    const s = run([{ type: "start" }, { type: "chunk", data: { frames: "x", fps: NaN } }, { type: "chunk" }]);
    assert.equal(s.chunksDone, 2);
    assert.equal(s.frames, 0);
    assert.equal(s.fps, 0);
  });
});

describe("fps and eta", () => {
  test("window average over the last chunks, from cumulative figures", () => {
    assert.equal(windowFps([]), null);
    assert.equal(windowFps([{ frames: 9, seconds: 1 }]), null);
    assert.equal(windowFps([{ frames: 9, seconds: 1 }, { frames: 21, seconds: 1.5 }]), 24);
    const samples = [0, 1, 2, 3, 4, 5, 6].map((i) => ({ frames: 9 + 12 * i, seconds: i < 3 ? 4 * (i + 1) : 12 + (i - 2) * 0.5 }));
    // slow start (4 s per chunk), then 0.5 s per chunk: the window sees only the fast part
    assert.equal(windowFps(samples, FPS_WINDOW), 24);
    assert.equal(windowFps([{ frames: 9, seconds: 2 }, { frames: 21, seconds: 2 }]), null);
  });

  test("the reducer keeps only what the window needs", () => {
    const s = run([{ type: "start" }, ...[0, 1, 2, 3, 4, 5, 6, 7].map((i) => chunkEvent(i, { chunks: 8 }))]);
    assert.equal(s.samples.length, FPS_WINDOW + 1);
  });

  test("eta from the mean time per chunk", () => {
    const s = run([{ type: "start" }, chunkEvent(0), chunkEvent(1)]);
    assert.equal(etaSeconds(s), 2.5);                 // 0.5 s per chunk, 5 chunks to go
    assert.equal(etaSeconds(initialState()), null);
    assert.equal(progress(s), 2 / 7);
    assert.equal(progress(initialState()), 0);
  });
});

describe("text", () => {
  test("durations", () => {
    assert.equal(formatDuration(0), "0:00");
    assert.equal(formatDuration(42.4), "0:42");
    assert.equal(formatDuration(180), "3:00");
    assert.equal(formatDuration(3725), "1:02:05");
    assert.equal(formatDuration(null), "–");
    assert.equal(formatDuration(-3), "0:00");
  });

  test("fps", () => {
    assert.equal(formatFps(12.345), "12.3");
    assert.equal(formatFps(123.4), "123");
    assert.equal(formatFps(null), "–");
  });

  test("status lines through a run", () => {
    assert.equal(formatStatus(initialState()), "");
    let s = run([{ type: "start" }]);
    assert.match(formatStatus(s), /^starting/);
    s = run([chunkEvent(0), chunkEvent(1)], s);
    assert.equal(formatStatus(s), "chunk 2/7 · 21 frames (1.3 s) · 21.0 fps · now 24.0 fps · ETA 0:03");
    s = run([2, 3, 4, 5, 6].map((i) => chunkEvent(i)), s);
    assert.equal(formatStatus(s), "chunk 7/7 · 81 frames (5.1 s) · 23.1 fps · now 24.0 fps");
    assert.equal(formatStatus(reduce(s, { type: "done" })), "done: 7 chunks · 81 frames (5.1 s) in 0:04 · 23.1 fps");
    const cancelled = reduce(run([{ type: "start" }, chunkEvent(0)]), { type: "interrupted" });
    assert.equal(formatStatus(cancelled), "cancelled after chunk 1/7 · 9 frames (0.6 s)");
  });

  test("errors: the exception type once, long messages capped", () => {
    const e = { message: "height 100 is not a multiple of 16; use 96 or 112", exceptionType: "ValueError" };
    assert.equal(formatError(e), "error: ValueError: height 100 is not a multiple of 16; use 96 or 112");
    assert.equal(formatError({ message: "ValueError: x", exceptionType: "ValueError" }), "error: ValueError: x");
    assert.equal(formatError({ message: "no type" }), "error: no type");
    assert.equal(formatError(null), "");
    const long = formatError({ message: "x".repeat(1000) });
    assert.equal(long.length, MAX_ERROR_CHARS);
    assert.ok(long.endsWith("…"));
    const s = reduce(initialState(), { type: "error", message: "model file 'a.pt' not found", exceptionType: "FileNotFoundError" });
    assert.equal(formatStatus(s), "failed before the first chunk");
    assert.equal(formatError(s.error), "error: FileNotFoundError: model file 'a.pt' not found");
    const late = run([{ type: "start" }, chunkEvent(0), chunkEvent(1), { type: "error", message: "OOM" }]);
    assert.equal(formatStatus(late), "failed after chunk 2/7 · 21 frames (1.3 s)");
  });

  test("the node types match the pack's stream nodes", () => {
    assert.deepEqual([...STREAM_NODE_TYPES], ["StreamR1Generate", "StreamR1Continue", "StreamR1GenerateToFile"]);
  });
});

describe("live steering", () => {
  test("routes and the steering lines", () => {
    assert.equal(LIVE_EVENT, "stream_r1.live");
    assert.deepEqual([...STEER_TRANSITIONS], ["recache", "flush", "none"]);    // recache (the first) is the default
    assert.equal(liveRoute("5", "prompt"), "/stream_r1/live/5/prompt");
    assert.equal(liveRoute(12), "/stream_r1/live/12");
    assert.equal(liveRoute("3:7", "stop"), "/stream_r1/live/3%3A7/stop");
    assert.equal(steerErrorText(409, { error: "no CLIP connected: connect one to steer" }),
                 "409: no CLIP connected: connect one to steer");
    assert.equal(steerErrorText(404, null, "Not Found"), "404: Not Found");
    assert.equal(steerErrorText(0, null), "no answer from the server");
    assert.ok(steerErrorText(400, { error: "x".repeat(2000) }).length <= 400);
    assert.equal(steerQueuedText({ ok: true, at_chunk: 12 }, "flush"), "next prompt from chunk 12 (flush)");
    assert.equal(steerQueuedText({ ok: true }, "recache"), "next prompt at the next chunk (recache)");
  });
});
