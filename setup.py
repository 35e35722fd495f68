from glob import glob

from setuptools import find_packages, setup

package_name = 'depth_node'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + package_name + '/rviz', glob('rviz/*.rviz')),
        ('share/' + package_name + '/sample_data', glob('sample_data/*.md')),
    ] + [  # the sample frames: depth_node-demo's default input
        ('share/' + package_name + '/' + folder, sorted(glob(folder + '/*')))
        for folder in sorted(f.rstrip('/') for f in glob('sample_data/*/'))
    ],
    python_requires='>=3.10',
    install_requires=[
        'setuptools',
        'numpy>=1.22',
        'pillow>=9.0',
        'pyyaml>=5.4',
        'torch>=2.1',
        'transformers>=4.45',
        # depth_node-bag: reads and writes ROS 2 bags without a ROS install; its progress bar
        'rosbags>=0.11',
        'tqdm>=4.60',
    ],
    extras_require={
        # rclpy and the message packages from the PyPI Jazzy wheels, for a virtual environment
        # without a ROS 2 install. A ROS 2 machine gets them from its distro: don't install this.
        'ros-wheels': [
            'ros-rclpy[fastrtps]==7.1.6',
            'ros-sensor-msgs==5.3.6',
            'ros-diagnostic-msgs==5.3.6',
        ],
        # The same from the PyPI Kilted wheels (CI runs the ROS-level tests against them).
        'ros-wheels-kilted': [
            'ros-kilted-rclpy[fastrtps]==9.1.2',
            'ros-kilted-sensor-msgs==5.5.1',
            'ros-kilted-diagnostic-msgs==5.5.1',
        ],
        # flake8: test/test_flake8.py, the lint gate (pinned with pycodestyle and pyflakes in
        # scripts/constraints.txt: their versions decide what is reported).
        'test': ['pytest>=7', 'hypothesis>=6', 'flake8>=7'],
        # Inference engines (model.engine); exporting to ONNX needs 'onnx'. GPU wheels
        # (onnxruntime-gpu, tensorrt) are installed by hand on CUDA machines.
        'onnx': ['onnx>=1.15'],
        'onnxruntime': ['onnx>=1.15', 'onnxruntime>=1.17'],
        'openvino': ['onnx>=1.15', 'openvino>=2024.0'],
        'tensorrt': ['onnx>=1.15', 'tensorrt>=10.0,<11'],  # the version gate's range
        'engines': ['onnx>=1.15', 'onnxruntime>=1.17', 'openvino>=2024.0'],
        # Marigold depth checkpoints (diffusers pipeline); model.ensemble_size > 1 also needs
        # scipy (not installed by scripts/setup.sh: see TESTING.md).
        'marigold': ['diffusers>=0.32'],
        # depth_node-serve (the Triton server of model.engine triton; PyTriton pins numpy<2,
        # which its Python backend stub needs) and the nodes' client only.
        'triton': ['nvidia-pytriton==0.7.0', 'numpy<2', 'tritonclient[grpc,http]>=2.50'],
        'triton-client': ['tritonclient[grpc,http]>=2.50'],
    },
    zip_safe=True,
    maintainer='depth_node maintainers',
    maintainer_email='maintainers@depth-node.dev',
    description='Metric depth from one camera for ROS 2 (monocular depth networks + LiDAR).',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'depth_node = depth_node.node:main',
            'depth_node_lifecycle = depth_node.lifecycle:main',
            'depth_node-demo = depth_node.demo:main',
            'depth_node-eval = depth_node.evaluate:main',
            'depth_node-export = depth_node.export_tool:main',
            'depth_node-bag = depth_node.bag:main',
            'depth_node-serve = depth_node.serve:main',
        ],
    },
)
