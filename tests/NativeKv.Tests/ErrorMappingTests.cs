using NativeKv.Interop;

namespace NativeKv.Tests;

/// <summary>Bad arguments come back as typed exceptions whose message names the argument, and outputs stay as they were.</summary>
public sealed unsafe class ErrorMappingTests
{
    [Fact]
    public void Wrong_codes_dtype_is_an_invalid_argument_naming_codes()
    {
        using var context = Context.Cpu();
        float[] input = [1f, 2f, 3f, 4f];
        float[] wrongCodes = [9f, 9f, 9f, 9f];
        float[] scales = [7f, 7f];
        fixed (float* inputData = input)
        fixed (float* codesData = wrongCodes)
        fixed (float* scalesData = scales)
        {
            TensorView inputView = TensorView.FromPointer((nint)inputData, DType.Float32, DeviceType.Host, [2, 2]);
            TensorView codesView = TensorView.FromPointer((nint)codesData, DType.Float32, DeviceType.Host, [2, 2]);
            TensorView scalesView = TensorView.FromPointer((nint)scalesData, DType.Float32, DeviceType.Host, [2]);
            var error = Assert.Throws<NativeKvInvalidArgumentException>(() => Quant.Int8Quantize(context, inputView, codesView, scalesView));
            Assert.Equal(NkvStatus.InvalidArgument, error.Status);
            Assert.Contains("codes", error.NativeMessage);
            Assert.Contains("nkv_int8_quantize", error.NativeMessage);
            Assert.Contains(error.NativeMessage, error.Message);
        }
        Assert.Equal([9f, 9f, 9f, 9f], wrongCodes);
        Assert.Equal([7f, 7f], scales);
    }

    [Theory]
    [InlineData(-1f)]
    [InlineData(float.NaN)]
    [InlineData(float.NegativeInfinity)]
    public void A_bad_threshold_names_outlier_threshold_and_leaves_outputs_alone(float threshold)
    {
        using var context = Context.Cpu();
        sbyte[] codes = [5, 5, 5, 5];
        float[] scales = [3f, 3f];
        int[] columns = [8, 8];
        var error = Assert.Throws<NativeKvInvalidArgumentException>(() =>
            Quant.Int8Quantize(context, [1f, 2f, 3f, 4f], 2, 2, codes, scales, QuantAxis.Row, threshold, columns));
        Assert.Contains("outlier_threshold", error.NativeMessage);
        Assert.Equal([5, 5, 5, 5], codes);
        Assert.Equal([3f, 3f], scales);
        Assert.Equal([8, 8], columns);
    }

    [Fact]
    public void An_undefined_axis_names_axis()
    {
        using var context = Context.Cpu();
        sbyte[] codes = [5, 5];
        var error = Assert.Throws<NativeKvInvalidArgumentException>(() =>
            Quant.Int8Quantize(context, [1f, 2f], 1, 2, codes, new float[2], (QuantAxis)7));
        Assert.Contains("axis", error.NativeMessage);
        Assert.Equal([5, 5], codes);
    }

    [Fact]
    public void Null_data_names_the_tensor()
    {
        using var context = Context.Cpu();
        float[] scales = [3f];
        sbyte[] codes = [4];
        fixed (float* scalesData = scales)
        fixed (sbyte* codesData = codes)
        {
            TensorView nullInput = TensorView.FromPointer(0, DType.Float16, DeviceType.Host, [1, 1]);
            TensorView codesView = TensorView.FromPointer((nint)codesData, DType.Int8, DeviceType.Host, [1, 1]);
            TensorView scalesView = TensorView.FromPointer((nint)scalesData, DType.Float32, DeviceType.Host, [1]);
            var error = Assert.Throws<NativeKvInvalidArgumentException>(() => Quant.Int8Quantize(context, nullInput, codesView, scalesView));
            Assert.Contains("input", error.NativeMessage);
        }
        Assert.Equal(4, codes[0]);
        Assert.Equal(3f, scales[0]);
    }

    [Fact]
    public void Device_memory_on_a_cpu_context_is_rejected()
    {
        using var context = Context.Cpu();
        using var codes = DeviceBuffer<sbyte>.Allocate(context, 4);
        using var scales = DeviceBuffer<float>.Allocate(context, 2);
        var error = Assert.Throws<NativeKvInvalidArgumentException>(() => Quant.Int8Quantize(context,
            TensorView.FromPointer(0x1000, DType.Float32, DeviceType.Cuda, [2, 2]), codes.AsTensor(2, 2), scales.AsTensor(2)));
        Assert.Contains("input", error.NativeMessage);
    }

