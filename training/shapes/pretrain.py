"""Shapes-world pretraining: the VAE (method `vae`), the text encoder with the bidirectional teacher (method
`teacher`) and the reward model (method `reward`, in `reward.py`). Single process (these models are tiny);
the causal student's ODE init and the distillations reuse the distributed `Trainer`.

Outputs (under `output_dir`): `vae.safetensors` (Wan2.1 VAE key names), `teacher.safetensors` (a DiT export:
Wan key names, config in the metadata), `umt5.safetensors` (ComfyUI-style: HF names + `spiece_model`),
`spiece.model`, `metrics.json` and `config.json`.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..config import TrainConfig
from ..data import derive_seed
from .world import ClipBank, batch_indices, cosine_lr

log = logging.getLogger("training")


_STOP = {"requested": False}


def stop_requested() -> bool:
    """True once SIGTERM arrived: the loops leave after the current step and write what they have."""
    return _STOP["requested"]


def device_of(cfg: TrainConfig) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Loop:
    """Steps, learning-rate schedule, clipping, logging (line + tqdm + TensorBoard), an optional EMA."""

    def __init__(self, cfg: TrainConfig, params: list[dict], ema_model: nn.Module | None = None):
        o = cfg.optim
        self.cfg = cfg
        self.groups = params
        self.opt = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        self.base = [g["lr"] for g in self.opt.param_groups]
        self.ema = None
        if ema_model is not None:
            self.ema = {n: p.detach().float().clone() for n, p in ema_model.named_parameters()}
            self.ema_model = ema_model
        self.bar = None
        if cfg.log.progress:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=cfg.schedule.steps, desc=cfg.name, unit="step", leave=False)
            except ImportError:
                pass
        self.tb = None
        if cfg.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=str(Path(cfg.output_dir) / "tensorboard"))
            except ImportError:
                pass
        self.history: list[dict[str, float]] = []
        self.t0 = time.perf_counter()

    def step(self, k: int, loss: Tensor, metrics: dict[str, float]) -> None:
        s = self.cfg.schedule
        for g, base in zip(self.opt.param_groups, self.base):
            g["lr"] = cosine_lr(k, s.steps, base, self.cfg.pretrain.warmup_steps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.opt.param_groups for p in g["params"]]
        gn = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_grad_norm or float("inf"))
        self.opt.step()
        if self.ema is not None:
            d = s.ema_decay if k >= s.ema_start_step else 0.0
            with torch.no_grad():
                for n, p in self.ema_model.named_parameters():
                    self.ema[n].lerp_(p.detach().float(), 1.0 - d)
        m = {"step": k, "loss": float(loss.detach()), "grad_norm": float(gn), **metrics}
        self.history.append(m)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{m['loss']:.4g}")
        if self.tb is not None:
            for key, v in m.items():
                if key != "step":
                    self.tb.add_scalar(f"{self.cfg.name}/{key}", v, k)
        if self.cfg.log.interval and (k + 1) % self.cfg.log.interval == 0:
            rest = " | ".join(f"{key} {v:.4g}" for key, v in m.items() if key != "step")
            log.info("%s step %d/%d | %s | %.1f s", self.cfg.name, k + 1, s.steps, rest, time.perf_counter() - self.t0)

    def ema_state(self) -> dict[str, Tensor]:
        return {n: t.cpu() for n, t in self.ema.items()}

    def close(self, out: Path, extra: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        tail = self.history[-min(50, len(self.history)):] or [{}]
        summary = {k: sum(h[k] for h in tail) / len(tail) for k in tail[0] if k != "step"}
        (out / "metrics.json").write_text(json.dumps({"final_mean_last_50": summary, "seconds":
                                                      time.perf_counter() - self.t0, **(extra or {}),
                                                      "history": self.history[:: max(1, len(self.history) // 200)]},
                                                     indent=1))


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


# ---- VAE ----------------------------------------------------------------------------------------------------------
def foreground_crops(x: Tensor, c: int, g: torch.Generator) -> Tensor:
    """[B, T, 3, H, W] -> [B, T, 3, c, c]: per clip a crop (on the 8-pixel latent grid) around a random foreground
    pixel of its first frame (where a shape is), or anywhere when the frame is plain. Float in [0, 1] or the
    bank's uint8 (then only the crops are converted and moved; the crops keep the input's dtype)."""
    b, _, _, h, w = x.shape
    first = x[:, 0].float() / (255.0 if x.dtype == torch.uint8 else 1.0)                  # [B, 3, H, W] in [0, 1]
    bg = first.flatten(2).median(dim=2).values                                             # [B, 3]
    fg = (first - bg[:, :, None, None]).abs().amax(1) > 0.1                                # [B, H, W]
    out = []
    for i in range(b):
        ys, xs = torch.nonzero(fg[i], as_tuple=True)
        if len(ys):
            j = int(torch.randint(0, len(ys), (1,), generator=g))
            cy, cx = int(ys[j]), int(xs[j])
            jitter = torch.randint(-c // 4, c // 4 + 1, (2,), generator=g).tolist()
            y0, x0 = cy - c // 2 + jitter[0], cx - c // 2 + jitter[1]
        else:
            y0, x0 = int(torch.randint(0, h - c + 1, (1,), generator=g)), int(torch.randint(0, w - c + 1, (1,), generator=g))
        y0 = min(max(0, y0 // 8 * 8), (h - c) // 8 * 8)
        x0 = min(max(0, x0 // 8 * 8), (w - c) // 8 * 8)
        out.append(x[i, :, :, y0:y0 + c, x0:x0 + c])
    return torch.stack(out)


@torch.no_grad()
def reconstruction_check(vae, bank: ClipBank, device: torch.device, idx: list[int]) -> dict[str, float]:
    """Mean checker scores (colour, shape, motion) of encode -> decode of clips `idx`, with the originals' scores
    beside: a VAE that loses the shapes' colours or outlines fails here long before a teacher could be trained on it
    (the 2026-11-22 VAE kept the colours, 0.79, but turned squares, diamonds and stars into blobs: shape 0.26 against
    0.96 for the originals, bench/SHAPES.md 2026-12-07)."""
    from stream_r1.shapes import check

    got = {k: 0.0 for k in ("color", "shape", "motion", "color_original", "shape_original", "motion_original")}
    for i in idx:
        x = bank.batch([i], device)                                                       # [1, T, 3, H, W]
        r = vae.decode(vae.encode(rearrange(x * 2 - 1, "b t c h w -> b c t h w"))).float()
        r = rearrange((r[0] + 1) / 2, "c t h w -> t c h w").cpu()
        a, b = check(x[0].cpu(), bank.prompts[i]), check(r, bank.prompts[i])
        for key in ("color", "shape", "motion"):
            got[key] += b[f"{key}_score"] / len(idx)
            got[f"{key}_original"] += a[f"{key}_score"] / len(idx)
    return {k: round(v, 3) for k, v in got.items()}


@torch.no_grad()
def inflate_init(vae: nn.Module) -> nn.Module:
    """Start a randomly initialised Wan VAE as a per-frame image autoencoder (in place; returns it).

    Every causal 3x3x3 conv keeps only its current-frame taps (scaled by sqrt(3) to keep the 2-D fan-in variance);
    the temporal up-sampling convs copy their input to both output frames and the temporal down-sampling convs
    pick the newest frame. Temporal mixing is then learned from there, as the real Wan VAE was grown from an image
    VAE. From a plain random init the temporal path does not train: 4 clips of 9 frames overfit to 9.8 dB in 160
    Adam steps (lr 3e-4) against 20.9 dB inflated (CPU, 2026-11-22; bench/SHAPES.md).
    """
    from stream_r1.vae import CausalConv3d, Resample

    for m in vae.modules():
        if isinstance(m, Resample) and hasattr(m, "time_conv"):
            w = m.time_conv.weight                                                        # [C_out, C, 3, 1, 1]
            w.zero_()
            m.time_conv.bias.zero_()
            eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
            for half in w.split(w.shape[1], dim=0):                                       # up: 2 halves, down: 1
                half[:, :, -1, 0, 0] = eye
        elif isinstance(m, CausalConv3d) and m.weight.shape[2] == 3 and m.weight.shape[3] > 1:
            m.weight[:, :, :-1] = 0                                                       # taps t-2, t-1
            m.weight[:, :, -1] *= math.sqrt(3)                                            # tap t
    return vae


@torch.no_grad()
def standardize_latents(vae: nn.Module, clips: Tensor, batch: int = 16) -> dict[str, list[float]]:
    """Make the VAE's normalised latents zero-mean, unit-std per channel on `clips` ([N, T, 3, H, W] in [0, 1]),
    by folding an exact per-channel affine map into its 1x1x1 convs (encoder `conv1` mu rows and decoder `conv2`):
    decode(encode(x)) is unchanged and the file keeps the Wan2.1 layout and its fixed normalisation constants.

    Why: normalised by Wan2.1's constants, this VAE's latents have per-channel std 0.04-0.28 (rms 0.39), so at
    flow-matching noise level sigma the signal-to-noise ratio is ~0.15 (1 - sigma) / sigma and the shapes are gone
    by sigma 0.4: the teacher trained on them drew backgrounds only (bench/SHAPES.md, 2026-11-22).
    Returns the measured per-channel mean and std before the change.

    With M, S the fixed constants and z = (mu - M) / S, the new latent z' = (z - a) / b needs
    mu' = mu / b + M - (M + S a) / b; the decoder then gets mu = b (mu' - M) + M + S a, i.e.
    conv2'(mu') = W diag(b) mu' + W (M + S a - b M) + beta.
    """
    from stream_r1.vae import _latent_stats

    zs = []
    for i in range(0, len(clips), batch):
        x = rearrange(clips[i:i + batch].to(vae.device) * 2 - 1, "b t c h w -> b c t h w")
        zs.append(vae.encode(x).double())                                                # [b, 16, F, h, w]
    z = torch.cat(zs)
    a = z.mean(dim=(0, 2, 3, 4))                                                          # [16]
    b = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-6)                                          # [16]
    m, s = (t.flatten().double() for t in _latent_stats(a.device, torch.float64))       # [16] each
    zd = vae.cfg.z_dim
    w1, b1 = vae.conv1.weight, vae.conv1.bias                                             # [32, 32, 1, 1, 1], [32]
    w1[:zd] = (w1[:zd].double() / b.view(-1, 1, 1, 1, 1)).to(w1.dtype)
    b1[:zd] = (b1[:zd].double() / b + m - (m + s * a) / b).to(b1.dtype)
    w2, b2 = vae.conv2.weight, vae.conv2.bias                                             # [16, 16, 1, 1, 1], [16]
    w2_old = w2.double().flatten(1)                                                       # [16 out, 16 in]
    b2.copy_((b2.double() + w2_old @ (m + s * a - b * m)).to(b2.dtype))
    w2.copy_((w2_old * b.view(1, -1)).view_as(w2).to(w2.dtype))
    return {"mean": [round(float(v), 4) for v in a], "std": [round(float(v), 4) for v in b]}


def outline_band(mask: Tensor, width: int = 2) -> Tensor:
    """mask [..., H, W] in {0, 1} -> 1 on the pixels within `width` px of its outline (dilation minus erosion with a
    (2 width + 1)^2 square), else 0. Per-pixel error is satisfied by a blob (a square, a star and a circle of the same
    area differ on a few outline pixels), so the VAE's loss weights this band extra (`pretrain.vae_edge_weight`)."""
    k = 2 * width + 1
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()                                  # [N, 1, H, W]
    dilated = F.max_pool2d(flat, k, stride=1, padding=width)
    eroded = -F.max_pool2d(-flat, k, stride=1, padding=width)
    return (dilated - eroded).reshape(mask.shape)


