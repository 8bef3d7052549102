using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using NativeKv.Interop;

namespace NativeKv.Tests;

/// <summary>The managed mirror of nativekv.h agrees with the loaded library's own description of itself.</summary>
public sealed unsafe class AbiConformanceTests
{
    private static readonly Type[] Structs =
    [
        typeof(NkvTensor), typeof(NkvDeviceProperties), typeof(NkvContextOptions), typeof(NkvInt8QuantParams),
        typeof(NkvAttentionOptions), typeof(NkvAttentionPlanInfo), typeof(NkvPackPlanInfo), typeof(NkvPagedKvCacheOptions),
        typeof(NkvPagedKvCacheInfo), typeof(NkvVirtualKvCacheOptions), typeof(NkvVirtualKvCacheInfo),
        typeof(NkvQuantizedKvCacheOptions), typeof(NkvQuantizedKvCacheInfo),
    ];

    /// <summary>Each managed enum with the prefix of its C constants; members map by name (InvalidArgument → INVALID_ARGUMENT).</summary>
    private static readonly (Type Enum, string Prefix)[] Enums =
    [
        (typeof(NkvStatus), "NKV_STATUS_"), (typeof(DType), "NKV_DTYPE_"), (typeof(DeviceType), "NKV_DEVICE_"),
        (typeof(Backend), "NKV_BACKEND_"), (typeof(QuantAxis), "NKV_QUANT_AXIS_"), (typeof(AttentionKind), "NKV_ATTENTION_"),
        (typeof(PackArray), "NKV_PACK_"), (typeof(AttentionKernel), "NKV_ATTENTION_KERNEL_"),
        (typeof(PagedKvView), "NKV_PAGED_KV_"), (typeof(VirtualKvLayout), "NKV_VIRTUAL_KV_"),
        (typeof(VirtualKvView), "NKV_VIRTUAL_KV_"), (typeof(KvFormat), "NKV_KV_FORMAT_"),
        (typeof(QuantizedKvView), "NKV_QUANTIZED_KV_"), (typeof(KvValueFormat), "NKV_KV_VALUES_"), (typeof(RotaryPairs), "NKV_ROTARY_"), (typeof(KvMemory), "NKV_KV_MEMORY_"),
    ];

    /// <summary>Names whose C spelling is not the snake case of the C# one.</summary>
    private static readonly Dictionary<string, string> NameExceptions = new() { ["BFloat16"] = "BFLOAT16", ["UInt8"] = "UINT8" };

    [Fact]
    public void Every_export_has_a_LibraryImport_and_every_LibraryImport_is_exported()
    {
        var exported = new HashSet<string>();
        for (byte** name = NativeMethods.nkv_exported_functions(); *name != null; name++)
        {
            Assert.True(exported.Add(Marshal.PtrToStringUTF8((nint)(*name))!), "duplicate export name");
        }

        var declared = typeof(NativeMethods).GetMethods(BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic)
            .Select(method => (method, import: method.GetCustomAttribute<LibraryImportAttribute>()))
            .Where(pair => pair.import is not null)
            .Select(pair => pair.import!.EntryPoint ?? pair.method.Name)
            .ToHashSet();

        Assert.Empty(exported.Except(declared));
        Assert.Empty(declared.Except(exported));
        Assert.Equal(83, declared.Count); // every NKV_API function in nativekv.h today
    }

    [Fact]
    public void Every_LibraryImport_resolves_in_the_loaded_library()
    {
        nint library = NativeLibrary.Load(NativeLibraryInfo.LibraryPath);
        try
        {
            foreach (MethodInfo method in typeof(NativeMethods).GetMethods(BindingFlags.Static | BindingFlags.NonPublic))
            {
                if (method.GetCustomAttribute<LibraryImportAttribute>() is { } import)
                {
                    Assert.True(NativeLibrary.TryGetExport(library, import.EntryPoint ?? method.Name, out _), method.Name);
                }
            }
        }
        finally
        {
            NativeLibrary.Free(library);
        }
    }

