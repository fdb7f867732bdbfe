"""Build the shipped workflows from one description each: the UI format (what ComfyUI's Save writes and
drag-and-drop / the Templates dialog load; workflow JSON 0.4 as frontend 1.35.9 writes it) and its API twin
(what `POST /prompt` takes, converted from the UI file the way the frontend's graphToPrompt does).

    python workflows/build.py           # write workflows/<name>.json and workflows/api/<name>.api.json
    python workflows/build.py --check   # exit 1 when a committed file differs from what this script writes

Node definitions come in the object_info format: stock nodes from the recorded answer of an unmodified
ComfyUI 0.8.0 (tests/fixtures/object_info-0.8.0.json), ours from NODE_CLASS_MAPPINGS exported exactly as
ComfyUI's server.node_info does for V1 classes (`export_object_info`). The files each workflow needs (with
download links, in node `properties.models` as ComfyUI's own templates do) come from `stream_r1.download`, so
the workflows and `python -m stream_r1 download` cannot disagree.

ComfyUI 0.8.0 lists every `*.json` directly inside a pack's `workflows/` folder as a template (Templates
dialog -> Extensions -> <pack folder>), so the UI files live there and the API twins one level down.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "workflows"
API_DIR = HERE / "api"
OBJECT_INFO = ROOT / "tests" / "fixtures" / "object_info-0.8.0.json"
PACK_MODULE = "custom_nodes_x_stream_r1_workflows_build"
PACK_ID = "comfyui-stream-r1"
"""Registry id (pyproject [project] name): `properties.cnr_id` of our nodes, as the frontend writes it."""
COMFY_CORE = ("comfy-core", "0.8.0")
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
"""Node types that exist only in the frontend: no definition in object_info, dropped from the API format."""
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_NAMES = {"seed", "noise_seed"}
"""INT inputs that get a control_after_generate widget even without the option (the frontend's legacy rule)."""
AUTOGROW = "COMFY_AUTOGROW_V3"
"""A V3 input that grows one slot per connection (e.g. BatchImagesNode's images.image0, images.image1, ...)."""
OPTIONAL_SHAPE = 7
"""`shape` of an optional input slot in the UI format (LiteGraph's hollow dot)."""

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from stream_r1.download import BY_NAME  # noqa: E402


# ---- node definitions (object_info format) ---------------------------------------------------------------
def import_pack(name: str = PACK_MODULE):
    """The pack, imported by path under a path-derived name as ComfyUI imports it (ComfyUI not needed)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def export_object_info(cls: type, node_class: str, display_name: Optional[str],
                       python_module: str = "custom_nodes.ComfyUI-Stream-R1") -> dict:
    """What ComfyUI 0.8.0's `GET /object_info` answers for a V1 class (server.py `node_info`), JSON-normalised."""
    info: dict[str, Any] = {}
    info["input"] = cls.INPUT_TYPES()
    info["input_order"] = {key: list(value.keys()) for key, value in cls.INPUT_TYPES().items()}
    info["output"] = cls.RETURN_TYPES
    info["output_is_list"] = getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES))
    info["output_name"] = getattr(cls, "RETURN_NAMES", info["output"])
    info["name"] = node_class
    info["display_name"] = display_name if display_name is not None else node_class
    info["description"] = getattr(cls, "DESCRIPTION", "")
    info["python_module"] = python_module
    info["category"] = getattr(cls, "CATEGORY", "sd")
    info["output_node"] = getattr(cls, "OUTPUT_NODE", False) is True
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
    if getattr(cls, "DEPRECATED", False):
        info["deprecated"] = True
    if getattr(cls, "EXPERIMENTAL", False):
        info["experimental"] = True
    if hasattr(cls, "API_NODE"):
        info["api_node"] = cls.API_NODE
    return json.loads(json.dumps(info))


def our_definitions() -> dict[str, dict]:
    pack = import_pack()
    return {name: export_object_info(cls, name, pack.NODE_DISPLAY_NAME_MAPPINGS.get(name))
            for name, cls in pack.NODE_CLASS_MAPPINGS.items()}


def stock_definitions() -> dict[str, dict]:
    return json.loads(OBJECT_INFO.read_text())


def definitions() -> dict[str, dict]:
    return {**stock_definitions(), **our_definitions()}


# ---- reading a definition the way the frontend does ---------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    name: str
    type: str
    """Link type, or for widgets INT / FLOAT / STRING / BOOLEAN / COMBO."""
    options: dict
    optional: bool
    combo: Optional[list] = None
    """The choices of a COMBO."""
    label: Optional[str] = None
    """Shown name of a slot grown from an autogrow input (`image1` of `images.image1`)."""

    @property
    def control(self) -> bool:
        """An INT that gets a control_after_generate companion widget (one more value in widgets_values)."""
        flag = self.options.get("control_after_generate")      # frontend: spec flag ?? name in (seed, noise_seed)
        return self.type == "INT" and bool(flag if flag is not None else self.name in CONTROL_NAMES)