def train_vae(cfg: TrainConfig, device: torch.device) -> Path:
    from safetensors.torch import save_file

    from stream_r1.vae import VAEConfig, WanVAE

    out = Path(cfg.output_dir)
    bank = ClipBank.build(cfg.world, progress=cfg.log.progress)
    pre, s = cfg.pretrain, cfg.schedule
    if pre.vae_init:
        from stream_r1.vae import load_vae
        vae = load_vae(pre.vae_init, device=device).requires_grad_(True).train()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.model.seed + 3)
            vae = inflate_init(WanVAE(VAEConfig(dim=pre.vae_dim))).to(device).train()
    loop = Loop(cfg, [{"params": list(vae.parameters()), "lr": cfg.optim.lr}])
    n, t, crop = len(bank), cfg.world.frames, pre.vae_frames
    for k in range(s.steps):
        if stop_requested():
            log.warning("SIGTERM: stopping the VAE after %d steps and writing it", k)
            break
        g = torch.Generator().manual_seed(derive_seed(s.seed, "vae", k))
        idx = batch_indices(k, s.global_batch, n, s.seed, "vae")
        start = torch.randint(0, t - crop + 1, (1,), generator=g).item()
        clip = bank.videos[torch.as_tensor(idx)][:, start:start + crop]                 # [B, T, 3, H, W] uint8
        c = min(pre.vae_crop, cfg.world.height, cfg.world.width)
        x = foreground_crops(clip, c, g).to(device).float() / 255.0                      # [B, T, 3, c, c] in [0, 1]
        bg = x.flatten(3).median(dim=3).values.median(dim=1).values                       # [B, 3] median colour
        fg = ((x - bg[:, None, :, None, None]).abs().amax(2, keepdim=True) > 0.1).float()  # [B, T, 1, c, c]
        w = 1.0 + (pre.vae_fg_weight - 1.0) * fg + pre.vae_edge_weight * outline_band(fg)
        w = rearrange(w, "b t c h w -> b c t h w")
        x = rearrange(x * 2 - 1, "b t c h w -> b c t h w")
        with _autocast(device):
            z = vae.encode(x)                                                             # [B, 16, f, h, w] normalised
            eps = torch.randn(z.shape, generator=g).to(device)
            rec = vae.decode(z + pre.vae_latent_noise * eps, clamp=False)                 # [B, 3, T, H, W] raw
        rec = rec.float()
        err = rec - x
        l1 = (w * err.abs()).mean() / w.mean()
        mse = F.mse_loss(rec, x)
        kl = 0.5 * z.float().pow(2).mean()
        loss = l1 + (w * err.pow(2)).mean() / w.mean() + pre.vae_kl * kl
        psnr = float(10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10)))
        loop.step(k, loss, {"l1": float(l1.detach()), "psnr": psnr, "z_rms": float(z.detach().float().pow(2).mean().sqrt())})
    vae.eval()
    stats = standardize_latents(vae, bank.batch(list(range(min(128, n))), "cpu"))
    log.info("latents standardised per channel (before: mean %s, std %s)", stats["mean"], stats["std"])
    with torch.no_grad():                              # whole clips: the causal caches must hold over long videos
        x = rearrange(bank.batch(list(range(min(8, n))), device) * 2 - 1, "b t c h w -> b c t h w")
        rec = vae.decode(vae.encode(x)).float()
        mse_t = (rec - x).pow(2).mean(dim=(0, 1, 3, 4))                                  # [T]
        full_psnr = [round(float(v), 2) for v in 10 * torch.log10(4.0 / mse_t.clamp_min(1e-10))]
    log.info("VAE whole-clip PSNR per frame: %s", full_psnr)
    recon = reconstruction_check(vae, bank, device, list(range(max(0, n - 16), n)))
    log.info("VAE reconstructions through the analytic checker: %s", recon)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "vae.safetensors"
    sd = {k: v.detach().float().cpu().contiguous() for k, v in vae.state_dict().items()}
    save_file(sd, str(path.with_suffix(".tmp")), metadata={"format": "pt", "stream_r1": "shapes-world Wan2.1 VAE"})
    path.with_suffix(".tmp").replace(path)
    loop.close(out, {"whole_clip_psnr_per_frame": full_psnr, "reconstruction_check": recon,
                     "latent_stats_before_standardising": stats})
    log.info("VAE written to %s", path)
    return path


