/* NKV_API marks the exported C functions; everything else in the library is hidden. */
#ifndef NATIVEKV_EXPORT_H
#define NATIVEKV_EXPORT_H

#if defined(_WIN32)
#  if defined(NKV_BUILDING_LIBRARY)
#    define NKV_API __declspec(dllexport)
#  else
#    define NKV_API __declspec(dllimport)
#  endif
#else
#  define NKV_API __attribute__((visibility("default")))
#endif

#endif /* NATIVEKV_EXPORT_H */
