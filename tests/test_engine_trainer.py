"""The shared trainer on a toy system: exact resume, the non-finite guard, clipping, checkpoints."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
import torch

from animate124.engine.checkpoint import load_latest_checkpoint
from animate124.engine.timing import Timers
from animate124.engine.trainer import StepOutput, Trainer, TrainerSettings, TrainingDiverged


class Toy:
    """Fit w to noisy targets drawn from the system's own generator (so resume must restore it)."""

    def __init__(self, nan_at: int | None = None, grad_scale: float = 1.0) -> None:
        self.model = torch.nn.Linear(4, 1)
        with torch.no_grad():
            self.model.weight.fill_(0.1)
            self.model.bias.zero_()
        self.gen = torch.Generator().manual_seed(7)
        self.timers = Timers(False)
        self.nan_at = nan_at
        self.grad_scale = grad_scale
        self.seen: list[int] = []

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def training_step(self, step: int, loss_scale: float) -> StepOutput:
        self.seen.append(step)
        x = torch.randn(8, 4, generator=self.gen)
        y = x.sum(1, keepdim=True) + 0.1 * torch.randn(8, 1, generator=self.gen)
        loss = self.grad_scale * ((self.model(x) - y) ** 2).mean()
        reg = 0.01 * self.model.weight.abs().sum()
        if self.nan_at == step:
            reg = reg * float("nan")
        return StepOutput({"fit": loss, "reg": reg}, {"x0": float(x[0, 0])})

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.model.state_dict())

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(dict(tensors))

    def generators(self) -> dict[str, torch.Generator]:
        return {"toy": self.gen}

    def preview(self, step: int) -> None:
        pass


def _settings(iters: int, **kw) -> TrainerSettings:
    base = dict(
        iters=iters,
        device=torch.device("cpu"),
        precision="fp32",
        grad_clip=0.0,
        checkpoint_every=5,
        log_every=1,
        preview_every=0,
        config_hash="h",
        label="toy",
    )
    base.update(kw)
    return TrainerSettings(**base)


def _opt(sys: Toy) -> torch.optim.Optimizer:
    return torch.optim.Adam(sys.model.parameters(), lr=0.05, betas=(0.9, 0.99), eps=1e-15)


def _log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_exact_resume_after_stop(tmp_path):
    full = Toy()
    Trainer(_settings(23)).run(full, _opt(full), checkpoint_dir=tmp_path / "a", log_path=tmp_path / "a.jsonl")

    part = Toy()
    calls = {"n": 0}

    def stop() -> bool:  # ask to stop before step 13 (steps 1..12 done)
        calls["n"] += 1
        return calls["n"] == 13

    r = Trainer(_settings(23)).run(
        part, _opt(part), checkpoint_dir=tmp_path / "b", log_path=tmp_path / "b.jsonl", should_stop=stop
    )
    assert r.interrupted and r.steps == 12
    assert load_latest_checkpoint(tmp_path / "b").step == 12  # checkpoint written on stop
    resumed = Toy()  # a fresh process: new objects, state only from the checkpoint
    r2 = Trainer(_settings(23)).run(
        resumed, _opt(resumed), checkpoint_dir=tmp_path / "b", log_path=tmp_path / "b.jsonl"
    )
    assert r2.start_step == 12 and r2.steps == 23 and resumed.seen[0] == 13
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    a, b = _log(tmp_path / "a.jsonl"), _log(tmp_path / "b.jsonl")
    assert [r["step"] for r in b] == list(range(1, 24))
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == rb["loss"] and ra["x0"] == rb["x0"]