def autogrow(name: str, options: dict, linked: Iterable[str]) -> list[Slot]:
    """The slots a V3 autogrow input (COMFY_AUTOGROW_V3, prefix template) shows: `<name>.<prefix>0 ...` up to the
    last connected one (at least `min`, these required), plus one empty optional slot while under `max`."""
    template = options["template"]
    (inner,) = template["input"]["required"].values()
    prefix, low, high = f"{name}.{template['prefix']}", template.get("min", 1), template.get("max", 10)
    used = [int(n[len(prefix):]) for n in linked if n.startswith(prefix) and n[len(prefix):].isdigit()]
    count = min(high, max(low, max(used, default=-1) + 1) + 1)
    return [Slot(f"{prefix}{i}", inner[0], inner[1] if len(inner) > 1 else {}, i >= low,
                 label=f"{template['prefix']}{i}") for i in range(count)]


def slots(defn: dict, linked: Iterable[str] = ()) -> tuple[list[Slot], list[Slot]]:
    """(link inputs, widgets) of a definition, each in input_order (required, then optional); autogrow inputs
    expand to the slots the frontend shows with the inputs named in `linked` connected."""
    sockets, widgets = [], []
    for section in ("required", "optional"):
        specs = defn["input"].get(section, {})
        for name in defn.get("input_order", {}).get(section, list(specs)):
            spec = specs[name]
            kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
            if kind == AUTOGROW:
                sockets += autogrow(name, options, linked)
                continue
            combo = None
            if isinstance(kind, list):
                kind, combo = "COMBO", kind
            elif kind == "COMBO":
                combo = options.get("options", [])
            slot = Slot(name, kind, options, section == "optional", combo)
            (widgets if kind in WIDGET_TYPES and not options.get("forceInput") else sockets).append(slot)
    return sockets, widgets


def default_value(slot: Slot) -> Any:
    if "default" in slot.options:
        return slot.options["default"]
    if slot.type == "COMBO":
        return slot.combo[0] if slot.combo else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[slot.type]


# ---- workflow descriptions --------------------------------------------------------------------------------
@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    size: tuple[int, int]
    widgets: dict[str, Any] = field(default_factory=dict)
    """Widget values by input name; others keep their defaults. Seeds ship with control 'fixed'."""
    links: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Input name -> (source node id, output slot)."""
    title: Optional[str] = None
    models: tuple[str, ...] = ()
    """Release names (stream_r1.download) whose files this node loads: embedded as properties.models."""
    color: Optional[str] = None
    bgcolor: Optional[str] = None


@dataclass
class Workflow:
    name: str
    title: str
    description: str
    nodes: list[Node]
    groups: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    """(title, member node ids, colour): the box is drawn around the members (`group_box`)."""


TITLE_HEIGHT = 30
"""LiteGraph's NODE_TITLE_HEIGHT: a node's title bar is drawn above `pos`, outside `size`."""
GROUP_PAD, GROUP_TITLE = 20, 40
"""Margin of a group box around its members, and the strip above them that holds the group's title (font 24)."""
GENERATE_SIZE, CONTINUE_SIZE, TO_FILE_SIZE = (360, 686), (340, 526), (380, 710)
"""The stream nodes' sizes as frontend 1.35.9 computes them (title excluded): one 20 px row per link slot (6, 4,
6 of them), 24 px per widget (the seed's control widget included), the live panel's 380 px minimum
(web/stream_r1.js PANEL_HEIGHT) + 4, then 8 + 6 of padding. A smaller stored size would grow on load, under the
node below."""
BATCH_SIZE = (220, 66)
"""Batch Images with two images and its spare slot: the frontend sets an autogrow node to exactly its computed size."""


