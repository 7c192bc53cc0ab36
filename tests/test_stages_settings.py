"""``RaySettings.saving_memory``: the out-of-memory retry's sequence of same-result savers."""

from animate124.stages.settings import MIN_KEPT_SAMPLES, RaySettings


def _rays(**kw) -> RaySettings:
    base = dict(max_steps=1024, min_near=0.2, transmittance_thresh=1e-4, normal_eps=0.01, delta_mode="metric")
    return RaySettings(
        **base, chunk=None, checkpoint_normals=kw.pop("normals", True), live_normals=True, **kw
    )


def test_savers_go_normals_first_then_halve_the_kept_samples_down_to_none():
    r = _rays(normals=False)
    seq = []
    while (r := r.saving_memory(10_000_000)) is not None:
        seq.append((r.checkpoint_normals, r.checkpoint_field))
    assert seq[0] == (True, 0)  # the normals' recompute first (its saving is the largest)
    kept = [k for _, k in seq[1:]]
    assert kept[:3] == [5_000_000, 2_500_000, 1_250_000]
    assert all(b == a // 2 for a, b in zip(kept[:-2], kept[1:-1], strict=True))
    assert kept[-2] >= MIN_KEPT_SAMPLES and kept[-1] == 1  # then every sample recomputed, then nothing left


def test_the_bound_starts_below_the_renders_and_unknown_sizes_recompute_everything():
    # a configured bound above the largest render so far halves the render's size, not the bound
    assert _rays(checkpoint_field=2**30).saving_memory(4_000_000).checkpoint_field == 2_000_000
    assert _rays(checkpoint_field=3_000_000).saving_memory(40_000_000).checkpoint_field == 1_500_000
    assert _rays().saving_memory(0).checkpoint_field == 1  # no render yet: no size to halve
    assert _rays().saving_memory(100_000).checkpoint_field == 1  # half is below MIN_KEPT_SAMPLES
    assert _rays(checkpoint_field=1).saving_memory(10**7) is None


def test_the_system_gives_back_its_priors_cuda_graphs_before_any_ray_saver(monkeypatch):
    """``NerfSystem.save_memory``: first the VAE activations the static stage's priors keep, then the priors'
    CUDA graphs (run eagerly from then on: the same function), then the ray savers; a system whose priors hold
    no recorded graph goes straight to those."""
    from types import SimpleNamespace

    import torch

    from animate124.guidance import graphs
    from animate124.guidance.graphs import GraphedCall
    from animate124.stages.system import NerfSystem

    unet = torch.nn.Linear(2, 2)
    graphed = GraphedCall(unet)
    graphed.__dict__["_graphs"]["signature"] = object()  # as if a call had been recorded on a GPU
    prior = SimpleNamespace(unet=graphed, controlnet=GraphedCall(torch.nn.Linear(2, 2)))
    # a static-stage prior keeping its encoder activations (static.vae_keep_pixels), and one recomputing anyway
    keeper = SimpleNamespace(checkpoint_encoder=True, checkpoint_keep_pixels=512 * 512)
    plain = SimpleNamespace(checkpoint_encoder=False, checkpoint_keep_pixels=512 * 512)
    system = SimpleNamespace(
        rays=_rays(), max_samples=4_000_000, guidance_priors=lambda: [prior, keeper, plain],
        vae_keep_setting=NerfSystem.vae_keep_setting,
    )  # fmt: skip
    monkeypatch.setattr(graphs, "_pool_bytes", lambda: 3 * 2**29)
    # first the kept activations: the recompute from then on (the same gradients)
    assert NerfSystem.save_memory(system) == "static.vae_keep_pixels=0"
    assert keeper.checkpoint_keep_pixels == 0 and isinstance(prior.unet, GraphedCall)
    assert plain.checkpoint_keep_pixels == 512 * 512  # it keeps nothing anyway: no recompute to turn on
    assert NerfSystem.save_memory(system) == "run.cuda_graphs=false (their pool held 1.50 GiB)"
    assert prior.unet is unet and isinstance(prior.controlnet, torch.nn.Linear)  # every wrapper unwrapped
    assert system.rays == _rays()  # the renders are untouched by this saver
    assert NerfSystem.save_memory(system) == "raymarch.checkpoint_field=2000000"
    # a pool too small to be worth the eager calls' time is kept, and the ray saver comes at once
    prior.unet = GraphedCall(unet)
    prior.unet.__dict__["_graphs"]["signature"] = object()
    monkeypatch.setattr(graphs, "_pool_bytes", lambda: 2**20)
    assert NerfSystem.save_memory(system) == "raymarch.checkpoint_field=1000000"
    assert isinstance(prior.unet, GraphedCall)
