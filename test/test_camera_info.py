"""Tests for depth_node.camera_info: validation, rescaling, conversion back to fields."""

import numpy as np
import pytest

from depth_node.camera_info import (CameraInfoError, fit_to_image, intrinsics_from_fields,
                                    intrinsics_to_fields)

K9 = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0]
P12 = [505.0, 0.0, 322.0, -25.25, 0.0, 515.0, 238.0, 0.0, 0.0, 0.0, 1.0, 0.0]
D5 = [-0.1, 0.01, 0.001, -0.002, 0.0]
R9 = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def make(**overrides):
    fields = {'width': 640, 'height': 480, 'k': K9, 'd': D5, 'distortion_model': 'plumb_bob',
              'p': P12, 'r': R9}
    fields.update(overrides)
    return intrinsics_from_fields(**fields)


def test_valid_fields():
    intr = make()
    assert (intr.width, intr.height) == (640, 480)
    np.testing.assert_array_equal(intr.K, np.reshape(K9, (3, 3)))
    np.testing.assert_array_equal(intr.P, np.reshape(P12, (3, 4)))
    np.testing.assert_array_equal(intr.D, D5)
    assert intr.distortion_model == 'plumb_bob'
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == (500.0, 510.0, 320.0, 240.0)
    with pytest.raises(ValueError):
        intr.K[0, 0] = 1.0  # read-only


