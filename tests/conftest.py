"""Test set-up shared by every test module.

The fake CPU devices must exist before any JAX backend starts, so the flag is
set here, at import time, ahead of the first `import jax` in a test module.
"""

import os

NUM_CPU_DEVICES = 8

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count={NUM_CPU_DEVICES}"
)
# The tests are written for CPU devices, also on a machine with an
# accelerator, where the default backend would otherwise have one device.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
