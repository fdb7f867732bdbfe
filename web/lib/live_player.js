// The live player's logic: a buffer of streamed preview frames and the clock that plays them at the video's frame
// rate while chunks keep arriving (faster than real time, ~34 frames/s for 16 fps video). No DOM and no ComfyUI
// imports: every method that depends on time takes `nowMs` (any monotonic clock, e.g. performance.now()), so the
// player is deterministic and is tested under plain Node with fake clocks (`node --test web/tests/`).
//
// Rules:
// * Frames are stored by their index in the run (`append(first, frames)`); a frame's payload is opaque here (the
//   panel passes data URLs). The newest received frame is the live edge.
// * Buffer: playback starts once START_BUFFER frames (0.5 s) are in, or when the stream ended with fewer. The first
//   chunk of a stream has 9 frames, so in practice playback starts as the first chunk lands.
// * Clock: while playing, the shown frame advances at `fps` from an anchor (frame, time). It is never ahead of the
//   live edge: reaching the edge, playback waits there, and when the next chunk lands it goes on from the edge,
//   the next frame at once (no jump ahead, no extra delay).
// * Live: playing, the stream not ended, and showing within LIVE_SLACK frames (one chunk of 12) of the edge.
// * Scrub: seek to any frame still kept; when playing, playback goes on from there.
// * Memory: at most MAX_FRAMES previews are kept (3000 = 3 min 7.5 s of video at 16 fps; a 416x240 JPEG preview
//   is ~15-30 kB as a data URL, so ~45-90 MB per playing node); older ones are dropped first and scrubbing is
//   limited to what is kept.

export const LIVE_FPS = 16;          // Wan2.1's frame rate: what the stream plays at
export const START_BUFFER = 8;       // frames buffered before playback starts (0.5 s at 16 fps)
export const LIVE_SLACK = 12;        // frames behind the edge that still count as live (one chunk of 4 * 3 frames)
export const MAX_FRAMES = 3000;      // previews kept per player (3 min 7.5 s at 16 fps)

export class LivePlayer {
  constructor({ fps = LIVE_FPS, startBuffer = START_BUFFER, liveSlack = LIVE_SLACK, maxFrames = MAX_FRAMES } = {}) {
    if (!(fps > 0)) throw new RangeError(`fps must be > 0, got ${fps}`);
    if (!(Number.isInteger(maxFrames) && maxFrames >= 1)) {
      throw new RangeError(`maxFrames must be a whole number >= 1, got ${maxFrames}`);
    }
    this.fps = fps;
    this.startBuffer = Math.max(1, startBuffer);
    this.liveSlack = liveSlack;
    this.maxFrames = maxFrames;
    this.reset();
  }

  /** Forget the run (a new `start` event: {fps, total}): no frames, playing (waiting for the buffer). */
  reset(meta = {}) {
    if (meta.fps > 0) this.fps = meta.fps;
    this.frames = [];              // frames[i] = payload of frame base + i (undefined where a frame never came)
    this.base = 0;                 // index of frames[0]: the oldest frame kept
    this.end = 0;                  // 1 + index of the newest frame received (the live edge is end - 1)
    this.total = Number.isInteger(meta.total) && meta.total > 0 ? meta.total : null;   // frames the run will make
    this.ended = false;            // the stream sent its last frame
    this.playing = true;           // the user's play / pause
    this.started = false;          // the start buffer was filled (or the user scrubbed, or the stream ended)
    this.anchorFrame = 0;          // the clock: frame shown at anchorMs, advancing at fps while playing
    this.anchorMs = 0;
    this.lastNow = 0;
    this.lastShown = -1;           // what tick() returned last (for tests reading the page)
    this.dropped = 0;              // frames evicted so far
  }

  get received() { return this.end; }
  get kept() { return this.end - this.base; }
  get edge() { return this.end - 1; }

  /** The payload of frame `index`, or undefined when it is not kept. */
  frame(index) {
    return index >= this.base && index < this.end ? this.frames[index - this.base] : undefined;
  }

  /** Frames `first`, `first + 1`, ... of a chunk landed. Returns the number of old frames dropped to stay within
   * maxFrames. Frames older than the oldest kept are ignored; a resent frame replaces the stored one. */
  append(first, payloads, nowMs = this.lastNow) {
    if (!Number.isInteger(first) || first < 0 || !payloads?.length) return 0;
    this.settle(nowMs);
    if (!this.end && first > this.base) {           // joined mid-run (a tab opened late): start from here
      this.base = first;
      this.anchor(first, nowMs);
    }
    const last = first + payloads.length;           // one past the chunk's last frame
    if (last <= this.base) return 0;
    for (let i = Math.max(first, this.base); i < last; i += 1) this.frames[i - this.base] = payloads[i - first];
    this.end = Math.max(this.end, last);
    const dropped = this.evict();
    this.maybeStart(nowMs);
    return dropped;
  }

  /** The stream ended (`end` event): play what is buffered even when it is less than the start buffer. */
  finish(nowMs = this.lastNow, totalFrames = null) {
    this.settle(nowMs);
    this.ended = true;
    if (Number.isInteger(totalFrames) && totalFrames >= 0) this.total = totalFrames;
    this.maybeStart(nowMs);
  }

