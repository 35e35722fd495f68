"""The Triton engine (``model.engine: triton``): the network runs on a Triton Inference Server
that :mod:`depth_node.serve` (``depth_node-serve``) runs; everything after the forward pass
(LiDAR fit, confidence, clouds, publishing) stays on the robot. ROS-free.

Unlike the local engines, which take the network input and return its raw prediction, this one
stands in for the whole :class:`~depth_node.estimator.DepthEstimator` (:class:`TritonEstimator`,
the same methods and attributes the frame pipeline, the node and the bag tool use): the camera's
uint8 image goes up, the server preprocesses it, runs its own engine and resizes the prediction
to the image, and depth comes back at the image's size. Measured on loopback (BENCHMARKS.md
"Triton"): the image is 0.92 MB at 640x480 against 4.3 MB for the float32 network input of
686x518, and the robot's CPU does no resizing at all.

The wire protocol (KServe v2 tensors; :data:`IMAGE`, :data:`FOCAL`, :data:`EXTRA_OUTPUTS`):

==================  =====  =======================  ============================================
tensor              dir    datatype, shape          what
==================  =====  =======================  ============================================
``image``           in     UINT8 ``(B, H, W, 3)``   RGB images of one size, any size
``focal``           in     FP32 ``(B, 2)``          ``(fx, fy)`` pixels of the image; only for a
                                                    model whose card sets ``focal_scale``
``metric_depth``,   out    FP32 or FP16             depth at the image's size, named by what it
``relative_...``           ``(B, H, W)``            is (:data:`OUTPUT_KINDS`); NaN invalid
``sky``             out    BOOL ``(B, H, W)``       only where the model's card has a sky output
``confidence``      out    FP32 ``(B, H, W)``       only where the card has a confidence output
==================  =====  =======================  ============================================

The client learns the model's kind (metric or relative), whether it needs focal lengths and
its largest batch from the server's model metadata and config at startup; a ``model.kind``
set on the robot that disagrees is refused. Startup waits up to ``wait`` seconds for the server
and its model, then fails naming the URL (:class:`TritonError`). While running, every request
has a bounded timeout; a server that does not answer (gone, restarting, overloaded past the
timeout) raises :class:`ServerUnavailable` for the frame (the pipeline drops and counts it as
``server_down``), and later frames are not sent until a backoff of 0.5 s, doubling to 8 s, has
passed; then the next frame tries a new connection. A server that answers with an error (a size
its network refuses) fails that frame only (``forward_failed``).
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
import threading
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from depth_node.config import ConfigError, split_triton_url
from depth_node.estimator.errors import EstimatorError, one_per_image
from depth_node.estimator.focal import check_focals, focal_of
from depth_node.estimator.model_card import OUTPUT_KINDS
from depth_node.estimator.prediction import Prediction

logger = logging.getLogger('depth_node.estimator')

IMAGE = 'image'
"""The input tensor: ``(B, H, W, 3)`` UINT8 RGB."""
FOCAL = 'focal'
"""The input tensor of a model that needs focal lengths: ``(B, 2)`` FP32 ``(fx, fy)``, pixels."""
EXTRA_OUTPUTS = {'sky': 'BOOL', 'confidence': 'FP32'}
"""Outputs beside depth, where the model's card has them, with their Triton datatypes."""
DEPTH_DATATYPES = ('FP32', 'FP16')
"""Datatypes the depth output may come in (``depth_node-serve --output-dtype``)."""

BACKOFF_FIRST_S = 0.5
"""Seconds before the first retry after the server stopped answering."""
BACKOFF_MAX_S = 8.0
"""The backoff doubles up to this many seconds."""


class TritonError(EstimatorError):
    """The server cannot be used: unreachable within the startup wait, no such model, or a
    model that is not what this node expects; the message names the URL and the fix."""


