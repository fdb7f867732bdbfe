"""The ComfyUI nodes, executed headlessly on tiny models with ComfyUI's modules stubbed (tests/comfy_stubs.py).

The pack is imported by path under a path-derived name, as ComfyUI imports it; nodes run under
torch.inference_mode(), as ComfyUI's executor runs them.
"""
import gc
import importlib.util
import subprocess
import sys
import tracemalloc
import weakref
from pathlib import Path

import pytest
import torch

import comfy_stubs as stubs
from stream_r1.checkpoint import save_dit_export
from stream_r1.config import StreamConfig, WanConfig
from stream_r1.video_io import read_video
from stream_r1.wan.model import WanModel

ROOT = Path(__file__).resolve().parents[1]
PACK = "custom_nodes_x_stream_r1_nodes_test"
SIZE = dict(width=32, height=32)                       # 4x4 latents, 4 tokens per frame


def import_pack(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def imported_pack(name: str):
    """Generator for a module-scoped fixture: the pack imported under `name`, its modules dropped afterwards."""
    mod = import_pack(name)
    yield mod
    for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[k]



@pytest.fixture(scope="module")
def pack():
    yield from imported_pack(PACK)                     # no ComfyUI stubs: importing must not need them


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    student = WanModel(WanConfig.tiny(), attention="sdpa").init_weights(seed=0)
    save_dit_export(root / "stream_r1" / "tiny_stream_r1.safetensors", student.state_dict(), WanConfig.tiny(),
                    StreamConfig.stream_r1())
    vae = stubs.FakeWanVAE().core                       # a VAE file where a DiT is expected
    (root / "diffusion_models").mkdir()
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()},
              str(root / "diffusion_models" / "wan_2.1_vae.safetensors"))
    (root / "stream_r1" / "notes.txt").write_text("not a model")
    return root


@pytest.fixture
def comfy(pack, models, tmp_path, monkeypatch):
    """ComfyUI's modules, stubbed for one test; returns the Recorder."""
    rec = stubs.Recorder()
    for name, mod in stubs.build(models, tmp_path / "output", rec).items():
        monkeypatch.setitem(sys.modules, name, mod)
    return rec


@pytest.fixture
def nodes(pack):
    return pack.NODE_CLASS_MAPPINGS


def run(cls, **inputs):
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(**inputs)


def cond(seed=0, tokens=12, width=32):
    g = torch.Generator().manual_seed(seed)
    c = torch.zeros(1, 16, width)
    c[:, :tokens] = torch.randn(1, tokens, width, generator=g)     # padded rows zero, as ComfyUI's umT5 output
    return [[c, {"pooled_output": None}]]


@pytest.fixture
def model(comfy, nodes):
    return run(nodes["StreamR1ModelLoader"], model_name="tiny_stream_r1.safetensors", dtype="fp32",
               attention="sdpa", entry="auto")[0]


@pytest.fixture(scope="module")
def vae():
    return stubs.FakeWanVAE()


def generate(nodes, model, vae=None, **kw):
    args = dict(positive=cond(), **SIZE, seconds=1.0, frames=0, seed=3, keep_state=False, vae=vae, options=None,
                unique_id="7")
    args.update(kw)
    return run(nodes["StreamR1Generate"], model=model, **args)


# ---- definitions ---------------------------------------------------------------------------------------------
def test_every_node_follows_the_v1_rules(comfy, pack, nodes):
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(nodes)
    for name, cls in nodes.items():
        types = cls.INPUT_TYPES()
        assert set(types) <= {"required", "optional", "hidden"} and types["required"], name
        for section in ("required", "optional"):
            for inp, spec in types.get(section, {}).items():
                kind, opts = spec
                assert isinstance(kind, (str, list)), (name, inp)
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"
                if isinstance(kind, list):
                    assert all(isinstance(c, str) for c in kind) and opts.get("default", kind[0] if kind else None) \
                        in (kind or [None]), (name, inp)
                if kind in ("INT", "FLOAT"):
                    assert opts["min"] <= opts["default"] <= opts["max"], (name, inp)
        assert all(isinstance(t, str) for t in cls.RETURN_TYPES)
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS), name
        assert callable(getattr(cls, cls.FUNCTION)), name
        assert cls.CATEGORY.startswith("Stream-R1") and cls.DESCRIPTION, name
    seed = nodes["StreamR1Generate"].INPUT_TYPES()["required"]["seed"][1]
    assert seed["control_after_generate"] and seed["max"] == 2 ** 64 - 1
    assert nodes["StreamR1GenerateToFile"].OUTPUT_NODE
    assert "VIDEO" in nodes["StreamR1GenerateToFile"].RETURN_TYPES             # the stock type (CreateVideo's)


