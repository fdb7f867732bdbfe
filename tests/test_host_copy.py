"""HostCopier: frames reach the host in order, from a worker thread, in the caller's inference mode."""
import threading

import pytest
import torch

from stream_r1.host_copy import HostCopier


def chunks(n=4, t=3):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, t if i else 1, 3, 20, 40, generator=g) for i in range(n)]    # [B, T, 3, H, W]


@pytest.mark.parametrize("threaded", [False, True])
def test_frames_arrive_in_order_with_their_extras_and_a_small_preview(threaded):
    got, threads = [], set()

    def consume(f, start, z):
        got.append((start, f, z))
        threads.add(threading.current_thread() is threading.main_thread())

    pieces = chunks()
    with HostCopier(consume, convert=lambda f: f * 2, preview_size=16, threaded=threaded) as copier:
        for i, f in enumerate(pieces):
            copier.put(f, torch.full((1,), float(i)))
    assert [s for s, _, _ in got] == [0, 1, 4, 7] and copier.frames == 10
    for (_, f, z), (i, src) in zip(got, enumerate(pieces)):
        assert torch.equal(f, src * 2) and z.item() == i
    assert threads == {not threaded}                                         # the worker did it when threaded
    assert copier.preview.shape == (8, 16, 3)                                # longest side 16, batch row 0


def test_the_worker_writes_inference_tensors_like_the_caller_can():
    with torch.inference_mode():                                             # as ComfyUI runs a node
        out = torch.zeros(1, 10, 20, 40, 3)

        def consume(f, start):
            out[:, start:start + f.shape[1]] = f.permute(0, 1, 3, 4, 2)

        with HostCopier(consume, threaded=True) as copier:
            for f in chunks():
                copier.put(f)
    assert torch.equal(out[:, 0], chunks()[0][:, 0].permute(0, 2, 3, 1))


def test_an_error_in_the_worker_reaches_the_caller():
    def consume(f, start):
        raise ValueError("disk full")

    copier = HostCopier(consume, threaded=True)
    copier.put(chunks()[0])
    with pytest.raises(ValueError, match="disk full"):
        copier.close()
