"""The shared trainer: it knows only "run one step, get named losses" (DESIGN.md, SPEC 3.9).

Per step: ``system.before_step`` (occupancy refresh, level masks...), the forward under autocast
(``system.training_step`` returns weighted loss terms), one backward of their sum through the AMP
GradScaler, unscale, element-wise ``clip_grad_value_`` where the stage asks for it, the optimizer step,
``system.after_step``. Around it: JSONL scalars, a rich progress bar, previews, atomic checkpoints with
exact resume, a stop flag (Ctrl-C: checkpoint and return) and a non-finite guard.

Precision (SPEC 3.9): ``"fp16"`` = fp16 autocast + GradScaler as upstream; ``"bf16"`` = bf16 autocast
without a scaler; ``"fp32"`` = neither (CPU). A NaN or inf in a loss term stops the stage with a message
naming the step and the term; without a GradScaler a non-finite gradient does too. With a GradScaler an
inf gradient is normal (the scaler skips the step and lowers its scale), so only a long run of skipped
steps stops the stage. The last good checkpoint is never overwritten by a diverged state.

Out of GPU memory in a step's forward or backward: if the system has ``save_memory()`` (the NeRF stages:
it turns on its next same-result memory saver: the priors' CUDA graphs given back, then the normals'
recompute, then ``raymarch.checkpoint_field`` sized to the renders; ``NerfSystem.save_memory``), the
trainer frees what the failed step held, restores the random generators to where the step started and runs
the step again; the rest of the stage keeps the saver on (``metrics.memory_saving``: the last step, its change
and how many retries). Each further failure turns on the next saver. The retried step draws the same random
numbers, so it is the step the plain path would have taken had it fit. A system with nothing left to turn on
stops the stage as before.

Gradient balance (``TrainerSettings.grad_stats_every`` = ``run.grad_stats_every``): every N-th step also
writes ``grad/<group>`` to the JSONL log, the norm of the gradient each loss group alone puts on the trained
parameters (groups from ``StepOutput.groups``; the NeRF stages: ``reference``, one per prior, ``regularizers``,
``time_tv``), and ``grad/total``, the norm of the step's whole gradient; see :meth:`Trainer._group_grad_norms`.
Other steps pay nothing.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from animate124.engine.checkpoint import (
    load_latest_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from animate124.engine.scalars import ScalarLog
from animate124.engine.schedules import GRAD_SCALER
from animate124.engine.timing import StepTracer, Timers
from animate124.errors import Animate124Error, ProjectError, is_cuda_oom

log = logging.getLogger(__name__)

__all__ = ["StepOutput", "TrainingSystem", "TrainerSettings", "TrainResult", "TrainingDiverged", "Trainer"]

ProgressFn = Callable[[int, int, Mapping[str, float]], None]


class TrainingDiverged(Animate124Error):
    """A loss or gradient became NaN/inf; the message names the step and the term."""


@dataclass
class StepOutput:
    """What one training step returns: weighted loss terms (summed for the backward), diagnostics, and
    which terms form one loss group for the gradient-balance record (group -> term names; every term not
    named there is a group of its own)."""

    losses: dict[str, torch.Tensor]
    scalars: dict[str, float] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)

    def loss_groups(self) -> dict[str, list[str]]:
        """Every term in exactly one group: ``groups`` (restricted to this step's terms), then the rest alone."""
        out = {g: [n for n in names if n in self.losses] for g, names in self.groups.items()}
        out = {g: names for g, names in out.items() if names}
        grouped = {n for names in out.values() for n in names}
        out.update({n: [n] for n in self.losses if n not in grouped})
        return out


class TrainingSystem(Protocol):
    """A stage's model + losses, as the trainer sees it."""

    timers: Timers

    def before_step(self, step: int) -> None: ...

    def training_step(self, step: int, loss_scale: float | None) -> StepOutput:
        """``loss_scale``: the GradScaler's current scale, None when the step runs without one."""
        ...

    def after_step(self, step: int) -> None: ...

    def state_tensors(self) -> dict[str, torch.Tensor]: ...

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None: ...

    def generators(self) -> dict[str, torch.Generator]: ...

    def preview(self, step: int) -> None: ...


@dataclass(frozen=True)
class TrainerSettings:
    """How to run the loop. ``iters``: steps of this stage; ``grad_clip`` 0 = none."""

    iters: int
    device: torch.device
    precision: str
    grad_clip: float
    checkpoint_every: int
    log_every: int
    preview_every: int
    config_hash: str = ""
    label: str = "train"
    max_skipped_steps: int = 200
    grad_stats_every: int = 0
    trace_steps: int = 0
    trace_after: int = 10
    trace_parts: str = "all"
    tensorboard: bool = False  # also write the scalars as TensorBoard events (<log dir>/tb/<stage>)


@dataclass
class TrainResult:
    """How the loop ended."""

    steps: int
    start_step: int
    interrupted: bool
    seconds: float
    it_s: float
    metrics: dict[str, Any] = field(default_factory=dict)


def _params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def _rng_states(system: Any) -> dict[str, torch.Tensor]:
    """Every random state a step may draw from: the system's generators and torch's global ones."""
    out = {f"g/{k}": g.get_state() for k, g in system.generators().items()}
    out["torch"] = torch.random.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _restore_rng(system: Any, states: dict[str, torch.Tensor]) -> None:
    for k, g in system.generators().items():
        g.set_state(states[f"g/{k}"])
    torch.random.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"])


class Trainer:
    """Runs a :class:`TrainingSystem` with an optimizer; see the module docstring."""

    def __init__(self, settings: TrainerSettings) -> None:
        self.s = settings
        if settings.precision not in ("fp32", "fp16", "bf16"):
            raise ProjectError(f"unknown precision {settings.precision!r}")
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(settings.precision)
        self.scaler = torch.amp.GradScaler(
            settings.device.type, enabled=settings.precision == "fp16", **GRAD_SCALER
        )
        #: set once a step ran out of memory and was run again with the system's savers on
        self.memory_saving: dict[str, Any] | None = None
        #: set when recording the gradient balance ran out of GPU memory (the record stops, training goes on)
        self._grad_stats_off = False

    # ------------------------------------------------------------------ checkpoints
    def _save(self, directory: Path, step: int, system: TrainingSystem, opt: torch.optim.Optimizer) -> None:
        tensors = {f"system/{k}": v for k, v in system.state_tensors().items()}
        opt_t, opt_meta = optimizer_to_flat(opt)
        rng_t, rng_meta = rng_state(system.generators())
        tensors.update(opt_t)
        tensors.update(rng_t)
        state = {
            "config_hash": self.s.config_hash,
            "optimizer": opt_meta,
            "rng": rng_meta,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }
        save_checkpoint(directory, step, tensors, state)

    def _restore(self, directory: Path, system: TrainingSystem, opt: torch.optim.Optimizer) -> int:
        ck = load_latest_checkpoint(directory)
        if ck is None:
            return 0
        if self.s.config_hash and ck.state.get("config_hash") not in ("", None, self.s.config_hash):
            raise ProjectError(
                f"the checkpoint in {directory} belongs to another configuration",
                hint="rerun with --force to start the stage over",
            )
        system.load_state_tensors(
            {k[len("system/") :]: v for k, v in ck.tensors.items() if k.startswith("system/")}
        )
        optimizer_from_flat(opt, ck.tensors, ck.state["optimizer"])
        set_rng_state(system.generators(), ck.tensors, ck.state.get("rng", {}))
        if self.scaler.is_enabled() and ck.state.get("scaler"):
            self.scaler.load_state_dict(ck.state["scaler"])
        log.info("%s: resuming after step %d", self.s.label, ck.step)
        return ck.step

    def preview(self, system: TrainingSystem, step: int) -> None:
        """Previews are for watching a run: a failure (no ffmpeg, a full disk) is a warning, never fatal."""
        try:
            with torch.no_grad():
                system.preview(step)
        except Exception as exc:  # noqa: BLE001 - a preview must not end a training run
            log.warning(
                "%s: the preview at step %d failed: %s",
                self.s.label,
                step,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )

    # ------------------------------------------------------------------ the loop
    def _forward_backward(self, system: Any, optimizer: torch.optim.Optimizer, step: int) -> Any:
        """The step's forward under autocast and the backward of its loss; out of GPU memory, the step again
        with the system's next memory saver on, until it fits or nothing is left to save (module docstring)."""
        saver = getattr(system, "save_memory", None)
        states = _rng_states(system) if callable(saver) else None
        while True:
            try:
                return self._forward_backward_once(system, optimizer, step)
            except Exception as exc:
                if states is None or not is_cuda_oom(exc):
                    raise
                change = saver()
                if change is None:
                    raise
                detail = str(exc).splitlines()[0] if str(exc) else "out of memory"
            # outside the except block: the failed step's tensors are no longer held by the traceback
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            _restore_rng(system, states)
            retries = 1 + (self.memory_saving or {}).get("retries", 0)
            self.memory_saving = {"step": step, "change": change, "retries": retries}
            log.warning(
                "%s: step %d ran out of GPU memory (%s); running it again with %s (the same result, slower) "
                "for the rest of the stage",
                self.s.label, step, detail, change,
            )  # fmt: skip

    def _forward_backward_once(self, system: Any, optimizer: torch.optim.Optimizer, step: int) -> Any:
        with torch.autocast(
            self.s.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            out = system.training_step(
                step, float(self.scaler.get_scale()) if self.scaler.is_enabled() else None
            )
        total = sum(out.losses.values())
        names = list(out.losses)
        loss_values = torch.stack([out.losses[n].detach().float().reshape(()) for n in names])
        if self.grad_stats_due(step):
            with system.timers("grad_stats"):
                out.scalars.update(self._group_grad_norms(out, optimizer))
        with system.timers("backward"):
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
        return out, names, loss_values

    # ------------------------------------------------------------------ gradient balance
    def grad_stats_due(self, step: int) -> bool:
        """Whether step ``step`` records the gradient-balance norms (``run.grad_stats_every``)."""
        every = self.s.grad_stats_every
        return every > 0 and step % every == 0 and not self._grad_stats_off

    def _group_grad_norms(self, out: StepOutput, optimizer: torch.optim.Optimizer) -> dict[str, float | None]:
        """``grad/<group>``: the L2 norm, over every trained parameter, of the gradient of one loss group alone
        (``StepOutput.loss_groups``), as the optimizer would see it (after unscaling, before clipping).

        One ``autograd.grad`` per group through the step's retained graph, before the step's own backward:
        nothing is accumulated into ``.grad`` and nothing random is drawn, so the step that follows is the
        one a run without the record takes (bit for bit, ``tests/test_engine_trainer.py``). A non-finite norm
        (an fp16 overflow) is written as null. Out of GPU memory here, the record is dropped for the rest of
        the stage with a warning and the step goes on."""
        params = [p for p in _params(optimizer) if p.requires_grad]
        scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
        groups = out.loss_groups()
        norms: list[torch.Tensor] = []
        try:
            for terms in groups.values():
                loss = sum(out.losses[n] for n in terms)
                if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
                    norms.append(torch.zeros((), device=self.s.device))
                    continue
                grads = torch.autograd.grad(
                    self.scaler.scale(loss), params, retain_graph=True, allow_unused=True
                )
                parts = [torch.linalg.vector_norm(g.float()) for g in grads if g is not None]
                norms.append(
                    torch.linalg.vector_norm(torch.stack(parts))
                    if parts
                    else torch.zeros((), device=self.s.device)
                )
                del grads, parts
            values = (torch.stack([n.to(self.s.device) for n in norms]) / scale).tolist()
        except Exception as exc:
            if not is_cuda_oom(exc):
                raise
            self._grad_stats_off = True
            log.warning(
                "%s: out of GPU memory while recording the gradient balance; run.grad_stats_every is off for "
                "the rest of the stage (the training is unchanged)",
                self.s.label,
            )
            return {}
        return {f"grad/{g}": (v if math.isfinite(v) else None) for g, v in zip(groups, values, strict=True)}

    @staticmethod
    def _total_grad_norm(params: list[torch.Tensor]) -> float | None:
        """``grad/total``: the L2 norm of the step's whole gradient (after unscaling, before clipping)."""
        parts = [torch.linalg.vector_norm(p.grad.float()) for p in params if p.grad is not None]
        if not parts:
            return 0.0
        v = float(torch.linalg.vector_norm(torch.stack(parts)))
        return v if math.isfinite(v) else None

    def _check_losses(self, step: int, names: list[str], stacked: torch.Tensor) -> dict[str, float]:
        """The step's loss values as floats; TrainingDiverged (before the optimizer step) if one is not finite."""
        values = stacked.cpu()
        if not torch.isfinite(values).all():
            bad = [
                n for n, v in zip(names, values.tolist(), strict=True) if not torch.isfinite(torch.tensor(v))
            ]
            raise TrainingDiverged(
                f"{self.s.label}: step {step}: the loss term {bad[0]!r} is {values[names.index(bad[0])].item()}",
                hint="the last good checkpoint is kept; lower the learning rate or the guidance weight, or "
                "report the run with its config",
            )
        return dict(zip(names, values.tolist(), strict=True))

    def _check_grads(self, step: int, opt: torch.optim.Optimizer) -> None:
        for g in opt.param_groups:
            grads = [p.grad for p in g["params"] if p.grad is not None]
            if grads and not torch.stack([torch.isfinite(x).all() for x in grads]).all():
                raise TrainingDiverged(
                    f"{self.s.label}: step {step}: the gradient of parameter group "
                    f"{g.get('name', '?')!r} is not finite",
                    hint="the last good checkpoint is kept; lower the learning rate or the guidance weight",
                )

    def run(
        self,
        system: TrainingSystem,
        optimizer: torch.optim.Optimizer,
        *,
        checkpoint_dir: Path,
        log_path: Path | None = None,
        progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Train from the newest checkpoint (or step 0) up to ``iters``; see the module docstring."""
        s = self.s
        dev = s.device
        start = self._restore(Path(checkpoint_dir), system, optimizer)
        scalar_log = (
            ScalarLog(log_path, resume_from=start, tensorboard=s.tensorboard)
            if log_path is not None
            else None
        )
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            system.timers.reset_memory()
        params = _params(optimizer)
        skipped = 0
        step = start
        t_start = time.perf_counter()
        t_window, steps_window = t_start, 0
        it_s = 0.0
        last: dict[str, float] = {}
        interrupted = False
        tracer: StepTracer | None = None
        if progress is not None:
            progress(start, s.iters, {})
        try:
            while step < s.iters:
                if should_stop is not None and should_stop():
                    interrupted = True
                    break
                step += 1
                if tracer is None and s.trace_steps > 0 and step == start + s.trace_after + 1 and log_path:
                    trace_path = Path(log_path).with_suffix(".profile.txt")
                    tracer = StepTracer(dev, s.trace_steps, trace_path, s.label, s.trace_parts)
                system.before_step(step)
                out, names, loss_values = self._forward_backward(system, optimizer, step)
                # read the losses once the backward is queued: the GPU keeps working while we wait
                values = self._check_losses(step, names, loss_values)
                with system.timers("optimizer"):
                    if self.scaler.is_enabled():
                        self.scaler.unscale_(optimizer)
                    else:
                        self._check_grads(step, optimizer)
                    recorded = any(k.startswith("grad/") for k in out.scalars)
                    if recorded:
                        out.scalars["grad/total"] = self._total_grad_norm(params)
                    if s.grad_clip > 0:
                        torch.nn.utils.clip_grad_value_(params, s.grad_clip)
                    if self.scaler.is_enabled():
                        before = self.scaler.get_scale()
                        self.scaler.step(optimizer)
                        self.scaler.update()
                        skipped = skipped + 1 if self.scaler.get_scale() < before else 0
                        if skipped >= s.max_skipped_steps:
                            raise TrainingDiverged(
                                f"{s.label}: step {step}: {skipped} steps in a row had inf/NaN gradients",
                                hint="the last good checkpoint is kept; try --set run.precision=bf16 or fp32",
                            )
                    else:
                        optimizer.step()
                system.after_step(step)
                if tracer is not None:
                    tracer.step_done()
                steps_window += 1
                last = {"loss": float(sum(values.values())), **values}
                now = time.perf_counter()
                if now - t_window > 2.0 or step == s.iters:
                    it_s = steps_window / max(now - t_window, 1e-9)
                    t_window, steps_window = now, 0
                if scalar_log is not None and (step % s.log_every == 0 or step == s.iters or recorded):
                    rec = {**{f"loss/{k}": v for k, v in values.items()}, "loss": last["loss"]}
                    rec.update(out.scalars)
                    rec["it_s"] = round(it_s, 3)
                    if self.scaler.is_enabled():
                        rec["loss_scale"] = float(self.scaler.get_scale())
                    scalar_log.write(step, rec)
                if progress is not None:
                    progress(step, s.iters, last)
                if s.preview_every and step % s.preview_every == 0 and step < s.iters:
                    self.preview(system, step)
                if step % s.checkpoint_every == 0 or step == s.iters:
                    self._save(Path(checkpoint_dir), step, system, optimizer)
            if interrupted and step > start:
                self._save(Path(checkpoint_dir), step, system, optimizer)
        finally:
            if tracer is not None:
                tracer.close()
            if scalar_log is not None:
                scalar_log.close()
        seconds = time.perf_counter() - t_start
        done = step - start
        metrics: dict[str, Any] = {
            "steps": step,
            "it_s": round(done / seconds, 3) if seconds > 0 and done else 0.0,
        }
        if last:  # a run resumed at its last step trains nothing and knows no losses
            metrics["final_losses"] = {k: round(v, 6) for k, v in last.items()}
        if self.memory_saving is not None:
            metrics["memory_saving"] = dict(self.memory_saving)
        parts = system.timers.summary(done)
        if parts:
            metrics["ms_per_step"] = {k: round(v, 2) for k, v in parts.items()}
        work = system.timers.flops_summary(done)
        if work:
            metrics["flops_by_part"] = work
        if dev.type == "cuda":
            alloc, reserved = system.timers.peak_memory(dev)  # the parts' peak resets folded in
            metrics["peak_allocated_gib"] = round(alloc / 2**30, 3)
            metrics["peak_reserved_gib"] = round(reserved / 2**30, 3)
            by_part = system.timers.memory_summary()
            if by_part:
                metrics["memory_by_part"] = by_part
        return TrainResult(
            steps=step,
            start_step=start,
            interrupted=interrupted,
            seconds=seconds,
            it_s=metrics["it_s"],
            metrics=metrics,
        )
