"""Evaluate the shapes-world models and assemble the embedded bundle.

    python -m training.shapes.bundle [--runs runs/shapes] [--out stream_r1/shapes/bundle] [--prompts 48]

1. Samples the same held-out prompts and seeds from the teacher (bidirectional, `--teacher-steps` Euler steps
   with CFG), the DMD student and the Stream-R1 student (both streaming, 4 steps, window 9 / sink 3), short
   clips at the training length and long streams (`--long-seconds`) for drift.
2. Scores every video with the analytic checker (colour, shape, motion, background recovered from pixels;
   temporal consistency; colour/size drift) and the shapes reward model; writes `eval.json`, `eval.md` (the
   README table) and `eval_strip.png` (frames of each model for a few prompts) under `--runs`.
3. Copies the chosen student (`--student`, default the Stream-R1 one) with the VAE, text encoder and reward
   model into the bundle folder, with `bundle.json` (sizes, recipe commands, seeds, evaluation).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

log = logging.getLogger("training")

RECIPE_ORDER = ("shapes_vae", "shapes_teacher", "shapes_reward", "shapes_ode_init", "shapes_dmd", "shapes_stream_r1")
EVAL_SEED = 900000
"""First scene seed of the evaluation prompts (disjoint from the clip bank and the distillation prompts)."""


def eval_prompts(count: int, seed: int = EVAL_SEED) -> list[str]:
    from .world import shapes_prompts
    return shapes_prompts(count, seed)


def run_parts(runs: Path, device):
    """A shapes training folder's shared parts: the teacher stage's TrainConfig (its `world` is the videos' size and
    length), the text encoder it wrote and the VAE, loaded on `device`."""
    from stream_r1.text_encoder import load_text_encoder
    from stream_r1.vae import load_vae

    from ..config import TrainConfig
    cfg = TrainConfig.from_dict(json.loads((runs / "teacher" / "config.json").read_text()))
    return (cfg, load_text_encoder(str(runs / "teacher" / "umt5.safetensors"), device=device),
            load_vae(str(runs / "vae" / "vae.safetensors"), device=device))


# ---- samplers: prompt, seed -> frames [T, 3, H, W] in [0, 1] --------------------------------------------------------
def student_sampler(student_path: str, enc, vae, size: tuple[int, int], device, dtype=torch.float32,
                    search: Optional[tuple] = None) -> Callable:
    """Plain streaming of the student, or with `search` = (reward, T1Config) its Stream-T1 search under that
    reward."""
    from stream_r1.loaders import load_student
    from stream_r1.stream import StreamSession, chunks_for_frames
    from stream_r1.tts.search import generate_t1
    from stream_r1.vae import StreamingDecoder

    model, info = load_student(student_path, device=device, dtype=dtype, attention="sdpa")
    sc = info.stream_config

    def sample(prompt: str, seed: int, frames: int) -> Tensor:
        latent = (frames - 1) // 4 + 1
        ctx = enc.encode([prompt]).to(device, dtype)
        sess = StreamSession(model, sc, ctx, height=size[0], width=size[1], seed=seed, decoder=StreamingDecoder(vae),
                             device=device, dtype=dtype)
        if search is not None:
            _, video, _ = generate_t1(sess, search[0], latent, search[1])                 # [1, T, 3, H, W]
            return video[0].float().cpu()[:frames]
        out = [c.frames[0].float().cpu() for c in sess.run(chunks_for_frames(latent, sc.frames_per_block))]
        return torch.cat(out)[:frames]                                                   # [T, 3, H, W]
    return sample


def teacher_sampler(teacher_path: str, enc, vae, size: tuple[int, int], device, steps: int, guidance: float,
                    shift: float = 5.0) -> Callable:
    from stream_r1.loaders import load_student

    from ..rollout import teacher_ode_trajectory

    teacher, _ = load_student(teacher_path, device=device, dtype=torch.float32, attention="sdpa")
    neg = enc.encode([""]).to(device)
    h, w = teacher.cfg.latent_hw(*size)

    def sample(prompt: str, seed: int, frames: int) -> Tensor:
        latent = (frames - 1) // 4 + 1
        g = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(1, latent, teacher.cfg.in_dim, h, w, generator=g).to(device)
        _, x0 = teacher_ode_trajectory(teacher, noise, enc.encode([prompt]).to(device), neg, [], steps=steps,
                                       guidance=guidance, shift=shift)
        video = vae.decode(rearrange(x0, "b f c h w -> b c f h w"))                      # [1, 3, T, H, W]
        return rearrange((video[0].float().cpu() + 1) / 2, "c t h w -> t c h w")[:frames]
    return sample


# ---- scoring ----------------------------------------------------------------------------------------------------------
def score_videos(videos: list[Tensor], prompts: list[str], reward=None) -> dict[str, float]:
    """Mean checker metrics (and reward z-scores) of videos [T, 3, H, W] against their prompts."""
    from stream_r1.shapes import check_many

    rows = []
    lates = check_many([v[-max(1, v.shape[0] // 4):] for v in videos], prompts)     # the last quarter of each
    for r, late in zip(check_many(videos, prompts), lates):
        rows.append({"pass": float(r["passed"]), "color": r["color_score"], "shape": r["shape_score"],
                     "motion": r["motion_score"], "background": r["background_score"],
                     "temporal": r["temporal_consistency"], "color_drift": np.nan_to_num(r["color_drift"], nan=1.0),
                     "late_color": late["color_score"], "score": r["score"]})
    if reward is not None:
        from stream_r1.reward.model import compute_scores
        with torch.no_grad():
            for r, v, p in zip(rows, videos, prompts):
                z = compute_scores(reward, v[None].to(reward.device), [p]).normalized[0].float().cpu()
                r.update({f"reward_{a}": float(z[i]) for i, a in enumerate(reward.axes)})
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["videos"] = [{k: float(v) for k, v in r.items()} for r in rows]           # per video, for paired tests
    return out


def means_only(table: dict) -> dict:
    """An `evaluate` table without the per-video rows (what bundle.json keeps)."""
    return {m: {part: ({k: v for k, v in r.items() if k != "videos"} if isinstance(r, dict) else r)
                for part, r in row.items()} for m, row in table.items()}


PAIRED_KEYS = ("pass", "color", "shape", "motion", "temporal", "score", "reward_VQ", "reward_MQ", "reward_TA")


def paired_difference(a: dict, b: dict, keys=PAIRED_KEYS) -> dict[str, tuple[float, float]]:
    """Per metric, mean of (a - b) over the same prompts and seeds and its standard error (std / sqrt(n)):
    a paired comparison, so prompt difficulty cancels. a, b: `score_videos` outputs."""
    out = {}
    for k in keys:
        if k in a["videos"][0] and k in b["videos"][0]:
            d = np.array([x[k] - y[k] for x, y in zip(a["videos"], b["videos"])])
            out[k] = (float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"))
    return out


def evaluate(samplers: dict[str, Callable], prompts: list[str], frames: int, long_frames: int, long_count: int,
             reward=None, progress: bool = True) -> tuple[dict, dict[str, list[Tensor]]]:
    """Short clips for every prompt, long streams for the first `long_count` prompts (students only)."""
    table: dict[str, dict] = {}
    keep: dict[str, list[Tensor]] = {}
    for name, sample in samplers.items():
        t0 = time.perf_counter()
        vids = [sample(p, EVAL_SEED + i, frames) for i, p in enumerate(prompts)]
        row = {"short": score_videos(vids, prompts, reward)}
        keep[name] = vids[:4]
        if long_count and name != "teacher":
            longs = [sample(p, EVAL_SEED + i, long_frames) for i, p in enumerate(prompts[:long_count])]
            row["long"] = score_videos(longs, prompts[:long_count], reward)
            keep[name + "_long"] = longs[:2]
        row["seconds"] = time.perf_counter() - t0
        table[name] = row
        log.info("eval %s: %s", name, json.dumps(row))
    return table, keep


def markdown_table(table: dict, prompts: int, frames: int, long_frames: int, long_count: int) -> str:
    cols = [("pass", "pass"), ("color", "colour"), ("shape", "shape"), ("motion", "motion"),
            ("background", "bg"), ("temporal", "temporal"), ("reward_VQ", "VQ"), ("reward_MQ", "MQ"),
            ("reward_TA", "TA")]
    head = "| model | " + " | ".join(c for _, c in cols) + " | long: pass | long: colour (last ¼) | long: drift |"
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    for name, row in table.items():
        s = row["short"]
        cells = [f"{s[k]:.2f}" if k in s else "–" for k, _ in cols]
        lg = row.get("long")
        tail = [f"{lg['pass']:.2f}", f"{lg['late_color']:.2f}", f"{lg['color_drift']:.3f}"] if lg else ["–"] * 3
        lines.append(f"| {name} | " + " | ".join(cells + tail) + " |")
    pairs = [(a, b) for a, b in (("stream_r1", "dmd"), ("stream_r1+t1", "stream_r1")) if a in table and b in table]
    if pairs:
        keys = [k for k in PAIRED_KEYS if k in table[pairs[0][0]]["short"]]
        lines += ["", "| paired difference (same prompts and seeds), mean ± s.e. | " + " | ".join(keys) + " |",
                  "|" + "---|" * (len(keys) + 1)]
        for a, b in pairs:
            for part in ("short", "long"):
                if part in table[a] and part in table[b]:
                    d = paired_difference(table[a][part], table[b][part], keys)
                    lines.append(f"| {a} − {b} ({part}) | " + " | ".join(f"{d[k][0]:+.3f} ± {d[k][1]:.3f}" for k in keys)
                                 + " |")
    lines.append("")
    long = f"; long = the first {long_count} prompts streamed for {long_frames} frames" if long_count else ""
    lines.append(f"{prompts} held-out prompts (scene seeds {EVAL_SEED}+), {frames} frames each{long}. Checker scores "
                 "are fractions in [0, 1]; reward columns are the shapes reward model's z-scores.")
    return "\n".join(lines)


def strip_image(keep: dict[str, list[Tensor]], path: Path, prompts: list[str], picks: int = 3, times: int = 6) -> None:
    """Rows = model x prompt, columns = evenly spaced frames."""
    from PIL import Image

    rows = []
    for name, vids in keep.items():
        if name.endswith("_long"):
            continue
        for v in vids[:picks]:
            idx = torch.linspace(0, v.shape[0] - 1, times).long()
            rows.append(torch.cat(list(v[idx]), dim=2))                                  # [3, H, times*W]
    grid = torch.cat(rows, dim=1)                                                         # [3, rows*H, times*W]
    img = (grid.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
    Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(path)


# ---- the bundle -----------------------------------------------------------------------------------------------------
def save_unless_same(sd: dict[str, Tensor], path: Path, meta: Optional[dict]) -> bool:
    """save_file, unless `path` already holds the same tensors and metadata: safetensors writes metadata in no
    fixed order, so a rebuilt bundle would otherwise change 20 MB of committed bytes for nothing. True if written."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if path.is_file():
        with safe_open(str(path), "pt") as f:
            same = (f.metadata() or {}) == (meta or {}) and set(f.keys()) == set(sd) and all(
                torch.equal(f.get_tensor(k), v) for k, v in sd.items())
        if same:
            return False
    save_file(sd, str(path), metadata=meta)
    return True


