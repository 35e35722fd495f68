"""The PyTorch engine: the transformers module itself, eager, compiled or in CUDA graphs.

CUDA graphs (``model.cuda_graphs``, without ``compile``) are captured per input shape by
:class:`TorchEngine` and kept in a :class:`GraphCache`:

* capture runs under ``torch.cuda.device(engine.device)`` on a side stream created on that
  device and passed to the capture (on ``cuda:N``, N > 0, a capture stream of the current
  device would capture nothing: the kernels run eagerly on ``cuda:N`` and every replay returns
  the capture's output), with ``capture_error_mode='thread_local'`` (other threads' CUDA work
  does not break it);
* right after capture the graph is replayed on a fixed random input and compared with an eager
  pass on the same input: a graph that does not compute what eager does is dropped;
* a failed capture (ZoeDepth's ``.item()``, a pageable copy inside the forward) ends the
  capture, the allocator's routing into the graphs' pool (:meth:`TorchEngine._end_pool_routing`)
  and restores the thread's stream whatever was raised, and only that shape runs eagerly from
  then on; at most :data:`MAX_CUDA_GRAPHS` shapes are captured, the later ones run eagerly
  (logged once each);
* all graphs share one memory pool (``torch.cuda.graph_pool_handle()``): the graphs run one at a
  time on one stream and each graph's outputs are read (postprocessed) before the next replay,
  which is what sharing needs (a graph's outputs may be overwritten by another's replay).

``compile`` with ``cuda_graphs`` is ``torch.compile(mode='reduce-overhead')``: Inductor's CUDA
graph trees, whose state is per thread. Warm-up should run on the thread that infers; when an
input shape first runs on a thread other than the one that ran it before, the engine re-warms it
there (:data:`THREAD_WARMUP_RUNS` passes, one log line) instead of recording on live frames.

cuDNN autotuning (``cudnn.benchmark``) and, for fp32 models, TF32 matmuls are switched on around
the forward pass only (:func:`cuda_math`) and restored after: the flags are process-wide in
torch, so this is scoped in time, not per thread.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import logging
import threading
from typing import Any, Callable, Iterator, Optional

import torch

from depth_node.estimator.device import error_text, is_device_lost
from depth_node.estimator.engines.base import Engine, EngineOptions
from depth_node.estimator.errors import EstimatorError
from depth_node.text import bounded

logger = logging.getLogger('depth_node.estimator')

_CPU_COMPILE_OPTIONS = {'freezing': True}  # Inductor config, scoped to one model
_NAMES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}

MAX_CUDA_GRAPHS = 8
"""Input shapes captured at most per engine (batch sizes x image sizes); later shapes run
eagerly. The node warms up batch 1 and the batch of all cameras, and pads batches to those."""

CAPTURE_WARMUP_RUNS = 3
"""Eager passes on the capture stream before a capture (cuDNN autotuning, lazy init)."""

THREAD_WARMUP_RUNS = 3
"""Passes that re-warm ``torch.compile``'s CUDA graph trees for a shape on a new thread."""

GRAPH_CHECK_TOLERANCE = 2e-2
"""Largest difference between graph replay and eager, relative to the eager output's largest
magnitude, for a captured graph to be kept (an empty graph differs by the whole output)."""

_Key = tuple[tuple[int, ...], torch.dtype]


class _Float32Output(torch.nn.Module):
    """A depth head's last layer with an fp32 output whatever the model's dtype, so that the
    activation after it and any ``* max_depth`` compute in fp32.

    With ``whole_layer`` the layer itself runs in fp32 on its input cast up (CUDA: the cast of
    a ``(B, 32, h, w)`` input is negligible there); without, the layer runs in the model's dtype
    and only its one-channel output is cast (CPU: casting the input measured 60-100 ms on 2
    cores at 518x686, 10-30 % of a bf16 forward).
    """

    def __init__(self, layer: torch.nn.Module, whole_layer: bool) -> None:
        super().__init__()
        self.whole_layer = bool(whole_layer)
        self.layer = layer.float() if self.whole_layer else layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.whole_layer:
            return self.layer(x.float())
        return self.layer(x).float()