def test_import_does_no_work(nodes):
    code = (f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('custom_nodes_x_sr1', "
            f"{str(ROOT / '__init__.py')!r}, submodule_search_locations=[{str(ROOT)!r}]); "
            "m = importlib.util.module_from_spec(spec); sys.modules['custom_nodes_x_sr1'] = m; "
            "spec.loader.exec_module(m); print(len(m.NODE_CLASS_MAPPINGS), "
            "[k for k in ('comfy', 'folder_paths', 'server', 'av', 'safetensors', 'transformers') "
            "if k in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.split(maxsplit=1) == [str(len(nodes)), "[]\n"]


# ---- loader ----------------------------------------------------------------------------------------------------
def test_model_list_registers_our_folder_and_resolves_only_listed_names(comfy, pack, nodes):
    import folder_paths
    assert "stream_r1" not in folder_paths.folder_names_and_paths            # nothing happened at import
    names = nodes["StreamR1ModelLoader"].INPUT_TYPES()["required"]["model_name"][0]
    assert names == ["tiny_stream_r1.safetensors", "wan_2.1_vae.safetensors"]    # ours first, no .txt
    host = sys.modules[PACK + ".nodes.host"]
    for bad in ("../diffusion_models/wan_2.1_vae.safetensors", "/etc/passwd", "missing.safetensors"):
        with pytest.raises(FileNotFoundError, match="not found"):
            host.resolve_model(bad)


def test_loader_wraps_the_student_in_a_model_patcher(comfy, model):
    assert model.patcher is comfy.patchers[-1] and model.patcher.model is model.module
    assert model.stream_config.cache_policy == "window_sink" and model.text_dim == 32


def test_loader_refuses_a_file_that_is_not_a_causal_student(comfy, nodes):
    with pytest.raises(ValueError, match="VAE.*not a Wan2.1 DiT"):
        run(nodes["StreamR1ModelLoader"], model_name="wan_2.1_vae.safetensors", dtype="auto", attention="auto",
            entry="auto")


def test_loader_compile_toggle_compiles_only_where_it_pays(comfy, nodes, monkeypatch, caplog):
    loader = sys.modules[type(nodes["StreamR1ModelLoader"]()).__module__]
    eager = run(nodes["StreamR1ModelLoader"], model_name="tiny_stream_r1.safetensors", dtype="fp32",
                attention="sdpa", entry="auto", compile=True)[0]                # this machine: CPU, no Triton
    m = eager.module
    assert m._pre is type(m)._pre and "running eager" in caplog.text            # the class's stage: not compiled
    caches = []
    monkeypatch.setattr(importlib.import_module(PACK + ".stream_r1.compile_cache"), "use_compile_cache", caches.append)
    assert "Triton" in loader.compile_unavailable(torch.device("cuda"))     # this machine: no Triton
    monkeypatch.setattr(loader, "compile_unavailable", lambda device: None)  # (patching has_triton poisons inductor)
    assert loader.compile_student(m, torch.device("cuda")) and m._pre is not type(m)._pre
    assert caches == [None]                                 # headless: the core's default folder
    assert "compile" in nodes["StreamR1ModelLoader"].INPUT_TYPES()["optional"]


def test_comfy_attention_backend_matches_sdpa(comfy, nodes, model, vae):
    comfy_model = run(nodes["StreamR1ModelLoader"], model_name="tiny_stream_r1.safetensors", dtype="fp32",
                      attention="comfy", entry="auto")[0]
    a, _, _, _ = generate(nodes, model, vae, frames=9)
    b, _, _, _ = generate(nodes, comfy_model, vae, frames=9)
    assert comfy.attention_calls > 0
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---- generate / decode -------------------------------------------------------------------------------------------
def test_generate_streams_chunks_with_progress_previews_and_events(comfy, nodes, model, vae):
    images, latent, state, _ = generate(nodes, model, vae, frames=33)           # 9 latent frames = 3 chunks
    assert images.shape == (33, 32, 32, 3) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert latent["samples"].shape == (1, 16, 9, 4, 4)
    assert comfy.bars == [(3, "7")]
    assert [(v, t) for v, t, _ in comfy.progress] == [(1, 3), (2, 3), (3, 3)]
    for _, _, preview in comfy.progress:
        fmt, image, size = preview
        assert fmt == "JPEG" and image.size == (32, 32) and size == 512
    events = [d for e, d in comfy.events if e == "stream_r1.chunk"]
    assert [(d["chunk"], d["frames"], d["node"]) for d in events] == [(0, 9, "7"), (1, 21, "7"), (2, 33, "7")]
    assert all(d["fps"] > 0 for d in events) and len(comfy.texts) == 3
    patchers, kw = comfy.loads[-1]
    fast = vae._stream_r1_fast_vae                                           # the stock VAE's fast decoder
    assert patchers == [model.patcher, fast.patcher] and kw["force_full_load"] and kw["memory_required"] > 0
    assert fast.patcher.model.held is fast.core and not hasattr(fast.core, "encoder")     # decoder only
    assert not state.alive                                                   # keep_state off: freed


def test_seconds_round_to_whole_chunks(comfy, nodes, model, vae):
    images, latent, _, _ = generate(nodes, model, vae, seconds=1.0)             # (16-1)/4+1 = 4.75 -> 2 chunks
    assert latent["samples"].shape[2] == 6 and images.shape[0] == 1 + 4 * 5


def test_decode_node_on_the_latent_equals_the_streamed_frames(comfy, nodes, model, vae):
    images, latent, _, _ = generate(nodes, model, vae, frames=25)               # 7 latents: a trimmed last chunk
    decoded, = run(nodes["StreamR1Decode"], vae=vae, samples=latent, unique_id="9")
    assert torch.equal(decoded, images)
    assert comfy.bars[-1] == (7, "9") and len(comfy.progress) == 3 + 7


def test_latent_is_raw_vae_space(comfy, pack, nodes, model):
    layout = sys.modules[PACK + ".nodes.layout"]
    _, latent, state, _ = generate(nodes, model, frames=9, keep_state=True)
    z = layout.core_from_latent(latent)                                      # back to the DiT's space
    from stream_r1.vae import LATENT_MEAN, LATENT_STD
    mean, std = torch.tensor(LATENT_MEAN).view(1, 16, 1, 1, 1), torch.tensor(LATENT_STD).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(latent["samples"], z.transpose(1, 2) * std + mean)
    image = torch.rand(5, 8, 8, 3)
    assert torch.equal(layout.image_from_frames(layout.frames_from_image(image), torch.device("cpu")), image)


def test_vae_stream_in_pieces_equals_one_full_decode(pack, vae):
    decode = sys.modules[PACK + ".nodes.decode"]
    z = torch.randn(1, 16, 6, 4, 4, generator=torch.Generator().manual_seed(1))
    stream = decode.ComfyVAEStream(vae)
    pieces = [stream.decode(z[:, :, a:b]) for a, b in ((0, 3), (3, 5), (5, 6))]
    assert [p.shape[2] for p in pieces] == [9, 8, 4]
    torch.testing.assert_close(torch.cat(pieces, 2), vae.core.decode(z).float(), atol=1e-6, rtol=0)


def test_without_a_vae_latents_still_come_with_latent_previews(comfy, nodes, model):
    images, latent, _, _ = generate(nodes, model, frames=9)
    assert images.shape == (1, 32, 32, 3) and latent["samples"].shape == (1, 16, 3, 4, 4)
    _, _, preview = comfy.progress[-1]
    assert preview[1].size == (4, 4)                                         # latent-to-RGB of the newest frame


# ---- continue ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("first_frames", [33, 25])                          # chunk-aligned, and a trimmed chunk
def test_continue_gives_the_frames_of_one_longer_generate(comfy, nodes, model, vae, first_frames):
    images, latent, state, _ = generate(nodes, model, vae, frames=first_frames, keep_state=True)
    more = dict(state=state, positive=cond(), seconds=1.5, keep_state=True, unique_id="8")   # + 6 latent frames
    loads = len(comfy.loads)
    images2, latent2, state2, _ = run(nodes["StreamR1Continue"], **more)
    assert len(comfy.loads) == loads + 1 and comfy.loads[-1][0] == [model.patcher,
                                                                  vae._stream_r1_fast_vae.patcher]   # reloaded
    n_lat = latent["samples"].shape[2] + 6
    full, full_latent, _, _ = generate(nodes, model, vae, frames=1 + 4 * (n_lat - 1))
    assert torch.equal(torch.cat([images, images2]), full)
    assert torch.equal(torch.cat([latent["samples"], latent2["samples"]], 2), full_latent["samples"])
    again, _, _, _ = run(nodes["StreamR1Continue"], **more)                     # the input state was not advanced
    assert torch.equal(again, images2) and state.alive and state2.alive


def test_continue_with_a_new_prompt_changes_only_the_new_frames(comfy, nodes, model, vae):
    images, _, state, _ = generate(nodes, model, vae, frames=9, keep_state=True)
    same, _, _, _ = run(nodes["StreamR1Continue"], state=state, positive=cond(), seconds=0.75, keep_state=False)
    other, _, s, _ = run(nodes["StreamR1Continue"], state=state, positive=cond(seed=5), seconds=0.75, keep_state=False)
    assert same.shape == other.shape == (12, 32, 32, 3) and not torch.equal(same, other) and not s.alive


def test_a_stream_freed_after_its_node_skips_the_last_clean_cache_pass(comfy, nodes, model, vae, monkeypatch):
    """keep_state off: nothing reads the final chunk's clean K/V, so its context pass (t = 0) is not run; the frames
    are the same either way. Continue without keep_state skips it too, on its fork only."""
    StreamSession = sys.modules[PACK + ".stream_r1.stream"].StreamSession       # the pack's own import of the core
    steps = []
    denoise = StreamSession._denoise

    def spy(self, x, t, *args, **kw):
        steps.append(float(t))
        return denoise(self, x, t, *args, **kw)

    monkeypatch.setattr(StreamSession, "_denoise", spy)
    kept, _, state, _ = generate(nodes, model, vae, frames=21, keep_state=True)          # 2 chunks x (4 + 1) passes
    assert len(steps) == 10 and steps.count(0.0) == 2
    steps.clear()
    freed, _, _, _ = generate(nodes, model, vae, frames=21)
    assert len(steps) == 9 and steps.count(0.0) == 1 and steps[-1] != 0.0
    assert torch.equal(kept, freed)
    steps.clear()
    more = dict(state=state, positive=cond(), seconds=0.75, unique_id="8")          # + 1 chunk
    last, _, _, _ = run(nodes["StreamR1Continue"], **more, keep_state=False)
    assert steps == steps[:4] and 0.0 not in steps
    assert not state.session.cfg.skip_last_context_pass                            # the input state is untouched
    steps.clear()
    again, _, _, _ = run(nodes["StreamR1Continue"], **more, keep_state=True)
    assert len(steps) == 5 and steps[-1] == 0.0 and torch.equal(again, last)


def test_continue_needs_a_kept_state(comfy, nodes, model):
    _, _, state, _ = generate(nodes, model, frames=9)
    with pytest.raises(ValueError, match="keep_state"):
        run(nodes["StreamR1Continue"], state=state, positive=cond(), seconds=1.0, keep_state=False)


# ---- interruption and memory ---------------------------------------------------------------------------------------
def _watch_kv_cache(monkeypatch):
    """Weak references to every KV buffer the pack allocates."""
    kv = sys.modules[PACK + ".stream_r1.kv_cache"].KVCache
    refs, init = [], kv.__init__

    def watched(self, *a, **kw):
        init(self, *a, **kw)
        refs.append(weakref.ref(self.k))

    monkeypatch.setattr(kv, "__init__", watched)
    return refs


@pytest.mark.parametrize("keep_state", [False, True])
def test_cancel_stops_between_chunks_and_frees_the_cache(comfy, nodes, model, vae, monkeypatch, keep_state):
    refs = _watch_kv_cache(monkeypatch)
    comfy.interrupt_after_events = 2                                         # Cancel while chunk 2 is shown
    mm = sys.modules["comfy.model_management"]
    with pytest.raises(mm.InterruptProcessingException) as info:
        generate(nodes, model, vae, frames=33, keep_state=keep_state)
    assert len(comfy.progress) == 2 and len(comfy.events) == 2               # chunk 3 never started
    assert comfy.empty_cache >= 1
    gc.collect()
    assert len(refs) == 1 and refs[0]() is None, "KV cache still alive while the traceback is held"
    del info


def test_twenty_generate_runs_do_not_grow_memory(comfy, nodes, model, vae):
    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))

    for _ in range(2):                                                       # warm caches (latent stats, ...)
        generate(nodes, model, vae, frames=9)
    comfy.clear()
    before = live_tensors()
    tracemalloc.start()
    start, _ = tracemalloc.get_traced_memory()
    for _ in range(20):
        out = generate(nodes, model, vae, frames=9)
        comfy.clear()
    del out
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    after = live_tensors()
    assert after <= before, f"{after - before} tensors leaked over 20 runs"
    assert grown < 256 * 1024, f"Python heap grew by {grown} bytes over 20 runs"


