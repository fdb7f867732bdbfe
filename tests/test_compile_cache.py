"""PyTorch's compile caches in a folder the user can see: a second process reuses what the first compiled."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "STREAM_R1_COMPILE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_points_the_caches_at_the_folder_even_after_inductor_wrote_its_default(clean_env, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from stream_r1.compile_cache import use_compile_cache
    cache_dir()                                     # what loading a model does: the default lands in the variable
    assert use_compile_cache(tmp_path / "cc") == tmp_path / "cc"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cc")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cc" / "triton")
    assert cache_dir() == str(tmp_path / "cc")


def test_the_users_own_cache_folder_wins(clean_env, tmp_path):
    from stream_r1.compile_cache import use_compile_cache
    clean_env.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_compile_cache(tmp_path / "cc") == tmp_path / "mine" and not (tmp_path / "cc").exists()


def test_default_folder_and_an_uncreatable_one(clean_env, tmp_path, caplog):
    from stream_r1.compile_cache import default_folder, use_compile_cache
    clean_env.setenv("STREAM_R1_COMPILE_CACHE", str(tmp_path / "env"))
    assert default_folder() == tmp_path / "env"
    (tmp_path / "file").write_text("x")
    assert use_compile_cache(tmp_path / "file" / "sub") is None and "cannot create" in caplog.text


def test_a_second_process_hits_the_cache_the_first_wrote(clean_env, tmp_path):
    script = textwrap.dedent("""
        import torch
        from stream_r1.compile_cache import use_compile_cache
        use_compile_cache()
        f = torch.compile(lambda x: (x.sin() * 2).cos() + 1)
        f(torch.randn(16))
        from torch._dynamo.utils import counters
        print("HITS", counters["inductor"]["fxgraph_cache_hit"], "MISSES", counters["inductor"]["fxgraph_cache_miss"])
    """)
    env = {**os.environ, "STREAM_R1_COMPILE_CACHE": str(tmp_path / "cc"), "PYTHONPATH": str(ROOT)}
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    first, second = (r.stdout.split("HITS")[-1].split() for r in runs)
    assert (first[0], first[2]) == ("0", "1") and (second[0], second[2]) == ("1", "0")
    assert any((tmp_path / "cc" / "fxgraph").rglob("*"))
