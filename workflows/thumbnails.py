"""Write the Templates-dialog thumbnail beside each shipped workflow: `workflows/<name>.jpg`.

    python workflows/thumbnails.py                      # all of them (runs the shapes world on the CPU, ~40 s)
    python workflows/thumbnails.py --shapes-video X.mp4 # take the shapes frames from a video made earlier

Frontend 1.35.9 shows a custom-node template as its file name over `/api/workflow_templates/<pack>/<name>.jpg`,
which ComfyUI 0.8.0 serves from the folder holding the JSON (app/custom_node_manager.py), so each picture lives
next to its workflow. The shapes world runs here (embedded bundle, no downloads): its picture is three real frames
of `python -m stream_r1 generate` with the workflow's first prompt. The 832x480 workflows need weights this
repository does not hold, so theirs is a title card: the workflow's title, a map of its nodes at their real
positions (coloured by group, linked as in the graph) and the chain of nodes in words. No frame is invented.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Optional

from PIL import Image, ImageColor, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build  # noqa: E402

SIZE = (512, 384)
BACKGROUND, INK, DIM = (24, 26, 31), (236, 236, 236), (150, 156, 166)
NODE_FILL, NOTE_FILL, LINK = (70, 74, 84), (83, 68, 40), (120, 126, 138)
LOADERS = {"CLIPLoader", "VAELoader", "StreamR1ModelLoader", "StreamR1RewardLoader", "StreamR1ShapesDemoLoader"}
QUALITY = 82


def font(size: int, bold: bool = False):
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/Library/Fonts"):
        if Path(folder, name).is_file():
            return ImageFont.truetype(str(Path(folder, name)), size)
    return ImageFont.load_default()


def wrap(draw: ImageDraw.ImageDraw, text: str, face, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=face) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return lines + [line] if line else lines


def chain(wf: build.Workflow, defs: dict) -> str:
    """The workflow's nodes after its loaders, in execution order, in words: 'Prompt Timeline → Generate → ...'."""
    order = build._execution_order(wf)
    names = []
    for node in sorted(wf.nodes, key=lambda n: order[n.id]):
        if node.type in LOADERS or node.type in build.FRONTEND_ONLY:
            continue
        names.append(defs[node.type]["display_name"].removeprefix("Stream-R1 "))
    counts = Counter(names)
    seen = list(dict.fromkeys(names))
    return " → ".join(f"{n} ×{counts[n]}" if counts[n] > 1 else n for n in seen)


