using System.Reflection;
using System.Runtime.InteropServices;

namespace NativeKv.Interop;

/// <summary>
/// Finds libnativekv, checks its ABI version and hands it to the runtime through a DllImport resolver, so that a
/// missing or stale native library fails once, with every place that was searched in the message.
/// </summary>
internal static unsafe class NativeLibraryLoader
{
    internal const string EnvironmentVariable = "NATIVEKV_LIBRARY_PATH";

    private static readonly Lazy<(nint Handle, string Path)> s_library =
        new(() => Load(Environment.GetEnvironmentVariable(EnvironmentVariable), DefaultProbeDirectories()));

    /// <summary>The file name of the native library on this operating system.</summary>
    internal static string FileName =>
        OperatingSystem.IsWindows() ? "nativekv.dll" : OperatingSystem.IsMacOS() ? "libnativekv.dylib" : "libnativekv.so";

    /// <summary>The runtime identifier native assets are looked up for.</summary>
    internal static string RuntimeIdentifier => RuntimeInformation.RuntimeIdentifier;

    /// <summary>The path the library was loaded from (loads it when that has not happened yet).</summary>
    internal static string LoadedPath => s_library.Value.Path;

    internal static void Install() => NativeLibrary.SetDllImportResolver(typeof(NativeLibraryLoader).Assembly, Resolve);

    private static nint Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath) =>
        libraryName == NativeMethods.LibraryName ? s_library.Value.Handle : 0;

    /// <summary>
    /// Folders searched after <see cref="EnvironmentVariable"/>: runtimes/&lt;rid&gt;/native and the portable
    /// runtimes/&lt;os&gt;-&lt;arch&gt;/native next to this assembly, the app folder, then the host's native search
    /// folders (from the app's deps.json).
    /// </summary>
    internal static IReadOnlyList<string> DefaultProbeDirectories()
    {
        string baseDirectory = AppContext.BaseDirectory;
#pragma warning disable IL3000 // empty in single-file apps, handled by falling back to the app folder
        string location = typeof(NativeLibraryLoader).Assembly.Location;
#pragma warning restore IL3000
        string assemblyDirectory = Path.GetDirectoryName(location) is { Length: > 0 } directory ? directory : baseDirectory;
        var directories = new List<string>
        {
            Path.Combine(assemblyDirectory, "runtimes", RuntimeIdentifier, "native"),
            Path.Combine(assemblyDirectory, "runtimes", PortableRuntimeIdentifier(), "native"),
            baseDirectory,
        };
        if (AppContext.GetData("NATIVE_DLL_SEARCH_DIRECTORIES") is string hostDirectories)
        {
            directories.AddRange(hostDirectories.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries));
        }
        return directories;
    }

    /// <summary>
    /// Loads the first candidate that is a NativeKv library of <see cref="NativeLibraryInfo.ExpectedAbiVersion"/>:
    /// <paramref name="environmentPath"/> (a file, or a folder holding <see cref="FileName"/>), then
    /// <see cref="FileName"/> in each of <paramref name="probeDirectories"/>, then, with <paramref name="searchSystem"/>,
    /// the bare name through the system loader's own search (LD_LIBRARY_PATH, ldconfig).
    /// </summary>
    /// <exception cref="NativeKvLibraryNotFoundException">No candidate could be used; the message lists each one.</exception>
    internal static (nint Handle, string Path) Load(string? environmentPath, IEnumerable<string> probeDirectories, bool searchSystem = true)
    {
        var candidates = new List<string>();
        if (!string.IsNullOrWhiteSpace(environmentPath))
        {
            candidates.Add(Directory.Exists(environmentPath) ? Path.Combine(environmentPath, FileName) : environmentPath);
        }
        foreach (string directory in probeDirectories)
        {
            candidates.Add(Path.Combine(directory, FileName));
        }

        var attempts = new List<string>();
        foreach (string candidate in candidates.Distinct(StringComparer.Ordinal))
        {
            if (!File.Exists(candidate))
            {
                attempts.Add($"{candidate}: not found");
                continue;
            }
            if (TryLoad(candidate, out nint handle, out string failure))
            {
                return (handle, candidate);
            }
            attempts.Add($"{candidate}: {failure}");
        }

        if (searchSystem)
        {
            if (TryLoad(FileName, out nint systemHandle, out string systemFailure))
            {
                return (systemHandle, FileName);
            }
            attempts.Add($"{FileName} (system loader search): {systemFailure}");
        }

        throw new NativeKvLibraryNotFoundException(RuntimeIdentifier, attempts);
    }

    /// <summary>The message for a library whose ABI differs from the managed one, or null when they agree.</summary>
    internal static string? DescribeAbiMismatch(uint nativeAbiVersion, string? nativeVersion) =>
        nativeAbiVersion == NativeLibraryInfo.ExpectedAbiVersion
            ? null
            : $"NativeKv native library {nativeVersion ?? "(unknown version)"} has ABI version {nativeAbiVersion}, but this " +
              $"NativeKv.dll {typeof(NativeLibraryLoader).Assembly.GetName().Version} needs ABI version " +
              $"{NativeLibraryInfo.ExpectedAbiVersion}; use matching versions of NativeKv and its native runtime package";

    private static bool TryLoad(string path, out nint handle, out string failure)
    {
        try
        {
            handle = NativeLibrary.Load(path);
        }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
        {
            (handle, failure) = (0, e.Message.ReplaceLineEndings(" ")); // one line per attempt in the final message
            return false;
        }

        // Read the version through raw exports: NativeMethods is not usable until this loader returns.
        if (!NativeLibrary.TryGetExport(handle, "nkv_abi_version", out nint abiVersionExport))
        {
            NativeLibrary.Free(handle);
            (handle, failure) = (0, "loaded, but it exports no nkv_abi_version: not a NativeKv library");
            return false;
        }
        uint abiVersion = ((delegate* unmanaged<uint>)abiVersionExport)();
        string? version = NativeLibrary.TryGetExport(handle, "nkv_version", out nint versionExport)
            ? Marshal.PtrToStringUTF8((nint)((delegate* unmanaged<byte*>)versionExport)())
            : null;
        if (DescribeAbiMismatch(abiVersion, version) is { } mismatch)
        {
            NativeLibrary.Free(handle);
            (handle, failure) = (0, "loaded, but " + mismatch);
            return false;
        }
        failure = "";
        return true;
    }

    private static string PortableRuntimeIdentifier()
    {
        string os = OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux";
        return $"{os}-{RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant()}";
    }
}
