// Prompt timelines in the browser: a line-for-line mirror of stream_r1/timeline.py (text and JSON formats, the
// entry checks and the resolution to chunk boundaries, with the same error messages), plus the layout of the
// visual timeline bar the Stream-R1 Prompt Timeline node shows. No DOM, no ComfyUI imports: tested under plain
// Node (`node --test web/tests/`), and against the Python parser through tests/fixtures/timeline_cases.json
// (the same cases run in tests/test_timeline_cases.py), so the two cannot drift apart.
//
// Python details mirrored on purpose: `\d` is any Unicode decimal digit and `\s` / strip() / isspace() use
// Python's whitespace set; lines split as str.splitlines() does; messages quote values as repr() does and
// format times as f"{s:g}" does (round-half-even). Known differences, JSON only: syntax errors are worded
// differently after "timeline JSON is not valid: "; JSON numbers like 2.0 are echoed as 2, and an object's
// integer-like keys come first, in messages that quote a whole entry.
//
// Bounded by design (it runs on every keystroke): the same limits as the Python parser (MAX_TEXT_CHARS,
// MAX_ENTRIES, MAX_SECONDS, MAX_CHUNK, MAX_JSON_DEPTH, recorded in the shared fixture and checked there), no
// regular expression that backtracks more than linearly, no loop whose bound comes from a number in the text, and
// no Infinity / NaN reaching the layout. Every bad input is a TimelineError with a one-line message.

export const TRANSITIONS = Object.freeze(["recache", "flush", "none"]);
export const FORMAT = "stream_r1.timeline";
export const VERSION = 1;
export const FPS = 16;
/** Limits, as in stream_r1/timeline.py (see there). */
export const MAX_TEXT_CHARS = 1_000_000;
export const MAX_ENTRIES = 10_000;
export const MAX_SECONDS = 10_000_000;
export const MAX_CHUNK = 10_000_000;
export const MAX_JSON_DEPTH = 32;
const EXACT = 2 ** 53;                                 // floats above this are no longer whole-number exact
export const TIMELINE_NODE_TYPE = "StreamR1Timeline";
/** Nodes whose `seconds` / `frames` widgets give the whole stream's length (Continue only adds to a stream). */
export const LENGTH_NODE_TYPES = Object.freeze(["StreamR1Generate", "StreamR1GenerateToFile"]);

// ---- Python string semantics ------------------------------------------------------------------------------------
const WS = "\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const SPACE = new RegExp(`^[${WS}]$`, "u");
const LINE_BREAK = /\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/g;
// As in Python, one run of spaces before the optional [transition] and one inside its group: two runs side by
// side (`\s*(?:[..])?\s*:`) read the same lines but backtrack quadratically on spaces that do not end in ':'.
const LINE = new RegExp(
  `^(?<time>@\\p{Nd}+|(?:\\p{Nd}+:)?\\p{Nd}+(?:\\.\\p{Nd}*)?s?)[${WS}]*(?:\\[(?<tr>[A-Za-z_]+)\\][${WS}]*)?:` +
  "(?<prompt>[^\\n]*)$", "u");
const DIGIT = /\p{Nd}/u;
const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

const isSpace = (ch) => SPACE.test(ch);
// Python's whitespace is all in the BMP, so one UTF-16 unit at a time; loops, not /\s+$/ (quadratic in V8 on
// long runs of spaces that are not at the end).
function spaceAt(s, i) {
  const c = s.charCodeAt(i);
  if (c <= 0x20) return c === 0x20 || (c >= 0x09 && c <= 0x0d) || c >= 0x1c;
  if (c < 0x85) return false;
  return c === 0x85 || c === 0xa0 || c === 0x1680 || (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029 ||
    c === 0x202f || c === 0x205f || c === 0x3000;
}
function lstrip(s) {
  let a = 0;
  while (a < s.length && spaceAt(s, a)) a += 1;
  return s.slice(a);
}
function rstrip(s) {
  let b = s.length;
  while (b > 0 && spaceAt(s, b - 1)) b -= 1;
  return s.slice(0, b);
}
const strip = (s) => rstrip(lstrip(s));

/** [s[:n], len(s) > n] in code points, as Python slices (reads at most n + 1 code points). */
function cut(s, n) {
  let i = 0, count = 0;
  while (i < s.length && count < n) {
    i += s.codePointAt(i) > 0xffff ? 2 : 1;
    count += 1;
  }
  return [s.slice(0, i), i < s.length];
}
/** s[:n] in code points. */
const head = (s, n) => cut(s, n)[0];

/** len(s) in code points > n (s.length counts UTF-16 units, which can be up to twice as many). */
function longerThan(s, n) {
  if (s.length <= n) return false;
  if (s.length > 2 * n) return true;
  return cut(s, n)[1];
}

/** Python's sorted() order of str: by code point (JS sorts by UTF-16 unit). */
function byCodePoint(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0)), y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i += 1) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

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