# ---- write to file -----------------------------------------------------------------------------------------------
def test_generate_to_file_writes_a_playable_video_and_shows_it(comfy, nodes, model, vae, tmp_path):
    result = run(nodes["StreamR1GenerateToFile"], model=model, positive=cond(), vae=vae, **SIZE, seconds=1.0,
                 frames=0, seed=3, filename_prefix="stream_r1/clip", fps=16.0, options=None, unique_id="5")
    path, video, _ = result["result"]
    assert Path(path) == tmp_path / "output" / "stream_r1" / "clip_00001_.mp4"
    assert result["ui"] == {"images": [{"filename": "clip_00001_.mp4", "subfolder": "stream_r1", "type": "output"}],
                            "animated": (True,)}
    assert video.file == path and read_video(path).shape == (21, 32, 32, 3)
    streamed, _, _, _ = generate(nodes, model, vae, seconds=1.0)
    written = torch.from_numpy(read_video(path)).float() / 255
    assert (written - streamed).abs().mean() < 0.1                           # same video, through H.264


def test_cancelled_file_is_still_playable(comfy, nodes, model, vae):
    comfy.interrupt_after_events = 2
    with pytest.raises(sys.modules["comfy.model_management"].InterruptProcessingException):
        run(nodes["StreamR1GenerateToFile"], model=model, positive=cond(), vae=vae, **SIZE, seconds=0, frames=33,
            seed=3, filename_prefix="cut", fps=16.0)
    (path,) = Path(sys.modules["folder_paths"].get_output_directory()).glob("cut_*.mp4")
    assert read_video(path).shape[0] == 9 + 12                               # the two finished chunks


