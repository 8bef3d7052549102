// The interop layer passes only blittable types, so the runtime's marshalling is switched off entirely; the
// [LibraryImport] source generator produces whatever little marshalling remains (strings, SafeHandles) at compile time.
[assembly: System.Runtime.CompilerServices.DisableRuntimeMarshalling]
