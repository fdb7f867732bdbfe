"""The shapes-world demo loader node on a tiny bundle built in a temp dir by the real recipes (no GPU, no downloads).

The bundle comes from the same chain as tests/test_shapes_world.py (shapes_vae -> shapes_teacher -> shapes_ode_init
-> shapes_stream_r1 -> training.shapes.bundle) plus a tiny shapes reward model in its reward/ folder; the pack is
imported by path as ComfyUI imports it, and nodes run under torch.inference_mode() as ComfyUI runs them.
"""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

import comfy_stubs as stubs
from stream_r1.config import WanConfig
from training.recipes import get_recipe
from helpers import train_tiny_reward
from test_nodes import imported_pack, run

ROOT = Path(__file__).resolve().parents[1]
PACK = "custom_nodes_x_stream_r1_nodes_shapes_test"
PROMPT = "a red circle moving right on a black background"


@pytest.fixture(scope="module")
def bundle_root(tiny_chain, tmp_path_factory):
    """A complete tiny bundle (student, VAE, umT5, reward/) in a temp dir: the session's recipe-built bundle
    (tests/helpers.py `build_shapes_chain`) copied, plus a tiny shapes reward model."""
    from training.shapes.bundle import pack_reward

    root = tmp_path_factory.mktemp("shapes_nodes")
    shutil.copytree(tiny_chain / "bundle", root / "bundle")
    pack_reward(train_tiny_reward(root), root / "bundle" / "reward")          # as training.shapes.bundle ships it
    return root / "bundle"


@pytest.fixture(scope="module")
def pack():
    yield from imported_pack(PACK)


@pytest.fixture
def nodes(pack):
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture
def demo(bundle_root, nodes, monkeypatch):
    """The loader's outputs for the tiny bundle (headless)."""
    monkeypatch.setenv("STREAM_R1_SHAPES_BUNDLE", str(bundle_root))
    return run(nodes["StreamR1ShapesDemoLoader"], dtype="fp32")


