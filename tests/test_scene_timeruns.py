"""TimeRuns: host-side runs of equal time through the renderer's chunks, subsets and repetitions."""

from __future__ import annotations

import torch

from animate124.scene.timeruns import TimeRuns, run_counts


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
