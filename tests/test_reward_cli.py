"""`python -m stream_r1 saliency` end to end on a synthetic tiny VideoReward, and the picture helpers."""
import argparse
import json
import struct
import zlib

import pytest
import torch

from stream_r1.reward import visualize as vis
from stream_r1.reward.cli import add_saliency_parser, run_saliency
from stream_r1.reward.synthetic import write_synthetic_checkpoint
from stream_r1.video_io import VideoWriter, probe


def read_png(path) -> torch.Tensor:
    """Minimal decoder for our own 8-bit RGB, filter-0 PNGs -> [H, W, 3] uint8."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h = size
    raw = torch.frombuffer(bytearray(zlib.decompress(idat)), dtype=torch.uint8).view(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_writer_roundtrip(tmp_path):
    img = torch.rand(3, 5, 7)
    vis.write_png(tmp_path / "x.png", img)
    torch.testing.assert_close(read_png(tmp_path / "x.png"), vis.to_uint8_hwc(img))


def test_heatmaps_overlay_and_profile():
    maps = torch.zeros(2, 3, 4)
    maps[0, 1, 2] = 1.0
    heat = vis.heatmaps(maps, size=(6, 8), cmap="jet")
    assert heat.shape == (2, 3, 6, 8) and heat.min() >= 0 and heat.max() <= 1
    torch.testing.assert_close(vis.colorize(torch.tensor([[0.0, 1.0]])).squeeze(-2).T,
                               torch.tensor([[0.0, 0.0, 0.5], [0.5, 0.0, 0.0]]))
    over = vis.overlay(torch.ones(2, 3, 6, 8), heat, alpha=0.5)
    torch.testing.assert_close(over, 0.5 + 0.5 * heat)
    prof = vis.temporal_profile_image(torch.tensor([0.5, 1.5, 1.0]), highlight=[False, True, False], height=50,
                                      width=90)
    assert prof.shape == (3, 50, 90)
    red = (prof[0] > 0.8) & (prof[1] < 0.2)
    assert red.any() and red.nonzero()[:, 1].float().mean() > 30               # the middle bar is red
    sheet = vis.grid_image(torch.zeros(5, 3, 4, 4), cols=3, pad=1)
    assert sheet.shape == (3, 2 * 5 + 1, 3 * 5 + 1)
    per_frame = vis.latent_to_frames(torch.arange(3.0).view(3, 1, 1), 9, (2, 2))
    assert per_frame[:, 0, 0].tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]        # frame i <- latent ceil(i / 4)
    with pytest.raises(ValueError, match="cmap"):
        vis.colorize(torch.zeros(2, 2), "viridis")


def test_saliency_command_writes_pngs_and_an_overlay_video(tmp_path):
    write_synthetic_checkpoint(tmp_path / "rm", seed=2)
    video = tmp_path / "red_circle.mp4"
    g = torch.Generator().manual_seed(0)
    with VideoWriter(video, fps=16) as w:
        w.write(torch.rand(9, 3, 56, 84, generator=g), layout="tchw")
    parser = argparse.ArgumentParser()
    add_saliency_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(["saliency", "--video", str(video), "--out", str(out), "--reward-model",
                              str(tmp_path / "rm"), "--min-pixels", "784", "--quiet", "--dtype", "float32"])
    assert args.handler is run_saliency
    assert run_saliency(args) == 0
    for name in ("axis_VQ.png", "axis_MQ.png", "axis_TA.png", "w_intra.png", "temporal_profile.png"):
        assert read_png(out / name).shape[2] == 3
    report = json.loads((out / "scores.json").read_text())
    assert report["prompt"] == "red circle" and report["latent_shape"] == [3, 7, 10]
    assert report["sampling"] == "all/pad-last" and len(report["temporal_weights"]) == 3
    assert abs(sum(report["temporal_weights"]) / 3 - 1) < 1e-5
    assert set(report["scores"]) >= {"VQ", "MQ", "TA", "Overall"}
    info = probe(out / "overlay.mp4")
    assert info["frames"] == 9 and (info["width"], info["height"]) == (84, 56)
    with pytest.raises(FileNotFoundError):
        run_saliency(parser.parse_args(["saliency", "--video", str(tmp_path / "none.mp4"), "--reward-model",
                                        str(tmp_path / "rm")]))
