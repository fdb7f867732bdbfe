"""`python -m stream_r1 download` against a hostile hub: a mirror at $HF_ENDPOINT whose listing names files outside
the destination folder ('../..', absolute paths, backslashes, drive letters, NUL, empty components) or whose
destination already holds a symlink that points elsewhere. Nothing may be written anywhere, the command exits
with code 2 and one line. The fake hub is tests/test_download.py's, on 127.0.0.1, stopped by the fixture.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub.hf_api import RepoFile

from stream_r1 import download as dl
from stream_r1.cli import main
from test_download import FakeHub, _blob

ROOT = Path(__file__).resolve().parents[1]
REPO = "KlingTeam/VideoReward"             # the whole-repository release: its layout comes from the listing


@pytest.fixture
def evil_hub(monkeypatch):
    """Start a fake hub serving the given {repo: {path: (content, is_lfs)}}; stopped when the test ends."""
    import huggingface_hub.constants as constants

    started = []

    def start(repos: dict) -> FakeHub:
        hub = FakeHub(repos)
        hub.thread.start()
        started.append(hub)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
        monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "5")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        return hub

    yield start
    for hub in started:
        hub.server.shutdown()
        hub.server.server_close()


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in root.rglob("*"))


BAD_NAMES = ["../../escape.txt", "checkpoint-1/../../../escape.txt", "{outside}/abs.txt", "..\\..\\escape.txt",
             "C:escape.txt", "C:/escape.txt", "ok\x00.txt", "a//escape.txt", "./escape.txt", "dir/", "a\nb.txt",
             ".. /escape.txt", "CON", "sub/nul.txt", "com1.json"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_safe_relative_path_refuses_every_escape(name):
    with pytest.raises(dl.UnsafeRemotePath, match="refusing"):
        dl.safe_relative_path(name.replace("{outside}", "/tmp/outside"), "hub")


@pytest.mark.parametrize("name", ["model_config.json", "checkpoint-11352/tokenizer/tokenizer_config.json",
                                  ".gitattributes", "a..b/c.d", "console.txt"])
def test_safe_relative_path_keeps_ordinary_names(name):
    assert dl.safe_relative_path(name, "hub") == name


@pytest.mark.parametrize("name", ["../../escape.txt", "checkpoint-1/../../../escape.txt", "{outside}/abs.txt",
                                  "..\\..\\escape.txt", "C:escape.txt", "ok\x00.txt", "a//escape.txt"])
def test_a_listing_with_a_traversal_name_writes_nothing_and_exits_with_one_line(evil_hub, tmp_path, capsys, name):
    models, outside = tmp_path / "models", tmp_path / "outside"
    models.mkdir()
    outside.mkdir()
    name = name.replace("{outside}", outside.as_posix())
    hub = evil_hub({REPO: {"model_config.json": (b"{}\n", False),      # a good file listed first: not fetched either
                           name: (b"pwned\n", False),
                           "checkpoint-11352/model.pth": (_blob(5, 2000), True)}})
    before = _tree(tmp_path)
    assert main(["download", "--dir", str(models), "--only", "videoreward"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert repr(name) in err and "refusing to download" in err and "HF_ENDPOINT" in err
    assert _tree(tmp_path) == before                                   # not one file or folder written anywhere
    assert not hub.gets("/resolve/")                                   # refused on the listing, before any transfer


def test_a_symlink_in_the_destination_pointing_outside_is_not_followed(evil_hub, tmp_path, capsys):
    models, outside = tmp_path / "models", tmp_path / "outside"
    vr = models / "stream_r1" / "VideoReward"
    vr.mkdir(parents=True)
    outside.mkdir()
    try:
        (vr / "checkpoint-11352").symlink_to(outside, target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    evil_hub({REPO: {"model_config.json": (b"{}\n", False), "checkpoint-11352/model.pth": (_blob(5, 2000), True)}})
    assert main(["download", "--dir", str(models), "--only", "videoreward"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "outside" in err and "remove that link" in err
    assert list(outside.iterdir()) == []
    assert not (vr / "model_config.json").exists()                     # checked before the first file is written


def test_the_hub_answering_for_another_file_is_refused():
    class Api:
        def get_paths_info(self, repo_id, paths, revision):
            return [RepoFile(path="elsewhere/stream_r1.pt", size=1, oid="0" * 40)]

    with pytest.raises(dl.UnsafeRemotePath, match="answered for 'elsewhere/stream_r1.pt' when asked for"):
        dl.remote_files(dl.BY_NAME["stream_r1"], Api())


def test_a_name_listed_as_file_and_folder_is_refused():
    class Api:
        def list_repo_tree(self, repo_id, recursive, revision):
            return [RepoFile(path="a", size=1, oid="0" * 40), RepoFile(path="a/b", size=1, oid="1" * 40)]

    with pytest.raises(dl.UnsafeRemotePath, match="as a file and a folder"):
        dl.remote_files(dl.BY_NAME["videoreward"], Api())


@pytest.mark.parametrize("size", [None, "12", -1, 1.5, True])
def test_a_size_that_is_not_a_byte_count_is_refused(size):
    class Api:
        def list_repo_tree(self, repo_id, recursive, revision):
            entry = RepoFile(path="model_config.json", size=1, oid="0" * 40)
            entry.size = size                                    # what a broken or hostile mirror may send
            return [entry]

    with pytest.raises(dl.UnsafeRemotePath, match="not a byte count"):
        dl.remote_files(dl.BY_NAME["videoreward"], Api())


def test_command_line_refusal_in_a_fresh_process_is_one_line(evil_hub, tmp_path):
    hub = evil_hub({REPO: {"../../escape.txt": (b"pwned\n", False)}})
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf_home"),
           "PYTHONPATH": str(ROOT), "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    (tmp_path / "a" / "b").mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "stream_r1", "download", "--dir", "m", "--only", "videoreward"],
                       env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path / "a" / "b")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "'../../escape.txt'" in r.stderr
    assert not list(tmp_path.rglob("escape.txt")) and not (tmp_path / "a" / "b" / "m").exists()
