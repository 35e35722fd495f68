"""``depth_node-serve``: one depth model served to a fleet of nodes through Triton Inference
Server (NVIDIA PyTriton), requests of different clients batched together. ROS-free.

The model is the one the node's ``model.*`` parameters name, given as the bag tool takes them
(``--params-file`` of the node's YAML, then ``-p name:=value``); it is loaded, warmed up and
self-checked (``model.verify``) as the node loads it, on the engine ``model.engine`` picks
(``auto``, ``torch``, ``onnxruntime``, ``openvino``, ``tensorrt``; not ``triton``). Nodes reach
it with ``model.engine: triton`` and ``model.triton_url``
(:mod:`depth_node.estimator.engines.triton_engine` holds the wire protocol: the camera's uint8
image up, depth at the image's size back)::

    depth_node-serve --params-file robot.yaml -p model.device:=cuda --max-batch 8
    depth_node-serve -p model.random_init:=depth-anything-v2-small --grpc-port 9001

Triton's dynamic batcher gathers requests of the same image size (up to ``--max-batch`` frames,
waiting at most ``--queue-delay-ms`` for more) into one forward pass. One line on stdout says
when it is ready (``depth_node-serve ready: ...``); SIGINT or SIGTERM stop it cleanly (Triton
finishes the requests in flight). Before that line, one frame goes through Triton and must
equal the model run here (the Python backend's round trip is checked).

PyTriton's Python backend stub embeds libpython: this process puts its own interpreter's
``libpython3.X.so`` first on the stub's library path, so that the stub's interpreter and its
standard library are the same release (a Debian libpython 3.11.2 under a 3.11.7 standard library
fails in ``multiprocessing.resource_tracker``); and the stub reads numpy 1.x arrays, so this
process refuses numpy 2 (README "Serving a fleet from Triton").

``--write-repository DIR`` writes the model as a repository for a standalone Triton server
(``DIR/<model-name>/config.pbtxt`` and ``1/model.onnx``, the network at the warm-up size, for
Triton's ONNX Runtime backend or TensorRT through it) and exits.

Exit codes: 0 stopped by a signal (or the repository written), 2 a usage or configuration error,
1 Triton failed to start, stopped by itself, or failed the round-trip check.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
import os
from pathlib import Path
import shutil
import signal
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from depth_node import config as cfg
from depth_node.estimator.engines.triton_engine import EXTRA_OUTPUTS, FOCAL, IMAGE
from depth_node.problems import Problem, Reporter

PROG = 'depth_node-serve'
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
OUTPUT_DTYPES = {'float32': np.float32, 'float16': np.float16}
"""``--output-dtype``: what the depth output is sent as (float16 halves the bytes back; its
relative rounding is 4.9e-4, 5 mm at 10 m)."""


class ServeError(Exception):
    """Something ``depth_node-serve`` cannot work with; the message says what to do. ``code``
    is the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ServeOptions:
    """What the command line asks for (see :func:`build_parser`)."""

    params_file: Optional[str] = None
    params: list[str] = field(default_factory=list)
    model_name: str = 'depth'
    host: str = '0.0.0.0'
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 4
    queue_delay_ms: float = 2.0
    output_dtype: str = 'float32'
    triton_log: Optional[str] = None
    write_repository: Optional[Path] = None


def log(text: str) -> None:
    print(f'[{PROG}] {text}', file=sys.stderr, flush=True)


def server_config(options: ServeOptions) -> cfg.NodeConfig:
    """The model's parameters (the node's defaults, ``--params-file``, ``-p``), validated as
    the node validates them; ``input.cameras`` and the other robot-side parameters may be set
    (the same file can serve the robots) and mean nothing here.

    Raises
    ------
    ServeError
        Unknown or invalid parameters, ``model.engine: triton`` or ``input.mode`` not image.
    """
    from depth_node.bag.common import BagError
    from depth_node.bag.params import node_config

    try:
        config = node_config(options.params_file, options.params, prog=PROG, one_camera=False)
    except BagError as exc:
        raise ServeError(str(exc)) from exc
    if config['model.engine'] == 'triton':
        raise ServeError("model.engine is 'triton' in the server's parameters: the server runs "
                         'the network itself; give it -p model.engine:=auto (or torch, '
                         'onnxruntime, openvino, tensorrt)')
    return config


