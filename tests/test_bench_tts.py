"""The CPU-checkable parts of bench/: tts_cost.py with --tiny, and train_scaling_summary.py on synthetic launches."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tts_cost_bench_tiny_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_tts_cost", ROOT / "bench" / "tts_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--tiny", "--frames", "13", "--configs", "plain,beams1_children1,beams2_children2",
                    "--json", str(tmp_path / "r.json")])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(out))
    res = out["results"]
    assert set(res) == {"plain", "beams1_children1", "beams2_children2"} and out["device"] == "cpu"
    # wall-time ratios are reported, never asserted (a 2x2 search measured 0.94x plain on a busy 2-core CI box)
    assert res["plain"]["cost_multiplier"] == 1.0
    for r in res.values():
        # the multiplier comes from unrounded times, chunk_s is printed to 4 decimals: equal within rounding
        assert abs(r["cost_multiplier"] - r["chunk_s"] / res["plain"]["chunk_s"]) <= 0.011
    assert res["beams2_children2"]["estimate"]["dit_multiplier"] == 4.0
    for r in res.values():
        assert r["chunk_s"] > 0 and r["first_output_s"] > 0 and r["chunks"] == 2 and r["peak_gib"] is None
    est = res["beams2_children2"]["estimate"]
    assert est["candidates"] == 4 and res["beams2_children2"]["peak_pages"] * est["page_bytes"] <= est["kv_bytes_bound"]


def _launch(world, micro, steps, losses):
    return {"device": "X", "torch": "t", "teacher": "14b", "world_size": world, "accumulation": 1, "micro_batch": micro,
            "steps": [{"step": k, "kind": "generator+critic" if k % 5 == 0 else "critic", "seconds": sec,
                       "peak_mem_gib_per_gpu": [10.0 * world] * world, "critic_loss": losses[k],
                       **({"gen_loss": losses[k] / 2} if k % 5 == 0 else {})} for k, sec in steps]}


def test_train_scaling_summary_compares_the_same_steps(tmp_path):
    """bench/train_scaling_summary.py (bench/RESULTS.md, 2026-11-22, 4 × H200 scaling): speed-up over the same steps past warm-up, the loss check only on
    resumed steps, and the paper-schedule projection's arithmetic."""
    spec = importlib.util.spec_from_file_location("scaling", ROOT / "bench" / "train_scaling_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    losses = [5.0, 6.0, 5.5, 5.8, 5.7, 5.9]
    big_t = [(0, 99.0), (1, 4.0), (2, 8.0), (3, 6.0), (4, 6.0), (5, 26.0)]
    small_t = [(k, 2 * s) for k, s in big_t]
    stop = _launch(4, 1, big_t[:3], losses)
    stop["steps"][0]["critic_loss"] = 1.0                       # pre-stop difference: not part of the resume check
    resume = _launch(4, 1, big_t[3:], [x * 1.01 for x in losses])
    for name, d in (("stop", stop), ("resume", resume), ("ref", _launch(2, 2, small_t, losses))):
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
    s = mod.summarize(tmp_path)
    assert s["global_batch"] == 4 and s["resumed_at_step"] == 3 and s["stopped_after_step"] == 2
    assert s["same_steps"] == [1, 2, 3, 4, 5] and s["speedup"] == 2.0 and s["scaling_efficiency"] == 1.0
    assert abs(s["worst_rel_diff_resumed_vs_reference"]["critic_loss"] - 0.01) < 1e-9
    assert s["mean_critic_step_s"] == {4: 6.0, 2: 12.0} and s["mean_generator_step_s"] == {4: 26.0, 2: 52.0}
    assert s["peak_gib_per_gpu"] == {4: 40.0, 2: 20.0}
    assert s["projected_paper_schedule_h_on_8gpu"] == round((1600 * 26.0 + 6400 * 6.0) / 3600, 1)
