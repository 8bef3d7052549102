using System.Runtime.InteropServices;
using NativeKv.Interop;

namespace NativeKv.Tests;

public sealed class LibraryLoadingTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("nativekv-loader-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void Failure_names_the_rid_every_path_and_each_loader_message()
    {
        string missingFile = Path.Combine(_root, "nowhere", "libnativekv.so");
        string emptyDirectory = Directory.CreateDirectory(Path.Combine(_root, "empty")).FullName;
        string brokenDirectory = Directory.CreateDirectory(Path.Combine(_root, "broken")).FullName;
        File.WriteAllText(Path.Combine(brokenDirectory, NativeLibraryLoader.FileName), "not an ELF file");

        var error = Assert.Throws<NativeKvLibraryNotFoundException>(() =>
            NativeLibraryLoader.Load(missingFile, [emptyDirectory, brokenDirectory], searchSystem: false));

        Assert.IsAssignableFrom<DllNotFoundException>(error);
        Assert.Equal(RuntimeInformation.RuntimeIdentifier, error.RuntimeIdentifier);
        Assert.Contains(RuntimeInformation.RuntimeIdentifier, error.Message);
        Assert.Contains(missingFile, error.Message);
        Assert.Contains(Path.Combine(emptyDirectory, NativeLibraryLoader.FileName), error.Message);
        Assert.Contains(Path.Combine(brokenDirectory, NativeLibraryLoader.FileName), error.Message);
        Assert.Contains(NativeLibraryLoader.EnvironmentVariable, error.Message);
        Assert.Equal(3, error.Attempts.Count);
        string brokenAttempt = error.Attempts[2];
        Assert.DoesNotContain(": not found", brokenAttempt); // it exists; the loader's own message explains the failure
        Assert.True(brokenAttempt.Length > Path.Combine(brokenDirectory, NativeLibraryLoader.FileName).Length + 10, brokenAttempt);
    }

    [Fact]
    public void The_environment_variable_may_name_a_directory()
    {
        var error = Assert.Throws<NativeKvLibraryNotFoundException>(() =>
            NativeLibraryLoader.Load(_root, [], searchSystem: false));
        Assert.Equal($"{Path.Combine(_root, NativeLibraryLoader.FileName)}: not found", Assert.Single(error.Attempts));
    }

    [Fact]
    public void The_first_usable_candidate_wins()
    {
        string real = NativeLibraryInfo.LibraryPath;
        (nint handle, string path) = NativeLibraryLoader.Load(Path.Combine(_root, "missing.so"), [Path.GetDirectoryName(real)!], searchSystem: false);
        Assert.NotEqual(0, handle);
        Assert.Equal(Path.Combine(Path.GetDirectoryName(real)!, NativeLibraryLoader.FileName), path);
        NativeLibrary.Free(handle);

        (handle, path) = NativeLibraryLoader.Load(real, [], searchSystem: false);
        Assert.Equal(real, path);
        NativeLibrary.Free(handle);
    }

    [Fact]
    public void Default_probe_directories_cover_the_rid_folder_and_the_app_folder()
    {
        IReadOnlyList<string> directories = NativeLibraryLoader.DefaultProbeDirectories();
        string assemblyDirectory = Path.GetDirectoryName(typeof(Context).Assembly.Location)!;
        Assert.Equal(Path.Combine(assemblyDirectory, "runtimes", RuntimeInformation.RuntimeIdentifier, "native"), directories[0]);
        Assert.Contains(Path.Combine(assemblyDirectory, "runtimes", "linux-x64", "native"), directories);
        Assert.Contains(AppContext.BaseDirectory, directories);
    }

    [Fact]
    public void An_abi_mismatch_message_states_both_versions()
    {
        Assert.Null(NativeLibraryLoader.DescribeAbiMismatch(NativeLibraryInfo.ExpectedAbiVersion, "0.1.0"));
        string message = NativeLibraryLoader.DescribeAbiMismatch(7, "3.2.1")!;
        Assert.Contains("ABI version 7", message);
        Assert.Contains($"ABI version {NativeLibraryInfo.ExpectedAbiVersion}", message);
        Assert.Contains("3.2.1", message);
    }

    [Fact]
    public void The_loaded_library_is_the_one_the_environment_names()
    {
        string? configured = Environment.GetEnvironmentVariable(NativeLibraryLoader.EnvironmentVariable);
        Assert.SkipWhen(string.IsNullOrEmpty(configured), $"{NativeLibraryLoader.EnvironmentVariable} is not set");
        string expected = Directory.Exists(configured) ? Path.Combine(configured, NativeLibraryLoader.FileName) : configured;
        Assert.Equal(Path.GetFullPath(expected), Path.GetFullPath(NativeLibraryInfo.LibraryPath));
    }
}
