"""`python -m training.run --recipe NAME [--config file.toml|yaml] [--set a.b=value ...]`

Single process, or any torchrun layout (`python -m torch.distributed.run --nproc_per_node N -m training.run ...`).
Every side effect of a run lives here: environment, seeds, backend flags, the process group, signal handling.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .recipes import RECIPES
    p = argparse.ArgumentParser(prog="python -m training.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help=f"one of: {', '.join(RECIPES)}")
    p.add_argument("--config", action="append", default=[], help=".toml/.yaml/.json overrides (applied in order)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set optim.lr=2e-6 --set schedule.steps=10")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p.parse_args(argv)


def init_distributed() -> None:
    """torchrun sets RANK/WORLD_SIZE; without it, run as one process (no group: no FSDP, fp32 on CPU)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend)


def main(argv: list[str] | None = None) -> int:
    from .config import apply_overrides, load_config_file
    from .recipes import get_recipe

    args = parse_args(argv)
    try:
        cfg = get_recipe(args.recipe)
        for f in args.config:
            load_config_file(cfg, f)
        apply_overrides(cfg, args.overrides)
        cfg.validate(int(os.environ.get("WORLD_SIZE", 1)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_json())
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    init_distributed()
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s [training] %(message)s", datefmt="%H:%M:%S")
    torch.manual_seed(cfg.schedule.seed + rank)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        finished = _finished(cfg)
        if finished is not None:
            logging.getLogger("training").info("%s", finished)
            return 0
        _train(cfg)
    except (ValueError, FileNotFoundError) as e:
        logging.getLogger("training").error("error: %s", e)
        return 2
    finally:
        gc.collect()                                    # release the models' device meshes before the group
        if torch.distributed.is_initialized():
            torch.distributed.barrier()                 # nobody tears the group down under a peer's feet
            torch.distributed.destroy_process_group()
    return 0


def _finished(cfg) -> str | None:
    """One line when the checkpoint this run would resume from already reached `schedule.steps` (it would do nothing)."""
    if cfg.method in ("vae", "teacher", "reward"):
        return None
    from pathlib import Path

    from . import checkpoint as ckpt
    out = Path(cfg.output_dir).expanduser()
    path = ckpt.resolve_resume(cfg.checkpoint.resume, out / "checkpoints")
    step = int(ckpt.read_meta(path)["step"]) if path is not None else -1
    if step < cfg.schedule.steps:
        return None
    return (f"the run in {out} already finished at step {step} (schedule.steps={cfg.schedule.steps}): nothing to do; "
            f"pass --set schedule.steps=N with N > {step} to continue it, or --set output_dir=NEW for a new run")


def _train(cfg) -> None:
    if cfg.method in ("vae", "teacher", "reward"):
        from .shapes.pretrain import run
        run(cfg)
        return
    from .trainer import Trainer
    trainer = Trainer(cfg)
    previous = signal.signal(signal.SIGTERM, lambda *_: trainer.request_stop())
    try:
        trainer.train()
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