class ServerUnavailable(EstimatorError):
    """The server did not answer a frame (gone, restarting, past the timeout) or is being
    backed off from: the frame is dropped. ``outage`` numbers the outage (1 for the first); the
    frame pipeline reports an error that has one as ``server_down``, one log line per outage at
    first, then at most one per :data:`depth_node.problems.THROTTLE_S` while it lasts."""

    def __init__(self, message: str, outage: int) -> None:
        super().__init__(message)
        self.outage = outage


def import_tritonclient(scheme: str) -> Any:
    """``tritonclient.grpc`` or ``tritonclient.http``.

    Raises
    ------
    TritonError
        When the client library is not installed, with the install command.
    """
    try:
        if scheme == 'grpc':
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        raise TritonError(
            f"model.engine triton needs Triton's client library: pip install "
            f"'tritonclient[grpc,http]' (or 'depth_node[triton-client]'): {exc}") from exc
    return module


@dataclass
class ServerModel:
    """What the client learnt of the server's model from its metadata and config.

    Attributes
    ----------
    output_kind : str
        ``'metric_depth'``, ``'relative_disparity'`` or ``'relative_depth'`` (the name of its
        depth output).
    depth_datatype : str
        ``'FP32'`` or ``'FP16'``.
    needs_focal : bool
        Whether it takes the :data:`FOCAL` input.
    extras : tuple of str
        The outputs of :data:`EXTRA_OUTPUTS` it gives.
    max_batch : int
        The largest batch one request may carry (its ``max_batch_size``).
    platform : str
        The server's backend for it (``python`` for depth_node-serve).
    """

    output_kind: str
    depth_datatype: str
    needs_focal: bool
    extras: tuple[str, ...]
    max_batch: int
    platform: str = ''


def read_server_model(metadata: dict, config: dict, name: str, url: str) -> ServerModel:
    """The :class:`ServerModel` of ``metadata`` (KServe ``/v2/models/<name>``) and ``config``
    (Triton's model config, as JSON) of model ``name`` at ``url``.

    Raises
    ------
    TritonError
        A model that does not speak this protocol (no :data:`IMAGE` input, no depth output
        named by its kind), naming what it has.
    """
    inputs = {t['name']: t for t in metadata.get('inputs', [])}
    outputs = {t['name']: t for t in metadata.get('outputs', [])}
    kinds = [k for k in OUTPUT_KINDS if k in outputs]
    image = inputs.get(IMAGE)
    if len(kinds) != 1 or image is None or image.get('datatype') != 'UINT8' \
            or outputs[kinds[0]].get('datatype') not in DEPTH_DATATYPES:
        have = ', '.join(f"{t['name']} {t.get('datatype')}" for t in
                         [*inputs.values(), *outputs.values()]) or 'none'
        raise TritonError(
            f"model '{name}' at {url} is not a depth model served by depth_node-serve (it "
            f'needs an input {IMAGE} UINT8 and one depth output named by its kind, '
            f"{', '.join(OUTPUT_KINDS)}; it has: {have}): point model.triton_model at the "
            'model depth_node-serve serves (--model-name, default depth)')
    return ServerModel(output_kind=kinds[0], depth_datatype=outputs[kinds[0]]['datatype'],
                       needs_focal=FOCAL in inputs,
                       extras=tuple(e for e in EXTRA_OUTPUTS if e in outputs),
                       max_batch=max(1, int(config.get('max_batch_size', 1) or 1)),
                       platform=str(metadata.get('platform', '')))


@dataclass
class _Link:
    """One thread's client and the outage bookkeeping it shares with the others."""

    client: Any = None
    generation: int = -1


@dataclass
class _Outage:
    """The server not answering: since when, how many frames, when to try again."""

    number: int = 0
    since: Optional[float] = None   # monotonic seconds; None = the server answers
    failures: int = 0
    retry_at: float = 0.0
    cause: str = ''
    dropped: int = 0


