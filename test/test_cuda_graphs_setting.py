"""``model.cuda_graphs``: 'auto' / 'on' / 'off', the old true / false, and what auto picks."""

from __future__ import annotations

import pytest
import torch

from depth_node import config as cfg
from depth_node.estimator import DepthEstimator, EstimatorError
from depth_node.estimator.device import GRAPH_FIX_TORCH, resolve_cuda_graphs

CUDA = torch.device('cuda', 0)   # a device object needs no GPU; nothing runs on it here
CPU = torch.device('cpu')


@pytest.mark.parametrize('setting, device, version, expected', [
    ('auto', CUDA, '2.12.0+cu130', True),
    ('auto', CUDA, '2.13.0', True),
    ('auto', CUDA, '3.0.1', True),
    ('auto', CUDA, '2.11.0+cu130', False),    # pytorch#180395 unfixed there
    ('auto', CPU, '2.13.0', False),
    ('on', CUDA, '2.11.0', True),             # the user's call, with the engine's workaround
    ('on', CPU, '2.13.0', True),              # the torch engine ignores it on CPU, logged
    ('off', CUDA, '2.13.0', False),
    (True, CUDA, '2.11.0', True),
    (False, CUDA, '2.13.0', False),
    (' AUTO ', CUDA, '2.12.1', True),
])
def test_auto_is_on_for_cuda_with_the_capture_fix(setting, device, version, expected):
    graphs, why = resolve_cuda_graphs(setting, device, torch_version=version)
    assert graphs is expected
    assert why.startswith('model.cuda_graphs')


def test_auto_leaves_compile_in_its_default_mode():
    graphs, why = resolve_cuda_graphs('auto', CUDA, torch_version='2.13.0', compile=True)
    assert not graphs and 'model.compile' in why
    assert resolve_cuda_graphs('on', CUDA, torch_version='2.13.0', compile=True)[0]


def test_auto_says_why_it_stays_off_on_an_old_torch():
    graphs, why = resolve_cuda_graphs('auto', CUDA, torch_version='2.11.0')
    assert not graphs
    assert '180395' in why and '.'.join(map(str, GRAPH_FIX_TORCH)) in why and 'set on' in why


def test_an_unknown_setting_is_refused():
    with pytest.raises(EstimatorError, match='auto, on, off'):
        resolve_cuda_graphs('sometimes', CUDA)


@pytest.mark.parametrize('given, taken', [(True, 'on'), (False, 'off'), ('auto', 'auto'),
                                          ('off', 'off')])
def test_the_parameter_takes_the_old_booleans(given, taken):
    values = cfg.validate_values({'model.cuda_graphs': given}).values
    assert values['model.cuda_graphs'] == taken


def test_the_parameter_defaults_to_auto_and_refuses_other_words():
    assert cfg.PARAMS_BY_NAME['model.cuda_graphs'].default == 'auto'
    with pytest.raises(cfg.ConfigError, match='model.cuda_graphs must be one of auto, on, off'):
        cfg.validate_values({'model.cuda_graphs': 'yes'})


def test_auto_captures_nothing_on_the_cpu_and_warns_nothing(tiny_dir, caplog):
    # model.cuda_graphs left at its default, 'auto'
    est = DepthEstimator(str(tiny_dir('depth_anything')), device='cpu', precision='fp32')
    assert not est.cuda_graphs
    assert not any('cuda_graphs' in r.getMessage() for r in caplog.records)
    assert not any('cuda_graphs' in note for note in est.startup_notes)


@pytest.mark.ros
def test_the_node_reads_an_old_boolean_as_on_or_off(session, models):
    node = session.start_depth_node({'model.name': models['relative'], 'model.device': 'cpu',
                                     'model.warmup': False, 'model.cuda_graphs': False})
    try:
        assert node.core.cfg['model.cuda_graphs'] == 'off'
    finally:
        node.destroy_node()
