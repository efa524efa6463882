"""Triton kernels (imported lazily: Triton is not needed to use the package on CPU).

On CUDA tensors they run compiled; on CPU tensors only under TRITON_INTERPRET=1
(set before anp_kernels is imported), which is how the test suite checks them
on machines without a GPU.
"""
