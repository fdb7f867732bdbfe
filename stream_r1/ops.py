"""Small custom ops that torch.compile must treat as opaque.

`own_tail(x, dim, n)` = `x.narrow(dim, -n, n).clone()`: a compact copy of the last n entries along `dim`. The causal
decoders keep such tails of their activations as stream state. Written as a plain `.clone()`, inductor may return a
view of the whole activation buffer instead of a copy whenever the slice is dense in memory — as it is in the
channels-last (NDHWC) layout, where time is outside the channels. The state then pins every activation it came from:
measured on an H200 with the Wan VAE decoder at 832x480, 4.54 GiB of storage behind 1.79 GiB of state
(bench/RESULTS.md, 2026-11-22, "the VAE in NDHWC"). As a custom op the copy is a real, compact copy in every mode.
"""
from __future__ import annotations

import torch
from torch import Tensor


def own_tail(x: Tensor, dim: int, n: int) -> Tensor:
    """The last n entries of x along dim, in storage of their own (the memory format of x is kept). Eager code takes
    the plain copy, which is already compact: the custom op is only for graphs torch.compile traces. (Eager calls
    through the custom-op dispatcher also failed now and then on this CPU build, `ValueError: vector::reserve` before
    the op's own code ran: about 1 test run in 12, 2026-12-07.)"""
    if torch.compiler.is_compiling():
        return _own_tail_op(x, dim, n)
    return _tail_copy(x, dim, n)


def _tail_copy(x: Tensor, dim: int, n: int) -> Tensor:
    return x.narrow(dim, x.shape[dim] - n, n).clone()


@torch.library.custom_op("stream_r1::own_tail", mutates_args=())
def _own_tail_op(x: Tensor, dim: int, n: int) -> Tensor:
    return _tail_copy(x, dim, n)


@_own_tail_op.register_fake
def _own_tail_fake(x: Tensor, dim: int, n: int) -> Tensor:
    return torch.empty_like(x.narrow(dim, x.shape[dim] - n, n))


def _own_tail_setup(ctx, inputs, output) -> None:
    x, dim, n = inputs
    ctx.shape, ctx.dim, ctx.n = x.shape, dim, n


def _own_tail_backward(ctx, grad: Tensor):
    full = grad.new_zeros(ctx.shape)
    full.narrow(ctx.dim, ctx.shape[ctx.dim] - ctx.n, ctx.n).copy_(grad)
    return full, None, None


_own_tail_op.register_autograd(_own_tail_backward, setup_context=_own_tail_setup)
