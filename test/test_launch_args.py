"""launch/depth.launch.py: the parameter file wins unless an argument is given.

The argument logic (depth_node/launch_args.py) is tested directly; the launch file's glue is run
against stand-ins for ``launch`` / ``launch_ros`` (not installable from PyPI; on a ROS machine
test_launch_testing.py starts the real thing); and the node itself is started as a process with
the parameters in the order launch_ros passes them (``--params-file`` per entry, a dict
written to a temporary YAML file).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest
import yaml

from depth_node.launch_args import (ARGUMENTS, LIFECYCLE_EXECUTABLE, NODE_EXECUTABLE,
                                    PARAMETER_ARGUMENTS, LaunchArgumentError, as_bool,
                                    node_plan, parameter_overrides, remappings)
from tiny_models import make_tiny_depth_anything

ROOT = Path(__file__).resolve().parents[1]


def _defaults(**given: str) -> dict[str, str]:
    """Launch argument values as launch resolves them: each one not given has its default."""
    values = {name: default for name, (default, _) in ARGUMENTS.items()}
    values.update(given)
    return values


def test_parameter_arguments_not_given_override_nothing():
    assert parameter_overrides(_defaults()) == {}
    assert all(ARGUMENTS[arg][0] == '' for arg in PARAMETER_ARGUMENTS)


def test_only_given_arguments_override():
    assert parameter_overrides(_defaults(model='/models/x')) == {'model.name': '/models/x'}
    assert parameter_overrides(_defaults(device='cuda:1', precision=' fp16 ')) == {
        'model.device': 'cuda:1', 'model.precision': 'fp16'}
    assert parameter_overrides(_defaults(model='  ')) == {}


def test_plan_loads_the_params_file_first_and_overrides_after():
    plan = node_plan(_defaults(), '/cfg/my.yaml')
    assert plan.parameters == ['/cfg/my.yaml']
    assert (plan.executable, plan.arguments) == (NODE_EXECUTABLE, [])
    plan = node_plan(_defaults(model='/models/x'), '/cfg/my.yaml')
    assert plan.parameters == ['/cfg/my.yaml', {'model.name': '/models/x'}]


def test_lifecycle_and_autostart():
    plan = node_plan(_defaults(lifecycle='true'), 'p.yaml')
    assert (plan.executable, plan.arguments) == (LIFECYCLE_EXECUTABLE, [])
    plan = node_plan(_defaults(lifecycle='True', autostart='1'), 'p.yaml')
    assert (plan.executable, plan.arguments) == (LIFECYCLE_EXECUTABLE, ['--autostart'])
    # a parent launch file (Nav2 bringup) may pass autostart down: the plain node ignores it
    plan = node_plan(_defaults(autostart='true'), 'p.yaml')
    assert (plan.executable, plan.arguments) == (NODE_EXECUTABLE, [])
    with pytest.raises(LaunchArgumentError, match='lifecycle:=.yes.: pass true or false'):
        node_plan(_defaults(lifecycle='yes'), 'p.yaml')
    assert as_bool('x', 'FALSE') is False and as_bool('x', '0') is False


def test_remappings_follow_the_image_argument():
    assert remappings(_defaults(image='/cam/raw', camera_info='/cam/info')) == [
        ('image', '/cam/raw'), ('image/compressed', '/cam/raw/compressed'),
        ('camera_info', '/cam/info'), ('lidar/points', 'lidar/points')]


# ------------------------------------------------------------ the launch file's own glue
def _fake_launch_modules(monkeypatch, share: Path) -> None:
    """Minimal stand-ins for the parts of launch / launch_ros the launch file uses."""
    class Recorder:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context.launch_configurations[self.name]

    class ParameterValue:
        def __init__(self, value, value_type=None):
            self.value, self.value_type = value, value_type

    modules = {
        'launch': {'LaunchDescription': lambda entities: list(entities)},
        'launch.actions': {'DeclareLaunchArgument': Recorder, 'OpaqueFunction': Recorder,
                           'SetEnvironmentVariable': Recorder},
        'launch.conditions': {'IfCondition': Recorder},
        'launch.substitutions': {'LaunchConfiguration': LaunchConfiguration},
        'launch_ros': {},
        'launch_ros.actions': {'Node': Recorder},
        'launch_ros.parameter_descriptions': {'ParameterValue': ParameterValue},
        'ament_index_python': {},
        'ament_index_python.packages': {'get_package_share_directory': lambda pkg: str(share)},
    }
    for name, attrs in modules.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))


def _run_launch_file(monkeypatch, **given: str):
    _fake_launch_modules(monkeypatch, Path('/opt/share/depth_node'))
    spec = importlib.util.spec_from_file_location('depth_launch_glue',
                                                  ROOT / 'launch' / 'depth.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entities = module.generate_launch_description()
    declared = {e.kwargs.get('default_value'): e for e in entities if 'default_value' in e.kwargs}
    names = [e.args[0] for e in entities if e.args and 'default_value' in e.kwargs]
    assert names == list(ARGUMENTS) and declared
    opaque = [e for e in entities if 'function' in e.kwargs]
    assert len(opaque) == 1
    context = types.SimpleNamespace(launch_configurations=_defaults(**given))
    (node,) = opaque[0].kwargs['function'](context)
    return node.kwargs


def test_launch_file_passes_params_file_alone_when_nothing_is_given(monkeypatch):
    node = _run_launch_file(monkeypatch)
    assert node['parameters'] == ['/opt/share/depth_node/config/depth.yaml']
    assert (node['executable'], node['arguments'], node['name']) == ('depth_node', [],
                                                                     'depth_node')


def test_launch_file_overrides_after_the_params_file(monkeypatch):
    node = _run_launch_file(monkeypatch, params_file='/my.yaml', model='/models/x',
                            lifecycle='true', autostart='true', namespace='front',
                            image='/cam/image_raw')
    first, overrides = node['parameters']
    assert first == '/my.yaml'
    assert {k: (v.value, v.value_type) for k, v in overrides.items()} == {
        'model.name': ('/models/x', str)}
    assert (node['executable'], node['arguments']) == ('depth_node_lifecycle', ['--autostart'])
    assert node['namespace'] == 'front'
    assert ('image/compressed', '/cam/image_raw/compressed') in node['remappings']


# ------------------------------------------------------- the node honours that order
def _entry_point() -> list[str]:
    exe = shutil.which('depth_node', path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, '-m', 'depth_node.node']


def _params_args(parameters: list, tmp_path: Path) -> list[str]:
    """``--params-file`` arguments as launch_ros builds them from a ``parameters`` list."""
    args = []
    for i, entry in enumerate(parameters):
        if isinstance(entry, dict):
            path = tmp_path / f'launch_params_{i}.yaml'
            path.write_text(yaml.safe_dump({'/**': {'ros__parameters': entry}}))
            entry = str(path)
        args += ['--params-file', entry]
    return args


def _loaded_model(parameters: list, tmp_path: Path) -> str:
    """Start the node with ``parameters``; return its 'model ... on cpu' log line."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.Popen(_entry_point() + ['--ros-args', '-r', '__ns:=/launch_order'] +
                            _params_args(parameters, tmp_path),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    lines = []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if 'ready:' in line:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    lines.append(out)
    text = ''.join(lines)
    model_lines = [line for line in text.splitlines() if ']: model ' in line]
    assert model_lines, text
    return model_lines[0]


@pytest.mark.ros
@pytest.mark.slow
def test_node_takes_the_model_from_the_params_file_unless_the_argument_is_given(tmp_path):
    from_file = make_tiny_depth_anything(tmp_path, metric=False)
    from_arg = make_tiny_depth_anything(tmp_path, metric=True)
    params_file = tmp_path / 'my_depth.yaml'
    params_file.write_text(yaml.safe_dump({'/**': {'ros__parameters': {
        'model.name': str(from_file), 'model.device': 'cpu', 'model.warmup': False}}}))

    line = _loaded_model(node_plan(_defaults(), str(params_file)).parameters, tmp_path)
    assert f'model {from_file} on cpu' in line

    given = _defaults(model=str(from_arg))
    line = _loaded_model(node_plan(given, str(params_file)).parameters, tmp_path)
    assert f'model {from_arg} on cpu' in line