/** repr(v) cut to `limit` characters, then "..." (stream_r1.timeline._show). */
export function show(v, limit = 60) {
  const [text, more] = cut(pyRepr(v), limit);
  return more ? `${text}...` : text;
}

const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);
const isDict = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

/** The parser's error (Python's ValueError): a one-line message that says what to write instead. */
export class TimelineError extends Error {
  constructor(message) {
    super(message);
    this.name = "TimelineError";
  }
}

const D = "\\p{Nd}(?:_?\\p{Nd})*";
const FLOAT_LITERAL = new RegExp(`^[+-]?(?:(?:${D}(?:\\.(?:${D})?)?|\\.${D})(?:[eE][+-]?${D})?|inf(?:inity)?|nan)$`,
  "iu");
const INT_LITERAL = new RegExp(`^[+-]?${D}$`, "u");

/** float(v) of a JSON value (bool, number or numeric string), or null when v is not a number; `whole`: strings
 * must be integer literals, as int() takes them (stream_r1.timeline._float). */
function jsonFloat(v, whole = false) {
  if (typeof v === "boolean") return v ? 1 : 0;
  if (typeof v === "number") return v;
  if (typeof v !== "string") return null;
  const s = strip(v);
  if (whole ? !INT_LITERAL.test(s) : !FLOAT_LITERAL.test(s)) return null;
  const t = asciiDigits(s).replace(/_/g, "").toLowerCase();
  if (/^[+-]?nan$/.test(t)) return NaN;
  if (/^[+-]?inf/.test(t)) return t.startsWith("-") ? -Infinity : Infinity;
  return Number(t);
}

