// Bit moves the quantized-cache kernels share (decode_kivi.cu, decode_bfp.cu): codes and mantissas become MMA
// operands by byte permutes and masks, never by conversion instructions.
#pragma once

#include <cstdint>

namespace nkv::cuda::kv_quant {

// The bytes of {a, b} (a: 0..3, b: 4..7) that `selector`'s four nibbles name, as one word (PRMT).
__device__ __forceinline__ uint32_t byte_permute(uint32_t a, uint32_t b, uint32_t selector) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(selector));
  return d;
}

}  // namespace nkv::cuda::kv_quant