def keep_output_layer_fp32(model: torch.nn.Module, whole_layer: bool = True) -> Optional[str]:
    """Give the last one-channel convolution of ``model.head`` an fp32 output; returns its name.

    Depth Anything's metric head computes ``sigmoid(conv3(x)) * max_depth``: in fp16 the sigmoid
    is rounded to 11 significant bits before the multiplication (3-6 cm steps beyond 32 m for
    ``max_depth`` 80), in bf16 to 8 (up to 31 cm). With ``whole_layer`` the convolution runs in
    fp32 too (its input cast up): nothing after the last hidden layer is rounded. Without, the
    convolution's output (the logit) is rounded once to the model's dtype and the rest is fp32
    (bf16: about 6 cm steps at 80 m, fp16 under 1 cm). Works for the heads of Depth Anything
    (``head.conv3``), DPT, GLPN and Depth Pro (their last ``Conv2d`` with one output channel);
    None when the model has no such layer (ZoeDepth: it runs in fp32 by default). Idempotent.
    Call after casting the model.
    """
    head = getattr(model, 'head', None)
    if not isinstance(head, torch.nn.Module):
        return None
    last = None
    for name, module in head.named_modules():
        if isinstance(module, _Float32Output):
            return f'head.{name}'
        if isinstance(module, torch.nn.Conv2d) and module.out_channels == 1:
            last = name
    if last is None:
        return None
    parent_name, _, attr = last.rpartition('.')
    parent = head.get_submodule(parent_name) if parent_name else head
    setattr(parent, attr, _Float32Output(getattr(parent, attr), whole_layer))
    return f'head.{last}'


@contextlib.contextmanager
def cuda_math(tf32_matmul: bool) -> Iterator[None]:
    """cuDNN autotuning, and with ``tf32_matmul`` TF32 matmuls, for the ``with`` body only.

    Both are process-wide flags in torch: they are set on entry and restored on exit, so other
    code in the process keeps its own settings between forward passes (not during one: torch has
    no per-thread flag). TF32 uses the API torch has (``matmul.fp32_precision`` in torch 2.9
    and later, ``matmul.allow_tf32`` before), never both: torch refuses reads after a mix.
    cuDNN convolutions use TF32 for fp32 by default already.
    """
    cudnn = torch.backends.cudnn
    matmul = torch.backends.cuda.matmul
    new_api = hasattr(matmul, 'fp32_precision')
    benchmark = cudnn.benchmark
    saved = None
    if tf32_matmul:
        saved = matmul.fp32_precision if new_api else matmul.allow_tf32
        if new_api:
            matmul.fp32_precision = 'tf32'
        else:
            matmul.allow_tf32 = True
    cudnn.benchmark = True
    try:
        yield
    finally:
        cudnn.benchmark = benchmark
        if tf32_matmul:
            if new_api:
                matmul.fp32_precision = saved
            else:
                matmul.allow_tf32 = saved


