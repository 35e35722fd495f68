"""An unreachable Hugging Face hub is detected in a few seconds and said once (depth_node.hub),
instead of transformers' 30 s of retries."""

from __future__ import annotations

import http.server
import os
from pathlib import Path
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from depth_node.hub import is_local_model, prepare_hub_access, probe_hub


def _closed_port() -> int:
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def http_server():
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(('127.0.0.1', 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_port}'
    server.shutdown()


def test_reachable_hub(http_server):
    assert probe_hub(http_server, timeout=3.0) is None


def test_refused_connection_is_reported_at_once():
    t0 = time.monotonic()
    reason = probe_hub(f'http://127.0.0.1:{_closed_port()}', timeout=3.0)
    assert reason is not None and 'refused' in reason.lower()
    assert time.monotonic() - t0 < 3.0


def test_silent_hub_gives_up_after_the_timeout():
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(1)  # accepts the connection in the kernel, never answers
    try:
        t0 = time.monotonic()
        reason = probe_hub(f'http://127.0.0.1:{listener.getsockname()[1]}', timeout=1.0)
        elapsed = time.monotonic() - t0
    finally:
        listener.close()
    assert reason is not None
    assert 0.9 < elapsed < 2.0


def test_prepare_sets_offline_only_for_an_unreachable_hub(monkeypatch, http_server, tmp_path):
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.delenv('TRANSFORMERS_OFFLINE', raising=False)
    monkeypatch.setenv('HF_ENDPOINT', http_server)
    assert prepare_hub_access('org/model', is_local=False) is None
    assert 'HF_HUB_OFFLINE' not in os.environ

    monkeypatch.setenv('HF_ENDPOINT', f'http://127.0.0.1:{_closed_port()}')
    assert prepare_hub_access(str(tmp_path), is_local=True) is None  # a directory: no probe
    note = prepare_hub_access('org/model', is_local=False)
    assert note is not None and 'cannot be reached' in note and "'org/model'" in note
    assert os.environ['HF_HUB_OFFLINE'] == '1'
    # asked for offline already: not probed again, nothing to say
    assert prepare_hub_access('org/model', is_local=False) is None


def test_local_model_rule(tmp_path):
    assert is_local_model(str(tmp_path))
    assert is_local_model('/no/such/dir')
    assert not is_local_model('depth-anything/Depth-Anything-V2-Small-hf')
    assert not is_local_model('Intel/dpt-large')


@pytest.mark.ros
@pytest.mark.slow
def test_node_with_hub_model_offline_fails_fast_and_says_so_once(tmp_path):
    exe = shutil.which('depth_node', path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, '-m', 'depth_node.node']
    env = {k: v for k, v in os.environ.items()
           if k not in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')}
    env.update(HF_ENDPOINT=f'http://127.0.0.1:{_closed_port()}', HF_HOME=str(tmp_path / 'hf'),
               PYTHONUNBUFFERED='1')
    proc = subprocess.run(cmd + ['--ros-args', '-p', 'model.device:=cpu', '-r', '__ns:=/hub'],
                          env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert out.count('cannot be reached') == 1, out
    assert 'Retry' not in out, out  # no hub retries
    assert 'hf download depth-anything/Depth-Anything-V2-Small-hf' in out  # what to do