# ---- options and bad inputs --------------------------------------------------------------------------------------
def test_options_keep_the_family_default_unless_set(comfy, nodes, model):
    opts = nodes["StreamR1Options"]
    keep = dict(cache_policy="auto", denoising_steps="", window_frames=-1, sink_frames=-1, sink_ema_alpha=-1.0,
                sink_ema_source="auto", context_noise=-1.0, full_cache_frames=-1)
    defaults = {k: v[1].get("default", v[0][0] if isinstance(v[0], list) else None)
                for k, v in opts.INPUT_TYPES()["required"].items()}
    assert defaults == {**keep, "denoising_steps": "1000,750,500,250"}
    options, = run(opts, **keep)
    assert options.resolve(model.stream_config) == model.stream_config
    full, = run(opts, **{**keep, "cache_policy": "full", "denoising_steps": "1000, 500"})
    _, latent, state, _ = generate(nodes, model, frames=45, keep_state=True, options=full)
    assert state.cfg.cache_policy == "full" and state.cfg.denoising_steps == (1000.0, 500.0)
    assert latent["samples"].shape[2] == 12
    window, = run(opts, **{**keep, "window_frames": 12, "sink_frames": 0})
    assert window.resolve(model.stream_config).window_frames == 12


@pytest.mark.parametrize("change, message", [
    (dict(width=100), "width must be a positive multiple of 16, got 100; try 96"),
    (dict(frames=10), "4k\\+1.*try 9 or 13"),
    (dict(positive=[[torch.zeros(1, 512, 4096), {}]]), "conditioning is 4096 wide.*umT5-XXL \\(CLIPLoader type wan\\)"),
    (dict(vae=stubs.FakeWanVAE(latent_channels=48)), "48 latent channels \\(a Wan 2.2 VAE\\).*Wan 2.1 VAE"),
])
def test_bad_generate_inputs_say_what_to_change(comfy, nodes, model, change, message):
    with pytest.raises(ValueError, match=message):
        generate(nodes, model, **change)


