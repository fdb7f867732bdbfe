"""The shapes world's 3-axis reward model (method 'reward'): a small VideoReward trained on rendered clips.

Positives are bank clips with their own prompts. Every positive gets one negative per axis:

    VQ: `degrade_quality(clip)` (blur, noise, blockiness, washed-out colours), same prompt;
    MQ: `degrade_motion(clip)` (frame shuffles, stutter, teleport, flicker; clean frames), same prompt;
    TA: the same clip with `mismatched_prompt(prompt)` (one attribute changed).

The scorer is the real `VideoRewardModel` (transformers' Qwen2-VL at a small width, the rubric prompt with the
three reward tokens, a Linear(hidden, 1) head) and every weight is trained with a Bradley-Terry loss on the axis
each negative targets:

    L = sum_a mean softplus(-(s_a(pos) - s_a(neg_a)))
        + margin_weight * mean_{a in VQ, MQ} (s_a(pos) - s_a(TA twin))^2      (same video: VQ/MQ must not move)

(The reward tokens of VQ and MQ precede the prompt in the rubric, so in the causal LLM those two scores cannot see
the prompt at all and the second term is ~0 by construction; it is kept as a guard for other templates.)

At the end the raw scores of a held-out set (the last clips of the bank, each with its three negatives) give
the normalisation constants (mean/std per axis over all four variants) and the pairwise accuracies. The model
is written in the released VideoReward layout, loadable by `load_video_reward` and `training.models.build_reward`:

    <output_dir>/reward/model_config.json                 normalisation, arch, frame pixel bounds, calibration
    <output_dir>/reward/checkpoint-<steps>/model.pth      PEFT/4.45 keys, LoRA pairs with B = 0 (merge = identity)
    <output_dir>/reward/checkpoint-<steps>/tokenizer/     word-level tokenizer: rubric + shapes grammar words
    <output_dir>/reward/eval.json                         held-out pairwise accuracy per axis
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stream_r1.reward.checkpoint import AXES, CALIBRATION_KEY
from stream_r1.reward.model import VideoRewardModel, build_qwen2vl
from stream_r1.reward.preprocess import VideoInputConfig
from stream_r1.reward.qwen2vl_config import Qwen2VLArch
from stream_r1.reward.synthetic import build_tiny_tokenizer, model_config_dict, write_reward_checkpoint
from stream_r1.shapes.prompts import BACKGROUNDS, COLORS, MOTIONS, SHAPES

from ..config import TrainConfig
from ..data import derive_seed
from .world import ClipBank, batch_indices, cosine_lr, degrade_motion, degrade_quality, mismatched_prompt

log = logging.getLogger("training")

REWARD_ARCH = Qwen2VLArch(
    vision_depth=2, vision_embed_dim=64, vision_num_heads=4, vision_mlp_ratio=2,
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    mrope_section=(4, 6, 6), max_position_embeddings=8192)
"""Qwen2-VL at shapes-world size: ViT 2 x 64, LLM 2 x 128 (head_dim 32), real token ids and patch geometry.
0.54M parameters besides the token embedding; the embedding keeps the real vocabulary (151,660 rows, so the
reward and video tokens sit at their released ids) and dominates the file (151,660 x 128 fp32 = 78 MB)."""
REWARD_VIDEO = VideoInputConfig(frames="all", odd_frames="drop", min_pixels=28 * 28, max_pixels=112 * 112)
"""Every frame (odd counts drop the last, as Stream-R1), resized only to the nearest multiple of 28 (96 -> 84,
48 -> 56): the ViT sees the clips at about their native size. Saved as data_config.{min,max}_frame_pixels."""
GRAMMAR_TEXT = (*COLORS, *SHAPES, *MOTIONS, *BACKGROUNDS, "a", "and", "on", "background", "gradient")
"""Every word of the shapes prompts (the tokenizer knows them all; nothing maps to [UNK])."""
LORA_R, LORA_ALPHA = 4, 8
HELDOUT_MAX = 256


def reward_tokenizer():
    return build_tiny_tokenizer(extra_text=GRAMMAR_TEXT)


def new_reward_model(seed: int, arch: Qwen2VLArch = REWARD_ARCH, video: VideoInputConfig = REWARD_VIDEO,
                     head_std: float = 0.02) -> VideoRewardModel:
    """Seeded random VideoRewardModel (fp32, trainable, identity normalisation)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        qwen = build_qwen2vl(arch)
        head = nn.Linear(arch.hidden_size, 1, bias=False)
        nn.init.normal_(head.weight, std=head_std)
    model = VideoRewardModel(qwen, head, reward_tokenizer(), arch, (0.0,) * 3, (1.0,) * 3, video)
    return model.requires_grad_(True)


