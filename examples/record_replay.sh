#!/usr/bin/env bash
# Record two seconds of the camera stream, then replay it in a loop under another tag:
# a camera-free way to develop a pipeline. Start examples/stream_writer.py first.
set -euo pipefail
ndsharray record camera/left /tmp/camera.npz --seconds 2
python -c "import numpy as np; z = np.load('/tmp/camera.npz'); print(z['frames'].shape, z['timestamps_ns'][:3])"
ndsharray replay /tmp/camera.npz camera/replayed --loop   # Ctrl-C to stop
