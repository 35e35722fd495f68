"""``depth_node-serve`` and ``model.engine: triton`` against a real Triton server (PyTriton),
started by the test on loopback ports it picked: no mock of Triton anywhere.

The server runs from the PyTriton venv ``scripts/setup.sh`` makes (``.venv-triton``: numpy 1.26
for PyTriton's Python backend stub; ``$DEPTH_NODE_TRITON_PYTHON`` names another interpreter).
Without it these tests skip, except under CI, where they fail.

Tolerance of "the same depth as the model run here": server and client run the same tiny model
in torch fp32 on this CPU and the depth crosses the wire as float32, so a frame run alone is
bit-identical; one the server batched with another client's frame differs in the last bits
(another float32 summation order: about 3e-7 of the depth's range seen here). Bound: 1e-5 of
the depth's range.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from depth_node import config as cfg
from depth_node.messages import image_msg, image_to_array, make_header
from ros_harness import status_values
from tiny_models import make_tiny_depth_anything, textured_image

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
"""Largest difference to the model run here, as a fraction of the depth's range."""


def _server_python() -> str:
    given = os.environ.get('DEPTH_NODE_TRITON_PYTHON')
    path = Path(given) if given else ROOT / '.venv-triton' / 'bin' / 'python'
    if not path.is_file():
        why = f'no PyTriton server interpreter at {path} (bash scripts/setup.sh makes it)'
        if os.environ.get('CI'):
            pytest.fail(why)
        pytest.skip(why)
    return str(path)


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on 127.0.0.1 now."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Server:
    """``depth_node-serve`` in its own process group on loopback; its output is drained by a
    thread (kept in :attr:`lines`) so that it never blocks on a full pipe."""

    def __init__(self, model: str, log_dir: Path, *args: str) -> None:
        self.model = model
        self.http, self.grpc, self.metrics = free_ports(3)
        self.args = list(args)
        self.log = log_dir / f'triton-{self.grpc}.log'
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.ready = threading.Event()

    def url(self, scheme: str = 'grpc') -> str:
        return f'{scheme}://127.0.0.1:{self.grpc if scheme == "grpc" else self.http}'

    def start(self, timeout: float = 120.0) -> Server:
        self.ready.clear()
        self.proc = subprocess.Popen(
            [_server_python(), '-m', 'depth_node.serve', '-p', f'model.name:={self.model}',
             '-p', 'model.engine:=torch', '-p', 'model.device:=cpu',
             '-p', 'model.precision:=fp32', '--host', '127.0.0.1',
             '--http-port', str(self.http), '--grpc-port', str(self.grpc),
             '--metrics-port', str(self.metrics), '--triton-log', str(self.log), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, 'PYTHONUNBUFFERED': '1'})
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail('depth_node-serve did not get ready:\n' + self.output())
        return self

    def _drain(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append(line)
            if line.startswith('depth_node-serve ready:'):
                self.ready.set()

    def output(self) -> str:
        return ''.join(self.lines)

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM; its exit code (the process group is killed after ``timeout``)."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f'depth_node-serve did not stop on SIGTERM:\n{self.output()}')

    def kill(self) -> None:
        """SIGKILL to the whole group (the Python process, tritonserver, the backend stub)."""
        try:
            self.signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def counts(self) -> tuple[int, int]:
        """``(frames, forward passes)`` the model ran so far (Triton's Prometheus metrics
        ``nv_inference_count`` and ``nv_inference_exec_count``)."""
        url = f'http://127.0.0.1:{self.metrics}/metrics'
        text = urllib.request.urlopen(url, timeout=10).read().decode()

        def value(name: str) -> int:
            match = re.search(rf'^{name}{{model="depth",version="1"}} (\d+)', text, re.M)
            assert match, f'{name} not in the metrics:\n{text[:2000]}'
            return int(match.group(1))
        return value('nv_inference_count'), value('nv_inference_exec_count')


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory) -> str:
    return str(make_tiny_depth_anything(tmp_path_factory.mktemp('triton_model')))