/** A chunk index read as a number, as an integer (truncated); only exact values (|v| <= 2**53) pass. */
function chunkIndex(v) {
  if (Number.isNaN(v)) {
    throw new TimelineError('chunk nan is not a whole number: write a chunk index, e.g. @40 or "chunk": 40');
  }
  if (v > EXACT) throw new TimelineError(`chunk ${floatRepr(v)} is too large: chunk indices go up to ${MAX_CHUNK}`);
  if (v < -EXACT) throw new TimelineError(`chunk ${floatRepr(v)} must be >= 0`);
  return Math.trunc(v) + 0;
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
  if (!Number.isFinite(seconds)) {
    throw new TimelineError(`time ${floatRepr(seconds)} is not a finite number of seconds`);
  }
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

/** The stream a generate node's widgets ask for: {chunks, seconds} (video length), or null when invalid (also
 * when not finite or longer than MAX_SECONDS: the bar then shows the timeline on its own). */
export function streamLength({ seconds = 5, frames = 0, framesPerBlock = 3, fps = FPS } = {}) {
  let latent;
  if (!(Number.isInteger(framesPerBlock) && framesPerBlock >= 1 && fps > 0 && fps <= 1000)) return null;
  if (frames) {
    if (!Number.isInteger(frames) || frames < 1 || (frames - 1) % 4 || frames > MAX_SECONDS * fps) return null;
    latent = 1 + (frames - 1) / 4;
  } else {
    if (!(seconds > 0 && seconds <= MAX_SECONDS)) return null;
    latent = latentFramesForSeconds(seconds, fps, framesPerBlock);
  }
  return { chunks: Math.ceil(latent / framesPerBlock), seconds: (1 + 4 * (latent - 1)) / fps };
}

// ---- entries and timelines ---------------------------------------------------------------------------------------
const where = (e) => (e.chunk !== null ? `chunk ${e.chunk}` : `${formatG(e.seconds)} s`);

/** TimelineEntry(prompt, seconds, chunk, transition) with its checks; returns a frozen entry. */
export function makeEntry(prompt, seconds = null, chunk = null, transition = null) {
  if (typeof prompt !== "string") {
    throw new TimelineError("a timeline entry's prompt must be text (str), not " +
                            `${Array.isArray(prompt) ? "list" : typeof prompt}: write the prompt in quotes`);
  }
  const name = pyRepr(head(prompt, 40));
  if ((seconds === null) === (chunk === null)) {
    throw new TimelineError(`timeline entry ${name} needs exactly one of seconds or chunk`);
  }
  if (seconds !== null) {
    if (typeof seconds !== "number" || Number.isNaN(seconds)) {
      throw new TimelineError(`timeline entry ${name}: time ${show(seconds)} is not a number of seconds: ` +
                              "write e.g. 12.5");
    }
    if (seconds < 0) throw new TimelineError(`timeline entry ${name}: time ${floatRepr(seconds)} must be >= 0 seconds`);
    if (seconds > MAX_SECONDS) {
      throw new TimelineError(`timeline entry ${name}: time ${floatRepr(seconds)} is too large: switch times go ` +
                              `up to ${MAX_SECONDS} s (about 115 days)`);
    }
  }
  if (chunk !== null) {
    if (!Number.isInteger(chunk)) {
      throw new TimelineError(`timeline entry ${name}: chunk ${show(chunk)} is not a whole number: write e.g. 40`);
    }
    if (chunk < 0) throw new TimelineError(`timeline entry ${name}: chunk ${chunk} must be >= 0`);
    if (chunk > MAX_CHUNK) {
      throw new TimelineError(`timeline entry ${name}: chunk ${chunk} is too large: chunk indices go up to ` +
                              `${MAX_CHUNK}`);
    }
  }
  if (transition !== null && !TRANSITIONS.includes(transition)) {
    throw new TimelineError(`timeline entry ${name}: transition ${show(transition)} is not one of ` +
                            `${TRANSITIONS.join(", ")}`);
  }
  const entry = { prompt, seconds, chunk, transition };
  if (!strip(prompt)) throw new TimelineError(`timeline entry at ${where(entry)} has an empty prompt`);
  return Object.freeze(entry);
}

function makeTimeline(entries, defaultTransition = "recache", basePrompt = null, lines = null) {
  if (basePrompt === "") basePrompt = null;                 // no base prompt, as to_json writes it
  if (!TRANSITIONS.includes(defaultTransition)) {
    throw new TimelineError(`transition ${show(defaultTransition)} is not one of ${TRANSITIONS.join(", ")}`);
  }
  if (basePrompt !== null) {
    if (typeof basePrompt !== "string") {
      throw new TimelineError(`the base prompt ${show(basePrompt)} is not text: write "base_prompt": "a prompt", or ` +
                              "leave it out");
    }
    if (basePrompt && !strip(basePrompt)) {
      throw new TimelineError("the base prompt is blank: write a prompt, or leave it out");
    }
  }
  if (entries.length > MAX_ENTRIES) {
    throw new TimelineError(`the timeline has ${entries.length} entries; at most ${MAX_ENTRIES} are allowed: merge ` +
                            "or drop some");
  }
  if (!entries.length && !basePrompt) {
    throw new TimelineError("the timeline is empty: give at least one 'seconds: prompt' entry");
  }
  return Object.freeze({ entries: Object.freeze(entries), defaultTransition, basePrompt,
                         lines: lines && Object.freeze(lines) });
}

/** '12.5' / '12.5s' / '1:30' -> [seconds, null]; '@40' -> [null, 40]. Huge values read as Infinity, which the
 * entry's checks refuse. */
function parseTime(text) {
  if (text.startsWith("@")) return [null, chunkIndex(Number(asciiDigits(text.slice(1))))];
  text = text.replace(/s$/, "");
  if (text.includes(":")) {
    const [minutes, sec] = text.split(":");
    return [Number(asciiDigits(minutes)) * 60 + Number(asciiDigits(sec)), null];
  }
  return [Number(asciiDigits(text)), null];
}

function checkText(text) {
  if (typeof text !== "string") {
    throw new TimelineError(`a timeline is text (str), not ${text === null ? "NoneType" : typeof text}: write lines ` +
                            "like '0: a red fox', or JSON");
  }
  if (longerThan(text, MAX_TEXT_CHARS)) {
    throw new TimelineError(`the timeline text is longer than ${MAX_TEXT_CHARS} characters: shorten it (fewer or ` +
                            "shorter prompts)");
  }
}

/** Refuse nesting past MAX_JSON_DEPTH before JSON.parse (and pyRepr, which recurses) sees it: brackets outside
 * strings, as stream_r1.timeline._check_json_depth counts them. */
function checkJsonDepth(text) {
  let depth = 0, inString = false;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i += 1;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "[" || c === "{") {
      depth += 1;
      if (depth > MAX_JSON_DEPTH) {
        throw new TimelineError(`timeline JSON is nested more than ${MAX_JSON_DEPTH} levels deep: a timeline needs ` +
                                '3, {"entries": [{"seconds": 0, "prompt": "..."}]}');
      }
    } else if (c === "]" || c === "}") depth -= 1;
  }
}

