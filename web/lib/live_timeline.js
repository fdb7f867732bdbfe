// Records the prompt changes of a live (steered) stream as a prompt timeline in the pack's text format
// (stream_r1/timeline.py; web/lib/timeline.js mirrors its parser): the starting prompt at 0, then one line per
// change at its chunk boundary's time (frame / 16 s) with its transition, e.g.
//
//     0: a red fox walks through fresh snow
//     3.5625 [recache]: the fox starts to run
//     8.0625 [flush]: close-up of the fox's face
//
// Pasted into a Stream-R1 Prompt Timeline node, the text replays the steering: the parser resolves each time to the
// nearest chunk start, which is the boundary itself (the times are exact chunk starts, written with repr's shortest
// digits). No DOM: tested under Node, with a round trip through the parser.
//
// Times count from the run's first frame (`frame` of the `change` event): for Generate that is the stream's start;
// a Continue run's timeline counts from the whole stream's start, so there the server's own text (the `end` event's
// `timeline`) is the one to reuse.
import { FPS, TRANSITIONS, makeEntry, timelineToText } from "./timeline.js";

// JS whitespace plus what Python's str.isspace() adds (\x1c-\x1f, \x85): every line break of str.splitlines().
const SPACE = /[\s\x1c-\x1f\x85]/gu;

/** A prompt as one line of the text format: each line break or other space character becomes a plain space, and
 * spaces at the ends go (the parser strips them too). */
export function oneLine(prompt) {
  return String(prompt ?? "").replace(SPACE, " ").trim();
}

export const NO_START = "# the first prompt is not known here: add '0: <the workflow's prompt>' to replay";

export class LiveTimeline {
  constructor({ prompt = "", fps = FPS } = {}) {
    this.fps = fps;
    this.changes = [];                        // [{frame, chunk, prompt, transition}], in frame order
    this.start(prompt);
  }

  /** A new run starting with `prompt` (the `start` event). */
  start(prompt) {
    this.prompt = oneLine(prompt);
    this.changes = [];
  }

  /** A prompt change applied at a chunk boundary (the `change` event). A change at frame 0 replaces the starting
   * prompt; one at or before an earlier change's frame replaces that change and those after it. Returns false for
   * a change the format cannot hold (no prompt, no frame). */
  change({ frame, chunk = null, prompt, transition = "recache" } = {}) {
    const text = oneLine(prompt);
    if (!text || !Number.isInteger(frame) || frame < 0) return false;
    const tr = TRANSITIONS.includes(transition) ? transition : "recache";
    if (frame === 0) {
      this.prompt = text;
      this.changes = [];
      return true;
    }
    this.changes = this.changes.filter((c) => c.frame < frame);
    this.changes.push({ frame, chunk: Number.isInteger(chunk) ? chunk : null, prompt: text, transition: tr });
    return true;
  }

  /** Timeline entries (web/lib/timeline.js makeEntry): [{prompt, seconds, chunk: null, transition}]. */
  entries() {
    const out = [];
    if (this.prompt) out.push(makeEntry(this.prompt, 0));
    for (const c of this.changes) out.push(makeEntry(c.prompt, c.frame / this.fps, null, c.transition));
    return out;
  }

  /** The timeline text: "" when nothing is known; without a starting prompt, a comment says to add one (as the
   * server's record does). */
  toText() {
    const entries = this.entries();
    if (!entries.length) return "";
    const text = timelineToText({ entries });
    return this.prompt ? text : `${NO_START}\n${text}`;
  }
}
