"""The fused backend's CPU kernels (numba): the LIF scan of the whole net, the sparse product
of fc1, and the activity counters of the efficiency metrics."""
