"""The shipped workflows, checked against node definitions (no ComfyUI needed), and the web extension's JS tests.

Definitions: stock nodes from the recorded `GET /object_info` of an unmodified ComfyUI 0.8.0
(tests/fixtures/object_info-0.8.0.json, see tests/fixtures/README.md), ours exported from NODE_CLASS_MAPPINGS in
the same format. The checks here are written independently of workflows/build.py (which writes the files), so
a mistake in the builder shows up as a failure, not as a copy of itself. What the frontend does is taken from
frontend 1.35.9 (the one ComfyUI 0.8.0 pins): a control_after_generate widget after an INT that asks for one
(`spec.control_after_generate ?? name in (seed, noise_seed)`); link inputs before widget inputs in `inputs`;
optional inputs with `shape` 7; graphToPrompt sends widget values by name, then links as [source id, slot].
"""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
FIXTURE = ROOT / "tests" / "fixtures" / "object_info-0.8.0.json"
FRONTEND_ONLY = {"Note", "MarkdownNote"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
"""Folders of a pack whose *.json ComfyUI 0.8.0 lists as templates (app/custom_node_manager.py)."""
FILE_WIDGETS = {("CLIPLoader", "clip_name"): "text_encoders", ("VAELoader", "vae_name"): "vae",
                ("StreamR1ModelLoader", "model_name"): "stream_r1"}
"""Combos listing model files: their value must be a file the node's properties.models names, in that folder."""
FOLDER_RELEASE_WIDGETS = {("StreamR1RewardLoader", "model_file"): "videoreward"}
"""Combos listing a file inside a whole-repository release (VideoReward: weights + config + tokenizer), which
ComfyUI's missing-model links cannot fetch: the value lies in the release's folder and the note links the release."""
USER_FILE_WIDGETS = {("StreamR1LoadState", "state_file")}
"""Combos listing the user's own files (stream states in output/ and input/): a shipped value names the file the
workflow expects (Save State's first file), which no fresh install holds."""


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


build = _load("stream_r1_workflows_build", WORKFLOWS / "build.py")


@pytest.fixture(scope="module")
def stock() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def ours() -> dict:
    return build.our_definitions()


@pytest.fixture(scope="module")
def defs(stock, ours) -> dict:
    assert not set(stock) & set(ours), "our node ids must not collide with stock ones"
    return {**stock, **ours}


UI_FILES = sorted(WORKFLOWS.glob("*.json"))
IDS = [p.stem for p in UI_FILES]


def api_twin(ui_path: Path) -> Path:
    return WORKFLOWS / "api" / f"{ui_path.stem}.api.json"


# ---- reading definitions (independently of build.py) ------------------------------------------------------
def grown(name: str, options: dict, present) -> list[tuple[str, str, dict, bool, None]]:
    """The slots of a V3 autogrow input present on a node: `<name>.<prefix>0, 1, ...` without gaps, at least
    `min` of them, the first `min` required."""
    template = options["template"]
    (inner,) = template["input"]["required"].values()
    prefix, low = f"{name}.{template['prefix']}", template.get("min", 1)
    found = sorted(int(n[len(prefix):]) for n in present if n.startswith(prefix) and n[len(prefix):].isdigit())
    assert found == list(range(len(found))), f"{name}: autogrow slots {found} have gaps"
    return [(f"{prefix}{i}", inner[0], inner[1] if len(inner) > 1 else {}, i >= low, None)
            for i in range(max(low, len(found)))]


def inputs_of(defn: dict, present=()) -> list[tuple[str, str, dict, bool, list | None]]:
    """(name, kind, options, optional, combo choices) in input_order; kind COMBO for list/`COMBO` specs;
    autogrow inputs expand to the slots named in `present`."""
    out = []
    for section in ("required", "optional"):
        for name in defn["input_order"].get(section, []):
            spec = defn["input"][section][name]
            options = spec[1] if len(spec) > 1 else {}
            if spec[0] == "COMFY_AUTOGROW_V3":
                out += grown(name, options, present)
            elif isinstance(spec[0], list):
                out.append((name, "COMBO", options, section == "optional", spec[0]))
            else:
                out.append((name, spec[0], options, section == "optional",
                            options.get("options") if spec[0] == "COMBO" else None))
    return out


def is_widget(kind: str, options: dict) -> bool:
    return kind in WIDGET_KINDS and not options.get("forceInput")


def has_control(name: str, kind: str, options: dict) -> bool:
    flag = options.get("control_after_generate")
    return kind == "INT" and bool(flag if flag is not None else name in ("seed", "noise_seed"))


def check_value(where: str, kind: str, options: dict, choices, value) -> None:
    if kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an INT"
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a FLOAT"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a STRING"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a BOOLEAN"
    elif kind == "COMBO":
        assert isinstance(value, str), f"{where}: {value!r} is not a COMBO choice"
        if choices is not None:
            assert value in choices, f"{where}: {value!r} is not one of {choices}"
    if kind in ("INT", "FLOAT"):
        assert options.get("min", value) <= value <= options.get("max", value), f"{where}: {value} out of range"
        if kind == "INT" and options.get("step", 1) > 1:
            assert (value - options.get("min", 0)) % options["step"] == 0 or value % options["step"] == 0, \
                f"{where}: {value} is not on the step {options['step']}"


def types_match(produced: str, accepted: str) -> bool:
    return "*" in (produced, accepted) or produced in accepted.split(",") or accepted in produced.split(",")


# ---- the files are what build.py writes ------------------------------------------------------------------
def test_committed_files_equal_the_builder_output(defs):
    rendered = build.render(defs)
    for path, text in rendered.items():
        assert path.is_file(), f"{path} missing: run python workflows/build.py"
        assert path.read_text() == text, f"{path} is out of date: run python workflows/build.py"
    shipped = set(WORKFLOWS.glob("*.json")) | set((WORKFLOWS / "api").glob("*.json"))
    assert shipped == set(rendered), f"files not written by build.py: {sorted(map(str, shipped - set(rendered)))}"
    assert len(UI_FILES) == 9 and all(api_twin(p).is_file() for p in UI_FILES)


def test_workflows_folder_is_a_template_folder_and_holds_only_ui_workflows():
    assert WORKFLOWS.name in TEMPLATE_FOLDERS
    for path in UI_FILES:                    # every top-level *.json is offered as a template: all must be UI format
        data = json.loads(path.read_text())
        assert data.get("version") == 0.4 and isinstance(data.get("nodes"), list), f"{path.name} is not a UI workflow"
    assert not list(WORKFLOWS.glob("*.api.json")), "API-format files would be listed as templates"


# ---- UI format ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", UI_FILES, ids=IDS)
def test_ui_workflow_is_valid(path, defs):
    ui = json.loads(path.read_text())
    from stream_r1.download import RELEASES

    urls = {(r.filename, r.folder): r.url for r in RELEASES if r.path}
    assert ui["version"] == 0.4 and ui["config"] == {} and isinstance(ui["groups"], list)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]), "duplicate node ids"
    links = {link[0]: link for link in ui["links"]}
    assert len(links) == len(ui["links"]), "duplicate link ids"
    assert ui["last_node_id"] >= max(nodes) and ui["last_link_id"] >= max(links, default=0)
    for group in ui["groups"]:
        assert len(group["bounding"]) == 4 and group["title"]

    for node in ui["nodes"]:
        where = f"{path.name} node {node['id']} ({node['type']})"
        assert len(node["pos"]) == 2 and len(node["size"]) == 2 and node["mode"] == 0
        if node["type"] in FRONTEND_ONLY:
            assert node["inputs"] == [] and node["outputs"] == [] and len(node["widgets_values"]) == 1
            continue
        assert node["type"] in defs, f"{where}: no such node type in ComfyUI 0.8.0 or this pack"
        defn = defs[node["type"]]
        assert not defn.get("deprecated") and not defn.get("experimental"), f"{where}: deprecated/experimental node"
        spec = inputs_of(defn, [i["name"] for i in node["inputs"]])
        sockets = [s for s in spec if not is_widget(s[1], s[2])]
        widgets = [s for s in spec if is_widget(s[1], s[2])]

        # inputs: link slots, then one entry per widget, named and typed as the definition says
        expected = [(n, k, opt, None) for n, k, _, opt, _ in sockets] + [(n, k, opt, n) for n, k, _, opt, _ in widgets]
        got = [(i["name"], i["type"], i.get("shape") == 7, (i.get("widget") or {}).get("name")) for i in node["inputs"]]
        assert got == expected, f"{where}: inputs {got} != definition {expected}"
        for item in node["inputs"]:              # autogrow slots: labelled by their own name, one spare at the end
            if "." in item["name"]:
                assert item["label"] == item["name"].split(".", 1)[1], f"{where}: label of {item['name']}"
        grow = [i for i in node["inputs"] if "." in i["name"]]
        if grow:
            assert grow[-1]["link"] is None and all(i["link"] is not None for i in grow[:-1]), \
                f"{where}: the frontend keeps exactly one empty slot after the connected ones"

        # widget values: one per widget plus the control value after each seed-like INT, each a valid value
        values = list(node["widgets_values"])
        assert len(values) == len(widgets) + sum(has_control(n, k, o) for n, k, o, _, _ in widgets), \
            f"{where}: {len(values)} widget values for {[w[0] for w in widgets]}"
        it = iter(values)
        for name, kind, options, _, choices in widgets:
            value = next(it)
            if (node["type"], name) in FILE_WIDGETS:
                folder = FILE_WIDGETS[(node["type"], name)]
                models = node["properties"].get("models", [])
                assert {"name": value, "url": urls.get((value, folder)), "directory": folder} in models, \
                    f"{where}: {name}={value!r} has no download link in properties.models"
                choices = None                     # the file list depends on the user's models folder
            if (node["type"], name) in FOLDER_RELEASE_WIDGETS or (node["type"], name) in USER_FILE_WIDGETS:
                choices = None
            check_value(f"{where} {name}", kind, options, choices, value)
            if has_control(name, kind, options):
                control = next(it)
                assert control in CONTROL_VALUES, f"{where}: {control!r} is not a control_after_generate value"
                assert control == "fixed", f"{where}: seeds ship fixed, so the example reproduces"
        for model in node["properties"].get("models", []):
            assert urls.get((model["name"], model["directory"])) == model["url"], f"{where}: unknown model {model}"
            assert model["url"].startswith("https://huggingface.co/")

        # every required link input is connected; links agree with both ends
        for (name, kind, _, optional, _), item in zip(sockets, node["inputs"]):
            assert optional or item["link"] is not None, f"{where}: required input {name} is not connected"
            if item["link"] is None:
                continue
            lid, src, src_slot, dst, dst_slot, ltype = links[item["link"]]
            assert (dst, node["inputs"][dst_slot]["name"]) == (node["id"], name), f"{where}: link {lid} target"
            produced = defs[nodes[src]["type"]]["output"][src_slot]
            assert ltype == produced and types_match(produced, kind), f"{where}: {name} ({kind}) fed {produced} by link {lid} typed {ltype}"
            assert lid in nodes[src]["outputs"][src_slot]["links"], f"{where}: link {lid} missing at its source"
        assert [(o["name"], o["type"]) for o in node["outputs"]] == list(zip(defn["output_name"], defn["output"]))
        for slot, out in enumerate(node["outputs"]):
            for lid in out["links"] or []:
                assert links[lid][1:3] == [node["id"], slot], f"{where}: output link {lid} starts elsewhere"

    # every link ends at an input that lists it; every executable node feeds an output node
    for lid, src, src_slot, dst, dst_slot, ltype in ui["links"]:
        assert nodes[dst]["inputs"][dst_slot]["link"] == lid
    feeds = {n: set() for n in nodes}
    for _, src, _, dst, _, _ in ui["links"]:
        feeds[src].add(dst)

    def reaches_output(n, seen=()):
        node = nodes[n]
        return defs[node["type"]]["output_node"] or any(reaches_output(d, seen + (n,)) for d in feeds[n] - set(seen))

    for n, node in nodes.items():
        if node["type"] not in FRONTEND_ONLY:
            assert reaches_output(n), f"{path.name} node {n} ({node['type']}) feeds no output node: it would not run"


