"""Where torch.compile keeps what it built, so a second process does not compile again.

PyTorch caches compiled graphs on disk by itself (inductor's FX graph cache and AOTAutograd cache, with the Triton
kernels under the same folder), by default in the system's temporary folder, which is cleared at reboot and hard to
find. `use_compile_cache` points those caches at one folder the user can see and delete; PyTorch's own caches do
the work (no kernel cache of ours). A folder given by the user's own TORCHINDUCTOR_CACHE_DIR wins.

    CLI:      $STREAM_R1_COMPILE_CACHE, else ~/.cache/stream_r1/compile
    ComfyUI:  <ComfyUI user folder>/stream_r1/compile_cache (the nodes pass it)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)
ENV = "STREAM_R1_COMPILE_CACHE"


def default_folder() -> Path:
    """$STREAM_R1_COMPILE_CACHE, else ~/.cache/stream_r1/compile (XDG_CACHE_HOME respected)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "stream_r1" / "compile"


def use_compile_cache(folder: Optional[Path] = None) -> Optional[Path]:
    """Point PyTorch's on-disk compile caches at `folder` (default `default_folder()`) for this process and turn
    them on; returns the folder in use, or None when it cannot be created (compiling still works, from scratch).
    Call before the first compiled call. Idempotent."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    default = default_cache_dir()
    own = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if own and os.path.abspath(own) != os.path.abspath(default):   # inductor writes its default there once used
        return Path(own)
    folder = Path(folder) if folder is not None else default_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("compile cache: cannot create %s (%s); compiling without a persistent cache", folder, e)
        return None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)           # read by inductor at each lookup
    triton = os.environ.get("TRITON_CACHE_DIR")
    if triton is None or os.path.abspath(triton).startswith(os.path.abspath(default) + os.sep):
        os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")   # the kernels too, not only the graphs
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    log.info("compile cache: %s (delete it to compile from scratch)", folder)
    return folder