def warm_batches(max_batch: int) -> tuple[int, ...]:
    """The batch sizes warmed up: powers of two up to ``max_batch``, and ``max_batch`` (a
    batch runs padded to the smallest of them that holds it)."""
    sizes, size = {int(max_batch)}, 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def prepare_stub_environment(environ: Optional[dict] = None) -> str:
    """Make PyTriton's Python backend stub run this interpreter's release: its own
    ``libpython`` first on ``LD_LIBRARY_PATH`` (the stub inherits the environment). Returns a
    line for the log.

    Raises
    ------
    ServeError
        numpy 2 here: the stub (built against numpy 1.x) would return empty tensors.
    """
    environ = os.environ if environ is None else environ
    if int(np.__version__.split('.')[0]) >= 2:
        raise ServeError(
            f"numpy {np.__version__} here: nvidia-pytriton's Python backend stub reads numpy 1.x "
            "arrays (with numpy 2 it answers with empty tensors); run depth_node-serve in an "
            "environment where pip install 'depth_node[triton]' installed numpy<2 (README "
            '"Serving a fleet from Triton")')
    libdir = sysconfig.get_config_var('LIBDIR') or ''
    version = f'{sys.version_info.major}.{sys.version_info.minor}'
    shared = bool(sysconfig.get_config_var('Py_ENABLE_SHARED'))
    if shared and libdir and Path(libdir, f'libpython{version}.so.1.0').is_file():
        paths = [p for p in environ.get('LD_LIBRARY_PATH', '').split(':') if p and p != libdir]
        environ['LD_LIBRARY_PATH'] = ':'.join([libdir, *paths])
        return f'Python backend stub: libpython{version} from {libdir} (this interpreter\'s)'
    return (f'Python backend stub: this Python {sys.version.split()[0]} has no shared '
            f'libpython{version}; the stub loads the system one, which must be the same release '
            "(else the model fails to load: use the system's python3, or a Python built with "
            '--enable-shared)')


class DepthModel:
    """The served model: its tensors and the inference callable Triton calls with a batch.

    ``estimator`` is a loaded :class:`~depth_node.estimator.DepthEstimator`; ``probe`` one of
    its predictions (tells whether the model has ``sky`` / ``confidence`` outputs).
    """

    def __init__(self, estimator: Any, probe: Any, output_dtype: str,
                 reporter: Reporter) -> None:
        if estimator.takes_prompt:
            raise ServeError(f'{estimator.model_name} takes a depth prompt with each frame '
                             '(Prompt Depth Anything): it is not served; run it on the robot')
        self.estimator = estimator
        self.kind = estimator.output_kind
        self.dtype = OUTPUT_DTYPES[output_dtype]
        self.extras = tuple(e for e in EXTRA_OUTPUTS if getattr(probe, e) is not None)
        self.reporter = reporter

    def tensors(self) -> tuple[list, list]:
        """PyTriton's input and output specs (the batch axis is Triton's own)."""
        from pytriton.model_config import Tensor

        inputs = [Tensor(name=IMAGE, dtype=np.uint8, shape=(-1, -1, 3))]
        if self.estimator.needs_focal:
            inputs.append(Tensor(name=FOCAL, dtype=np.float32, shape=(2,)))
        outputs = [Tensor(name=self.kind, dtype=self.dtype, shape=(-1, -1))]
        types = {'sky': np.bool_, 'confidence': np.float32}
        outputs += [Tensor(name=e, dtype=types[e], shape=(-1, -1)) for e in self.extras]
        return inputs, outputs

    def predict(self, image: np.ndarray, focal: Optional[np.ndarray] = None,
                ) -> dict[str, np.ndarray]:
        """``(B, H, W, 3)`` uint8 (and ``(B, 2)`` focal lengths) -> the outputs by name."""
        focals = None if focal is None else [tuple(map(float, f)) for f in focal]
        try:
            prediction = self.estimator.predict_batch(list(image), focals=focals)
        except Exception as exc:
            self.reporter.report(Problem('forward_failed', f'{type(exc).__name__}: {exc}'))
            raise
        self.reporter.forward_ok()
        if prediction.non_finite:
            self.reporter.report(Problem('non_finite', n=prediction.non_finite))
        out = {self.kind: np.asarray(prediction.depth).astype(self.dtype, copy=False)}
        for extra in self.extras:
            out[extra] = np.asarray(getattr(prediction, extra))
        return out

    def infer_function(self) -> Callable[..., dict[str, np.ndarray]]:
        """The callable bound to Triton: one batch of requests of one image size."""
        from pytriton.decorators import batch

        @batch
        def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            return self.predict(inputs[IMAGE], inputs.get(FOCAL))
        return infer


