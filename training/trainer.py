"""The trainer: Stream-R1 / DMD distillation and ODE initialisation of the causal student.

One optimizer step k (spec-algorithm §2.1-2.2, with every interval in optimizer steps):

    generator step (k % generator_every == 0, method dmd):  for each micro-step: self-forcing rollout with
        gradient -> teacher (CFG) and critic scores at a shifted timestep -> DMD direction g -> reward weights
        (W_inter per rollout, W_intra per frame/pixel; Stream-R1) -> weighted DMD loss -> backward
    every step: for each micro-step: independent no-grad rollout -> critic flow loss -> backward
    then clip + AdamW (critic; generator on generator steps) and the student's EMA

Every draw (noise, score timestep, prompt order) is derived from (seed, step, global sample position) and the
exit step from (seed, step, micro-step index): it is shared by all ranks, since FSDP needs the same number of
forwards everywhere. So the losses do not depend on how each micro-step's samples are spread over processes
(N ranks x micro batch m == 1 process x micro batch N*m), and a run resumes exactly; a different accumulation
count draws different exit steps. The umT5 encoder (if
any) is replicated and cached per rank, not sharded: FSDP needs every rank to run the same calls, and per-rank
caches would break that.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from einops import rearrange
from torch import Tensor

from stream_r1.config import StreamConfig
from stream_r1.schedule import FlowMatchSchedule

from . import checkpoint as ckpt
from . import losses, parallel
from .config import TrainConfig
from .data import BUILTIN_PROMPTS, PromptSampler, TextEmbedder, derive_seed, read_prompts, shard_positions
from .models import EMA, build_dit, build_reward, build_vae, check_model_path, full_model_state_dict
from .parallel import DistInfo
from .rollout import PerSampleNoise, cfg_flow, frame_seqlen, self_forcing_rollout, teacher_ode_trajectory

log = logging.getLogger("training")


def _checker_rho(w_inter: Tensor, frames: Tensor, prompts: list[str]) -> float:
    """Spearman(W_inter, the shapes world's analytic checker score) over one micro-batch (frames [B, T, 3, H, W]
    in [0, 1]); nan when either side is constant (e.g. a batch of 1)."""
    from stream_r1.shapes import check_many

    from .shapes.gate import spearman
    score = [r["score"] for r in check_many(frames.float().cpu().unbind(0), prompts)]
    return spearman(w_inter.flatten().float().cpu().numpy(), score) if len(score) > 1 else float("nan")


def check_inputs(cfg: TrainConfig, world_size: int) -> list[str]:
    """Fail fast (before any model is built) on bad settings, missing files and bad prompt files."""
    cfg.validate(world_size)
    m = cfg.model
    check_model_path("model.student", m.student)
    check_model_path("model.teacher", m.teacher)
    if cfg.method == "dmd":
        check_model_path("model.critic", m.critic)
    check_model_path("model.vae", m.vae, ("random", "none"))
    check_model_path("text.encoder", cfg.text.encoder, ("hash",))
    if cfg.reward.enabled and cfg.reward.path not in ("synthetic", "synthetic-2b", "analytic-shapes"):
        from stream_r1.reward.checkpoint import resolve_reward_files
        try:
            resolve_reward_files(cfg.reward.path)
        except (FileNotFoundError, ValueError) as e:
            raise FileNotFoundError(f"reward.path: {e}") from None
    if cfg.data.prompt_file:
        return read_prompts(cfg.data.prompt_file)
    if cfg.data.shapes_prompts:
        from .shapes.world import shapes_prompts
        return shapes_prompts(cfg.data.shapes_prompts, cfg.data.prompt_seed)
    return list(BUILTIN_PROMPTS)


class Metrics:
    """Per-step sums/counts, minima and maxima, reduced over ranks in three collectives."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.maxs: dict[str, float] = {}
        self.mins: dict[str, float] = {}

    def mean(self, name: str, value: float, count: float = 1.0) -> None:
        s = self.sums[name]
        s[0] += float(value) * count
        s[1] += count

    def extrema(self, name: str, lo: float, hi: float) -> None:
        self.mins[name] = min(self.mins.get(name, math.inf), float(lo))
        self.maxs[name] = max(self.maxs.get(name, -math.inf), float(hi))

    def reduce(self, names: tuple[list[str], list[str]]) -> dict[str, float]:
        """names: the keys every rank reports (same order on every rank)."""
        mean_keys, ext_keys = names
        flat = torch.tensor([v for k in mean_keys for v in self.sums.get(k, [0.0, 0.0])], dtype=torch.float64)
        hi = torch.tensor([self.maxs.get(k, -math.inf) for k in ext_keys], dtype=torch.float64)
        lo = torch.tensor([-self.mins.get(k, math.inf) for k in ext_keys], dtype=torch.float64)
        if len(flat):
            parallel.all_reduce_(flat, "sum")
        if len(hi):
            parallel.all_reduce_(hi, "max")
            parallel.all_reduce_(lo, "max")
        out = {k: float(flat[2 * i] / flat[2 * i + 1]) for i, k in enumerate(mean_keys) if flat[2 * i + 1] > 0}
        for i, k in enumerate(ext_keys):
            if math.isfinite(hi[i]):
                out[f"{k}_max"], out[f"{k}_min"] = float(hi[i]), float(-lo[i])
        return out


