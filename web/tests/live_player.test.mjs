// Tests of the live player's buffer and clock (web/lib/live_player.js) with fake clocks: `node --test web/tests/`.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  LIVE_FPS, LIVE_SLACK, LivePlayer, MAX_FRAMES, START_BUFFER, formatCounter, fractionOfFrame, frameAtFraction,
  scrubSpan,
} from "../lib/live_player.js";

const frames = (first, n) => Array.from({ length: n }, (_, i) => `f${first + i}`);

/** A stream of `chunks` chunks (9 frames, then 12 each, as Wan2.1 at 3 latent frames per chunk) generated at
 * `genFps` video frames per second from `t0` ms: [{at (ms the chunk lands), first, n}]. */
function schedule(chunks, genFps, t0 = 0) {
  const out = [];
  let first = 0;
  for (let c = 0; c < chunks; c += 1) {
    const n = c === 0 ? 9 : 12;
    out.push({ at: t0 + ((first + n) * 1000) / genFps, first, n });
    first += n;
  }
  return out;
}

/** Runs the schedule against a player, ticking every `stepMs` up to `untilMs`; returns [[ms, frame shown]]. */
function simulate(player, chunks, { stepMs = 1000 / 60, untilMs, onTick } = {}) {
  const shown = [];
  let next = 0;
  const last = chunks[chunks.length - 1];
  for (let t = 0; t <= untilMs; t += stepMs) {
    while (next < chunks.length && chunks[next].at <= t) {
      const c = chunks[next];
      player.append(c.first, frames(c.first, c.n), c.at);
      if (c === last) player.finish(c.at);
      next += 1;
    }
    const idx = player.tick(t);
    shown.push([t, idx]);
    onTick?.(t, idx);
  }
  return shown;
}