def ramp_frame(height: int, width: int) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 left-to-right ramp (the warm-up frame)."""
    ramp = np.linspace(0, 255, num=int(width), dtype=np.float32)
    return np.ascontiguousarray(np.broadcast_to(ramp[None, :, None],
                                                (int(height), int(width), 3)).astype(np.uint8))


def round_trip_check(model: DepthModel, address: str, model_name: str,
                     frame: np.ndarray) -> float:
    """One frame through Triton (gRPC at ``address``) against the same frame run here: the
    depth must match (exactly in float32, within float16 rounding otherwise). Seconds taken.

    Raises
    ------
    ServeError
        A different answer (the Python backend's environment is broken) or none.
    """
    import tritonclient.grpc as grpcclient

    focal = np.array([[frame.shape[1], frame.shape[1]]], np.float32)
    want = model.predict(frame[None], focal if model.estimator.needs_focal else None)[model.kind]
    start = time.perf_counter()
    client = grpcclient.InferenceServerClient(address)
    try:
        inputs = [grpcclient.InferInput(IMAGE, [1, *frame.shape], 'UINT8')]
        inputs[0].set_data_from_numpy(frame[None])
        if model.estimator.needs_focal:
            inputs.append(grpcclient.InferInput(FOCAL, [1, 2], 'FP32'))
            inputs[1].set_data_from_numpy(focal)
        got = client.infer(model_name, inputs, client_timeout=600).as_numpy(model.kind)
    except Exception as exc:  # noqa: BLE001 - any failure of the round trip
        raise ServeError(f'a frame through Triton failed: {exc}', EXIT_FAILED) from exc
    finally:
        client.close()
    tolerance = 0.0 if model.dtype == np.float32 else 1e-3
    if got is None or got.shape != want.shape or not np.allclose(
            got.astype(np.float32), want.astype(np.float32), rtol=tolerance, atol=0,
            equal_nan=True):
        raise ServeError(
            f'a frame through Triton came back as {None if got is None else got.shape} '
            f'{None if got is None else got.dtype}, not the {want.shape} {want.dtype} the model '
            "gives here: PyTriton's Python backend stub runs in a broken environment (numpy 2, "
            'or another Python release)', EXIT_FAILED)
    return time.perf_counter() - start


def serve(options: ServeOptions, stop: Optional[threading.Event] = None,
          on_ready: Optional[Callable[[str], None]] = None) -> int:
    """Load the model, start Triton, serve until ``stop`` is set (SIGINT / SIGTERM set it);
    the exit code.

    Raises
    ------
    ServeError
        Before Triton serves: parameters, the model, the Python backend's environment.
    """
    from depth_node.model import load_estimator

    config = server_config(options)
    if options.max_batch < 1 or options.queue_delay_ms < 0:
        raise ServeError('--max-batch must be >= 1 and --queue-delay-ms >= 0')
    if options.output_dtype not in OUTPUT_DTYPES:
        raise ServeError(f'--output-dtype must be one of {", ".join(OUTPUT_DTYPES)}')
    if options.write_repository is not None:
        write_repository(config, options.write_repository, options.model_name)
        return EXIT_OK
    log(prepare_stub_environment())
    stop = stop or threading.Event()
    reporter = Reporter(lambda severity, line: log(f'{severity.upper()}: {line}'))
    try:
        loaded = load_estimator(config, batches=warm_batches(options.max_batch),
                                on_note=lambda _level, text: log(text))
    except cfg.ConfigError as exc:
        raise ServeError(f'configuration error: {exc}') from exc
    estimator = loaded.estimator
    try:
        width, height = config['model.warmup_size']
        frame = ramp_frame(height, width)
        focal = (float(width), float(width)) if estimator.needs_focal else None
        probe = estimator.predict(frame, focal=focal) if focal else estimator.predict(frame)
        model = DepthModel(estimator, probe, options.output_dtype, reporter)
        return _run_triton(options, model, frame, stop, on_ready)
    finally:
        estimator.close()


def _run_triton(options: ServeOptions, model: DepthModel, frame: np.ndarray,
                stop: threading.Event, on_ready: Optional[Callable[[str], None]]) -> int:
    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig

    triton_log = options.triton_log or str(
        Path(tempfile.gettempdir()) / f'{PROG}-{options.grpc_port}-triton.log')
    config = TritonConfig(http_address=options.host, http_port=options.http_port,
                          grpc_address=options.host, grpc_port=options.grpc_port,
                          metrics_address=options.host, metrics_port=options.metrics_port,
                          log_file=Path(triton_log), exit_timeout_secs=10)
    batcher = DynamicBatcher(max_queue_delay_microseconds=int(options.queue_delay_ms * 1000))
    inputs, outputs = model.tensors()
    local = '127.0.0.1' if options.host in ('0.0.0.0', '', '::') else options.host
    try:
        triton = Triton(config=config)
    except Exception as exc:  # noqa: BLE001 - PyTriton's own validation errors
        raise ServeError(f'Triton configuration refused: {exc}') from exc
    with triton:
        triton.bind(model_name=options.model_name, infer_func=model.infer_function(),
                    inputs=inputs, outputs=outputs, strict=True,
                    config=ModelConfig(batching=True, max_batch_size=options.max_batch,
                                       batcher=batcher))
        try:
            triton.run()
        except Exception as exc:  # noqa: BLE001 - ports taken, the stub failing to load
            raise ServeError(f'Triton did not start: {type(exc).__name__}: {exc} (its log: '
                             f'{triton_log})', EXIT_FAILED) from exc
        check_s = round_trip_check(model, f'{local}:{options.grpc_port}', options.model_name,
                                   frame)
        est = model.estimator
        line = (f"{PROG} ready: model '{options.model_name}' ({est.model_name}, "
                f"{model.kind.replace('_', ' ')}, engine {est.engine.describe()}) on "
                f'grpc://{options.host}:{options.grpc_port} and '
                f'http://{options.host}:{options.http_port}; metrics '
                f'http://{options.host}:{options.metrics_port}/metrics; max batch '
                f'{options.max_batch}, queue delay {options.queue_delay_ms:g} ms, depth as '
                f'{options.output_dtype}; round trip checked in {check_s * 1e3:.0f} ms; '
                f'Triton log {triton_log}')
        print(line, flush=True)
        if on_ready is not None:
            on_ready(line)
        while not stop.wait(0.5):
            if not triton.is_alive():
                log(f'Triton stopped by itself; see {triton_log}')
                return EXIT_FAILED
        log('stopping: Triton finishes the requests in flight')
    return EXIT_OK


# ------------------------------------------------------------------ model repository
def write_repository(config: cfg.NodeConfig, folder: Path, model_name: str) -> Path:
    """Write ``folder/<model_name>/config.pbtxt`` and ``1/model.onnx``: the network at the
    warm-up size's input, batch 1, for a standalone Triton server's ONNX Runtime backend
    (TensorRT through its accelerator setting). The client then preprocesses itself (the
    recipe is in the config's ``parameters``). Returns the model's folder.

    Raises
    ------
    ServeError
        A plain ONNX model (copy it with its card's names instead) or an export failure.
    """
    from depth_node.estimator import DepthEstimator, EstimatorError
    from depth_node.estimator.export import INPUT_NAME, OUTPUT_NAMES, OnnxExporter
    from depth_node.estimator.loading import load_checkpoint
    from depth_node.estimator.model_card import is_onnx_model

    name, random_init = config['model.name'], config['model.random_init'] or None
    if not random_init and is_onnx_model(name):
        raise ServeError(f'{name} is an ONNX file already: put it in <repository>/'
                         f'{model_name}/1/model.onnx with a config.pbtxt naming its card\'s '
                         'input and outputs')
    width, height = config['model.warmup_size']
    try:
        est = DepthEstimator(name, device='cpu', precision='fp32', random_init=random_init,
                             engine='torch', input_size=config['model.input_size'],
                             verify=False)
        in_h, in_w = est.input_size(height, width)
        recipe, kind = est.recipe, est.output_kind
        est.close()
        checkpoint = load_checkpoint(name, random_init)
        exporter = OnnxExporter(checkpoint, config['model.cache_dir'])
        entry, _ = exporter.entry((1, 3, in_h, in_w))
    except EstimatorError as exc:
        raise ServeError(f'the model does not export: {exc}', EXIT_FAILED) from exc
    target = Path(folder) / model_name
    (target / '1').mkdir(parents=True, exist_ok=True)
    shutil.copyfile(entry.onnx, target / '1' / 'model.onnx')
    params = {'output_kind': kind, 'image_size': f'{width}x{height}',
              'image_mean': ','.join(f'{v:g}' for v in recipe.image_mean),
              'image_std': ','.join(f'{v:g}' for v in recipe.image_std),
              'resize': f'{in_w}x{in_h} ({recipe.upsample} back to the image)',
              'source': f'{PROG} --write-repository ({random_init or name})'}
    text = textwrap.dedent(f'''\
        # Written by {PROG} --write-repository: the network alone, at its input for
        # {width}x{height} images. The client preprocesses (resize to {in_w}x{in_h}, rescale 1/255,
        # normalise with image_mean / image_std) and resizes the output back itself.
        name: "{model_name}"
        platform: "onnxruntime_onnx"
        max_batch_size: 0
        input [
          {{ name: "{INPUT_NAME}", data_type: TYPE_FP32, dims: [ 1, 3, {in_h}, {in_w} ] }}
        ]
        output [
          {{ name: "{OUTPUT_NAMES[0]}", data_type: TYPE_FP32, dims: [ 1, {in_h}, {in_w} ] }}
        ]
        instance_group [ {{ kind: KIND_AUTO, count: 1 }} ]
        # TensorRT through ONNX Runtime on a GPU server (fp16: precision_mode FP16):
        # optimization {{ execution_accelerators {{ gpu_execution_accelerator: [
        #   {{ name: "tensorrt" parameters {{ key: "precision_mode" value: "FP32" }} }} ] }} }}
        ''')
    text += ''.join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
                    for k, v in params.items())
    (target / 'config.pbtxt').write_text(text)
    log(f'model repository written: {target} (config.pbtxt, 1/model.onnx; input '
        f'{INPUT_NAME} 1x3x{in_h}x{in_w})')
    return target


# ------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    from depth_node.bag.params import add_parameter_arguments
    from depth_node.cli import parameter_summary

    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Serve the depth model the node's model.* parameters name to many nodes through "
            'Triton Inference Server (nodes: model.engine triton, model.triton_url).', 99),
        epilog='Parameters are the node\'s (name, type, restart/runtime, default); only the '
               f'model.* ones matter here:\n{parameter_summary()}\n\nExit codes: 0 stopped by '
               'SIGINT / SIGTERM (or the repository written), 1 Triton failed or stopped, 2 '
               'usage or configuration error.')
    add_parameter_arguments(parser)
    parser.add_argument('--model-name', default='depth',
                        help="the model's name on the server (model.triton_model of the nodes; "
                             'default depth)')
    parser.add_argument('--host', default='0.0.0.0',
                        help='address the endpoints listen on (default 0.0.0.0: every '
                             'interface; 127.0.0.1 for this machine only)')
    parser.add_argument('--http-port', type=int, default=8000, help='default 8000')
    parser.add_argument('--grpc-port', type=int, default=8001, help='default 8001')
    parser.add_argument('--metrics-port', type=int, default=8002,
                        help='Prometheus metrics (default 8002)')
    parser.add_argument('--max-batch', type=int, default=4,
                        help='most frames in one forward pass (default 4)')
    parser.add_argument('--queue-delay-ms', type=float, default=2.0,
                        help='how long a request may wait for others to batch with '
                             '(default 2 ms)')
    parser.add_argument('--output-dtype', choices=sorted(OUTPUT_DTYPES), default='float32',
                        help='depth sent back as float32 (default, exact) or float16 (half '
                             'the bytes, 4.9e-4 relative rounding)')
    parser.add_argument('--triton-log', metavar='FILE',
                        help="Triton's own log (default: <tmp>/depth_node-serve-<grpc "
                             'port>-triton.log)')
    parser.add_argument('--write-repository', type=Path, metavar='DIR',
                        help='write a model repository for a standalone Triton server (ONNX '
                             'Runtime / TensorRT backend) into DIR and exit')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> ServeOptions:
    """The :class:`ServeOptions` of a command line (``-h`` exits 0, a bad one 2)."""
    return ServeOptions(**vars(build_parser().parse_args(argv)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``depth_node-serve`` (see the module docstring for the exit codes)."""
    try:
        options = parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    stop = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: stop now
        stop.set()

    saved = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return serve(options, stop)
    except ServeError as exc:
        print(f'[{PROG}] {exc}', file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f'[{PROG}] interrupted', file=sys.stderr)
        return EXIT_OK
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


if __name__ == '__main__':
    sys.exit(main())
