"""The one tensor-file reader: safetensors, weights_only pickles, wrappers, and clear refusals."""
import pytest
import torch
from safetensors.torch import save_file

from stream_r1.weights_io import read_tensors


class TrainerState:            # any class outside torch's allowlist needs weights_only=False to unpickle
    step = 3


def test_reads_safetensors_pt_and_state_dict_wrapper(tmp_path):
    sd = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    save_file(sd, tmp_path / "x.safetensors")
    torch.save(sd, tmp_path / "x.pt")
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    for name in ("x.safetensors", "x.pt", "w.pth"):
        out = read_tensors(tmp_path / name)
        assert set(out) == {"a", "b"} and torch.equal(out["a"], sd["a"])


def test_refusals_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_tensors(tmp_path / "missing.safetensors")
    save_file({"a": torch.zeros(1000)}, tmp_path / "cut.safetensors")
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="incomplete"):
        read_tensors(tmp_path / "cut.safetensors")
    torch.save({"a": torch.zeros(1), "opt": TrainerState()}, tmp_path / "obj.pt")
    with pytest.raises(ValueError, match="refused for safety"):
        read_tensors(tmp_path / "obj.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        read_tensors(tmp_path / "list.pt")


def test_row_packed_tables_round_trip(tmp_path):
    """pack_rows keeps the named rows of each table (others read back as zeros) and leaves other tensors alone."""
    from stream_r1.weights_io import pack_rows

    g = torch.Generator().manual_seed(0)
    sd = {"emb": torch.randn(50, 4, generator=g), "head": torch.randn(50, 4, generator=g), "b": torch.ones(3)}
    ids = [7, 3, 3, 49, 0]
    packed, meta = pack_rows(sd, {"emb": ids, "head": ids})
    assert packed["emb.rows"].shape == (4, 4) and packed["emb.row_ids"].tolist() == [0, 3, 7, 49]
    save_file(packed, tmp_path / "p.safetensors", metadata=meta)
    out = read_tensors(tmp_path / "p.safetensors")
    assert set(out) == {"emb", "head", "b"} and torch.equal(out["b"], sd["b"])
    keep = torch.zeros(50, dtype=torch.bool)
    keep[[0, 3, 7, 49]] = True
    for k in ("emb", "head"):
        assert out[k].shape == (50, 4) and torch.equal(out[k][keep], sd[k][keep]) and not out[k][~keep].any()

    with pytest.raises(ValueError, match=r"must lie in \[0, 50\)"):
        pack_rows(sd, {"emb": [50]})
    with pytest.raises(ValueError, match="2-D table"):
        pack_rows(sd, {"b": [0]})
    del packed["head.rows"]
    save_file(packed, tmp_path / "cut.safetensors", metadata=meta)
    with pytest.raises(ValueError, match="row-packed table 'head'"):
        read_tensors(tmp_path / "cut.safetensors")
