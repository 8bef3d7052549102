// The sm_90a (Hopper) varlen forward path: TMA + wgmma + warp specialization (varlen_sm90.cu).
#pragma once

#include <cstdint>

#include "core/attention.h"

namespace nkv::cuda::attention {

// Whether the sm_90a kernel covers this plan (a context with Hopper kernels, head_dim 64 or 128, some keys).
bool varlen_sm90_supports(const nkv_attention_plan& plan);
// Launches it; the caller has checked varlen_sm90_supports and set the device.
void attention_varlen_sm90(const nkv_attention_plan& plan, const VarlenAttentionArgs& args);

}  // namespace nkv::cuda::attention