def convert(ui: dict, defs: dict) -> dict:
    """The frontend's graphToPrompt, written again for the test."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY or node["mode"] != 0:
            continue
        defn = defs[node["type"]]
        widgets = [s for s in inputs_of(defn) if is_widget(s[1], s[2])]
        values, inputs = list(node["widgets_values"]), {}
        for name, kind, options, _, _ in widgets:
            inputs[name] = values.pop(0)
            if has_control(name, kind, options):
                values.pop(0)
        for item in node["inputs"]:
            if item["link"] is not None:
                inputs[item["name"]] = [str(links[item["link"]][1]), links[item["link"]][2]]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"],
                                   "_meta": {"title": node.get("title") or defn["display_name"]}}
    return prompt


@pytest.mark.parametrize("path", UI_FILES, ids=IDS)
def test_api_twin_is_the_conversion_of_the_ui_file(path, defs):
    api = json.loads(api_twin(path).read_text())
    assert api == convert(json.loads(path.read_text()), defs)


@pytest.mark.parametrize("path", UI_FILES, ids=IDS)
def test_api_twin_is_a_valid_prompt(path, defs):
    """What ComfyUI's validate_prompt checks first: classes exist, required inputs given, links typed, an output."""
    api = json.loads(api_twin(path).read_text())
    assert any(defs[n["class_type"]]["output_node"] for n in api.values()), "no output node"
    for nid, node in api.items():
        defn = defs[node["class_type"]]
        spec = {name: (kind, options, optional, choices)
                for name, kind, options, optional, choices in inputs_of(defn, node["inputs"])}
        assert set(node["inputs"]) <= set(spec), f"{nid}: unknown inputs {set(node['inputs']) - set(spec)}"
        for name, (kind, options, optional, choices) in spec.items():
            if name not in node["inputs"]:
                assert optional, f"{nid} ({node['class_type']}): required input {name} missing"
                continue
            value = node["inputs"][name]
            if is_widget(kind, options):
                files = (node["class_type"], name) in {*FILE_WIDGETS, *FOLDER_RELEASE_WIDGETS, *USER_FILE_WIDGETS}
                check_value(f"{nid} {name}", kind, options, None if files else choices, value)
            else:
                src, slot = value
                assert isinstance(src, str) and src in api, f"{nid}.{name}: link to missing node {src}"
                produced = defs[api[src]["class_type"]]["output"][slot]
                assert types_match(produced, kind), f"{nid}.{name}: {kind} fed {produced}"


