"""Regenerate config/depth.yaml and the README parameter table from depth_node/config.py.

Run after changing a parameter: python scripts/gen_param_docs.py (test_config.py checks both).
"""

import json
from pathlib import Path
import re
import textwrap

from depth_node.config import PARAMS

ROOT = Path(__file__).resolve().parents[1]


def _yaml_value(v):
    if isinstance(v, bool):
        return 'true' if v else 'false'
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return json.dumps(v)
    return repr(v)


def _extra(p):
    extra = []
    if p.choices:
        extra.append('one of: ' + ', '.join(map(str, p.choices)))
    if p.min is not None or p.max is not None:
        lo = p.min if p.min is not None else '-inf'
        hi = p.max if p.max is not None else 'inf'
        extra.append(f'range: [{lo}, {hi}]')
    return extra


def yaml_text():
    lines = ['# depth_node parameters: every parameter, its default and what it does.',
             '# Load with: ros2 launch depth_node depth.launch.py params_file:=/path/to/this.yaml',
             '# (read-only parameters need a restart; the others can be changed with ros2 param '
             'set).',
             '/**:', '  ros__parameters:']
    group = None
    for p in PARAMS:
        g = p.name.split('.')[0]
        if g != group:
            lines += ['', f'    # --- {g} ---']
            group = g
        desc = p.description + (' [read-only]' if p.read_only else '')
        if _extra(p):
            desc += ' (' + '; '.join(_extra(p)) + ')'
        lines += ['    # ' + line for line in textwrap.wrap(desc, 90, break_on_hyphens=False)]
        if p.default == []:
            # ROS cannot type an empty list from YAML: an unset list stays commented out
            lines.append(f'    # {p.name}: ["front", "rear"]')
        else:
            lines.append(f'    {p.name}: {_yaml_value(p.default)}')
    return '\n'.join(lines) + '\n'


def readme_table():
    rows = ['| parameter | type | default | runtime | description |', '|---|---|---|---|---|']
    for p in PARAMS:
        d = p.default
        d = (str(d).lower() if isinstance(d, bool) else f"'{d}'" if isinstance(d, str)
             else json.dumps(d) if isinstance(d, list) else d)
        desc = p.description.replace('|', '\\|')
        extra = []
        if p.choices:
            extra.append('one of ' + ', '.join(f'`{c}`' for c in p.choices))
        if p.min is not None or p.max is not None:
            extra.append(f"range [{'' if p.min is None else p.min}, "
                         f"{'' if p.max is None else p.max}]")
        if extra:
            desc += ' (' + '; '.join(extra) + ')'
        runtime = 'restart' if p.read_only else 'yes'
        rows.append(f'| `{p.name}` | {p.type_name} | `{d}` | {runtime} | {desc} |')
    return '\n'.join(rows) + '\n'


def main():
    (ROOT / 'config' / 'depth.yaml').write_text(yaml_text())
    readme = (ROOT / 'README.md').read_text()
    table = re.compile(r'^\| parameter \| type \|.*?\n(?=\n)', re.S | re.M)
    assert table.search(readme), 'README parameter table not found'
    (ROOT / 'README.md').write_text(table.sub(lambda _: readme_table(), readme, count=1))


if __name__ == '__main__':
    main()
