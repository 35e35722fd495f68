"""The executables' command lines: -h/--help prints usage and exits 0 without loading anything,
an unknown plain argument exits 2 with usage; ROS arguments are left to rcl."""

from __future__ import annotations

from pathlib import Path
import shutil
import subprocess
import sys
import time

import pytest

from depth_node import config as cfg
from depth_node.cli import build_parser, command_line, parse_command_line, split_ros_args


def test_split_ros_args():
    plain, ros = split_ros_args(['--autostart', '--ros-args', '-p', 'a:=1', '--', 'x',
                                 '--ros-args', '-r', 'b:=c'])
    assert plain == ['--autostart', 'x']
    assert ros == ['--ros-args', '-p', 'a:=1', '--ros-args', '-r', 'b:=c']
    # '--' outside ROS arguments is a plain argument
    assert split_ros_args(['--', '-h']) == (['--', '-h'], [])


def test_command_line_drops_the_program_name():
    assert command_line(['/usr/bin/depth_node', '--ros-args', '-p', 'a:=1']) == [
        '--ros-args', '-p', 'a:=1']
    assert command_line(['--ros-args', '-p', 'a:=1']) == ['--ros-args', '-p', 'a:=1']


def test_ros_arguments_are_not_parsed_here():
    options = parse_command_line(['--ros-args', '-p', 'model.name:=/x', '--params-file', 'f'],
                                 'depth_node')
    assert vars(options) == {}
    assert parse_command_line(['--autostart', '--ros-args', '-r', '__ns:=/a'],
                              'depth_node_lifecycle', lifecycle=True).autostart


def test_help_lists_every_parameter_and_where_the_docs_are():
    text = build_parser('depth_node').format_help()
    for spec in cfg.PARAMS:
        assert f'  {spec.name} ' in text, spec.name
    assert 'config/depth.yaml' in text and 'README' in text
    assert 'restart' in text and 'runtime' in text
    assert max(len(line) for line in text.splitlines()) <= 99
    assert '--autostart' in build_parser('depth_node_lifecycle', lifecycle=True).format_help()


def test_unknown_argument_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_command_line(['--bogus'], 'depth_node')
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert 'usage: depth_node' in err and '--bogus' in err


def _exe(name: str, module: str) -> list[str]:
    exe = shutil.which(name, path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, '-m', module]


@pytest.mark.ros
@pytest.mark.parametrize('name,module', [('depth_node', 'depth_node.node'),
                                         ('depth_node_lifecycle', 'depth_node.lifecycle')])
def test_entry_point_help_exits_0_without_loading_the_model(name, module):
    t0 = time.monotonic()
    proc = subprocess.run(_exe(name, module) + ['--help'], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert 'usage:' in proc.stdout and 'model.name' in proc.stdout
    assert '[INFO]' not in proc.stdout + proc.stderr  # no node started
    assert time.monotonic() - t0 < 30


@pytest.mark.ros
def test_help_loads_neither_torch_nor_rclpy_context():
    code = ('import sys; from depth_node.lifecycle import main; import rclpy; '
            "rc = main(['depth_node_lifecycle', '-h'], exit_process=False); "
            "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules, rclpy.ok())")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.stdout.splitlines()[-1] == '0 False False False', proc.stdout + proc.stderr


@pytest.mark.ros
def test_entry_point_unknown_argument_exits_2():
    proc = subprocess.run(_exe('depth_node', 'depth_node.node') + ['bogus', '--ros-args', '-p',
                                                                   'model.device:=cpu'],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert 'usage: depth_node' in proc.stderr and "unrecognized arguments: bogus" in proc.stderr