@pytest.mark.parametrize("path", UI_FILES, ids=IDS)
def test_each_workflow_links_every_file_it_needs(path):
    ui = json.loads(path.read_text())
    from stream_r1.download import BY_NAME

    needed = {("umt5_xxl_fp16.safetensors", "text_encoders"), ("wan_2.1_vae.safetensors", "vae"),
              ("stream_r1.pt", "stream_r1")}
    linked = {(m["name"], m["directory"]) for n in ui["nodes"] for m in n.get("properties", {}).get("models", [])}
    notes = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    if any(n["type"] == "StreamR1ShapesDemoLoader" for n in ui["nodes"]):      # the embedded bundle: nothing to fetch
        assert linked == set() and not {n["type"] for n in ui["nodes"]} & {"CLIPLoader", "VAELoader",
                                                                            "StreamR1ModelLoader"}
        assert notes and "no downloads" in notes[0].lower() and "bench/shapes_train.sh" in notes[0]
        return
    assert linked == needed
    assert notes and all(BY_NAME[r].url in notes[0] for r in ("stream_r1", "umt5", "vae"))
    for n in ui["nodes"]:                                   # whole-repository releases: linked from the note
        for name, release in FOLDER_RELEASE_WIDGETS.items():
            if n["type"] == name[0]:
                assert BY_NAME[release].url in notes[0]
                assert n["widgets_values"][0].startswith(BY_NAME[release].folder.split("/", 1)[1] + "/")
    assert "python -m stream_r1 download" in notes[0]