def test_bad_options_say_what_to_change(comfy, nodes):
    keep = dict(cache_policy="window_sink", denoising_steps="", window_frames=-1, sink_frames=-1,
                sink_ema_alpha=-1.0, sink_ema_source="auto", context_noise=-1.0, full_cache_frames=-1)
    with pytest.raises(ValueError, match="comma-separated"):
        run(nodes["StreamR1Options"], **{**keep, "denoising_steps": "1000;500"})
    with pytest.raises(ValueError, match="try window_frames=9"):
        run(nodes["StreamR1Options"], **{**keep, "window_frames": 4, "sink_frames": 3})


def test_decode_refuses_a_wan22_latent(comfy, nodes, vae):
    with pytest.raises(ValueError, match="Wan 2.2 latent"):
        run(nodes["StreamR1Decode"], vae=vae, samples={"samples": torch.zeros(1, 48, 3, 4, 4)})


# ---- headless ---------------------------------------------------------------------------------------------------
def test_nodes_run_without_comfyui(pack, nodes, models, vae, tmp_path, monkeypatch):
    assert "folder_paths" not in sys.modules and "comfy.utils" not in sys.modules
    monkeypatch.setenv("STREAM_R1_MODELS", str(models))
    monkeypatch.setenv("STREAM_R1_OUTPUT", str(tmp_path / "out"))
    names = nodes["StreamR1ModelLoader"].INPUT_TYPES()["required"]["model_name"][0]
    assert names == ["tiny_stream_r1.safetensors", "wan_2.1_vae.safetensors"]
    model, = run(nodes["StreamR1ModelLoader"], model_name=names[0], dtype="auto", attention="comfy", entry="auto")
    assert model.patcher is None and model.dtype == torch.float32
    images, _, _, _ = generate(nodes, model, vae, frames=9)
    assert images.shape == (9, 32, 32, 3)
    result = run(nodes["StreamR1GenerateToFile"], model=model, positive=cond(), vae=vae, **SIZE, seconds=0.5,
                 frames=0, seed=0, filename_prefix="a/b", fps=16.0)
    path, video, _ = result["result"]
    assert video is None and Path(path) == tmp_path / "out" / "a" / "b_00001_.mp4" and read_video(path).shape[0] == 9
    host = sys.modules[PACK + ".nodes.host"]
    with pytest.raises(FileNotFoundError):
        host.resolve_model("../stream_r1/tiny_stream_r1.safetensors")
    with pytest.raises(ValueError, match="leaves the output directory"):
        host.save_path("../escape", "mp4", 32, 32)


