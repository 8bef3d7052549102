using System.Runtime.InteropServices;

namespace NativeKv.Interop;

/// <summary>Mirror of <c>nkv_attention_options</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NkvAttentionOptions
{
    public uint StructSize;
    public int Causal;
    public float SoftmaxScale;
    public float Softcap;
    public int WindowLeft;
    public int NumSplits;
    public int Kernel;
    public int KvPageSize;
    public int KvCodeBits;
}

/// <summary>Mirror of <c>nkv_attention_plan_info</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NkvAttentionPlanInfo
{
    public uint StructSize;
    public int Kind;
    public int Batch;
    public int NumHeadsQ;
    public int NumHeadsKv;
    public int HeadDim;
    public int QLen;
    public int NumSplits;
    public long TotalQ;
    public long TotalK;
    public long MaxSeqlenQ;
    public long MaxSeqlenK;
    public float SoftmaxScale;
    public int Reserved;
}

internal static unsafe partial class NativeMethods
{
    /// <summary><c>nkv_status nkv_attention_plan_varlen(nkv_context*, const nkv_attention_options*, int32_t num_heads_q, int32_t num_heads_kv, int32_t head_dim, int32_t batch, const int32_t* cu_seqlens_q, const int32_t* cu_seqlens_k, nkv_attention_plan** out_plan)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_attention_plan_varlen(ContextHandle context, NkvAttentionOptions* options, int numHeadsQ,
        int numHeadsKv, int headDim, int batch, int* cuSeqlensQ, int* cuSeqlensK, out nint plan);

    /// <summary><c>nkv_status nkv_attention_plan_decode(nkv_context*, const nkv_attention_options*, int32_t num_heads_q, int32_t num_heads_kv, int32_t head_dim, int32_t batch, int32_t q_len, const int32_t* seqlens_k, nkv_attention_plan** out_plan)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_attention_plan_decode(ContextHandle context, NkvAttentionOptions* options, int numHeadsQ,
        int numHeadsKv, int headDim, int batch, int qLen, int* seqlensK, out nint plan);

    /// <summary><c>nkv_status nkv_attention_plan_destroy(nkv_attention_plan* plan)</c>; only <see cref="AttentionPlanHandle"/> calls it.</summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_attention_plan_destroy(nint plan);

    /// <summary><c>nkv_status nkv_attention_plan_get_info(const nkv_attention_plan* plan, nkv_attention_plan_info* out_info)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_attention_plan_get_info(AttentionPlanHandle plan, NkvAttentionPlanInfo* info);

    /// <summary><c>nkv_status nkv_attention_varlen(nkv_attention_plan*, const nkv_tensor* q, k, v, o, lse)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_attention_varlen(AttentionPlanHandle plan, NkvTensor* q, NkvTensor* k, NkvTensor* v,
        NkvTensor* o, NkvTensor* lse);

    /// <summary><c>nkv_status nkv_attention_decode(nkv_attention_plan*, const nkv_tensor* q, k, v, o, lse)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_attention_decode(AttentionPlanHandle plan, NkvTensor* q, NkvTensor* k, NkvTensor* v,
        NkvTensor* o, NkvTensor* lse);

    /// <summary><c>nkv_status nkv_attention_decode_kv_pointers(nkv_attention_plan*, const nkv_tensor* q, const nkv_tensor* k_pointers, const nkv_tensor* v_pointers, int64_t token_stride, int64_t head_stride, const nkv_tensor* o, const nkv_tensor* lse)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_attention_decode_kv_pointers(AttentionPlanHandle plan, NkvTensor* q, NkvTensor* kPointers,
        NkvTensor* vPointers, long tokenStride, long headStride, NkvTensor* o, NkvTensor* lse);

    /// <summary><c>nkv_status nkv_attention_decode_paged(nkv_attention_plan*, const nkv_tensor* q, const nkv_tensor* k_pool, const nkv_tensor* v_pool, const nkv_tensor* block_table, const nkv_tensor* o, const nkv_tensor* lse)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_attention_decode_paged(AttentionPlanHandle plan, NkvTensor* q, NkvTensor* kPool,
        NkvTensor* vPool, NkvTensor* blockTable, NkvTensor* o, NkvTensor* lse);

    /// <summary><c>nkv_status nkv_attention_varlen_paged(nkv_attention_plan*, const nkv_tensor* q, const nkv_tensor* k_pool, const nkv_tensor* v_pool, const nkv_tensor* block_table, const nkv_tensor* o, const nkv_tensor* lse)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_attention_varlen_paged(AttentionPlanHandle plan, NkvTensor* q, NkvTensor* kPool,
        NkvTensor* vPool, NkvTensor* blockTable, NkvTensor* o, NkvTensor* lse);
}
