"""Tests for depth_node.input_shape: image shapes the network cannot sensibly take."""

from types import SimpleNamespace

import pytest

from depth_node.image_codec import ImageDecodeError
from depth_node.input_shape import check_input_shape, DEFAULT_MAX_ASPECT, model_patch_size


def refusal(*args, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as info:
        check_input_shape(*args, **kwargs)
    return str(info.value)


def keep_short_side_518(height: int, width: int) -> tuple[int, int]:
    """Depth Anything's rule in small: the long side to 518, multiples of 14 (may give 0)."""
    scale = 518 / max(height, width)
    return round(height * scale / 14) * 14, round(width * scale / 14) * 14


def test_aspect_ratio_rule_names_the_ratio_and_the_parameter():
    message = refusal(1, 49_000_000, DEFAULT_MAX_ASPECT)
    assert message == ('49000000x1 has aspect ratio 49000000:1, over the 16:1 the network can '
                       'take (input.max_aspect)')
    assert '16.5:1' in refusal(100, 1650, 16.0)
    assert '17:1' in refusal(1700, 100, 16.0)
    check_input_shape(100, 1600, 16.0)  # exactly 16:1 passes
    check_input_shape(1, 49_000_000, 0)  # 0 lifts the limit
    assert 'empty image 0x5' in refusal(5, 0, 16.0)


def test_network_input_below_one_patch_is_refused():
    check_input_shape(100, 1600, 16.0, keep_short_side_518, 14)  # 518 x 28 at the network
    message = refusal(100, 1500, 0, keep_short_side_518, 30)
    assert message == ('1500x100 would reach the network as 518x28, a side below its patch '
                       'size 30: too small or too thin for the model')
    message = refusal(10, 2000, 0, keep_short_side_518, 14)
    assert 'would reach the network as 518x0' in message and 'patch size 14' in message


def test_the_size_after_max_pixels_is_what_reaches_the_network():
    seen = []

    def input_size(height, width):
        seen.append((height, width))
        return height, width

    message = refusal(40, 400, 16.0, input_size, 32, resized=(20, 200))
    assert seen == [(20, 200)]
    assert message.startswith('400x40 (downscaled to 200x20) would reach the network as 200x20')


def test_the_models_own_refusal_is_passed_on():
    def too_small(height, width):
        raise RuntimeError(f'image {width}x{height} is too small for glpn (it would be '
                           'resized to 0x0)')
    message = refusal(20, 30, 16.0, too_small)
    assert message.startswith('30x20 cannot be fed to the network: image 30x20 is too small')


def test_model_patch_size_from_configs():
    assert model_patch_size(SimpleNamespace(patch_size=16)) == 16  # DPT, ViT
    assert model_patch_size(SimpleNamespace(backbone_config=SimpleNamespace(patch_size=14))) == 14
    assert model_patch_size(SimpleNamespace(patch_sizes=[7, 3, 3, 3])) == 7  # GLPN
    assert model_patch_size(SimpleNamespace(patch_size=[16, 16])) == 16
    assert model_patch_size(SimpleNamespace()) == 1
    assert model_patch_size(None) == 1


def test_with_a_tiny_depth_anything(tmp_path):
    """The estimator's own input size: 1 x 4000 reaches it 0 pixels tall (the forward pass
    fails); 100 x 2 is one patch wide; both are refused, a KITTI-like 1224 x 370 passes."""
    from depth_node.estimator import DepthEstimator
    from tiny_models import make_tiny_depth_anything

    est = DepthEstimator(str(make_tiny_depth_anything(tmp_path)), device='cpu')
    patch = model_patch_size(est.model.config)
    assert patch == 14
    check_input_shape(370, 1224, 16.0, est.input_size, patch)
    check_input_shape(10, 160, 16.0, est.input_size, patch)  # 16:1, 28 x 518 at the network
    assert 'cannot be fed to the network' in refusal(1, 4000, 0, est.input_size, patch)
    assert 'aspect ratio 4000:1' in refusal(1, 4000, 16.0, est.input_size, patch)
    assert 'aspect ratio 50:1' in refusal(100, 2, 16.0, est.input_size, patch)
