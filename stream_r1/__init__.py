"""Stream-R1 core: the causal Wan2.1 student, its KV cache and streaming loop, loaders, VAE, text encoder.

Knows nothing of ComfyUI. Heavy submodules load on first use, so `import stream_r1` is cheap.
"""
from .config import StreamConfig, WanConfig

__version__ = "0.1.0"

_LAZY = {
    "WanModel": ("wan.model", "WanModel"),
    "KVCache": ("kv_cache", "KVCache"),
    "FlowMatchSchedule": ("schedule", "FlowMatchSchedule"),
    "StreamSession": ("stream", "StreamSession"),
    "generate": ("stream", "generate"),
    "load_student": ("loaders", "load_student"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'stream_r1' has no attribute {name!r}")


__all__ = ["WanConfig", "StreamConfig", "__version__", *_LAZY]
