"""The network: neuron models, surrogate gradients, input encodings, output decodings (a table
each), the model built from them, and the fused backend's CPU kernels."""