@pytest.fixture(scope='module')
def server(model_dir, tmp_path_factory):
    """One server for the module: batches wait up to 100 ms for each other."""
    srv = Server(model_dir, tmp_path_factory.mktemp('triton_log'), '--queue-delay-ms', '100')
    srv.start()
    yield srv
    code = srv.stop()
    assert code == 0, srv.output()
    assert 'Traceback' not in srv.output(), srv.output()


@pytest.fixture(scope='module')
def local(model_dir):
    """The same model run here, as the server runs it (torch fp32)."""
    from depth_node.estimator import DepthEstimator

    est = DepthEstimator(model_dir, device='cpu', precision='fp32', engine='torch')
    yield est
    est.close()


def _config(**values) -> cfg.NodeConfig:
    return cfg.validate_values({'model.engine': 'triton', 'model.warmup': False, **values})


def _load(**values):
    from depth_node.model import load_estimator

    return load_estimator(_config(**values)).estimator


def _close(a, b) -> bool:
    scale = float(np.nanmax(np.abs(b))) or 1.0
    return float(np.nanmax(np.abs(a - b))) <= TOLERANCE * scale


# ----------------------------------------------------------------------- the client, ROS-free
@pytest.mark.parametrize('scheme', ['grpc', 'http'])
def test_served_depth_equals_the_model_run_here(server, local, scheme):
    est = _load(**{'model.triton_url': server.url(scheme), 'model.warmup': True,
                   'model.warmup_size': [64, 48]})
    try:
        assert (est.output_kind, est.is_metric, est.needs_focal) == (
            'relative_disparity', False, False)
        image = textured_image(96, 128, 200.0, 40, seed=1)
        one = est.predict(image)
        assert one.depth.shape == (96, 128) and one.depth.dtype == np.float32
        assert _close(one.depth, local.predict(image).depth)
        batch = [image, textured_image(96, 128, 120.0, 60, seed=2)]
        both = est.predict_batch(batch)
        assert both.depth.shape == (2, 96, 128)
        want = local.predict_batch(batch).depth
        assert _close(both.depth, want)
        assert not np.allclose(both.depth[0], both.depth[1])  # two frames, not one twice
    finally:
        est.close()


def test_a_kind_other_than_the_servers_is_refused(server):
    with pytest.raises(cfg.ConfigError, match='gives relative_disparity, but model.kind says '
                                              'metric_depth'):
        _load(**{'model.triton_url': server.url(), 'model.kind': 'metric_depth'})


@pytest.mark.parametrize('scheme', ['grpc', 'http'])
def test_wrong_url_and_wrong_model_are_clear_errors_within_the_wait(server, scheme):
    dead = f'{scheme}://127.0.0.1:{free_ports(1)[0]}'
    start = time.monotonic()
    with pytest.raises(cfg.ConfigError, match=f'Triton server at {dead} not ready after 1 s'):
        _load(**{'model.triton_url': dead, 'model.triton_wait': 1.0})
    with pytest.raises(cfg.ConfigError, match="has no model 'nope' ready.*model.triton_model"):
        _load(**{'model.triton_url': server.url(scheme), 'model.triton_model': 'nope',
                 'model.triton_wait': 1.0})
    assert time.monotonic() - start < 10.0


