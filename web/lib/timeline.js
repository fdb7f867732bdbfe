// Prompt timelines in the browser: a line-for-line mirror of stream_r1/timeline.py (text and JSON formats, the
// entry checks and the resolution to chunk boundaries, with the same error messages), plus the layout of the
// visual timeline bar the Stream-R1 Prompt Timeline node shows. No DOM, no ComfyUI imports: tested under plain
// Node (`node --test web/tests/`), and against the Python parser through tests/fixtures/timeline_cases.json
// (the same cases run in tests/test_timeline_cases.py), so the two cannot drift apart.
//
// Python details mirrored on purpose: `\d` is any Unicode decimal digit and `\s` / strip() / isspace() use
// Python's whitespace set; lines split as str.splitlines() does; messages quote values as repr() does and
// format times as f"{s:g}" does (round-half-even). Known differences, JSON only: JSON.parse refuses NaN /
// Infinity (Python's json accepts them) and words its syntax errors differently after "timeline JSON is not
// valid: "; JSON numbers like 2.0 are echoed as 2 in messages that quote a whole entry.

export const TRANSITIONS = Object.freeze(["recache", "flush", "none"]);
export const FORMAT = "stream_r1.timeline";
export const VERSION = 1;
export const FPS = 16;
export const TIMELINE_NODE_TYPE = "StreamR1Timeline";
/** Nodes whose `seconds` / `frames` widgets give the whole stream's length (Continue only adds to a stream). */
export const LENGTH_NODE_TYPES = Object.freeze(["StreamR1Generate", "StreamR1GenerateToFile"]);

// ---- Python string semantics ------------------------------------------------------------------------------------
const WS = "\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const SPACE = new RegExp(`^[${WS}]$`, "u");
const LSTRIP = new RegExp(`^[${WS}]+`, "u");
const RSTRIP = new RegExp(`[${WS}]+$`, "u");
const LINE_BREAK = /\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/g;
const LINE = new RegExp(
  `^(?<time>@\\p{Nd}+|(?:\\p{Nd}+:)?\\p{Nd}+(?:\\.\\p{Nd}*)?s?)[${WS}]*(?:\\[(?<tr>[A-Za-z_]+)\\])?[${WS}]*:` +
  "(?<prompt>[^\\n]*)$", "u");
const DIGIT = /\p{Nd}/u;
const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

const isSpace = (ch) => SPACE.test(ch);
const strip = (s) => s.replace(LSTRIP, "").replace(RSTRIP, "");
const lstrip = (s) => s.replace(LSTRIP, "");
const rstrip = (s) => s.replace(RSTRIP, "");
/** s[:n] in code points, as Python slices. */
const head = (s, n) => Array.from(s).slice(0, n).join("");

/** str.splitlines(), keeping where each line starts and ends in `text` (UTF-16 offsets, break excluded). */
export function splitLines(text) {
  const out = [];
  let pos = 0;
  for (const m of text.matchAll(LINE_BREAK)) {
    out.push({ text: text.slice(pos, m.index), start: pos, end: m.index });
    pos = m.index + m[0].length;
  }
  if (pos < text.length) out.push({ text: text.slice(pos), start: pos, end: text.length });
  return out;
}

/** Any Unicode decimal digit -> ASCII (Nd digits come in runs of ten, each starting at its zero). */
function asciiDigits(s) {
  return s.replace(/\p{Nd}/gu, (ch) => {
    const cp = ch.codePointAt(0);
    if (cp < 128) return ch;
    let zero = cp;
    while (DIGIT.test(String.fromCodePoint(zero - 1))) zero -= 1;
    return String((cp - zero) % 10);
  });
}

/** repr() of a str, int, float, bool, None, list or dict (what JSON gives). */
export function pyRepr(v) {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") return Number.isInteger(v) && !Object.is(v, -0) && Math.abs(v) < 2 ** 53
    ? String(v) : floatRepr(v);
  if (typeof v === "bigint") return String(v);
  if (typeof v === "string") {
    const quote = v.includes("'") && !v.includes('"') ? '"' : "'";
    let out = quote;
    for (const ch of v) {
      const cp = ch.codePointAt(0);
      if (ch === "\\" || ch === quote) out += "\\" + ch;
      else if (ch === "\n") out += "\\n";
      else if (ch === "\r") out += "\\r";
      else if (ch === "\t") out += "\\t";
      else if (ch !== " " && NOT_PRINTABLE.test(ch)) {
        const hex = cp.toString(16);
        out += cp < 0x100 ? `\\x${hex.padStart(2, "0")}` : cp < 0x10000 ? `\\u${hex.padStart(4, "0")}`
          : `\\U${hex.padStart(8, "0")}`;
      } else out += ch;
    }
    return out + quote;
  }
  if (Array.isArray(v)) return `[${v.map(pyRepr).join(", ")}]`;
  return `{${Object.entries(v).map(([k, x]) => `${pyRepr(k)}: ${pyRepr(x)}`).join(", ")}}`;
}

