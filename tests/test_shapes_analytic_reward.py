"""The analytic shapes reward (training/shapes/analytic_reward.py) and the gate's statistics (gate.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from stream_r1.reward.model import RewardModel
from stream_r1.shapes import render, sample_scene
from stream_r1.shapes.prompts import background_rows
from stream_r1.shapes.sample import allowed_colors
from training.shapes.analytic_reward import AnalyticShapesReward
from training.shapes.gate import correlations, rankdata, spearman

SIZE, FRAMES = 48, 13
OPPOSITE = {"moving right": "moving left", "moving left": "moving right", "moving up": "moving down",
            "moving down": "moving up"}


def _scene(seed: int, motion: str = "moving right"):
    sc = sample_scene(seed, num_frames=FRAMES, width=SIZE, height=SIZE, num_shapes=1, motions=[motion])
    return sc, render(sc, supersample=2), sc.prompt_at(0)


def _background(sc) -> torch.Tensor:
    rows = torch.tensor(background_rows(sc.background, sc.gradient, SIZE))             # [H, 3]
    return rows.T[:, :, None].expand(3, SIZE, SIZE)


def test_implements_the_reward_protocol():
    r = AnalyticShapesReward()
    assert isinstance(r, RewardModel) and r.differentiable and r.axes == ("VQ", "MQ", "TA")
    sc, v, p = _scene(0)
    raw = r.score(v[None], [p])
    assert raw.shape == (1, 3) and raw.dtype == torch.float32
    assert torch.allclose(r.normalize(raw), (raw - r.norm_mean) / r.norm_std)
    with pytest.raises(ValueError, match="one per video"):
        r.score(v[None], [p, p])


def test_gradients_reach_the_foreground_pixels():
    r = AnalyticShapesReward()
    sc, v, p = _scene(1)
    x = v[None].clone().requires_grad_(True)
    raw = r.score(x, [p])
    fg = ((v - _background(sc)).norm(dim=1) > 0.2)                                     # [T, H, W] shape pixels
    assert fg.any()
    for j, axis in enumerate(r.axes):
        (g,) = torch.autograd.grad(raw[0, j], x, retain_graph=True)
        assert torch.isfinite(g).all(), axis
        on_fg = g[0].norm(dim=1)[fg]
        assert on_fg.abs().sum() > 1e-4, axis


@pytest.mark.parametrize("seed,motion", [(2, "moving right"), (3, "moving up"), (4, "moving left")])
def test_each_axis_prefers_the_matching_video(seed, motion):
    r = AnalyticShapesReward()
    sc, v, p = _scene(seed, motion)
    color = sc.shapes[0].color
    wrong_color = next(c for c in allowed_colors(sc.background, sc.gradient) if c != color)
    p_color = p.replace(f"a {color} ", f"a {wrong_color} ", 1)
    p_motion = p.replace(motion, OPPOSITE[motion])
    flicker = v.clone()
    flicker[1::2] = _background(sc)
    raw = r.score(torch.stack([v, v, v, flicker]), [p, p_color, p_motion, p])
    vq, mq, ta = raw.unbind(1)
    assert ta[0] > ta[1] + 0.3, (p, p_color, ta)                                        # colour mismatch
    assert mq[0] > mq[2] + 0.5, (p, p_motion, mq)                                       # opposite direction
    assert vq[0] > vq[3] + 0.3, (p, vq)                                                 # flickering
    assert ta[0] > 0.3 and mq[0] > 0.3 and vq[0] > 0.4


def test_saliency_through_pixels():
    from stream_r1.reward.saliency import gradient_saliency

    sc, v, p = _scene(5)
    sal = gradient_saliency(AnalyticShapesReward(), v[None], [p], target="pixels")
    assert sal.maps.shape == (1, 3, FRAMES, SIZE, SIZE) and torch.isfinite(sal.maps).all()
    assert (sal.maps.flatten(2).amax(-1) > 0).all()


def test_spearman_exact_values():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)                  # 1 - 6*2/(4*15)
    assert rankdata([1, 2, 2, 3]).tolist() == [1, 2.5, 2.5, 4]
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))     # ties: Pearson of ranks
    assert spearman([4, 3, 2, 1], [1, 2, 3, 4]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 30), rng.normal(size=30)
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b)[0])


def test_gate_correlations_pass_and_fail():
    rows = []
    for i, (c, m) in enumerate([(0, 0), (0.5, 0), (0.5, 1), (1, 1)]):
        rows.append({"prompt": "x", "score": (c + m) / 2, "targeted": (c + m) / 2, "color": c, "motion": m,
                     "temporal": 0.2 * i, "shape": 0.0, "background": 1.0, "pass": 0.0,
                     "a_r": float(i), "a_TA": float(i), "a_MQ": float(i), "a_VQ": float(-i)})
    out = correlations(rows, "a_", 0.3)
    assert out["passed"] and out["overall"]["score"]["rho"] == pytest.approx(1.0)
    assert out["axes"]["TA"]["rho"] == pytest.approx(spearman([0, 1, 2, 3], [0, 0.5, 0.5, 1]))
    assert out["axes"]["MQ"]["passed"] and not out["axes"]["VQ"]["passed"]
    assert math.isnan(out["collateral"]["shape"]["rho_r"])


def test_the_trainer_builds_it_by_name_and_needs_pixel_saliency():
    import torch

    from training.config import TrainConfig
    from training.models import build_reward
    from training.recipes import RECIPES
    from training.shapes.analytic_reward import AnalyticShapesReward

    cfg: TrainConfig = RECIPES["shapes_stream_r1"]()
    cfg.reward.path = "analytic-shapes"
    cfg.reward.target = "patches"
    with pytest.raises(ValueError, match="set reward.target=pixels"):
        cfg.validate()
    cfg.reward.target = "pixels"
    cfg.validate()
    assert isinstance(build_reward(cfg.reward, device=torch.device("cpu"), dtype=torch.float32), AnalyticShapesReward)


def test_arms_paired_differences_intervals_and_logged_statistics(tmp_path):
    """training.shapes.arms: pooled paired differences over (prompt, training seed) with a 95 % normal interval,
    per-seed means, means over generator steps of the logged weight statistics; a missing arm is named."""
    import json

    import numpy as np

    from training.shapes import arms

    rng = np.random.default_rng(0)
    base = [{k: float(rng.uniform()) for k in arms.METRICS} for _ in range(40)]
    rows = {"dmd": {0: base[:20], 1: base[20:]},
            "stream_r1": {s: [{k: v + (0.1 if k == "color" else 0.0) for k, v in r.items()} for r in rows]
                          for s, rows in ((0, base[:20]), (1, base[20:]))},
            "shuffled": {0: base[:20], 1: base[20:]}}
    out = arms.compare(rows, [0, 1])
    d = out["stream_r1 - dmd"]
    assert d["color"]["mean"] == pytest.approx(0.1) and d["color"]["n"] == 40
    assert d["color"]["ci95"][0] == pytest.approx(0.1) and d["color"]["per_seed"] == pytest.approx([0.1, 0.1])
    assert d["shape"]["mean"] == 0.0 and out["shuffled - dmd"]["score"]["mean"] == 0.0
    noisy = arms.paired([{"x": 1.0}, {"x": 3.0}], [{"x": 0.0}, {"x": 0.0}], "x")
    assert noisy["mean"] == 2.0 and noisy["se"] == pytest.approx(1.0)
    assert noisy["ci95"] == pytest.approx([2.0 - 1.96, 2.0 + 1.96])

    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps(m) for m in [
        {"step": 0, "generator_step": 1.0, "ess": 8.0, "w_inter_min": 0.5, "w_inter_max": 2.0, "r_checker": 0.4},
        {"step": 1, "generator_step": 0.0, "critic_loss": 1.0},
        {"step": 2, "generator_step": 1.0, "ess": 6.0, "w_inter_min": 0.4, "w_inter_max": 3.0,
         "r_checker": float("nan")}]))
    st = arms.logged_statistics(log)
    assert st["generator_steps"] == 2 and st["ess"] == 7.0 and st["r_checker"] == 0.4
    table = arms.markdown({"means": {a: {k: 0.5 for k in arms.METRICS} for a in arms.ARMS}, "paired": out,
                           "logged": {"stream_r1_s0": st}})
    assert "| stream_r1 - dmd | " in table and "+0.100 [+0.100, +0.100]" in table
    with pytest.raises(SystemExit, match="no trained arm in .*dmd_s0"):
        arms.main(["--runs", str(tmp_path), "--seeds", "0"])


def test_arms_student_rows_are_kept_and_read_back_only_for_the_same_student_and_settings(tmp_path):
    """Each student's scored videos are written beside it and read back (no sampling) by a later run with the same
    student file, prompts and frames; another student file, other prompts or an unreadable rows file sample again.
    --only names one student; a bad name says what to give."""
    import os

    from stream_r1.shapes import generate
    from training.shapes import arms

    clips = [generate(4000 + i, 9, width=48, height=48) for i in range(2)]
    prompts = [sc.prompt for _, sc in clips]
    calls = []

    def sample_fn(path):                             # the "student" draws the rendered clip of its prompt
        calls.append(path)
        return lambda prompt, seed, frames: clips[prompts.index(prompt)][0][:frames]

    student, rows_path = tmp_path / "student.safetensors", tmp_path / "eval_rows.json"
    student.write_bytes(b"x" * 10)
    first = arms.student_rows(student, rows_path, prompts, 9, sample_fn)
    assert len(calls) == 1 and len(first) == 2 and rows_path.is_file()
    assert first[0]["color"] > 0.5 and set(arms.METRICS) <= set(first[0])          # rendered clips pass the checker
    assert arms.student_rows(student, rows_path, prompts, 9, sample_fn) == first and len(calls) == 1
    arms.student_rows(student, rows_path, prompts[:1], 9, sample_fn)               # other prompts
    assert len(calls) == 2
    arms.student_rows(student, rows_path, prompts, 9, sample_fn)
    arms.student_rows(student, rows_path, prompts, 9, sample_fn)
    assert len(calls) == 3
    st = student.stat()                                                             # a retrained student
    os.utime(student, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    arms.student_rows(student, rows_path, prompts, 9, sample_fn)
    assert len(calls) == 4
    rows_path.write_text("{not json")
    assert arms.student_rows(student, rows_path, prompts, 9, sample_fn) == first and len(calls) == 5
    with pytest.raises(SystemExit, match="give one of dmd, stream_r1, shuffled with _s<seed>"):
        arms.main(["--runs", str(tmp_path), "--only", "ppo_s0"])
    with pytest.raises(SystemExit, match="no trained arm in .*stream_r1_s3;"):
        arms.main(["--runs", str(tmp_path), "--only", "stream_r1_s3"])


def test_gate_exit_status_and_the_runs_folder_it_needs(tmp_path, capsys):
    """The gate stops a distillation run: exit 3 when the analytic reward does not rank the rollouts like the checker,
    0 when it does (rollouts read from a --videos cache); --runs names each file of the training folder it lacks."""
    import torch

    from stream_r1.shapes import generate
    from training.shapes import gate

    vids, prompts = [], []
    for i in range(16):
        f, sc = generate(3000 + i, 9, width=64, height=64)
        if i % 2:                                   # half the clips lose their shapes: the checker and r both fall
            f = f.mean(dim=(2, 3), keepdim=True).expand_as(f).contiguous()
        vids.append(f)
        prompts.append(sc.prompt)
    info = {"student": "test", "height": 64, "width": 64, "bundle": str(tmp_path)}

    def run(videos, name, ps=prompts):
        cache = tmp_path / f"{name}.pt"
        torch.save({"videos": torch.stack(videos).half(), "prompts": ps, "info": info}, cache)
        return gate.main(["--videos", str(cache), "--no-learned", "--json", str(tmp_path / f"{name}.json")])

    assert run(vids, "informative") == 0
    assert json.loads((tmp_path / "informative.json").read_text())["analytic"]["passed"]
    assert run([vids[0]] * 16, "constant", [prompts[0]] * 16) == 3     # one video and prompt 16 times: no ranking
    with pytest.raises(SystemExit, match=r"lacks student .*ode_init.*vae .*text encoder"):
        gate._source(tmp_path / "runs", torch.device("cpu"))