def pack_reward(src: Path, dst: Path) -> Path:
    """The shapes reward model (VideoReward layout) -> `dst` in the same layout, with its two [151660, 128] tables
    (token embedding and tied lm_head) row-packed (`stream_r1.weights_io.pack_rows`) to the ~300 ids its tokenizer
    can emit: 2.6 MB instead of 80 MB, and every loader reads it as before (the other rows read as zeros, and no
    input can reach them). Returns the new checkpoint's weights file."""
    from safetensors.torch import save_file

    from stream_r1.reward.checkpoint import resolve_reward_files
    from stream_r1.reward.model import load_tokenizer
    from stream_r1.reward.prompt import PAD_TOKEN_ID
    from stream_r1.weights_io import pack_rows, read_tensors

    files = resolve_reward_files(src)
    raw = read_tensors(files.weights)
    ids = set(load_tokenizer(files.tokenizer).get_vocab().values()) | {PAD_TOKEN_ID}
    emb = next(v for k, v in raw.items() if k.endswith("embed_tokens.weight"))
    tables = {k: ids for k, v in raw.items()
              if k.endswith(("embed_tokens.weight", "lm_head.weight")) and v.shape == emb.shape}
    sd, meta = pack_rows(raw, tables)
    if dst.exists():
        shutil.rmtree(dst)
    ckpt = dst / files.weights.parent.name                                # checkpoint-<step>/
    ckpt.mkdir(parents=True)
    save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(ckpt / "model.safetensors"), metadata=meta)
    shutil.copytree(files.tokenizer, ckpt / "tokenizer")
    shutil.copyfile(files.model_config, dst / "model_config.json")
    return ckpt / "model.safetensors"