/** Timeline.parse: the text format, or JSON when the text starts with '{' or '['. */
export function parseTimeline(text, defaultTransition = "recache") {
  checkText(text);
  const stripped = lstrip(text);
  if (stripped.startsWith("{") || stripped.startsWith("[")) {
    checkJsonDepth(stripped);
    let data;
    try {
      data = JSON.parse(stripped);
    } catch (e) {
      throw new TimelineError(`timeline JSON is not valid: ${String(e.message).replace(LINE_BREAK, " ")}; fix the ` +
                              "JSON, or write one 'seconds: prompt' per line");
    }
    return timelineFromJson(data, defaultTransition);
  }
  return timelineFromText(text, defaultTransition);
}

/** Timeline.from_text; the result also carries `lines`: [first, last] line numbers (1-based) of each entry. */
export function timelineFromText(text, defaultTransition = "recache") {
  checkText(text);
  const raw = [];
  const lines = splitLines(text);
  for (let i = 0; i < lines.length; i += 1) {
    const n = i + 1;
    const line = rstrip(lines[i].text);
    if (!strip(line) || lstrip(line).startsWith("#")) continue;
    if (isSpace(line[0])) {
      if (!raw.length) {
        throw new TimelineError(`timeline line ${n}: an indented line continues a prompt, but no entry came before it`);
      }
      raw[raw.length - 1].prompt.push(strip(line));
      raw[raw.length - 1].last = n;
      continue;
    }
    const m = LINE.exec(strip(line));
    if (m === null) {
      throw new TimelineError(`timeline line ${n}: ${pyRepr(head(strip(line), 60))} is not 'seconds: prompt' (e.g. ` +
                              "'12.5: a fox runs', '12.5 [flush]: ...', '1:30: ...', '@40: ...')");
    }
    if (raw.length === MAX_ENTRIES) {
      throw new TimelineError(`timeline line ${n}: more than ${MAX_ENTRIES} entries: merge or drop some`);
    }
    let seconds, chunk;
    try {
      [seconds, chunk] = parseTime(m.groups.time);
    } catch (err) {
      throw new TimelineError(`timeline line ${n}: ${err.message}`);
    }
    const tr = m.groups.tr ? m.groups.tr.toLowerCase() : null;
    raw.push({ seconds, chunk, transition: tr, prompt: [strip(m.groups.prompt)], line: n, last: n });
  }
  const out = raw.map((e) => {
    try {
      return makeEntry(e.prompt.join(" "), e.seconds, e.chunk, e.transition);
    } catch (err) {
      throw new TimelineError(`timeline line ${e.line}: ${err.message}`);
    }
  });
  return makeTimeline(out, defaultTransition, null, raw.map((e) => [e.line, e.last]));
}

const ENTRY_KEYS = new Set(["seconds", "time", "chunk", "prompt", "transition"]);

function entryFromJson(item) {
  if (!isDict(item) || !has(item, "prompt") || typeof item.prompt !== "string") {
    throw new TimelineError(`expected {"seconds": ..., "prompt": "..."}, got ${show(item)}`);
  }
  const unknown = Object.keys(item).filter((k) => !ENTRY_KEYS.has(k)).sort(byCodePoint);
  if (unknown.length) {
    throw new TimelineError(`unknown keys ${show(unknown, 200)}: use seconds (or time), chunk, prompt, transition`);
  }
  const key = has(item, "seconds") ? "seconds" : "time";
  const rawS = has(item, key) ? item[key] : null, rawC = has(item, "chunk") ? item.chunk : null;
  const seconds = rawS === null ? null : jsonFloat(rawS);
  if (rawS !== null && seconds === null) {
    throw new TimelineError(`${key} ${show(rawS)} is not a number: write the time in seconds, e.g. "${key}": 12.5`);
  }
  let chunk = null;
  if (rawC !== null) {
    const c = jsonFloat(rawC, true);
    if (c === null) {
      throw new TimelineError(`chunk ${show(rawC)} is not a whole number: write a chunk index, e.g. "chunk": 40`);
    }
    chunk = chunkIndex(c);
  }
  return makeEntry(item.prompt, seconds, chunk, has(item, "transition") ? item.transition : null);
}

