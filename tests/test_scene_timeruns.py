"""TimeRuns: host-side runs of equal time through the renderer's chunks, subsets and repetitions."""

from __future__ import annotations

import pytest
import torch

from animate124.scene.timeruns import TimeRuns, expand_runs, run_counts


def _expand(r: TimeRuns) -> list[float]:
    return [float(t) for c, t in zip(r.counts, r.times, strict=True) for _ in range(c)]


def test_slice_repeat_nonempty_match_the_expanded_points() -> None:
    runs = TimeRuns((3, 0, 4, 2), torch.tensor([0.1, 0.5, 0.2, 0.9]))
    pts = _expand(runs)
    assert runs.total == 9 == len(pts)
    for a, b in [(0, 9), (2, 5), (3, 7), (4, 4), (6, 9), (0, 1)]:
        assert _expand(runs.slice(a, b)) == pts[a:b]
    assert _expand(runs.repeat(3)) == pts * 3
    assert runs.nonempty().counts == (3, 4, 2) and _expand(runs.nonempty()) == pts
    assert runs.with_counts([1, 0, 2, 0]).counts == (1, 0, 2, 0)


def test_run_counts_of_a_sorted_index() -> None:
    idx = torch.tensor([0, 0, 1, 3, 3, 3, 7, 8])
    assert run_counts(idx, [0, 2, 4, 9]) == [3, 3, 2]
    assert run_counts(idx, [0, 0, 9]) == [0, 8]


def test_recount_counts_sorted_items_per_run() -> None:
    rays = TimeRuns((2, 3), torch.tensor([0.1, 0.6]))  # rays 0-1 at 0.1, rays 2-4 at 0.6
    samples = rays.recount(torch.tensor([0, 0, 1, 2, 4, 4]))  # ray index of each sample
    assert samples.counts == (3, 3) and torch.equal(samples.times, rays.times)
    assert samples.recount(torch.tensor([1, 4, 5])).counts == (1, 2)  # live samples 1, 4, 5


@pytest.mark.parametrize(
    "counts",
    [(3, 0, 4, 2), (0, 5), (5, 0), (0, 0, 1), (1,), (0, 0), (), (7, 1, 1, 0, 9)],
)
def test_expand_runs_is_repeat_interleave(counts: tuple[int, ...]) -> None:
    """The slot of every point of a clip (``TimeGridEncoding.slot_plan``): the same values as torch's
    ``repeat_interleave``, zero-point runs first, inside and last, and no runs at all."""
    values = torch.arange(10, 10 + len(counts), dtype=torch.long)
    got = expand_runs(values, counts, torch.device("cpu"))
    want = torch.repeat_interleave(values, torch.tensor(counts, dtype=torch.long))
    assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.gpu
def test_expand_runs_on_the_gpu_at_a_clip() -> None:
    """16 frames of about half a million samples each, as a dynamic step's field call has them."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gen = torch.Generator().manual_seed(0)
    counts = tuple(int(c) for c in torch.randint(400_000, 600_000, (16,), generator=gen))
    values = torch.randperm(16, generator=gen)
    got = expand_runs(values, counts, torch.device("cuda"))
    assert torch.equal(got.cpu(), torch.repeat_interleave(values, torch.tensor(counts)))
