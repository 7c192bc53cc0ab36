"""The points-form time TV with several grids per encoder call (``KernelOptions.tv_batched``,
``BatchedPointsTimeTV``; SPEC 3.6) against the per-grid path it replaces and a float64 evaluation.

Both paths evaluate ``L = Σ_i mean_x ‖f_i(x) − f_{i+1}(x)‖² / ((T−1)·L)`` and its table gradient in fp32 with the
same fp32 trilinear weights; they differ only in the order of the sums (the slot kernels' pair layout against the
plain kernels; one reduction over 8 grids against one per grid). So each is required to be as close to the float64
evaluation of the same weights as the other: error ≤ 3× the per-grid path's error + a few fp32 ulps of the
quantity's scale (the per-grid path's error can be 0 for a quantity by chance). A wrong grid (an off-by-one in the
slots, a missing neighbour term across a call boundary) is off by the size of the quantity itself.

CPU: Triton's interpreter, in a subprocess (``helpers_triton.run_interpreted``); GPU (``-m gpu``): the paper grid
(16 levels, 2^16 rows) with 64 time grids and 100,000 points.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers_grid import paper_grid_config, small_grid_config
from helpers_triton import needs_cuda, needs_triton, run_interpreted

ULPS = 8 * 2.0**-23  # a few fp32 ulps, relative to the quantity's scale


def _case(
    cfg, t_size: int, n_points: int, device: str, seed: int, per_call: int = 8, graph: bool = False
) -> dict:
    from animate124.scene.grid import KernelOptions, TimeGridEncoding

    torch.manual_seed(seed)
    opts = KernelOptions(tv_grids_per_call=per_call, tv_cuda_graph=graph)
    enc = TimeGridEncoding(cfg, time_grid_size=t_size, backend="triton", kernel_options=opts).to(device)
    with (
        torch.no_grad()
    ):  # grids that differ from each other (a fresh table is one copy per grid in the stages)
        enc.embeddings.copy_(
            torch.randn(enc.embeddings.shape, generator=torch.Generator().manual_seed(seed)) * 0.1
        )

    def run(batched: bool) -> tuple[float, torch.Tensor, dict]:
        enc.kernel_options = dataclasses.replace(enc.kernel_options, tv_batched=batched)
        enc.embeddings.grad = None
        before = enc.launch_state.slot_builds
        loss = enc.time_tv_loss("points", n_points=n_points, generator=torch.Generator().manual_seed(7))
        (loss * 3.0).backward()
        return loss.item(), enc.embeddings.grad.detach().double().cpu(), enc.launch_state.slot_builds - before

    loss_b, grad_b, builds = run(True)
    loss_p, grad_p, _ = run(False)
    # the batched form without grad for the table computes the loss alone (one encoder call per 8 grids), the
    # same bits; and through a retained graph (the trainer's gradient-balance record) its gradient twice
    enc.kernel_options = dataclasses.replace(enc.kernel_options, tv_batched=True)
    before = enc.launch_state.slot_builds
    with torch.no_grad():
        loss_ng = enc.time_tv_loss("points", n_points=n_points, generator=torch.Generator().manual_seed(7))
    builds_no_grad = enc.launch_state.slot_builds - before
    loss = enc.time_tv_loss("points", n_points=n_points, generator=torch.Generator().manual_seed(7))
    (g1,) = torch.autograd.grad(loss * 3.0, enc.embeddings, retain_graph=True)
    (g2,) = torch.autograd.grad(loss * 3.0, enc.embeddings)
    # float64: the torch reference encoder (the same fp32 weights) on a float64 copy of the table
    ref = TimeGridEncoding(cfg, time_grid_size=t_size, backend="torch").to(device).double()
    with torch.no_grad():
        ref.embeddings.copy_(enc.embeddings.double())
    loss_r = ref.time_tv_loss(
        "points", n_points=n_points, generator=torch.Generator().manual_seed(7), fused=False
    )
    (loss_r * 3.0).backward()
    grad_r = ref.embeddings.grad.detach().cpu()
    scale = grad_r.abs().max().item()
    return {
        "loss_err_batched": abs(loss_b - loss_r.item()),
        "loss_err_plain": abs(loss_p - loss_r.item()),
        "loss_scale": abs(loss_r.item()),
        "grad_err_batched": (grad_b - grad_r).abs().max().item(),
        "grad_err_plain": (grad_p - grad_r).abs().max().item(),
        "grad_scale": scale,
        "slot_builds": builds,
        "grids": t_size,
        "per_call": per_call,
        "no_grad_same_loss": loss_ng.item() == loss_b,
        "slot_builds_no_grad": builds_no_grad,
        # the table gradient is made once, in the forward: the retained graph gives it back twice, the same bits
        "retained_twice_equal": bool(torch.equal(g1, g2)),
        # another forward's gradient: on the GPU its atomics add in another order, so not the same bits as
        # grad_b, but as close to the float64 evaluation as grad_b is required to be
        "grad_err_retained": (g1.double().cpu() - grad_r).abs().max().item(),
    }


def _interp_checks() -> dict:
    return {
        # 9 grids: calls of 8 and 1, so one call boundary inside the sum and a last call of a single grid
        "T9": _case(small_grid_config(), 9, 200, "cpu", seed=9),
        # KernelOptions.tv_grids_per_call=4: calls of 4, 4 and 1, two boundaries
        "T9_per4": _case(small_grid_config(), 9, 200, "cpu", seed=9, per_call=4),
        # KernelOptions.tv_cuda_graph off the GPU: the node with its replay argument runs the pass itself
        "T9_graph_option": _case(small_grid_config(), 9, 200, "cpu", seed=9, graph=True),
    }


def _check(r: dict) -> None:
    assert r["loss_err_batched"] <= 3 * r["loss_err_plain"] + ULPS * r["loss_scale"], r
    assert r["grad_err_batched"] <= 3 * r["grad_err_plain"] + ULPS * r["grad_scale"], r
    # one pass, in the forward: a call per 8 grids with grad, the next call's first grid riding along as a ninth
    # slot; nothing in the backward (before 2026-12-07: a call per 8 grids forward, the same and a neighbour
    # each side backward; 2026-12-07: the right neighbour a call of its own)
    calls = -(-r["grids"] // r["per_call"])
    assert r["slot_builds"] == calls, r
    assert r["no_grad_same_loss"] and r["slot_builds_no_grad"] == calls, r
    assert r["retained_twice_equal"], r
    assert r["grad_err_retained"] <= 3 * r["grad_err_plain"] + ULPS * r["grad_scale"], r


@needs_triton
def test_batched_time_tv_same_loss_and_gradient_in_the_interpreter():
    for name, r in run_interpreted("test_scene_timetv").items():
        _check(r)
        assert r["grad_scale"] > 0 and r["loss_scale"] > 0, (name, r)


def test_batched_time_tv_is_off_on_the_cpu_and_for_the_torch_backend():
    """The CPU (without the interpreter) and the torch backend keep the per-grid path, whatever the option."""
    from animate124.scene.grid import KernelOptions, TimeGridEncoding

    enc = TimeGridEncoding(
        small_grid_config(), time_grid_size=4, backend="torch", kernel_options=KernelOptions(tv_batched=True)
    )
    assert not enc._tv_batched()
    assert enc.time_tv_loss("points", n_points=10, generator=torch.Generator().manual_seed(0)).item() >= 0


@pytest.mark.gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("per_call", [8, 16])
def test_batched_time_tv_on_the_gpu_at_the_paper_grid(per_call):
    _check(_case(paper_grid_config(), 64, 100_000, "cuda", seed=1, per_call=per_call))


@pytest.mark.gpu
@needs_cuda
@needs_triton
def test_batched_time_tv_makes_the_host_wait_nowhere():
    """The time TV's forward and backward at the paper grid, its random points drawn on a CPU generator as the
    stages draw them, never make the host wait for the GPU (``torch.cuda.set_sync_debug_mode("error")`` raises
    at any synchronising call). Before 2026-12-08 the points went over with a plain ``.to("cuda")``, which waits
    for the GPU's queue to empty right before the step's most launch-bound part (issue 26)."""
    from animate124.scene.grid import KernelOptions, TimeGridEncoding

    enc = TimeGridEncoding(
        paper_grid_config(), time_grid_size=64, backend="triton", kernel_options=KernelOptions()
    ).cuda()
    gen = torch.Generator().manual_seed(7)
    enc.time_tv_loss("points", n_points=100_000, generator=gen).backward()  # compile the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = enc.time_tv_loss("points", n_points=100_000, generator=gen)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


@pytest.mark.gpu
@needs_cuda
@needs_triton
def test_batched_time_tv_replayed_from_a_cuda_graph():
    """``KernelOptions.tv_cuda_graph`` at the paper grid: the replayed pass gives the eager pass's loss bit for bit
    (the same kernels on the same inputs; the features are gathers, no atomics) and its table gradient up to the
    order of the backward's float reductions (‖Δ‖ ≤ 1e-5·‖g‖, the grid backward's policy), step after step with
    new points, one recording, and after an in-place update of the table (as Adam's) too."""
    import dataclasses

    from animate124.scene.grid import KernelOptions, TimeGridEncoding

    enc = TimeGridEncoding(paper_grid_config(), time_grid_size=64, backend="triton").cuda()
    with torch.no_grad():
        enc.embeddings.copy_(
            torch.randn(enc.embeddings.shape, generator=torch.Generator().manual_seed(1)) * 0.1
        )
    on, off = KernelOptions(tv_cuda_graph=True), KernelOptions(tv_cuda_graph=False)

    def run(opts: KernelOptions, seed: int) -> tuple[float, torch.Tensor]:
        enc.kernel_options = opts
        enc.embeddings.grad = None
        loss = enc.time_tv_loss("points", n_points=100_000, generator=torch.Generator().manual_seed(seed))
        (loss * 3.0).backward()
        return loss.item(), enc.embeddings.grad.detach().clone()

    for seed in (1, 2, 3, 4):
        if seed == 4:
            with torch.no_grad():
                enc.embeddings.mul_(1.5)  # in place, as the optimizer: the recording reads the new values
        (lg, gg), (le, ge) = run(on, seed), run(off, seed)
        assert lg == le, (seed, lg, le)
        assert (gg - ge).norm() <= 1e-5 * ge.norm(), seed
    assert enc._tv_graph is not None and enc._tv_graph.replays == 4
    enc.kernel_options = dataclasses.replace(on, tv_grids_per_call=16)  # other options: recorded again
    run(enc.kernel_options, 5)
    assert enc._tv_graph.replays == 5 and enc._tv_graph.release()
