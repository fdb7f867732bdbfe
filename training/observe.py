"""Rank-0 observability: one log line per interval, optional TensorBoard, a tqdm bar, sample videos and
saliency pictures. Nothing here is required: TensorBoard is used only when importable."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .config import TrainConfig

log = logging.getLogger("training")

_SHORT = (("gen_loss", "gen"), ("critic_loss", "critic"), ("ode_loss", "ode"), ("dmd_grad_abs", "|g|"),
          ("w_inter", "W_inter"), ("reward_VQ", "VQ"), ("reward_MQ", "MQ"), ("reward_TA", "TA"),
          ("ess", "ESS"), ("w_intra_std", "sd W_intra"), ("r_checker", "rho(r,checker)"),
          ("balance_penalty", "bal"), ("grad_norm_gen", "gnorm_g"), ("grad_norm_critic", "gnorm_c"))


_PHASES = ("rollout", "scores", "decode", "reward", "checker", "backward")


def format_line(name: str, m: dict[str, Any], total: int, last_gen: dict[str, Any] | None = None) -> str:
    """One log line for step m. When m is a critic-only step, the generator's metrics (loss, reward weights) come
    from `last_gen`, the latest generator step, marked `(gen @ step)`: an interval that is a multiple of
    generator_every never lands on a generator step, and its metrics would otherwise never be logged."""
    parts = [f"{name} step {int(m['step']) + 1}/{total}"]
    if last_gen is not None and not m.get("generator_step"):
        gen_keys = {k for k in last_gen if k not in m}
        if gen_keys & {key for key, _ in _SHORT}:
            parts.append(f"(gen @ {int(last_gen['step']) + 1})")
            m = {**{k: last_gen[k] for k in gen_keys}, **m}
    for key, short in _SHORT:
        if key in m:
            v = f"{m[key]:.4g}"
            if key == "w_inter" and "w_inter_min" in m:
                v += f" [{m['w_inter_min']:.3g}, {m['w_inter_max']:.3g}]"
            parts.append(f"{short} {v}")
    if "w_intra_temporal_min" in m:
        parts.append(f"tau [{m['w_intra_temporal_min']:.3g}, {m['w_intra_temporal_max']:.3g}]")
    if m.get("dmd_nonfinite"):
        parts.append(f"nonfinite {m['dmd_nonfinite']:.0f}")
    parts.append(f"{m['seconds']:.2f} s/step")
    phases = [f"{p} {m['seconds_' + p]:.2f}" for p in _PHASES if f"seconds_{p}" in m]
    if phases:                                                      # where a generator step's time went
        parts.append("gen s: " + ", ".join(phases))
    parts.append(f"peak {max(m['peak_mem_gib']):.2f} GiB")
    return " | ".join(parts)


class Observer:
    def __init__(self, cfg: TrainConfig, out: Path, *, enabled: bool, start: int):
        self.cfg, self.out, self.enabled = cfg, out, enabled
        self.bar = self.tb = None
        self.last_gen: dict[str, Any] | None = None      # the latest generator step's metrics (for the log line)
        if not enabled:
            return
        if cfg.log.progress:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=cfg.schedule.steps, initial=start, desc=cfg.name, unit="step", leave=False)
            except ImportError:
                pass
        if cfg.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=str(out / "tensorboard"))
            except ImportError:
                log.debug("tensorboard not installed: no event files")

    def step(self, m: dict[str, Any], trainer) -> None:
        if not self.enabled:
            return
        k = int(m["step"]) + 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({s: f"{m[key]:.3g}" for key, s in _SHORT[:3] if key in m})
        if m.get("generator_step"):
            self.last_gen = m
        if self.cfg.log.metrics_jsonl:                  # every step, generator and critic, for later analysis
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({key: v for key, v in m.items() if isinstance(v, (int, float, list))}) + "\n")
        if k % max(1, self.cfg.log.interval) == 0 or k == self.cfg.schedule.steps:
            log.info(format_line(self.cfg.name, m, self.cfg.schedule.steps, self.last_gen))
        if self.tb is not None:
            for key, v in m.items():
                if isinstance(v, (int, float)) and key != "step":
                    self.tb.add_scalar(f"train/{key}", v, k)
            self.tb.add_scalar("train/peak_mem_gib", max(m["peak_mem_gib"]), k)
        every = self.cfg.log.sample_interval
        if every and k % every == 0:
            try:
                self.write_samples(trainer, k)
            except Exception as e:                        # pictures must never stop training
                log.warning("could not write samples at step %d: %s", k, e)

    def write_samples(self, trainer, k: int) -> None:
        s = trainer._sample
        if not s or trainer.vae is None:
            return
        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        from stream_r1.video_io import VideoWriter
        frames = trainer.decode(s["latents"][None].to(trainer.device, trainer.dtype))[0]   # [T, 3, H, W]
        with VideoWriter(folder / f"step_{k:08d}.mp4", fps=16) as w:
            w.write(frames.cpu(), layout="tchw")
        (folder / f"step_{k:08d}.txt").write_text(f"{s['prompt']}\n(generator rollout of step {s['step']})\n")
        if s.get("intra") is not None:
            from stream_r1.reward.visualize import grid_image, heatmaps, temporal_profile_image, write_png
            w_intra, tau = s["intra"]
            h, w = frames.shape[-2:]
            write_png(folder / f"step_{k:08d}_w_intra.png",
                      grid_image(heatmaps(w_intra, size=(h, w), cmap="blues"), cols=min(7, w_intra.shape[0])))
            write_png(folder / f"step_{k:08d}_temporal.png", temporal_profile_image(tau))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
