"""Start depth_node on a camera: ros2 launch depth_node depth.launch.py image:=/cam/image_raw.

Arguments (table and meaning: depth_node/launch_args.py, README "Launch"): params_file, model,
device, precision, namespace, image, camera_info, lidar_points, use_fastdds_profile, lifecycle,
autostart. The parameter file is loaded first; model, device and precision override it only
when given. lifecycle:=true starts the managed node depth_node_lifecycle (autostart:=true:
it configures and activates itself). Topics are remapped, never renamed in code.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from depth_node.launch_args import ARGUMENTS, node_plan, remappings


def _node(context):
    given = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    params_file = given['params_file'] or os.path.join(
        get_package_share_directory('depth_node'), 'config', 'depth.yaml')
    plan = node_plan(given, params_file)
    parameters = [p if isinstance(p, str) else
                  {name: ParameterValue(value, value_type=str) for name, value in p.items()}
                  for p in plan.parameters]
    return [Node(
        package='depth_node',
        executable=plan.executable,
        name='depth_node',
        namespace=given['namespace'],
        output='screen',
        emulate_tty=True,
        arguments=plan.arguments,
        parameters=parameters,
        remappings=remappings(given),
    )]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('depth_node')
    args = [DeclareLaunchArgument(name, default_value=default, description=desc)
            for name, (default, desc) in ARGUMENTS.items()]
    profile = os.path.join(share, 'config', 'fastdds_shm.xml')
    use_profile = IfCondition(LaunchConfiguration('use_fastdds_profile'))
    env = [SetEnvironmentVariable(var, profile, condition=use_profile)
           for var in ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')]
    return LaunchDescription(args + env + [OpaqueFunction(function=_node)])
