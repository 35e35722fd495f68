"""The lint gate: flake8 over the package, tests, benchmarks, launch files, scripts and setup.py.

What ament_flake8's test does for an ament_python package, with plain flake8 from PyPI (the
``test`` extra, pinned with pycodestyle and pyflakes in scripts/constraints.txt) and the
``[flake8]`` section of setup.cfg (99 columns). Not ament_flake8: CI runs in a virtual environment
without a ROS 2 install, and ament_flake8 brings its own configuration and plugins, so a ROS
machine would judge by other rules than CI. flake8 loads every plugin installed beside it: in
CI there is none. Run it by hand from the repository root with
``python -m flake8 depth_node test bench launch scripts setup.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys

try:
    import flake8
except ImportError:  # reported by the tests below with the command that installs it
    flake8 = None

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'setup.cfg'
#: What the gate lints, relative to the repository root.
PATHS = ('depth_node', 'test', 'bench', 'launch', 'scripts', 'setup.py')
#: Files left out of the gate (none: every file is linted).
EXCLUDED: tuple[str, ...] = ()
#: Folders never linted (virtual environments, colcon output), as setup.cfg excludes them.
NOT_SOURCE = ('build', 'install', 'log')
INSTALL = ("flake8 is not installed: pip install -c scripts/constraints.txt -e '.[test]' "
           '(scripts/setup.sh does)')


def _flake8(*args: str | Path) -> subprocess.CompletedProcess:
    """``python -m flake8 ARGS`` in the repository root with setup.cfg's ``[flake8]``."""
    assert flake8 is not None, INSTALL
    return subprocess.run(
        [sys.executable, '-m', 'flake8', f'--config={CONFIG}', *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_flake8_finds_nothing():
    exclude = [f'--extend-exclude={",".join(EXCLUDED)}'] if EXCLUDED else []
    result = _flake8(*exclude, *PATHS)
    findings = result.stdout.strip()
    assert result.returncode == 0 and not result.stderr.strip(), (
        f'flake8 {flake8.__version__} (setup.cfg [flake8]):\n{findings}\n{result.stderr}\n'
        'fix each line above (not with # noqa unless flake8 is wrong about that line)')


def test_gate_reads_setup_cfg_and_reports_findings(tmp_path):
    # The gate can fail: 99 columns pass, 100 do not, and an unused import is found.
    ok, long = 'x = ' + repr('a' * 93), 'y = ' + repr('b' * 94)
    assert (len(ok), len(long)) == (99, 100)
    (tmp_path / 'sample.py').write_text(f'import os\n\n{ok}\n{long}\n')
    result = _flake8(tmp_path / 'sample.py')
    codes = [line.split(': ', 1)[1].split()[0] for line in result.stdout.splitlines()]
    assert result.returncode == 1 and codes == ['F401', 'E501'], result.stdout + result.stderr


def test_every_python_file_is_linted():
    # A new top-level folder (or file) of Python code must be added to PATHS.
    outside = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith('.')]  # .git, .venv, .venv-kilted
        if Path(folder) == ROOT:
            dirs[:] = [d for d in dirs if d not in PATHS and d not in NOT_SOURCE]
            files = [f for f in files if f not in PATHS]
        outside += [os.path.relpath(os.path.join(folder, f), ROOT)
                    for f in files if f.endswith('.py')]
    assert not outside, f'Python files the gate does not lint: {sorted(outside)}; add to PATHS'