def node_map(draw: ImageDraw.ImageDraw, wf: build.Workflow, box: tuple[int, int, int, int]) -> None:
    """The workflow's canvas scaled into `box`: groups, nodes (title bars included) and links."""
    ui = build.to_ui(wf, build.definitions())
    rects = {n["id"]: (n["pos"][0], n["pos"][1] - build.TITLE_HEIGHT, n["pos"][0] + n["size"][0],
                       n["pos"][1] + n["size"][1]) for n in ui["nodes"]}
    areas = list(rects.values()) + [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                                     g["bounding"][1] + g["bounding"][3]) for g in ui["groups"]]
    left, top = min(a[0] for a in areas), min(a[1] for a in areas)
    right, bottom = max(a[2] for a in areas), max(a[3] for a in areas)
    scale = min((box[2] - box[0]) / (right - left), (box[3] - box[1]) / (bottom - top))
    ox = box[0] + ((box[2] - box[0]) - (right - left) * scale) / 2
    oy = box[1] + ((box[3] - box[1]) - (bottom - top) * scale) / 2

    def at(r):
        return (ox + (r[0] - left) * scale, oy + (r[1] - top) * scale, ox + (r[2] - left) * scale,
                oy + (r[3] - top) * scale)

    for g in ui["groups"]:
        x, y, w, h = g["bounding"]
        colour = ImageColor.getrgb(g["color"])
        draw.rectangle(at((x, y, x + w, y + h)), fill=tuple(c // 3 + 14 for c in colour), outline=colour)
    for _, src, _, dst, _, _ in ui["links"]:
        a, b = at(rects[src]), at(rects[dst])
        draw.line([(a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2)], fill=LINK, width=1)
    for n in ui["nodes"]:
        r = at(rects[n["id"]])
        draw.rectangle(r, fill=NOTE_FILL if n["type"] in build.FRONTEND_ONLY else NODE_FILL, outline=(20, 20, 20))
        draw.rectangle((r[0], r[1], r[2], r[1] + build.TITLE_HEIGHT * scale), fill=(44, 46, 52))


def title_card(wf: build.Workflow, defs: dict) -> Image.Image:
    im = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(im)
    title = wf.title.removeprefix("Stream-R1: ")
    title = title[:1].upper() + title[1:]
    draw.text((20, 16), "STREAM-R1", font=font(14, bold=True), fill=(176, 102, 52))
    y = 38
    for line in wrap(draw, title, font(25, bold=True), SIZE[0] - 40)[:2]:
        draw.text((20, y), line, font=font(25, bold=True), fill=INK)
        y += 31
    node_map(draw, wf, (20, y + 8, SIZE[0] - 20, SIZE[1] - 70))
    lines = wrap(draw, chain(wf, defs), font(13), SIZE[0] - 40)[:2]
    for i, line in enumerate(lines):
        draw.text((20, SIZE[1] - 58 + 17 * i), line, font=font(13), fill=DIM)
    draw.text((20, SIZE[1] - 22), "832×480 · weights: see the workflow's note (no preview frames here)",
              font=font(11), fill=(110, 116, 126))
    return im


def shapes_card(wf: build.Workflow, video: Path) -> Image.Image:
    """Three real frames (start, middle, end) of the shapes world with the workflow's first prompt."""
    from stream_r1.video_io import read_video

    frames = read_video(video)                                   # [T, H, W, 3] uint8
    im = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(im)
    draw.text((20, 16), "STREAM-R1 · RUNS ON A CPU, NO DOWNLOADS", font=font(14, bold=True), fill=(176, 102, 52))
    draw.text((20, 38), "Shapes world demo", font=font(25, bold=True), fill=INK)
    side, gap = 150, 11
    for i, t in enumerate((0, len(frames) // 2, len(frames) - 1)):
        tile = Image.fromarray(frames[t]).resize((side, side), Image.NEAREST)
        x = 20 + i * (side + gap)
        im.paste(tile, (x, 86))
        draw.text((x, 86 + side + 4), f"frame {t}", font=font(11), fill=DIM)
    prompt = first_prompt(wf)
    for i, line in enumerate(wrap(draw, f"“{prompt}”", font(14), SIZE[0] - 40)[:2]):
        draw.text((20, 270 + 19 * i), line, font=font(14), fill=INK)
    draw.text((20, SIZE[1] - 56), "Real frames of the embedded model (python -m stream_r1 generate);",
              font=font(12), fill=DIM)
    draw.text((20, SIZE[1] - 38), "the workflow adds a prompt timeline and the reward saliency view.",
              font=font(12), fill=DIM)
    return im


def first_prompt(wf: build.Workflow) -> str:
    (timeline,) = [n for n in wf.nodes if n.type == "StreamR1Timeline"]
    for line in timeline.widgets["timeline"].splitlines():
        if line and not line.startswith("#"):
            return line.split(":", 1)[1].strip()
    raise ValueError("the shapes timeline has no prompt")


def shapes_video(out: Path, prompt: str) -> Path:
    subprocess.run([sys.executable, "-m", "stream_r1", "generate", "--prompt", prompt, "--seconds", "3",
                    "--out", str(out)], cwd=build.ROOT, check=True)
    return out


def save(im: Image.Image, path: Path) -> None:
    im.save(path, "JPEG", quality=QUALITY, optimize=True, progressive=True)
    print(f"wrote {path.relative_to(build.ROOT)} ({path.stat().st_size // 1024} kB)")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes-video", type=Path, help="a video of the shapes world's first prompt (default: make one)")
    args = p.parse_args(argv)
    defs = build.definitions()
    for make in build.WORKFLOWS:
        wf = make()
        if wf.name == "shapes_world_no_download":
            video = args.shapes_video
            if video is None:
                video = shapes_video(Path(tempfile.mkdtemp()) / "shapes.mp4", first_prompt(wf))
            save(shapes_card(wf, video), build.HERE / f"{wf.name}.jpg")
        else:
            save(title_card(wf, defs), build.HERE / f"{wf.name}.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