# ---- data ---------------------------------------------------------------------------------------------------------
def heldout_count(n: int) -> int:
    """Clips at the end of the bank kept out of training: n/8, at least 2, at most 256."""
    k = min(HELDOUT_MAX, max(2, n // 8))
    if n - k < 2:
        raise ValueError(f"world.clips={n} is too small for the reward model: it holds out {k} clips for the "
                         f"normalisation and needs at least 2 to train on; set world.clips >= {k + 2}")
    return k


def make_pairs(clips: Tensor, prompts: Sequence[str], g: torch.Generator) -> tuple[Tensor, list[str]]:
    """clips [B, T, 3, H, W] in [0, 1] + B prompts -> the four variants stacked, [4B, T, 3, H, W] + 4B prompts.

    Rows: [0, B) positives, [B, 2B) VQ negatives, [2B, 3B) MQ negatives, [3B, 4B) TA negatives (the positive
    clips with a mismatched prompt). Deterministic given the generator's state.
    """
    vq = degrade_quality(clips, g)
    mq = degrade_motion(clips, g)
    wrong = [mismatched_prompt(p, g) for p in prompts]
    frames = torch.cat([clips, vq, mq, clips], dim=0)                       # [4B, T, 3, H, W]
    return frames, list(prompts) * 3 + wrong


def split_variants(scores: Tensor) -> Tensor:
    """[4B, 3] scores in `make_pairs` row order -> [4 (pos, VQ-, MQ-, TA-), B, 3 (axis)]."""
    return scores.view(4, -1, scores.shape[-1])


def pair_diffs(s: Tensor) -> Tensor:
    """s [4, B, 3] -> [B, 3]: axis a's positive minus the negative made for it, s[0, :, a] - s[1 + a, :, a]."""
    neg = torch.stack([s[1 + a, :, a] for a in range(3)], dim=-1)           # [B, 3]: VQ-, MQ-, TA- on their axes
    return s[0] - neg


def pairwise_accuracy(diff: Tensor) -> tuple[Tensor, Tensor]:
    """diff [B, 3] -> (accuracy per axis [3], tie rate per axis [3]); a tie counts half. Scores from a bf16 model
    tie whenever the two inputs move the score by less than bf16's resolution: the TA pairs (one clip, two prompts)
    of the 2026-11-22 GPU run did so often enough that counting ties as errors reported 0.36, below chance."""
    ties = (diff == 0).float()
    return ((diff > 0).float() + 0.5 * ties).mean(0), ties.mean(0)


def pair_losses(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """s [4, B, 3] -> (Bradley-Terry loss per axis [3], pairwise accuracy per axis [3], untargeted-shift term []).

    Axis a compares the positive with the negative made for it: s[0, :, a] vs s[1 + a, :, a].
    """
    diff = pair_diffs(s)                                                    # [B, 3]
    bt = F.softplus(-diff).mean(0)                                          # [3]
    acc, _ = pairwise_accuracy(diff)                                        # [3]
    return bt, acc, untargeted_shift(s)


def untargeted_shift(s: Tensor) -> Tensor:
    """s [4, B, 3] -> []: mean square change of VQ and MQ between a positive and its prompt-mismatch twin."""
    return (s[0, :, :2] - s[3, :, :2]).pow(2).mean()


@torch.no_grad()
def heldout_scores(model: VideoRewardModel, bank: ClipBank, cfg: TrainConfig, device: torch.device) -> Tensor:
    """Raw scores of the held-out set: [4 (pos, VQ-, MQ-, TA-), K, 3], in fp32 (the normalisation constants and
    the accuracies should not carry bf16 rounding). Deterministic from cfg.schedule.seed, the bank and
    `cfg.schedule.global_batch` (the chunking of the negatives' draws)."""
    n, k = len(bank), heldout_count(len(bank))
    idx = list(range(n - k, n))
    chunk = max(1, cfg.schedule.global_batch)
    out = []
    for c, start in enumerate(range(0, k, chunk)):
        part = idx[start:start + chunk]
        g = torch.Generator().manual_seed(derive_seed(cfg.schedule.seed, "reward-heldout", c))
        frames, prompts = make_pairs(bank.batch(part, device), [bank.prompts[i] for i in part], g)
        out.append(split_variants(model.score(frames, prompts).float()))
    return torch.cat(out, dim=1)                                            # [4, K, 3]


def normalisation(scores: Tensor) -> tuple[list[float], list[float]]:
    """[4, K, 3] held-out raw scores -> per-axis (mean, std) over all 4K rows (std unbiased)."""
    flat = scores.reshape(-1, scores.shape[-1])                             # [(4 K), 3]
    return flat.mean(0).tolist(), flat.std(0).clamp_min(1e-6).tolist()


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


class TokenRows(nn.Module):
    """Trainable copies of the token-embedding rows the tokenizer can emit; the 151,660-row table stays frozen.

    The released layout forces the real vocabulary (the reward tokens sit at ids 151657-151659) but the shapes
    tokenizer emits ~300 ids. Training the whole table computed a dense [151660, 128] gradient, clipped it and
    ran AdamW over 19.4 M entries that never change (no gradient, no weight decay): 85% of the optimizer's
    work. Here a forward hook on `embed_tokens` replaces the looked-up rows of those ids by `rows`, so training
    is the same computation (same gradients, same clipping norm, same Adam updates); `fold()` writes the rows
    back into the table (and the tied lm_head), which is then saved in the released layout.
    """

    def __init__(self, embed: nn.Embedding, ids: Sequence[int]):
        super().__init__()
        ids_t = torch.tensor(sorted(set(int(i) for i in ids)), dtype=torch.long, device=embed.weight.device)
        slot = torch.full((embed.num_embeddings,), -1, dtype=torch.long, device=embed.weight.device)
        slot[ids_t] = torch.arange(len(ids_t), device=slot.device)
        self.register_buffer("ids", ids_t, persistent=False)
        self.register_buffer("slot", slot, persistent=False)
        self.rows = nn.Parameter(embed.weight.detach()[ids_t].clone())   # [n_ids, D]
        self.embed = [embed]                                              # not a submodule: no double registration
        embed.weight.requires_grad_(False)
        self._hook = embed.register_forward_hook(self._replace)

    def _replace(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        s = self.slot[args[0]]                                            # [B, L], -1 outside the table
        rows = F.embedding(s.clamp_min(0), self.rows).to(out.dtype)
        return torch.where((s >= 0).unsqueeze(-1), rows, out)

    @torch.no_grad()
    def fold(self) -> None:
        """Write the trained rows into the embedding and remove the hook (idempotent)."""
        if self._hook is not None:
            self.embed[0].weight[self.ids] = self.rows.to(self.embed[0].weight.dtype)
            self._hook.remove()
            self._hook = None


def trainable_token_rows(model: VideoRewardModel) -> TokenRows:
    """`TokenRows` over every id of the model's tokenizer (its whole vocabulary, special tokens included)."""
    tok = model.prompts.tokenizer
    ids = set(tok.get_vocab().values()) | {model.prompts.pad_id}
    return TokenRows(model.qwen.get_input_embeddings(), ids)


def reward_optimizer(model: VideoRewardModel, o) -> tuple[torch.optim.Optimizer, list[nn.Parameter], TokenRows]:
    """Freeze the token embedding behind a `TokenRows` and build AdamW over the trainable parameters: weight decay
    on matrices, none on vectors and token rows (as the first trainer: the embedding had none). Returns the
    optimizer, the parameters it updates (for clipping) and the rows (`fold()` them before saving)."""
    rows = trainable_token_rows(model)
    named = [(nm, p) for nm, p in model.named_parameters() if p.requires_grad]
    decay = [p for nm, p in named if p.dim() >= 2]
    no_decay = [p for nm, p in named if p.dim() < 2] + [rows.rows]
    fused = {"fused": True} if rows.rows.is_cuda else {}                    # one kernel for all ~60 tensors
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=o.betas, eps=o.eps, **fused)
    return opt, decay + no_decay, rows


# ---- training -----------------------------------------------------------------------------------------------------
def train_reward(cfg: TrainConfig, device: torch.device, *, arch: Qwen2VLArch = REWARD_ARCH) -> Path:
    """Train the 3-axis reward model on the shapes bank; returns `Path(cfg.output_dir) / "reward"`."""
    s, o, pre = cfg.schedule, cfg.optim, cfg.pretrain
    if s.steps < 1:
        raise ValueError(f"schedule.steps={s.steps}: the reward model needs at least 1 step")
    threads = torch.get_num_threads()
    bank = ClipBank.build(cfg.world, progress=cfg.log.progress)
    torch.set_num_threads(threads)                                          # in-process rendering sets 1
    n_eval = heldout_count(len(bank))
    n_train = len(bank) - n_eval
    b = s.global_batch
    if device.type == "cuda":
        bank.videos = bank.videos.to(device)                                # 2048 clips of 45 x 96^2: 2.5 GB uint8
    model = new_reward_model(derive_seed(s.seed, "reward-init") % (1 << 31), arch).to(device)
    # the model stays in eval mode: Qwen2-VL has no dropout, so training mode would change nothing
    n_params = sum(p.numel() for p in model.parameters())
    opt, params, rows = reward_optimizer(model, o)                          # the token embedding itself is frozen
    log.info("reward model: %.2fM parameters (%.2fM outside the token embedding), %.2fM trained (%d token rows), "
             "%d train / %d held-out clips, batch %d clips x 4 variants, %d steps on %s", n_params / 1e6,
             (n_params - model.qwen.model.language_model.embed_tokens.weight.numel()) / 1e6,
             sum(p.numel() for p in params) / 1e6, len(rows.ids), n_train, n_eval, b, s.steps, device)
    bar = None
    if cfg.log.progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=s.steps, desc="reward", unit="step", leave=False)
        except ImportError:
            pass
    # running sums stay on the device: no host sync inside a step, so the next batch's data work (indexing,
    # prompt edits, tokens) overlaps the GPU's backward; loss, accuracy and finiteness are read every log interval
    run_acc, run_loss, seen, t0 = torch.zeros(3, device=device), torch.zeros((), device=device), 0, time.perf_counter()
    from .pretrain import stop_requested
    for step in range(s.steps):
        if stop_requested():
            log.warning("SIGTERM: stopping the reward model after %d steps and writing it", step)
            break
        lr = cosine_lr(step, s.steps, o.lr, pre.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = batch_indices(step, b, n_train, s.seed, "reward")
        g = torch.Generator().manual_seed(derive_seed(s.seed, "reward-neg", step))
        frames, prompts = make_pairs(bank.batch(idx, device), [bank.prompts[i] for i in idx], g)
        with _autocast(device):
            scores = split_variants(model.score(frames, prompts).float())   # [4, B, 3]
        bt, acc, shift = pair_losses(scores)
        loss = bt.sum() + pre.reward_margin_weight * shift
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm if o.max_grad_norm > 0 else math.inf)
        opt.step()
        run_acc += acc.detach()
        run_loss += loss.detach()
        seen += 1
        if bar is not None:
            bar.update(1)
        if (step + 1) % max(1, cfg.log.interval) == 0 or step + 1 == s.steps or device.type == "cpu":
            mean_loss = run_loss.item() / seen
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"reward loss is {mean_loss} in steps {step + 2 - seen}..{step + 1}; lower "
                                         f"optim.lr (now {o.lr}) or set optim.max_grad_norm > 0")
        if (step + 1) % max(1, cfg.log.interval) == 0 or step + 1 == s.steps:
            a = (run_acc / seen).tolist()
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.3f}")
            log.info("reward step %d/%d  loss %.4f  acc VQ %.2f MQ %.2f TA %.2f  shift %.2e  |g| %.2f  lr %.2e  "
                     "%.2fs/step", step + 1, s.steps, mean_loss, *a, shift.item(), gnorm.item(), lr,
                     (time.perf_counter() - t0) / seen)
            run_acc, run_loss, seen, t0 = (torch.zeros(3, device=device), torch.zeros((), device=device), 0,
                                           time.perf_counter())
    if bar is not None:
        bar.close()

    rows.fold()                                                             # the trained rows into the table
    held = heldout_scores(model, bank, cfg, device).cpu()                   # [4, K, 3]
    mean, std = normalisation(held)
    acc, ties = pairwise_accuracy(pair_diffs(held))
    shift = untargeted_shift(held)
    report = {
        "steps": s.steps, "heldout_clips": n_eval, "train_clips": n_train,
        "accuracy": dict(zip(AXES, acc.tolist())), "ties": dict(zip(AXES, ties.tolist())),
        "untargeted_shift_rms": math.sqrt(float(shift)),
        "norm": {a: {"mean": m, "std": sd} for a, m, sd in zip(AXES, mean, std)},
    }
    log.info("reward held-out (%d clips): accuracy VQ %.3f MQ %.3f TA %.3f; norm mean %s std %s", n_eval,
             *acc.tolist(), [round(v, 3) for v in mean], [round(v, 3) for v in std])
    return _write(cfg, model, arch, mean, std, report)


