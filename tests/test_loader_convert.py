"""Stream-R1 Load Model given a `.pt`: it writes `<stem>.safetensors` beside it once (same weights, family and stream
settings), never twice, and quietly not into a read-only folder; a missing file names the download command.

The pack is imported by path as ComfyUI imports it; the nodes run headless (no ComfyUI), models from
$STREAM_R1_MODELS."""
import importlib.util
import os
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from stream_r1.checkpoint import FAMILY_KEY, load_dit_checkpoint
from stream_r1.config import StreamConfig, WanConfig
from stream_r1.loaders import random_student

ROOT = Path(__file__).resolve().parents[1]
PACK = "custom_nodes_x_stream_r1_loader_convert"


@pytest.fixture(scope="module")
def loader():
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = mod
    spec.loader.exec_module(mod)
    yield sys.modules[PACK + ".nodes.loader"]
    for name in [n for n in sys.modules if n == PACK or n.startswith(PACK + ".")]:
        del sys.modules[name]


@pytest.fixture
def models(tmp_path, monkeypatch):
    """models/stream_r1/stream_r1.pt: a trainer checkpoint (generator + generator_ema, `model.` prefix), fp32."""
    folder = tmp_path / "models" / "stream_r1"
    folder.mkdir(parents=True)
    ema = random_student(WanConfig.tiny_comfy(), seed=1).state_dict()
    gen = random_student(WanConfig.tiny_comfy(), seed=2).state_dict()
    torch.save({"generator": {"model." + k: v for k, v in gen.items()},
                "generator_ema": {"model." + k: v for k, v in ema.items()}}, folder / "stream_r1.pt")
    monkeypatch.setenv("STREAM_R1_MODELS", str(tmp_path / "models"))
    return folder


def load(loader, name: str, entry: str = "auto"):
    out = loader.StreamR1ModelLoader().load(name, "fp32", "sdpa", entry)
    return out if isinstance(out, dict) else {"result": out, "ui": {"text": []}}


def test_a_pt_is_written_once_as_safetensors_that_load_to_the_same_weights(loader, models):
    out = load(loader, "stream_r1.pt")
    written = models / "stream_r1.safetensors"
    assert written.is_file() and not [p for p in models.iterdir() if ".tmp-" in p.name]
    assert any("wrote stream_r1.safetensors" in t for t in out["ui"]["text"])

    pt, st = load_dit_checkpoint(models / "stream_r1.pt"), load_dit_checkpoint(written)
    assert st.format == "stream-r1-export" and st.family == pt.family == "stream-r1"
    assert st.stream_config == pt.stream_config == StreamConfig.stream_r1()
    assert st.metadata[FAMILY_KEY] == "stream-r1" and st.metadata["converted_from"] == "stream_r1.pt"
    assert st.config == pt.config and set(st.state_dict) == set(pt.state_dict)
    for k, v in pt.state_dict.items():                            # the generator_ema entry, bit for bit
        assert st.state_dict[k].dtype == v.dtype and torch.equal(st.state_dict[k], v), k

    model = load(loader, "stream_r1.safetensors")["result"][0]   # the copy loads in the node, as the .pt does
    assert model.info.family == "stream-r1"               # (the pack's own StreamConfig class: compare the fields)
    assert asdict(model.stream_config) == asdict(StreamConfig.stream_r1())

    before = written.stat().st_mtime_ns
    again = load(loader, "stream_r1.pt")
    assert written.stat().st_mtime_ns == before, "written once, never again"
    assert not any("wrote" in t for t in again["ui"]["text"])


def test_an_explicit_entry_writes_nothing(loader, models):
    load(loader, "stream_r1.pt", entry="generator")
    assert not (models / "stream_r1.safetensors").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_gets_no_file_and_no_error(loader, models):
    models.chmod(0o555)
    try:
        model = load(loader, "stream_r1.pt")["result"][0]
        assert model.info.family == "stream-r1"
        assert not (models / "stream_r1.safetensors").exists()
    finally:
        models.chmod(0o755)


def test_a_folder_that_refuses_the_write_gets_no_file_and_no_error(loader, models, monkeypatch):
    """The same as a read-only folder where the tests run as root (which writes anyway): os.access says no."""
    real = os.access
    monkeypatch.setattr(loader.os, "access", lambda p, mode: False if Path(p) == models else real(p, mode))
    model = load(loader, "stream_r1.pt")["result"][0]
    assert model.info.family == "stream-r1" and not (models / "stream_r1.safetensors").exists()


def test_a_failed_write_is_logged_not_raised(loader, models, monkeypatch, caplog):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loader, "save_dit_export", full_disk)
    model = load(loader, "stream_r1.pt")["result"][0]
    assert model.info.family == "stream-r1" and not (models / "stream_r1.safetensors").exists()
    assert "No space left" in caplog.text


def test_a_missing_model_file_names_the_download_command(loader, models):
    with pytest.raises(FileNotFoundError, match=r"python -m stream_r1 download --comfyui <ComfyUI> --only stream_r1"):
        load(loader, "missing.pt")