def test_checkpoints_keep_only_the_newest(tmp_path):
    t = Toy()
    Trainer(_settings(17)).run(t, _opt(t), checkpoint_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-0000017.json", "ckpt-0000017.safetensors"]
    ck = load_latest_checkpoint(tmp_path)
    assert ck.state["optimizer"]["param_groups"][0]["lr"] == 0.05
    assert int(ck.tensors["optim/0/step"]) == 17


def test_torn_checkpoint_falls_back(tmp_path):
    t = Toy()
    Trainer(_settings(10)).run(t, _opt(t), checkpoint_dir=tmp_path)
    (tmp_path / "ckpt-0000015.safetensors").write_bytes(b"partial")  # killed while writing tensors
    (tmp_path / "ckpt-0000020.json").write_text("{}")  # a JSON without its tensors
    assert load_latest_checkpoint(tmp_path).step == 10


def test_nan_loss_names_step_and_term_and_keeps_checkpoint(tmp_path):
    t = Toy(nan_at=8)
    with pytest.raises(TrainingDiverged) as ei:
        Trainer(_settings(20)).run(t, _opt(t), checkpoint_dir=tmp_path)
    assert "step 8" in ei.value.message and "'reg'" in ei.value.message
    assert load_latest_checkpoint(tmp_path).step == 5


def test_nonfinite_gradient_stops_without_scaler(tmp_path):
    t = Toy()
    t.model.weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(TrainingDiverged) as ei:
        Trainer(_settings(3)).run(t, _opt(t), checkpoint_dir=tmp_path)
    assert "step 1" in ei.value.message and "gradient" in ei.value.message


def test_grad_clip_is_elementwise(tmp_path):
    t = Toy(grad_scale=1e6)
    seen = []
    t.model.weight.register_hook(lambda g: seen.append(g.clone()) or g)
    opt = torch.optim.SGD(t.model.parameters(), lr=1.0)
    w0 = t.model.weight.detach().clone()
    Trainer(_settings(1, grad_clip=1.0)).run(t, opt, checkpoint_dir=tmp_path)
    step = w0 - t.model.weight.detach()
    assert seen[0].abs().max() > 1.0  # the raw gradient is large
    assert torch.allclose(step.abs(), torch.clamp(seen[0].abs(), max=1.0))  # each element clipped to 1


def test_other_config_checkpoint_is_refused(tmp_path):
    t = Toy()
    Trainer(_settings(5)).run(t, _opt(t), checkpoint_dir=tmp_path)
    t2 = Toy()
    with pytest.raises(Exception, match="another configuration"):
        Trainer(_settings(9, config_hash="other")).run(t2, _opt(t2), checkpoint_dir=tmp_path)


def test_a_checkpoint_without_a_generator_state_is_a_clear_error():
    """A checkpoint written before a generator existed (e.g. the occupancy generator) cannot be resumed
    exactly: the error names the generator and says how to start over."""
    from animate124.engine.checkpoint import rng_state, set_rng_state
    from animate124.errors import ProjectError

    old = {"system": torch.Generator().manual_seed(1)}
    tensors, meta = rng_state(old)
    new = {**old, "occupancy": torch.Generator().manual_seed(2)}
    with pytest.raises(ProjectError, match="'occupancy'") as e:
        set_rng_state(new, tensors, meta)
    assert "--force" in (e.value.hint or "")
    set_rng_state(old, tensors, meta)  # the generators it has are restored


def test_step_tracer_writes_a_table_of_the_traced_steps(tmp_path) -> None:
    """``run.trace_steps``: torch.profiler over N steps, the Timers' parts as named ranges, one table."""
    from animate124.engine.timing import StepTracer, Timers

    timers = Timers(enabled=False)
    path = tmp_path / "logs" / "static.profile.txt"
    tracer = StepTracer(torch.device("cpu"), 2, path, "static")
    for _ in range(3):  # the third step is past the trace: the table holds two
        with timers("render"):
            torch.randn(64, 64) @ torch.randn(64, 64)
        tracer.step_done()
    text = path.read_text()
    assert (
        text.startswith("# static: torch.profiler over 2 steps") and "render" in text and "aten::mm" in text
    )
    tracer.close()  # closing again changes nothing
    assert path.read_text() == text


def test_trace_steps_reaches_the_trainer_and_the_inversion() -> None:
    from animate124.config import resolve_config
    from animate124.stages import build

    cfg = resolve_config("tiny", sets=["run.trace_steps=3", "run.trace_parts=ops"])
    settings, ti = build.trainer_settings(cfg, "static"), build.ti_config(cfg, torch.device("cpu"))
    assert (settings.trace_steps, settings.trace_parts) == (3, "ops") == (ti.trace_steps, ti.trace_parts)


def test_step_tracer_parts(tmp_path) -> None:
    from animate124.engine.timing import StepTracer

    with pytest.raises(ValueError, match="trace parts"):
        StepTracer(torch.device("cpu"), 1, tmp_path / "x.txt", parts="kernels")
    tracer = StepTracer(torch.device("cpu"), 1, tmp_path / "m.txt", "refine", parts="memory")
    torch.randn(8, 8).sum()
    tracer.step_done()  # no profiler, and no allocator history on a CPU: the header alone
    assert (tmp_path / "m.txt").read_text().startswith("# refine: 1 traced training steps (memory only)")


def test_peak_memory_sites_replays_the_allocator_trace() -> None:
    """The live blocks at the moment of the largest allocation, summed by the package's allocating line."""
    from animate124.engine.timing import peak_memory_sites

    def fr(line: int, lib: bool = False) -> list[dict]:
        frames = [{"filename": "/x/site-packages/diffusers/unet.py", "line": 9, "name": "fwd"}] if lib else []
        return frames + [{"filename": "/r/animate124/render/renderer.py", "line": line, "name": "render"}]

    gib = 2**30
    events = [
        {"action": "alloc", "addr": 1, "size": 2 * gib, "frames": fr(10)},
        {"action": "alloc", "addr": 2, "size": 1 * gib, "frames": fr(10)},
        {"action": "alloc", "addr": 3, "size": 4 * gib, "frames": fr(20, lib=True)},  # peak: 7 GiB
        {"action": "free_requested", "addr": 3, "size": 4 * gib},
        {"action": "free_completed", "addr": 3, "size": 4 * gib},
        {"action": "alloc", "addr": 4, "size": 3 * gib, "frames": fr(30)},  # 6 GiB: not the peak
    ]
    text = peak_memory_sites({"device_traces": [events]}, torch.device("cuda:0"), base_bytes=gib)
    assert "8.00 GiB allocated = 1.00 GiB before the trace" in text and "+ 7.00 GiB" in text
    lines = text.splitlines()[1:]
    assert "4.000 GiB  render/renderer.py:20 render  <- diffusers/unet.py:9 fwd" in lines[0]
    assert "3.000 GiB  render/renderer.py:10 render" in lines[1] and len(lines) == 2


def test_kernel_busy_time_is_the_union_of_device_intervals() -> None:
    """Overlapping kernels count once; CPU events and the GPU-side range annotations not at all."""
    from types import SimpleNamespace as NS

    from animate124.engine.timing import kernel_busy_us

    def ev(name, dev, a, b, ann=False):
        return NS(name=name, device_type=NS(name=dev), time_range=NS(start=a, end=b), is_user_annotation=ann)

    events = [
        ev("aten::mm", "CPU", 0, 100),
        ev("gemm", "CUDA", 10, 30),
        ev("gemm2", "CUDA", 20, 40),  # overlaps: 10..40 = 30 µs
        ev("render", "CUDA", 0, 100, ann=True),
        ev("copy", "CUDA", 50, 55),
        ev("inside", "CUDA", 51, 54),
    ]
    assert kernel_busy_us(events) == 35.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_step_tracer_on_the_gpu_reports_the_kernel_time(tmp_path) -> None:
    """The header's GPU-busy time per step matches the same work timed with CUDA events, unprofiled."""
    import re

    from animate124.engine.timing import StepTracer, Timers

    a0 = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)

    def step(a):
        for _ in range(10):
            a = (a @ a).clamp_(-1, 1)
        return a

    step(a0)  # cuBLAS set-up outside both measurements
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step(a0)
    end.record()
    torch.cuda.synchronize()
    events_ms = start.elapsed_time(end)
    timers = Timers(enabled=False)
    tracer = StepTracer(torch.device("cuda"), 3, tmp_path / "t.profile.txt", "gpu")
    for _ in range(3):
        with timers("work"):
            step(a0)
        tracer.step_done()
    text = (tmp_path / "t.profile.txt").read_text()
    busy_ms = float(re.search(r"per step: ([\d.]+) ms =", text.splitlines()[1]).group(1))
    # kernels run a little longer under CUPTI than under CUDA events: an H200 gave 1.0x and once 1.15x
    assert 0.7 * events_ms <= busy_ms <= 1.3 * events_ms, (busy_ms, events_ms)
    assert "memory at the peak" in text