def encode(clip, text):
    """What the stock CLIP Text Encode does with a CLIP (ComfyUI 0.8.0 nodes.py)."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def test_missing_bundle_says_how_to_build_it(nodes, tmp_path, monkeypatch):
    empty = tmp_path / "no_bundle"
    empty.mkdir()
    monkeypatch.setenv("STREAM_R1_SHAPES_BUNDLE", str(empty))
    with pytest.raises(FileNotFoundError) as err:
        run(nodes["StreamR1ShapesDemoLoader"], dtype="auto")
    msg = str(err.value)
    assert str(empty) in msg and "student.safetensors" in msg
    assert "docs/shapes-world.md" in msg and "bench/shapes_train.sh" in msg and "STREAM_R1_SHAPES_BUNDLE" in msg


def test_loader_definition_needs_no_files(nodes):
    cls = nodes["StreamR1ShapesDemoLoader"]
    assert list(cls.INPUT_TYPES()["required"]) == ["dtype"]
    assert cls.RETURN_TYPES == ("STREAM_R1_MODEL", "CLIP", "VAE", "STREAM_R1_REWARD", "STRING")
    assert cls.CATEGORY.startswith("Stream-R1/")


def test_loader_returns_usable_objects(demo, bundle_root, pack):
    from stream_r1.shapes import bundle as core_bundle

    model, clip, vae, reward, info = demo
    assert type(model).__name__ == "StreamR1Model" and model.patcher is None and model.dtype == torch.float32
    assert model.module.cfg.to_dict() == WanConfig.preset(get_recipe("shapes_teacher").model.teacher_arch).to_dict()
    assert model.text_dim == 64
    assert "32x32" in info and "reward yes" in info
    # the text: CLIP Text Encode's calls give the core encoder's embedding (what the CLI feeds the student)
    cond = encode(clip, PROMPT)
    assert len(cond) == 1 and cond[0][1]["pooled_output"] is None
    ref = core_bundle.load_bundle(root=bundle_root).text_encoder.encode([PROMPT])
    torch.testing.assert_close(cond[0][0], ref)
    assert cond[0][0].shape == (1, 512, 64) and not cond[0][0].is_inference()
    with pytest.raises(AttributeError, match="only encodes text"):
        clip.clone()
    # the VAE: a CoreVAE that the stock VAE Decode's call also understands
    assert vae.latent_channels == 16 and type(vae).__name__ == "CoreVAE"
    with pytest.raises(AttributeError, match="decoding only"):
        vae.encode
    assert reward is not None and reward.axes == ("VQ", "MQ", "TA")


def test_a_short_stream_through_generate(demo, nodes):
    from stream_r1.stream import generate
    from stream_r1.vae import StreamingDecoder

    model, clip, vae, _, _ = demo
    positive = encode(clip, PROMPT)
    frames, latent, _, _ = run(nodes["StreamR1Generate"], model=model, positive=positive, width=32, height=32,
                            seconds=1.5, frames=0, seed=5, keep_state=False, vae=vae, unique_id="3")
    assert frames.shape == (21, 32, 32, 3) and frames.dtype == torch.float32     # 2 chunks: 9 + 12 frames
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0 and float(frames.std()) > 0
    assert latent["samples"].shape == (1, 16, 6, 4, 4)
    # the same video as the core's stream loop with the bundle's own decoder (what the CLI runs)
    cfg = model.stream_config
    z, video = generate(model.module, positive[0][0], cfg, 6, height=32, width=32, seed=5,
                        decoder=StreamingDecoder(vae.core))
    torch.testing.assert_close(frames, video[0].permute(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    # the streaming Decode node and the stock VAE Decode's call both agree with the streamed frames
    (decoded,) = run(nodes["StreamR1Decode"], vae=vae, samples=latent, unique_id="4")
    torch.testing.assert_close(decoded, frames, rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        stock = vae.decode(latent["samples"])
    torch.testing.assert_close(stock.reshape(-1, 32, 32, 3), frames, rtol=1e-4, atol=1e-4)


def test_timeline_keep_state_and_continue_with_the_bundle(demo, nodes):
    model, clip, vae, _, _ = demo
    (positive, _) = run(nodes["StreamR1Timeline"], clip=clip, default_transition="recache",
                        timeline=f"0: {PROMPT}\n1.5 [recache]: a blue circle moving right on a black background")
    frames, _, state, _ = run(nodes["StreamR1Generate"], model=model, positive=positive, width=32, height=32,
                           seconds=2.25, frames=0, seed=1, keep_state=True, vae=vae, unique_id="5")
    assert frames.shape == (33, 32, 32, 3) and state.alive
    more, _, _, _ = run(nodes["StreamR1Continue"], state=state, positive=encode(clip, PROMPT), seconds=0.75,
                     keep_state=False)
    assert more.shape == (12, 32, 32, 3)


def test_saliency_from_the_bundle_reward(demo, nodes):
    model, clip, vae, reward, _ = demo
    frames, _, _, _ = run(nodes["StreamR1Generate"], model=model, positive=encode(clip, PROMPT), width=32, height=32,
                       seconds=0.75, frames=0, seed=2, keep_state=False, vae=vae, unique_id="6")
    overlay, mask, chart, summary = run(nodes["StreamR1RewardSaliency"], reward_model=reward, images=frames,
                                        prompt=PROMPT, axis="combined", alpha=0.55, spatial_floor=0.15,
                                        temporal_floor=0.2)
    assert overlay.shape == frames.shape and mask.shape == frames.shape[:3] and chart.shape[-1] == 3
    assert "TA" in summary


def test_bundle_without_reward_streams_and_saliency_says_why(bundle_root, nodes, tmp_path, monkeypatch):
    bare = tmp_path / "bare"
    shutil.copytree(bundle_root, bare, ignore=shutil.ignore_patterns("reward"))
    monkeypatch.setenv("STREAM_R1_SHAPES_BUNDLE", str(bare))
    model, clip, vae, reward, info = run(nodes["StreamR1ShapesDemoLoader"], dtype="auto")
    assert reward is None and "reward none" in info
    frames, _, _, _ = run(nodes["StreamR1Generate"], model=model, positive=encode(clip, PROMPT), width=32, height=32,
                       seconds=0.75, frames=0, seed=2, keep_state=False, vae=vae, unique_id="6")
    with pytest.raises(ValueError, match="no reward/ folder"):
        run(nodes["StreamR1RewardSaliency"], reward_model=reward, images=frames, prompt=PROMPT, axis="combined",
            alpha=0.5, spatial_floor=0.15, temporal_floor=0.2)


def test_inside_comfyui_the_model_and_vae_are_managed(bundle_root, nodes, tmp_path, monkeypatch):
    """With ComfyUI's services (stubbed): both the student and the VAE get a ModelPatcher and Generate loads both;
    a rebuilt bundle changes the loader's cache key."""
    rec = stubs.Recorder()
    for name, mod in stubs.build(tmp_path / "models", tmp_path / "output", rec).items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setenv("STREAM_R1_SHAPES_BUNDLE", str(bundle_root))
    cls = nodes["StreamR1ShapesDemoLoader"]
    model, clip, vae, _, _ = run(cls, dtype="auto")
    assert model.patcher is not None and vae.patcher is not None and vae.patcher.model.held is vae.core
    # ComfyUI writes `model.device` on load and unload (the stub does too); the WanVAE's is a read-only property
    rec.loads.clear()
    frames, _, _, _ = run(nodes["StreamR1Generate"], model=model, positive=encode(clip, PROMPT), width=32, height=32,
                       seconds=0.75, frames=0, seed=0, keep_state=False, vae=vae, unique_id="9")
    assert frames.shape == (9, 32, 32, 3)
    assert vae.patcher.model.device == vae.patcher.load_device
    assert rec.loads and rec.loads[0][0] == [model.patcher, vae.patcher] and rec.loads[0][1]["memory_required"] > 0
    assert [e for e, _ in rec.events] == ["stream_r1.chunk"] * 1 and rec.progress[-1][2][0] == "JPEG"
    key = cls.IS_CHANGED(dtype="auto")
    os.utime(bundle_root / "student.safetensors", ns=(1, 1))
    assert cls.IS_CHANGED(dtype="auto") != key


