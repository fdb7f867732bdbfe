"""Resuming training must not run code planted in a checkpoint folder (training/checkpoint.py's trust boundary).

DCP's own reader unpickles `.metadata` with plain pickle and non-tensor shard entries with
`torch.load(weights_only=False)`. The payloads below write a marker file when unpickled; every test checks that
resume refuses the folder with one line and that the marker never appears. A normal save -> resume stays
bit-identical.
"""
import hashlib
import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from training import checkpoint as ckpt


class Payload:
    """Unpickling it runs `exec`, which writes `marker` (what an attacker's os.system would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)


def _model_and_opt(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.5, 0.9))


def _state(model, opt) -> dict:
    msd, osd = get_state_dict(model, opt)
    return {"student": msd, "opt_student": osd}


@pytest.fixture
def saved(tmp_path):
    """A checkpoint written by `ckpt.save` (two-layer model, AdamW after two steps); returns (folder, model, opt)."""
    model, opt = _model_and_opt(0)
    for _ in range(2):
        model(torch.randn(5, 4)).square().mean().backward()                # x [5, 4] -> [5, 3]
        opt.step()
        opt.zero_grad()
    meta = {"step": 2, "position": 10, "ema": False, "world_size": 1, "recipe": "test", "balancer": None}
    folder = ckpt.save(tmp_path / "out" / "checkpoints", 2, _state(model, opt), meta, "{}", keep=2, rank=0)
    return folder, model, opt


def _load_fresh(folder: Path):
    model, opt = _model_and_opt(1)                                         # other weights until loaded
    state = _state(model, opt)
    ckpt.load(folder, state, rank=0)
    set_state_dict(model, opt, model_state_dict=state["student"], optim_state_dict=state["opt_student"])
    return model, opt


def _forge_manifest(folder: Path) -> None:
    """What an attacker who knows the format writes: a manifest.json that matches the planted files."""
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size,
                                                "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    (folder / "manifest.json").write_text(json.dumps({"format": "stream_r1.training.checkpoint/manifest-1",
                                                      "files": files}))


def _plant(folder: Path, marker: Path, reseal: bool) -> None:
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    if reseal:                                                             # the attacker forges the manifest too
        _forge_manifest(folder)


def test_save_writes_a_manifest_and_resume_is_bit_identical(saved):
    folder, model, opt = saved
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    assert sorted(manifest["files"]) == [".metadata", "__0_0.distcp", "config.json", "rng/rank_0.pt",
                                         "trainer_state.json"]
    assert not list(folder.glob(".digests*"))                             # the ranks' shares were merged
    expected_draw = torch.rand(3)                                          # the RNG right after the save ...
    model2, opt2 = _load_fresh(folder)
    assert torch.equal(torch.rand(3), expected_draw)                       # ... is restored by the load
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]                        # lr, betas (a tuple), ... via weights_only
    for k in s1["state"]:
        for name, t in s1["state"][k].items():
            assert torch.equal(t, s2["state"][k][name]), (k, name)


def test_a_planted_metadata_payload_is_refused_by_the_manifest(saved, tmp_path):
    folder, _, _ = saved
    marker = tmp_path / "PWNED"
    _plant(folder, marker, reseal=False)
    with pytest.raises(ValueError, match=r"\.metadata has .* manifest\.json records .*changed after it was saved, "
                                         r"refusing to resume") as e:
        _load_fresh(folder)
    assert not marker.exists() and isinstance(e.value, ckpt.UntrustedCheckpoint)


def test_a_planted_payload_with_a_forged_manifest_is_refused_by_the_unpickler(saved, tmp_path):
    folder, _, _ = saved
    marker = tmp_path / "PWNED"
    _plant(folder, marker, reseal=True)
    try:
        _load_fresh(folder)
        refused = None
    except ValueError as e:                                                # UntrustedCheckpoint is a ValueError
        refused = e
    assert not marker.exists()                                             # the payload never ran
    assert isinstance(refused, ckpt.UntrustedCheckpoint) and "\n" not in str(refused)
    assert "asks to build builtins.exec" in str(refused) and "refusing to resume" in str(refused)


def test_a_folder_without_manifest_is_refused_and_seal_refuses_a_payload(saved, tmp_path, capsys):
    folder, _, _ = saved
    (folder / ckpt.MANIFEST).unlink()                                      # as saved by an older version
    marker = tmp_path / "PWNED"
    _plant(folder, marker, reseal=False)
    with pytest.raises(ckpt.UntrustedCheckpoint, match=r"has no manifest\.json .*python -m training\.checkpoint seal"):
        _load_fresh(folder)
    assert ckpt.main(["seal", str(folder)]) == 2                           # sealing checks before it vouches
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "builtins.exec" in err
    assert not (folder / ckpt.MANIFEST).exists() and not marker.exists()


def test_seal_vouches_for_an_old_clean_checkpoint(saved):
    folder, model, _ = saved
    (folder / ckpt.MANIFEST).unlink()
    assert ckpt.main(["seal", str(folder)]) == 0
    model2, _ = _load_fresh(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


def test_a_changed_shard_is_refused(saved):
    folder, _, _ = saved
    shard = folder / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF                                                      # same size, other bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(ckpt.UntrustedCheckpoint, match=r"__0_0\.distcp has sha256"):
        _load_fresh(folder)


def test_a_pickle_payload_inside_a_shard_is_refused(tmp_path):
    """A non-tensor entry is unpickled by DCP's planner with weights_only=False; ours uses weights_only=True."""
    marker, folder = tmp_path / "PWNED", tmp_path / "step_00000001"
    dcp.save({"w": torch.ones(2), "lr": Payload(marker)}, checkpoint_id=str(folder), no_dist=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": 1, "position": 0, "ema": False}))
    _forge_manifest(folder)                                                # everything forged consistently
    with pytest.raises(ValueError, match=r"the entry 'lr' is a pickle that could run code"):
        ckpt.load(folder, {"w": torch.zeros(2), "lr": 0.0}, rank=0)
    assert not marker.exists()


def test_metadata_pointing_outside_the_manifest_is_refused(saved, tmp_path):
    folder, _, _ = saved
    md = ckpt.read_metadata(folder)
    for info in md.storage_data.values():
        info.relative_path = "../../elsewhere.distcp"
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(md, f)
    _forge_manifest(folder)
    with pytest.raises(ckpt.UntrustedCheckpoint, match=r"points at '\.\./\.\./elsewhere\.distcp', not a file of"):
        _load_fresh(folder)


def test_training_run_refuses_a_planted_checkpoint_in_one_line(saved, tmp_path, caplog):
    from training.run import main

    folder, _, _ = saved
    marker = tmp_path / "PWNED"
    _plant(folder, marker, reseal=True)
    with caplog.at_level(logging.INFO):
        rc = main(["--recipe", "tiny_stream_r1", "--set", f"output_dir={tmp_path / 'run'}", "--set",
                   "model.student=random", "--set", "log.progress=false", "--set", f"checkpoint.resume={folder}"])
    assert rc == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    message = errors[0].getMessage()
    assert "\n" not in message and "refusing to resume" in message and "builtins.exec" in message
    assert not marker.exists()


def test_the_trainer_resumes_its_own_checkpoint_bit_identically(tmp_path):
    from training.recipes import get_recipe
    from training.trainer import Trainer

    def cfg(steps):
        c = get_recipe("tiny_stream_r1")
        c.output_dir, c.log.progress, c.schedule.steps = str(tmp_path), False, steps
        c.schedule.micro_batch, c.model.student = 2, "random"
        return c

    torch.set_num_threads(1)
    first = Trainer(cfg(1))
    first.train()
    assert (tmp_path / "checkpoints" / "step_00000001" / ckpt.MANIFEST).is_file()
    resumed = Trainer(cfg(2))
    assert resumed.step_idx == 1
    for a, b in ((first.student, resumed.student), (first.critic, resumed.critic)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y), name
    assert first.opt_g.state_dict()["param_groups"] == resumed.opt_g.state_dict()["param_groups"]