# ---- teacher + text encoder -----------------------------------------------------------------------------------------
@torch.no_grad()
def encode_bank(bank: ClipBank, vae_path: str, device: torch.device, cache_dir: str, batch: int = 32) -> Tensor:
    """Normalised latents of every clip, [N, F, 16, h, w] float16 (cached next to the bank, keyed by the VAE)."""
    import hashlib

    from stream_r1.vae import load_vae

    key = hashlib.blake2b(Path(vae_path).read_bytes(), digest_size=6).hexdigest()
    cache = Path(cache_dir) / f"latents_{len(bank)}_{tuple(bank.videos.shape[1:])}_{key}.pt".replace(" ", "") \
        if cache_dir else None
    if cache is not None and cache.is_file():
        return torch.load(cache, weights_only=True)
    vae = load_vae(vae_path, device=device)
    outs = []
    for i in range(0, len(bank), batch):
        x = bank.batch(list(range(i, min(i + batch, len(bank)))), device)              # [b, T, 3, H, W]
        z = vae.encode(rearrange(x * 2 - 1, "b t c h w -> b c t h w"))                 # [b, 16, F, h, w]
        outs.append(rearrange(z, "b c f h w -> b f c h w").half().cpu())
    lat = torch.cat(outs)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(lat, cache.with_suffix(".tmp"))
        cache.with_suffix(".tmp").replace(cache)
    return lat