def assemble(runs: Path, out: Path, student: Path, extra: dict, with_reward: bool = True) -> Path:
    """Copy the chosen student (as fp16), VAE and text encoder, and the reward model row-packed (`pack_reward`),
    into `out` with bundle.json."""
    from safetensors import safe_open

    out.mkdir(parents=True, exist_ok=True)
    with safe_open(str(student), "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k).half() for k in f.keys()}
    meta.pop("training_config", None)
    save_unless_same(sd, out / "student.safetensors", meta)
    with safe_open(str(runs / "vae" / "vae.safetensors"), "pt") as f:
        save_unless_same({k: f.get_tensor(k).half() for k in f.keys()}, out / "vae.safetensors", f.metadata())
    shutil.copyfile(runs / "teacher" / "umt5.safetensors", out / "umt5.safetensors")
    reward = runs / "reward" / "reward"
    if with_reward and reward.is_dir():
        pack_reward(reward, out / "reward")
    (out / "bundle.json").write_text(json.dumps(extra, indent=1))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.shapes.bundle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/shapes")
    p.add_argument("--out", default="stream_r1/shapes/bundle")
    p.add_argument("--student", choices=["stream_r1", "dmd", "ode_init"], default="stream_r1")
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--long-count", type=int, default=12)
    p.add_argument("--long-seconds", type=float, default=20.0)
    p.add_argument("--teacher-steps", type=int, default=32)
    p.add_argument("--teacher-guidance", type=float, default=2.0)
    p.add_argument("--models", default="teacher,ode_init,dmd,stream_r1", help="models to evaluate")
    p.add_argument("--t1", default="", metavar="BxC", help="also evaluate the bundle's student searched with "
                   "Stream-T1, B beams x C children under the reward model (e.g. 2x2; needs runs/shapes/reward)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation; the bundle records <runs>/eval.json "
                   "when one exists (e.g. an evaluation run on a GPU)")
    p.add_argument("--no-bundle", action="store_true")
    p.add_argument("--no-reward", action="store_true", help="leave the reward model out of the bundle (saliency "
                   "and test-time scaling then need --reward-model)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [bundle] %(message)s", datefmt="%H:%M:%S")
    runs = Path(args.runs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tcfg, enc, vae = run_parts(runs, device)
    world = tcfg.world
    size, frames = (world.height, world.width), world.frames
    long_frames = 1 + 4 * int(round(args.long_seconds * world.fps / 4))
    students = {n: runs / n / "exports" / "student_latest.safetensors" for n in ("ode_init", "dmd", "stream_r1")}
    evaluation, sources = None, None
    if args.no_eval and (runs / "eval.json").is_file():        # a saved evaluation (e.g. from the GPU) is recorded
        saved = json.loads((runs / "eval.json").read_text())
        evaluation, sources = saved["table"], saved.get("sources")
    if not args.no_eval:
        reward = None
        if (runs / "reward" / "reward").is_dir():
            from stream_r1.reward.model import load_video_reward
            reward = load_video_reward(runs / "reward" / "reward", device=device, dtype=torch.float32)
        wanted = args.models.split(",")
        samplers = {"teacher": teacher_sampler(str(runs / "teacher" / "teacher.safetensors"), enc, vae, size, device,
                                               args.teacher_steps, args.teacher_guidance)} if "teacher" in wanted else {}
        for n, path in students.items():
            if path.is_file() and n in wanted:
                samplers[n] = student_sampler(str(path), enc, vae, size, device)
        if args.t1:
            if reward is None:
                raise SystemExit(f"error: --t1 needs the reward model at {runs / 'reward' / 'reward'}")
            from stream_r1.tts import T1Config
            b, c = (int(x) for x in args.t1.lower().split("x"))
            samplers[f"{args.student}+t1"] = student_sampler(str(students[args.student]), enc, vae, size, device,
                                                              search=(reward, T1Config(beams=b, children=c)))
        prompts = eval_prompts(args.prompts)
        table, keep = evaluate(samplers, prompts, frames, long_frames, args.long_count, reward)
        md = markdown_table(table, len(prompts), frames, long_frames, args.long_count)
        (runs / "eval.json").write_text(json.dumps({"table": table, "prompts": prompts, "device": str(
            torch.cuda.get_device_name() if device.type == "cuda" else "cpu"), "date": time.strftime("%Y-%m-%d")},
            indent=1))
        (runs / "eval.md").write_text(md + "\n")
        strip_image(keep, runs / "eval_strip.png", prompts)
        print(md)
        evaluation = table
    if not args.no_bundle:
        extra = {"height": size[0], "width": size[1], "fps": world.fps, "student": args.student,
                 "default_prompt": "a red circle bouncing on a dark blue background",
                 "recipes": [f"python -m training.run --recipe {r}" for r in RECIPE_ORDER]
                 + ["python -m training.shapes.bundle"],
                 "seeds": {"clip_seed": world.clip_seed, "eval_seed": EVAL_SEED,
                           "schedule_seed": tcfg.schedule.seed},
                 "evaluation": evaluation and means_only(evaluation)}
        if sources:
            extra["evaluation_sources"] = sources         # device and prompt count per row, when rows were merged
        assemble(runs, Path(args.out), students[args.student], extra, with_reward=not args.no_reward)
        log.info("bundle written to %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
