"""launch_testing: the shipped launch file starts the node, which serves a frame.

Runs where launch_testing and launch_ros are importable (a ROS 2 install with this package built
by colcon); skipped on the PyPI-wheel setup, where test_config.py checks the launch file
statically and test_node_process.py runs the same entry point as a subprocess.
"""

from __future__ import annotations

import os
import tempfile
import time
import unittest

import pytest

launch_testing = pytest.importorskip('launch_testing', reason='launch_testing is not installed')
pytest.importorskip('launch_ros', reason='launch_ros is not installed')

import launch  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
import launch_testing.actions  # noqa: E402
import rclpy  # noqa: E402

from depth_node.messages import image_msg, make_header  # noqa: E402
from tiny_models import make_tiny_depth_anything  # noqa: E402

pytestmark = [pytest.mark.launch_test, pytest.mark.ros]

MODEL_DIR = make_tiny_depth_anything(tempfile.mkdtemp(prefix='depth_node_launch_'))


@pytest.mark.launch_test
def generate_test_description():
    from ament_index_python.packages import get_package_share_directory

    launch_file = os.path.join(get_package_share_directory('depth_node'), 'launch',
                               'depth.launch.py')
    included = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(launch_file),
        launch_arguments={'model': str(MODEL_DIR), 'device': 'cpu',
                          'namespace': 'launch_test'}.items())
    return launch.LaunchDescription([included, launch_testing.actions.ReadyToTest()])


class TestLaunchedNode(unittest.TestCase):

    def test_serves_a_frame(self):
        import numpy as np
        from sensor_msgs.msg import Image

        rclpy.init()
        node = rclpy.create_node('launch_probe', namespace='launch_test')
        received = []
        node.create_subscription(Image, 'depth/relative', received.append, 5)
        pub = node.create_publisher(Image, 'image', 5)
        try:
            deadline = time.monotonic() + 60
            while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
                rclpy.spin_once(node, timeout_sec=0.1)
            frame = np.zeros((48, 64, 3), np.uint8)
            pub.publish(image_msg(frame, 'rgb8', make_header('cam', 1, 0)))
            while not received and time.monotonic() < deadline:
                rclpy.spin_once(node, timeout_sec=0.1)
            self.assertTrue(received, 'the launched node served no frame')
            self.assertEqual(received[0].header.frame_id, 'cam')
            self.assertEqual((received[0].width, received[0].height), (64, 48))
        finally:
            node.destroy_node()
            rclpy.shutdown()


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_exit_code(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
