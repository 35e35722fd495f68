"""depth_node-demo: finds the shipped sample frames by itself, and its pictures and summary say
what they show (colour bar with the range; range, valid share and alignment state in JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from depth_node.colormap import TURBO_LUT, colorize
from depth_node.share import sample_data_directory
from tiny_models import make_tiny_depth_anything


def test_colorbar_legend_under_the_image():
    from depth_node.colormap import add_colorbar, robust_range

    depth = np.linspace(1.0, 9.0, 640 * 480, dtype=np.float32).reshape(480, 640)
    lo, hi = robust_range(depth)
    # percentiles of a pixel-grid sample
    assert (lo, hi) == pytest.approx(np.percentile(depth, (2, 98)), rel=0.02)
    picture = colorize(depth, lo, hi)
    out = add_colorbar(picture, lo, hi, metric=True)
    assert out.shape[0] > 480 and out.shape[1:] == (640, 3)
    assert np.array_equal(out[:480], picture)
    legend = out[480:]
    bar_row = legend[3]
    margin = 640 // 50
    # near (red, LUT end) on the left, far (LUT start) on the right
    assert np.array_equal(bar_row[margin], TURBO_LUT[255])
    assert np.array_equal(bar_row[640 - margin - 1], TURBO_LUT[0])
    # white label text below the bar, on both ends and in the middle
    text = legend[legend.shape[0] // 2:]
    white = (text > 200).all(axis=2)
    for part in (white[:, :100], white[:, 270:370], white[:, -100:]):
        assert part.any()
    relative = add_colorbar(picture, 0.1, 0.9, metric=False)
    assert not np.array_equal(relative[480:], legend)  # other labels


def test_robust_range_of_nothing_finite():
    from depth_node.colormap import robust_range

    assert robust_range(np.full((4, 4), np.nan, np.float32)) is None


def test_sample_frames_are_found_and_installed_with_the_package():
    folder = sample_data_directory()
    assert folder is not None
    names = {p.parent.name for p in folder.glob('*/camera.json')}
    assert names == {'pjlab_distorted_autov2', 'tum_rgbd_1341847980.722988'}
    # setup.py installs every file of every frame into share/depth_node/sample_data/<frame>
    import ast

    root = Path(__file__).resolve().parents[1]
    source = (root / 'setup.py').read_text()
    assert "glob('sample_data/*/')" in source and "glob(folder + '/*')" in source
    ast.parse(source)


@pytest.mark.ros
@pytest.mark.slow
def test_demo_default_frames_pictures_and_summary(tmp_path, capsys):
    from depth_node.demo import main

    model = make_tiny_depth_anything(tmp_path, metric=True)
    out = tmp_path / 'out'
    assert main(['--model', str(model), '--device', 'cpu', '--repeat', '1', '--out',
                 str(out), '--timeout', '60']) == 0
    summary = json.loads((out / 'timings.json').read_text())
    assert set(summary['frames']) == {'pjlab_distorted_autov2', 'tum_rgbd_1341847980.722988'}
    from PIL import Image

    for name, record in summary['frames'].items():
        assert record['alignment_state'] in ('ok', 'stale', 'no_fit')
        assert record['alignment_state'] == record['alignment']['state']
        picture = record['picture']
        lo, hi = picture['range']
        assert lo < hi and 0.0 < picture['valid_fraction'] <= 1.0
        with Image.open(out / picture['file']) as im:
            rgb = np.asarray(im.convert('RGB'))
        width = rgb.shape[1]
        height = 1200 if name.startswith('pjlab') else 480
        assert rgb.shape[0] > height, 'no colour bar under the picture'
        # a metric model: metres, near = red at the left end of the bar
        assert picture['unit'] == 'm' and picture['file'].endswith('_depth.png')
        legend = rgb[height:]
        assert np.array_equal(legend[3, width // 50], TURBO_LUT[255])
        # the confidence picture beside it: same size, its own bar
        conf = record['confidence']
        assert conf['file'] == f'{name}_confidence.png' and 0 < conf['valid_fraction'] <= 1
        assert 0.0 <= conf['median'] <= 1.0
        with Image.open(out / conf['file']) as im:
            assert im.size == (width, rgb.shape[0])
    assert 'picture: ' in capsys.readouterr().out