describe("buffer and clock", () => {
  test("defaults: 16 fps, an 8-frame start buffer, live within a chunk, 3000 frames kept", () => {
    assert.equal(LIVE_FPS, 16);
    assert.equal(START_BUFFER, 8);
    assert.equal(LIVE_SLACK, 12);
    assert.equal(MAX_FRAMES, 3000);
    assert.equal(MAX_FRAMES / LIVE_FPS, 187.5);           // 3 min 7.5 s of video
  });

  test("nothing to show before the first frame", () => {
    const p = new LivePlayer();
    assert.equal(p.tick(0), -1);
    assert.equal(p.tick(5000), -1);
    assert.equal(p.isLive(5000), false);
    assert.deepEqual(p.counter(5000), { index: -1, shown: 0, received: 0, kept: 0, total: null });
  });

  test("waits for the start buffer, showing the first frame", () => {
    const p = new LivePlayer({ startBuffer: 8 });
    p.append(0, frames(0, 5), 100);
    assert.equal(p.tick(100), 0);
    assert.equal(p.tick(2000), 0);                     // 5 < 8 frames: not started
    assert.equal(p.isWaiting(2000), true);
    p.append(5, frames(5, 3), 2000);                   // 8 frames: starts now
    assert.equal(p.tick(2000), 0);
    assert.equal(p.tick(2000 + 1000 / 16), 1);
    assert.equal(p.tick(2000 + 7 * 62.5), 7);
    assert.equal(p.tick(2000 + 20 * 62.5), 7);         // never ahead of the newest frame
  });

  test("a stream shorter than the buffer plays once it ended", () => {
    const p = new LivePlayer();
    p.append(0, frames(0, 5), 0);
    assert.equal(p.tick(1000), 0);
    p.finish(1000);
    assert.equal(p.tick(1000 + 3 * 62.5), 3);
    assert.equal(p.tick(9000), 4);
    assert.equal(p.isLive(9000), false);               // an ended stream is not live
  });

  test("chunks at 34 fps play at 16 +- 0.5 fps, never ahead of the newest frame", () => {
    const p = new LivePlayer();
    const chunks = schedule(30, 34);                   // 357 frames, generated in 10.5 s, played in 22.3 s
    let newest = -1;
    let c = 0;
    const shown = simulate(p, chunks, {
      untilMs: 25000,
      onTick: (t, idx) => {
        while (c < chunks.length && chunks[c].at <= t) newest = chunks[c].first + chunks[c++].n - 1;
        assert.ok(idx <= newest, `frame ${idx} shown at ${t} ms, newest ${newest}`);
      },
    });
    // Playback starts as the first chunk (9 frames >= 8) lands, at 9/34 s.
    const start = chunks[0].at;
    const at = (ms) => shown.find(([t]) => t >= ms)[1];
    const rate = (at(start + 20000) - at(start + 1000)) / 19;
    assert.ok(Math.abs(rate - 16) <= 0.5, `${rate} fps`);
    assert.equal(shown[shown.length - 1][1], 356);      // played to the end, then stays on the last frame
    // The counter ticks by one frame at a time: no skips, no repeats beyond the display's 60 Hz.
    const distinct = [...new Set(shown.map(([, i]) => i))].filter((i) => i >= 0);
    assert.deepEqual(distinct, Array.from({ length: 357 }, (_, i) => i));
  });

  test("generation slower than real time: playback waits at the live edge, and stays live", () => {
    const p = new LivePlayer();
    const chunks = schedule(20, 10);                   // 10 frames/s: slower than 16
    const shown = simulate(p, chunks, { untilMs: 15000, stepMs: 10 });
    const start = chunks[0].at;
    const at = (ms) => shown.find(([t]) => t >= ms)[1];
    const rate = (at(14000) - at(start + 2000)) / ((14000 - start - 2000) / 1000);
    assert.ok(Math.abs(rate - 10) <= 1.5, `${rate} fps: bound by the generation`);
    // Between chunks the clock waits at the edge; when a chunk lands it goes on from the edge (no jump).
    const c = chunks[10];
    p.reset();
    for (const k of chunks.slice(0, 10)) p.append(k.first, frames(k.first, k.n), k.at);
    const edge = p.edge;
    assert.equal(p.tick(c.at - 1), edge);
    assert.equal(p.isLive(c.at - 1), true);
    assert.equal(p.isWaiting(c.at - 1), true);
    p.append(c.first, frames(c.first, c.n), c.at);
    assert.equal(p.tick(c.at), edge + 1);               // the next frame shows as it lands
    assert.equal(p.tick(c.at + 62.5), edge + 2);
    assert.equal(p.tick(c.at + 5 * 62.5), edge + 6);
    assert.equal(p.isWaiting(c.at + 5 * 62.5), false);
  });

  test("the clock is exact when ticks are rare: a wait at the edge ends as the next chunk lands", () => {
    const p = new LivePlayer();
    p.append(0, frames(0, 9), 0);                      // playing from t=0; reaches frame 8 at 500 ms
    p.append(9, frames(9, 12), 3000);                  // no tick in between
    assert.equal(p.tick(3000), 9);                     // waited at 8 since 500 ms: frame 9 as it lands
    assert.equal(p.tick(3000 + 4 * 62.5), 13);
    // A chunk landing while the edge frame still has its time: the next frame comes on schedule, not early.
    const q = new LivePlayer();
    q.append(0, frames(0, 9), 0);                      // frame 8 goes up at 500 ms
    q.append(9, frames(9, 12), 530);
    assert.equal(q.tick(530), 8);
    assert.equal(q.tick(562), 8);                      // 500 + 62.5 = 562.5 ms
    assert.equal(q.tick(563), 9);
    assert.equal(q.tick(624), 9);
    assert.equal(q.tick(625), 10);
  });

  test("live: near the edge while the stream arrives", () => {
    const p = new LivePlayer();
    p.append(0, frames(0, 9), 0);
    assert.equal(p.isLive(0), true);
    for (let c = 0; c < 10; c += 1) p.append(9 + 12 * c, frames(9 + 12 * c, 12), 100 + c);   // 129 frames at once
    assert.equal(p.tick(200), 3);
    assert.equal(p.isLive(200), false);                // 125 frames behind
    p.goLive(200);
    assert.equal(p.tick(200), 129 - 8);
    assert.equal(p.isLive(200), true);
    assert.equal(p.tick(200 + 8 * 62.5), 128);
    p.pause(300);
    assert.equal(p.isLive(300), false);                // paused is not live
  });
});