def _write(cfg: TrainConfig, model: VideoRewardModel, arch: Qwen2VLArch, mean: list[float], std: list[float],
           report: dict) -> Path:
    """Write the released layout into a temporary folder, then rename it to `<output_dir>/reward`."""
    out = Path(cfg.output_dir) / "reward"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".reward.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    sd = {k: v.detach().float().cpu() for k, v in model.qwen.state_dict().items()}  # tied lm_head: one storage
    calibration = {"source": "shapes-world held-out clips (last clips of the bank) with their VQ/MQ/TA negatives",
                   "heldout_clips": report["heldout_clips"], "samples_per_axis": 4 * report["heldout_clips"],
                   "clip_seed": cfg.world.clip_seed, "size": [cfg.world.height, cfg.world.width],
                   "frames": cfg.world.frames, "seed": cfg.schedule.seed}
    config = model_config_dict(arch, LORA_R, LORA_ALPHA, norm={a: (m, sd_) for a, m, sd_ in zip(AXES, mean, std)},
                               max_frame_pixels=model.video.max_pixels, min_frame_pixels=model.video.min_pixels,
                               model_name="stream_r1/shapes-reward", extra={CALIBRATION_KEY: calibration})
    write_reward_checkpoint(tmp, sd, model.rm_head.weight.detach().float().cpu(), arch, model.prompts.tokenizer,
                            config, step=cfg.schedule.steps, lora_r=LORA_R, seed=cfg.schedule.seed, zero_b=True)
    (tmp / "eval.json").write_text(json.dumps(report, indent=2))
    old = out.parent / f".reward.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    log.info("reward model written to %s", out)
    return out