/** Timeline.from_json: {"format", "version", "default_transition", "base_prompt", "entries"} or a bare list. */
export function timelineFromJson(data, defaultTransition = "recache") {
  let base, items;
  if (isDict(data)) {
    const format = has(data, "format") ? data.format : FORMAT;
    if (format !== FORMAT) {
      throw new TimelineError(`not a timeline: format ${show(format)} (expected ${pyRepr(FORMAT)})`);
    }
    const version = has(data, "version") ? data.version : VERSION;
    const v = jsonFloat(version, true);
    if (v === null || Number.isNaN(v)) {
      throw new TimelineError(`timeline version ${show(version)} is not a whole number: write "version": ${VERSION}`);
    }
    if (v >= VERSION + 1) {
      throw new TimelineError(`timeline version ${show(version)} is newer than this reader (${VERSION})`);
    }
    if (has(data, "default_transition")) defaultTransition = data.default_transition;
    base = has(data, "base_prompt") ? data.base_prompt : null;
    items = has(data, "entries") ? data.entries : null;
  } else {
    base = null;
    items = data;
  }
  if (!Array.isArray(items)) {
    throw new TimelineError('timeline JSON needs a list of entries: {"entries": [{"seconds": 0, "prompt": "..."}, ' +
                            "...]}");
  }
  if (items.length > MAX_ENTRIES) {
    throw new TimelineError(`the timeline has ${items.length} entries; at most ${MAX_ENTRIES} are allowed: merge or ` +
                            "drop some");
  }
  const out = items.map((item, j) => {
    try {
      return entryFromJson(item);
    } catch (err) {
      throw new TimelineError(`timeline entry ${j + 1}: ${err.message}`);
    }
  });
  return makeTimeline(out, defaultTransition, base);
}

/** Timeline.to_json. */
export function timelineToJson(tl) {
  const d = { format: FORMAT, version: VERSION, default_transition: tl.defaultTransition,
              entries: tl.entries.map(entryToDict) };
  if (tl.basePrompt) d.base_prompt = tl.basePrompt;
  return d;
}

export function entryToDict(e) {
  const d = e.chunk !== null ? { chunk: e.chunk } : { seconds: e.seconds };
  d.prompt = e.prompt;
  if (e.transition !== null) d.transition = e.transition;
  return d;
}

/** Seconds as the text format reads them back exactly (stream_r1.timeline._text_seconds): repr's shortest digits,
 * never an exponent. */
export function textSeconds(x) {
  if (x === 0) return "0";
  let r = floatRepr(x);
  if (r.includes("e")) {
    const [mantissa, exp] = r.split("e");
    const [ip, fp = ""] = mantissa.split(".");
    const digits = ip + fp, point = ip.length + Number(exp);
    if (point <= 0) r = `0.${"0".repeat(-point)}${digits}`;
    else if (point >= digits.length) r = digits + "0".repeat(point - digits.length);
    else r = `${digits.slice(0, point)}.${digits.slice(point)}`;
  }
  return r.endsWith(".0") ? r.slice(0, -2) : r;
}

/** Timeline.to_text; parses back to the same entries when no prompt holds a line break. */
export function timelineToText(tl) {
  return tl.entries.map((e) => {
    const t = e.chunk !== null ? `@${e.chunk}` : textSeconds(e.seconds);
    return `${t}${e.transition ? ` [${e.transition}]` : ""}: ${e.prompt}`;
  }).join("\n");
}

const chunkOf = (e, fpb, fps) => (e.chunk !== null ? e.chunk : chunkAtSeconds(e.seconds, fpb, fps));

/** Timeline.events: [{chunk, prompt, transition, seconds, entry}] at chunk boundaries, checked (order, one chunk
 * apart, inside a stream of `numChunks` chunks when given); `entry` is the entry's index or -1 for the base. */
