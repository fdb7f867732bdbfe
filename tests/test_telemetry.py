"""Drift telemetry on synthetic frames with known answers, the JSON/plot outputs, the drift policy, the node."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stream_r1.config import StreamConfig
from stream_r1.stream import StreamSession
from stream_r1.telemetry import METRICS, DriftPolicy, DriftTelemetry, analyze

ROOT = Path(__file__).resolve().parents[1]
H, W = 48, 64




def texture(seed, h=H, w=W, cell=4):
    """A smooth random RGB texture [3, h, w] in [0.2, 0.8] (random values every `cell` pixels, bilinear)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 3, h // cell, w // cell, generator=g), size=(h, w), mode="bilinear",
                      align_corners=False)[0]
    return 0.2 + 0.6 * x


def panning(seed, t, start=0):
    """t frames of a texture sliding 1 px per frame (continuous motion across chunk boundaries)."""
    big = texture(seed, H, W + 200, cell=8)
    return torch.stack([big[:, :, start + i: start + i + W] for i in range(t)])


def chunks(video, first=9, rest=12):
    out, s, n = [], 0, first
    while s < video.shape[0]:
        out.append(video[s:s + n])
        s, n = s + n, rest
    return out


def test_colour_shift_gives_drift_and_nothing_else():
    base = texture(0)
    tel = DriftTelemetry()
    tel.update(base.expand(9, -1, -1, -1))
    shifted = base.clone()
    shifted[0] += 0.1                                          # red +0.1
    r = tel.update(shifted.expand(12, -1, -1, -1))
    assert r["color_drift"] == pytest.approx(0.1, abs=1e-5)
    assert r["exposure_drift"] == pytest.approx(0.299 * 0.1, abs=1e-5)
    assert r["sharpness_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert r["motion"] == 0 and r["flicker"] == pytest.approx(0, abs=1e-6)
    assert tel.records[0]["color_drift"] == 0 and tel.records[0]["seam"] is None


def test_static_clip_has_zero_motion_flicker_and_seam_and_repeats():
    tel = analyze(texture(1).expand(9 + 12 * 5, -1, -1, -1))
    for r in tel.records:
        assert r["motion"] == 0 and r["flicker"] == pytest.approx(0, abs=1e-6)
        assert r["color_drift"] == pytest.approx(0, abs=1e-6)
        assert r["seam"] in (None, 0.0)
    assert [r["repetition"] for r in tel.records][3:] == pytest.approx([1.0] * 3)   # a frozen stream "loops"
    assert tel.summary()["visible_seams"] == 0


def test_hard_cut_gives_a_seam_spike():
    video = torch.cat([panning(2, 33), panning(3, 36, start=50)])   # a cut at frame 33 = the start of chunk 3
    tel = analyze(video)
    seams = [r["seam"] for r in tel.records]
    assert seams[0] is None and all(0.5 < s < 1.5 for s in seams[1:3] + seams[4:])
    assert seams[3] > 3 * max(seams[1:3] + seams[4:])
    assert tel.summary()["visible_seams"] == 1
    assert all(r["motion"] > 0 for r in tel.records)


def test_repetition_finds_the_loop():
    parts = [texture(10 + i).expand(9 if i == 0 else 12, -1, -1, -1) for i in range(5)]
    parts.append(texture(11).expand(12, -1, -1, -1))             # chunk 5 repeats chunk 1
    tel = analyze(torch.cat(parts))
    rep = [r["repetition"] for r in tel.records]
    assert rep[:3] == [None, None, None]
    assert rep[5] == pytest.approx(1.0) and tel.records[5]["repeat_of"] == 1
    assert max(rep[3:5]) < 0.6


def test_blur_lowers_sharpness_and_flicker_is_measured():
    base = texture(4) + 0.1 * torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
    blurred = F.avg_pool2d(base[None], 5, stride=1, padding=2, count_include_pad=False)[0]
    tel = DriftTelemetry()
    tel.update(base.expand(9, -1, -1, -1))
    assert tel.update(blurred.expand(12, -1, -1, -1))["sharpness_ratio"] < 0.3
    flicker = torch.stack([base if i % 2 else base.flip(-1) for i in range(12)])
    assert tel.update(flicker)["flicker"] > 0.2


def test_json_plot_and_callbacks(tmp_path):
    seen = []
    tel = DriftTelemetry(callbacks=[seen.append])
    for c in chunks(panning(5, 45)):
        tel.update(c[None])                                      # [B, T, 3, H, W] works too
    tel.mark(2, "flush")
    path = tel.save(tmp_path / "drift.json")
    data = json.loads(path.read_text())
    assert data["format"] == "stream_r1.telemetry" and set(METRICS) <= set(data["metrics"])
    assert [c["chunk"] for c in data["chunks"]] == [0, 1, 2, 3] and len(seen) == 4
    assert [c["start_frame"] for c in data["chunks"]] == [0, 9, 21, 33] and data["chunks"][1]["seconds"] == 9 / 16
    assert data["events"] == [{"chunk": 2, "action": "flush"}] and data["analysis_size"] == [48, 64]
    from PIL import Image
    img = Image.open(tmp_path / "drift.png")
    assert img.size[0] == 960 and img.mode == "RGB"
    assert tel.plot().shape == (img.size[1], 960, 3)


def test_state_round_trip_continues_the_same_records():
    video = panning(6, 9 + 12 * 6)
    whole = analyze(video)
    parts = chunks(video)
    a = DriftTelemetry()
    for c in parts[:3]:
        a.update(c)
    tensors, meta = a.state_dict()
    b = DriftTelemetry()
    b.load_state_dict(tensors, json.loads(json.dumps(meta)))
    for c in parts[3:]:
        b.update(c)
    assert b.records == whole.records


def test_policy_fires_above_the_threshold_with_a_cooldown():
    class FakeSession:
        calls = 0

        def refresh_sink(self):
            self.calls += 1
            return True

    s = FakeSession()
    tel = DriftTelemetry()
    policy = DriftPolicy(s, threshold=0.05, cooldown=3, telemetry=tel)
    tel.callbacks.append(policy)
    base = texture(7)
    for i in range(8):
        x = base.clone()
        x[1] += 0.02 * i                                         # green creeps up 0.02 per chunk
        tel.update(x.expand(12, -1, -1, -1))
    assert policy.fired == [3, 6] and s.calls == 2              # 0.06 > 0.05 at chunk 3, then every 3 chunks
    assert [e["action"] for e in tel.events] == ["refresh_sink", "refresh_sink"]
    with pytest.raises(ValueError, match="drift action"):
        DriftPolicy(s, action="panic")


def test_policy_refreshes_a_real_sink(tiny_model):
    from stream_r1.vae import StreamingDecoder, VAEConfig, WanVAE

    torch.manual_seed(0)
    vae = WanVAE(VAEConfig.tiny()).eval()
    s = StreamSession(tiny_model, StreamConfig.stream_r1(), torch.randn(1, 9, 32), height=32, width=48,
                      decoder=StreamingDecoder(vae))
    tel = DriftTelemetry(session=s)
    tel.callbacks.append(DriftPolicy(s, threshold=0.0, cooldown=2, telemetry=tel))
    list(s.run(6, on_chunk=tel.on_chunk))
    assert [w["chunk"] for w in s.switches if w["action"] == "refresh_sink"] == [2, 4, 6]
    marked = [e for e in tel.events if e["action"] == "refresh_sink"]
    assert [e["chunk"] for e in marked] == [2, 4] and marked[0]["metric"] == "color_drift"      # chunk 6: no frames yet


def test_telemetry_node_returns_a_plot_and_json():
    name = "custom_nodes_x_stream_r1_telemetry_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
        cls = mod.NODE_CLASS_MAPPINGS["StreamR1Telemetry"]
        image = panning(8, 33).permute(0, 2, 3, 1)                # IMAGE [T, H, W, 3]
        with torch.inference_mode():
            plot, text = getattr(cls(), cls.FUNCTION)(frames=image, first_chunk_frames=9, chunk_frames=12, fps=16.0)
        assert plot.shape[0] == 1 and plot.shape[-1] == 3 and 0 <= plot.min() and plot.max() <= 1
        data = json.loads(text)
        assert [c["frames"] for c in data["chunks"]] == [9, 12, 12]
    finally:
        for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[k]