def flow_sigmas(g: torch.Generator, b: int, shift: float) -> Tensor:
    """[b] training sigmas: half uniform, half shifted towards noise (the student's grid lives at high sigma)."""
    u = torch.rand(b, generator=g, dtype=torch.float64)
    shifted = shift * u / (1 + (shift - 1) * u)
    use = torch.rand(b, generator=g) < 0.5
    return torch.where(use, shifted, u).clamp(0.001, 0.999)


@torch.no_grad()
def temporal_coupling(model: nn.Module, lat: Tensor, ctx: Tensor, sigma: float, seed: int = 0) -> dict[str, float]:
    """How much a bidirectional DiT's flow prediction for one latent frame depends on the other frames.

    lat [B, F, 16, h, w] clean latents, ctx [B, L, C]: noise them to `sigma`, replace latent frame F // 2 by fresh
    noise, and compare every frame's prediction with the unperturbed one (RMS change per frame). Returns the change
    of the perturbed frame itself ("own"), of its two neighbours ("neighbours") and their ratio. A teacher that
    keeps shapes in place across frames must read its neighbours; the 2026-11-22 teacher, whose samples put the
    shape somewhere new in every frame, had a ratio of ~0.08 (bench/SHAPES.md).
    """
    g = torch.Generator().manual_seed(seed)
    b, f = lat.shape[:2]
    x = rearrange(lat.float(), "b f c h w -> b c f h w")
    xt = (1 - sigma) * x + sigma * torch.randn(x.shape, generator=g).to(x.device)
    t = torch.full((b, f), sigma * 1000.0, device=x.device)
    k = f // 2
    y = xt.clone()
    y[:, :, k] = torch.randn(y[:, :, k].shape, generator=g).to(x.device)
    change = (model(y, t, ctx).float() - model(xt, t, ctx).float()).pow(2).mean(dim=(0, 1, 3, 4)).sqrt()   # [F]
    own, nb = float(change[k]), float(change[[k - 1, k + 1]].mean())
    return {"sigma": sigma, "own": round(own, 4), "neighbours": round(nb, 4), "ratio": round(nb / max(own, 1e-12), 4)}


