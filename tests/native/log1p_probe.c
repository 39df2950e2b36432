/* The log1p of the NB kernel (_nb_kernel.c, included whole) over arrays, in the same kind of
 * `omp simd` loop as the kernel's, for tests/native/test_log1p.py. Compiled with
 * -I <the kernel's folder> and the flags of the build under test. */
#include "_nb_kernel.c"

void probe_log1pf(int64_t n, const float *restrict x, float *restrict y) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = cellvi_log1pf(x[i]);
}

void probe_log1p(int64_t n, const double *restrict x, double *restrict y) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = cellvi_log1p(x[i]);
}
