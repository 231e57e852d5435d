// Process-wide glibc malloc settings for processes that run tensor code (issue 20).
//
// libtorch's CPU allocator takes every tensor from malloc. Under glibc's defaults a forward's
// larger temporaries (≥ 128 KiB at first, a threshold glibc raises only as such blocks are freed)
// are mmap'ed and unmapped on every call, and freed heap memory above 128 KiB is returned to the
// kernel at once — so each forward pays page faults to get zeroed pages back. Measured by
// search-bench on the bundled model (2 threads): the dense forward over 64 samples took 204 ms
// and 4.4 s of a 9.4 s run were system time; with the settings below, 128 ms and 0.5 s.
//
// TuneMallocForTensors() raises the mmap threshold to 256 MiB (a tensor that large is rare and
// long-lived: weights), keeps up to 1 GiB of freed memory before trimming and pads heap growth
// by 64 MiB. The process keeps at most that much freed memory; nothing else changes. The
// environment's MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_, when set,
// win (an operator's explicit choice). Call it first in main(), before any thread starts.
#ifndef PRUNESVC_COMMON_MALLOC_TUNING_H_
#define PRUNESVC_COMMON_MALLOC_TUNING_H_

namespace prunesvc {

void TuneMallocForTensors();

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_MALLOC_TUNING_H_