class _FakeAllocator:
    """The four allocator counters Timers reads, over a script of allocations (bytes)."""

    def __init__(self) -> None:
        self.now = self.peak = self.reserved = self.reserved_peak = 0

    def alloc(self, n: int) -> None:
        self.now += n
        self.peak = max(self.peak, self.now)
        self.reserved = max(self.reserved, self.now)
        self.reserved_peak = max(self.reserved_peak, self.reserved)

    def reset(self, device=None) -> None:
        self.peak, self.reserved_peak = self.now, self.reserved


def test_timers_measure_each_parts_memory_and_keep_the_runs_peak(monkeypatch) -> None:
    """Per-part peaks and rises with nested parts; the resets at each part's start do not hide the peak
    of an enclosing part, nor the run's peak (the trainer's figure)."""
    fake = _FakeAllocator()
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: fake.now)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: fake.peak)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d=None: fake.reserved_peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset)
    G = 2**30
    timers = Timers(True, torch.device("cuda"))
    fake.alloc(2 * G)  # resident before any part
    with timers("outer"):
        fake.alloc(5 * G)  # outer peaks at 7 before the inner part resets the counter
        fake.alloc(-4 * G)
        with timers("inner"):
            fake.alloc(1 * G)  # 4
            fake.alloc(-1 * G)
        fake.alloc(-1 * G)
    with timers("inner"):  # a second call: the larger rise and peak are kept
        fake.alloc(3 * G)  # 5
        fake.alloc(-3 * G)
    mem = timers.memory_summary()
    assert mem["outer"] == {"peak_gib": 7.0, "rise_gib": 5.0}
    assert mem["inner"] == {"peak_gib": 5.0, "rise_gib": 3.0}
    alloc, reserved = timers.peak_memory()
    assert alloc == 7 * G and reserved == 7 * G  # the counter alone says 5 after the last reset
    assert fake.peak == 5 * G
    timers.reset_memory()
    assert timers.memory_summary() == {}
    off = Timers(False, torch.device("cuda"))
    with off("x"):
        fake.alloc(G)
    assert off.memory_summary() == {}


