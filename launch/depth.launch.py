"""Start depth_node on a camera: ros2 launch depth_node depth.launch.py image:=/cam/image_raw.

Arguments: params_file, model, device, precision, namespace, image, camera_info, lidar_points,
use_fastdds_profile. Topics are remapped, never renamed in code.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# Launch argument -> (default, description). Kept in one table so a test can check it.
ARGUMENTS = {
    'params_file': (None, 'YAML parameter file (default: the package config/depth.yaml)'),
    'model': ('depth-anything/Depth-Anything-V2-Small-hf',
              'model.name: hub id or local model directory'),
    'device': ('auto', "model.device: 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    'precision': ('auto', "model.precision: 'auto', 'fp32', 'fp16' or 'bf16'"),
    'namespace': ('', 'namespace of the node and its relative topics'),
    'image': ('image', 'camera image topic (sensor_msgs/Image)'),
    'camera_info': ('camera_info', 'camera_info topic matching the image'),
    'lidar_points': ('lidar/points', 'LiDAR PointCloud2 topic (used when lidar.enabled)'),
    'use_fastdds_profile': ('true', 'use the shipped Fast DDS profile (large shared-memory '
                            'segment for multi-megabyte images)'),
}

# Launch argument -> node parameter it sets.
PARAMETER_ARGUMENTS = {'model': 'model.name', 'device': 'model.device',
                       'precision': 'model.precision'}


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('depth_node')
    defaults = dict(ARGUMENTS)
    defaults['params_file'] = (os.path.join(share, 'config', 'depth.yaml'),
                               ARGUMENTS['params_file'][1])
    args = [DeclareLaunchArgument(name, default_value=default, description=desc)
            for name, (default, desc) in defaults.items()]
    profile = os.path.join(share, 'config', 'fastdds_shm.xml')
    env = [SetEnvironmentVariable(var, profile,
                                  condition=IfCondition(LaunchConfiguration('use_fastdds_profile')))
           for var in ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')]
    node = Node(
        package='depth_node',
        executable='depth_node',
        name='depth_node',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=[LaunchConfiguration('params_file'),
                    {param: LaunchConfiguration(arg)
                     for arg, param in PARAMETER_ARGUMENTS.items()}],
        remappings=[('image', LaunchConfiguration('image')),
                    ('image/compressed', [LaunchConfiguration('image'), '/compressed']),
                    ('camera_info', LaunchConfiguration('camera_info')),
                    ('lidar/points', LaunchConfiguration('lidar_points'))],
    )
    return LaunchDescription(args + env + [node])