def test_the_workflows_do_what_they_say():
    api = {p.stem: json.loads(api_twin(p).read_text()) for p in UI_FILES}

    def of(name, cls):
        return [n for n in api[name].values() if n["class_type"] == cls]

    (t2v,) = [n["inputs"] for n in of("stream_r1_t2v_5s", "StreamR1GenerateToFile")]   # the MP4 written as it streams
    assert (t2v["seconds"], t2v["width"], t2v["height"], t2v["fps"]) == (5.0, 832, 480, 16)
    assert t2v["filename_prefix"] == "stream_r1/t2v_5s"
    assert of("stream_r1_t2v_5s", "CLIPLoader")[0]["inputs"]["type"] == "wan"
    assert of("stream_r1_t2v_5s", "StreamR1ModelLoader")[0]["inputs"]["compile"] is False
    assert not of("stream_r1_t2v_5s", "SaveVideo") and not of("stream_r1_t2v_5s", "CreateVideo")
    assert of("stream_r1_30s_to_file", "StreamR1GenerateToFile")[0]["inputs"]["seconds"] == 30
    long = of("stream_r1_3min_window_sink", "StreamR1GenerateToFile")[0]["inputs"]
    assert long["seconds"] >= 120 and "options" in long
    assert of("stream_r1_3min_window_sink", "StreamR1Options")[0]["inputs"]["cache_policy"] == "window_sink"
    branch = api["stream_r1_continue_branch"]
    gen = of("stream_r1_continue_branch", "StreamR1Generate")[0]["inputs"]
    assert gen["keep_state"] is True
    conts = of("stream_r1_continue_branch", "StreamR1Continue")
    assert len(conts) == 2 and conts[0]["inputs"]["state"] == conts[1]["inputs"]["state"]
    prompts = {branch[c["inputs"]["positive"][0]]["inputs"]["text"] for c in conts}
    assert len(prompts) == 2, "the two endings need different prompts"
    assert len(of("stream_r1_continue_branch", "SaveVideo")) == 2


