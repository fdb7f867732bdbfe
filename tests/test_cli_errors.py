"""The command line's error path: a user error is one line on stderr and exit status 2, found before any model loads;
an interrupted stream exits 128 + the signal after finishing its files."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stream_r1.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["generate", "--width", "48", "--height", "32", "--device", "cpu", "--quiet"]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_r1", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading any model fails the test: the refusals under test must come before."""
    import stream_r1.loaders as loaders
    import stream_r1.shapes.bundle as bundle

    def loaded(*a, **k):
        raise AssertionError("a model was loaded before the request was refused")

    for owner, name in ((loaders, "load_student"), (loaders, "random_student"), (bundle, "load_bundle")):
        monkeypatch.setattr(owner, name, loaded)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---- bad values -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,msg", [
    (["--seconds", "inf"], "--seconds: must be a positive, finite number of seconds, got inf"),
    (["--seconds", "nan"], "--seconds: must be a positive, finite number of seconds, got nan"),
    (["--seconds", "-5"], "--seconds: must be a positive, finite number of seconds, got -5"),
    (["--seconds", "0"], "--seconds: must be a positive, finite number of seconds, got 0"),
    (["--seconds", "five"], "--seconds: must be a number of seconds, got 'five'"),
    (["--frames", "0"], "--frames: must be a positive integer, got 0"),
    (["--frames", "20"], "num_frames must be 4k+1"),
    (["--width", "0"], "--width: must be a positive integer, got 0"),
    (["--height", "-16"], "--height: must be a positive integer, got -16"),
    (["--width", "50"], "width must be a positive multiple of 16, got 50; try 48"),
    (["--window", "0"], "--window: must be a positive integer, got 0"),
    (["--window", "4"], "window_frames (4) must leave room for one chunk"),
    (["--sink", "-1"], "--sink: must be an integer >= 0, got -1"),
    (["--save-state-every", "-1"], "--save-state-every: must be an integer >= 0"),
    (["--num-heads", "0"], "--num-heads: must be a positive integer"),
    (["--tts-beams", "0"], "--tts-beams: must be a positive integer"),
    (["--tts-rho", "nan"], "--tts-rho: must be a finite number"),
    (["--drift-refresh", "inf"], "--drift-refresh: must be a positive, finite number"),
    (["--denoising-steps", "1000,nan"], "denoising step nan is outside (0, 1000]"),
    (["--device", "tpu9"], "--device 'tpu9' is not a device"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_values_are_one_line_and_exit_2_before_loading(tmp_path, capsys, no_model_load, args, msg):
    assert main([*SMALL, "--out", str(tmp_path / "x.mp4"), *args]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert msg in line
    assert not (tmp_path / "x.mp4").exists()


def test_a_bad_flag_of_any_command_is_one_line(capsys):
    assert main(["inspect"]) == 2
    assert "the following arguments are required: file" in _one_error_line(capsys.readouterr().err)
    assert main(["no-such-command"]) == 2
    assert "invalid choice" in _one_error_line(capsys.readouterr().err)


def test_process_exit_status_stderr_and_debug(tmp_path):
    """In a real process: exit status 2, one line on stderr; --debug adds the traceback."""
    r = _cli(*SMALL, "--seconds", "inf", "--out", str(tmp_path / "x.mp4"))
    assert r.returncode == 2 and "--seconds" in _one_error_line(r.stderr)
    r = _cli(*SMALL, "--frames", "20", "--out", str(tmp_path / "x.mp4"))
    assert r.returncode == 2 and "num_frames must be 4k+1" in _one_error_line(r.stderr)
    r = _cli(*SMALL, "--frames", "20", "--out", str(tmp_path / "x.mp4"), "--debug")
    assert "Traceback" in r.stderr and "ValueError: num_frames must be 4k+1" in r.stderr


def test_system_exit_messages_exit_2(tmp_path, capsys, no_model_load):
    """`raise SystemExit("error: ...")` inside the CLI: the same single line, status 2 (Python would give 1)."""
    with pytest.raises(SystemExit) as e:
        main([*SMALL, "--out", str(tmp_path / "x.mp4"), "--timeline", str(tmp_path / "t.txt"), "--prompt", "0: a"])
    assert e.value.code == 2
    assert "not both" in _one_error_line(capsys.readouterr().err)
    r = _cli(*SMALL, "--out", str(tmp_path / "x.mp4"), "--timeline", str(tmp_path / "t.txt"), "--prompt", "0: a")
    assert r.returncode == 2 and "not both" in _one_error_line(r.stderr)


# ---- sizes and windows that cannot fit ------------------------------------------------------------------------------
@pytest.mark.parametrize("args,part", [
    (["--width", "8192", "--height", "8192"], "VAE decode"),
    (["--width", "100000"], "VAE decode"),
    (["--window", "1000000"], "use a smaller --window"),
    (["--cache-policy", "full", "--seconds", "100000"], "the full cache holds the whole video"),
])
def test_what_cannot_fit_is_refused_before_loading(tmp_path, capsys, no_model_load, args, part):
    gen = [a for a in SMALL if a not in ("--width", "48", "--height", "32")]
    assert main([*gen, "--out", str(tmp_path / "x.mp4"), *args]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "needs about" in line and "GiB" in line and "of RAM" in line and part in line, line


def test_memory_check_uses_the_checkpoint_header_and_the_device(tmp_path, capsys, monkeypatch, tiny_model,
                                                                no_model_load):
    """A checkpoint's config comes from its header (no weights read); the limit is the device's memory."""
    import stream_r1.limits as limits
    from stream_r1.checkpoint import save_dit_export

    save_dit_export(tmp_path / "m.safetensors", tiny_model.state_dict(), tiny_model.cfg)
    monkeypatch.setattr(limits, "device_memory", lambda device: (2 ** 20, "the test device has 1 MiB"))
    assert main([*SMALL, "--checkpoint", str(tmp_path / "m.safetensors"), "--no-decode"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "48x32 with a 9-frame KV cache (window_sink) needs about" in line and "the test device has 1 MiB" in line
    with pytest.raises(AssertionError, match="a model was loaded"):      # --no-memory-check goes on to the load
        main([*SMALL, "--checkpoint", str(tmp_path / "m.safetensors"), "--no-decode", "--no-memory-check"])


def test_estimate_of_the_real_model():
    """Wan2.1 1.3B at 832x480, bf16, window_sink (9 frames): the parts by hand."""
    from stream_r1.config import StreamConfig, WanConfig
    from stream_r1.limits import estimate_stream_memory

    mc, sc = WanConfig(), StreamConfig.stream_r1()
    est = estimate_stream_memory(mc, sc, 480, 832, dtype=torch.bfloat16, vae_dim=96)
    assert est.kv_cache == 2 * 30 * (9 * 1560 + 512) * 1536 * 2                  # 2.68 GB
    assert est.activations == 2 * 3 * 1560 * (8960 + 6 * 1536) * 2
    assert est.weights == mc.num_parameters() * 2
    assert est.decode == 57 * 96 * 480 * 832 * 2                                 # cache (~25) + working set (~32)
    assert 9e9 < est.total < 11e9
    full = estimate_stream_memory(mc, sc.replace(cache_policy="full", full_cache_frames=400_002), 480, 832,
                                  dtype=torch.bfloat16)
    assert full.kv_cache > 100 * 2 ** 40 and full.decode == 0 and full.largest == "kv_cache"


def test_device_memory_on_the_cpu():
    from stream_r1.limits import device_memory

    have, where = device_memory(torch.device("cpu"))
    assert 2 ** 28 < have <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") and "GiB" in where


# ---- outputs that cannot be written ----------------------------------------------------------------------------------
def _unwritable_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        return d
    d = Path("/sys")                      # sysfs: no new files, not even for root
    try:
        (d / "stream_r1_probe.mp4").open("ab").close()
    except OSError:
        return d
    pytest.skip("no unwritable folder available")


@pytest.mark.parametrize("case", ["missing folder", "read-only folder", "folder as file", "file as folder",
                                  "latents into a missing folder", "latents into a read-only folder"])
def test_unwritable_outputs_are_found_before_loading(tmp_path, capsys, no_model_load, case):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir.mp4").mkdir()
    out = ["--out", str(tmp_path / "x.mp4")]
    args = {
        "missing folder": lambda: ["--out", str(tmp_path / "nowhere" / "x.mp4")],
        "read-only folder": lambda: ["--out", str(_unwritable_dir(tmp_path) / "x.mp4")],
        "folder as file": lambda: ["--out", str(tmp_path / "a_dir.mp4")],
        "file as folder": lambda: ["--out", str(tmp_path / "a_file" / "x.mp4")],
        "latents into a missing folder": lambda: [*out, "--latents-out", str(tmp_path / "no" / "l.safetensors")],
        "latents into a read-only folder": lambda: [*out, "--latents-out",
                                                    str(_unwritable_dir(tmp_path) / "l.safetensors")],
    }[case]()
    assert main([*SMALL, "--frames", "9", *args]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert any(s in line for s in ("does not exist", "cannot be written", "is a folder")), line
    assert not (tmp_path / "x.mp4").exists()


# ---- interrupted streams ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_stream_with_128_plus_its_number(tmp_path, sig):
    """Ctrl-C / SIGTERM in a real process: the stream stops after the current chunk, the video is finished and
    playable, and the exit status says it was cut short (130 / 143), so scripts can tell."""
    from stream_r1.video_io import probe

    out = tmp_path / "x.mp4"
    p = subprocess.Popen([sys.executable, "-m", "stream_r1", *SMALL, "--seconds", "600", "--out", str(out),
                          "--latents-out", str(tmp_path / "l.safetensors")], cwd=ROOT, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 240
        while not (out.exists() and out.stat().st_size > 0):        # the first chunk reached the file
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else ""
            time.sleep(0.2)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + sig, err
    assert "Traceback" not in err
    frames = probe(out)["frames"]
    assert 9 <= frames < 600 * 16                                   # cut short
    lat = load_file(tmp_path / "l.safetensors")["latents"]
    assert lat.shape[1] == 1 + (frames - 1) // 4                     # as many latent frames as the video shows


def test_a_second_ctrl_c_aborts_at_once_and_exits_130(tmp_path, monkeypatch):
    """A KeyboardInterrupt inside a chunk: the files so far are finished, the exit status is 130."""
    from stream_r1.stream import StreamSession

    real = StreamSession._remember

    def interrupt_in_chunk_3(self, x0, start):
        if self.chunk_index == 2:
            raise KeyboardInterrupt
        real(self, x0, start)

    monkeypatch.setattr(StreamSession, "_remember", interrupt_in_chunk_3)
    rc = main([*SMALL, "--frames", "45", "--out", str(tmp_path / "x.mp4"),
               "--latents-out", str(tmp_path / "l.safetensors")])
    assert rc == 130
    assert load_file(tmp_path / "l.safetensors")["latents"].shape == (1, 6, 16, 4, 6)


def test_ctrl_c_before_the_stream_exits_130(tmp_path, capsys, monkeypatch):
    import stream_r1.shapes.bundle as bundle

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle, "load_bundle", interrupted)
    monkeypatch.setattr("stream_r1.loaders.random_student", interrupted)
    try:
        rc = main([*SMALL, "--frames", "9", "--out", str(tmp_path / "x.mp4")])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    assert rc == 130
    assert capsys.readouterr().err.strip() == "interrupted"


# ---- the streamed latents file ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
def test_streamed_latents_file_equals_one_save(tmp_path, batch):
    from stream_r1.cli import _LatentsOut

    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(batch, 3, 16, 4, 6, generator=g).to(torch.bfloat16) for _ in range(5)]
    w = _LatentsOut(str(tmp_path / "l.safetensors"), max_frames=13)
    for c in chunks:
        w.write(c)
    assert not (tmp_path / "l.safetensors").exists()                 # the final name appears only when finished
    w.close()
    got = load_file(tmp_path / "l.safetensors")["latents"]
    assert torch.equal(got, torch.cat(chunks, dim=1)[:, :13].float()) and w.shape == [batch, 13, 16, 4, 6]
    assert not (tmp_path / "l.safetensors.partial").exists()
    w = _LatentsOut(str(tmp_path / "m.safetensors"), max_frames=13)
    w.write(chunks[0])
    w.close(keep=False)
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "m.safetensors.partial").exists()
    assert math.prod(got.shape) == batch * 13 * 16 * 24