class OomToy(Toy):
    """Runs out of "GPU memory" at the given steps (after drawing its random numbers, in the backward) until
    ``save_memory`` has been called; ``savers`` is how many times it can still turn something on."""

    def __init__(
        self, oom_at: set[int], savers: int = 1, oom_after_saving: bool = False, needs: int = 1
    ) -> None:
        super().__init__()
        self.oom_at, self.savers, self.oom_after_saving, self.needs = oom_at, savers, oom_after_saving, needs
        self.saved = 0  # savers turned on so far; the steps in oom_at fit once ``needs`` are on
        self.always_at: set[int] = set()
        self.torch_draws: list[float] = []

    def save_memory(self) -> str | None:
        if self.savers == 0:
            return None
        self.savers -= 1
        self.saved += 1
        return "savers on" if self.saved == 1 else f"saver {self.saved} on"

    def training_step(self, step: int, loss_scale: float) -> StepOutput:
        out = super().training_step(step, loss_scale)
        self.torch_draws.append(float(torch.rand(())))  # the global generator is restored too
        if step in self.oom_at and (
            self.saved < self.needs or self.oom_after_saving or step in self.always_at
        ):
            fit = out.losses["fit"]

            class Boom(torch.autograd.Function):
                @staticmethod
                def forward(ctx, x):
                    return x.clone()

                @staticmethod
                def backward(ctx, g):
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

            out.losses["fit"] = Boom.apply(fit)
        return out


def test_out_of_memory_step_runs_again_with_the_savers_and_gives_the_same_run(tmp_path, caplog):
    plain = Toy()
    torch.manual_seed(0)
    Trainer(_settings(9)).run(
        plain, _opt(plain), checkpoint_dir=tmp_path / "a", log_path=tmp_path / "a.jsonl"
    )
    oom = OomToy({4, 7})
    torch.manual_seed(0)
    with caplog.at_level("WARNING"):
        r = Trainer(_settings(9)).run(
            oom, _opt(oom), checkpoint_dir=tmp_path / "b", log_path=tmp_path / "b.jsonl"
        )
    assert r.steps == 9 and r.metrics["memory_saving"] == {"step": 4, "change": "savers on", "retries": 1}
    assert "step 4 ran out of GPU memory" in caplog.text and "savers on" in caplog.text
    assert oom.seen == [1, 2, 3, 4, 4, 5, 6, 7, 8, 9]  # step 4 twice; step 7 fits with the savers on
    assert oom.torch_draws[3] == oom.torch_draws[4]  # the retry drew the same global random numbers
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, oom.model.state_dict()[k]), k  # the same run as without the failure
    a, b = _log(tmp_path / "a.jsonl"), _log(tmp_path / "b.jsonl")
    assert [x["loss"] for x in a] == [x["loss"] for x in b]