def teacher_check(cfg: TrainConfig, teacher_path: Path, text_path: Path, lat: Tensor, prompts: list[str],
                  device: torch.device, samples: int = 8) -> dict:
    """Before anything is distilled from it: the teacher's samples through the analytic checker (the evaluation's
    held-out prompts and sampler: 32 Euler steps, CFG 2) and its temporal coupling on clips of the bank."""
    from stream_r1.loaders import load_student
    from stream_r1.text_encoder import load_text_encoder
    from stream_r1.vae import load_vae

    from .bundle import EVAL_SEED, eval_prompts, score_videos, teacher_sampler

    enc = load_text_encoder(str(text_path), device=device)
    vae = load_vae(cfg.model.vae, device=device)
    w = cfg.world
    sample = teacher_sampler(str(teacher_path), enc, vae, (w.height, w.width), device, steps=32, guidance=2.0)
    ps = eval_prompts(samples)
    scores = score_videos([sample(p, EVAL_SEED + i, w.frames) for i, p in enumerate(ps)], ps)
    model, _ = load_student(str(teacher_path), device=device, dtype=torch.float32, attention="sdpa")
    idx = list(range(min(8, len(lat))))
    ctx = enc.encode([prompts[i] for i in idx]).to(device)
    coupling = [temporal_coupling(model, lat[idx].to(device), ctx, s) for s in (0.3, 0.6, 0.9)]
    return {"samples": samples, "checker": {k: round(v, 3) for k, v in scores.items() if k != "videos"},
            "coupling": coupling}