# ---- test-time scaling ------------------------------------------------------------------------------------------
TTS = dict(rho=-0.1, window_chunks=10, sinking="auto", max_delay=2)


def test_tts_greedy_single_candidate_is_the_plain_stream(comfy, nodes, model, vae):
    tts, = run(nodes["StreamR1TestTimeScaling"], beams=1, children=1, **{**TTS, "rho": 0.0})
    plain, lat, _, _ = generate(nodes, model, vae, frames=21)
    searched, lat_t, _, _ = generate(nodes, model, vae, frames=21, tts=tts)
    assert torch.equal(lat["samples"], lat_t["samples"]) and torch.equal(plain, searched)


def test_tts_search_streams_the_requested_length(comfy, nodes, model, vae, tmp_path):
    from stream_r1.tts import BrightnessReward
    reward = BrightnessReward()
    tts, = run(nodes["StreamR1TestTimeScaling"], beams=2, children=2, reward_model=reward, **TTS)
    image, latent, _, _ = generate(nodes, model, vae, frames=33, tts=tts)
    assert image.shape == (33, 32, 32, 3) and latent["samples"].shape[2] == 9
    assert reward.calls == 2 * 3                                  # short + long per chunk, 4 candidates batched
    result = run(nodes["StreamR1GenerateToFile"], model=model, positive=cond(), vae=vae, **SIZE, seconds=0,
                 frames=21, seed=3, filename_prefix="t1", fps=16.0, tts=tts, unique_id="5")
    assert read_video(result["result"][0]).shape == (21, 32, 32, 3)