@pytest.mark.parametrize('scheme', ['grpc', 'http'])
def test_a_server_that_accepts_but_never_answers(scheme):
    """A listening socket that never answers: startup fails within its wait, naming the URL."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(16)
    url = f'{scheme}://127.0.0.1:{listener.getsockname()[1]}'
    try:
        start = time.monotonic()
        with pytest.raises(cfg.ConfigError, match=f'{url} not ready after 1.5 s'):
            _load(**{'model.triton_url': url, 'model.triton_wait': 1.5,
                     'model.triton_timeout': 0.5})
        assert time.monotonic() - start < 8.0
    finally:
        listener.close()


def test_a_frozen_server_drops_frames_within_the_timeout_then_recovers(server):
    """The server stopped (SIGSTOP: connections are accepted, nothing answers) mid-run: each
    frame fails within model.triton_timeout or at once while backing off, one outage; after
    SIGCONT the next try after the backoff is answered."""
    from depth_node.estimator.engines.triton_engine import ServerUnavailable

    est = _load(**{'model.triton_url': server.url(), 'model.triton_timeout': 1.0})
    image = textured_image(48, 64, 200.0, 40, seed=3)
    try:
        est.predict(image)
        server.signal(signal.SIGSTOP)
        try:
            outages = set()
            for _ in range(4):
                start = time.monotonic()
                with pytest.raises(ServerUnavailable) as caught:
                    est.predict(image)
                assert time.monotonic() - start < 3.0, 'a frame waited past its timeout'
                outages.add(caught.value.outage)
                assert server.url() in str(caught.value)
                time.sleep(0.3)
            assert outages == {1}
        finally:
            server.signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert est.predict(image).depth.shape == (48, 64)
                break
            except ServerUnavailable:
                assert time.monotonic() < deadline, 'never answered again after SIGCONT'
                time.sleep(0.2)
        assert est.outages == 1
    finally:
        est.close()


def test_triton_url_is_checked_with_the_other_parameters():
    for bad in ('localhost:8001', 'grpcs://h:1', 'grpc://h', 'http://h:0', 'http://h:8000/v2',
                'grpc://:8001'):
        with pytest.raises(cfg.ConfigError, match='model.triton_url must be'):
            cfg.validate_values({'model.triton_url': bad})
    assert cfg.split_triton_url('http://[::1]:8000') == ('http', '[::1]:8000')
    assert cfg.split_triton_url(' grpc://gpu-server:8001 ') == ('grpc', 'gpu-server:8001')


# ------------------------------------------------------------------------ depth_node-serve
def test_serve_refuses_bad_parameters_with_exit_2(capsys):
    from depth_node import serve

    assert serve.main(['-p', 'model.engine:=triton']) == 2
    assert "model.engine is 'triton' in the server's parameters" in capsys.readouterr().err
    assert serve.main(['-p', 'model.enigne:=torch']) == 2
    err = capsys.readouterr().err
    assert 'did you mean model.engine' in err and 'depth_node-serve --help' in err


def test_serve_warms_every_power_of_two_up_to_the_largest_batch():
    from depth_node.serve import warm_batches

    assert warm_batches(1) == (1,)
    assert warm_batches(6) == (1, 2, 4, 6)
    assert warm_batches(8) == (1, 2, 4, 8)


def test_written_repository_is_a_valid_model_config_and_its_onnx_runs(model_dir, tmp_path,
                                                                      local):
    """config.pbtxt parses as Triton's ModelConfig and names the ONNX file's own input and
    output with their shapes; the ONNX file gives the model's raw prediction. (A standalone
    Triton server with the ONNX Runtime backend is not available here to load it.)"""
    onnxruntime = pytest.importorskip('onnxruntime')
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from depth_node.serve import main

    assert main(['-p', f'model.name:={model_dir}', '-p', 'model.warmup_size:=[128, 96]',
                 '--model-name', 'tiny', '--write-repository', str(tmp_path)]) == 0
    config = text_format.Parse((tmp_path / 'tiny' / 'config.pbtxt').read_text(),
                               model_config_pb2.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == (
        'tiny', 'onnxruntime_onnx', 0)
    session = onnxruntime.InferenceSession(str(tmp_path / 'tiny' / '1' / 'model.onnx'),
                                           providers=['CPUExecutionProvider'])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (config.input[0].name, list(config.input[0].dims)) == (inp.name, inp.shape)
    assert (config.output[0].name, list(config.output[0].dims)) == (out.name, out.shape)
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params['output_kind'] == 'relative_disparity'
    x = local.preprocess([textured_image(96, 128, 200.0, 40, seed=4)]).numpy()
    assert list(x.shape) == inp.shape
    got = session.run(None, {inp.name: x})[0]
    want = local.engine.run(local.preprocess([textured_image(96, 128, 200.0, 40, seed=4)]))[0]
    assert np.allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- nodes over ROS
def _node(session, namespace: str, **params):
    from rclpy.parameter import Parameter

    from depth_node.node import DepthNode

    overrides = [Parameter(k, value=v) for k, v in {'model.warmup': False, **params}.items()]
    node = session.add(DepthNode(context=session.context, namespace=namespace,
                                 parameter_overrides=overrides))
    probe = session.probe(namespace=namespace)
    assert probe.wait_subscribers('image', timeout=30.0)
    return node, probe


def _publish(probe, image: np.ndarray, sec: int):
    probe.publish('image', image_msg(image, 'rgb8', make_header('cam_optical', sec, 0)))
    return (sec, 0)


@pytest.mark.ros
def test_nodes_share_one_server_and_publish_the_depth_of_a_local_engine(server, model_dir,
                                                                        session):
    """Two nodes with model.engine triton and one with the model run here get the same frame:
    the served nodes publish the local node's depth/relative (within TOLERANCE), and the
    server ran their requests in batches of more than one (its metrics)."""
    client = {'model.engine': 'triton', 'model.triton_url': server.url()}
    served = [_node(session, f'/served{i}', **client) for i in range(2)]
    here = _node(session, '/here', **{'model.name': model_dir, 'model.engine': 'torch',
                                      'model.device': 'cpu', 'model.precision': 'fp32'})
    frames_before, passes_before = server.counts()
    for sec in (1, 2, 3):
        image = textured_image(120, 160, 60.0 * sec, 40, seed=sec)
        stamp = None
        for _, probe in [*served, here]:
            stamp = _publish(probe, image, sec)
        want = here[1].wait_stamp('depth/relative', stamp, timeout=60.0)
        assert want is not None, 'the local node published nothing'
        for node, probe in served:
            got = probe.wait_stamp('depth/relative', stamp, timeout=60.0)
            assert got is not None, f'{node.get_namespace()} published nothing: ' \
                                    f'{node.counters}'
            assert _close(image_to_array(got), image_to_array(want))
    frames, passes = server.counts()
    assert frames - frames_before == 6
    assert passes - passes_before < 6, 'the server never batched the two nodes\' frames'


@pytest.mark.ros
def test_node_recovers_after_the_server_is_killed_and_restarted(server, session):
    """The server killed (SIGKILL to its process group) mid-run: frames are dropped and counted
    (frames_server_down), the executor keeps serving (/diagnostics goes on), the node neither
    crashes nor blocks; restarted on the same ports, its depth comes back. (The module's
    server: this test comes last.)"""
    node, probe = _node(session, '/restart', **{
        'model.engine': 'triton', 'model.triton_url': server.url(),
        'model.triton_timeout': 2.0, 'diagnostics.period': 0.2})
    image = textured_image(48, 64, 200.0, 40, seed=5)
    assert probe.wait_stamp('depth/relative', _publish(probe, image, 1), 30.0) is not None
    server.kill()
    sec = 2
    deadline = time.monotonic() + 30
    while node.counters.get('frames_server_down', 0) < 3:
        assert time.monotonic() < deadline, f'drops not counted: {node.counters}'
        _publish(probe, image, sec)
        sec += 1
        time.sleep(0.2)
    probe.clear()
    assert probe.wait_for('/diagnostics', lambda m: 'frames_server_down' in status_values(
        m.status[0]), timeout=10.0) is not None, 'the executor stopped'
    server.start()
    deadline = time.monotonic() + 60
    while True:
        stamp = _publish(probe, image, sec)
        if probe.wait_stamp('depth/relative', stamp, timeout=1.0) is not None:
            break
        assert time.monotonic() < deadline, f'never published again: {node.counters}'
        sec += 1
    counters = node.counters
    assert counters.get('forward_failures', 0) == 0, counters
    assert counters['frames_server_down'] >= 3


if __name__ == '__main__':  # pragma: no cover
    sys.exit(pytest.main([__file__, '-q']))