  /** The frame to show at `nowMs`: -1 before any frame came, else an index in [base, end - 1]. */
  tick(nowMs) {
    this.lastNow = Math.max(this.lastNow, nowMs);
    if (!this.end) return (this.lastShown = -1);
    return (this.lastShown = this.position(nowMs));
  }

  play(nowMs) {
    this.settle(nowMs);
    if (this.playing) return;
    const at = this.position(nowMs);
    this.playing = true;
    // Play at the end of a finished stream starts it over (from the oldest frame kept).
    this.anchor(this.ended && at >= this.end - 1 ? this.base : at, nowMs);
    this.started = this.started || this.end > 0;
  }

  pause(nowMs) {
    this.settle(nowMs);
    if (!this.playing) return;
    this.anchor(this.position(nowMs), nowMs);
    this.playing = false;
  }

  toggle(nowMs) {
    if (this.playing) this.pause(nowMs);
    else this.play(nowMs);
  }

  /** Show frame `index` (clamped to the frames kept); when playing, playback goes on from there. */
  seek(index, nowMs) {
    if (!this.end) return;
    this.settle(nowMs);
    this.anchor(clamp(Math.round(index), this.base, this.end - 1), nowMs);
    this.started = true;                           // the user took over: no more waiting for the start buffer
  }

  /** Jump to the live edge, keeping the start buffer's worth of frames ahead so chunk arrivals do not stutter. */
  goLive(nowMs) {
    if (!this.end) return;
    this.seek(this.end - Math.min(this.startBuffer, this.liveSlack), nowMs);
    if (!this.playing) this.play(nowMs);
  }

  /** Playing near the edge of a stream still arriving. */
  isLive(nowMs) {
    if (!this.end || this.ended || !this.playing || !this.started) return false;
    return this.end - 1 - this.position(nowMs) <= this.liveSlack;
  }

  /** Waiting: for the start buffer, or at the live edge for the next chunk. */
  isWaiting(nowMs) {
    if (this.ended || !this.playing) return false;
    if (!this.started) return true;
    return this.unclamped(nowMs) >= this.end - 1;
  }

  /** {index, shown (1-based), received, kept, total} for the counter; shown 0 before any frame. */
  counter(nowMs) {
    const index = this.end ? this.position(nowMs) : -1;
    return { index, shown: index + 1, received: this.end, kept: this.kept, total: this.total };
  }

  // ---- internals ----------------------------------------------------------------------------------------------
  anchor(frame, nowMs) {
    this.anchorFrame = frame;
    this.anchorMs = nowMs;
  }

  /** Where the clock would be without the edge (fractional frame). */
  unclamped(nowMs) {
    if (!this.playing || !this.started) return this.anchorFrame;
    return this.anchorFrame + (Math.max(0, nowMs - this.anchorMs) * this.fps) / 1000;
  }

  position(nowMs) {
    if (!this.end) return -1;
    return clamp(Math.floor(this.unclamped(nowMs) + 1e-9), this.base, this.end - 1);
  }

  /** Before the edge moves: if the clock ran into the edge, playback waited there. The edge frame went up when the
   * clock reached it; if it has had its full frame time by now, the next frame shows at once (as it lands), else
   * when its time is up. Exact whenever frames land, however rarely the caller ticks. */
  settle(nowMs) {
    this.lastNow = Math.max(this.lastNow, nowMs);
    if (!this.end || !this.playing || !this.started) return;
    const edge = this.end - 1;
    const period = 1000 / this.fps;
    if (this.unclamped(nowMs) >= edge + 1) {
      const reached = this.anchorMs + (edge - this.anchorFrame) * period;    // when the edge frame went up
      this.anchor(edge, Math.max(reached, nowMs - period));
    } else if (this.anchorFrame < this.base) {
      this.anchor(this.base, nowMs);
    }
  }

  maybeStart(nowMs) {
    if (this.started || !this.end) return;
    if (this.end - this.base >= this.startBuffer || this.ended) {
      this.started = true;
      this.anchor(this.base, nowMs);
    }
  }

  evict() {
    const over = this.end - this.base - this.maxFrames;
    if (over <= 0) return 0;
    this.frames.splice(0, over);
    this.base += over;
    this.dropped += over;
    if (this.anchorFrame < this.base) {
      // The frame shown was dropped: keep the clock's phase, from the oldest frame kept.
      this.anchorFrame = this.base;
      this.anchorMs = this.lastNow;
    }
    return over;
  }
}

function clamp(x, lo, hi) {
  return Math.min(hi, Math.max(lo, x));
}

/** "frame I / N": the frame shown (1-based) of the frames received. */
export function formatCounter({ shown, received }) {
  return `frame ${Math.max(0, shown)} / ${received}`;
}

/** The scrub bar's span in frames: the whole run when its length is known, else what was received. */
export function scrubSpan(player) {
  return Math.max(1, player.total ?? 0, player.end);
}

/** Frame under a fraction 0..1 of the scrub bar (clamped to the frames kept by the caller's seek). */
export function frameAtFraction(player, fraction) {
  return Math.floor(clamp(fraction, 0, 1) * (scrubSpan(player) - 1) + 0.5);
}

/** Fraction 0..1 of the scrub bar where frame `index` sits. */
export function fractionOfFrame(player, index) {
  const span = scrubSpan(player);
  return span <= 1 ? 0 : clamp(index / (span - 1), 0, 1);
}