def test_tts_without_reward_or_vae_says_what_to_connect(comfy, nodes, model):
    with pytest.raises(ValueError, match="reward model"):
        run(nodes["StreamR1TestTimeScaling"], beams=2, children=2, **TTS)
    tts, = run(nodes["StreamR1TestTimeScaling"], beams=1, children=1, **TTS)
    with pytest.raises(ValueError, match="connect a VAE"):
        generate(nodes, model, None, frames=9, tts=tts)


def test_continue_takes_test_time_scaling(comfy, nodes, model, vae):
    """Continue with a greedy 1 x 1 search (rho 0) = plain Continue; a 2 x 2 search gives the requested frames and
    a state that continues again."""
    from stream_r1.tts import BrightnessReward
    _, _, state, _ = generate(nodes, model, vae, frames=21, keep_state=True)
    more = dict(state=state, positive=cond(), seconds=0.75, keep_state=False)
    plain, lat, _, _ = run(nodes["StreamR1Continue"], **more)
    greedy, = run(nodes["StreamR1TestTimeScaling"], beams=1, children=1, **{**TTS, "rho": 0.0})
    same, lat_t, _, _ = run(nodes["StreamR1Continue"], **more, tts=greedy)
    assert torch.equal(plain, same) and torch.equal(lat["samples"], lat_t["samples"])
    wide, = run(nodes["StreamR1TestTimeScaling"], beams=2, children=2, reward_model=BrightnessReward(), **TTS)
    images, _, kept, _ = run(nodes["StreamR1Continue"], **{**more, "keep_state": True}, tts=wide)
    assert images.shape == (12, 32, 32, 3)
    again, _, _, _ = run(nodes["StreamR1Continue"], state=kept, positive=cond(), seconds=0.75, keep_state=False)
    assert again.shape == (12, 32, 32, 3)
    _, _, no_vae, _ = generate(nodes, model, None, frames=9, keep_state=True)
    with pytest.raises(ValueError, match="no VAE"):
        run(nodes["StreamR1Continue"], state=no_vae, positive=cond(), seconds=0.75, keep_state=False, tts=greedy)


def test_tts_node_lists_and_loads_hpsv3_and_states_the_cost(comfy, nodes, models):
    from stream_r1.reward.hpsv3_synthetic import write_synthetic_hpsv3
    from stream_r1.tts import BrightnessReward
    cls = nodes["StreamR1TestTimeScaling"]
    assert "4 candidates per chunk" in cls.DESCRIPTION and "GB" in cls.DESCRIPTION
    write_synthetic_hpsv3(models / "stream_r1" / "HPSv3")
    choices = cls.INPUT_TYPES()["optional"]["short_reward_file"][0]
    assert choices == ["none", "HPSv3/HPSv3.safetensors"]
    tts, = run(cls, beams=1, children=2, reward_model=BrightnessReward(), short_reward_file=choices[1], **TTS)
    assert type(tts.short_reward).__name__ == "HPSv3Model" and tts.reward is not tts.short_reward
    assert "tiny_stream_r1.safetensors" in nodes["StreamR1ModelLoader"].INPUT_TYPES()["required"]["model_name"][0]
    assert not any("HPSv3" in n for n in nodes["StreamR1ModelLoader"].INPUT_TYPES()["required"]["model_name"][0])


# ---- the fast decoder, overlap and compile on the node path --------------------------------------------------------
def test_a_stock_vae_streams_through_the_fast_decoder_built_once(comfy, pack, nodes, model):
    decode = sys.modules[PACK + ".nodes.decode"]
    vae = stubs.FakeWanVAE(seed=5)
    images, latent, _, _ = generate(nodes, model, vae, frames=21)
    fast = vae._stream_r1_fast_vae
    assert isinstance(fast, decode.CoreVAE) and fast.core.dtype == vae.vae_dtype
    again, _, _, _ = generate(nodes, model, vae, frames=21)
    assert vae._stream_r1_fast_vae is fast and torch.equal(again, images)         # cached, same frames
    stock = decode.ComfyVAEStream(vae)                                          # the stock module, driven directly
    frames = stock.frames(latent["samples"]).permute(0, 1, 3, 4, 2)[0]           # [T, H, W, 3]
    torch.testing.assert_close(images, frames, atol=1e-5, rtol=0)    # fp32: oneDNN's conv against PyTorch's own


