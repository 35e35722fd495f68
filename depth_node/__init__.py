"""Metric depth from one camera for ROS 2: monocular depth networks, LiDAR scaling, clouds."""

__version__ = '0.1.0'
