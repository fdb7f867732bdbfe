"""VideoWriter / read_video / probe on small synthetic clips (CPU, a few seconds)."""
import inspect
import os
import signal
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from stream_r1.video_io import VideoWriter, probe, read_video

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_MEAN_ABS_ERROR = 8 / 255


def smooth_clip(t: int, h: int = 48, w: int = 64) -> np.ndarray:
    """[T, H, W, 3] float32 in [0, 1]: slowly moving sinusoids, easy for any codec."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    r = 0.5 + 0.4 * np.sin(xx / 10 + tt / 5)
    g = 0.5 + 0.4 * np.cos(yy / 9)
    b = (xx + yy) / (h + w)
    return np.stack([r, g, b], axis=-1).astype(np.float32)


def mean_abs_error(decoded: np.ndarray, frames: np.ndarray) -> float:
    return float(np.abs(decoded.astype(np.float32) / 255 - frames).mean())


@pytest.mark.parametrize("name, codec", [("clip.mp4", "auto"), ("clip.mkv", "auto"), ("clip.mp4", "mpeg4")])
def test_round_trip_in_several_writes(tmp_path, name, codec):
    frames = smooth_clip(40)
    path = tmp_path / name
    with VideoWriter(path, fps=16, codec=codec) as writer:
        writer.write(torch.from_numpy(frames[:17]))
        writer.write(torch.from_numpy(frames[17:30]))
        writer.write(frames[30:])
        assert writer.frames_written == 40
    info = probe(path)
    assert (info["frames"], info["fps"], info["width"], info["height"]) == (40, 16.0, 64, 48)
    decoded = read_video(path)
    assert decoded.shape == (40, 48, 64, 3) and decoded.dtype == np.uint8
    assert mean_abs_error(decoded, frames) < MAX_MEAN_ABS_ERROR


def test_webm_round_trip(tmp_path):
    if "libvpx-vp9" not in av.codecs_available:
        pytest.skip("PyAV build without libvpx-vp9")
    frames = smooth_clip(20)
    with VideoWriter(tmp_path / "clip.webm") as writer:
        writer.write(frames)
    assert probe(tmp_path / "clip.webm")["codec"] == "vp9"
    assert mean_abs_error(read_video(tmp_path / "clip.webm"), frames) < MAX_MEAN_ABS_ERROR


KILLED_WRITER = """
import os, signal, sys
import numpy as np
sys.path.insert(0, os.getcwd())
from stream_r1.video_io import VideoWriter
""" + inspect.getsource(smooth_clip) + """

writer = VideoWriter(sys.argv[1], fps=16, keyframe_interval=16)
for frame in smooth_clip(48):
    writer.write(frame[None])
print(writer.frames_written, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # die without close(): no trailer, encoder not drained
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("name", ["killed.mp4", "killed.mkv"])
def test_killed_job_leaves_playable_file(tmp_path, name):
    path = tmp_path / name
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert result.stdout.strip() == "48"
    # Plain PyAV, no help from read_video: the partial file opens and decodes like any other.
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) >= 32  # everything up to the last completed 16-frame fragment
    assert mean_abs_error(np.stack(decoded), smooth_clip(len(decoded))) < MAX_MEAN_ABS_ERROR


def test_uint8_and_tchw_inputs(tmp_path):
    frames = smooth_clip(16)
    frames_u8 = (frames * 255).round().astype(np.uint8)
    with VideoWriter(tmp_path / "u8.mp4") as writer:
        writer.write(frames_u8)
    with VideoWriter(tmp_path / "tchw.mp4") as writer:
        writer.write(torch.from_numpy(frames).permute(0, 3, 1, 2), layout="tchw")  # [T, 3, H, W]
    for name in ("u8.mp4", "tchw.mp4"):
        decoded = read_video(tmp_path / name)
        assert decoded.shape == (16, 48, 64, 3)
        assert mean_abs_error(decoded, frames) < MAX_MEAN_ABS_ERROR


def test_odd_size_is_padded_to_even(tmp_path):
    frames = smooth_clip(16, h=47, w=63)
    with VideoWriter(tmp_path / "odd.mp4") as writer:
        writer.write(frames)
    info = probe(tmp_path / "odd.mp4")
    assert (info["width"], info["height"]) == (64, 48)
    decoded = read_video(tmp_path / "odd.mp4")
    assert mean_abs_error(decoded[:, :47, :63], frames) < MAX_MEAN_ABS_ERROR
    assert mean_abs_error(decoded[:, 47:, :63], frames[:, 46:47]) < MAX_MEAN_ABS_ERROR  # repeated last row


@pytest.mark.parametrize("frames, layout, match", [
    (np.zeros((2, 16, 16, 4), np.float32), "thwc", r"\[T, H, W, 3\] RGB"),
    (np.zeros((16, 16, 3), np.float32), "thwc", r"frames\[None\]"),
    (np.zeros((2, 3, 16, 16), np.float32), "thwc", r"looks like layout='tchw'"),
    (np.zeros((2, 16, 16, 3), np.float32), "tchw", r"looks like layout='thwc'"),
    (np.zeros((2, 16, 16, 3), np.int16), "thwc", r"float in \[0, 1\] or uint8"),
    (np.zeros((2, 16, 16, 3), np.float32), "hwc", r"layout must be"),
    ([[0.0]], "thwc", r"torch.Tensor or np.ndarray"),
])
def test_bad_frames_raise_value_error(tmp_path, frames, layout, match):
    with VideoWriter(tmp_path / "bad.mp4") as writer:
        with pytest.raises(ValueError, match=match):
            writer.write(frames, layout=layout)


def test_size_is_fixed_and_misuse_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoWriter(tmp_path / "missing" / "out.mp4")
    with pytest.raises(ValueError, match="extension"):
        VideoWriter(tmp_path / "out.gif")
    with pytest.raises(ValueError, match="not available"):
        VideoWriter(tmp_path / "out.mp4", codec="no-such-codec")
    with pytest.raises(ValueError, match="height=32"):
        VideoWriter(tmp_path / "given.mp4", width=16, height=32).write(smooth_clip(1, h=16, w=16))
    writer = VideoWriter(tmp_path / "out.mp4")
    writer.write(smooth_clip(2, h=16, w=16))
    with pytest.raises(ValueError, match="fixed by the first write"):
        writer.write(smooth_clip(2, h=32, w=16))
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(smooth_clip(2, h=16, w=16))
    assert read_video(tmp_path / "out.mp4").shape == (2, 16, 16, 3)


def test_closed_before_any_write_leaves_no_file(tmp_path):
    with VideoWriter(tmp_path / "empty.mp4"):
        pass
    assert not os.path.exists(tmp_path / "empty.mp4")