    [Fact]
    public void Struct_sizes_and_field_offsets_match()
    {
        foreach (Type type in Structs)
        {
            string structName = SnakeCase(type.Name); // NkvInt8QuantParams → nkv_int8_quant_params
            int managedSize = (int)typeof(Unsafe).GetMethod(nameof(Unsafe.SizeOf))!.MakeGenericMethod(type).Invoke(null, null)!;
            Assert.True(managedSize == (int)NativeMethods.nkv_struct_size(structName), $"sizeof({structName})");
            Assert.Equal(Marshal.SizeOf(type), managedSize);

            foreach (FieldInfo field in type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic))
            {
                string fieldName = SnakeCase(field.Name);
                nuint nativeOffset = NativeMethods.nkv_struct_field_offset(structName, fieldName);
                Assert.True(nativeOffset != nuint.MaxValue, $"{structName}.{fieldName} is unknown to the library");
                Assert.True((nint)nativeOffset == Marshal.OffsetOf(type, field.Name), $"offsetof({structName}, {fieldName})");
            }
        }
    }

    [Fact]
    public void Unknown_struct_and_field_names_are_reported()
    {
        Assert.Equal(0u, NativeMethods.nkv_struct_size("nkv_no_such_struct"));
        Assert.Equal(nuint.MaxValue, NativeMethods.nkv_struct_field_offset("nkv_tensor", "no_such_field"));
        Assert.Equal(nuint.MaxValue, NativeMethods.nkv_struct_field_offset("nkv_no_such_struct", "data"));
    }

    [Fact]
    public void Enum_values_match()
    {
        foreach ((Type type, string prefix) in Enums)
        {
            foreach (string member in Enum.GetNames(type))
            {
                string constant = prefix + (NameExceptions.TryGetValue(member, out string? name) ? name : SnakeCase(member).ToUpperInvariant());
                NativeStatus.Check(NativeMethods.nkv_enum_value(constant, out long value));
                Assert.True(Convert.ToInt64(Enum.Parse(type, member)) == value, $"{type.Name}.{member} vs {constant} = {value}");
            }
        }
    }

    [Fact]
    public void Constants_match()
    {
        NativeStatus.Check(NativeMethods.nkv_enum_value("NKV_MAX_DIMS", out long maxDims));
        Assert.Equal(TensorView.MaxRank, maxDims);
        NativeStatus.Check(NativeMethods.nkv_enum_value("NKV_ABI_VERSION", out long abi));
        Assert.Equal(NativeLibraryInfo.ExpectedAbiVersion, (uint)abi);
        Assert.Equal(NkvStatus.InvalidArgument, NativeMethods.nkv_enum_value("NKV_NO_SUCH_CONSTANT", out _));
    }

    [Fact]
    public void Dtype_sizes_match()
    {
        foreach (DType dtype in Enum.GetValues<DType>())
        {
            Assert.Equal((nuint)DTypes.SizeOf(dtype), NativeMethods.nkv_dtype_size((int)dtype));
        }
        Assert.Equal(0u, NativeMethods.nkv_dtype_size(99));
        Assert.Equal(DType.BFloat16, DTypes.Of<BFloat16>());
        Assert.Equal(DType.Int8, DTypes.Of<sbyte>());
    }

    [Fact]
    public void Status_names_are_the_C_constants()
    {
        foreach (NkvStatus status in Enum.GetValues<NkvStatus>())
        {
            Assert.Equal("NKV_STATUS_" + SnakeCase(status.ToString()).ToUpperInvariant(), NativeStatus.StatusName(status));
        }
    }

    [Fact]
    public void Versions_match_the_managed_assembly()
    {
        Assert.Equal(NativeLibraryInfo.ExpectedAbiVersion, NativeLibraryInfo.AbiVersion);
        Version managed = typeof(Context).Assembly.GetName().Version!;
        Assert.Equal($"{managed.Major}.{managed.Minor}.{managed.Build}", NativeLibraryInfo.Version);
        Assert.True(File.Exists(NativeLibraryInfo.LibraryPath), NativeLibraryInfo.LibraryPath);
    }

    /// <summary>PascalCase to snake_case: ComputeCapabilityMajor → compute_capability_major, L2CacheBytes → l2_cache_bytes, QLen → q_len.</summary>
    private static string SnakeCase(string name)
    {
        var builder = new StringBuilder();
        for (int i = 0; i < name.Length; i++)
        {
            // A capital starts a word after a lower-case letter or a digit, and before a lower-case letter (QLen: Q, Len).
            if (i > 0 && char.IsUpper(name[i]) &&
                (char.IsLower(name[i - 1]) || char.IsDigit(name[i - 1]) || (i + 1 < name.Length && char.IsLower(name[i + 1]))))
            {
                builder.Append('_');
            }
            builder.Append(char.ToLowerInvariant(name[i]));
        }
        return builder.ToString();
    }
}
