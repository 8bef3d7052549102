namespace NativeKv;

/// <summary>Where a <see cref="QuantizedKvCache"/>'s memory comes from (<c>nkv_kv_memory</c>).</summary>
public enum KvMemory
{
    /// <summary>Every slot's memory allocated when the cache is created.</summary>
    Allocated = 0,

    /// <summary>
    /// vAttention's design: address space reserved for every slot, physical pages (2 MiB on CUDA GPUs; CUDA's virtual memory
    /// management, a memory file on the CPU backend) mapped as slots grow and returned when they are freed. The layouts and
    /// the kernels are the same.
    /// </summary>
    Virtual = 1,

    /// <summary>
    /// vLLM's design: the codes, groups (and BFP's float16 values) are a pool of pages of
    /// <see cref="QuantizedKvCacheOptions.PageSize"/> tokens that slots take as they grow and return when they are freed
    /// (an append that finds the pool short changes nothing); a block table lists each slot's pages. KIVI's residual
    /// windows stay per slot.
    /// </summary>
    Paged = 2,
}