@dataclass
class CapturedGraph:
    """One input shape's CUDA graph: copy the input into ``static_in``, replay, read
    ``outputs`` (the raw depth and Depth Pro's field of view or None) before the next replay."""

    graph: Any
    static_in: torch.Tensor
    outputs: tuple[torch.Tensor, Optional[torch.Tensor]]

    def replay(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        self.static_in.copy_(pixel_values)
        self.graph.replay()
        return self.outputs


def end_pool_routing(end: Optional[Callable[[int, Any], None]], index: int, pool: Any) -> str:
    """End the caching allocator's routing of allocations into graph pool ``pool`` on device
    ``index`` with ``end`` (``torch._C._cuda_endAllocateToPool``, or None where this torch
    has no such binding); '' when the routing is over, else why it could not be ended.

    torch 2.12 and later end it themselves and answer "not currently recording": as good.
    """
    if end is None:
        return "this torch cannot end a capture's memory routing"
    try:
        end(index, pool)
    except RuntimeError as exc:
        if 'not currently recording' not in str(exc):
            return f'ending its memory routing failed: {error_text(exc)}'
    return ''


class GraphMismatch(EstimatorError):
    """A captured graph's replay does not equal the eager forward pass."""


class GraphCache:
    """The CUDA graphs of one engine by input key; bookkeeping only (CPU-testable).

    :meth:`get` returns the key's graph, capturing it the first time through ``capture``; None
    when the key runs eagerly: its capture failed (or its replay differed from eager), or
    ``limit`` graphs already exist. Either is decided once per key and logged once; other keys
    are not affected. A sticky CUDA error during capture is raised (eager would fail the same).

    Attributes
    ----------
    graphs : dict
        key -> what ``capture`` returned.
    eager : dict
        key -> why that key runs without a graph.
    """

    def __init__(self, limit: int = MAX_CUDA_GRAPHS) -> None:
        self.limit = int(limit)
        self.graphs: dict[Any, Any] = {}
        self.eager: dict[Any, str] = {}

    def get(self, key: Any, capture: Callable[[], Any], label: str = '') -> Optional[Any]:
        graph = self.graphs.get(key)
        if graph is not None or key in self.eager:
            return graph
        label = label or str(key)
        if len(self.graphs) >= self.limit:
            why = f'{self.limit} CUDA graphs are already captured (the cap)'
        else:
            try:
                graph = capture()
            except Exception as exc:  # noqa: BLE001 - any capture failure: this shape eager
                if is_device_lost(exc):
                    raise
                why = f'capture failed ({type(exc).__name__}: {bounded(error_text(exc), 300)})'
            else:
                self.graphs[key] = graph
                return graph
        self.eager[key] = why
        logger.warning('input %s runs without CUDA graphs: %s; other input shapes keep theirs',
                       label, why)
        return None

    def clear(self) -> None:
        self.graphs.clear()
        self.eager.clear()


class ThreadWarmups:
    """Which threads ran each input key (CPU-testable bookkeeping).

    :meth:`first_on_this_thread` is True the first time a key runs on a thread after it ran on
    another one: ``torch.compile``'s CUDA graph trees must be warmed up again there.
    """

    def __init__(self) -> None:
        self._threads: dict[Any, set[int]] = {}
        self._lock = threading.Lock()

    def first_on_this_thread(self, key: Any) -> bool:
        ident = threading.get_ident()
        with self._lock:
            threads = self._threads.setdefault(key, set())
            if ident in threads:
                return False
            threads.add(ident)
            return len(threads) > 1

    def threads(self, key: Any) -> set[int]:
        with self._lock:
            return set(self._threads.get(key, ()))


def _same_output(graphed: Optional[torch.Tensor], eager: Optional[torch.Tensor]) -> str:
    """'' when ``graphed`` equals ``eager`` within :data:`GRAPH_CHECK_TOLERANCE`, else why not."""
    if graphed is None or eager is None:
        return '' if graphed is None and eager is None else 'one output is missing'
    if graphed.shape != eager.shape:
        return f'shape {tuple(graphed.shape)} against {tuple(eager.shape)}'
    graphed, eager = graphed.float(), eager.float()
    scale = float(eager.abs().nan_to_num(0.0, 0.0, 0.0).max()) or 1.0
    same = (graphed == eager) | (graphed.isnan() & eager.isnan())  # equal infinities and NaN
    difference = torch.where(same, 0.0, (graphed - eager).abs()).nan_to_num(float('inf'))
    worst = float(difference.max())
    if worst > GRAPH_CHECK_TOLERANCE * scale:
        return f'largest difference {worst:.3g} for outputs up to {scale:.3g}'
    return ''


class TorchEngine(Engine):
    """A transformers depth model run by PyTorch on :attr:`device` in :attr:`input_dtype`.

    The model is cast to the dtype (on CPU this beat ``torch.autocast`` by 10 %, which re-casts
    every weight on every forward) and run channels-last where that is faster: on CUDA and in
    CPU bf16 (oneDNN's bf16 convolutions and upsampling: 7-10 % of the whole forward). In a
    reduced precision the depth head's last layer gives fp32 (:func:`keep_output_layer_fp32`:
    computed in fp32 on CUDA, only its output cast on the CPU).

    ``compile`` wraps the model in ``torch.compile``: on CPU with Inductor's freezing (weights
    folded in as constants and pre-packed for oneDNN, set for this model only through
    ``options``; 5-13 % faster after a first compile of about 20 s per input shape); on CUDA as
    it is (``mode='reduce-overhead'`` together with ``cuda_graphs``). ``cuda_graphs`` (CUDA only)
    captures the forward pass per input shape on its first frame and replays it afterwards (see
    the module docstring).

    Attributes
    ----------
    graphs : GraphCache
        The captured CUDA graphs and the shapes that run eagerly.
    output_layer_fp32 : str or None
        The head layer with an fp32 output (None in fp32, or when the model has none).
    """

    name = 'torch'

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 options: EngineOptions = EngineOptions(),
                 channels_last: Optional[bool] = None) -> None:
        cuda = device.type == 'cuda'
        self.device = device
        self.version = torch.__version__
        self.input_dtype = dtype
        self.precision = _NAMES[dtype]
        if options.cuda_graphs and not cuda:
            logger.warning('cuda_graphs is ignored on %s (CUDA only)', device)
        self.cuda_graphs = bool(options.cuda_graphs) and cuda
        model.to(device=device, dtype=dtype)
        self.output_layer_fp32 = None
        if dtype != torch.float32:
            self.output_layer_fp32 = keep_output_layer_fp32(model, whole_layer=cuda)
        if channels_last is None:
            channels_last = cuda or dtype != torch.float32
        self.channels_last = bool(channels_last)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.compiled = bool(options.compile)
        if self.compiled:
            if cuda:
                mode = 'reduce-overhead' if self.cuda_graphs else None
                self._forward_module = torch.compile(model, mode=mode)
            else:
                # Freezing constant-folds the (never trained) weights and lets Inductor pre-pack
                # them for oneDNN (``cpp.weight_prepack``, on by default); given as options it
                # applies to this model's compilation only.
                self._forward_module = torch.compile(model, options=_CPU_COMPILE_OPTIONS)
        else:
            self._forward_module = model
        self.graphs = GraphCache(MAX_CUDA_GRAPHS)
        self.threads = ThreadWarmups()
        # torch.compile's CUDA graph trees keep their state per thread.
        self._per_thread_graphs = self.compiled and self.cuda_graphs
        self._capture_stream: Optional[torch.cuda.Stream] = None
        self._pool: Any = None
        self._captures_off = ''  # why no further shape is captured, once that is so

    def describe(self) -> str:
        return (f'torch {self.precision}{", channels-last" if self.channels_last else ""}'
                f'{", torch.compile" if self.compiled else ""}'
                f'{", CUDA graphs" if self.cuda_graphs else ""}')

    def close(self) -> None:
        self.graphs.clear()
        self._forward_module = self.model = None
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()

    def run(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(B, 3, h, w)`` -> raw depth ``(B, h', w')`` and Depth Pro's FoV; with CUDA graphs
        the outputs are the graph's own tensors, valid until the next call."""
        pixel_values = pixel_values.to(self.input_dtype)
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        key: _Key = (tuple(pixel_values.shape), pixel_values.dtype)
        rewarm = self.threads.first_on_this_thread(key) and self._per_thread_graphs
        if self.device.type != 'cuda':
            if rewarm:
                self._rewarm(key, pixel_values)
            return self._forward(pixel_values)
        with torch.cuda.device(self.device), cuda_math(self.input_dtype == torch.float32):
            if rewarm:
                self._rewarm(key, pixel_values)
            if self.cuda_graphs and not self.compiled:
                graph = self.graphs.get(key, lambda: self._capture(pixel_values),
                                        label=str(key[0]))
                if graph is not None:
                    return graph.replay(pixel_values)
            return self._forward(pixel_values)

    def _rewarm(self, key: _Key, pixel_values: torch.Tensor) -> None:
        logger.info('input %s first runs on thread %s after warm-up on another: re-warming '
                    "torch.compile's CUDA graphs for it here (%d passes; warm up on the thread "
                    'that infers to avoid this)', key[0], threading.current_thread().name,
                    THREAD_WARMUP_RUNS)
        for _ in range(THREAD_WARMUP_RUNS):
            self._forward(pixel_values)

    def _forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self._per_thread_graphs:
            mark_step = getattr(getattr(torch, 'compiler', None), 'cudagraph_mark_step_begin',
                                None)
            if mark_step is not None:
                mark_step()  # each call is a new inference step: earlier outputs are done
        try:
            outputs = self._forward_module(pixel_values=pixel_values)
        except Exception as exc:
            if not self.compiled or is_device_lost(exc):
                raise
            raise EstimatorError(f'forward failed with torch.compile on ({type(exc).__name__}: '
                                 f'{exc}); run with compile off') from exc
        fov = getattr(outputs, 'field_of_view', None)
        return outputs.predicted_depth, fov

    def _end_pool_routing(self) -> None:
        """After a capture that failed: make sure the allocator no longer routes allocations
        into the graphs' pool, so that the next shape can capture into it.

        torch before 2.12 raises from ``capture_end`` on an invalidated capture before it ends
        that routing (pytorch#180395): the pool stays "recording", the next shape's capture
        fails with "already recording to mempool_id" (seen on an H200, torch 2.11), and a
        later ``empty_cache`` can abort on the allocator's "captures_underway" assertion. Here
        the routing is ended; where torch already ended it, it says "not currently recording",
        which is as good. Where it cannot be ended (no such binding in this torch, or another
        error), no further shape is captured in this engine (each runs eagerly, logged once);
        the graphs captured before keep running. The failed capture's reference to the pool
        is not given back by torch < 2.12: the pool's memory stays reserved until exit.
        """
        index = self.device.index if self.device.index is not None \
            else torch.cuda.current_device()
        why = end_pool_routing(getattr(torch._C, '_cuda_endAllocateToPool', None), index,
                               self._pool)
        if why:
            self._captures_off = f'a capture failed and {why}'

    def _capture(self, pixel_values: torch.Tensor) -> CapturedGraph:
        """Capture the forward pass for ``pixel_values``' shape (inside ``torch.cuda.device``).

        Raises
        ------
        GraphMismatch
            The replay does not equal eager on a random input.
        Exception
            Whatever the capture raised; the capture is ended and the thread's current stream
            restored first.
        """
        if self._captures_off:
            raise EstimatorError(f'no more captures in this engine: {self._captures_off}')
        device = self.device
        if self._capture_stream is None:
            self._capture_stream = torch.cuda.Stream(device)
            self._pool = torch.cuda.graph_pool_handle()
        stream = self._capture_stream
        current = torch.cuda.current_stream(device)
        static_in = pixel_values.clone(memory_format=torch.preserve_format)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            for _ in range(CAPTURE_WARMUP_RUNS):  # cuDNN autotuning and lazy initialisation
                self._forward(static_in)
        current.wait_stream(stream)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        # Not torch.cuda.graph(): its __exit__ ends the capture before restoring the stream, so
        # a capture that fails to end would leave the capture stream current on this thread.
        with torch.cuda.stream(stream):
            begun = ended = False
            try:
                graph.capture_begin(pool=self._pool, capture_error_mode='thread_local')
                begun = True
                outputs = self._forward(static_in)
                ended = True  # capture_end is called once, whether or not it raises
                graph.capture_end()
            except BaseException:
                if begun and not ended:
                    with contextlib.suppress(Exception):
                        graph.capture_end()
                self._end_pool_routing()
                raise
        torch.cuda.synchronize(device)
        captured = CapturedGraph(graph, static_in, outputs)
        # An empty graph (kernels that ran eagerly elsewhere) replays its capture's outputs:
        # check the replay on an input it was not captured with.
        generator = torch.Generator(device=device).manual_seed(0)
        probe = torch.randn(static_in.shape, generator=generator, device=device)
        probe = probe.to(static_in.dtype).contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        eager = self._forward(probe)
        graphed = captured.replay(probe)
        for what, got, want in zip(('depth', 'field of view'), graphed, eager):
            problem = _same_output(got, want)
            if problem:
                raise GraphMismatch(f'replay differs from eager in its {what}: {problem}')
        logger.info('captured a CUDA graph for input %s on %s', tuple(pixel_values.shape),
                    device)
        return captured
