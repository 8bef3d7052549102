using System.Runtime.InteropServices;

namespace NativeKv.Interop;

internal static unsafe partial class NativeMethods
{
    /// <summary><c>size_t nkv_struct_size(const char* struct_name)</c></summary>
    [LibraryImport(LibraryName, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial nuint nkv_struct_size(string structName);

    /// <summary><c>size_t nkv_struct_field_offset(const char* struct_name, const char* field_name)</c></summary>
    [LibraryImport(LibraryName, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial nuint nkv_struct_field_offset(string structName, string fieldName);

    /// <summary><c>nkv_status nkv_enum_value(const char* constant_name, int64_t* out_value)</c></summary>
    [LibraryImport(LibraryName, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial NkvStatus nkv_enum_value(string constantName, out long value);

    /// <summary><c>const char* const* nkv_exported_functions(void)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial byte** nkv_exported_functions();
}