class Trainer:
    def __init__(self, cfg: TrainConfig, info: Optional[DistInfo] = None):
        self.cfg = cfg
        self.info = info or parallel.current_dist()
        prompts = check_inputs(cfg, self.info.world_size)
        self.accum = cfg.schedule.accumulation(self.info.world_size)
        self.out = Path(cfg.output_dir).expanduser()
        self.device = self.info.device
        gpu = self.device.type == "cuda"
        mp = cfg.parallel.mixed_precision
        self.dtype = torch.bfloat16 if (mp == "bf16" or (mp == "auto" and gpu)) else torch.float32
        self.mesh = parallel.device_mesh(self.info, cfg.parallel.replicate) \
            if (self.info.initialized and cfg.parallel.fsdp) else None
        self.sc: StreamConfig = cfg.rollout.stream_config()
        self.schedule = FlowMatchSchedule.from_config(self.sc)
        self.timesteps = self.schedule.sampling_timesteps(self.sc.denoising_steps, self.sc.warp_denoising_step)
        self.prompts = PromptSampler(prompts, cfg.schedule.seed, cfg.data.shuffle)

        m, seed = cfg.model, cfg.model.seed
        common = dict(info=self.info, mesh=self.mesh, pcfg=cfg.parallel, param_dtype=torch.float32,
                      compute_dtype=self.dtype, attention=m.attention)
        self.student = build_dit(m.student, m.student_arch, seed=seed, trainable=True, **common)
        self.teacher = build_dit(m.teacher, m.teacher_arch, seed=seed + 2, trainable=False, **common)
        self.critic = build_dit(m.critic, m.critic_arch, seed=seed + 1, trainable=True, **common) \
            if cfg.method == "dmd" else None
        self.vae = build_vae(m.vae, m.vae_arch, seed=seed + 3, device=self.device, dtype=self.dtype)
        self.reward = build_reward(cfg.reward, device=self.device, dtype=self.dtype, seed=seed + 4) \
            if cfg.reward.enabled else None
        self.balancer = None
        if cfg.reward.enabled and cfg.reward.mode == "BalancedOverall":
            from stream_r1.reward.weights import BalancedOverall
            r = cfg.reward
            self.balancer = BalancedOverall(window=r.balance_window, warmup=r.balance_warmup, lam=r.balance_lambda,
                                            sync=r.balance_sync)
        scfg = self.student.cfg
        for name, net in (("teacher", self.teacher), ("critic", self.critic)):
            if net is not None and (net.cfg.text_dim, net.cfg.in_dim) != (scfg.text_dim, scfg.in_dim):
                raise ValueError(f"the {name} takes text_dim/in_dim {net.cfg.text_dim}/{net.cfg.in_dim}, the student "
                                 f"{scfg.text_dim}/{scfg.in_dim}: they must match")
        self.text = TextEmbedder(cfg.text, scfg.text_dim, self.device, self.dtype)
        self.latent_hw = scfg.latent_hw(cfg.rollout.height, cfg.rollout.width)
        o = cfg.optim
        self.opt_g = torch.optim.AdamW(self.student.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                       weight_decay=o.weight_decay)
        self.opt_c = torch.optim.AdamW(self.critic.parameters(), lr=o.critic_lr, betas=o.betas, eps=o.eps,
                                       weight_decay=o.weight_decay) if self.critic is not None else None
        self.ema: Optional[EMA] = None
        self.step_idx = 0
        """Optimizer steps done."""
        self.position = 0
        """Global sample positions consumed (the data cursor)."""
        self.stop_requested = False
        self.history: list[dict[str, float]] = []
        self._sample: dict[str, Any] = {}
        self._ode_mask: Optional[Tensor] = None
        self._maybe_create_ema()
        resume = ckpt.resolve_resume(cfg.checkpoint.resume, self.out / "checkpoints")
        if resume is not None:
            self.load(resume)

    def _autocast(self):
        """Mixed precision without FSDP: trainable models keep fp32 weights, so their matmuls need autocast to
        compute in bf16 like the frozen ones and the KV cache (under FSDP its MixedPrecisionPolicy does this)."""
        import contextlib
        if self.mesh is None and self.dtype != torch.float32:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    # ---- schedule ---------------------------------------------------------------------------------------------
    def is_generator_step(self, k: int) -> bool:
        return self.cfg.method == "ode_init" or self.cfg.schedule.is_generator_step(k)

    def _maybe_create_ema(self) -> None:
        if self.ema is None and self.cfg.schedule.ema_due(self.step_idx):
            self.ema = EMA(self.student, self.cfg.schedule.ema_decay)
            log.info("EMA of the student created at step %d", self.step_idx)

    def exit_step(self, k: int, micro: int, role: str) -> int:
        """Shared by every chunk and every rank (FSDP needs the same number of forwards everywhere)."""
        if self.cfg.rollout.exit_step >= 0:
            return self.cfg.rollout.exit_step
        g = torch.Generator().manual_seed(derive_seed(self.cfg.schedule.seed, "exit", role, k, micro))
        return int(torch.randint(0, len(self.timesteps), (1,), generator=g))

    def _batch(self, block: int, micro: int) -> tuple[list[int], list[str]]:
        pos = shard_positions(block, micro, self.info.rank, self.info.world_size, self.cfg.schedule.micro_batch)
        return pos, [self.prompts.prompts[self.prompts.index(p)] for p in pos]

    def _gens(self, tag: str, positions: list[int]) -> list[torch.Generator]:
        return [torch.Generator(device=self.device).manual_seed(derive_seed(self.cfg.schedule.seed, tag, p))
                for p in positions]

    def _sigma(self, tau: Tensor) -> Tensor:
        """[B] float64 timesteps -> [B] sigma (continuous tau/1000, or the student's nearest grid entry)."""
        return tau / 1000.0 if self.cfg.dmd.sigma == "continuous" else self.schedule.sigma(tau)

    def _rollout(self, ctx: Tensor, positions: list[int], tag: str, exit_step: int, grad: bool) -> Tensor:
        f = self.cfg.rollout.frames_per_block
        noise = PerSampleNoise([derive_seed(self.cfg.schedule.seed, tag, p) for p in positions],
                               (f, self.student.cfg.in_dim, *self.latent_hw), self.device, self.dtype)
        return self_forcing_rollout(self.student, ctx, self.sc, num_frames=self.cfg.rollout.latent_frames,
                                    latent_hw=self.latent_hw, noise=noise, exit_step=exit_step, grad=grad,
                                    context_pass_noise=self.cfg.rollout.context_pass_noise, dtype=self.dtype,
                                    text_kv_grad=self.cfg.rollout.text_kv_grad)

    def _noised(self, x: Tensor, positions: list[int], tag: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Score timestep per sample and x_tau = (1 - sigma) x + sigma n. Returns (x_tau, t [B, F], sigma5, n)."""
        d = self.cfg.dmd
        gens = self._gens(tag, positions)
        tau = losses.score_timesteps(gens, shift=d.timestep_shift, min_t=d.min_timestep, max_t=d.max_timestep)
        n = torch.stack([torch.randn(x.shape[1:], generator=g, device=self.device) for g in gens])
        sig = losses.broadcast_sigma(self._sigma(tau), n)                               # [B, 1, 1, 1, 1] fp32
        x_t = ((1 - sig) * x.detach().float() + sig * n).to(self.dtype)
        t = tau.to(self.device, torch.float32)[:, None].expand(-1, x.shape[1]).contiguous()
        return x_t, t, sig, n

    # ---- micro-steps ------------------------------------------------------------------------------------------
    def generator_micro(self, k: int, micro: int, block: int, acc: Metrics) -> None:
        pos, prompts = self._batch(block, micro)
        ctx = self.text(prompts)
        e = self.exit_step(k, micro, "generator")
        with self._timed(acc, "rollout"):
            x = self._rollout(ctx, pos, "gen-rollout", e, grad=True)                    # [B, F, C, h, w]
        with torch.no_grad():
            with self._timed(acc, "scores"):
                x_t, t, sig, _ = self._noised(x, pos, "gen-score")
                xt_c = rearrange(x_t, "b f c h w -> b c f h w")
                real = cfg_flow(self.teacher, xt_c, t, ctx, self.text.negative(len(pos)),
                                self.cfg.dmd.guidance_scale)
                fake = self.critic(xt_c, t, ctx)
                d_real = x_t.float() - sig * rearrange(real, "b c f h w -> b f c h w").float()
                d_fake = x_t.float() - sig * rearrange(fake, "b c f h w -> b f c h w").float()
                direction = losses.dmd_direction(x, d_fake, d_real)
            w_inter, w_intra, intra = self._reward_weights(x, prompts, acc, (k, micro))
        with self._timed(acc, "backward"):
            loss = losses.dmd_loss(x, direction.grad, w_inter, w_intra)
            (loss / self.accum).backward()
        b = len(pos)
        acc.mean("gen_loss", loss.item(), b)
        acc.mean("dmd_grad_abs", direction.grad.abs().mean().item(), b)
        acc.mean("dmd_nonfinite", direction.nonfinite, 1)
        acc.mean("exit_step_gen", e, 1)
        if micro == 0:
            self._sample = {"latents": x[0].detach().float().cpu(), "prompt": prompts[0], "step": k, "intra": intra}

    def _reward_weights(self, x: Tensor, prompts: list[str], acc: Metrics,
                        key: tuple[int, int] = (0, 0)) -> tuple[Any, Any, Any]:
        """(W_inter [B,1,1,1,1], W_intra [B,F,1,h,w] or None, sample 0's (W_intra, tau) for pictures or None).
        `key` (step, micro) seeds the shuffled control, so a resumed run draws what an uninterrupted one would."""
        if self.reward is None:
            return None, None, None
        intra_info = None
        r = self.cfg.reward
        with self._timed(acc, "decode"):
            frames = self.decode(x.detach())                                            # [B, T, 3, H, W] in [0, 1]
        with self._timed(acc, "reward"):
            if r.intra:
                from stream_r1.reward.dmd_weights import reward_weights
                from stream_r1.reward.weights import IntraConfig
                intra = IntraConfig(combine=r.combine, temperature=r.temperature, normalize_axes=r.normalize_axes,
                                    spatial_strength=r.spatial_strength, temporal_strength=r.temporal_strength,
                                    spatial_floor=r.spatial_floor, temporal_floor=r.temporal_floor)
                rw = reward_weights(self.reward, frames, prompts, (x.shape[1], *self.latent_hw), intra=intra,
                                    reward_mode=r.mode, balancer=self.balancer, beta=r.beta, clip=r.clip,
                                    target=r.target, checkpointing=r.checkpointing, order=r.saliency_order)
                w_inter, w_intra, scores = rw.w_inter, rw.w_intra.to(self.device), rw.scores
                tau = rw.intra.temporal
                acc.extrema("w_intra_temporal", tau.min().item(), tau.max().item())
                acc.extrema("w_intra", rw.w_intra.min().item(), rw.w_intra.max().item())
                intra_info = (rw.w_intra[0, :, 0].float().cpu(), tau[0].float().cpu())
            else:
                from stream_r1.reward.model import compute_scores
                from stream_r1.reward.weights import inter_weight, reward_signal
                scores = compute_scores(self.reward, frames, prompts)
                w_inter = inter_weight(reward_signal(scores.normalized, scores.axes, r.mode, self.balancer), r.beta, r.clip)
                w_intra = None
            w_inter = w_inter.to(self.device)
            if r.inter_norm == "batch":                                     # mean 1 over the global micro-batch
                from stream_r1.reward.weights import normalize_inter       # (cancels the BalancedOverall penalty)
                w_inter = normalize_inter(w_inter, lambda t: parallel.all_reduce_(t, "sum"))
        b = x.shape[0]
        if r.log_checker and (key[0] // self.cfg.schedule.generator_every) % r.log_checker_every == 0:
            with self._timed(acc, "checker"):  # W_inter is monotone in r: its ranks are r's (before any control)
                rho = _checker_rho(w_inter, frames, prompts)
            if math.isfinite(rho):
                acc.mean("r_checker", rho, 1)
        if r.control == "shuffled":
            from stream_r1.reward.weights import shuffled_control
            g = torch.Generator().manual_seed(self.cfg.schedule.seed * 1_000_003 + key[0] * 1_009 + key[1]
                                              + self.info.rank * 7_919)
            w_inter, w_intra = shuffled_control(w_inter, w_intra, g)
        from stream_r1.reward.weights import effective_sample_size
        acc.mean("ess", effective_sample_size(w_inter), 1)
        if w_intra is not None:
            acc.mean("w_intra_std", w_intra.float().std().item(), 1)
        for j, a in enumerate(scores.axes):
            acc.mean(f"reward_{a}", scores.normalized[:, j].mean().item(), b)
        acc.mean("w_inter", w_inter.mean().item(), b)
        acc.extrema("w_inter", w_inter.min().item(), w_inter.max().item())
        if self.balancer is not None:
            acc.mean("balance_penalty", self.balancer.penalty(), 1)
        return w_inter, w_intra, intra_info

    def critic_micro(self, k: int, micro: int, block: int, acc: Metrics) -> None:
        pos, prompts = self._batch(block, micro)
        ctx = self.text(prompts)
        e = self.exit_step(k, micro, "critic")
        with torch.no_grad():
            x = self._rollout(ctx, pos, "critic-rollout", e, grad=False)
            x_t, t, _, n = self._noised(x, pos, "critic-score")
        flow = self.critic(rearrange(x_t, "b f c h w -> b c f h w"), t, ctx)
        loss = losses.critic_loss(rearrange(flow, "b c f h w -> b f c h w"), n, x)
        (loss / self.accum).backward()
        acc.mean("critic_loss", loss.item(), len(pos))
        acc.mean("exit_step_critic", e, 1)

    def ode_micro(self, k: int, micro: int, block: int, acc: Metrics) -> None:
        from stream_r1.wan.attention import block_causal_mask

        pos, prompts = self._batch(block, micro)
        pairs = self.cfg.ode.pairs
        keys = [p % pairs for p in pos] if pairs else pos                                 # trajectory identity
        if pairs:
            prompts = [self.prompts.prompts[self.prompts.index(q)] for q in keys]
        ctx = self.text(prompts)
        rc = self.cfg.rollout
        traj, x0 = self._ode_pairs(keys, ctx)                                             # [S, B, F, C, h, w], [B, ...]
        gens = self._gens("ode", pos)
        chunks, fpb = rc.latent_frames // rc.frames_per_block, rc.frames_per_block
        idx = torch.stack([torch.randint(0, len(self.timesteps), (chunks,), generator=g, device=self.device).cpu()
                           for g in gens]).repeat_interleave(fpb, dim=1)               # [B, F] step per frame
        x_in = torch.stack([traj[idx[b], b, torch.arange(rc.latent_frames)] for b in range(len(pos))])
        t = torch.tensor(self.timesteps, dtype=torch.float32)[idx].to(self.device)       # [B, F]
        if self._ode_mask is None:
            fs = frame_seqlen(self.student.cfg, self.latent_hw)
            self._ode_mask = block_causal_mask(rc.latent_frames, fs, fpb, device=self.device)
        flow = self.student(rearrange(x_in, "b f c h w -> b c f h w"), t, ctx, mask=self._ode_mask)
        sig = self.schedule.sigma(t.double().cpu()).to(self.device, torch.float32)[..., None, None, None]
        x0_pred = x_in.float() - sig * rearrange(flow, "b c f h w -> b f c h w").float()
        loss = losses.ode_regression_loss(x0_pred, x0)
        (loss / self.accum).backward()
        acc.mean("ode_loss", loss.item(), len(pos))
        if micro == 0:
            self._sample = {"latents": x0_pred[0].detach().cpu(), "prompt": prompts[0], "step": k}

    def _ode_pairs(self, keys: list[int], ctx: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher trajectories of samples `keys`: states [S, B, F, C, h, w] at the student's timesteps and x0
        [B, F, C, h, w]. With `ode.pairs` they are computed once per key and kept on the device."""
        rc, c = self.cfg.rollout, self.student.cfg.in_dim
        cache = getattr(self, "_pair_cache", None)
        if cache is None:
            cache = self._pair_cache = {}
        todo = [i for i, q in enumerate(keys) if q not in cache] if self.cfg.ode.pairs else list(range(len(keys)))
        fresh: dict[int, tuple[Tensor, Tensor]] = {}
        if todo:
            shape = (rc.latent_frames, c, *self.latent_hw)
            gens = self._gens("ode", [keys[i] for i in todo])
            noise = torch.stack([torch.randn(shape, generator=g, device=self.device) for g in gens]).to(self.dtype)
            states, x0 = teacher_ode_trajectory(self.teacher, noise, ctx[todo], self.text.negative(len(todo)),
                                                self.timesteps, steps=self.cfg.ode.teacher_steps,
                                                guidance=self.cfg.ode.guidance_scale, shift=rc.timestep_shift)
            st = torch.stack(states, dim=0)                                              # [S, b, F, C, h, w]
            for j, i in enumerate(todo):
                fresh[keys[i]] = (st[:, j], x0[j])
            if self.cfg.ode.pairs:
                cache.update(fresh)
        got = [fresh.get(q) or cache[q] for q in keys]
        return torch.stack([s for s, _ in got], dim=1), torch.stack([x for _, x in got])

    # ---- one optimizer step -----------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        k, s = self.step_idx, self.cfg.schedule
        gen = self.is_generator_step(k)
        acc = Metrics()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        if gen:
            self.opt_g.zero_grad(set_to_none=True)
        if self.opt_c is not None:
            self.opt_c.zero_grad(set_to_none=True)
        gen_block = self.position if gen else None
        if gen:
            self.position += s.global_batch
        critic_block = None
        if self.critic is not None:
            critic_block = self.position
            self.position += s.global_batch
        for micro in range(self.accum):
            with self._autocast():
                if gen:
                    (self.ode_micro if self.cfg.method == "ode_init" else self.generator_micro)(k, micro, gen_block, acc)
                if critic_block is not None:
                    self.critic_micro(k, micro, critic_block, acc)
        out: dict[str, float] = {}
        if self.opt_c is not None:
            out["grad_norm_critic"] = parallel.clip_grad_norm(self.critic.parameters(), self.cfg.optim.critic_max_grad_norm)
            self.opt_c.step()
        if gen:
            out["grad_norm_gen"] = parallel.clip_grad_norm(self.student.parameters(), self.cfg.optim.max_grad_norm)
            self.opt_g.step()
            if self.ema is not None:
                self.ema.update(self.student)
        mean_keys = ["critic_loss", "exit_step_critic"] if self.critic is not None else []
        ext_keys: list[str] = []
        if gen and self.cfg.method == "ode_init":
            mean_keys += ["ode_loss"]
        elif gen:
            mean_keys += ["gen_loss", "dmd_grad_abs", "dmd_nonfinite", "exit_step_gen",
                          "seconds_rollout", "seconds_scores", "seconds_backward"]
            if self.reward is not None:
                mean_keys += [f"reward_{a}" for a in self.reward.axes] + ["w_inter", "ess"]
                mean_keys += ["w_intra_std"] if self.cfg.reward.intra else []
                mean_keys += ["r_checker", "seconds_checker"] if self.cfg.reward.log_checker else []
                mean_keys += ["seconds_decode", "seconds_reward"]
                mean_keys += ["balance_penalty"] if self.balancer is not None else []
                ext_keys += ["w_inter"] + (["w_intra", "w_intra_temporal"] if self.cfg.reward.intra else [])
        out.update(acc.reduce((mean_keys, ext_keys)))
        self.step_idx += 1
        self._maybe_create_ema()
        out["step"] = k
        out["generator_step"] = float(gen)
        out["seconds"] = time.perf_counter() - t0
        mem = torch.zeros(self.info.world_size, dtype=torch.float64)
        mem[self.info.rank] = parallel.peak_memory_gib(self.device)
        out["peak_mem_gib"] = parallel.all_reduce_(mem, "sum").tolist()
        return out

    # ---- the loop ---------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to save and leave after the current step (SIGTERM handler)."""
        self.stop_requested = True

    def train(self, on_step: Optional[Callable[["Trainer", dict[str, float]], None]] = None) -> list[dict[str, float]]:
        cfg, main = self.cfg, self.info.is_main
        from .observe import Observer
        obs = Observer(cfg, self.out, enabled=main, start=self.step_idx)
        if main:
            (self.out).mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(cfg.to_json())
            log.info("config %s:\n%s", cfg.name, cfg.to_json())
            log.info("world %d, accumulation %d, micro batch %d, dtype %s, fsdp %s, device %s",
                     self.info.world_size, self.accum, cfg.schedule.micro_batch, self.dtype, self.mesh is not None,
                     self.device)
        try:
            while self.step_idx < cfg.schedule.steps:
                m = self.train_step()
                self.history.append(m)
                obs.step(m, self)
                if on_step is not None:
                    on_step(self, m)
                stop = parallel.any_rank(self.stop_requested)
                if (stop and cfg.checkpoint.enabled) or cfg.checkpoint.due(self.step_idx, cfg.schedule.steps):
                    self.save()
                if stop:
                    log.info("stop requested: saved step %d, leaving", self.step_idx)
                    break
        finally:
            obs.close()
        if main and cfg.log.summary_json:
            self.write_summary(Path(cfg.log.summary_json))
        return self.history

    # ---- state --------------------------------------------------------------------------------------------------
    def _dcp_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict
        msd, osd = get_state_dict(self.student, self.opt_g)
        state: dict[str, Any] = {"student": msd, "opt_student": osd}
        if self.critic is not None:
            csd, cosd = get_state_dict(self.critic, self.opt_c)
            state |= {"critic": csd, "opt_critic": cosd}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def meta(self) -> dict[str, Any]:
        return {"step": self.step_idx, "position": self.position, "ema": self.ema is not None,
                "world_size": self.info.world_size, "recipe": self.cfg.name,
                "balancer": self.balancer.state_dict() if self.balancer is not None else None}

    def save(self) -> Path:
        cj = self.cfg.to_json()
        path = ckpt.save(self.out / "checkpoints", self.step_idx, self._dcp_state(), self.meta(), cj,
                         self.cfg.checkpoint.keep, self.info.rank)
        if self.cfg.checkpoint.export:
            self.export()
        log.info("checkpoint %s", path)
        return path

    def export(self) -> Optional[Path]:
        """The EMA student (live weights before the EMA exists) as a safetensors export (collective)."""
        weights = "ema" if self.ema is not None else "student"
        full = self.ema.full_state_dict if self.ema is not None else (lambda: full_model_state_dict(self.student))
        root = self.out / "exports"
        path = root / f"student_{ckpt.step_dir_name(self.step_idx)}.safetensors"
        if self.info.is_main:
            root.mkdir(parents=True, exist_ok=True)
        out = ckpt.export_student(path, full, self.student.cfg, self.sc,        # family: the cache policy's
                                  {"weights": weights, "step": self.step_idx,
                                   "recipe": self.cfg.name}, self.cfg.to_json(), self.info.rank)
        if out is not None:
            import shutil
            latest = root / "student_latest.safetensors"
            shutil.copyfile(out, latest.with_suffix(".tmp"))
            latest.with_suffix(".tmp").replace(latest)                  # a fixed name for the next recipe
            olds = sorted(root.glob("student_step_*.safetensors"))[:-self.cfg.checkpoint.keep]
            for old in olds:
                old.unlink(missing_ok=True)
                old.with_suffix(".config.json").unlink(missing_ok=True)
            log.info("exported %s student to %s", weights, out)
        return out

    def load(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict
        meta = ckpt.read_meta(path)
        if meta["ema"] and self.ema is None:
            self.ema = EMA(self.student, self.cfg.schedule.ema_decay)
        if not meta["ema"]:
            self.ema = None
        state = self._dcp_state()
        ckpt.load(path, state, self.info.rank)
        set_state_dict(self.student, self.opt_g, model_state_dict=state["student"],
                       optim_state_dict=state["opt_student"])
        if self.critic is not None:
            set_state_dict(self.critic, self.opt_c, model_state_dict=state["critic"],
                           optim_state_dict=state["opt_critic"])
        self.step_idx, self.position = int(meta["step"]), int(meta["position"])
        if self.balancer is not None and meta.get("balancer"):
            self.balancer.load_state_dict(meta["balancer"])
        log.info("resumed from %s (step %d)", path, self.step_idx)

    # ---- helpers ------------------------------------------------------------------------------------------------
    DECODE_GROUP_PIXELS = 1 << 25     # frames x height x width decoded per call (one video of 81 x 480 x 832)

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Latents [B, F, C, h, w] -> frames [B, T, 3, H, W] in [0, 1]: as many samples per VAE call as fit
        DECODE_GROUP_PIXELS (the whole batch of small videos, so the per-frame causal loop runs once, not B times)."""
        if self.vae is None:
            raise ValueError("decoding needs a VAE (model.vae)")
        b, f, _, h, w = x.shape
        ts, ss = self.vae.cfg.temporal_stride, self.vae.cfg.spatial_stride
        pixels = (1 + ts * (f - 1)) * h * w * ss * ss                                    # one video's frames x H x W
        group = max(1, self.DECODE_GROUP_PIXELS // pixels)
        outs = []
        for i in range(0, b, group):
            v = self.vae.decode(rearrange(x[i:i + group], "b f c h w -> b c f h w"))   # [g, 3, T, H, W]
            outs.append(rearrange(((v.float() + 1) / 2).clamp(0, 1), "b c t h w -> b t c h w"))
        return torch.cat(outs)

    @contextlib.contextmanager
    def _timed(self, acc: Metrics, name: str):
        """Wall seconds of a phase of a generator micro-step, as metric `seconds_<name>` (the device synchronised
        before and after, so the GPU's queued work lands in the phase that queued it)."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        yield
        sync()
        acc.mean(f"seconds_{name}", time.perf_counter() - t0, 1)

    def write_summary(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"recipe": self.cfg.name, "world_size": self.info.world_size,
                                    "accumulation": self.accum, "global_batch": self.cfg.schedule.global_batch,
                                    "steps": self.history}, indent=2))