def test_out_of_memory_again_turns_on_the_next_saver_until_the_step_fits(tmp_path):
    plain = Toy()
    torch.manual_seed(0)
    Trainer(_settings(6)).run(plain, _opt(plain), checkpoint_dir=tmp_path / "a")
    oom = OomToy({3, 5}, savers=5, needs=3)  # step 3 fits with the third saver on
    torch.manual_seed(0)
    r = Trainer(_settings(6)).run(oom, _opt(oom), checkpoint_dir=tmp_path / "b")
    assert oom.seen == [1, 2, 3, 3, 3, 3, 4, 5, 6] and oom.savers == 2
    assert r.metrics["memory_saving"] == {"step": 3, "change": "saver 3 on", "retries": 3}
    assert len(set(oom.torch_draws[2:6])) == 1  # every retry drew the same random numbers
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, oom.model.state_dict()[k]), k


def test_out_of_memory_again_or_with_nothing_to_save_stops_the_stage(tmp_path):
    nothing = OomToy({3}, savers=0)  # no saver left to turn on
    again = OomToy({3}, oom_after_saving=True)  # the retry runs out of memory too
    later = OomToy({2, 5})  # step 2 is retried; step 5 fails with the savers already on
    later.always_at = {5}
    for i, toy in enumerate((nothing, again, later)):
        with pytest.raises(torch.OutOfMemoryError):
            Trainer(_settings(6)).run(toy, _opt(toy), checkpoint_dir=tmp_path / str(i))
    assert nothing.seen == [1, 2, 3] and again.seen == [1, 2, 3, 3] and later.seen == [1, 2, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------- GradScaler
class Fp16Toy(Toy):
    """The toy with a hook that can make the weight's gradient inf at chosen steps, and the weights kept
    after every step."""

    def __init__(self, inf_at: set[int] = frozenset(), grad_scale: float = 1.0) -> None:
        super().__init__(grad_scale=grad_scale)
        self.inf_at = set(inf_at)
        self.step = 0
        self.weights: list[torch.Tensor] = []
        self.model.weight.register_hook(lambda g: g * float("inf") if self.step in self.inf_at else g)

    def training_step(self, step: int, loss_scale: float | None) -> StepOutput:
        self.step = step
        return super().training_step(step, loss_scale)

    def after_step(self, step: int) -> None:
        self.weights.append(self.model.weight.detach().clone())


def test_grad_scaler_clips_after_unscaling(tmp_path):
    """fp16 + GradScaler at scale S = 4: the element-wise clip acts on the unscaled gradient (upstream's
    ``post_train_step``: ``unscale_`` then ``clip_grad_value_``), so an SGD step of lr 1 is clamp(g, ±1)."""
    t = Fp16Toy(grad_scale=1.0)
    seen = []
    t.model.weight.register_hook(lambda g: seen.append(g.detach().clone()) or g)
    opt = torch.optim.SGD(t.model.parameters(), lr=1.0)
    w0 = t.model.weight.detach().clone()
    trainer = Trainer(_settings(1, precision="fp16", grad_clip=1.0))
    trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 4.0})
    trainer.run(t, opt, checkpoint_dir=tmp_path)
    raw = seen[0].float() / 4.0  # the hook sees the scaled gradient
    assert raw.abs().max() > 2.0 and raw.abs().min() < 1.0  # some elements clipped, some not
    assert torch.allclose(w0 - t.model.weight.detach(), raw.clamp(-1.0, 1.0), rtol=1e-3, atol=1e-6)


