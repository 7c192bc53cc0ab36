"""CUDA-graph replay of the priors' fixed-shape network calls (issue 12; SPEC 3.7 step 4, 5.2, 6).

Every SDS step calls the prior's UNet (and ControlNet) under ``torch.no_grad`` on inputs of the same
shapes: ``[2B, 4, h, w]`` latents, ``[2B]`` timesteps, ``[2B, 77, D]`` text context. In eager PyTorch
such a call is about a thousand small kernel launches, and at the paper's small latents (32² for
Zero123 and ModelScope, 64² for SD) the GPU waits on Python for most of it (BENCHMARKS.md §3: a 32²
latent costs as much as a 64² one). :class:`GraphedCall` records the call once as a CUDA graph per
input signature and afterwards replays it: copy the new inputs into the recorded input buffers, one
``graph.replay()``, clone the outputs.

It computes the same function: the replay runs the kernels the eager call chose, on the same inputs,
under the same autocast state (captured with ``cache_enabled=False``, which changes nothing for
weights that are already in the compute dtype and only skips autocast's weight-cast cache, as the
PyTorch CUDA-graph notes require). ``tests/test_cuda_graphs.py`` checks replay against the eager
call on the GPU for each prior's network, and the fall-back rules on the CPU.

When it falls back to the plain call: not on CUDA, gradients enabled, an input that requires grad,
inside another capture, a new signature while a torch profiler records (``run.trace_steps``; it is
recorded on a later call), or a capture that failed once for that signature (logged, then eager for
good). The recorded graph points at the module's parameters, so it is dropped when they move
(``.to()``) and re-recorded on the next call. All graphs of a process share one memory pool; that is
safe because each replay's outputs are cloned before any other graph runs, and graphs never run
concurrently (one training loop); with a torch without ``torch.cuda.MemPool`` every graph gets its own pool.
Config: ``run.cuda_graphs`` (on by default; off gives the eager calls).

The pool is memory the graphs keep for their whole life (the networks' intermediate tensors; 1.36 GiB in
refine at paper settings on an H200). A training step that runs out of GPU memory therefore first gives it
back (:func:`release_graphs`, called by the NeRF systems' ``save_memory``): the priors run eagerly from then on,
the same function, slower by the launches the graphs saved.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

log = logging.getLogger(__name__)

__all__ = ["NetworkWrapper", "GraphedCall", "graph_prior_networks", "eager_module", "release_graphs"]

#: attributes of a prior that hold its no-grad networks
NETWORK_ATTRS = ("unet", "controlnet")

_POOLS: dict[int, Any] = {}


def _pool(device: torch.device) -> Any:
    """The process's graph memory pool on ``device`` (its id for ``torch.cuda.graph(pool=...)``).

    A ``torch.cuda.MemPool`` object held here keeps the pool registered while no graph uses it: a bare
    ``graph_pool_handle()`` token goes stale when the last graph recorded into it is freed, and a later
    capture into it fails an allocator assertion (seen on the H200 with torch 2.11 when one prior's graphs
    were freed before the next prior recorded).
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _POOLS:
        mempool = getattr(torch.cuda, "MemPool", None)
        with torch.cuda.device(index):  # one pool per GPU (run.devices: priors on several)
            _POOLS[index] = mempool() if mempool is not None else None
    pool = _POOLS[index]
    return pool.id if pool is not None else None


@dataclass
class _Recorded:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]  # the recorded input buffers, in the order of the tensor leaves
    outputs: list[torch.Tensor]
    out_spec: Any
    params: tuple[int, ...]  # every parameter and buffer address at recording time


def _leaf_key(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), x.dtype, x.device, x.stride())
    if x is None or isinstance(x, (bool, int, float, str)):
        return ("V", type(x).__name__, x)
    raise TypeError(type(x).__name__)