class TritonEstimator:
    """Depth from a model served by ``depth_node-serve`` (the :class:`DepthEstimator` methods
    and attributes the pipeline, node and bag tool use).

    Parameters
    ----------
    url : str
        ``grpc://host:port`` or ``http://host:port`` (``model.triton_url``).
    model : str
        The model's name on the server (``model.triton_model``).
    timeout : float
        Seconds one request may take (``model.triton_timeout``).
    wait : float
        Seconds the startup waits for the server and its model (``model.triton_wait``); also
        the limit of a warm-up request.
    kind : str
        ``model.kind``: '' takes the server's; else it must be the server's.
    on_note : callable, optional
        ``on_note(level, text)`` for each startup line as it arises.

    Attributes
    ----------
    is_metric : bool
    output_kind : str
        The server model's (see :class:`ServerModel`).
    needs_focal : bool
        Whether frames need ``(fx, fy)`` (the server's model takes :data:`FOCAL`).
    takes_prompt : bool
        Always False: a model that takes a depth prompt is not served.
    batch_independent : bool
        True: the server runs frames of different clients in one batch.
    device : torch.device
        The CPU: the outputs arrive as numpy arrays in host memory.
    startup_notes : list of str

    Raises
    ------
    TritonError
        The URL is malformed, the client library missing, the server or its model not ready
        within ``wait`` (naming the URL and what did answer), or its kind not ``kind``.
    """

    name = 'triton'
    precision = 'server'
    takes_prompt = False
    batch_independent = True
    config = None
    verifies = False
    verify_seconds = 0.0

    def __init__(self, url: str, model: str, timeout: float, wait: float, kind: str = '',
                 on_note: Optional[Callable[[str, str], None]] = None) -> None:
        try:
            self.scheme, self.address = split_triton_url(url)
        except ConfigError as exc:
            raise TritonError(str(exc)) from exc
        self.url = f'{self.scheme}://{self.address}'
        self.model = str(model)
        self.timeout, self.wait = float(timeout), float(wait)
        self._module = import_tritonclient(self.scheme)
        self.device = torch.device('cpu')
        self.dtype = torch.float32
        self.model_name = f'{self.model} at {self.url}'
        self.model_type = 'triton'
        self.startup_notes: list[str] = []
        self._local = threading.local()
        self._generation = 0
        self._outage = _Outage()
        self._lock = threading.Lock()   # one request at a time, as the local engines
        self._warm_batches: set[int] = set()
        start = time.monotonic()
        self.server = self._wait_ready()
        if kind and kind != self.server.output_kind:
            raise TritonError(
                f"model '{self.model}' at {self.url} gives {self.server.output_kind}, but "
                f"model.kind says {kind}: serve the model this node expects, or set model.kind "
                "'' to take the server's")
        self.output_kind = self.server.output_kind
        self.is_metric = self.output_kind == 'metric_depth'
        self.needs_focal = self.server.needs_focal
        line = (f"engine triton: model '{self.model}' at {self.url} ready after "
                f'{time.monotonic() - start:.1f} s ({self.output_kind.replace("_", " ")}, '
                f'depth {self.server.depth_datatype}, max batch {self.server.max_batch}'
                + (', needs focal lengths' if self.needs_focal else '') + '); the network '
                'runs on the server, everything after it here')
        self.startup_notes.append(line)
        if on_note is not None:
            on_note('info', line)

    # ------------------------------------------------------------------ connection
    def _new_client(self, timeout: float) -> Any:
        if self.scheme == 'grpc':
            return self._module.InferenceServerClient(self.address)
        return self._module.InferenceServerClient(self.address, connection_timeout=timeout,
                                                  network_timeout=timeout)

    def _client(self) -> Any:
        """This thread's client, new after an outage (a fresh connection, not one in the
        gRPC channel's own reconnect backoff)."""
        link = getattr(self._local, 'link', None)
        if link is None:
            link = self._local.link = _Link()
        if link.generation != self._generation or link.client is None:
            self._close(link)
            link.client = self._new_client(self.timeout)
            link.generation = self._generation
        return link.client

    @staticmethod
    def _close(link: _Link) -> None:
        client, link.client = link.client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a broken connection is dropped all the same
                pass

    def _wait_ready(self) -> ServerModel:
        """Poll the server until its model is ready, at most :attr:`wait` seconds."""
        deadline = time.monotonic() + self.wait
        step = min(self.timeout, max(self.wait, 0.1), 2.0)
        last = 'no answer'
        live = False
        client = self._new_client(step)
        try:
            while True:
                try:
                    live = bool(self._call(client.is_server_live, step))
                    if live and self._call(lambda **kw: client.is_model_ready(self.model, **kw),
                                           step):
                        metadata = self._call(
                            lambda **kw: client.get_model_metadata(self.model, **kw), step)
                        config = self._call(
                            lambda **kw: client.get_model_config(self.model, **kw), step)
                        return read_server_model(_as_dict(metadata),
                                                 _as_dict(config).get('config', _as_dict(config)),
                                                 self.model, self.url)
                    last = (f"the server is live but has no model '{self.model}' ready"
                            if live else 'the server is not live')
                except TritonError:
                    raise
                except Exception as exc:  # noqa: BLE001 - whatever the transport raises
                    last = _reason(exc)
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        finally:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
        if live:
            fix = ("check model.triton_model (depth_node-serve --model-name; default 'depth'), "
                   'or raise model.triton_wait if the server is still loading it')
        else:
            fix = ('start depth_node-serve there, check model.triton_url (gRPC port 8001, HTTP '
                   '8000 by default) and the network, or raise model.triton_wait')
        raise TritonError(f'Triton server at {self.url} not ready after {self.wait:g} s '
                          f'(model.triton_wait): {last}; {fix}')

    def _call(self, method: Callable[..., Any], timeout: float) -> Any:
        """``method`` with a bounded timeout in the client's own argument."""
        if self.scheme == 'grpc':
            return method(client_timeout=timeout)
        return method()

    # ------------------------------------------------------------------ requests
    def _infer(self, images: np.ndarray, focals: Optional[list[tuple[float, float]]],
               timeout: float) -> dict[str, np.ndarray]:
        """One request: ``(B, H, W, 3)`` uint8 -> the outputs by role (``depth`` float32,
        ``sky``, ``confidence``), each ``(B, H, W)``.

        Raises
        ------
        ServerUnavailable
            No answer within ``timeout``, or an outage is being backed off from.
        EstimatorError
            The server answered with an error.
        """
        module, server = self._module, self.server
        outage = self._outage
        now = time.monotonic()
        if outage.since is not None and now < outage.retry_at:
            outage.dropped += 1
            raise ServerUnavailable(
                f'Triton server at {self.url} not answering for {now - outage.since:.1f} s '
                f'({outage.cause}); frames are dropped, next try in '
                f'{outage.retry_at - now:.1f} s', outage.number)
        inputs = [module.InferInput(IMAGE, list(images.shape), 'UINT8')]
        _set_data(inputs[0], images, self.scheme)
        if server.needs_focal:
            data = np.asarray(focals, dtype=np.float32).reshape(len(images), 2)
            inputs.append(module.InferInput(FOCAL, list(data.shape), 'FP32'))
            _set_data(inputs[1], data, self.scheme)
        names = [server.output_kind, *server.extras]
        outputs = [module.InferRequestedOutput(n, **({} if self.scheme == 'grpc' else
                                                     {'binary_data': True})) for n in names]
        # HTTP takes its timeout per client: a longer one (warm-up) gets a client of its own
        own = self.scheme == 'http' and timeout != self.timeout
        client = self._new_client(timeout) if own else self._client()
        try:
            if self.scheme == 'grpc':
                result = client.infer(self.model, inputs, outputs=outputs,
                                      client_timeout=timeout)
            else:
                result = client.infer(self.model, inputs, outputs=outputs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - gevent's Timeout is a BaseException
            if _answered(exc):
                raise EstimatorError(f'Triton server at {self.url} refused the frame: '
                                     f'{_reason(exc)}') from None
            self._went_away(exc, now)
            raise ServerUnavailable(
                f'Triton server at {self.url} did not answer ({self._outage.cause}); frames '
                f'are dropped, next try in {self._outage.retry_at - time.monotonic():.1f} s '
                f'(model.triton_timeout {self.timeout:g} s)', self._outage.number) from None
        finally:
            if own:
                self._close(_Link(client))
        if outage.since is not None:
            logger.warning('Triton server at %s answers again after %.1f s (outage %d, %d '
                           'frame(s) dropped)', self.url, now - outage.since, outage.number,
                           outage.dropped + outage.failures)
            outage.since, outage.failures, outage.dropped = None, 0, 0
        got = {'depth': np.array(result.as_numpy(server.output_kind), dtype=np.float32)}
        for extra in server.extras:
            got[extra] = np.array(result.as_numpy(extra))
        return got

    def _went_away(self, exc: BaseException, now: float) -> None:
        """Start or go on with an outage: the next try after the backoff, on a new client."""
        outage = self._outage
        if outage.since is None:
            outage.number += 1
            outage.since = now
        outage.failures += 1
        outage.cause = _reason(exc)
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (outage.failures - 1))
        outage.retry_at = time.monotonic() + delay
        self._generation += 1
        link = getattr(self._local, 'link', None)
        if link is not None:
            self._close(link)

    @property
    def outages(self) -> int:
        """How many times the server stopped answering so far."""
        return self._outage.number

    # ------------------------------------------------------------------ the estimator's API
    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The image's own size: the network input is made on the server, which refuses a size
        its network cannot take (that frame fails)."""
        return int(height), int(width)

    @property
    def engine(self) -> TritonEstimator:
        """The estimator is its own engine (``name``, ``describe()``)."""
        return self

    def describe(self) -> str:
        return f"triton (model '{self.model}' at {self.url})"

    def padded_batch(self, count: int) -> int:
        return count

    def _run(self, images: Sequence[np.ndarray], focals: Optional[Sequence[Any]],
             timeout: Optional[float] = None) -> Prediction:
        images = [np.asarray(i) for i in images]
        if not images:
            raise EstimatorError('no images given')
        shape = images[0].shape
        for image in images:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or \
                    image.shape != shape:
                raise EstimatorError(f'images must be same-size (H, W, 3) uint8 RGB, got '
                                     f'{image.dtype} {image.shape} beside {shape}')
        focals = check_focals(focals, len(images), self.model_name) if self.needs_focal \
            else None
        limit = self.server.max_batch
        start = time.perf_counter()
        parts: dict[str, list[np.ndarray]] = {}
        with self._lock:
            for first in range(0, len(images), limit):
                chunk = images[first:first + limit]
                batch = chunk[0][None] if len(chunk) == 1 else np.stack(chunk)
                got = self._infer(np.ascontiguousarray(batch),
                                  None if focals is None else focals[first:first + limit],
                                  self.timeout if timeout is None else timeout)
                for role, value in got.items():
                    parts.setdefault(role, []).append(value)
        joined = {role: v[0] if len(v) == 1 else np.concatenate(v) for role, v in parts.items()}
        depth = joined['depth']
        if depth.shape != (len(images), *shape[:2]):
            raise EstimatorError(f'Triton server at {self.url} gave depth of shape '
                                 f'{depth.shape} for {len(images)} image(s) of {shape[:2]}')
        # NaN or inf from the network (a float16 answer overflows to inf): NaN, and the frames
        # counted, as a local engine does
        bad = ~np.isfinite(depth.reshape(len(images), -1)).all(axis=1)
        if bad.any():
            depth = np.where(np.isfinite(depth), depth, np.float32(np.nan))
        return Prediction(depth=depth, timings={'forward': time.perf_counter() - start},
                          non_finite=int(bad.sum()),
                          sky=joined.get('sky'), confidence=joined.get('confidence'))

    def predict(self, rgb: np.ndarray, fx: Optional[float] = None,
                prompt: Optional[np.ndarray] = None,
                focal: Optional[tuple[float, float]] = None) -> Prediction:
        """One ``(H, W, 3)`` uint8 RGB frame -> :class:`Prediction` with ``depth`` ``(H, W)``
        float32 as :meth:`DepthEstimator.predict` gives (``fx`` is not used; ``prompt`` is
        refused; ``focal`` ``(fx, fy)`` pixels for a model that :attr:`needs_focal`).

        Raises
        ------
        ServerUnavailable
            The server did not answer (the frame is dropped).
        EstimatorError
            Bad images or focal lengths, a prompt, or the server refused the frame.
        """
        _no_prompt(prompt)
        prediction = self._run([rgb], None if focal is None else [focal])
        return _first(prediction)

    def predict_points(self, rgb: np.ndarray, K: np.ndarray, stride: int = 1,
                       min_depth: float = 0.0, max_depth: float = float('inf'),
                       fx: Optional[float] = None,
                       prompt: Optional[np.ndarray] = None) -> Prediction:
        """:meth:`predict` and its cloud, back-projected here on the CPU
        (:func:`depth_node.cloud.depth_to_points`; metric models only), as
        :meth:`DepthEstimator.predict_points` gives."""
        if not self.is_metric:
            raise EstimatorError(f'{self.model_name} predicts {self.output_kind}, not metres; '
                                 'a cloud needs metric depth (align it first)')
        _no_prompt(prompt)
        prediction = _first(self._run([rgb], [focal_of(K)] if self.needs_focal else None))
        prediction.points = _cloud(prediction, prediction.depth,
                                   {'K': K, 'stride': stride, 'min_depth': min_depth,
                                    'max_depth': max_depth})
        return prediction

    def predict_batch(self, images: list[np.ndarray],
                      fx: Optional[float | Sequence[float]] = None,
                      clouds: Optional[Sequence[Optional[dict[str, Any]]]] = None,
                      prompts: Optional[Sequence[Optional[np.ndarray]]] = None,
                      focals: Optional[Sequence[tuple[float, float]]] = None,
                      on_device: bool = False) -> Prediction:
        """Same-size frames in one request (several when there are more than the server's
        largest batch), as :meth:`DepthEstimator.predict_batch` gives: ``depth`` ``(B, H, W)``,
        ``points`` per image where ``clouds`` asks (back-projected here). ``on_device``: the
        outputs as CPU ``torch.Tensor`` s (where this estimator's outputs are), no clouds."""
        images = list(images)
        clouds = one_per_image('clouds', clouds, len(images))
        for prompt in prompts or ():
            _no_prompt(prompt)
        wanted = [i for i, c in enumerate(clouds or ()) if c is not None]
        if wanted and not self.is_metric:
            raise EstimatorError(f'{self.model_name} predicts {self.output_kind}, not metres; a '
                                 'cloud needs metric depth (align it first)')
        if on_device and wanted:
            raise EstimatorError('clouds are back-projected by the caller with on_device '
                                 '(depth_node.cloud.depth_to_points takes the tensor)')
        if focals is None and self.needs_focal and clouds is not None \
                and all(c is not None for c in clouds):
            focals = [focal_of(c['K']) for c in clouds]
        prediction = self._run(images, focals)
        if wanted:
            prediction.points = [None] * len(images)
            for i in wanted:
                prediction.points[i] = _cloud(prediction, prediction.depth[i], clouds[i])
        if on_device:
            prediction.depth = torch.from_numpy(prediction.depth)
            if prediction.sky is not None:
                prediction.sky = torch.from_numpy(prediction.sky)
            if prediction.confidence is not None:
                prediction.confidence = torch.from_numpy(prediction.confidence)
        return prediction

    def warmup(self, height: int, width: int, iterations: int = 2,
               batches: Sequence[int] = (1,)) -> float:
        """Send ``iterations`` synthetic ``height`` x ``width`` frames per batch size, each
        allowed :attr:`wait` seconds (the server may prepare a new input size); seconds taken.

        Raises
        ------
        TritonError
            The server did not answer within :attr:`wait`, or refused the frame.
        """
        ramp = np.linspace(0, 255, num=int(width), dtype=np.float32)
        frame = np.ascontiguousarray(np.broadcast_to(
            ramp[None, :, None], (int(height), int(width), 3)).astype(np.uint8))
        start = time.perf_counter()
        for batch in sorted({max(1, int(b)) for b in batches} | {1}):
            focals = [(float(width), float(width))] * batch if self.needs_focal else None
            for _ in range(max(1, int(iterations))):
                try:
                    self._run([frame] * batch, focals, timeout=max(self.timeout, self.wait))
                except EstimatorError as exc:
                    raise TritonError(f'warm-up frame ({width}x{height}, batch {batch}) through '
                                      f'{self.url} failed: {exc}') from exc
            self._warm_batches.add(batch)
        return time.perf_counter() - start

    def prepare(self, height: int, width: int, batch: int = 1) -> None:
        """Nothing to build here: the server prepares its engine."""

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        link = getattr(self._local, 'link', None)
        if link is not None:
            self._close(link)


def _first(prediction: Prediction) -> Prediction:
    prediction.depth = prediction.depth[0]
    if prediction.sky is not None:
        prediction.sky = prediction.sky[0]
    if prediction.confidence is not None:
        prediction.confidence = prediction.confidence[0]
    return prediction


def _cloud(prediction: Prediction, depth: np.ndarray, cloud: dict[str, Any]) -> np.ndarray:
    """``depth``'s cloud on the CPU; its seconds added to ``prediction``'s ``'cloud'``."""
    from depth_node.cloud import depth_to_points  # as the slow path loads it

    start = time.perf_counter()
    points = depth_to_points(depth, **cloud)
    prediction.timings['cloud'] = prediction.timings.get('cloud', 0.0) + \
        time.perf_counter() - start
    return points


def _no_prompt(prompt: Any) -> None:
    if prompt is not None:
        raise EstimatorError('a model served by Triton takes no depth prompt (Prompt Depth '
                             'Anything runs on the robot: model.engine torch)')


def _set_data(tensor: Any, data: np.ndarray, scheme: str) -> None:
    if scheme == 'grpc':
        tensor.set_data_from_numpy(data)
    else:
        tensor.set_data_from_numpy(data, binary_data=True)


def _as_dict(value: Any) -> dict:
    """A gRPC protobuf message or an HTTP JSON answer as a dict."""
    if isinstance(value, dict):
        return value
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(value, preserving_proto_field_name=True)


_NOT_ANSWERED = ('UNAVAILABLE', 'DEADLINE_EXCEEDED', 'CANCELLED', 'NOT_FOUND', 'unknown model',
                 'not ready', 'not found', 'Unavailable', 'timed out', 'Timeout')
"""What in a client error says the server did not answer the frame (gone, restarting, past the
timeout, or its model not loaded yet), rather than refused it."""


def _answered(exc: BaseException) -> bool:
    """Whether ``exc`` is the server's own error answer about the frame."""
    from tritonclient.utils import InferenceServerException

    if not isinstance(exc, InferenceServerException):
        return False   # the transport's: refused, reset, timed out
    text = f'{exc.status() or ""} {exc.message() or ""}'
    return not any(word in text for word in _NOT_ANSWERED)


def _reason(exc: BaseException) -> str:
    """A short reason of a client error (no gRPC debug dump)."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        text = f'{exc.status() or ""} {exc.message() or ""}'.strip()
    else:
        text = f'{type(exc).__name__}: {exc}'.strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
