"""The Load Model node (headless): a file whose family is not recognised loads with Stream-R1's defaults and the node
says so in its UI text; a recognised one returns the plain output tuple."""
import pytest
import torch
from safetensors.torch import save_file

from stream_r1.checkpoint import UNKNOWN_FAMILY_NOTE, save_dit_export
from stream_r1.config import StreamConfig, WanConfig
from stream_r1.wan.model import WanModel
from tests.test_nodes import imported_pack, run


@pytest.fixture(scope="module")
def pack():
    yield from imported_pack("custom_nodes_x_stream_r1_nodes_loader_test")


def test_the_loader_node_shows_the_family_note(pack, tmp_path, monkeypatch):
    (tmp_path / "stream_r1").mkdir()
    bare = WanModel(WanConfig.tiny_comfy()).init_weights(seed=0).state_dict()          # head_dim 128: heads inferred
    save_file({k: v.contiguous() for k, v in bare.items()}, str(tmp_path / "stream_r1" / "student.safetensors"))
    save_dit_export(tmp_path / "stream_r1" / "export.safetensors", WanModel(WanConfig.tiny()).init_weights(seed=0)
                    .state_dict(), WanConfig.tiny(), StreamConfig.stream_r1())
    monkeypatch.setenv("STREAM_R1_MODELS", str(tmp_path))
    loader = pack.NODE_CLASS_MAPPINGS["StreamR1ModelLoader"]
    with torch.inference_mode():
        out = loader().load(model_name="student.safetensors", dtype="fp32", attention="sdpa", entry="auto")
    assert out["ui"]["text"] == [f"student.safetensors: {UNKNOWN_FAMILY_NOTE}"]
    model, = out["result"]
    assert model.info.family == "unknown" and model.stream_config.to_dict() == StreamConfig.stream_r1().to_dict()
    model, = run(loader, model_name="export.safetensors", dtype="fp32", attention="sdpa", entry="auto")
    assert model.info.family == "stream-r1" and not model.info.notes
