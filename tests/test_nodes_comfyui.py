"""The nodes against a real ComfyUI checkout (optional: runs only when COMFYUI_PATH points at one, e.g. 0.8.0).

No server: ComfyUI's own modules (folder_paths, model_management on the CPU, ModelPatcher, ProgressBar with a
global hook, comfy.sd.VAE, optimized_attention, comfy_api's VideoFromFile) are imported from the checkout;
only `server` is stubbed, as ComfyUI's tests-unit do. The VAE is a real `comfy.sd.VAE` built from a random
tiny Wan2.1 state dict with the real key names, so the streaming adapter is checked against ComfyUI's own
decoder and its full `vae.decode()`.
"""
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI or not Path(COMFYUI, "comfy", "sd.py").is_file(),
                                reason="set COMFYUI_PATH to a ComfyUI checkout to run")
ROOT = Path(__file__).resolve().parents[1]
PACK = "custom_nodes_x_stream_r1_real_comfyui"


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    sys.path.insert(0, COMFYUI)
    from comfy.cli_args import args
    args.cpu = True                                       # before model_management picks a device
    import comfy.model_management as mm
    import comfy.sd
    import comfy.utils
    import folder_paths

    root = tmp_path_factory.mktemp("comfyui")
    folder_paths.models_dir = str(root / "models")        # where our stream_r1 folder gets registered
    folder_paths.set_output_directory(str(root / "output"))
    from stream_r1.checkpoint import save_dit_export
    from stream_r1.config import StreamConfig, WanConfig
    from stream_r1.vae import VAEConfig, WanVAE
    from stream_r1.wan.model import WanModel
    save_dit_export(root / "models" / "stream_r1" / "tiny.safetensors",
                    WanModel(WanConfig.tiny()).init_weights(seed=0).state_dict(), WanConfig.tiny(),
                    StreamConfig.stream_r1())
    torch.manual_seed(0)
    vae = comfy.sd.VAE(sd=WanVAE(VAEConfig.tiny()).state_dict())          # detected as a Wan2.1 VAE

    events, progress = [], []
    server = types.ModuleType("server")
    server.PromptServer = type("PromptServer", (), {"instance": types.SimpleNamespace(
        send_sync=lambda e, d, sid=None: events.append((e, d)), send_progress_text=lambda *a, **k: None)})
    sys.modules["server"] = server

    def hook(value, total, preview, prompt_id=None, node_id=None):      # main.py's hook, minus the websocket
        mm.throw_exception_if_processing_interrupted()
        progress.append((value, total, preview, node_id))

    comfy.utils.set_progress_bar_global_hook(hook)
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = pack
    spec.loader.exec_module(pack)
    yield types.SimpleNamespace(pack=pack, nodes=pack.NODE_CLASS_MAPPINGS, vae=vae, mm=mm, events=events,
                                progress=progress, folder_paths=folder_paths)
    comfy.utils.set_progress_bar_global_hook(None)
    for k in [k for k in sys.modules if k in ("server", PACK) or k.startswith(PACK + ".")]:
        del sys.modules[k]


def run(cls, **inputs):
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(**inputs)


def _generate(c, model, **kw):
    cond = [[torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(0)), {}]]
    args = dict(model=model, positive=cond, width=32, height=32, seconds=1.0, frames=33, seed=1, keep_state=False,
                vae=c.vae, unique_id="3")
    return run(c.nodes["StreamR1Generate"], **{**args, **kw})


def test_real_comfyui_end_to_end(comfyui):
    c = comfyui
    names = c.nodes["StreamR1ModelLoader"].INPUT_TYPES()["required"]["model_name"][0]
    assert names[0] == "tiny.safetensors"
    model, = run(c.nodes["StreamR1ModelLoader"], model_name=names[0], dtype="auto", attention="comfy", entry="auto")
    assert type(model.patcher).__name__ == "ModelPatcher"
    images, latent, _, _ = _generate(c, model)
    assert images.shape == (33, 32, 32, 3) and latent["samples"].shape == (1, 16, 9, 4, 4)
    with torch.inference_mode():
        stock = c.vae.decode(latent["samples"])                            # ComfyUI's own full decode
    torch.testing.assert_close(images, stock.reshape(-1, 32, 32, 3), atol=1e-5, rtol=0)
    decoded, = run(c.nodes["StreamR1Decode"], vae=c.vae, samples=latent, unique_id="4")
    assert torch.equal(decoded, images)
    chunks = [p for p in c.progress if p[3] == "3"]
    assert [p[:2] for p in chunks] == [(1, 3), (2, 3), (3, 3)]
    assert all(p[2][0] == "JPEG" and p[2][1].size == (32, 32) for p in chunks)
    assert [d["chunk"] for e, d in c.events if e == "stream_r1.chunk"] == [0, 1, 2]


def test_real_comfyui_cancel_and_file_output(comfyui):
    c = comfyui
    model, = run(c.nodes["StreamR1ModelLoader"], model_name="tiny.safetensors", dtype="fp32", attention="sdpa",
                 entry="auto")
    result = run(c.nodes["StreamR1GenerateToFile"], model=model, positive=[[torch.randn(1, 8, 32), {}]], vae=c.vae,
                 width=32, height=32, seconds=1.0, frames=0, seed=0, filename_prefix="stream_r1/t", fps=16.0)
    path, video, _ = result["result"]
    assert Path(path).parent == Path(c.folder_paths.get_output_directory()) / "stream_r1"
    assert video.get_frame_count() == 21 and float(video.get_frame_rate()) == 16.0
    before = len(c.progress)
    c.events.clear()
    original = c.pack.nodes.host.send_event

    def cancel_after_first(event, data):
        original(event, data)
        c.mm.interrupt_current_processing(True)

    c.pack.nodes.host.send_event = cancel_after_first
    try:
        with pytest.raises(c.mm.InterruptProcessingException):
            _generate(c, model)
    finally:
        c.pack.nodes.host.send_event = original
        c.mm.interrupt_current_processing(False)
    assert len(c.progress) == before + 1 and len(c.events) == 1


def test_real_comfyui_fast_decoder_matches_vae_decode_in_bf16(comfyui):
    """The nodes decode a stock VAE through the core's decoder built from its weights (ComfyUI's dtype, its own
    ModelPatcher); in bf16 its frames equal ComfyUI's own `vae.decode` within bf16 rounding."""
    import comfy.sd
    from stream_r1.vae import VAEConfig, WanVAE
    c = comfyui
    torch.manual_seed(1)
    vae = comfy.sd.VAE(sd=WanVAE(VAEConfig.tiny()).state_dict(), dtype=torch.bfloat16)
    model, = run(c.nodes["StreamR1ModelLoader"], model_name="tiny.safetensors", dtype="fp32", attention="sdpa",
                 entry="auto")
    images, latent, _, _ = _generate(c, model, vae=vae)
    fast = vae._stream_r1_fast_vae
    assert fast.core.dtype == torch.bfloat16 and type(fast.patcher).__name__ == "ModelPatcher"
    assert fast.patcher is not vae.patcher                                   # ComfyUI manages both copies
    with torch.inference_mode():
        stock = vae.decode(latent["samples"])
    stock = stock.reshape(images.shape)
    exact = comfy.sd.VAE(sd=vae.first_stage_model.state_dict(), dtype=torch.float32)   # the same weights in fp32
    with torch.inference_mode():
        truth = exact.decode(latent["samples"]).reshape(images.shape)
    ours, theirs = (images - truth).abs(), (stock - truth).abs()
    print(f"bf16 vs fp32 decode: ours max {ours.max():.4f} mean {ours.mean():.5f}; "
          f"ComfyUI's max {theirs.max():.4f} mean {theirs.mean():.5f}")
    assert ours.mean() <= 1.25 * theirs.mean() and ours.max() <= 1.5 * theirs.max()   # bf16 rounding, no more
    decoded, = run(c.nodes["StreamR1Decode"], vae=vae, samples=latent, unique_id="5")
    assert torch.equal(decoded, images)                                     # the Decode node: the same decoder
