"""Copy a safetensors file with its floating-point tensors in fp16 (metadata kept): a 9.1M-parameter shapes-l model
is 36 MB in fp32, over what one device call can return (16 MiB a file) or carry beside a second one (64 MiB).
Every loader of ours casts to the dtype it runs in, so the copy loads where the original does.

    python3 bench/half_weights.py SRC DST
"""
import sys

from safetensors import safe_open
from safetensors.torch import save_file


def half_copy(src: str, dst: str) -> None:
    with safe_open(src, "pt") as f:
        meta = f.metadata()
        sd = {k: (t.half() if t.is_floating_point() else t).contiguous()
              for k, t in ((k, f.get_tensor(k)) for k in f.keys())}
    save_file(sd, dst, metadata=meta)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 bench/half_weights.py SRC DST")
    half_copy(sys.argv[1], sys.argv[2])