def test_grad_scaler_skips_inf_steps_and_stops_after_the_limit(tmp_path):
    """An inf gradient skips the step (weights unchanged) and halves the scale; a finite step resets the count;
    ``max_skipped_steps`` skipped steps in a row stop the stage with a clear error."""
    t = Fp16Toy(inf_at={3, 4})
    trainer = Trainer(_settings(6, precision="fp16"))
    # S = 4: the toy's gradients (about 3) times 2^16 would overflow fp16 on their own
    trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 4.0})
    trainer.run(t, _opt(t), checkpoint_dir=tmp_path / "a", log_path=tmp_path / "a.jsonl")
    w = t.weights
    assert torch.equal(w[2], w[1]) and torch.equal(w[3], w[1])  # steps 3 and 4 skipped
    assert not torch.equal(w[1], w[0]) and not torch.equal(w[4], w[3])  # the others stepped
    scales = [r["loss_scale"] for r in _log(tmp_path / "a.jsonl")]
    assert scales == [4.0, 4.0, 2.0, 1.0, 1.0, 1.0]  # after each step's update
    t = Fp16Toy(inf_at=set(range(1, 100)))
    with pytest.raises(TrainingDiverged, match="step 5: 5 steps in a row had inf/NaN gradients"):
        Trainer(_settings(20, precision="fp16", max_skipped_steps=5)).run(
            t, _opt(t), checkpoint_dir=tmp_path / "b"
        )
    assert len(t.weights) == 4 and all(torch.equal(x, t.weights[0]) for x in t.weights)


# ---------------------------------------------------------------------------------------------- gradient balance
class GroupedToy(Toy):
    """The toy with a third term and loss groups: "data" = fit + extra, "reg" alone (not named)."""

    def training_step(self, step: int, loss_scale: float | None) -> StepOutput:
        out = super().training_step(step, loss_scale)
        out.losses["extra"] = 0.5 * self.model.bias.pow(2).sum() + 0.1 * self.model.weight.sum()
        out.groups = {"data": ["fit", "extra"], "unused": ["nope"]}
        return out


def test_grad_stats_are_each_groups_gradient_norm(tmp_path):
    """``grad/<group>``: the norm of the gradient of that group's terms alone; ``grad/total``: of all; only
    on the recorded steps (every 2nd), which are logged even between ``log_every`` steps."""
    t = GroupedToy()
    Trainer(_settings(3, grad_stats_every=2, log_every=3)).run(
        t, _opt(t), checkpoint_dir=tmp_path / "a", log_path=tmp_path / "a.jsonl"
    )
    recs = {r["step"]: r for r in _log(tmp_path / "a.jsonl")}
    assert sorted(recs) == [2, 3] and not any(k.startswith("grad/") for k in recs[3])
    # the same step 2 again, by hand: replay step 1, then take the gradients of step 2's terms
    ref = GroupedToy()
    opt = _opt(ref)
    Trainer(_settings(1)).run(ref, opt, checkpoint_dir=tmp_path / "b")
    out = ref.training_step(2, None)
    params = list(ref.model.parameters())

    def norm(loss: torch.Tensor) -> float:
        gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return float(torch.cat([g.reshape(-1) for g in gs if g is not None]).norm())

    want = {
        "grad/data": norm(out.losses["fit"] + out.losses["extra"]),
        "grad/reg": norm(out.losses["reg"]),
        "grad/total": norm(sum(out.losses.values())),
    }
    got = {k: v for k, v in recs[2].items() if k.startswith("grad/")}
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-5), k


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_grad_stats_do_not_change_the_run(tmp_path, precision):
    """With the record on every step the weights are bit for bit those of a run without it (fp16: the
    norms are of the unscaled gradient, the scaler's state untouched). SGD, not Adam: Adam's update does not
    change when every gradient is doubled, so it would hide a record that leaks into the step's gradient."""
    runs = []
    for every in (0, 1):
        t = GroupedToy()
        torch.manual_seed(0)
        trainer = Trainer(_settings(12, grad_stats_every=every, precision=precision))
        if precision == "fp16":  # the toy's gradients times 2^16 would overflow fp16: start at S = 4
            trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 4.0})
        opt = torch.optim.SGD(t.model.parameters(), lr=0.05)
        trainer.run(t, opt, checkpoint_dir=tmp_path / str(every), log_path=tmp_path / f"{every}.jsonl")
        runs.append(t)
    for k, v in runs[0].model.state_dict().items():
        assert torch.equal(v, runs[1].model.state_dict()[k]), k
    on = _log(tmp_path / "1.jsonl")
    assert all({"grad/data", "grad/reg", "grad/total"} <= set(r) for r in on)
    assert all(r["grad/total"] > 0 for r in on)
    assert [r["loss"] for r in _log(tmp_path / "0.jsonl")] == [r["loss"] for r in on]