def _profiling() -> bool:
    """Whether a torch profiler is recording: a capture under it broke the refine stage on an H200
    (``run.trace_steps``: conv2d "returned NULL without setting an exception")."""
    enabled = getattr(torch._C._autograd, "_profiler_enabled", None)
    return bool(enabled()) if enabled is not None else False


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class NetworkWrapper:
    """A call wrapper around a prior's network (``eager``) that forwards attribute access to it (``.config``,
    ``.parameters()``, ``.dtype``...), so the priors use it where they used the module; its own state lives in
    ``__dict__`` (set there by subclasses' ``__init__``)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.__dict__["eager"] = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["eager"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.eager, name, value)


class GraphedCall(NetworkWrapper):
    """``module(*args, **kwargs)`` replayed from a CUDA graph per input signature (module docstring).
    ``eager`` is the wrapped module itself."""

    def __init__(self, module: torch.nn.Module, *, warmup: int = 2) -> None:
        super().__init__(module)
        self.__dict__["warmup"] = int(warmup)
        self.__dict__["_graphs"] = {}
        self.__dict__["_failed"] = set()
        self.__dict__["replays"] = 0

    def __repr__(self) -> str:
        return f"GraphedCall({type(self.eager).__name__}, graphs={len(self._graphs)})"

    # ------------------------------------------------------------------ helpers
    def _param_mark(self) -> tuple[int, ...]:
        """Where every parameter and buffer lives. One of them is not enough: after ``.to("cpu")`` and back,
        the caching allocator may hand the first parameter its old address and the others new ones (an H200
        did). The tensors are listed once (``.to()`` keeps the same objects and swaps their storage), so a
        call costs one ``data_ptr()`` per tensor (~0.1 ms for an SD UNet's 686) instead of a module walk
        (~4 ms)."""
        tensors = self.__dict__.get("_tensors")
        if tensors is None:
            tensors = list(itertools.chain(self.eager.parameters(), self.eager.buffers()))
            self.__dict__["_tensors"] = tensors
        return tuple(t.data_ptr() for t in tensors)

    def eligible(self, leaves: list[Any]) -> bool:
        """Whether this call may be replayed from a graph (see the module docstring)."""
        if torch.is_grad_enabled() or not torch.cuda.is_available():
            return False
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        if not tensors or any(x.device.type != "cuda" or x.requires_grad for x in tensors):
            return False
        return not torch.cuda.is_current_stream_capturing()

    def _autocast(self, state: tuple[bool, torch.dtype]) -> contextlib.AbstractContextManager:
        enabled, dtype = state
        return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)

    def _record(self, leaves: list[Any], spec: Any, state: tuple[bool, torch.dtype]) -> _Recorded:
        device = next(x.device for x in leaves if isinstance(x, torch.Tensor))
        static = [x.detach().clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        args, kwargs = pytree.tree_unflatten(static, spec)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad(), self._autocast(state):
            for _ in range(max(self.warmup, 1)):  # lazy cuBLAS/cuDNN set-up happens outside the capture
                self.eager(*args, **kwargs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # on the inputs' device, with a capture stream of that device: torch.cuda.graph's default capture
        # stream is one per process, made on whichever device was current first (a prior on a second GPU,
        # run.devices, would be captured on the first GPU's stream)
        with (
            torch.cuda.device(device),
            torch.no_grad(),
            self._autocast(state),
            torch.cuda.graph(
                graph, pool=_pool(device), stream=torch.cuda.Stream(device), capture_error_mode="thread_local"
            ),
        ):
            out = self.eager(*args, **kwargs)
        out_leaves, out_spec = pytree.tree_flatten(out)
        if not all(isinstance(o, torch.Tensor) for o in out_leaves):
            raise TypeError("the module returned a non-tensor leaf")
        inputs = [x for x in static if isinstance(x, torch.Tensor)]
        return _Recorded(graph, inputs, out_leaves, out_spec, self._param_mark())

    # ------------------------------------------------------------------ the call
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        if not self.eligible(leaves):
            return self.eager(*args, **kwargs)
        state = _autocast_state("cuda")
        try:
            key = (str(spec), tuple(_leaf_key(x) for x in leaves), state)
        except TypeError:  # an argument that cannot be part of a signature
            return self.eager(*args, **kwargs)
        if key in self._failed:
            return self.eager(*args, **kwargs)
        rec = self._graphs.get(key)
        if rec is not None and rec.params != self._param_mark():
            del self._graphs[key]  # the parameters moved: the recording points at freed memory
            rec = None
        if rec is None and _profiling():
            return self.eager(*args, **kwargs)  # never record under a profiler (CUPTI); replays are fine
        if rec is None:
            try:
                rec = self._record(leaves, spec, state)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: run this signature eagerly
                log.warning(
                    "CUDA graph capture of %s failed (%s: %s); this call runs eagerly",
                    type(self.eager).__name__,
                    type(exc).__name__,
                    exc,
                )
                self._failed.add(key)
                return self.eager(*args, **kwargs)
            self._graphs[key] = rec
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        for dst, src in zip(rec.inputs, tensors, strict=True):
            dst.copy_(src)
        rec.graph.replay()
        self.__dict__["replays"] += 1
        return pytree.tree_unflatten([o.clone() for o in rec.outputs], rec.out_spec)

    def reset(self) -> None:
        """Forget every recording (the next eligible call records again)."""
        self._graphs.clear()
        self._failed.clear()


def eager_module(module: Any) -> Any:
    """The plain module behind a :class:`NetworkWrapper` (a graphed or compiled call; or ``module`` itself)."""
    return module.eager if isinstance(module, NetworkWrapper) else module


def graph_prior_networks(prior: Any, enabled: bool = True) -> Any:
    """Wrap the prior's no-grad networks (``unet``, ``controlnet``) in :class:`GraphedCall`; returns it.

    Only priors on CUDA are wrapped (elsewhere the wrapper would always fall back); ``enabled=False``
    unwraps, giving the eager calls back.
    """
    for name in NETWORK_ATTRS:
        net = getattr(prior, name, None)
        if net is None:
            continue
        plain = eager_module(net)
        on_cuda = any(p.device.type == "cuda" for p in plain.parameters())
        setattr(prior, name, GraphedCall(plain) if enabled and on_cuda else plain)
    return prior


#: a graph pool smaller than this is not worth the eager calls' time (see :func:`release_graphs`)
MIN_RELEASE_BYTES = 64 * 2**20


def _pool_bytes() -> int | None:
    """The bytes the process's graph pools hold on the GPU (their segments), or None when unknown."""
    if not _POOLS:
        return None
    total = 0
    for pool in _POOLS.values():
        if pool is None or not hasattr(pool, "snapshot"):
            return None
        try:
            segments = pool.snapshot(include_traces=False)
        except Exception:  # noqa: BLE001 - an older torch: the size is unknown, not an error
            return None
        total += sum(int(seg.get("total_size", 0)) for seg in segments)
    return total


def release_graphs(priors: Iterable[Any], min_bytes: int = MIN_RELEASE_BYTES) -> int | None:
    """After a training step ran out of GPU memory, if any :class:`GraphedCall` of ``priors`` holds recorded
    graphs: every one is replaced by its eager module (the same function, from now on) and the process's graph
    pool is dropped, so that the caching allocator can free its segments (the caller collects garbage and
    empties the cache, as the trainer's retry does). Returns the bytes the pool held (None when this torch
    cannot say), or 0 when nothing was released: no recorded graphs, or a pool smaller than ``min_bytes``
    (not worth the slower calls). Graphs that other, unlisted priors still hold keep their memory until
    those priors are freed."""
    wrapped = [
        (prior, name, net)
        for prior in priors
        for name in NETWORK_ATTRS
        if isinstance(net := getattr(prior, name, None), GraphedCall)
    ]
    if not any(net._graphs for _, _, net in wrapped):
        return 0
    size = _pool_bytes()
    if size is not None and size < min_bytes:
        return 0
    for prior, name, net in wrapped:
        net.reset()
        setattr(prior, name, net.eager)
    _POOLS.clear()  # the MemPool objects: their segments go back to the allocator once no graph holds them
    return size
