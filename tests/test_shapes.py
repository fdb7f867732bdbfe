"""Shapes world: renderer determinism, prompt grammar round trip, analytic checker (CPU, fast)."""
import torch

from stream_r1.shapes import (Change, Scene, ShapeSpec, analyze, check, check_many, check_timeline, describe,
                              generate, parse_prompt, render, sample_scene)


def test_render_deterministic_and_seed_dependent():
    a, sa = generate(7, 12)
    b, sb = generate(7, 12)
    c, _ = generate(8, 12)
    assert a.shape == (12, 3, 128, 128) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and sa.prompt == sb.prompt
    assert not torch.equal(a, c)
    # antialiased: some edge pixels are neither background nor shape colour
    assert ((a > 0.02) & (a < 0.98)).any()


def test_prompt_roundtrip():
    for seed in range(60):
        sc = sample_scene(seed, 16, num_changes=seed % 2)
        for _, _, p in sc.segments():
            attrs = parse_prompt(p)
            assert attrs.to_prompt() == p
        assert parse_prompt(sc.prompt) == sc.attributes_at(0)
    a = parse_prompt("A green square and a white triangle moving up on a gray gradient background.")
    assert [s.motion for s in a.shapes] == ["moving up"] * 2 and a.gradient and a.background == "grey"


def test_checker_accuracy_random_scenes():
    n, ok, attr_ok = 40, 0, 0
    for seed in range(1000, 1000 + n):
        sc = sample_scene(seed, 10)
        frames = render(sc, supersample=2)
        r = check(frames, sc.prompt)
        ok += r["passed"]
        attr_ok += r["color_score"] == 1 and r["shape_score"] == 1 and r["motion_score"] == 1
    print(f"checker: passed {ok}/{n}, attributes {attr_ok}/{n}")
    assert ok / n >= 0.95 and attr_ok / n >= 0.95


def test_check_many_is_check_of_each_video_in_order():
    """The thread pool changes nothing: every field of every verdict as check() one by one (noisy frames too, where
    the colour assignment's residuals decide), prompts swapped between videos included; mismatched lengths refused."""
    import pytest

    g = torch.Generator().manual_seed(0)
    vids, prompts = [], []
    for seed in range(2000, 2006):
        f, sc = generate(seed, 9, width=64, height=64)
        vids.append((f + 0.04 * torch.randn(f.shape, generator=g)).clamp(0, 1) if seed % 2 else f)
        prompts.append(sc.prompt)
    prompts[-1], prompts[-2] = prompts[-2], prompts[-1]
    many = check_many(vids, prompts)
    one = [check(v, p) for v, p in zip(vids, prompts)]
    assert [m["score"] for m in many] == [o["score"] for o in one]
    assert [repr(m) for m in many] == [repr(o) for o in one]
    assert any(m["passed"] for m in many) and not all(m["passed"] for m in many)
    with pytest.raises(ValueError, match="one prompt per video"):
        check_many(vids, prompts[:-1])


def test_checker_rejects_mismatching_prompts():
    sc = Scene([ShapeSpec("circle", "red", "moving right", 16, (30, 64))], "black", num_frames=12)
    f = render(sc)
    assert check(f, "a red circle moving right on a black background")["passed"]
    for wrong in ("a blue square moving left on a black background",
                  "a blue circle moving right on a black background",
                  "a red square moving right on a black background",
                  "a red circle moving left on a black background",
                  "a red circle moving right on a white background",
                  "a red circle and a green star moving right on a black background"):
        assert not check(f, wrong)["passed"], wrong


def test_shape_grid():
    for kind in ("circle", "square", "triangle", "star", "diamond"):
        for motion in ("moving up", "moving left", "rotating", "growing"):
            if kind == "circle" and motion == "rotating":
                continue
            sc = Scene([ShapeSpec(kind, "yellow", motion, 16, (64, 64), min_size=10, max_size=26)],
                       "dark blue", True, num_frames=8)
            r = check(render(sc, supersample=2), sc.prompt)
            assert r["passed"], (sc.prompt, r["detected"]["shapes"])


def test_bouncing_reversals():
    sc = Scene([ShapeSpec("square", "green", "bouncing", 14, (100, 60), speed=5, bounce_dir=(0.9, 0.3))],
               "grey", num_frames=24)
    d = describe(analyze(render(sc)))["shapes"][0]
    assert d["motion"] == "bouncing" and d["reversals"] >= 1
    # a straight mover wraps around the frame without any reversal
    sc2 = Scene([ShapeSpec("square", "green", "moving right", 14, (100, 60), speed=3)], "grey",
                num_frames=24)
    d2 = describe(analyze(render(sc2)))["shapes"][0]
    assert d2["motion"] == "moving right" and d2["reversals"] == 0


def test_attribute_change_mid_video():
    sc = Scene([ShapeSpec("star", "red", "moving right", 16, (30, 64))], "black", num_frames=24,
               events=[Change(12, 0, "color", "cyan"), Change(12, 0, "motion", "moving up")])
    assert sc.prompt_at(0) == "a red star moving right on a black background"
    assert sc.prompt_at(15) == "a cyan star moving up on a black background"
    f = render(sc)
    res = check_timeline(f, sc)
    assert res["passed"] and len(res["segments"]) == 2
    # swapped timeline is rejected
    segs = sc.segments()
    swapped = [(segs[0][0], segs[0][1], segs[1][2]), (segs[1][0], segs[1][1], segs[0][2])]
    assert not check_timeline(f, swapped)["passed"]
    # random scenes with changes: most segments recovered
    good = tot = 0
    for seed in range(8):
        s = sample_scene(seed, 20, num_changes=1, num_shapes=1)
        frames = render(s, supersample=2)
        r = check_timeline(frames, s)
        good += sum(x["passed"] for x in r["segments"])
        tot += len(r["segments"])
    print(f"timeline segments passed {good}/{tot}")
    assert good / tot >= 0.8


def test_drift_and_temporal_scores():
    sc = Scene([ShapeSpec("circle", "white", "moving down", 14, (64, 20))], "black", num_frames=16)
    f = render(sc)
    r = check(f, sc.prompt)
    assert r["color_drift"] < 0.05 and r["area_drift"] < 0.1 and r["temporal_consistency"] > 0.95
    faded = f.clone()
    faded[8:] *= torch.linspace(1, 0.55, 8)[:, None, None, None]  # colour drifts over the stream
    assert not check(faded, sc.prompt)["passed"]


def test_words_outside_the_vocabulary_are_named():
    from stream_r1.shapes import SceneAttrs, ShapeAttrs, unknown_words
    assert unknown_words("a cat playing the piano") == ["cat", "playing", "piano"]
    assert unknown_words("A red circle bouncing around on a dark blue gradient background.") == []
    assert unknown_words("two red circles, a Cat and a cat") == ["two", "cat"]          # plural forgiven, once each
    scene = SceneAttrs((ShapeAttrs("cyan", "star", "moving to the left".replace("to the ", "")),), "grey", True)
    assert unknown_words(scene.to_prompt()) == []


def test_the_cli_says_which_words_the_shapes_model_does_not_know(tmp_path, caplog):
    import logging

    from stream_r1.cli import main
    with caplog.at_level(logging.WARNING):
        assert main(["generate", "--prompt", "a cat playing the piano", "--frames", "9", "--no-decode",
                     "--width", "48", "--height", "32", "--latents-out", str(tmp_path / "z.safetensors")]) == 0
    assert "does not know 'cat', 'playing', 'piano'" in caplog.text