def group_box(wf: "Workflow", members: Iterable[int]) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a group drawn around `members` (title bars included), with room for its own title."""
    by_id = {n.id: n for n in wf.nodes}
    boxes = [(n.pos[0], n.pos[1] - TITLE_HEIGHT, n.pos[0] + n.size[0], n.pos[1] + n.size[1])
             for n in (by_id[i] for i in members)]
    left, top = min(b[0] for b in boxes) - GROUP_PAD, min(b[1] for b in boxes) - GROUP_TITLE
    right, bottom = max(b[2] for b in boxes) + GROUP_PAD, max(b[3] for b in boxes) + GROUP_PAD
    return left, top, right - left, bottom - top


def note(id: int, pos: tuple[int, int], size: tuple[int, int], text: str) -> Node:
    return Node(id, "MarkdownNote", pos, size, {"text": text}, title="Read me", color="#432", bgcolor="#653")


def files_markdown(releases: tuple[str, ...]) -> str:
    rows = "\n".join(f"| [{BY_NAME[r].filename or BY_NAME[r].repo_id + ' (whole repository)'}]({BY_NAME[r].url}) "
                     f"| `ComfyUI/models/{BY_NAME[r].folder}/` |" for r in releases)
    only = ",".join(releases)
    return ("| file | put it in |\n|---|---|\n" + rows +
            f"\n\nOr fetch them all: `python -m stream_r1 download --comfyui /path/to/ComfyUI --only {only}` "
            "(run in the Stream-R1 pack folder). ComfyUI's Missing Models dialog downloads only .safetensors "
            "files: it lists `stream_r1.pt` without a download button"
            + (", and cannot fetch the VideoReward folder" if "videoreward" in releases else "") + ".")


GENERATION_FILES = ("stream_r1", "umt5", "vae")
DISPLAY_COLOURS = {"models": "#3f789e", "prompt": "#8A8", "stream": "#b06634", "output": "#88A"}


def _loaders(y: int = 80, compile: bool = False) -> list[Node]:
    """Load CLIP (umT5, type wan), Load VAE and Stream-R1 Load Model, stacked in the left column. `compile`: the
    loader compiles the DiT and the decoder (long videos, where the first run's compiling pays back)."""
    return [
        Node(1, "CLIPLoader", (40, y), (340, 106), {"clip_name": BY_NAME["umt5"].filename, "type": "wan",
                                                    "device": "default"}, models=("umt5",)),
        Node(3, "VAELoader", (40, y + 160), (340, 58), {"vae_name": BY_NAME["vae"].filename}, models=("vae",)),
        Node(4, "StreamR1ModelLoader", (40, y + 270), (340, 154), {"model_name": BY_NAME["stream_r1"].filename,
                                                                  "compile": compile}, models=("stream_r1",)),
    ]


def _prompt(id: int, pos: tuple[int, int], text: str, title: str = "Prompt", size=(420, 180)) -> Node:
    return Node(id, "CLIPTextEncode", pos, size, {"text": text}, {"clip": (1, 0)}, title=title)


def t2v_5s() -> Workflow:
    nodes = _loaders() + [
        _prompt(2, (420, 80), "A red fox trotting through fresh snow in a birch forest at sunrise, soft golden "
                              "light, breath steaming, cinematic tracking shot"),
        Node(5, "StreamR1GenerateToFile", (880, 80), TO_FILE_SIZE,
             {"width": 832, "height": 480, "seconds": 5.0, "frames": 0, "seed": 42,
              "filename_prefix": "stream_r1/t2v_5s", "fps": 16.0},
             {"model": (4, 0), "positive": (2, 0), "vae": (3, 0), "clip": (1, 0)}),
        note(8, (420, 320), (420, 340),
             "## Stream-R1: 5-second text-to-video\n\nThe causal student streams 81 frames (5 s at 16 fps, 832x480) "
             "chunk by chunk; each chunk is decoded as soon as it is denoised and written to an MP4 in "
             "`output/stream_r1/` while the video streams. The node shows the newest frame, a chunk counter and "
             "the running FPS, then the video when it is done. For the frames as IMAGE, to chain into other "
             "nodes, use Stream-R1 Generate, as the continue/branch workflow (`stream_r1_continue_branch`) "
             "does.\n\n"
             + files_markdown(GENERATION_FILES)),
    ]
    return Workflow("stream_r1_t2v_5s", "Stream-R1: 5 s text to video",
                    "Text to a 5-second 832x480 video with the Stream-R1 student, stock umT5 text encoder and Wan "
                    "2.1 VAE. The MP4 is written while the video streams and the node shows it when done; for the "
                    "frames as IMAGE to chain into other nodes, use Stream-R1 Generate as the continue/branch "
                    "workflow does.", nodes,
                    [("Models", (1, 3, 4), DISPLAY_COLOURS["models"]), ("Stream to file", (5,), DISPLAY_COLOURS["stream"])])


def stream_30s() -> Workflow:
    nodes = _loaders(compile=True) + [
        _prompt(2, (420, 80), "A low drone shot flying over a winding river through an autumn forest, mist rising "
                              "from the water, golden hour, smooth continuous camera motion"),
        Node(5, "StreamR1GenerateToFile", (880, 80), TO_FILE_SIZE,
             {"width": 832, "height": 480, "seconds": 30.0, "frames": 0, "seed": 42,
              "filename_prefix": "stream_r1/stream_30s", "fps": 16.0},
             {"model": (4, 0), "positive": (2, 0), "vae": (3, 0), "clip": (1, 0)}),
        note(8, (420, 320), (420, 300),
             "## Stream-R1: 30-second stream to file\n\nEvery chunk is denoised, decoded and appended to an MP4 in "
             "`output/stream_r1/` as it is produced: memory stays flat and a cancelled run leaves a playable file. "
             "The node shows the video when it is done; its VIDEO output feeds stock video nodes.\n\n"
             + files_markdown(GENERATION_FILES)),
    ]
    return Workflow("stream_r1_30s_to_file", "Stream-R1: 30 s stream to file",
                    "A 30-second stream written to an MP4 chunk by chunk (flat memory, playable if cancelled).",
                    nodes, [("Models", (1, 3, 4), DISPLAY_COLOURS["models"]),
                            ("Stream to file", (5,), DISPLAY_COLOURS["stream"])])


def stream_3min() -> Workflow:
    nodes = _loaders(compile=True) + [
        _prompt(2, (420, 80), "A sailboat crossing a calm sea from dawn to dusk, the sky slowly turning from pink "
                              "to blue to orange, gentle waves, wide shot"),
        Node(6, "StreamR1Options", (420, 300), (420, 250),
             {"cache_policy": "window_sink", "denoising_steps": "1000,750,500,250", "window_frames": 9,
              "sink_frames": 3, "sink_ema_alpha": -1.0, "sink_ema_source": "auto", "context_noise": -1.0,
              "full_cache_frames": -1}),
        Node(5, "StreamR1GenerateToFile", (880, 80), TO_FILE_SIZE,
             {"width": 832, "height": 480, "seconds": 180.0, "frames": 0, "seed": 42,
              "filename_prefix": "stream_r1/stream_3min", "fps": 16.0},
             {"model": (4, 0), "positive": (2, 0), "vae": (3, 0), "options": (6, 0), "clip": (1, 0)}),
        note(8, (420, 600), (420, 330),
             "## Stream-R1: a 3-minute stream\n\nThe rolling KV cache keeps a window of 9 latent frames, 3 of "
             "them an EMA attention sink (window_sink, what Stream-R1 was trained with), so the cost per chunk "
             "and the memory stay the same for any length. 180 s = 2877 frames at 16 fps, written to "
             "`output/stream_r1/` as they are produced.\n\n" + files_markdown(GENERATION_FILES)),
    ]
    return Workflow("stream_r1_3min_window_sink", "Stream-R1: 3-minute stream (window + sink)",
                    "A minutes-long stream with the rolling window + EMA sink cache, written to an MP4 as it goes.",
                    nodes, [("Models", (1, 3, 4), DISPLAY_COLOURS["models"]),
                            ("Stream to file", (5,), DISPLAY_COLOURS["stream"])])


def continue_branch() -> Workflow:
    nodes = _loaders() + [
        _prompt(2, (420, 80), "A hot-air balloon rising over a valley of vineyards in the early morning, "
                              "soft light, slow ascent", title="Prompt: start"),
        _prompt(9, (420, 300), "The hot-air balloon drifts into a thunderstorm, dark clouds, flashes of lightning, "
                               "rain streaks", title="Prompt: ending A"),
        _prompt(10, (420, 520), "The hot-air balloon descends gently into a field of sunflowers, people running "
                                "towards it and waving", title="Prompt: ending B"),
        Node(5, "StreamR1Generate", (880, 80), GENERATE_SIZE,
             {"width": 832, "height": 480, "seconds": 5.0, "frames": 0, "seed": 42, "keep_state": True},
             {"model": (4, 0), "positive": (2, 0), "vae": (3, 0), "clip": (1, 0)},
             title="Stream-R1 Generate (start, keeps state)"),
        Node(6, "StreamR1Continue", (1280, 80), CONTINUE_SIZE, {"seconds": 5.0, "keep_state": False},
             {"state": (5, 2), "positive": (9, 0), "clip": (1, 0)}, title="Continue: ending A"),
        Node(7, "StreamR1Continue", (1280, 680), CONTINUE_SIZE, {"seconds": 5.0, "keep_state": False},
             {"state": (5, 2), "positive": (10, 0), "clip": (1, 0)}, title="Continue: ending B"),
        Node(11, "BatchImagesNode", (1680, 80), BATCH_SIZE, {}, {"images.image0": (5, 0), "images.image1": (6, 0)},
             title="Start + ending A"),
        Node(12, "BatchImagesNode", (1680, 680), BATCH_SIZE, {}, {"images.image0": (5, 0), "images.image1": (7, 0)},
             title="Start + ending B"),
        Node(13, "CreateVideo", (1940, 80), (270, 80), {"fps": 16.0}, {"images": (11, 0)}),
        Node(14, "CreateVideo", (1940, 680), (270, 80), {"fps": 16.0}, {"images": (12, 0)}),
        Node(15, "SaveVideo", (2250, 80), (360, 280), {"filename_prefix": "stream_r1/branch_a"}, {"video": (13, 0)}),
        Node(16, "SaveVideo", (2250, 680), (360, 280), {"filename_prefix": "stream_r1/branch_b"}, {"video": (14, 0)}),
        note(8, (40, 600), (340, 420),
             "## Stream-R1: continue and branch\n\nGenerate keeps its stream (keep_state on: KV cache, noise "
             "generator and VAE cache). Each Continue works on its own copy of that state with a new prompt, so "
             "one start gets two endings with no seam and no VAE re-encode. Each ending is batched after the "
             "shared start and saved as its own video.\n\n" + files_markdown(GENERATION_FILES)),
    ]
    return Workflow("stream_r1_continue_branch", "Stream-R1: continue a stream, two endings",
                    "Generate 5 s and keep the stream; two Continue nodes with different prompts give two endings "
                    "from the same start.", nodes,
                    [("Models", (1, 3, 4), DISPLAY_COLOURS["models"]),
                     ("Prompts", (2, 9, 10), DISPLAY_COLOURS["prompt"]),
                     ("Start", (5,), DISPLAY_COLOURS["stream"]),
                     ("Branches", (6, 7), DISPLAY_COLOURS["stream"])])


def saliency_view() -> Workflow:
    prompt = ("A red kite flying over a green hill on a windy day, the string taut, clouds racing across a blue sky")
    nodes = _loaders() + [
        _prompt(2, (420, 80), prompt),
        Node(5, "StreamR1Generate", (880, 80), GENERATE_SIZE,
             {"width": 832, "height": 480, "seconds": 5.0, "frames": 0, "seed": 42, "keep_state": False},
             {"model": (4, 0), "positive": (2, 0), "vae": (3, 0), "clip": (1, 0)}),
        Node(9, "StreamR1RewardLoader", (40, 560), (340, 82),
             {"model_file": "VideoReward/checkpoint-11352/model.pth", "dtype": "auto"}),
        Node(10, "StreamR1RewardSaliency", (1280, 80), (380, 330),
             {"prompt": prompt, "axis": "combined", "alpha": 0.55, "spatial_floor": 0.15, "temporal_floor": 0.2},
             {"reward_model": (9, 0), "images": (5, 0)}),
        Node(11, "CreateVideo", (1700, 80), (270, 80), {"fps": 16.0}, {"images": (10, 0)}),
        Node(12, "SaveVideo", (2010, 80), (420, 420), {"filename_prefix": "stream_r1/saliency_overlay"},
             {"video": (11, 0)}),
        Node(13, "PreviewImage", (1700, 240), (300, 260), {}, {"images": (10, 2)}, title="Temporal profile"),
        note(8, (420, 320), (420, 360),
             "## Stream-R1: where the reward model looks\n\nThe clip is scored by VideoReward (visual quality VQ, "
             "motion quality MQ, text alignment TA) and its gradients become Stream-R1's Intra-Perplexity weight: "
             "the per-frame, per-pixel weight of the training loss (`axis = combined`), or one axis' raw "
             "saliency. The overlay is saved as a video; the chart shows the temporal weight per latent frame; the node's `summary` output holds "
             "the scores. Keep the saliency prompt equal to the generation prompt.\n\n"
             + files_markdown(GENERATION_FILES + ("videoreward",))),
    ]
    return Workflow("stream_r1_saliency", "Stream-R1: reward saliency of a generated clip",
                    "Generate 5 s, then show where VideoReward looks (the Intra-Perplexity weight) as an overlay "
                    "video, a temporal profile and the scores.", nodes,
                    [("Models", (1, 3, 4, 9), DISPLAY_COLOURS["models"]),
                     ("Stream", (5,), DISPLAY_COLOURS["stream"]),
                     ("Reward saliency", (10, 11, 12, 13), DISPLAY_COLOURS["output"])])


FIVE_PROMPTS = (
    "# One paper boat, three minutes, five prompts. 'seconds: prompt' or 'm:ss: prompt'; each switch lands on\n"
    "# the nearest chunk boundary (every 0.75 s). [recache] = the same shot changes smoothly, [none] = a small\n"
    "# change of the text only, [flush] = a clean cut to a new shot.\n"
    "0: a small paper boat floats down a rain gutter in a quiet street, overcast morning, close tracking shot\n"
    "0:36 [recache]: the paper boat drifts out of the gutter into a wide stream through a green park, sunlight "
    "breaking through the clouds\n"
    "1:12 [none]: the paper boat drifts along the stream through the park, ducks swimming beside it, golden light\n"
    "1:48 [recache]: the stream widens into a river at dusk, city lights reflecting on the water around the paper "
    "boat\n"
    "2:24 [flush]: aerial view of a paper boat on the open sea at night under a full moon, calm silver waves\n")


def timeline_3min() -> Workflow:
    nodes = _loaders(compile=True) + [
        Node(2, "StreamR1Timeline", (420, 80), (560, 540), {"timeline": FIVE_PROMPTS, "default_transition": "recache"},
             {"clip": (1, 0)}),
        Node(5, "StreamR1GenerateToFile", (1020, 80), TO_FILE_SIZE,
             {"width": 832, "height": 480, "seconds": 180.0, "frames": 0, "seed": 42,
              "filename_prefix": "stream_r1/timeline_3min", "fps": 16.0},
             {"model": (4, 0), "positive": (2, 0), "vae": (3, 0), "clip": (1, 0)}),
        note(8, (420, 670), (560, 400),
             "## Stream-R1: a 3-minute stream with five prompts\n\nStream-R1 Prompt Timeline encodes each prompt once "
             "and hands the whole timeline to Generate to File, which switches prompts at the chunk boundary "
             "nearest to each time, in one stream (no cuts between clips, flat memory). The bar under the text "
             "shows the segments, their transitions and, since this node feeds a 180 s stream, where the stream "
             "ends; click a segment to select its line.\n\nTransitions: **recache** (default) re-encodes the "
             "cached frames under the new prompt, for a smooth change of the same shot; **flush** keeps only the "
             "sink and the last frame, for a clean cut; **none** changes only the text, for small edits.\n\n"
             + files_markdown(GENERATION_FILES)),
    ]
    return Workflow("stream_r1_timeline_3min", "Stream-R1: 3-minute stream, five prompts (timeline)",
                    "A 180 s stream that moves through five timed prompts with recache / none / flush transitions, "
                    "written to an MP4 as it goes.", nodes,
                    [("Models", (1, 3, 4), DISPLAY_COLOURS["models"]),
                     ("Prompt timeline", (2,), DISPLAY_COLOURS["prompt"]),
                     ("Stream to file", (5,), DISPLAY_COLOURS["stream"])])


def resume_stream() -> Workflow:
    nodes = _loaders() + [
        _prompt(2, (420, 80), "A hot-air balloon rising over a valley of vineyards in the early morning, soft light, "
                              "slow ascent", title="Prompt: same one to continue, a new one to branch"),
        Node(9, "StreamR1LoadState", (420, 300), (420, 110), {"state_file": "stream_r1/state_00001_.safetensors"},
             {"model": (4, 0), "vae": (3, 0)}),
        Node(5, "StreamR1Continue", (880, 80), CONTINUE_SIZE, {"seconds": 10.0, "keep_state": False},
             {"state": (9, 0), "positive": (2, 0), "clip": (1, 0)}),
        Node(6, "CreateVideo", (1280, 80), (270, 80), {"fps": 16.0}, {"images": (5, 0)}),
        Node(7, "SaveVideo", (1280, 200), (420, 420), {"filename_prefix": "stream_r1/resumed"}, {"video": (6, 0)}),
        Node(10, "StreamR1Telemetry", (1280, 720), (340, 150),
             {"first_chunk_frames": 12, "chunk_frames": 12, "fps": 16.0}, {"frames": (5, 0)}),
        Node(11, "PreviewImage", (1280, 910), (420, 300), {}, {"images": (10, 0)}, title="Drift telemetry"),
        note(8, (420, 460), (420, 470),
             "## Stream-R1: resume a saved stream\n\nStream-R1 Load State reads a stream saved by Stream-R1 Save "
             "State (Generate with keep_state on → Save State) or by `python -m stream_r1 generate --save-state "
             "FILE`: KV cache with its sink, positions, noise generator and VAE cache. Continue goes on from the "
             "exact frame where it stopped: the same prompt continues it as if it had never stopped, a new prompt "
             "(or a Stream-R1 Prompt Timeline) branches it. `state_file` lists the .safetensors files in "
             "ComfyUI's output folder (and its input folder, marked [input]: copy a CLI state there). Drift telemetry plots colour/exposure drift, sharpness, flicker and seams per chunk of the "
             "new frames (chunks of 12 frames).\n\n" + files_markdown(GENERATION_FILES)),
    ]
    return Workflow("stream_r1_resume_stream", "Stream-R1: resume a saved stream",
                    "Load a saved stream state and continue it by 10 s (same prompt: exact continuation; new "
                    "prompt: a branch), saved as a video, with a drift telemetry plot.", nodes,
                    [("Models", (1, 3, 4), DISPLAY_COLOURS["models"]),
                     ("Resume", (5,), DISPLAY_COLOURS["stream"]),
                     ("Video", (6, 7), DISPLAY_COLOURS["output"]),
                     ("Drift telemetry", (10, 11), DISPLAY_COLOURS["output"])])


def test_time_scaling() -> Workflow:
    prompt = ("A lighthouse on a rocky cliff during a storm, huge waves crashing against the rocks, the beam sweeping "
              "through the rain, dramatic wide shot")
    nodes = _loaders() + [
        _prompt(2, (420, 80), prompt),
        Node(9, "StreamR1RewardLoader", (40, 560), (340, 82),
             {"model_file": "VideoReward/checkpoint-11352/model.pth", "dtype": "auto"}),
        Node(10, "StreamR1TestTimeScaling", (420, 350), (420, 250),
             {"beams": 2, "children": 2, "rho": -0.1, "window_chunks": 10, "sinking": "auto", "max_delay": 2,
              "short_reward_file": "none"}, {"reward_model": (9, 0)}),
        Node(5, "StreamR1Generate", (880, 80), GENERATE_SIZE,
             {"width": 832, "height": 480, "seconds": 5.0, "frames": 0, "seed": 42, "keep_state": False},
             {"model": (4, 0), "positive": (2, 0), "vae": (3, 0), "tts": (10, 0), "clip": (1, 0)}),
        Node(6, "CreateVideo", (1280, 80), (300, 80), {"fps": 16.0}, {"images": (5, 0)}),
        Node(7, "SaveVideo", (1280, 200), (420, 420), {"filename_prefix": "stream_r1/test_time_scaling"},
             {"video": (6, 0)}),
        note(8, (420, 680), (420, 420),
             "## Stream-R1: test-time scaling (Stream-T1)\n\nEvery chunk, each of the 2 surviving beams gets 2 "
             "candidates (4 in all, run as one batched DiT call); VideoReward scores each candidate's own frames and "
             "the last 10 chunks of its lineage, and the best 2 go on. Cost: about 4x the DiT + decode work of the "
             "plain stream plus the reward model, for the same checkpoint and seed; output comes up to 2 chunks "
             "late (beams 1 = greedy best-of-children, live). Memory sinking is on for LongLive-policy models only. "
             "For Stream-T1's short reward put HPSv3 (HPSv3.safetensors + Qwen2-VL-7B-Instruct's tokenizer/) in "
             "`models/stream_r1/HPSv3/` and pick it in short_reward_file (~16 GB more).\n\n"
             + files_markdown(GENERATION_FILES + ("videoreward",))),
    ]
    return Workflow("stream_r1_test_time_scaling", "Stream-R1: test-time scaling (reward-guided search)",
                    "Generate 5 s with Stream-T1 test-time scaling: 2 beams x 2 candidates per chunk scored by "
                    "VideoReward, the best kept; about 4x the compute of a plain run.", nodes,
                    [("Models", (1, 3, 4, 9), DISPLAY_COLOURS["models"]),
                     ("Search", (10,), DISPLAY_COLOURS["prompt"]),
                     ("Stream", (5,), DISPLAY_COLOURS["stream"]),
                     ("Video", (6, 7), DISPLAY_COLOURS["output"])])


SHAPES_TIMELINE = (
    "# The shapes world speaks its own small language: 'a <colour> <shape> <motion> on a <background> background'\n"
    "# (colours red green blue yellow white orange purple cyan; circle square triangle star diamond; moving\n"
    "# left/right/up/down, bouncing, rotating, growing). Each switch lands on the nearest chunk boundary.\n"
    "0: a red circle moving right on a black background\n"
    "7 [recache]: a blue circle moving right on a black background\n"
    "14 [recache]: a blue circle bouncing on a black background\n")
SHAPES_SIZE = 96
"""The bundle's frame size (the shapes recipes render 96x96 clips)."""


def shapes_world() -> Workflow:
    first_prompt = "a red circle moving right on a black background"
    nodes = [
        Node(1, "StreamR1ShapesDemoLoader", (40, 80), (340, 150), {"dtype": "auto"}),
        Node(2, "StreamR1Timeline", (420, 80), (520, 330), {"timeline": SHAPES_TIMELINE,
                                                             "default_transition": "recache"}, {"clip": (1, 1)}),
        Node(5, "StreamR1Generate", (980, 80), GENERATE_SIZE,
             {"width": SHAPES_SIZE, "height": SHAPES_SIZE, "seconds": 20.0, "frames": 0, "seed": 42,
              "keep_state": False}, {"model": (1, 0), "positive": (2, 0), "vae": (1, 2), "clip": (1, 1)}),
        Node(6, "CreateVideo", (1400, 80), (270, 80), {"fps": 16.0}, {"images": (5, 0)}),
        Node(7, "SaveVideo", (1400, 200), (360, 330), {"filename_prefix": "stream_r1/shapes_world"},
             {"video": (6, 0)}),
        Node(9, "StreamR1RewardSaliency", (980, 880), (380, 330),
             {"prompt": first_prompt, "axis": "combined", "alpha": 0.55, "spatial_floor": 0.15,
              "temporal_floor": 0.2}, {"reward_model": (1, 3), "images": (5, 0)}),
        Node(10, "CreateVideo", (1400, 880), (270, 80), {"fps": 16.0}, {"images": (9, 0)}),
        Node(11, "SaveVideo", (1400, 1000), (360, 330), {"filename_prefix": "stream_r1/shapes_saliency"},
             {"video": (10, 0)}, title="Saliency overlay"),
        Node(12, "PreviewImage", (1800, 880), (300, 260), {}, {"images": (9, 2)}, title="Temporal profile"),
        note(8, (40, 300), (340, 620),
             "## Stream-R1: the shapes world (CPU, no downloads)\n\nThe Shapes Demo Loader reads the bundle "
             "embedded in the pack (`stream_r1/shapes/bundle/`): a small causal student, its Wan-architecture VAE, "
             "a umT5 text encoder and a 3-axis reward model, all trained by the pack's own recipes on rendered "
             "coloured shapes. A 20-second 96x96 stream follows the prompt timeline (a red circle moving right, "
             "turning blue at 7 s, bouncing from 14 s) and is saved as a video; the reward model then shows "
             "where it looks (saliency overlay video, temporal profile; TA is measured against the first "
             "prompt).\n\nNo files to fetch. If the loader says the bundle is missing, build it: "
             "`bash bench/shapes_train.sh` (see `docs/shapes-world.md`), or set "
             "`STREAM_R1_SHAPES_BUNDLE` to a bundle folder. A bundle without a `reward/` folder still streams; "
             "only the saliency node then stops with a message."),
    ]
    return Workflow("shapes_world_no_download", "Stream-R1: shapes world demo (CPU, no downloads)",
                    "The embedded shapes-world model: a 20 s stream through a three-prompt timeline, saved as a "
                    "video, and the bundle's reward model's saliency view. Runs on a CPU with no downloads.",
                    nodes,
                    [("Shapes bundle", (1,), DISPLAY_COLOURS["models"]),
                     ("Prompt timeline", (2,), DISPLAY_COLOURS["prompt"]),
                     ("Stream", (5,), DISPLAY_COLOURS["stream"]),
                     ("Video", (6, 7), DISPLAY_COLOURS["output"]),
                     ("Reward saliency", (9, 10, 11, 12), DISPLAY_COLOURS["output"])])


WORKFLOWS = (t2v_5s, stream_30s, stream_3min, continue_branch, saliency_view, timeline_3min, resume_stream,
             test_time_scaling, shapes_world)


# ---- UI format ---------------------------------------------------------------------------------------------
def _execution_order(wf: Workflow) -> dict[int, int]:
    """Topological order (ties by id), as LiteGraph's `order` field."""
    deps = {n.id: {src for src, _ in n.links.values()} for n in wf.nodes}
    order: dict[int, int] = {}
    while len(order) < len(deps):
        ready = sorted(i for i, d in deps.items() if i not in order and d <= set(order))
        if not ready:
            raise ValueError(f"{wf.name}: the graph has a cycle")
        for i in ready:
            order[i] = len(order)
    return order


def _properties(node: Node) -> dict:
    props: dict[str, Any] = {}
    if node.type not in FRONTEND_ONLY:
        props["Node name for S&R"] = node.type
        props["cnr_id"], ver = (PACK_ID, None) if node.type.startswith("StreamR1") else COMFY_CORE
        if ver:
            props["ver"] = ver
    if node.models:
        props["models"] = [{"name": BY_NAME[r].filename, "url": BY_NAME[r].url, "directory": BY_NAME[r].folder}
                           for r in node.models]
    return props


def to_ui(wf: Workflow, defs: dict[str, dict]) -> dict:
    by_id = {n.id: n for n in wf.nodes}
    order = _execution_order(wf)
    links: list[list] = []
    out_links: dict[tuple[int, int], list[int]] = {}
    in_links: dict[tuple[int, str], int] = {}
    for node in sorted(wf.nodes, key=lambda n: n.id):
        if node.type in FRONTEND_ONLY:
            continue
        sockets, _ = slots(defs[node.type], node.links)
        for slot in sockets:
            if slot.name not in node.links:
                continue
            src, src_slot = node.links[slot.name]
            link_id = len(links) + 1
            kind = defs[by_id[src].type]["output"][src_slot]
            links.append([link_id, src, src_slot, node.id, sockets.index(slot), kind])
            out_links.setdefault((src, src_slot), []).append(link_id)
            in_links[(node.id, slot.name)] = link_id
    ui_nodes = []
    for node in sorted(wf.nodes, key=lambda n: n.id):
        entry: dict[str, Any] = {"id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size),
                                 "flags": {}, "order": order[node.id], "mode": 0}
        if node.type in FRONTEND_ONLY:
            entry.update(inputs=[], outputs=[], properties={}, widgets_values=[node.widgets["text"]])
        else:
            defn = defs[node.type]
            sockets, widgets = slots(defn, node.links)
            unknown = set(node.widgets) - {w.name for w in widgets} | set(node.links) - {s.name for s in sockets}
            if unknown:
                raise ValueError(f"{wf.name}: node {node.id} ({node.type}) has no input(s) {sorted(unknown)}")
            inputs = []
            for slot in sockets:
                item = {"label": slot.label} if slot.label else {}
                item.update(localized_name=slot.name, name=slot.name)
                if slot.optional:
                    item["shape"] = OPTIONAL_SHAPE
                item.update(type=slot.type, link=in_links.get((node.id, slot.name)))
                inputs.append(item)
            for slot in widgets:
                item = {"localized_name": slot.name, "name": slot.name}
                if slot.optional:
                    item["shape"] = OPTIONAL_SHAPE
                item.update(type=slot.type, widget={"name": slot.name}, link=None)
                inputs.append(item)
            values = []
            for slot in widgets:
                values.append(node.widgets.get(slot.name, default_value(slot)))
                if slot.control:
                    values.append("fixed")
            outputs = [{"localized_name": name, "name": name, "type": kind,
                        "links": out_links.get((node.id, i), [])}
                       for i, (name, kind) in enumerate(zip(defn["output_name"], defn["output"]))]
            entry.update(inputs=inputs, outputs=outputs, properties=_properties(node), widgets_values=values)
        if node.title:
            entry["title"] = node.title
        if node.color:
            entry["color"], entry["bgcolor"] = node.color, node.bgcolor
        ui_nodes.append(entry)
    groups = [{"id": i + 1, "title": title, "bounding": list(group_box(wf, members)), "color": colour,
               "font_size": 24, "flags": {}} for i, (title, members, colour) in enumerate(wf.groups)]
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PACK_ID}/workflows/{wf.name}")), "revision": 0,
            "last_node_id": max(n.id for n in wf.nodes), "last_link_id": len(links), "nodes": ui_nodes,
            "links": links, "groups": groups, "config": {},
            "extra": {"ds": {"scale": 0.7, "offset": [90, 110]}, "stream_r1": {"title": wf.title,
                                                                             "description": wf.description}},
            "version": 0.4}