/** str() of a JSON value. */
const pyStr = (v) => (typeof v === "string" ? v : pyRepr(v));

/** Python truthiness of a JSON value. */
const truthy = (v) => !(v === null || v === undefined || v === false || v === 0 || v === "" ||
  (Array.isArray(v) && v.length === 0) || (typeof v === "object" && !Array.isArray(v) && Object.keys(v).length === 0));

function typeName(v) {
  if (v === null || v === undefined) return "NoneType";
  if (Array.isArray(v)) return "list";
  if (typeof v === "object") return "dict";
  if (typeof v === "string") return "str";
  if (typeof v === "boolean") return "bool";
  return Number.isInteger(v) ? "int" : "float";
}

class PyError extends Error {
  constructor(message, kind = "ValueError") {
    super(message);
    this.name = kind;
  }
}

const D = "\\p{Nd}(?:_?\\p{Nd})*";
const FLOAT_LITERAL = new RegExp(`^[+-]?(?:(?:${D}(?:\\.(?:${D})?)?|\\.${D})(?:[eE][+-]?${D})?|inf(?:inity)?|nan)$`,
  "iu");
const INT_LITERAL = new RegExp(`^[+-]?${D}$`, "u");

/** float(v) for a JSON value. */
function pyFloat(v) {
  if (typeof v === "number") return v;
  if (typeof v === "boolean") return v ? 1 : 0;
  if (typeof v === "string") {
    const s = strip(v);
    if (!FLOAT_LITERAL.test(s)) throw new PyError(`could not convert string to float: ${pyRepr(v)}`);
    const t = asciiDigits(s).replace(/_/g, "").toLowerCase();
    if (/^[+-]?nan$/.test(t)) return NaN;
    if (/^[+-]?inf/.test(t)) return t.startsWith("-") ? -Infinity : Infinity;
    return Number(t);
  }
  throw new PyError(`float() argument must be a string or a real number, not '${typeName(v)}'`, "TypeError");
}

/** int(v) for a JSON value. */
function pyInt(v) {
  if (typeof v === "boolean") return v ? 1 : 0;
  if (typeof v === "number") {
    if (Number.isNaN(v)) throw new PyError("cannot convert float NaN to integer");
    if (!Number.isFinite(v)) throw new PyError("cannot convert float infinity to integer", "OverflowError");
    return Math.trunc(v) + 0;
  }
  if (typeof v === "string") {
    const s = strip(v);
    if (!INT_LITERAL.test(s)) throw new PyError(`invalid literal for int() with base 10: ${pyRepr(v)}`);
    return Number(asciiDigits(s).replace(/_/g, ""));
  }
  throw new PyError(`int() argument must be a string, a bytes-like object or a real number, not '${typeName(v)}'`,
    "TypeError");
}

/** The digits of a finite double exactly: value = BigInt(digits) / 10**scale. */
function exactDecimal(x) {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, Math.abs(x));
  const bits = view.getBigUint64(0);
  const biased = Number((bits >> 52n) & 0x7ffn);
  let mantissa = bits & ((1n << 52n) - 1n);
  let exp = biased - 1075;
  if (biased === 0) exp = -1074;
  else mantissa |= 1n << 52n;
  if (exp >= 0) return { digits: mantissa << BigInt(exp), scale: 0 };
  return { digits: mantissa * 5n ** BigInt(-exp), scale: -exp };
}

