# -DNKV_SANITIZE=address,undefined builds the host code with those sanitizers (CPU backend debugging).
set(NKV_SANITIZE "" CACHE STRING "Comma-separated host sanitizers (address, undefined, thread)")
if(NKV_SANITIZE)
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${NKV_SANITIZE}> $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>)
  add_link_options(-fsanitize=${NKV_SANITIZE})
endif()
