"""config/depth.yaml, the launch file and the parameter table agree; bad values are refused."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from depth_node import config as cfg

ROOT = Path(__file__).resolve().parents[1]


def _yaml_params() -> dict:
    data = yaml.safe_load((ROOT / 'config' / 'depth.yaml').read_text())
    return data['/**']['ros__parameters']


def test_yaml_lists_every_parameter_with_its_default():
    params = _yaml_params()
    # ROS cannot type an empty list from YAML, so a list that is unset by default is shown
    # commented out
    unset = {p.name for p in cfg.PARAMS if p.default == []}
    assert set(params) == {p.name for p in cfg.PARAMS} - unset
    text = (ROOT / 'config' / 'depth.yaml').read_text()
    for name in unset:
        assert f'    # {name}: [' in text, name
    for spec in cfg.PARAMS:
        if spec.name in unset:
            continue
        assert params[spec.name] == spec.default, spec.name
        assert type(params[spec.name]) is type(spec.default), spec.name


def test_yaml_documents_every_parameter():
    text = (ROOT / 'config' / 'depth.yaml').read_text().splitlines()
    for i, line in enumerate(text):
        if line.strip() and not line.strip().startswith('#') and ':' in line and \
                line.startswith('    ') and not line.startswith('     '):
            assert text[i - 1].strip().startswith('#'), f'undocumented: {line.strip()}'


def test_readme_documents_every_parameter_and_topic():
    readme = (ROOT / 'README.md').read_text()
    for spec in cfg.PARAMS:
        assert f'`{spec.name}`' in readme, f'README lacks parameter {spec.name}'
    from depth_node.frame_pipeline import INPUT_TOPICS
    from depth_node.outputs import OUTPUTS

    for topic in (*INPUT_TOPICS.values(), 'camera_info', 'lidar/points'):
        assert f'`{topic}`' in readme, f'README lacks topic {topic}'
    for out in OUTPUTS:  # the published topics' table: a row per output, with its type
        row = f'| `{out.topic}` | {out.msg_type.replace("/msg/", "/")} |'
        assert row in readme, f'README\'s published topics lack the row {row}'


def test_launch_arguments_map_to_declared_parameters():
    from depth_node.launch_args import ARGUMENTS, PARAMETER_ARGUMENTS

    for arg, param in PARAMETER_ARGUMENTS.items():
        assert arg in ARGUMENTS
        assert param in cfg.PARAMS_BY_NAME, f'launch sets unknown parameter {param}'
        # '' = not given: the parameter file decides (test_launch_args.py)
        assert ARGUMENTS[arg][0] == '', arg
    for required in ('params_file', 'model', 'device', 'namespace', 'image', 'camera_info'):
        assert required in ARGUMENTS


def test_launch_file_parses_and_points_at_shipped_files():
    source = (ROOT / 'launch' / 'depth.launch.py').read_text()
    compile(source, 'depth.launch.py', 'exec')
    assert 'from depth_node.launch_args import' in source
    assert "'config', 'depth.yaml'" in source
    assert (ROOT / 'config' / 'fastdds_shm.xml').is_file()
    assert 'eval(' not in source and 'pip' not in source


@pytest.mark.launch_test
def test_launch_description_builds_where_launch_is_installed():
    if importlib.util.find_spec('launch_ros') is None:
        pytest.skip('launch_ros is not importable here (no ROS 2 install); '
                    'the ast checks above cover the tables')
    spec = importlib.util.spec_from_file_location('depth_launch',
                                                  ROOT / 'launch' / 'depth.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {a.name for a in description.get_launch_arguments()}
    assert set(module.ARGUMENTS) <= names


@pytest.mark.parametrize('name,value,fragment', [
    ('model.precision', 'fp8', 'model.precision must be one of'),
    ('cloud.stride', 0, 'cloud.stride must be >= 1'),
    ('cloud.stride', 2.5, 'must be an integer'),
    ('lidar.smoothing', 1.5, 'lidar.smoothing must be <= 0.99'),
    ('lidar.T_camera_lidar', [1.0] * 5, 'must hold 16 values, or [0.0] for tf2; got 5'),
    ('lidar.T_camera_lidar', [1.0] * 16, 'last row 0 0 0 1'),
    ('lidar.T_camera_lidar', ['a'] * 16, 'must be a list of numbers'),
    ('input.cameras', ['front', 'front'], 'names must be unique'),
    ('input.cameras', ['2nd'], 'not a valid ROS name'),
    ('input.cameras', ['a//b'], 'not a valid ROS name'),
    ('input.cameras', [1], 'must be a list of strings'),
    ('model.warmup_size', [640], 'must have 2 values'),
    ('model.warmup_size', [640, 0], 'values must be >= 1'),
    ('model.warmup_size', [640.0, 480.0], 'must be a list of integers'),
    ('input.batch_wait', -0.1, 'input.batch_wait must be >= 0'),
    ('model.device', 'gpu', "model.device must be 'auto'"),
    ('output.encoding', 'mono8', 'output.encoding must be one of'),
    ('cloud.min_confidence', 1.5, 'cloud.min_confidence must be <= 1.0'),
    ('cloud.min_confidence', -0.1, 'cloud.min_confidence must be >= 0.0'),
    ('filter.edges', 'yes', 'filter.edges must be a bool'),
    ('filter.edge_threshold', 0.0, 'filter.edge_threshold must be >= 0.005'),
    ('filter.edge_threshold', float('nan'), 'filter.edge_threshold must be finite'),
    ('confidence.discontinuity', 1, 'confidence.discontinuity must be a bool'),
    ('confidence.lidar', 'on', 'confidence.lidar must be a bool'),
    ('confidence.temporal', 0, 'confidence.temporal must be a bool'),
    ('confidence.model', None, 'confidence.model must be a bool'),
    ('temporal.enabled', 'true', 'temporal.enabled must be a bool'),
    ('temporal.smoothing', 1.0, 'temporal.smoothing must be <= 0.99'),
    ('temporal.smoothing', -0.5, 'temporal.smoothing must be >= 0.0'),
])
def test_bad_values_refused_with_reason(name, value, fragment):
    with pytest.raises(cfg.ConfigError, match=re.escape(fragment)):
        cfg.validate_values({name: value})


def test_confidence_gate_needs_a_cue():
    cues = {f'confidence.{c}': False for c in ('discontinuity', 'lidar', 'temporal', 'model')}
    with pytest.raises(cfg.ConfigError, match='every confidence.* cue is off: switch one on'):
        cfg.validate_values({'cloud.min_confidence': 0.5, **cues})
    cues['confidence.lidar'] = True
    config = cfg.validate_values({'cloud.min_confidence': 0.5, **cues})
    assert config['cloud.min_confidence'] == 0.5


def test_depth_limits_cross_checked():
    with pytest.raises(cfg.ConfigError, match='cloud.max_depth must be greater'):
        cfg.validate_values({'cloud.min_depth': 5.0, 'cloud.max_depth': 2.0})


def test_defaults_are_valid_and_ints_accepted_for_doubles():
    config = cfg.validate_values({'cloud.max_depth': 20})
    assert config['cloud.max_depth'] == 20.0 and isinstance(config['cloud.max_depth'], float)
    assert config.T_camera_lidar is None
    assert config.cameras == ['']


def test_one_extrinsic_per_camera():
    eye = [float(v) for v in np.eye(4).ravel()]
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    values = {'input.cameras': ['front', 'rear/left'],
              'lidar.T_camera_lidar': eye + [float(v) for v in shifted.ravel()]}
    config = cfg.validate_values(values)
    assert config.cameras == ['front', 'rear/left']
    assert config.T_camera_lidar_for(0) == eye
    assert config.T_camera_lidar_for(1)[3] == 0.5
    with pytest.raises(cfg.ConfigError, match=r'16 values per camera \(32 for 2 cameras\)'):
        cfg.validate_values({**values, 'lidar.T_camera_lidar': eye})
    broken = eye + eye[:12] + [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(cfg.ConfigError, match=r'\(camera rear/left\)'):
        cfg.validate_values({**values, 'lidar.T_camera_lidar': broken})


def test_lidar_without_extrinsics_needs_tf2():
    with pytest.raises(cfg.ConfigError, match=re.escape(
            'lidar.enabled is true but lidar.T_camera_lidar is unset and '
            f'{cfg.TF2_NOT_INSTALLED}: set lidar.T_camera_lidar')):
        cfg.validate_values({'lidar.enabled': True}, cfg.TF2_NOT_INSTALLED)
    assert cfg.validate_values({'lidar.enabled': True}).T_camera_lidar is None  # tf2 there
    assert not cfg.validate_values({}, cfg.TF2_NOT_INSTALLED)['lidar.enabled']


@pytest.mark.parametrize('change', [
    {'cloud.stride': 0}, {'cloud.max_depth': 0.05}, {'lidar.smoothing': 1.5},
    {'lidar.T_camera_lidar': [1.0] * 16}, {'lidar.T_camera_lidar': [1.0, 2.0]},
    {'lidar.T_camera_lidar': [0.0]},
], ids=['stride 0', 'max_depth < min_depth', 'smoothing 1.5', 'T not rigid', 'T 2 values',
        'T unset without tf2'])
def test_runtime_change_refused_as_at_startup(change):
    eye = [float(v) for v in np.eye(4).ravel()]
    startup = {'lidar.enabled': True, 'lidar.T_camera_lidar': eye, 'cloud.max_depth': 10.0}
    config = cfg.validate_values(startup, cfg.TF2_NOT_INSTALLED)
    with pytest.raises(cfg.ConfigError) as at_startup:
        cfg.validate_values({**startup, **change}, cfg.TF2_NOT_INSTALLED)
    with pytest.raises(cfg.ConfigError) as at_run_time:
        cfg.validate_change(config, change, cfg.TF2_NOT_INSTALLED)
    assert str(at_run_time.value) == str(at_startup.value)


def test_runtime_change_applies_or_refuses_restart_parameters():
    config = cfg.validate_values({})
    changed = cfg.validate_change(config, {'cloud.stride': 4, 'cloud.max_depth': 20})
    assert changed['cloud.stride'] == 4 and changed['cloud.max_depth'] == 20.0
    assert config['cloud.stride'] == 2  # the old configuration is untouched
    with pytest.raises(cfg.ConfigError, match=r'^model\.name, input\.mode take\(s\) effect at '
                                              r'configure: clean up$'):
        cfg.validate_change(config, {'model.name': 'x', 'input.mode': 'image',
                                     'cloud.stride': 3}, restart='configure: clean up')


def test_check_each_leaves_cross_rules_to_validate():
    assert cfg.check_each({'cloud.stride': 0, 'cloud.max_depth': 0.01, 'unknown': 1}) == [
        'cloud.stride must be >= 1, got 0']


def test_nav2_parameter_file_is_valid_and_gates_the_cloud():
    """config/nav2.yaml: every name a parameter, every value valid, read as the node and the bag
    tool read a parameter file; it turns on what a costmap needs."""
    from depth_node.bag import read_params_file

    values = read_params_file(ROOT / 'config' / 'nav2.yaml')
    assert set(values) <= set(cfg.PARAMS_BY_NAME), set(values) - set(cfg.PARAMS_BY_NAME)
    config = cfg.validate_values(values)
    assert config['filter.edges'] and config['cloud.min_confidence'] > 0
    assert config['temporal.enabled'] and config['cloud.max_depth'] <= 10.0