    [Fact]
    public void Mismatched_scales_shape_names_scales()
    {
        using var context = Context.Cpu();
        using var input = DeviceBuffer<float>.Allocate(context, 6);
        using var codes = DeviceBuffer<sbyte>.Allocate(context, 6);
        using var scales = DeviceBuffer<float>.Allocate(context, 3);
        var error = Assert.Throws<NativeKvInvalidArgumentException>(() =>
            Quant.Int8Quantize(context, input.AsTensor(2, 3), codes.AsTensor(2, 3), scales.AsTensor(3), QuantAxis.Row));
        Assert.Contains("scales", error.NativeMessage);
    }

    [Fact]
    public void Undefined_backend_is_an_invalid_argument_naming_backend()
    {
        var error = Assert.Throws<NativeKvInvalidArgumentException>(() => Context.Create((Backend)9));
        Assert.Contains("backend", error.NativeMessage);
    }

    [Fact]
    public void Cuda_without_a_device_is_NoDevice_with_the_reason()
    {
        Assert.SkipWhen(Devices.CudaDeviceCount > 0, "a CUDA device is present");
        var error = Assert.Throws<NativeKvNoDeviceException>(() => Context.Cuda());
        Assert.Equal(NkvStatus.NoDevice, error.Status);
        Assert.False(string.IsNullOrWhiteSpace(error.NativeMessage));
        Assert.False(string.IsNullOrWhiteSpace(Devices.CudaUnavailableReason));
    }

    [Fact]
    public void Properties_of_a_missing_device_throw()
    {
        var error = Assert.ThrowsAny<NativeKvException>(() => Devices.GetProperties(Devices.CudaDeviceCount));
        Assert.NotEqual(NkvStatus.Success, error.Status);
    }

    [Fact]
    public void Managed_length_checks_name_the_span()
    {
        using var context = Context.Cpu();
        sbyte[] codes = [1, 1, 1];
        Assert.Throws<ArgumentException>("codes", () => Quant.Int8Quantize(context, [1f, 2f, 3f, 4f], 2, 2, codes, new float[2]));
        Assert.Throws<ArgumentException>("input", () => Quant.Int8Quantize(context, [1f, 2f, 3f], 2, 2, new sbyte[4], new float[2]));
        Assert.Throws<ArgumentException>("scales", () => Quant.Int8Quantize(context, [1f, 2f, 3f, 4f], 2, 2, new sbyte[4], new float[1]));
        Assert.Throws<ArgumentException>("outlierColumns",
            () => Quant.Int8Quantize(context, [1f, 2f, 3f, 4f], 2, 2, new sbyte[4], new float[2], QuantAxis.Row, 1f, new int[1]));
        Assert.Throws<ArgumentOutOfRangeException>("rows", () => Quant.Int8Quantize(context, ReadOnlySpan<float>.Empty, -1, 2, new sbyte[4], new float[2]));
        Assert.Equal([1, 1, 1], codes);
    }

    [Fact]
    public void Every_status_maps_to_its_exception_type()
    {
        var expected = new Dictionary<NkvStatus, Type>
        {
            [NkvStatus.InvalidArgument] = typeof(NativeKvInvalidArgumentException),
            [NkvStatus.NotSupported] = typeof(NativeKvNotSupportedException),
            [NkvStatus.NoDevice] = typeof(NativeKvNoDeviceException),
            [NkvStatus.OutOfMemory] = typeof(NativeKvOutOfMemoryException),
            [NkvStatus.DeviceError] = typeof(NativeKvDeviceException),
            [NkvStatus.Internal] = typeof(NativeKvInternalException),
            [(NkvStatus)99] = typeof(NativeKvException),
        };
        foreach ((NkvStatus status, Type type) in expected)
        {
            NativeKvException exception = NativeStatus.CreateException(status);
            Assert.IsType(type, exception, exactMatch: true);
            Assert.Equal(status, exception.Status);
        }
        Assert.Equal(Enum.GetValues<NkvStatus>().Length - 1, expected.Count - 1);
        NativeStatus.Check(NkvStatus.Success);
    }
}
