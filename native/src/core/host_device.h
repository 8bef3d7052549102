// Functions that run on the host (CPU backend, API checks) and in CUDA kernels alike.
#pragma once

#if defined(__CUDACC__)
#define NKV_HOST_DEVICE __host__ __device__
#else
#define NKV_HOST_DEVICE
#endif
