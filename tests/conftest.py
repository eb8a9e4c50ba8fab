"""Shared hypothesis profiles (``HYPOTHESIS_PROFILE=long`` runs 2000 examples per property)
and BLAS on one thread for the whole suite.

One BLAS thread: the tool alternates small linear-algebra calls with onnxruntime runs and
Python steps, and on 2 cores a second BLAS thread costs more than it gives (the suite: 518 s
with two threads, 355 s with one, before the same change within ``lbyl-nn``). No test
depends on the thread count: results are compared with tolerances, and the reproducibility
tests compare two runs made under the same setting.
"""

from __future__ import annotations

import os

import numpy  # noqa: F401  (loads NumPy's BLAS, so that the limit below reaches it)
import scipy.linalg  # noqa: F401  (and SciPy's, a separate library)
from hypothesis import HealthCheck, settings
from threadpoolctl import threadpool_limits

threadpool_limits(limits=1, user_api="blas")

settings.register_profile(
    "default", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
