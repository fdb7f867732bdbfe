"""Files the nodes write and read stay where they belong: output names never leave the output folder (Save State,
Generate to File), Load State opens only listed state files and its errors do not tell a present file from a missing
one, and a save sweeps the temporaries a killed writer left. Each test replays the attack or input; ComfyUI and
headless (no ComfyUI) are both covered."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import comfy_stubs as stubs
from helpers import tiny_context

ROOT = Path(__file__).resolve().parents[1]
PACK = "custom_nodes_x_stream_r1_state_security"


@pytest.fixture(scope="module")
def pack():
    from test_nodes import imported_pack
    yield from imported_pack(PACK)


@pytest.fixture
def host(pack):
    return sys.modules[PACK + ".nodes.host"]


@pytest.fixture(params=["comfyui", "headless"])
def where(request, tmp_path, monkeypatch):
    """(output folder, input folder) of ComfyUI (its modules stubbed) or of a headless run ($STREAM_R1_OUTPUT /
    $STREAM_R1_INPUT); the files a test may touch lie under tmp_path/root."""
    out, inp = tmp_path / "root" / "output", tmp_path / "root" / "input"
    if request.param == "comfyui":
        mods = stubs.build(tmp_path / "models", out, stubs.Recorder())
        stubs.add_input_directory(mods, inp)
        for name, mod in mods.items():
            monkeypatch.setitem(sys.modules, name, mod)
    else:
        assert "folder_paths" not in sys.modules
        monkeypatch.setenv("STREAM_R1_OUTPUT", str(out))
        monkeypatch.setenv("STREAM_R1_INPUT", str(inp))
        out.mkdir(parents=True)
        inp.mkdir(parents=True)
    return out.resolve(), inp.resolve()


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# ---- A: filename prefixes (Save State, Generate to File) -------------------------------------------------------
BAD_PREFIXES = {
    "../x": "leaves the output directory", "..": "leaves the output directory",
    "a/../../b": "leaves the output directory", "stream_r1/../../../etc/x": "leaves the output directory",
    "/abs/x": "absolute path", "//x": "absolute path", "\\x": "absolute path",
    "a\x00b": "control character", "x\n../../y": "control character", "\x00": "control character",
    "\ud800x": "not valid text", "n" * 300: "has a name of 300 bytes", "d" * 256 + "/x": "has a name of 256 bytes",
}


@pytest.mark.parametrize("prefix", list(BAD_PREFIXES), ids=lambda p: repr(p[:20]))
def test_prefixes_that_leave_the_output_folder_are_refused_in_one_line(host, where, tmp_path, prefix):
    out, _ = where
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=BAD_PREFIXES[prefix]) as e:
        host.save_path(prefix, "safetensors", 32, 32)
    msg = str(e.value)
    assert "\n" not in msg and ("e.g. 'stream_r1/video'" in msg or "use a shorter name" in msg)   # what to write
    assert _files(tmp_path) == before                                  # nothing created anywhere


@pytest.mark.parametrize("prefix, expect", [
    ("", "stream_r1/video_00001_.mp4"), (".", "stream_r1/video_00001_.mp4"), ("./", "stream_r1/video_00001_.mp4"),
    ("a/..", "stream_r1/video_00001_.mp4"), ("   ", "stream_r1/video_00001_.mp4"),
    ("shots/", "shots/video_00001_.mp4"), ("a/../b", "b_00001_.mp4"), ("./x/./y", "x/y_00001_.mp4"),
    ("x" * 200, "x" * 200 + "_00001_.mp4"), ("...", "..._00001_.mp4"), ("~/v", "~/v_00001_.mp4"),
])
def test_empty_and_dot_prefixes_take_the_default_name_inside_the_output_folder(host, where, prefix, expect):
    """Headless, "" / "." / "a/.." once named the output folder itself, so the file went to its parent."""
    out, _ = where
    path, ui = host.save_path(prefix, "mp4", 32, 32)
    assert Path(path) == out / expect
    folder = str(Path(expect).parent)
    assert ui == {"filename": Path(expect).name, "subfolder": "" if folder == "." else folder, "type": "output"}


def test_save_state_node_writes_its_default_name_for_an_empty_prefix(pack, where):
    out, _ = where
    state = type("State", (), {"size": (32, 48), "save": lambda self, path: Path(path).write_bytes(b"x") and path})()
    node = pack.NODE_CLASS_MAPPINGS["StreamR1SaveState"]()
    out_ = node.save(state, "")
    assert Path(out_["result"][0]) == out / "stream_r1" / "state_00001_.safetensors"
    assert out_["ui"]["text"] == ["stream_r1/state_00001_.safetensors"]       # a name, not the server's path
    with pytest.raises(ValueError, match="leaves the output directory"):
        node.save(state, "../../escaped")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.one_of(st.text(max_size=40), st.lists(st.sampled_from(["..", ".", "a", "/", "\\", "", "b.c", "\x00"]),
                                                       max_size=8).map("/".join)))
def test_any_prefix_is_refused_or_lands_inside_the_output_folder(host, where, tmp_path, prefix):
    out, _ = where
    outside = {p for p in _files(tmp_path) if not p.resolve().is_relative_to(out)}
    try:
        path, _ = host.save_path(prefix, "mp4", 32, 32)
    except ValueError as e:
        assert "\n" not in str(e)
    else:
        assert Path(os.path.abspath(path)).is_relative_to(out) and Path(path).name.endswith("_.mp4")
    assert {p for p in _files(tmp_path) if not p.resolve().is_relative_to(out)} == outside


# ---- B: Load State resolves names through a listing only ---------------------------------------------------------
@pytest.fixture
def planted(where, tmp_path):
    """State-like files inside the output and input folders, and secrets next to them that must stay out of reach."""
    out, inp = where
    for rel in ("stream_r1/state_00001_.safetensors", "fox.state.safetensors", "deep/er/x.safetensors",
                "stream_r1/notes.txt", "stream_r1/.state_00002_.safetensors.123-0123abcd.tmp"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"state")
    (inp / "cli.state.safetensors").write_bytes(b"state")
    secret = tmp_path / "root" / "secret.safetensors"
    secret.write_bytes(b"not for you")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "linked.safetensors").write_bytes(b"not for you either")
    (out / "link").symlink_to(elsewhere, target_is_directory=True)     # symlinked folders are not followed
    return out, inp, secret


def test_load_state_lists_state_files_of_the_output_and_input_folders(pack, planted):
    out, inp, _ = planted
    cls = pack.NODE_CLASS_MAPPINGS["StreamR1LoadState"]
    names = cls.INPUT_TYPES()["required"]["state_file"][0]
    assert names == ["deep/er/x.safetensors", "fox.state.safetensors", "stream_r1/state_00001_.safetensors",
                     "cli.state.safetensors [input]"]
    host = sys.modules[PACK + ".nodes.host"]
    assert host.resolve_state("stream_r1/state_00001_.safetensors") == str(out / "stream_r1" /
                                                                             "state_00001_.safetensors")
    assert host.resolve_state("cli.state.safetensors [input]") == str(inp / "cli.state.safetensors")
    assert cls.VALIDATE_INPUTS(state_file="fox.state.safetensors") is True
    assert cls.IS_CHANGED(state_file="fox.state.safetensors") != ""


def _unlisted_names(out: Path, secret: Path) -> list[str]:
    return [str(secret), str(secret.with_name("missing.safetensors")), "../secret.safetensors",
            "../missing.safetensors", "stream_r1/../../secret.safetensors", "/etc/passwd", "/no/such/file",
            "link/linked.safetensors", str(out / "fox.state.safetensors"), "fox.state.safetensors [output]",
            "stream_r1/notes.txt", "stream_r1/.state_00002_.safetensors.123-0123abcd.tmp", "",
            "fox.state.safetensors\x00", "~/secret.safetensors"]


def test_load_state_refuses_unlisted_names_without_telling_whether_they_exist(pack, planted):
    """Before, any path opened, and 'does not exist' vs 'not a Stream-R1 stream state' told the two apart."""
    out, _, secret = planted
    cls = pack.NODE_CLASS_MAPPINGS["StreamR1LoadState"]
    messages = set()
    for name in _unlisted_names(out, secret):
        with pytest.raises(FileNotFoundError) as e:
            cls().load(model=None, state_file=name)
        msg = str(e.value)
        assert "\n" not in msg and "pick it from the list" in msg
        assert msg.startswith("stream state ")
        messages.add(msg.split(" is not one of the listed state files", 1)[1])   # all but the name echoed back
        assert cls.VALIDATE_INPUTS(state_file=name) == msg                   # the same words before the run
        assert cls.IS_CHANGED(state_file=name) == ""                         # no mtime oracle either
    assert len(messages) == 1, messages


# ---- D: temporaries of an interrupted save -----------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid                      # exited and reaped: no process has it (until the kernel reuses it)


def _tiny_session():
    from stream_r1.config import StreamConfig, WanConfig
    from stream_r1.stream import StreamSession
    from stream_r1.wan.model import WanModel

    model = WanModel(WanConfig.tiny(), attention="sdpa").init_weights(seed=0).eval()
    s = StreamSession(model, StreamConfig.stream_r1(), tiny_context(0), height=32, width=48, seed=3)
    list(s.run(1))
    return s


def test_a_save_sweeps_stale_temporaries_of_its_target_and_nothing_else(tmp_path):
    from stream_r1.stream_state import STALE_TMP_SECONDS, load_stream_state

    dead, live, me = _dead_pid(), os.getppid(), os.getpid()
    stale = [f".s.safetensors.{dead}.tmp", f".s.safetensors.{dead}-0123abcd.tmp",       # writer killed (old/new name)
             f".s.safetensors.{me}-89abcdef.tmp",          # this pid, not writing it now: e.g. pid 1 in a container
             f".s.safetensors.{live}-00000000.tmp"]        # a running pid, but untouched for over an hour (reused pid)
    kept = [f".s.safetensors.{live}-11111111.tmp",         # another process writing it right now
            f".other.safetensors.{dead}.tmp", f"s.safetensors.{dead}.tmp", f".s.safetensors.{dead}.tmp.bak",
            f".s.safetensors.x{dead}.tmp", f".s.safetensors.{dead}-0123ABCD.tmp", ".s.safetensors..tmp",
            f".ss.safetensors.{dead}.tmp", f"..s.safetensors.{dead}.tmp", "notes.txt"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"half a state")
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(tmp_path / stale[3], (old, old))
    (tmp_path / f".s.safetensors.{dead}-22222222.tmp").mkdir()                          # not a file: kept
    (tmp_path / "target").write_bytes(b"keep me")
    (tmp_path / f".s.safetensors.{dead}-33333333.tmp").symlink_to(tmp_path / "target")  # a link: kept, target too
    kept += [f".s.safetensors.{dead}-22222222.tmp", f".s.safetensors.{dead}-33333333.tmp", "target"]

    _tiny_session().save_state(tmp_path / "s.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["s.safetensors"])
    assert load_stream_state(tmp_path / "s.safetensors").chunk_index == 1
    assert (tmp_path / "target").read_bytes() == b"keep me"


def test_temporary_names_are_unique_per_writer(tmp_path, monkeypatch):
    import safetensors.torch as sttorch

    names, real = [], sttorch.save_file
    monkeypatch.setattr(sttorch, "save_file", lambda t, f, metadata=None: (names.append(Path(f).name),
                                                                           real(t, f, metadata=metadata))[1])
    s = _tiny_session()
    s.save_state(tmp_path / "s.safetensors")
    s.save_state(tmp_path / "s.safetensors")
    assert len(set(names)) == 2, names
    assert all(n.startswith(f".s.safetensors.{os.getpid()}-") and n.endswith(".tmp") for n in names)


KILLED_SAVE = """
import os, signal, sys
sys.path[:0] = sys.argv[2:]
import torch
from stream_r1.config import StreamConfig, WanConfig
from stream_r1.stream import StreamSession
from stream_r1.wan.model import WanModel
model = WanModel(WanConfig.tiny(), attention="sdpa").init_weights(seed=0).eval()
ctx = torch.randn(1, 9, 32, generator=torch.Generator().manual_seed(0))
s = StreamSession(model, StreamConfig.stream_r1(), ctx, height=32, width=48, seed=3)
list(s.run(1))
os.replace = lambda a, b: os.kill(os.getpid(), signal.SIGKILL)    # the kill lands after the fsync, before the rename
s.save_state(sys.argv[1])
"""


def test_a_writer_killed_mid_save_leaves_a_temporary_the_next_save_removes(tmp_path):
    """The --save-state-every case: SIGKILL between writing the temporary and renaming it."""
    target = tmp_path / "run.state.safetensors"
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(target), str(ROOT)],
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".run.state.safetensors.") and not target.exists()
    _tiny_session().save_state(target)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