def train_teacher(cfg: TrainConfig, device: torch.device) -> Path:
    from stream_r1.checkpoint import save_dit_export
    from stream_r1.config import StreamConfig, WanConfig
    from stream_r1.text_encoder import Tokenizer
    from stream_r1.wan.model import WanModel

    from .text import build_tokenizer, encode_tokens, new_text_encoder, save_text_encoder

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pre, s = cfg.pretrain, cfg.schedule
    if cfg.model.vae in ("random", "none"):
        raise ValueError("the teacher trains on VAE latents: set model.vae to the shapes VAE (runs/shapes_vae/vae.safetensors)")
    bank = ClipBank.build(cfg.world, progress=cfg.log.progress)
    lat = encode_bank(bank, cfg.model.vae, device, cfg.world.cache_dir)                # [N, F, 16, h, w] fp16
    log.info("latents %s, rms %.3f", list(lat.shape), float(lat.float().pow(2).mean().sqrt()))
    spiece = build_tokenizer(s.seed)
    (out / "spiece.model").write_bytes(spiece)
    tok = Tokenizer(spiece)
    text = new_text_encoder(pre, tok.sp.get_piece_size(), cfg.model.seed + 5).to(device).train()
    wcfg = WanConfig.preset(cfg.model.teacher_arch)
    if wcfg.text_dim != pre.text_dim:
        raise ValueError(f"model.teacher_arch {cfg.model.teacher_arch!r} takes text_dim {wcfg.text_dim} but "
                         f"pretrain.text_dim is {pre.text_dim}: make them equal")
    teacher = WanModel(wcfg, attention=cfg.model.attention).init_weights(seed=cfg.model.seed + 2).to(device).train()
    loop = Loop(cfg, [{"params": list(teacher.parameters()), "lr": cfg.optim.lr},
                      {"params": list(text.parameters()), "lr": pre.text_lr}], ema_model=teacher)
    n = len(bank)
    probe = list(range(min(4, n)))                                    # fixed clips for the coupling trace
    probe_ids, probe_mask = tok([bank.prompts[i] for i in probe])
    coupling = float("nan")
    for k in range(s.steps):
        if cfg.log.interval and k % cfg.log.interval == 0:             # does the teacher read its other frames yet?
            with torch.no_grad(), _autocast(device):
                pctx = encode_tokens(text, probe_ids.to(device), probe_mask.to(device))
                coupling = temporal_coupling(teacher, lat[probe].to(device), pctx, 0.6, seed=k)["ratio"]
        if stop_requested():
            log.warning("SIGTERM: stopping the teacher after %d steps and writing it", k)
            break
        g = torch.Generator().manual_seed(derive_seed(s.seed, "teacher", k))
        idx = batch_indices(k, s.global_batch, n, s.seed, "teacher")
        x0 = lat[idx].to(device).float()                                                 # [B, F, 16, h, w]
        b, f = x0.shape[:2]
        prompts = [bank.prompts[i] if float(torch.rand(1, generator=g)) >= pre.cfg_dropout else "" for i in idx]
        ids, mask = tok(prompts)                                                          # [B, 512]
        sig = flow_sigmas(g, b, cfg.rollout.timestep_shift).to(device, torch.float32)    # [B]
        noise = torch.randn(x0.shape, generator=g).to(device)
        sv = sig.view(b, 1, 1, 1, 1)
        xt = (1 - sv) * x0 + sv * noise
        t = (sig * 1000).view(b, 1).expand(b, f).contiguous()                            # [B, F]
        with _autocast(device):
            ctx = encode_tokens(text, ids.to(device), mask.to(device))                   # [B, L, 64]
            flow = teacher(rearrange(xt, "b f c h w -> b c f h w"), t, ctx)              # [B, 16, F, h, w]
        target = rearrange(noise - x0, "b f c h w -> b c f h w")
        loss = F.mse_loss(flow.float(), target)
        loop.step(k, loss, {"sigma": float(sig.mean()), "coupling": coupling})
    teacher.eval()
    text.eval()
    sd = loop.ema_state()
    path = save_dit_export(out / "teacher.safetensors", sd, wcfg, StreamConfig(),
                           extra={"family": "shapes-teacher", "weights": "ema", "recipe": cfg.name,
                                  "training_config": cfg.to_json()})
    save_text_encoder(out / "umt5.safetensors", text, spiece)
    check = teacher_check(cfg, path, out / "umt5.safetensors", lat, bank.prompts, device)
    log.info("teacher check (samples through the checker; temporal coupling): %s", json.dumps(check))
    loop.close(out, {"latent_rms": float(lat.float().pow(2).mean().sqrt()), "teacher_check": check})
    log.info("teacher written to %s, text encoder to %s", path, out / "umt5.safetensors")
    return path


METHODS: dict[str, Callable[[TrainConfig, torch.device], Path]] = {"vae": train_vae, "teacher": train_teacher}


def run(cfg: TrainConfig) -> Path:
    """Entry of the pretraining methods (from `training.run`)."""
    if cfg.method == "reward":
        from .reward import train_reward
        fn = train_reward
    else:
        fn = METHODS[cfg.method]
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.to_json())
    log.info("config %s:\n%s", cfg.name, cfg.to_json())
    torch.manual_seed(cfg.schedule.seed)
    import signal
    previous = signal.signal(signal.SIGTERM, lambda *_: _STOP.__setitem__("requested", True))
    try:
        return fn(cfg, device_of(cfg))
    finally:
        signal.signal(signal.SIGTERM, previous)