# ---- API format (the frontend's graphToPrompt) ---------------------------------------------------------------
def ui_to_api(ui: dict, defs: dict[str, dict]) -> dict:
    """Convert a UI-format workflow: active nodes with a backend class; widget values by name (control values
    dropped), then each connected input as [source id, slot]; `_meta.title` = the node's title or display name."""
    links = {link[0]: link for link in ui["links"]}
    prompt: dict[str, dict] = {}
    for node in sorted(ui["nodes"], key=lambda n: n["id"]):
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) != 0:
            continue
        defn = defs[node["type"]]
        _, widgets = slots(defn)
        values, inputs = iter(node.get("widgets_values", [])), {}
        for slot in widgets:
            inputs[slot.name] = next(values)
            if slot.control:
                next(values)
        for item in node["inputs"]:
            if item.get("link") is not None:
                _, src, src_slot, _, _, _ = links[item["link"]]
                inputs[item["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"],
                                   "_meta": {"title": node.get("title") or defn.get("display_name") or node["type"]}}
    return prompt


# ---- files -------------------------------------------------------------------------------------------------
def dumps(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render(defs: Optional[dict] = None) -> dict[Path, str]:
    """Every file this script writes -> its text."""
    defs = defs or definitions()
    files = {}
    for make in WORKFLOWS:
        wf = make()
        ui = to_ui(wf, defs)
        files[HERE / f"{wf.name}.json"] = dumps(ui)
        files[API_DIR / f"{wf.name}.api.json"] = dumps(ui_to_api(ui, defs))
    return files


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on any difference")
    args = p.parse_args(argv)
    stale = []
    for path, text in render().items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"out of date: {path.relative_to(ROOT)} (run python workflows/build.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
