"""The problem and output tables without ROS: counting, throttling, once, health; every problem
and output the pipeline produces is declared, and messages are built by the table."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from depth_node import config as cfg
from depth_node.outputs import build_message, image_encoding, OUTPUTS, output_topics
from depth_node.problems import (
    DIAGNOSTIC_COUNTERS, FAILURES_FOR_ERROR, Health, Problem, PROBLEMS, Reporter)

PACKAGE = Path(__file__).resolve().parents[1] / 'depth_node'


def _reporter(**kwargs):
    lines = []
    return Reporter(lambda severity, line: lines.append((severity, line)), **kwargs), lines


def test_a_bad_input_is_counted_every_time_and_logged_throttled_with_its_count():
    reporter, lines = _reporter()
    for _ in range(3):
        reporter.report(Problem('bad_image', 'image refused: bad step'))
    assert reporter.counters.get('bad_image') == 3
    assert lines == [('warning', 'image refused: bad step (bad image messages so far: 1)')]


def test_a_cause_of_its_own_has_its_own_throttle_and_the_same_counter():
    reporter, lines = _reporter()
    reporter.report(Problem('bad_image', 'refused'))
    reporter.report(Problem('bad_image', 'cannot be deserialized', group='bad_image_cdr'))
    assert len(lines) == 2 and reporter.counters.get('bad_image') == 2


def test_once_per_camera_and_per_camera_counters():
    reporter, lines = _reporter(per_camera=True)
    for camera in ('front', 'front', 'rear'):
        reporter.report(Problem('no_camera_info'), camera, f'{camera}/camera_info')
    assert [line for _, line in lines] == [
        f'no {c}/camera_info received yet: publishing depth images only; no depth/points, '
        'depth/camera_info or LiDAR projection until it arrives' for c in ('front', 'rear')]
    assert reporter.counters.get('frames_without_camera_info') == 3
    assert reporter.counters.get('frames_without_camera_info.front') == 2


def test_long_text_is_bounded_but_the_count_survives():
    reporter, lines = _reporter()
    reporter.report(Problem('bad_lidar', 'x' * 10_000))
    assert len(lines[0][1]) < 1200 and lines[0][1].endswith('(bad lidar messages so far: 1)')


def test_forward_failures_in_a_row_drive_the_health_to_error_and_back():
    reporter, lines = _reporter()
    health = Health(hold=10.0)
    assert health.update(reporter.counters.snapshot(), reporter.in_a_row, now=0.0) == (0, 'ok')
    for _ in range(FAILURES_FOR_ERROR):
        reporter.report(Problem('forward_failed', 'RuntimeError: out of memory'))
    assert lines[0] == ('error', 'forward pass failed (1 in a row): RuntimeError: out of memory')
    level, message = health.update(reporter.counters.snapshot(), reporter.in_a_row, now=1.0)
    assert level == Health.ERROR and f'({FAILURES_FOR_ERROR} in a row)' in message
    reporter.forward_ok()
    level, message = health.update(reporter.counters.snapshot(), reporter.in_a_row, now=2.0)
    assert level == Health.WARN and 'forward_failures' in message
    assert health.update(reporter.counters.snapshot(), 0, now=20.0) == (Health.OK, 'ok')


def test_a_fatal_problem_is_logged_and_acted_on_once():
    fatal = []
    reporter, lines = _reporter(on_fatal=fatal.append)
    for _ in range(2):
        reporter.report(Problem('device_lost', 'RuntimeError: illegal memory access'))
    assert len(fatal) == 1 and len(lines) == 1 and lines[0][0] == 'fatal'
    assert 'the GPU is unusable in this process' in lines[0][1]
    assert reporter.counters.get('forward_failures') == 2


def test_counted_only_kinds_are_never_logged():
    reporter, lines = _reporter()
    reporter.report(Problem('lidar_unpaired'))
    assert lines == [] and reporter.counters.get('lidar_unpaired') == 1
    assert 'lidar_unpaired' not in DIAGNOSTIC_COUNTERS


def _string_args(call_name: str) -> set[str]:
    """The first string argument of every ``call_name(...)`` in the package (f-strings with a
    literal head too: ``Problem(f'prompt_{state}')`` gives 'prompt_')."""
    found = set()
    for path in PACKAGE.rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == call_name and \
                    node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value)
                elif isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant):
                    found.add(arg.values[0].value)
    return found


def test_every_problem_the_package_reports_is_in_the_table():
    keys = _string_args('Problem')
    assert 'no_fit' in keys and 'bad_image' in keys  # the scan finds them
    for key in keys:
        assert key in PROBLEMS or any(k.startswith(key) for k in PROBLEMS), key


def test_every_output_the_pipeline_emits_is_in_the_table():
    emitted = _string_args('emit') - {'problem'}
    assert {'depth', 'relative', 'info', 'points', 'colored', 'alignment'} <= emitted
    assert emitted <= {o.key for o in OUTPUTS}


class _Factory:
    def image(self, array, encoding, header):
        return ('image', encoding, header)

    def camera_info(self, intr, header):
        return ('camera_info', intr, header)

    def cloud(self, packed, header):
        return ('cloud', packed, header)

    def status(self, fields):
        return ('status', fields['name'], fields['message'])


def test_messages_are_built_as_the_table_says():
    f, header = _Factory(), object()
    assert build_message(f, 'depth', np.zeros((2, 2), np.float32), header, 'n') == (
        'image', '32FC1', header)
    assert build_message(f, 'depth', np.zeros((2, 2), np.uint16), header, 'n')[1] == '16UC1'
    assert build_message(f, 'colored', np.zeros((2, 2, 3), np.uint8), header, 'n')[1] == 'rgb8'
    assert build_message(f, 'relative', np.zeros((2, 2), np.float32), header, 'n')[1] == '32FC1'
    assert build_message(f, 'points', 'packed', header, 'n') == ('cloud', 'packed', header)
    report = SimpleNamespace(values=lambda: {'state': 'ok', 'reason': ''}, level=0,
                             frame_id='cam')
    assert build_message(f, 'alignment', report, header, 'n', 'front') == (
        'status', 'n: lidar alignment (front)', 'ok')
    with pytest.raises(KeyError):
        image_encoding('nope', np.zeros(1))


def test_alignment_is_advertised_only_with_lidar_or_a_prompt():
    plain = cfg.validate_values({})
    lidar = cfg.validate_values({'lidar.enabled': True,
                                 'lidar.T_camera_lidar': np.eye(4).ravel().tolist()})
    assert 'alignment' not in {o.key for o in output_topics(plain)}
    assert 'alignment' in {o.key for o in output_topics(lidar)}


def test_reset_starts_the_failures_and_once_lines_afresh_but_keeps_counting():
    reporter, lines = _reporter()
    for _ in range(3):
        reporter.report(Problem('forward_failed', 'RuntimeError: out of memory'))
    reporter.report(Problem('no_camera_info'), '', 'camera_info')
    reporter.reset()  # a new configuration (lifecycle cleanup, configure)
    assert reporter.in_a_row == 0 and reporter.counters.get('forward_failures') == 3
    reporter.report(Problem('no_camera_info'), '', 'camera_info')
    assert sum('camera_info received yet' in line for _, line in lines) == 2
