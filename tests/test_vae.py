"""Wan2.1 VAE: real key layout, encode/decode shapes, exact streaming decode, loading, latent normalisation."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from stream_r1.vae import (
    LATENT_MEAN,
    LATENT_STD,
    StreamingDecoder,
    VAEConfig,
    WanVAE,
    denormalize,
    is_wan21_vae_state_dict,
    load_vae,
    normalize,
)

H, W = 16, 24  # pixels -> latent 2x3


def _assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a - b).abs()
    assert diff.max() <= atol, f"max diff {diff.max():.3g}, mean {diff.mean():.3g}"



@pytest.fixture(scope="module")
def vae() -> WanVAE:
    """Tiny VAE with seeded random weights (gammas and biases perturbed too, so no parameter is trivial)."""
    torch.manual_seed(0)
    model = WanVAE(VAEConfig.tiny()).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.05)
    return model


def _latents(frames: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, frames, H // 8, W // 8, generator=g)


# ---- architecture --------------------------------------------------------------------------------------------------
def test_real_config_matches_checkpoint_layout() -> None:
    with torch.device("meta"):
        model = WanVAE(VAEConfig.wan21())
    sd = model.state_dict()
    assert len(sd) == 194
    assert sum(t.numel() for t in sd.values()) == 126_892_531
    expected = {
        "decoder.middle.0.residual.0.gamma": (384, 1, 1, 1),
        "decoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
        "decoder.middle.1.norm.gamma": (384, 1, 1),
        "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
        "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
        "decoder.head.2.weight": (3, 96, 3, 3, 3),
        "encoder.head.2.weight": (32, 384, 3, 3, 3),
        "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
        "conv1.weight": (32, 32, 1, 1, 1),
        "conv2.weight": (16, 16, 1, 1, 1),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert {k.split(".")[0] for k in sd} == {"encoder", "conv1", "conv2", "decoder"}
    assert (model.encoder.num_slots, model.decoder.num_slots) == (24, 32)
    assert VAEConfig.from_state_dict(sd) == VAEConfig.wan21()


def test_tiny_config_counts() -> None:
    sd = WanVAE(VAEConfig.tiny()).state_dict()
    assert len(sd) == 194
    assert sum(t.numel() for t in sd.values()) == 924_491
    assert VAEConfig.from_state_dict(sd) == VAEConfig.tiny()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="z_dim must be 16"):
        VAEConfig(z_dim=48)
    with pytest.raises(ValueError, match="even"):
        VAEConfig(dim=7)


# ---- encode / decode -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames, latent_frames", [(1, 1), (5, 2), (9, 3)])
def test_encode_decode_shapes(vae: WanVAE, frames: int, latent_frames: int) -> None:
    video = torch.rand(2, 3, frames, H, W) * 2 - 1
    z = vae.encode(video)
    assert z.shape == (2, 16, latent_frames, H // 8, W // 8) and z.dtype == torch.float32
    out = vae.decode(z)
    assert out.shape == video.shape
    assert out.abs().max() <= 1.0 and out.std() > 0.05


def test_encode_is_normalised_mu(vae: WanVAE) -> None:
    video = torch.rand(1, 3, 5, H, W) * 2 - 1
    cache = [None] * vae.encoder.num_slots
    mu = torch.cat([vae.conv1(vae.encoder(video[:, :, :1], cache)), vae.conv1(vae.encoder(video[:, :, 1:], cache))], 2)
    _assert_close(vae.encode(video), normalize(mu[:, :16]))


@pytest.mark.parametrize("frames, hint", [(6, "5 or 9"), (4, "1 or 5"), (0, "use 1")])
def test_bad_frame_count_names_valid_counts(vae: WanVAE, frames: int, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        vae.encode(torch.zeros(1, 3, frames, H, W))


@pytest.mark.parametrize(
    "h, w, hint", [(20, 24, "height .* use 16 or 24"), (16, 30, "width .* use 24 or 32"), (4, 24, "use 8")]
)
def test_bad_size_names_valid_size(vae: WanVAE, h: int, w: int, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        vae.encode(torch.zeros(1, 3, 5, h, w))


def test_encoder_chunking_matches_one_pass(vae: WanVAE) -> None:
    """Frames after the first may go through the encoder 4 at a time or all at once: checks the causal history."""
    video = torch.rand(1, 3, 13, H, W) * 2 - 1
    per_chunk, one_pass = [None] * vae.encoder.num_slots, [None] * vae.encoder.num_slots
    a = [vae.encoder(video[:, :, :1], per_chunk)] + [vae.encoder(video[:, :, s:s + 4], per_chunk) for s in (1, 5, 9)]
    b = [vae.encoder(video[:, :, :1], one_pass), vae.encoder(video[:, :, 1:], one_pass)]
    _assert_close(torch.cat(a, 2), torch.cat(b, 2), atol=1e-5)


# ---- streaming decode ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", [[1, 3, 3, 3], [3, 3, 3, 1], [2, 5, 1, 2], [1] * 10, [10]])
def test_streaming_decode_equals_full_decode(vae: WanVAE, split: list[int]) -> None:
    z = _latents(10, batch=2)
    full = vae.decode(z)  # [2, 3, 37, H, W]
    dec = StreamingDecoder(vae)
    chunks, start = [], 0
    for n in split:
        chunks.append(dec.decode(z[:, :, start:start + n]))
        assert chunks[-1].shape[2] == 4 * n - (3 if start == 0 else 0)
        start += n
    assert dec.video_frames == full.shape[2] == 37
    assert torch.equal(torch.cat(chunks, 2), full)  # every op sees the same shapes: bitwise equal


def test_decoder_history_matches_multi_frame_call(vae: WanVAE) -> None:
    """Independent check of the cache: after the first latent, one decoder call over several latent frames
    (causal convs over the whole sequence) equals one call per frame."""
    x = vae.conv2(denormalize(_latents(4)))
    per_frame, one_pass = [None] * vae.decoder.num_slots, [None] * vae.decoder.num_slots
    a = [vae.decoder(x[:, :, i:i + 1], per_frame, first=i == 0) for i in range(4)]
    b = [vae.decoder(x[:, :, :1], one_pass, first=True), vae.decoder(x[:, :, 1:], one_pass, first=False)]
    _assert_close(torch.cat(a, 2), torch.cat(b, 2), atol=1e-5)


def test_streaming_cache_has_constant_size(vae: WanVAE) -> None:
    dec = StreamingDecoder(vae)
    z = _latents(24)
    sizes = []
    for i in range(0, 24, 3):
        dec.decode(z[:, :, i:i + 3])
        assert len(dec.cache) == 32 and all(t is not None for t in dec.cache)
        sizes.append([tuple(t.shape) for t in dec.cache])
    assert all(s == sizes[0] for s in sizes)
    assert all(shape[2] == 2 for shape in sizes[0])  # a 2-frame history per temporal conv


def test_streaming_state_save_resume_and_shared_vae(vae: WanVAE) -> None:
    z1, z2 = _latents(7, seed=1), _latents(7, seed=2)
    full1, full2 = vae.decode(z1), vae.decode(z2)
    a, b = StreamingDecoder(vae), StreamingDecoder(vae)  # two interleaved streams on one VAE
    out_a, out_b = [a.decode(z1[:, :, :3])], [b.decode(z2[:, :, :3])]
    resumed = StreamingDecoder(vae)
    resumed.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    out_b.append(b.decode(z2[:, :, 3:]))
    out_a.append(a.decode(z1[:, :, 3:]))
    _assert_close(torch.cat(out_a, 2), full1)
    _assert_close(torch.cat(out_b, 2), full2)
    _assert_close(resumed.decode(z1[:, :, 3:]), out_a[1])
    with pytest.raises(ValueError, match="StreamingDecoder state"):
        resumed.load_state_dict({"cache.0": torch.zeros(1)})


def test_streaming_rejects_mismatched_chunk_until_reset(vae: WanVAE) -> None:
    dec = StreamingDecoder(vae)
    dec.decode(_latents(2))
    with pytest.raises(ValueError, match="reset"):
        dec.decode(torch.randn(1, 16, 1, 3, 3))
    dec.reset()
    assert dec.decode(torch.randn(1, 16, 1, 3, 3)).shape == (1, 3, 1, 24, 24)


# ---- loading -------------------------------------------------------------------------------------------------------
def _save(sd: dict[str, torch.Tensor], path, dtype: torch.dtype, prefix: str = "") -> None:
    sd = {prefix + k: v.to(dtype).contiguous() for k, v in sd.items()}
    if str(path).endswith(".safetensors"):
        save_file(sd, str(path))
    else:
        torch.save(sd, path)


@pytest.mark.parametrize(
    "name, dtype, prefix",
    [("vae.pth", torch.float32, ""), ("vae.safetensors", torch.float16, ""), ("vae.safetensors", torch.bfloat16, ""),
     ("vae.pth", torch.bfloat16, "model."), ("vae.safetensors", torch.float32, "model.")],
)
def test_load_round_trip(vae: WanVAE, tmp_path, name: str, dtype: torch.dtype, prefix: str) -> None:
    src = vae.state_dict()
    _save(src, tmp_path / name, dtype, prefix)
    loaded = load_vae(tmp_path / name)
    assert loaded.cfg == VAEConfig.tiny() and not loaded.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in loaded.parameters())
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, src[k].to(dtype).float()), k
    if dtype == torch.float32:
        z = _latents(3)
        assert torch.equal(loaded.decode(z), vae.decode(z))


def test_load_from_state_dict_with_dtype(vae: WanVAE) -> None:
    loaded = load_vae({"model." + k: v for k, v in vae.state_dict().items()}, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.device == torch.device("cpu")
    out = loaded.decode(_latents(2))
    assert out.dtype == torch.bfloat16
    _assert_close(out.float(), vae.decode(_latents(2)), atol=0.1)


def test_load_rejects_other_checkpoints(tmp_path) -> None:
    dit = {"blocks.0.self_attn.q.weight": torch.zeros(2, 2), "patch_embedding.weight": torch.zeros(2, 16, 1, 2, 2)}
    torch.save(dit, tmp_path / "dit.pth")
    with pytest.raises(ValueError, match="DiT .* Wan2.1 VAE"):
        load_vae(tmp_path / "dit.pth")
    wan22 = {"decoder.middle.0.residual.0.gamma": torch.ones(4, 1, 1, 1),
             "decoder.upsamples.0.upsamples.0.residual.2.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="Wan2.2 VAE"):
        load_vae(wan22)
    assert not is_wan21_vae_state_dict(dit) and not is_wan21_vae_state_dict(wan22)


def test_load_lists_missing_unexpected_and_wrong_shapes(vae: WanVAE) -> None:
    sd = dict(vae.state_dict())
    assert is_wan21_vae_state_dict(sd) and is_wan21_vae_state_dict({"model." + k: v for k, v in sd.items()})
    del sd["decoder.head.2.bias"]
    sd["decoder.extra.weight"] = torch.zeros(1)
    sd["conv2.weight"] = torch.zeros(16, 16, 3, 1, 1)
    expected = r"missing \(1\).*decoder.head.2.bias.*unexpected.*decoder.extra.weight.*wrong shape.*conv2.weight"
    with pytest.raises(ValueError, match=expected):
        load_vae(sd)


# ---- latent normalisation ------------------------------------------------------------------------------------------
def test_latent_constants_match_spec() -> None:  # spec-models.md §4.2
    assert LATENT_MEAN == (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                           0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
    assert LATENT_STD == (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                          3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


def test_normalize_denormalize_inverse() -> None:
    mu = torch.randn(2, 16, 3, 4, 5) * 3
    z = normalize(mu)
    _assert_close(denormalize(z), mu, atol=1e-5)
    _assert_close(z[:, 7], (mu[:, 7] - 1.5508) / 2.0743, atol=1e-6)
    assert WanVAE.normalize is normalize
    with pytest.raises(ValueError, match="16"):
        normalize(torch.zeros(1, 48, 1, 2, 2))


# ---- channels-last layout and the compact stream state -------------------------------------------------------------
def test_channels_last_decode_equals_the_default_layout(vae: WanVAE) -> None:
    """NDHWC weights give the same frames, the stream state comes out NDHWC, and a saved NCDHW state resumes in it."""
    import copy
    z = _latents(7)
    ref = StreamingDecoder(vae)
    ref_frames = [ref.decode(z[:, :, :3]), ref.decode(z[:, :, 3:])]
    cl = copy.deepcopy(vae).to_channels_last()
    assert vae.memory_format == torch.contiguous_format and cl.memory_format == torch.channels_last_3d
    dec = StreamingDecoder(cl)
    first = dec.decode(z[:, :, :3])
    _assert_close(first, ref_frames[0], atol=1e-5)
    resumed = StreamingDecoder(cl)
    resumed.load_state_dict({k: v.contiguous() for k, v in dec.state_dict().items()})   # as a state file holds it
    assert all(t.is_contiguous(memory_format=torch.channels_last_3d) for t in resumed.cache if t.shape[1] > 1)
    _assert_close(resumed.decode(z[:, :, 3:]), ref_frames[1], atol=1e-5)
    half = copy.deepcopy(cl).to(torch.bfloat16)       # bf16 convs honour NDHWC on the CPU too (fp32 ones do not)
    dec = StreamingDecoder(half)
    dec.decode(z[:, :, :3])
    assert all(t.is_contiguous(memory_format=torch.channels_last_3d) for t in dec.cache)


def test_own_tail_is_a_compact_copy_in_eager_compiled_and_autograd() -> None:
    from stream_r1.ops import own_tail
    x = torch.randn(1, 4, 6, 3, 5).to(memory_format=torch.channels_last_3d)     # [B, C, T, H, W] NDHWC
    tail = own_tail(x, 2, 2)
    assert torch.equal(tail, x[:, :, -2:])
    assert tail.untyped_storage().nbytes() == tail.numel() * tail.element_size()   # not a view of x
    assert tail.stride() == x[:, :, -2:].stride()                                  # the layout is kept

    def step(h: torch.Tensor):                                 # a causal conv's state update, as inductor sees it
        h = torch.nn.functional.silu(h)
        return h * 2, own_tail(h, 2, 2)
    out, state = torch.compile(step, fullgraph=True)(x)
    assert torch.allclose(state, torch.nn.functional.silu(x)[:, :, -2:])
    assert state.untyped_storage().nbytes() == state.numel() * state.element_size()
    x.requires_grad_(True)
    (own_tail(x, 2, 2) * 3).sum().backward()
    want = torch.zeros_like(x)
    want[:, :, -2:] = 3
    assert torch.equal(x.grad, want)


@pytest.mark.parametrize("channels_last", [False, True])
def test_causal_conv_on_the_cpu_takes_onednn_and_equals_the_plain_conv(monkeypatch, channels_last):
    """fp32 on the CPU, CausalConv3d calls oneDNN's convolution (PyTorch's own dispatch picks its slow im2col kernel at
    batch 1): same output and gradients as F.conv3d of the causally padded input, first call and with history."""
    import torch.nn.functional as F

    from stream_r1 import vae as vae_mod
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    calls = []
    real = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *a: calls.append(a[0].shape) or real(*a))
    conv = vae_mod.CausalConv3d(6, 5, 3)
    conv.slot = 0
    if channels_last:
        conv.to(memory_format=torch.channels_last_3d)
    g = torch.Generator().manual_seed(0)
    for b in (1, 2):
        x1, x2 = torch.randn(b, 6, 1, 7, 9, generator=g), torch.randn(b, 6, 4, 7, 9, generator=g, requires_grad=True)
        cache = [None]
        y1, y2 = conv(x1, cache), conv(x2, cache)                                  # [b, 5, 1, 7, 9], [b, 5, 4, 7, 9]
        full = F.pad(torch.cat([x1, x2], 2), (0, 0, 0, 0, 2, 0))                      # zero history, then the frames
        ref = F.conv3d(full, conv.weight, conv.bias, padding=(0, 1, 1))             # [b, 5, 5, 7, 9]
        torch.testing.assert_close(torch.cat([y1, y2], 2), ref, atol=1e-5, rtol=0)
        gy, gr = torch.autograd.grad(y2.square().sum(), x2)[0], torch.autograd.grad(ref[:, :, 1:].square().sum(), x2)[0]
        torch.testing.assert_close(gy, gr, atol=1e-4, rtol=1e-5)
    assert len(calls) == 4
    assert vae_mod.channels_last_pays("cpu", torch.float32) and vae_mod.channels_last_pays("cuda", torch.bfloat16)
    assert not vae_mod.channels_last_pays("cpu", torch.bfloat16)
