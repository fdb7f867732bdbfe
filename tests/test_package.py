"""The pack imports the way ComfyUI imports it, cheaply, and the core stays free of ComfyUI."""
import os
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pack_imports_under_a_path_derived_name():
    name = "custom_nodes_x_stream_r1_test"                     # ComfyUI: module_path.replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
        assert isinstance(mod.NODE_CLASS_MAPPINGS, dict)
        assert set(mod.NODE_DISPLAY_NAME_MAPPINGS) <= set(mod.NODE_CLASS_MAPPINGS)
        assert mod.WEB_DIRECTORY == "./web"
    finally:
        for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[k]


def test_core_import_is_cheap_and_comfy_free():
    code = ("import sys, stream_r1; from stream_r1 import WanConfig, StreamConfig; "
            "bad = [m for m in ('comfy', 'folder_paths', 'server', 'transformers', 'av') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_core_never_imports_comfyui():
    for path in (ROOT / "stream_r1").rglob("*.py"):
        text = path.read_text()
        for mod in ("import comfy", "from comfy", "import folder_paths", "import server"):
            assert mod not in text, f"{path} imports {mod.split()[-1]}"


@pytest.mark.skipif(not __import__("stream_r1.shapes.bundle", fromlist=["available"]).available(),
                    reason="no shapes-world bundle: the README's main job would run the random demo model")
def test_the_readme_main_job_runs_as_written(tmp_path):
    """Set-up command 1 of the README (after its pip install) on this CPU, in a fresh folder: the embedded model."""
    import shlex


    text = (ROOT / "README.md").read_text()
    line = text[text.index("# 1. install and run the main job"):].splitlines()[1]
    cmd = shlex.split(line.split("&&", 1)[1])
    assert cmd[:3] == ["python", "-m", "stream_r1"], line
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, *cmd[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / cmd[cmd.index("--out") + 1]
    assert out.stat().st_size > 10_000 and "shapes" in r.stderr.lower()


def test_the_tests_run_from_a_folder_named_as_the_readme_says(tmp_path):
    """Cloned into `ComfyUI-Stream-R1` (no Python identifier), pytest imports the root __init__.py as a lone module:
    it must not fail there (it used to error every test at collection)."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    clone = tmp_path / "ComfyUI-Stream-R1"
    shutil.copytree(root, clone, ignore=shutil.ignore_patterns(".git", "bench", "workflows", "docs", "bundle",
                                                               "__pycache__", ".hypothesis", "*.mp4"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_package.py",
                        "-k", "not from_a_folder"], cwd=clone, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


def test_pyproject_carries_the_comfy_registry_metadata():
    """The fields the Comfy Registry reads (docs.comfy.org/registry/specifications), and the runtime requirements."""
    import re

    from PIL import Image

    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    name_rule = r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*"       # no leading digit, no doubled separators
    assert re.fullmatch(name_rule, project["name"]) and len(project["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]) and project["description"]
    assert project["license"] == {"text": "Apache-2.0"}
    repo = project["urls"]["Repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo)
    assert project["urls"]["Documentation"].startswith(repo) and project["urls"]["Bug Tracker"] == repo + "/issues"
    assert re.fullmatch(name_rule, comfy["PublisherId"]) and comfy["DisplayName"]
    icon = comfy["Icon"]
    assert icon.startswith(repo.replace("github.com", "raw.githubusercontent.com") + "/main/")
    icon_file = ROOT / icon.split("/main/", 1)[1]                          # the icon is in the repository
    if (ROOT / "docs").is_dir():                                           # (the copy below leaves docs/ out)
        with Image.open(icon_file) as img:
            assert img.format == "PNG" and img.size == (400, 400)
    assert all((ROOT / d).is_dir() for d in comfy["includes"])
    required = {re.split(r"[<>=~! ]", r.strip(), maxsplit=1)[0].lower()
                for r in (ROOT / "requirements.txt").read_text().splitlines() if r.strip() and r[0] != "#"}
    assert required <= {re.split(r"[<>=~! ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
