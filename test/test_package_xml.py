"""package.xml: every key resolves with rosdep, and the keys are exactly what the code imports.

The keys rosdep resolves are committed in test/data/rosdep_keys.yaml, checked against
ros/rosdistro (which file and commit are noted there); `rosdep install --from-paths src` fails on
the first key it cannot resolve, so a new key has to be checked and added there first.
"""

from __future__ import annotations

import ast
from pathlib import Path
import sys
import xml.etree.ElementTree as ET

import yaml

ROOT = Path(__file__).resolve().parents[1]
KEYS = yaml.safe_load((ROOT / 'test' / 'data' / 'rosdep_keys.yaml').read_text())
LOCAL = {'depth_node', 'conftest'} | {p.stem for folder in ('test', 'bench')
                                      for p in (ROOT / folder).glob('*.py')}


def _depends() -> dict[str, set[str]]:
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    tags = ('depend', 'build_depend', 'exec_depend', 'test_depend', 'build_export_depend')
    return {tag: {e.text.strip() for e in root.iter(tag)} for tag in tags}


def _imports(paths) -> dict[str, str]:
    """Top-level third-party module -> the first file importing it (stdlib and local left out)."""
    found: dict[str, str] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split('.')[0]
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _keys_for(imports: dict[str, str]) -> set[str]:
    unknown = {m: f for m, f in imports.items() if m not in KEYS['imports']}
    assert not unknown, (f'imports without a rosdep mapping: {unknown}; add each to '
                         'test/data/rosdep_keys.yaml (imports:) after checking its key')
    return {KEYS['imports'][m] for m in imports if KEYS['imports'][m] is not None}


def test_every_key_resolves_with_rosdep():
    known = set(KEYS['system_keys']) | set(KEYS['ros_packages'])
    for tag, keys in _depends().items():
        bad = keys - known
        assert not bad, (f'<{tag}> keys rosdep cannot resolve (not in '
                         f'test/data/rosdep_keys.yaml): {sorted(bad)}')
        assert not keys & set(KEYS['not_keys']), sorted(keys & set(KEYS['not_keys']))


def test_run_dependencies_are_what_the_package_imports():
    code = sorted((ROOT / 'depth_node').rglob('*.py')) + sorted((ROOT / 'launch').glob('*.py'))
    needed = _keys_for(_imports(code))
    deps = _depends()
    declared = deps['exec_depend'] | deps['depend']
    assert needed - declared == set(), f'imported but not declared: {sorted(needed - declared)}'
    assert declared - needed == set(), f'declared but not imported: {sorted(declared - needed)}'


def test_test_dependencies_are_what_the_tests_import():
    deps = _depends()
    runtime = deps['exec_depend'] | deps['depend']
    needed = _keys_for(_imports(sorted((ROOT / 'test').glob('*.py')))) - runtime
    declared = deps['test_depend']
    assert needed - declared == set(), f'imported but not declared: {sorted(needed - declared)}'
    assert declared - needed == set(), f'declared but not imported: {sorted(declared - needed)}'


def test_the_old_unresolvable_key_is_listed_as_such():
    # the key `rosdep install` used to stop at: it must stay out of package.xml
    assert 'python3-torch-pip' in KEYS['not_keys']
    assert KEYS['imports']['torch'] is None