def test_the_long_stream_workflows_do_what_they_say():
    from stream_r1.stream import latent_frames_for_seconds
    from stream_r1.timeline import Timeline

    api = {p.stem: json.loads(api_twin(p).read_text()) for p in UI_FILES}
    tl_flow = api["stream_r1_timeline_3min"]
    (timeline,) = [n for n in tl_flow.values() if n["class_type"] == "StreamR1Timeline"]
    (gen,) = [n for n in tl_flow.values() if n["class_type"] == "StreamR1GenerateToFile"]
    assert gen["inputs"]["seconds"] == 180 and gen["inputs"]["positive"][0] in tl_flow
    assert tl_flow[gen["inputs"]["positive"][0]] is timeline
    assert tl_flow[timeline["inputs"]["clip"][0]]["class_type"] == "CLIPLoader"
    tl = Timeline.parse(timeline["inputs"]["timeline"], timeline["inputs"]["default_transition"])
    chunks = latent_frames_for_seconds(gen["inputs"]["seconds"]) // 3
    events = tl.events(3, chunks)                      # fits the stream: what Generate to File checks at run time
    assert len(events) == 5 and {e.transition for e in events[1:]} == {"recache", "none", "flush"}
    assert events[-1].seconds < 180 - 20, "the last prompt gets a fair share of the stream"

    shapes = api["shapes_world_no_download"]
    (loader,) = [n for n in shapes.values() if n["class_type"] == "StreamR1ShapesDemoLoader"]
    (gen,) = [n for n in shapes.values() if n["class_type"] == "StreamR1Generate"]
    (timeline,) = [n for n in shapes.values() if n["class_type"] == "StreamR1Timeline"]
    (sal,) = [n for n in shapes.values() if n["class_type"] == "StreamR1RewardSaliency"]
    lid = next(k for k, v in shapes.items() if v is loader)
    assert gen["inputs"]["model"] == [lid, 0] and gen["inputs"]["vae"] == [lid, 2]
    assert timeline["inputs"]["clip"] == [lid, 1] and shapes[gen["inputs"]["positive"][0]] is timeline
    assert sal["inputs"]["reward_model"] == [lid, 3] and shapes[sal["inputs"]["images"][0]] is gen
    from training.recipes import get_recipe
    world = get_recipe("shapes_stream_r1").world                     # the size the bundle is trained at
    assert gen["inputs"]["seconds"] == 20 and (gen["inputs"]["height"], gen["inputs"]["width"]) == \
        (world.height, world.width)
    tl = Timeline.parse(timeline["inputs"]["timeline"], timeline["inputs"]["default_transition"])
    events = tl.events(3, latent_frames_for_seconds(20.0) // 3)
    assert len(events) == 3 and sal["inputs"]["prompt"] == events[0].prompt
    from stream_r1.shapes import parse_prompt
    assert all(parse_prompt(e.prompt) for e in events), "prompts in the shapes grammar"
    saved = [n for n in shapes.values() if n["class_type"] == "SaveVideo"]
    assert {shapes[shapes[n["inputs"]["video"][0]]["inputs"]["images"][0]]["class_type"] for n in saved} == \
        {"StreamR1Generate", "StreamR1RewardSaliency"}

    resume = api["stream_r1_resume_stream"]
    (load,) = [n for n in resume.values() if n["class_type"] == "StreamR1LoadState"]
    (cont,) = [n for n in resume.values() if n["class_type"] == "StreamR1Continue"]
    assert resume[cont["inputs"]["state"][0]] is load and "vae" in load["inputs"]
    assert load["inputs"]["state_file"].endswith(".safetensors")
    assert [n for n in resume.values() if n["class_type"] == "SaveVideo"]
    (tel,) = [n for n in resume.values() if n["class_type"] == "StreamR1Telemetry"]
    assert resume[tel["inputs"]["frames"][0]] is cont and tel["inputs"]["first_chunk_frames"] == 12


# ---- layout: what the frontend draws ---------------------------------------------------------------------------
# LiteGraph's LGraphNode.computeSize in frontend 1.35.9 (the one ComfyUI 0.8.0 pins), read from its bundle: a node's
# `size` excludes its title bar (drawn above `pos`); its height is one row per link slot (max of link inputs and
# outputs, at least 1), then each visible widget's height + 4 (a DOM widget's getMinHeight, else 20), then 8 when
# there are widgets, then 6. The frontend grows a node whose stored height is below that when it loads the workflow
# (and sets an autogrow node, e.g. Batch Images, to exactly that), so a smaller stored size ends under its neighbour.
TITLE_HEIGHT, SLOT_HEIGHT, WIDGET_HEIGHT, WIDGET_MARGIN, WIDGETS_PAD, BOTTOM_PAD = 30, 20, 20, 4, 8, 6
TEXTAREA_MIN = 50
"""Multiline STRING widgets and the Markdown note's editor are DOM widgets with a minimum height of 50 (measured)."""
GROUP_TITLE = 34
"""A group's title strip (font 24 x 1.4): members start below it."""
MEASURED = {"StreamR1GenerateToFile": 710, "StreamR1Generate": 686, "StreamR1Continue": 526, "BatchImagesNode": 66,
            "CLIPLoader": 106, "VAELoader": 58, "StreamR1ModelLoader": 154, "CLIPTextEncode": 88,
            "MarkdownNote": 88, "StreamR1Options": 226, "CreateVideo": 78, "SaveVideo": 106, "PreviewImage": 26,
            "StreamR1LoadState": 78, "StreamR1Telemetry": 126, "StreamR1RewardLoader": 82,
            "StreamR1RewardSaliency": 244, "StreamR1TestTimeScaling": 202, "StreamR1ShapesDemoLoader": 138,
            "StreamR1Timeline": 286}
"""`node.computeSize()[1]` of every node type in the shipped workflows, read in ComfyUI 0.8.0 + frontend 1.35.9 in
headless Chromium with the workflows loaded (the stream nodes with the 380 px live panel, Batch Images with two
images and its spare slot). The formula below must give exactly these."""


def web_constant(name: str, file: str = "stream_r1.js") -> int:
    import re

    found = re.search(rf"^const {name} = (\d+);", (ROOT / "web" / file).read_text(), re.M)
    assert found, f"web/{file} has no `const {name} = <px>;`"
    return int(found.group(1))


def stream_node_types() -> set[str]:
    import re

    found = re.search(r"STREAM_NODE_TYPES = Object\.freeze\(\[([^\]]*)\]\)", (ROOT / "web/lib/stream_state.js").read_text())
    return set(re.findall(r'"(\w+)"', found.group(1)))


def needed_height(node: dict, defs: dict) -> int:
    """The body height (title bar excluded) the frontend computes for a UI-format node."""
    if node["type"] in FRONTEND_ONLY:
        links, outputs, widgets = 0, 0, [TEXTAREA_MIN]              # the note's text editor
    else:
        options = {name: (kind, opts) for name, kind, opts, _, _ in inputs_of(defs[node["type"]],
                                                                             [i["name"] for i in node["inputs"]])}
        links = sum(1 for i in node["inputs"] if not i.get("widget"))
        outputs = len(node["outputs"])
        widgets = []
        for item in node["inputs"]:
            if not item.get("widget"):
                continue
            kind, opts = options[item["name"]]
            widgets.append(TEXTAREA_MIN if kind == "STRING" and opts.get("multiline") else WIDGET_HEIGHT)
            if has_control(item["name"], kind, opts):
                widgets.append(WIDGET_HEIGHT)                       # control_after_generate
        if node["type"] in stream_node_types():
            widgets.append(web_constant("PANEL_HEIGHT"))           # the live panel: addDOMWidget getMinHeight
        if node["type"] == "StreamR1Timeline":
            widgets.append(web_constant("TIMELINE_HEIGHT"))        # the timeline bar
    height = max(links, outputs, 1) * SLOT_HEIGHT
    if widgets:
        height += sum(h + WIDGET_MARGIN for h in widgets) + WIDGETS_PAD
    return height + BOTTOM_PAD


def rect(node: dict) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) on the canvas, title bar included."""
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def layout_problems(ui: dict, defs: dict) -> list[str]:
    """Why the workflow would not look finished in the frontend: nodes that grow on load, nodes on top of each other,
    nodes cut by a group they are not in, groups on top of each other."""
    problems = []
    for node in ui["nodes"]:
        need, (w, h) = needed_height(node, defs), node["size"]
        autogrow = any("." in i["name"] for i in node["inputs"])
        if h < need or (autogrow and h != need):
            problems.append(f"node {node['id']} ({node['type']}) is {h} high; the frontend makes it {need}")
    nodes = sorted(ui["nodes"], key=lambda n: n["id"])
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            if overlaps(rect(a), rect(b)):
                problems.append(f"nodes {a['id']} ({a['type']}) and {b['id']} ({b['type']}) overlap")
    boxes = [(g["title"], (g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                           g["bounding"][1] + g["bounding"][3])) for g in ui["groups"]]
    for title, (left, top, right, bottom) in boxes:
        for node in nodes:
            r = rect(node)
            inside = left <= r[0] and top + GROUP_TITLE <= r[1] and r[2] <= right and r[3] <= bottom
            if not inside and overlaps(r, (left, top, right, bottom)):
                problems.append(f"node {node['id']} ({node['type']}) overlaps group {title!r} it is not in")
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            if overlaps(a, b):
                problems.append(f"groups {ta!r} and {tb!r} overlap")
    return problems


def test_the_height_formula_reproduces_the_measured_frontend_sizes(defs):
    seen = {}
    for path in UI_FILES:
        for node in json.loads(path.read_text())["nodes"]:
            seen.setdefault(node["type"], set()).add(needed_height(node, defs))
    assert set(seen) <= set(MEASURED), f"measure these in the browser first: {sorted(set(seen) - set(MEASURED))}"
    assert {t: h.pop() if len(h) == 1 else sorted(h) for t, h in seen.items()} == \
        {t: MEASURED[t] for t in seen}, "the formula must give the heights the frontend computed"
    assert web_constant("PANEL_HEIGHT") == 380, "the measured stream-node sizes hold for a 380 px live panel"


@pytest.mark.parametrize("path", UI_FILES, ids=IDS)
def test_nothing_overlaps_and_nothing_grows_on_load(path, defs):
    assert layout_problems(json.loads(path.read_text()), defs) == []


def test_the_layout_check_catches_overlaps_growth_and_cut_groups(defs):
    ui = json.loads((WORKFLOWS / "stream_r1_continue_branch.json").read_text())
    assert layout_problems(ui, defs) == []
    by_id = {n["id"]: n for n in ui["nodes"]}

    def broken(change) -> list[str]:
        copy = json.loads(json.dumps(ui))
        change({n["id"]: n for n in copy["nodes"]}, copy["groups"])
        return layout_problems(copy, defs)

    def stack(n, g):                                  # ending B's Continue right under ending A's title bar
        n[7]["pos"] = [n[6]["pos"][0], n[6]["pos"][1] + 200]
    assert any("nodes 6 (StreamR1Continue) and 7 (StreamR1Continue) overlap" in p for p in broken(stack))

    def old_size(n, g):                              # the size shipped before the live panel grew
        n[5]["size"] = [360, 436]
    assert broken(old_size) == ["node 5 (StreamR1Generate) is 436 high; the frontend makes it 686"]

    def batch(n, g):                                 # an autogrow node is set to exactly its size, smaller too
        n[11]["size"] = [220, 90]
    assert broken(batch) == ["node 11 (BatchImagesNode) is 90 high; the frontend makes it 66"]

    def into_group(n, g):                            # the note pushed half into the Models group
        n[8]["pos"] = [by_id[8]["pos"][0], by_id[4]["pos"][1] + 100]
    assert any("node 8 (MarkdownNote) overlaps group 'Models'" in p for p in broken(into_group))

    def cut(n, g):                                   # a group too short for its last member
        g[0]["bounding"][3] -= 60
    assert any("node 4 (StreamR1ModelLoader) overlaps group 'Models' it is not in" in p for p in broken(cut))

    def groups(n, g):
        g[1]["bounding"][0] = g[0]["bounding"][0] + 10
    assert any("groups 'Models' and 'Prompts' overlap" in p for p in broken(groups))


@pytest.mark.parametrize("path", UI_FILES, ids=IDS)
def test_every_stream_node_gets_the_workflows_clip_for_live_steering(path):
    ui = json.loads(path.read_text())
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {link[0]: link for link in ui["links"]}
    for node in ui["nodes"]:
        if node["type"] not in stream_node_types():
            continue
        (clip,) = [i for i in node["inputs"] if i["name"] == "clip"]
        assert clip["link"] is not None, f"{path.name} node {node['id']}: clip not connected"
        _, src, slot, _, _, kind = links[clip["link"]]
        assert kind == "CLIP" and nodes[src]["type"] in ("CLIPLoader", "StreamR1ShapesDemoLoader")
        assert nodes[src]["outputs"][slot]["type"] == "CLIP"


# ---- Templates dialog thumbnails --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", UI_FILES, ids=IDS)
def test_every_workflow_has_its_thumbnail(path):
    """Frontend 1.35.9 shows a custom-node template with `/api/workflow_templates/<pack>/<name>.jpg` (mediaSubtype
    jpg, no '-1' suffix), which ComfyUI serves from the same folder as the JSON."""
    from PIL import Image

    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{thumb.name} missing: run python workflows/thumbnails.py"
    assert thumb.stat().st_size < 60_000, f"{thumb.name} is {thumb.stat().st_size} bytes"
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.width >= 256 and im.height >= 144


def test_no_thumbnail_without_its_workflow():
    assert {p.stem for p in WORKFLOWS.glob("*.jpg")} == set(IDS)


# ---- our definitions in the object_info format ------------------------------------------------------------------
def test_our_object_info_has_the_shape_of_a_stock_v1_node(ours, stock):
    v1_keys = set(stock["CLIPTextEncode"])                 # a V1 node of ComfyUI 0.8.0, as server.node_info writes it
    for name, info in ours.items():
        optional = {"output_tooltips", "deprecated", "experimental", "api_node"}
        assert v1_keys - optional <= set(info) <= v1_keys | optional, name
        assert info["name"] == name and info["category"].startswith("Stream-R1/")
        assert set(info["input_order"]) == set(info["input"])
        for section, names in info["input_order"].items():
            assert names == list(info["input"][section])
        assert len(info["output"]) == len(info["output_name"]) == len(info["output_is_list"])
        assert len(info.get("output_tooltips", info["output"])) == len(info["output"])
        assert json.loads(json.dumps(info)) == info


def test_our_input_specs_are_what_the_frontend_can_build(ours, stock):
    stock_types = {t for d in stock.values() for t in d["output"]}
    for name, info in ours.items():
        for inp, kind, options, _, choices in inputs_of({**info, "input": {k: v for k, v in info["input"].items()
                                                                          if k != "hidden"},
                                                         "input_order": {k: v for k, v in info["input_order"].items()
                                                                         if k != "hidden"}}):
            where = f"{name}.{inp}"
            if kind == "COMBO":                  # file lists may be empty (no files yet), like stock loaders'
                assert choices is not None and all(isinstance(c, str) for c in choices), where
                if choices:
                    assert options.get("default", choices[0]) in choices, where
            elif is_widget(kind, options):
                assert "default" in options, f"{where}: widgets need a default"
                check_value(where, kind, options, None, options["default"])
                if options.get("control_after_generate"):
                    assert kind == "INT", where
            else:
                assert kind.isupper() and " " not in kind, f"{where}: link type {kind!r}"
                if kind.startswith("STREAM_R1_"):
                    assert kind not in stock_types, f"{where}: {kind} collides with a stock type"
        assert info["input"].get("hidden", {}).get("unique_id") in (None, "UNIQUE_ID")
    seed = ours["StreamR1Generate"]["input"]["required"]["seed"][1]
    assert seed["control_after_generate"] is True and seed["max"] == 0xFFFFFFFFFFFFFFFF


def test_every_generation_node_appears_in_a_workflow(ours):
    used = {n["type"] for p in UI_FILES for n in json.loads(p.read_text())["nodes"]}
    stream = {"StreamR1ModelLoader", "StreamR1Options", "StreamR1Generate", "StreamR1Continue",
              "StreamR1GenerateToFile"}
    assert stream <= set(ours) and stream <= used


# ---- the web extension -----------------------------------------------------------------------------------------
def test_web_folder_holds_only_browser_modules_as_js():
    """ComfyUI loads every web/**/*.js into the page: tests must not be *.js, modules must import relatively."""
    js = sorted(p.relative_to(ROOT / "web").as_posix() for p in (ROOT / "web").rglob("*.js"))
    assert js == ["lib/live_player.js", "lib/live_timeline.js", "lib/stream_state.js", "lib/timeline.js", "stream_r1.js"]
    text = (ROOT / "web" / "stream_r1.js").read_text()
    assert 'from "../../scripts/app.js"' in text and 'from "./lib/stream_state.js"' in text
    assert 'from "./lib/timeline.js"' in text
    for lib in ("stream_state.js", "timeline.js"):             # pure modules: no imports at all
        assert "import " not in (ROOT / "web" / "lib" / lib).read_text().split("export", 1)[0]
    build.import_pack()
    host = importlib.import_module(build.PACK_MODULE + ".nodes.host")      # the event the nodes send
    assert f'const CHUNK_EVENT = "{host.CHUNK_EVENT}";' in text


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_web_extension_logic_under_node():
    r = subprocess.run(["node", "--test", "web/tests/"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout
