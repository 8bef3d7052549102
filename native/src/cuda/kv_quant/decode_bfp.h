// The BFP cache's decode (decode_bfp.cu), reached through cuda::attention_decode_quantized (decode_kivi.cu), which
// makes the parameters every quantized decode shares.
#pragma once

#include "core/quantized_kvcache.h"
#include "cuda/attention/decode_merge.cuh"

namespace nkv::cuda {

// `base`: the plan's and the call's parameters (q, o, lse); `layer`: a BFP cache's layer (head_dim 64 or 128).
void attention_decode_bfp(const nkv_attention_plan& plan, const attention::DecodeKernelParams& base, const QuantizedKvLayer& layer);

}  // namespace nkv::cuda