def test_the_shipped_shapes_workflow_runs_on_the_bundle(bundle_root, nodes, monkeypatch):
    """Our nodes of workflows/api/shapes_world_no_download.api.json executed in graph order (stock Create / Save Video
    and Preview Image only receive their inputs), at the tiny bundle's size: the whole 20 s timeline streams."""
    monkeypatch.setenv("STREAM_R1_SHAPES_BUNDLE", str(bundle_root))
    api = json.loads((ROOT / "workflows" / "api" / "shapes_world_no_download.api.json").read_text())
    outputs, received = {}, {}
    pending = dict(api)
    while pending:
        nid, node = next((i, n) for i, n in sorted(pending.items(), key=lambda kv: int(kv[0]))
                         if all(v[0] in outputs for v in n["inputs"].values() if isinstance(v, list)))
        del pending[nid]
        inputs = {k: outputs[v[0]][v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        if node["class_type"] == "StreamR1Generate":
            inputs.update(width=32, height=32)
        cls = nodes.get(node["class_type"])
        if cls is None:                                            # a stock node: keep what it was given
            received[nid] = (node["class_type"], inputs)
            outputs[nid] = (None,)
            continue
        if "unique_id" in cls.INPUT_TYPES().get("hidden", {}):
            inputs["unique_id"] = nid
        out = run(cls, **inputs)
        outputs[nid] = out["result"] if isinstance(out, dict) else out
    stock = {(kind, tuple(inp["images"].shape)) for kind, inp in received.values() if "images" in inp}
    assert ("CreateVideo", (321, 32, 32, 3)) in stock                  # 20 s at 16 fps: 321 frames
    (gen,) = [i for i, n in api.items() if n["class_type"] == "StreamR1Generate"]
    (sal,) = [i for i, n in api.items() if n["class_type"] == "StreamR1RewardSaliency"]
    assert outputs[sal][0].shape == outputs[gen][0].shape and "VQ" in outputs[sal][3]


def test_a_prompt_outside_the_vocabulary_is_named_on_encoding(demo, caplog):
    import logging
    _, clip, _, _, _ = demo
    with caplog.at_level(logging.WARNING):
        encode(clip, "a cat playing the piano")
    assert "does not know 'cat', 'playing', 'piano'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        encode(clip, PROMPT)
    assert "does not know" not in caplog.text
