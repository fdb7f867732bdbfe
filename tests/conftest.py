"""Shared fixtures: tiny Wan models with the real key names, seeded; never any download."""
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The tests use tiny tensors: extra intra-op threads only add spin-waiting on a 2-core (often busy) machine.
torch.set_num_threads(1)
_COMPILE_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "STREAM_R1_COMPILE_CACHE")


@pytest.fixture(autouse=True)
def _own_compile_cache(tmp_path_factory):
    """Compile caches of the tests go to a temporary folder (never the user's ~/.cache/stream_r1), and a test that
    points them elsewhere (`stream_r1.compile_cache`) does not move them for the next one."""
    before = {k: os.environ.get(k) for k in _COMPILE_ENV}
    if before["STREAM_R1_COMPILE_CACHE"] is None:
        os.environ["STREAM_R1_COMPILE_CACHE"] = str(tmp_path_factory.getbasetemp() / "compile_cache")
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run on the lent GPU machine, never in CI)")
    config.addinivalue_line("markers", "docs: README and docs/ checks (links, commands); file reads and argparse only")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_model():
    from stream_r1.config import WanConfig
    from stream_r1.wan.model import WanModel
    return WanModel(WanConfig.tiny(), attention="sdpa").init_weights(seed=0).eval()


# ---- synthetic umT5: SentencePiece model and Wan-layout weights (spec-models §7) ---------------------
UMT5_TINY = dict(d_model=32, heads=4, d_kv=8, d_ff=64, layers=2, buckets=32)
@pytest.fixture(scope="session")
def spiece_bytes() -> bytes:
    import io
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(400)]
    lines = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(300)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=300, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )
    return buf.getvalue()


@pytest.fixture(scope="session")
def vocab(spiece_bytes: bytes) -> int:
    from stream_r1.text_encoder import Tokenizer

    return Tokenizer(spiece_bytes).sp.get_piece_size()


@pytest.fixture(scope="session")
def wan_sd(vocab: int) -> dict[str, torch.Tensor]:
    """Seeded random fp32 weights with the real Wan-T5 names (22 tensors for 2 layers)."""
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s, std=1.0: torch.randn(*s, generator=g) * std  # noqa: E731
    D_MODEL, HEADS, D_KV, D_FF, LAYERS, BUCKETS = (UMT5_TINY[k] for k in ("d_model", "heads", "d_kv", "d_ff", "layers", "buckets"))
    inner = HEADS * D_KV
    sd = {"token_embedding.weight": rnd(vocab, D_MODEL), "norm.weight": 1 + rnd(D_MODEL, std=0.1)}
    for i in range(LAYERS):
        p = f"blocks.{i}."
        sd |= {
            p + "norm1.weight": 1 + rnd(D_MODEL, std=0.1),
            p + "attn.q.weight": rnd(inner, D_MODEL, std=D_MODEL**-0.5),
            p + "attn.k.weight": rnd(inner, D_MODEL, std=D_MODEL**-0.5),
            p + "attn.v.weight": rnd(inner, D_MODEL, std=D_MODEL**-0.5),
            p + "attn.o.weight": rnd(D_MODEL, inner, std=inner**-0.5),
            p + "pos_embedding.embedding.weight": rnd(BUCKETS, HEADS),
            p + "norm2.weight": 1 + rnd(D_MODEL, std=0.1),
            p + "ffn.gate.0.weight": rnd(D_FF, D_MODEL, std=D_MODEL**-0.5),
            p + "ffn.fc1.weight": rnd(D_FF, D_MODEL, std=D_MODEL**-0.5),
            p + "ffn.fc2.weight": rnd(D_MODEL, D_FF, std=D_FF**-0.5),
        }
    return sd


@pytest.fixture(scope="module")
def vae():
    """Tiny Wan VAE with seeded random weights."""
    from stream_r1.vae import VAEConfig, WanVAE
    torch.manual_seed(0)
    return WanVAE(VAEConfig.tiny()).eval()


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory):
    """The shapes-world recipes run once per session at tiny size (tests/helpers.py `build_shapes_chain`);
    tests that change the bundle copy it first."""
    from helpers import build_shapes_chain
    root = tmp_path_factory.mktemp("shapes")
    build_shapes_chain(root)
    return root