def test_grad_stats_of_an_overflowing_fp16_step_are_null(tmp_path):
    """At 2^16 the toy's fp16 gradients overflow: the step is skipped and its norms are written as null
    (JSON), not as Infinity."""
    t = GroupedToy()
    Trainer(_settings(1, grad_stats_every=1, precision="fp16")).run(
        t, _opt(t), checkpoint_dir=tmp_path, log_path=tmp_path / "l.jsonl"
    )
    text = (tmp_path / "l.jsonl").read_text()
    (rec,) = _log(tmp_path / "l.jsonl")
    assert rec["loss_scale"] == 2.0**15  # skipped: the scale halved
    assert rec["grad/total"] is None and rec["grad/data"] is None and "Infinity" not in text


def test_grad_stats_out_of_memory_drop_the_record_not_the_run(tmp_path, caplog):
    """Out of GPU memory while recording the gradient balance: a warning, no record for the rest of the stage,
    and the training the same as without the record."""
    booms = {"n": 0}

    class OnceOom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            booms["n"] += 1
            if booms["n"] == 1:  # the first backward through it: the record's pass of step 2
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return g

    class Toy2(GroupedToy):
        def training_step(self, step: int, loss_scale: float | None) -> StepOutput:
            out = super().training_step(step, loss_scale)
            if step == 2:
                out.losses["fit"] = OnceOom.apply(out.losses["fit"])
            return out

    runs = []
    for every, cls in ((0, GroupedToy), (2, Toy2)):
        t = cls()
        with caplog.at_level("WARNING"):
            Trainer(_settings(6, grad_stats_every=every)).run(
                t, torch.optim.SGD(t.model.parameters(), lr=0.05), checkpoint_dir=tmp_path / str(every),
                log_path=tmp_path / f"{every}.jsonl",
            )  # fmt: skip
        runs.append(t)
    assert booms["n"] == 2 and "recording the gradient balance" in caplog.text
    assert not any(k.startswith("grad/") for r in _log(tmp_path / "2.jsonl") for k in r)  # step 4, 6: off too
    for k, v in runs[0].model.state_dict().items():
        assert torch.equal(v, runs[1].model.state_dict()[k]), k


def test_timers_split_the_backward_where_the_images_gradient_arrives():
    """``Timers.split`` / ``mark_on_grad``: a backward whose priors' half sleeps 60 ms and whose render half sleeps
    30 ms gives ``before`` ≥ 60 ms and ``after`` ≥ 30 ms, adding up to the whole part (a split at the wrong end
    leaves one of them near 0); a backward the images' gradient never reaches is all ``after``; off, nothing."""
    import time

    from animate124.engine.timing import Timers

    def sleeper(seconds: float) -> type:
        class Sleep(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.clone()

            @staticmethod
            def backward(ctx, g):
                time.sleep(seconds)
                return g

        return Sleep

    render, prior = sleeper(0.03), sleeper(0.06)
    timers = Timers(True)
    timers.split("backward", "backward_priors", "backward_nerf")
    w = torch.ones(3, requires_grad=True)
    images = render.apply(w)
    timers.mark_on_grad(images, "backward")
    loss = prior.apply(images).sum()
    with timers("grad_stats"):  # another part reaching the images first: no split of its own
        torch.autograd.grad(loss, w, retain_graph=True)
    with timers("backward"):
        loss.backward()
    s = timers.seconds
    assert s["backward_priors"] >= 0.06 and s["backward_nerf"] >= 0.03, dict(s)
    assert s["backward_priors"] + s["backward_nerf"] == pytest.approx(s["backward"], rel=1e-9)
    assert "grad_stats" in s and timers.calls["backward_priors"] == 1
    ms = timers.summary(1)
    assert ms["nerf_side"] == pytest.approx(ms["backward_nerf"])  # the only NeRF part that ran

    before = dict(s)
    with timers("backward"):
        (w * 2).sum().backward()  # a step whose loss has no prior term: all of it the render's half
    assert timers.calls["backward_priors"] == timers.calls["backward_nerf"] == timers.calls["backward"] == 2
    assert s["backward_priors"] == before["backward_priors"]
    took = s["backward"] - before["backward"]
    assert took > 0 and s["backward_nerf"] - before["backward_nerf"] == pytest.approx(took, rel=1e-6)

    off = Timers(False)
    off.split("backward", "a", "b")
    images = render.apply(w)
    off.mark_on_grad(images, "backward")
    with off("backward"):
        prior.apply(images).sum().backward()
    assert off.summary(1) == {}