def test_p_all_zeros_is_derived_from_k_and_r_zeros_is_identity():
    intr = make(p=[0.0] * 12, r=[0.0] * 9)
    np.testing.assert_array_equal(intr.P, [[500, 0, 320, 0], [0, 510, 240, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(intr.R, np.eye(3))


@pytest.mark.parametrize('model, d', [
    ('rational_polynomial', [0.1] * 8), ('equidistant', [0.1, 0.0, 0.0, 0.0]),
    ('', [0.0] * 5), ('none', []), ('', []), ('plumb_bob', []),
])
def test_accepted_distortion_models(model, d):
    intr = make(distortion_model=model, d=d)
    assert intr.distortion_model == model
    np.testing.assert_array_equal(intr.D, d)


@pytest.mark.parametrize('overrides, match', [
    ({'width': 0}, 'positive'),
    ({'height': 0}, 'positive'),
    ({'width': -640}, 'positive'),
    ({'k': [0.0] * 9}, 'not calibrated'),
    ({'k': [0.0, 0, 320, 0, 510, 240, 0, 0, 1]}, 'fx'),
    ({'k': [500.0, 0, 320, 0, 0, 240, 0, 0, 1]}, 'fy'),
    ({'k': [500.0, 0, 0, 0, 510, 240, 0, 0, 1]}, 'principal point'),
    ({'k': [500.0, 0, 320, 0, 510, 0, 0, 0, 1]}, 'principal point'),
    ({'k': [np.nan, 0, 320, 0, 510, 240, 0, 0, 1]}, 'non-finite'),
    ({'k': [500.0, 0, np.inf, 0, 510, 240, 0, 0, 1]}, 'non-finite'),
    ({'k': [500.0, 0, 320, 0, 510, 240, 0, 0, 2]}, r'\[0, 0, 1\]'),
    ({'k': K9[:8]}, 'k must have 9'),
    ({'p': P12[:9]}, 'p must have 12'),
    ({'r': R9 + [0.0]}, 'r must have 9'),
    ({'p': [0.0, 0, 320, 0, 0, 510, 240, 0, 0, 0, 1, 0]}, 'p needs positive'),
    ({'d': [0.1, np.nan, 0, 0, 0]}, 'non-finite'),
    ({'distortion_model': 'fisheye'}, 'unknown distortion_model'),
    ({'distortion_model': '', 'd': [0.1, 0, 0, 0, 0]}, 'D all zeros'),
    ({'distortion_model': 'none', 'd': [0.0, 0.2]}, 'D all zeros'),
    ({'distortion_model': None}, 'string'),
    ({'k': ['a'] * 9}, 'numbers'),
])
def test_validation_errors(overrides, match):
    with pytest.raises(CameraInfoError, match=match):
        make(**overrides)


def test_half_resolution_hand_computed():
    """Pixel centres to pixel centres: cx' = (cx + 0.5) * 0.5 - 0.5 (image_proc: cx * 0.5)."""
    half = make().scaled(320, 240)
    assert (half.width, half.height) == (320, 240)
    np.testing.assert_allclose(half.K, [[250, 0, 159.75], [0, 255, 119.75], [0, 0, 1]])
    np.testing.assert_allclose(half.P, [[252.5, 0, 160.75, -12.625],
                                        [0, 257.5, 118.75, 0],
                                        [0, 0, 1, 0]])
    np.testing.assert_array_equal(half.D, D5)
    np.testing.assert_array_equal(half.R, np.eye(3))
    assert half.distortion_model == 'plumb_bob'


def test_double_resolution_hand_computed():
    double = fit_to_image(make(), 1280, 960)
    np.testing.assert_allclose(double.K, [[1000, 0, 640.5], [0, 1020, 480.5], [0, 0, 1]])
    np.testing.assert_allclose(double.P, [[1010, 0, 644.5, -50.5],
                                          [0, 1030, 476.5, 0],
                                          [0, 0, 1, 0]])


def test_fit_to_image_same_size_is_identity():
    intr = make()
    assert fit_to_image(intr, 640, 480) is intr


def test_fit_to_image_allows_rounded_sizes():
    # KITTI-like 1241x376 binned to 620x188: sx = 0.49960, sy = 0.5 (0.08 % apart).
    intr = make(width=1241, height=376)
    fitted = fit_to_image(intr, 620, 188)
    assert fitted.K[0, 0] == pytest.approx(500.0 * 620 / 1241)
    assert fitted.K[1, 1] == pytest.approx(510.0 * 0.5)
    assert fitted.K[0, 2] == pytest.approx(320.5 * 620 / 1241 - 0.5)


def test_fit_to_image_refuses_aspect_mismatch():
    with pytest.raises(CameraInfoError,
                       match='camera_info is 640x480 but image is 640x360 with a different '
                             'aspect ratio'):
        fit_to_image(make(), 640, 360)
    with pytest.raises(CameraInfoError):
        fit_to_image(make(), 330, 240, rel_tol=0.01)  # 3 % off
    assert fit_to_image(make(), 330, 240, rel_tol=0.05).width == 330
    with pytest.raises(CameraInfoError, match='positive'):
        fit_to_image(make(), 0, 0)


def test_to_fields_round_trip_and_fills_a_camera_info():
    intr = make().scaled(320, 240)
    fields = intrinsics_to_fields(intr)
    assert set(fields) == {'width', 'height', 'k', 'd', 'p', 'r', 'distortion_model'}
    assert all(type(v) is float for key in 'kdpr' for v in fields[key])
    again = intrinsics_from_fields(**fields)
    for name in ('K', 'D', 'P', 'R'):
        np.testing.assert_array_equal(getattr(again, name), getattr(intr, name))

    sensor_msgs = pytest.importorskip('sensor_msgs.msg')
    msg = sensor_msgs.CameraInfo()
    for key, value in fields.items():
        setattr(msg, key, value)
    assert msg.width == 320 and msg.k[2] == 159.75 and msg.p[3] == -12.625


def test_inputs_are_copied():
    k = np.array(K9)
    intr = make(k=k)
    k[0] = 1.0
    assert intr.K[0, 0] == 500.0


def test_real_calibrations_validate_and_rescale(real_data):
    from depth_node.sample_data import frame_folders, load_frame

    folders = frame_folders(real_data)
    assert folders
    for folder in folders:
        frame = load_frame(folder)
        intr = frame.intrinsics()
        half = fit_to_image(intr, frame.width // 2, frame.height // 2)
        sx, sy = (frame.width // 2) / frame.width, (frame.height // 2) / frame.height
        np.testing.assert_allclose(half.K[0, 0], frame.K[0, 0] * sx)
        np.testing.assert_allclose(half.K[1, 2], (frame.K[1, 2] + 0.5) * sy - 0.5)
        np.testing.assert_array_equal(half.P[:, :3], half.K)


@pytest.mark.parametrize('model,n', [('plumb_bob', 5), ('rational_polynomial', 8),
                                     ('equidistant', 4)])
def test_extra_nonzero_distortion_coefficients_refused(model, n):
    make(distortion_model=model, d=[0.01] * n + [0.0] * 3)  # zero padding is fine
    with pytest.raises(CameraInfoError, match=f'{model} uses {n} distortion coefficients'):
        make(distortion_model=model, d=[0.01] * (n + 1))


# --- binning and region of interest (image_geometry's PinholeCameraModel convention) -------

SENSOR_K = [1000.0, 0.0, 640.5, 0.0, 1010.0, 480.25, 0.0, 0.0, 1.0]
SENSOR_P = [1005.0, 0.0, 642.0, -50.25, 0.0, 1015.0, 478.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def sensor(**overrides):
    """A 1280 x 960 sensor's camera_info with binning / roi overrides."""
    return make(width=1280, height=960, k=SENSOR_K, p=SENSOR_P, **overrides)


# Each case by hand: cx' = (cx - x_offset) / binning_x, fx' = fx / binning_x (P's Tx too).
ROI_CASES = {
    'binning 2': (dict(binning_x=2, binning_y=2), (640, 480),
                  [500.0, 505.0, 320.25, 240.125], [502.5, 507.5, 321.0, 239.0, -25.125]),
    'binning 2 in x only': (dict(binning_x=2, binning_y=1), (640, 960),
                            [500.0, 1010.0, 320.25, 480.25], [502.5, 1015.0, 321.0, 478.0,
                                                              -25.125]),
    'binning 0 (= 1)': (dict(binning_x=0, binning_y=0), (1280, 960),
                        [1000.0, 1010.0, 640.5, 480.25], [1005.0, 1015.0, 642.0, 478.0, -50.25]),
    'roi': (dict(roi=(100, 50, 640, 480)), (640, 480),
            [1000.0, 1010.0, 540.5, 430.25], [1005.0, 1015.0, 542.0, 428.0, -50.25]),
    'roi and binning 2': (dict(binning_x=2, binning_y=2, roi=(100, 50, 800, 600)), (400, 300),
                          [500.0, 505.0, 270.25, 215.125], [502.5, 507.5, 271.0, 214.0,
                                                            -25.125]),
    'roi without the principal point': (dict(roi=(700, 600, 500, 300)), (500, 300),
                                        [1000.0, 1010.0, -59.5, -119.75],
                                        [1005.0, 1015.0, -58.0, -122.0, -50.25]),
}


@pytest.mark.parametrize('case', list(ROI_CASES))
def test_binning_and_roi_give_the_intrinsics_of_the_image(case):
    fields, size, (fx, fy, cx, cy), (pfx, pfy, pcx, pcy, ptx) = ROI_CASES[case]
    intr = sensor(**fields)
    assert (intr.width, intr.height) == size
    np.testing.assert_array_equal(intr.K, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    np.testing.assert_array_equal(intr.P, [[pfx, 0, pcx, ptx], [0, pfy, pcy, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(intr.D, D5)  # distortion is in normalised coordinates
    # what depth/camera_info carries: the image's own intrinsics, no binning, no roi
    assert intrinsics_to_fields(intr)['width'] == size[0]
    assert fit_to_image(intr, *size) is intr


def test_roi_is_not_a_resize_of_the_sensor():
    """The old behaviour, scaling the 1280 x 960 sensor's K to the 640 x 480 image, is wrong
    for a crop: the principal point must move by the offset, the focal length stay."""
    crop = sensor(roi=(100, 50, 640, 480))
    resized = fit_to_image(sensor(), 640, 480)
    assert crop.fx == 1000.0 and resized.fx == 500.0
    assert crop.cx == 540.5 and resized.cx == 320.0  # (640.5 + 0.5) / 2 - 0.5


@pytest.mark.parametrize('fields, reason', [
    (dict(roi=(700, 0, 640, 480)), 'not inside the 1280x960 sensor'),
    (dict(roi=(10, 10, 0, 0)), 'is empty'),
    (dict(roi=(0, 0, 640)), 'roi must be 4 integers'),
    (dict(binning_x=2000), 'leaves no pixel'),
    (dict(binning_y=-1), 'binning_y must be 0 or positive'),
    (dict(binning_x=1.5), 'binning_x must be 0 or positive'),
], ids=['roi outside', 'roi empty', 'roi of 3 values', 'binning too large', 'negative binning',
        'fractional binning'])
def test_bad_binning_or_roi_refused(fields, reason):
    with pytest.raises(CameraInfoError, match=reason):
        sensor(**fields)


def test_message_strings_and_lists_are_shortened_in_errors():
    with pytest.raises(CameraInfoError) as info:
        make(distortion_model='\x1b[31m' + 'k' * 100_000)
    message = str(info.value)
    assert '(100005 chars)' in message and '\x1b' not in message and len(message) < 400
    with pytest.raises(CameraInfoError) as info:
        make(d=[0.5] * 100_000)
    assert '(99995 values)' in str(info.value) and len(str(info.value)) < 400


def test_scaled_follows_how_the_package_resizes_images():
    """Where a point's image lands after the package's own resizes is where the scaled camera
    projects it: the box filter of input.oversize (limit_pixels, halving) and the estimator's
    upsampling of the prediction (F.interpolate, align_corners=False, doubling). image_proc's
    rule (cx * s) would be 0.25 px off when halving and 0.5 px off when doubling."""
    torch = pytest.importorskip('torch')
    from depth_node.image_codec import limit_pixels

    def centroid(image: np.ndarray) -> tuple[float, float]:
        rows, cols = np.indices(image.shape)
        return float((cols * image).sum() / image.sum()), float((rows * image).sum() / image.sum())

    intr = make()  # 640 x 480
    u, v = 100.5, 60.5  # the centre of the 2 x 2 block at columns 100-101, rows 60-61
    rgb = np.zeros((480, 640, 3), dtype=np.uint8)
    rgb[60:62, 100:102] = 255
    half = limit_pixels(rgb, 320 * 240)[..., 0].astype(np.float64)
    scaled = intr.scaled(320, 240)
    ray = np.linalg.solve(intr.K, [u, v, 1.0])  # the point the block shows
    expected = scaled.K @ ray
    assert centroid(half) == pytest.approx((expected[0], expected[1]), abs=1e-9)

    small = np.zeros((240, 320), dtype=np.float32)
    small[30, 50] = 1.0  # one pixel of the network's output, upsampled to the image
    up = torch.nn.functional.interpolate(torch.from_numpy(small)[None, None], size=(480, 640),
                                         mode='bilinear', align_corners=False)[0, 0].numpy()
    ray = np.linalg.solve(scaled.K, [50.0, 30.0, 1.0])
    expected = intr.K @ ray  # scaled.scaled(640, 480) is intr again
    assert centroid(up.astype(np.float64)) == pytest.approx((expected[0], expected[1]),
                                                            abs=1e-6)
