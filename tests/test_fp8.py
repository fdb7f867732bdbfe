"""fp8 weight option: storage, de-quantised CPU path, and its error against full precision."""
import torch

from stream_r1.config import StreamConfig
from stream_r1.stream import generate
from stream_r1.wan.fp8 import FP8Linear, quantize_fp8_, weight_bytes
from stream_r1.loaders import random_student
from stream_r1.config import WanConfig


def test_fp8_linear_equals_dequantised_linear():
    lin = torch.nn.Linear(64, 32)
    q = FP8Linear(lin)
    assert q.weight_fp8.dtype == torch.float8_e4m3fn
    x = torch.randn(5, 7, 64)
    ref = torch.nn.functional.linear(x, q.weight_fp8.float() * q.weight_scale, lin.bias)
    assert torch.allclose(q(x), ref, atol=1e-6)
    # e4m3 keeps ~2 significant digits: relative weight error a few percent at most
    err = (q.dequantized_weight(torch.float32) - lin.weight).norm() / lin.weight.norm()
    assert 0 < err < 0.05


def test_quantized_model_streams_close_to_full_precision():
    cfg = WanConfig.tiny()
    ref_model = random_student(cfg, seed=0)
    q_model = quantize_fp8_(random_student(cfg, seed=0))
    n_fp8 = sum(isinstance(m, FP8Linear) for m in q_model.modules())
    assert n_fp8 == 10 * cfg.num_layers
    assert weight_bytes(q_model) < weight_bytes(ref_model)
    ctx = torch.randn(1, 9, 32, generator=torch.Generator().manual_seed(0))
    sc = StreamConfig.stream_r1()
    a, _ = generate(ref_model, ctx, sc, 9, height=32, width=48, seed=1)
    b, _ = generate(q_model, ctx, sc, 9, height=32, width=48, seed=1)
    rel = ((a - b).norm() / a.norm()).item()
    assert 0 < rel < 0.1