describe("scrub, pause, eviction", () => {
  test("pause holds the frame; play goes on from it", () => {
    const p = new LivePlayer();
    p.append(0, frames(0, 81), 0);
    assert.equal(p.tick(1000), 16);
    p.pause(1000);
    assert.equal(p.playing, false);
    assert.equal(p.tick(5000), 16);
    p.play(5000);
    assert.equal(p.tick(5000 + 62.5), 17);
    p.toggle(6000);
    assert.equal(p.playing, false);
    assert.equal(p.tick(7000), 32);
  });

  test("scrub to any received frame, then playback continues from there", () => {
    const p = new LivePlayer();
    p.append(0, frames(0, 81), 0);
    p.seek(40, 1000);
    assert.equal(p.tick(1000), 40);
    assert.equal(p.tick(1000 + 10 * 62.5), 50);
    p.seek(500, 2000);                                  // past the edge: clamped to the newest frame
    assert.equal(p.tick(2000), 80);
    p.seek(-4, 2000);
    assert.equal(p.tick(2000), 0);
    p.pause(2000);
    p.seek(12, 3000);                                   // paused: scrub shows the frame and stays
    assert.equal(p.tick(9000), 12);
  });

  test("scrubbing before the start buffer filled starts playback", () => {
    const p = new LivePlayer();
    p.append(0, frames(0, 4), 0);
    p.seek(2, 100);
    assert.equal(p.tick(100 + 62.5), 3);
  });

  test("play at the end of a finished stream starts over", () => {
    const p = new LivePlayer();
    p.append(0, frames(0, 9), 0);
    p.finish(0, 9);
    assert.equal(p.tick(5000), 8);
    p.pause(5000);
    p.play(5000);
    assert.equal(p.tick(5000), 0);
    assert.equal(p.total, 9);
  });

  test("keeps at most maxFrames previews, dropping the oldest; scrub is limited to what is kept", () => {
    const p = new LivePlayer({ maxFrames: 100 });
    let dropped = 0;
    for (let c = 0; c < 20; c += 1) dropped += p.append(c * 12, frames(c * 12, 12), c);
    assert.equal(p.received, 240);
    assert.equal(p.kept, 100);
    assert.equal(p.base, 140);
    assert.equal(dropped, 140);
    assert.equal(p.frames.length, 100);
    assert.equal(p.frame(139), undefined);
    assert.equal(p.frame(140), "f140");
    assert.equal(p.frame(239), "f239");
    assert.equal(p.tick(20), 140);                      // the frame shown was dropped: carried to the oldest kept
    p.seek(0, 100);
    assert.equal(p.tick(100), 140);
    assert.equal(p.append(0, frames(0, 12), 100), 0);   // too old to keep
    assert.equal(p.kept, 100);
  });

  test("the default bound holds for a long stream (10 min at 34 fps)", () => {
    const p = new LivePlayer();
    const chunks = schedule(1600, 34);                  // 19,197 frames
    for (const c of chunks) p.append(c.first, frames(c.first, c.n), c.at);
    assert.equal(p.received, 19197);
    assert.equal(p.kept, MAX_FRAMES);
    assert.ok(p.frames.length <= MAX_FRAMES);
  });

  test("a tab that joins mid-run starts from the first chunk it sees", () => {
    const p = new LivePlayer();
    p.append(297, frames(297, 12), 0);
    assert.equal(p.base, 297);
    assert.equal(p.tick(0), 297);
    assert.equal(p.tick(4 * 62.5), 301);
    assert.deepEqual(p.counter(4 * 62.5), { index: 301, shown: 302, received: 309, kept: 12, total: null });
  });

  test("reset forgets the run", () => {
    const p = new LivePlayer();
    p.append(0, frames(0, 20), 0);
    p.pause(10);
    p.reset({ total: 81 });
    assert.equal(p.received, 0);
    assert.equal(p.playing, true);
    assert.equal(p.total, 81);
    assert.equal(p.tick(100), -1);
  });
});

describe("panel helpers", () => {
  test("counter text", () => {
    assert.equal(formatCounter({ shown: 12, received: 81 }), "frame 12 / 81");
    assert.equal(formatCounter({ shown: 0, received: 0 }), "frame 0 / 0");
  });

  test("scrub bar: over the whole run when its length is known, else over what came", () => {
    const p = new LivePlayer();
    p.append(0, frames(0, 21), 0);
    assert.equal(scrubSpan(p), 21);
    assert.equal(frameAtFraction(p, 1), 20);
    assert.equal(frameAtFraction(p, 0.5), 10);
    assert.equal(frameAtFraction(p, -3), 0);
    assert.equal(fractionOfFrame(p, 10), 0.5);
    p.total = 81;
    assert.equal(scrubSpan(p), 81);
    assert.equal(fractionOfFrame(p, 40), 0.5);
    assert.equal(frameAtFraction(p, 1), 80);            // the caller's seek clamps it to the frames received
  });
});