def test_a_vae_on_another_device_decodes_eagerly_with_a_note(comfy, pack, nodes, model):
    decode = sys.modules[PACK + ".nodes.decode"]
    vae = stubs.FakeWanVAE(seed=5)
    vae.device = torch.device("cpu", 1)                          # e.g. --cpu-vae while the model is on the GPU
    stream = decode.vae_stream(vae, torch.device("cpu"))
    assert isinstance(stream, decode.ComfyVAEStream) and "decoding with ComfyUI's VAE module" in stream.note
    images, _, _, _ = generate(nodes, model, vae, frames=9)
    assert images.shape[0] == 9 and not hasattr(vae, "_stream_r1_fast_vae")
    assert any("ComfyUI's VAE module" in text for text, _ in comfy.texts)       # said on the node


def test_compile_where_it_cannot_run_keeps_the_decoder_eager_with_a_note(comfy, pack, nodes, model):
    decode = sys.modules[PACK + ".nodes.decode"]
    vae = stubs.FakeWanVAE(seed=5)
    stream = decode.vae_stream(vae, torch.device("cpu"), compile=True)            # CPU: no compile
    assert isinstance(stream, decode.CoreVAEStream) and "running eager" in stream.note
    assert not stream.wrapper.compiled and stream.vae.decoder._compiled_call_impl is None


def test_overlap_is_off_on_the_cpu_and_under_test_time_scaling(comfy, pack, nodes, model):
    generate_mod = sys.modules[PACK + ".nodes.generate"]
    state, _ = generate_mod._start(model, cond(), 32, 32, 1.0, 0, 0, stubs.FakeWanVAE(), None, False)
    assert generate_mod._overlap(state, tts=None) is False and not state.session.overlap_decode
    assert generate_mod._overlap(state, tts=object()) is False
    state.release()


def test_a_state_saved_with_the_stock_decoder_still_loads_and_continues(comfy, pack, nodes, model, tmp_path):
    decode = sys.modules[PACK + ".nodes.decode"]
    state_mod = sys.modules[PACK + ".nodes.state"]
    vae = stubs.FakeWanVAE(seed=5)
    full, _, _, _ = generate(nodes, model, vae, frames=45)                          # 12 latent frames in one run
    old_style = stubs.FakeWanVAE(seed=5)
    old_style.device = torch.device("cpu", 1)                                     # saved by ComfyVAEStream
    first, _, state, _ = generate(nodes, model, old_style, frames=21, keep_state=True)
    assert isinstance(state.vae_stream, decode.ComfyVAEStream)
    path = state.save(str(tmp_path / "old.safetensors"))
    loaded = state_mod.StreamState.load(model, path, vae)                        # a stock VAE on the model's device
    assert isinstance(loaded.vae_stream, decode.ComfyVAEStream) and "saved with ComfyUI's decoder" in \
        loaded.vae_stream.note
    rest, _, _, _ = run(nodes["StreamR1Continue"], state=loaded, positive=cond(), seconds=1.5, keep_state=False,
                     unique_id="8")
    torch.testing.assert_close(torch.cat([first, rest]), full, atol=1e-5, rtol=0)      # fp32: stock vs oneDNN conv


def test_frames_copied_by_a_worker_thread_give_the_same_outputs(comfy, pack, nodes, model, monkeypatch):
    """On a GPU the node copies frames to the host in a worker thread (inside ComfyUI's inference mode); forcing
    that thread on the CPU gives the same IMAGE, LATENT and file as the in-line copy."""
    import functools
    gen = sys.modules[PACK + ".nodes.generate"]
    vae = stubs.FakeWanVAE(seed=5)
    inline = generate(nodes, model, vae, frames=33)
    monkeypatch.setattr(gen, "HostCopier", functools.partial(gen.HostCopier, threaded=True))
    threaded = generate(nodes, model, vae, frames=33)
    assert torch.equal(inline[0], threaded[0]) and torch.equal(inline[1]["samples"], threaded[1]["samples"])
    result = run(nodes["StreamR1GenerateToFile"], model=model, positive=cond(), vae=vae, **SIZE, seconds=1.0,
                 frames=0, seed=3, filename_prefix="stream_r1/threaded", fps=16.0)
    frames = read_video(result["result"][0])
    assert frames.shape[0] == 21
