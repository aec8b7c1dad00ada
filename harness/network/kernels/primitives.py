"""numba types and loops the kernels share."""

from __future__ import annotations

import numpy as np
from numba import njit

F32 = np.float32


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def axpy(y, a, x):
    """y += a * x, on rows (1-D slices vectorise; 2-D indexing in the loop may not)."""
    for n in range(y.shape[0]):
        y[n] += a * x[n]
