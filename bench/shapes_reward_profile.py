"""Time one training step of the shapes reward model by phase: data, preprocessing, forward, backward, optimizer.

Mirrors `training.shapes.reward.train_reward`'s step with synchronising timers (CUDA is synchronised at every
phase boundary, so the phases add up to the step). Works on the current trainer and, for before/after tables,
on older ones (it falls back to the dense AdamW of the first version when `reward_optimizer` is missing):

    python bench/shapes_reward_profile.py --size 48 --frames 45 --batch 8 --steps 6 [--device cuda] [--profile]

Phases: `data` = bank indexing + degrade_quality + degrade_motion + mismatched_prompt (make_pairs);
`preprocess` = stream_r1/reward/preprocess.py (resize, normalise, patchify); `tokens` = prompt encoding;
`forward` = ViT + LLM + head + loss; `backward`; `optimizer` = zero_grad + clip + AdamW step (+ the trainer's
per-step bookkeeping).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--frames", type=int, default=45)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after --warmup untimed ones)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "shapes_reward_profile"))
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators")
    ap.add_argument("--json", default="", help="write the per-phase medians here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from training.config import TrainConfig
    from training.data import derive_seed
    from training.shapes import reward as R
    from training.shapes.world import ClipBank, batch_indices

    cfg = TrainConfig(method="reward", output_dir=str(Path(args.cache) / "run"))
    w = cfg.world
    w.clips, w.frames, w.height, w.width, w.cache_dir = args.clips, args.frames, args.size, args.size, args.cache
    cfg.schedule.global_batch = args.batch
    cfg.optim.lr, cfg.optim.betas, cfg.optim.max_grad_norm = 4e-4, (0.9, 0.999), 1.0
    dev = torch.device(args.device)
    threads = torch.get_num_threads()
    bank = ClipBank.build(w, progress=False)
    torch.set_num_threads(threads)
    n_train = len(bank) - R.heldout_count(len(bank))
    model = R.new_reward_model(0).to(dev)
    new = hasattr(R, "reward_optimizer")
    if new:
        opt, params, _ = R.reward_optimizer(model, cfg.optim)
    else:                                                             # the first trainer: dense AdamW on everything
        decay = [p for nm, p in model.named_parameters() if p.dim() >= 2 and "embed_tokens" not in nm]
        no_decay = [p for nm, p in model.named_parameters() if not (p.dim() >= 2 and "embed_tokens" not in nm)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=4e-4, betas=(0.9, 0.999))
        params = list(model.parameters())
    n_opt = sum(p.numel() for p in params)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    autocast = getattr(R, "_autocast")

    phases = ("data", "preprocess", "tokens", "forward", "backward", "optimizer")
    times: dict[str, list[float]] = {k: [] for k in phases}
    seq_len = 0

    def step(i: int, record: bool) -> None:
        nonlocal seq_len
        t = [time.perf_counter()]

        def mark():
            sync()
            t.append(time.perf_counter())

        idx = batch_indices(i, args.batch, n_train, 0, "reward")
        g = torch.Generator().manual_seed(derive_seed(0, "reward-neg", i))
        frames, prompts = R.make_pairs(bank.batch(idx, dev), [bank.prompts[j] for j in idx], g)
        mark()
        video = model.preprocess(frames)
        mark()
        text = model.encode_prompts(prompts, video)
        seq_len = text.input_ids.shape[1]
        mark()
        with autocast(dev):
            scores = R.split_variants(model.forward_patches(video.pixel_values, video.grid_thw, text).float())
        bt, acc, shift = R.pair_losses(scores)
        loss = bt.sum() + 0.1 * shift
        mark()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mark()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        float(loss.detach())
        acc.detach().cpu()
        mark()
        if record:
            for k, a, b in zip(phases, t[:-1], t[1:]):
                times[k].append(b - a)

    for i in range(args.warmup):
        step(i, False)
    prof = contextlib.nullcontext()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        prof = profile(activities=acts)
    with prof as p:
        for i in range(args.warmup, args.warmup + args.steps):
            step(i, True)
    med = {k: statistics.median(v) for k, v in times.items()}
    total = sum(med.values())
    print(f"{'new' if new else 'old'} trainer; {args.device}, {torch.get_num_threads()} threads; batch {args.batch} "
          f"clips x 4 variants, {args.frames} frames of {args.size}^2, LLM sequence {seq_len}; optimizer over "
          f"{n_opt / 1e6:.2f}M parameters; median of {args.steps} steps")
    for k in phases:
        print(f"  {k:<10} {med[k] * 1e3:9.1f} ms  {100 * med[k] / total:5.1f} %")
    print(f"  {'step':<10} {total * 1e3:9.1f} ms")
    if args.profile:
        key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
        ev = p.key_averages()
        print(ev.table(sort_by=key, row_limit=25))
        n_aten = sum(e.count for e in ev if e.key.startswith("aten::"))
        n_sdpa = sum(e.count for e in ev if e.key == "aten::scaled_dot_product_attention")
        line = f"per step: {n_aten / args.steps:.0f} aten op calls (nested included), {n_sdpa / args.steps:.0f} SDPA calls"
        if dev.type == "cuda":
            kernels = sum(e.count for e in ev if e.device_type == torch.autograd.DeviceType.CUDA)
            line += f", {kernels / args.steps:.0f} CUDA kernels"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"ms": {k: v * 1e3 for k, v in med.items()}, "seq": seq_len,
                                               "optimizer_params": n_opt}, indent=1))


if __name__ == "__main__":
    main()