/** f"{x:g}" (precision 6, round-half-even on the exact value, as Python formats it). */
export function formatG(x, precision = 6) {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  const sign = x < 0 || Object.is(x, -0) ? "-" : "";
  if (x === 0) return `${sign}0`;
  const { digits, scale } = exactDecimal(x);
  let ds = digits.toString();
  let e = ds.length - 1 - scale;                         // exponent of the leading digit
  if (ds.length > precision) {
    const cut = ds.length - precision;
    const pow = 10n ** BigInt(cut);
    let q = digits / pow;
    const r = digits % pow, half = 5n * 10n ** BigInt(cut - 1);
    if (r > half || (r === half && q % 2n === 1n)) q += 1n;
    ds = q.toString();
    if (ds.length > precision) { ds = ds.slice(0, precision); e += 1; }
  } else ds = ds.padEnd(precision, "0");
  if (e < -4 || e >= precision) {
    const mant = (ds[0] + "." + ds.slice(1)).replace(/0+$/, "").replace(/\.$/, "");
    return `${sign}${mant}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  }
  let fixed = e >= 0 ? ds.slice(0, e + 1) + "." + ds.slice(e + 1) : "0." + "0".repeat(-e - 1) + ds;
  if (fixed.includes(".")) fixed = fixed.replace(/0+$/, "").replace(/\.$/, "");
  return sign + fixed;
}

/** repr(float(x)): the shortest round-trip digits, Python's layout (1e-05, 12.0, 1e+16, inf, nan). */
export function floatRepr(x) {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  const sign = x < 0 || Object.is(x, -0) ? "-" : "";
  if (x === 0) return `${sign}0.0`;
  const [m, es] = Math.abs(x).toExponential().split("e");
  const ds = m.replace(".", ""), e = Number(es);
  if (e < -4 || e >= 16) {
    const mant = ds.length > 1 ? `${ds[0]}.${ds.slice(1)}` : ds;
    return `${sign}${mant}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  }
  if (e < 0) return `${sign}0.${"0".repeat(-e - 1)}${ds}`;
  const int = ds.slice(0, e + 1).padEnd(e + 1, "0"), frac = ds.slice(e + 1);
  return `${sign}${int}.${frac || "0"}`;
}

// ---- chunk boundaries --------------------------------------------------------------------------------------------
/** First video frame of chunk `chunk` (the first chunk has 1 + 4(fpb-1) frames, later ones 4*fpb). */
export function chunkStartFrame(chunk, framesPerBlock = 3) {
  return chunk <= 0 ? 0 : 4 * framesPerBlock * chunk - 3;
}

export function chunkStartSeconds(chunk, framesPerBlock = 3, fps = FPS) {
  return chunkStartFrame(chunk, framesPerBlock) / fps;
}

/** The chunk whose start is nearest to `seconds` (ties go to the later chunk). */
export function chunkAtSeconds(seconds, framesPerBlock = 3, fps = FPS) {
  if (seconds <= 0) return 0;
  const frame = seconds * fps;
  const guess = Math.max(0, Math.floor((frame + 3) / (4 * framesPerBlock)));
  let best = null;
  for (const k of [guess - 1, guess, guess + 1]) {
    if (k < 0) continue;
    const d = Math.abs(chunkStartFrame(k, framesPerBlock) - frame);
    if (best === null || d < best.d || (d === best.d && k > best.k)) best = { d, k };
  }
  return best.k;
}

