// The portable level of the kernels (see kernels_impl.h): plain C and clang vector extensions,
// compiled for the baseline target (SSE2 on x86-64, NEON on arm64). Always available.
#include "cw_internal.h"

#define CW_STR2(x) #x
#define CW_STR(x) CW_STR2(x)

#define CW_ISA portable
#if defined(__aarch64__)
#define CW_VL 4
#define CW_MR 4
#define CW_NT 4
#else
#define CW_VL 4
#define CW_MR 4
#define CW_NT 2
#endif
#define CW_X86 0
#define CW_VNNI 0
#include "kernels_impl.h"
