"""Depth model types without a fast path: their own image processor, torch only.

Two transformers 5.23 types the fast path does not know (``tipsv2_dpt``, ``chmv2``), tiny and
random, built from configs (:mod:`tiny_slow_models`); what they output comes from the config or
``model.kind``, which also overrides a fast-path model's config.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from depth_node.estimator import DepthEstimator, EstimatorError
from depth_node.messages import image_msg, image_to_array, make_header
from tiny_models import make_tiny_dpt, textured_image
from tiny_slow_models import make_tiny_chmv2, make_tiny_tipsv2_dpt


@pytest.fixture(scope='module')
def slow_models(tmp_path_factory):
    root = tmp_path_factory.mktemp('slow_models')
    return {'tipsv2_dpt': str(make_tiny_tipsv2_dpt(root)),
            'chmv2': str(make_tiny_chmv2(root)),
            'tipsv2_relative': str(make_tiny_tipsv2_dpt(root, depth_estimation_type='relative')),
            'tipsv2_metric': str(make_tiny_tipsv2_dpt(root, depth_estimation_type='metric'))}


@pytest.fixture(scope='module')
def frame():
    return textured_image(48, 80, top=255, noise=60, seed=3)


def _reference(folder: str, images: list[np.ndarray]) -> np.ndarray:
    """What transformers itself gives: processor, model, post_process_depth_estimation."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    with torch.no_grad():
        outputs = model(**processor(images=images, return_tensors='pt'))
    sizes = [image.shape[:2] for image in images]
    results = processor.post_process_depth_estimation(outputs, target_sizes=sizes)
    return np.stack([r['predicted_depth'].numpy() for r in results])


@pytest.mark.parametrize('model_type', ['tipsv2_dpt', 'chmv2'])
def test_type_without_fast_path_runs_through_its_processor(slow_models, frame, model_type):
    est = DepthEstimator(slow_models[model_type], device='cpu', precision='fp32',
                         kind='metric_depth')
    assert est.model_type == model_type
    assert (est.output_kind, est.is_metric) == ('metric_depth', True)
    assert any('no fast path' in note for note in est.startup_notes), est.startup_notes
    prediction = est.predict(frame)
    assert prediction.depth.shape == (48, 80) and prediction.depth.dtype == np.float32
    assert np.ptp(prediction.depth) > 0  # varies over the image: a real forward pass
    expected = _reference(slow_models[model_type], [frame])[0]
    np.testing.assert_allclose(prediction.depth, expected, rtol=1e-5, atol=1e-5)
    assert set(prediction.timings) == {'preprocess', 'forward', 'postprocess'}
    # a batch is the single predictions stacked; the colour order reaches the model
    flipped = np.ascontiguousarray(frame[..., ::-1])
    batch = est.predict_batch([frame, flipped]).depth
    assert batch.shape == (2, 48, 80)
    np.testing.assert_allclose(batch[0], prediction.depth, rtol=1e-4, atol=1e-4)
    assert not np.allclose(batch[1], batch[0], rtol=1e-3, atol=1e-3)
    # the node's shape check asks the input size: the processor's output size
    pixel_values = est.preprocess([frame])
    assert est.input_size(48, 80) == tuple(pixel_values.shape[-2:])
    assert pixel_values.dtype == torch.float32 and pixel_values.shape[:2] == (1, 3)


def test_config_that_does_not_say_needs_model_kind(slow_models):
    with pytest.raises(EstimatorError, match='set model.kind') as info:
        DepthEstimator(slow_models['tipsv2_dpt'], device='cpu')
    for kind in ('metric_depth', 'relative_disparity', 'relative_depth'):
        assert kind in str(info.value)


@pytest.mark.parametrize('which, kind, expected', [
    ('tipsv2_relative', '', 'relative_disparity'),
    ('tipsv2_metric', '', 'metric_depth'),
    ('tipsv2_metric', 'relative_depth', 'relative_depth'),  # model.kind wins over the config
])
def test_kind_from_the_config_or_model_kind(slow_models, which, kind, expected):
    est = DepthEstimator(slow_models[which], device='cpu', precision='fp32', kind=kind)
    assert est.output_kind == expected
    assert est.is_metric == (expected == 'metric_depth')


def test_onnx_engine_refused_auto_runs_torch(slow_models):
    with pytest.raises(EstimatorError, match="use model.engine 'torch' or 'auto'"):
        DepthEstimator(slow_models['chmv2'], device='cpu', engine='onnxruntime',
                       kind='metric_depth')
    est = DepthEstimator(slow_models['chmv2'], device='cpu', engine='auto', kind='metric_depth')
    assert est.engine.name == 'torch'


def test_model_kind_overrides_a_fast_path_config(tmp_path):
    """DPT's KITTI / NYU checkpoints are metric but their config does not say so."""
    folder = str(make_tiny_dpt(tmp_path))
    assert DepthEstimator(folder, device='cpu').output_kind == 'relative_disparity'
    est = DepthEstimator(folder, device='cpu', kind='metric_depth')
    assert (est.output_kind, est.is_metric) == ('metric_depth', True)
    with pytest.raises(EstimatorError, match="model.kind 'metres'"):
        DepthEstimator(folder, device='cpu', kind='metres')


@pytest.mark.ros
def test_node_publishes_relative_output_of_a_generic_model(session, slow_models, frame):
    """Through ROS: a model without a fast path whose kind is relative publishes
    depth/relative (what the model gives) and no depth/image without LiDAR."""
    node = session.start_depth_node({'model.name': slow_models['chmv2'], 'model.device': 'cpu',
                                     'model.precision': 'fp32', 'model.warmup': False,
                                     'model.kind': 'relative_disparity'})
    assert node.core.estimator.output_kind == 'relative_disparity' and node.core.is_metric is False
    probe = session.probe()
    assert probe.wait_subscribers('image')
    header = make_header('cam_optical', 5, 7)
    probe.publish('image', image_msg(frame, 'rgb8', header))
    rel = probe.wait_stamp('depth/relative', (5, 7))
    assert rel is not None, 'no depth/relative'
    assert rel.header.frame_id == 'cam_optical'
    expected = node.core.estimator.predict(frame).depth
    np.testing.assert_allclose(image_to_array(rel), expected, rtol=1e-4, atol=1e-5)
    assert probe.wait_stamp('depth/image', (5, 7), timeout=1.0) is None