/** Python's round(): half to even. */
function roundHalfEven(x) {
  const f = Math.floor(x), diff = x - f;
  if (diff > 0.5) return f + 1;
  if (diff < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Latent frames of `seconds` of video, whole chunks (stream_r1.stream.latent_frames_for_seconds). */
export function latentFramesForSeconds(seconds, fps = FPS, framesPerBlock = 3) {
  const lat = (seconds * fps - 1) / 4 + 1;
  return Math.max(1, roundHalfEven(lat / framesPerBlock)) * framesPerBlock;
}

/** The stream a generate node's widgets ask for: {chunks, seconds} (video length), or null when invalid. */
export function streamLength({ seconds = 5, frames = 0, framesPerBlock = 3, fps = FPS } = {}) {
  let latent;
  if (frames) {
    if (frames < 1 || (frames - 1) % 4) return null;
    latent = 1 + (frames - 1) / 4;
  } else {
    if (!(seconds > 0)) return null;
    latent = latentFramesForSeconds(seconds, fps, framesPerBlock);
  }
  return { chunks: Math.ceil(latent / framesPerBlock), seconds: (1 + 4 * (latent - 1)) / fps };
}

// ---- entries and timelines ---------------------------------------------------------------------------------------
const where = (e) => (e.chunk !== null ? `chunk ${e.chunk}` : `${formatG(e.seconds)} s`);

/** TimelineEntry(prompt, seconds, chunk, transition) with its checks; returns a frozen entry. */
export function makeEntry(prompt, seconds = null, chunk = null, transition = null) {
  const name = pyRepr(head(prompt, 40));
  if ((seconds === null) === (chunk === null)) {
    throw new PyError(`timeline entry ${name} needs exactly one of seconds or chunk`);
  }
  if (seconds !== null && (!Number.isFinite(seconds) || seconds < 0)) {
    throw new PyError(`timeline entry ${name}: time ${floatRepr(seconds)} must be >= 0 seconds`);
  }
  if (chunk !== null && chunk < 0) throw new PyError(`timeline entry ${name}: chunk ${chunk} must be >= 0`);
  if (transition !== null && !TRANSITIONS.includes(transition)) {
    throw new PyError(`timeline entry ${name}: transition ${pyRepr(transition)} is not one of ` +
                      `${TRANSITIONS.join(", ")}`);
  }
  const entry = { prompt, seconds, chunk, transition };
  if (!strip(prompt)) throw new PyError(`timeline entry at ${where(entry)} has an empty prompt`);
  return Object.freeze(entry);
}

function makeTimeline(entries, defaultTransition = "recache", basePrompt = null, lines = null) {
  if (!TRANSITIONS.includes(defaultTransition)) {
    throw new PyError(`transition ${pyRepr(defaultTransition)} is not one of ${TRANSITIONS.join(", ")}`);
  }
  if (!entries.length && !truthy(basePrompt)) {
    throw new PyError("the timeline is empty: give at least one 'seconds: prompt' entry");
  }
  return Object.freeze({ entries: Object.freeze(entries), defaultTransition, basePrompt: basePrompt ?? null,
                         lines: lines && Object.freeze(lines) });
}

function parseTime(text) {
  if (text.startsWith("@")) return [null, Number(asciiDigits(text.slice(1)))];
  text = text.replace(/s+$/, "");
  if (text.includes(":")) {
    const [minutes, sec] = text.split(":");
    return [Number(asciiDigits(minutes)) * 60 + Number(asciiDigits(sec)), null];
  }
  return [Number(asciiDigits(text)), null];
}

/** Timeline.parse: the text format, or JSON when the text starts with '{' or '['. */
export function parseTimeline(text, defaultTransition = "recache") {
  const stripped = lstrip(text);
  if (stripped.startsWith("{") || stripped.startsWith("[")) {
    let data;
    try {
      data = JSON.parse(stripped);
    } catch (e) {
      throw new PyError(`timeline JSON is not valid: ${e.message}`);
    }
    return timelineFromJson(data, defaultTransition);
  }
  return timelineFromText(text, defaultTransition);
}

/** Timeline.from_text; the result also carries `lines`: [first, last] line numbers (1-based) of each entry. */
export function timelineFromText(text, defaultTransition = "recache") {
  const raw = [];
  splitLines(text).forEach(({ text: rawLine }, i) => {
    const n = i + 1;
    const line = rstrip(rawLine);
    if (!strip(line) || lstrip(line).startsWith("#")) return;
    if (isSpace(String.fromCodePoint(line.codePointAt(0)))) {
      if (!raw.length) {
        throw new PyError(`timeline line ${n}: an indented line continues a prompt, but no entry came before it`);
      }
      raw[raw.length - 1].prompt += " " + strip(line);
      raw[raw.length - 1].last = n;
      return;
    }
    const m = LINE.exec(strip(line));
    if (m === null) {
      throw new PyError(`timeline line ${n}: ${pyRepr(head(strip(line), 60))} is not 'seconds: prompt' (e.g. ` +
                        "'12.5: a fox runs', '12.5 [flush]: ...', '1:30: ...', '@40: ...')");
    }
    const [seconds, chunk] = parseTime(m.groups.time);
    const tr = m.groups.tr ? m.groups.tr.toLowerCase() : null;
    raw.push({ seconds, chunk, transition: tr, prompt: strip(m.groups.prompt), line: n, last: n });
  });
  const out = raw.map((e) => {
    try {
      return makeEntry(e.prompt, e.seconds, e.chunk, e.transition);
    } catch (err) {
      throw new PyError(`timeline line ${e.line}: ${err.message}`);
    }
  });
  return makeTimeline(out, defaultTransition, null, raw.map((e) => [e.line, e.last]));
}

/** Timeline.from_json: {"format", "version", "default_transition", "base_prompt", "entries"} or a bare list. */
export function timelineFromJson(data, defaultTransition = "recache") {
  let base, items;
  if (data !== null && typeof data === "object" && !Array.isArray(data)) {
    const format = "format" in data ? data.format : FORMAT;
    if (format !== FORMAT) {
      throw new PyError(`not a timeline: format ${pyRepr(data.format)} (expected ${pyRepr(FORMAT)})`);
    }
    if (pyInt("version" in data ? data.version : VERSION) > VERSION) {
      throw new PyError(`timeline version ${pyStr(data.version)} is newer than this reader (${VERSION})`);
    }
    if ("default_transition" in data) defaultTransition = data.default_transition;
    base = data.base_prompt ?? null;
    items = data.entries;
  } else {
    base = null;
    items = data;
  }
  if (!Array.isArray(items)) {
    throw new PyError('timeline JSON needs a list of entries: {"entries": [{"seconds": 0, "prompt": "..."}, ...]}');
  }
  const out = items.map((item, j) => {
    const i = j + 1;
    const isDict = item !== null && typeof item === "object" && !Array.isArray(item);
    if (!isDict || typeof item.prompt !== "string") {
      throw new PyError(`timeline entry ${i}: expected {"seconds": ..., "prompt": "..."}, got ` +
                        head(pyStr(item), 60));
    }
    const known = new Set(["seconds", "time", "chunk", "prompt", "transition"]);
    const unknown = Object.keys(item).filter((k) => !known.has(k)).sort();
    if (unknown.length) throw new PyError(`timeline entry ${i}: unknown keys ${pyRepr(unknown)}`);
    const seconds = "seconds" in item ? item.seconds : item.time ?? null;
    try {
      const s = seconds === null ? null : pyFloat(seconds);
      const c = item.chunk === null || item.chunk === undefined ? null : pyInt(item.chunk);
      return makeEntry(item.prompt, s, c, item.transition ?? null);
    } catch (err) {
      if (err.name === "OverflowError") throw err;
      throw new PyError(`timeline entry ${i}: ${err.message}`);
    }
  });
  return makeTimeline(out, defaultTransition, base);
}

/** Timeline.to_json. */
export function timelineToJson(tl) {
  const d = { format: FORMAT, version: VERSION, default_transition: tl.defaultTransition,
              entries: tl.entries.map(entryToDict) };
  if (truthy(tl.basePrompt)) d.base_prompt = tl.basePrompt;
  return d;
}

export function entryToDict(e) {
  const d = e.chunk !== null ? { chunk: e.chunk } : { seconds: e.seconds };
  d.prompt = e.prompt;
  if (e.transition !== null) d.transition = e.transition;
  return d;
}

/** Timeline.to_text. */
export function timelineToText(tl) {
  return tl.entries.map((e) => {
    const t = e.chunk !== null ? `@${e.chunk}` : formatG(e.seconds);
    return `${t}${e.transition ? ` [${e.transition}]` : ""}: ${e.prompt}`;
  }).join("\n");
}

const chunkOf = (e, fpb, fps) => (e.chunk !== null ? e.chunk : chunkAtSeconds(e.seconds, fpb, fps));

/** Timeline.events: [{chunk, prompt, transition, seconds, entry}] at chunk boundaries, checked (order, one chunk
 * apart, inside a stream of `numChunks` chunks when given); `entry` is the entry's index or -1 for the base. */
export function timelineEvents(tl, framesPerBlock = 3, numChunks = null, fps = FPS) {
  const events = [];
  const fpb = framesPerBlock;
  if (truthy(tl.basePrompt) && (!tl.entries.length || chunkOf(tl.entries[0], fpb, fps) > 0)) {
    events.push({ chunk: 0, prompt: tl.basePrompt, transition: tl.defaultTransition, seconds: 0, entry: -1 });
  }
  let prev = null;
  tl.entries.forEach((e, j) => {
    const i = j + 1;
    const k = chunkOf(e, fpb, fps);
    if (prev !== null) {
      const pk = chunkOf(prev, fpb, fps);
      if ((e.seconds !== null && prev.seconds !== null && e.seconds <= prev.seconds) || k < pk) {
        throw new PyError(`timeline entry ${i} (${where(e)}) does not come after entry ${i - 1} (${where(prev)}): ` +
                          "list entries in time order");
      }
      if (k === pk) {
        const step = (4 * fpb) / fps, at = chunkStartSeconds(k, fpb, fps);
        throw new PyError(`timeline entries ${i - 1} (${where(prev)}) and ${i} (${where(e)}) fall on the same chunk ` +
                          `boundary (chunk ${k}, ${formatG(at)} s); entries must be at least one chunk ` +
                          `(${formatG(step)} s) apart`);
      }
    }
    if (numChunks !== null && k >= numChunks) {
      const end = (1 + 4 * (numChunks * fpb - 1)) / fps;
      throw new PyError(`timeline entry ${i} (${where(e)}) is beyond the stream: it has ${numChunks} chunks ` +
                        `(${formatG(end)} s); the last switch can be at ` +
                        `${formatG(chunkStartSeconds(numChunks - 1, fpb, fps))} s`);
    }
    events.push({ chunk: k, prompt: e.prompt, transition: e.transition ?? tl.defaultTransition,
                  seconds: chunkStartSeconds(k, fpb, fps), entry: j });
    prev = e;
  });
  if (events[0].chunk !== 0) {
    throw new PyError(`the timeline starts at ${where(tl.entries[0])}, so no prompt covers the start: add an entry ` +
                      "at 0 (or a base prompt without a time)");
  }
  return events;
}

// ---- the visual bar ---------------------------------------------------------------------------------------------
export const MIN_TAIL_SECONDS = 5;
const TICK_STEPS = [0.75, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 18000, 36000];

/** "m:ss" (or "h:mm:ss"); fractions of a second to one decimal when not whole. */
export function formatClock(seconds) {
  const neg = seconds < 0 ? "-" : "";
  let s = Math.abs(seconds);
  const whole = Math.abs(s - Math.round(s)) < 1e-9;
  s = whole ? Math.round(s) : Math.round(s * 10) / 10;
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const ss = whole ? String(sec).padStart(2, "0") : sec.toFixed(1).padStart(4, "0");
  return h ? `${neg}${h}:${String(m).padStart(2, "0")}:${ss}` : `${neg}${m}:${ss}`;
}

/** Axis ticks over [0, end]: at most `maxTicks` + 1, on a round step. */
export function ticks(end, maxTicks = 6) {
  if (!(end > 0)) return [{ t: 0, frac: 0, label: formatClock(0) }];
  const step = TICK_STEPS.find((s) => end / s <= maxTicks) ?? Math.ceil(end / maxTicks / 3600) * 3600;
  const out = [];
  for (let t = 0; t <= end + 1e-9; t += step) out.push({ t, frac: t / end, label: formatClock(t) });
  return out;
}

/** Everything the bar draws, from the widget's text: {ok, error?, errorLine?, segments, end, known, ticks}.
 * Segments: {index, chunk, start, end, frac, width, prompt, transition, time, lines, open}; `known`: the stream
 * length came from the connected generate node (`stream` = streamLength(...)), else the bar ends at the last
 * switch plus a tail (the mean of the earlier segments, at least MIN_TAIL_SECONDS) and the last one is `open`. */
export function layoutTimeline(text, { defaultTransition = "recache", stream = null, framesPerBlock = 3,
                                       fps = FPS } = {}) {
  let tl, events;
  try {
    tl = parseTimeline(text ?? "", TRANSITIONS.includes(defaultTransition) ? defaultTransition : "recache");
    events = timelineEvents(tl, framesPerBlock, stream ? stream.chunks : null, fps);
  } catch (err) {
    const m = /^timeline line (\d+):/.exec(err.message);
    return { ok: false, error: err.message, errorLine: m ? Number(m[1]) : null, segments: [], end: 0,
             known: !!stream, ticks: [] };
  }
  const last = events[events.length - 1].seconds;
  let end;
  if (stream) end = stream.seconds;
  else {
    const mean = events.length > 1 ? last / (events.length - 1) : 0;
    end = last + Math.max(MIN_TAIL_SECONDS, mean);
  }
  const segments = events.map((ev, i) => {
    const stop = i + 1 < events.length ? events[i + 1].seconds : end;
    const entry = ev.entry >= 0 ? tl.entries[ev.entry] : null;
    return {
      index: i, chunk: ev.chunk, start: ev.seconds, end: stop, frac: ev.seconds / end,
      width: (stop - ev.seconds) / end, prompt: ev.prompt, transition: ev.transition,
      time: entry === null ? "base" : entry.chunk !== null ? `@${entry.chunk}` : formatClock(entry.seconds),
      lines: entry !== null && tl.lines ? tl.lines[ev.entry] : null,
      open: !stream && i === events.length - 1,
    };
  });
  return { ok: true, segments, end, known: !!stream, ticks: ticks(end) };
}

/** [start, end) character offsets in `text` of lines first..last (1-based, str.splitlines() numbering). */
export function lineRange(text, first, last = first) {
  const lines = splitLines(text);
  const a = lines[first - 1], b = lines[last - 1] ?? a;
  return a ? [a.start, b.end] : [0, 0];
}