export function timelineEvents(tl, framesPerBlock = 3, numChunks = null, fps = FPS) {
  const events = [];
  const fpb = framesPerBlock;
  if (tl.basePrompt && (!tl.entries.length || chunkOf(tl.entries[0], fpb, fps) > 0)) {
    events.push({ chunk: 0, prompt: tl.basePrompt, transition: tl.defaultTransition, seconds: 0, entry: -1 });
  }
  let prev = null;
  tl.entries.forEach((e, j) => {
    const i = j + 1;
    const k = chunkOf(e, fpb, fps);
    if (prev !== null) {
      const pk = chunkOf(prev, fpb, fps);
      if ((e.seconds !== null && prev.seconds !== null && e.seconds <= prev.seconds) || k < pk) {
        throw new TimelineError(`timeline entry ${i} (${where(e)}) does not come after entry ${i - 1} ` +
                                `(${where(prev)}): list entries in time order`);
      }
      if (k === pk) {
        const step = (4 * fpb) / fps, at = chunkStartSeconds(k, fpb, fps);
        throw new TimelineError(`timeline entries ${i - 1} (${where(prev)}) and ${i} (${where(e)}) fall on the same ` +
                                `chunk boundary (chunk ${k}, ${formatG(at)} s); entries must be at least one chunk ` +
                                `(${formatG(step)} s) apart`);
      }
    }
    if (numChunks !== null && k >= numChunks) {
      const end = (1 + 4 * (numChunks * fpb - 1)) / fps;
      throw new TimelineError(`timeline entry ${i} (${where(e)}) is beyond the stream: it has ${numChunks} chunks ` +
                              `(${formatG(end)} s); the last switch can be at ` +
                              `${formatG(chunkStartSeconds(numChunks - 1, fpb, fps))} s`);
    }
    events.push({ chunk: k, prompt: e.prompt, transition: e.transition ?? tl.defaultTransition,
                  seconds: chunkStartSeconds(k, fpb, fps), entry: j });
    prev = e;
  });
  if (events[0].chunk !== 0) {
    throw new TimelineError(`the timeline starts at ${where(tl.entries[0])}, so no prompt covers the start: add an ` +
                            "entry at 0 (or a base prompt without a time)");
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

/** Axis ticks over [0, end]: at most `maxTicks` + 1, on a round step (just 0 when `end` is not a finite length). */
export function ticks(end, maxTicks = 6) {
  if (!(end > 0 && Number.isFinite(end))) return [{ t: 0, frac: 0, label: formatClock(0) }];
  maxTicks = Math.min(100, Math.max(1, Math.floor(maxTicks) || 1));
  const step = TICK_STEPS.find((s) => end / s <= maxTicks) ?? Math.ceil(end / maxTicks / 3600) * 3600;
  const out = [];
  for (let i = 0; i <= maxTicks; i += 1) {              // a count, not `t += step` (never ends once t + step == t)
    const t = i * step;
    if (t > end + 1e-9) break;
    out.push({ t, frac: t / end, label: formatClock(t) });
  }
  return out;
}

/** Everything the bar draws, from the widget's text: {ok, error?, errorLine?, segments, end, known, ticks}.
 * Segments: {index, chunk, start, end, frac, width, prompt, transition, time, lines, open}; `known`: the stream
 * length came from the connected generate node (`stream` = streamLength(...)), else the bar ends at the last
 * switch plus a tail (the mean of the earlier segments, at least MIN_TAIL_SECONDS) and the last one is `open`. */
export function layoutTimeline(text, { defaultTransition = "recache", stream = null, framesPerBlock = 3,
                                       fps = FPS } = {}) {
  let tl, events;
  const usable = stream && Number.isInteger(stream.chunks) && stream.chunks > 0 && Number.isFinite(stream.seconds) &&
    stream.seconds > 0;
  if (!usable) stream = null;                            // a length that is not one: show the timeline on its own
  if (!(Number.isInteger(framesPerBlock) && framesPerBlock >= 1 && framesPerBlock <= 64)) framesPerBlock = 3;
  if (!(fps > 0 && fps <= 1000)) fps = FPS;
  try {
    tl = parseTimeline(text ?? "", TRANSITIONS.includes(defaultTransition) ? defaultTransition : "recache");
    events = timelineEvents(tl, framesPerBlock, stream ? stream.chunks : null, fps);
  } catch (err) {
    const error = String(err?.message ?? err);
    const m = /^timeline line (\d+):/.exec(error);
    return { ok: false, error, errorLine: m ? Number(m[1]) : null, segments: [], end: 0,
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
