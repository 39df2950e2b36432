/* The step after a hidden layer's matrix product, in training mode, fused into one forward
 * and one backward function:
 *
 *   v    = a + sum_t table[offset_t + code_t]     (categorical covariates as learned biases)
 *   xhat = (v - mean(v)) / sqrt(var(v) + eps)      (batch normalisation, batch statistics)
 *   y    = gamma * xhat + beta
 *   out  = relu(y) * keep / (1 - p)                (ReLU, then inverted dropout)
 *
 * per column of the (cells x features) matrix a. The running mean and variance are updated as
 * torch.nn.BatchNorm1d does (momentum, unbiased variance). relu keeps NaN (NaN stays NaN) and a
 * dropped NaN stays NaN (NaN * 0), as in torch, so a diverging model still shows a NaN loss.
 *
 * cellvi compiles this file on first use (cellvi/utils/native.py) and calls it through ctypes
 * (cellvi/nn/fused_hidden.py); without a C compiler the torch modules run instead.
 *
 * Each thread owns a set of whole columns, and every column is reduced in row order by one
 * thread, so results do not depend on the number of threads. The dropout bit of entry (i, j)
 * is a hash of (i, j) and of the seed the caller draws from torch's generator.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLOCK 16 /* threads split the columns in multiples of one AVX-512 register */

/* lowbias32 (C. Wellons): a bijective 32-bit mixer with low bias */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

static inline uint32_t row_key(int64_t i, uint64_t seed) {
    return mix32(mix32((uint32_t)i ^ (uint32_t)seed) + (uint32_t)(i >> 32) + (uint32_t)(seed >> 32));
}

/* 16-bit uniform integer of column j in the row with key k */
static inline uint32_t uniform16(uint32_t k, int64_t j) {
    return mix32(k + (uint32_t)j * 0x9E3779B9U) >> 16;
}

/* The keep mask the forward pass draws (1 kept, 0 dropped), for tests. */
void cellvi_hidden_dropout_mask(int64_t n, int64_t d, uint64_t seed, uint32_t threshold,
                                uint8_t *keep) {
    for (int64_t i = 0; i < n; i++) {
        const uint32_t k = row_key(i, seed);
        for (int64_t j = 0; j < d; j++) keep[i * d + j] = uniform16(k, j) >= threshold;
    }
}

/* The columns of the calling thread of a parallel region: whole blocks of BLOCK columns, as
 * even a share as possible. */
static inline void own_columns(int64_t d, int64_t *c0, int64_t *c1) {
    int t = 0, n_threads = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    n_threads = omp_get_num_threads();
#endif
    const int64_t blocks = (d + BLOCK - 1) / BLOCK;
    const int64_t e = blocks * (t + 1) / n_threads * BLOCK;
    *c0 = blocks * t / n_threads * BLOCK;
    *c1 = e < d ? e : d;
}

/* Work of one thread: columns c0 .. c1 of every row, visited row by row (contiguous memory;
 * walking one narrow column block down the rows would stride by a power of two and thrash the
 * caches). sum, ssq: 2 * (c1 - c0) doubles of scratch; mean, inv: 2 * (c1 - c0) floats. */
static void forward_columns(int64_t n, int64_t d, int64_t c0, int64_t c1,
                            const float *restrict a, int n_tables, const int64_t *restrict codes,
                            const int64_t *restrict offsets, const float *restrict table,
                            const float *restrict gamma, const float *restrict beta,
                            float *restrict running_mean, float *restrict running_var,
                            float momentum, float eps, uint64_t seed, uint32_t threshold,
                            float scale, float *restrict out, float *restrict xhat,
                            float *restrict keep, float *restrict invstd,
                            double *restrict sum, double *restrict ssq, float *restrict mean) {
    const int64_t w = c1 - c0;
    for (int64_t j = 0; j < w; j++) sum[j] = ssq[j] = 0.0;
    /* pass 1: v = a + covariate biases, kept in out; column sums */
    for (int64_t i = 0; i < n; i++) {
        const float *restrict ai = a + i * d + c0;
        float *restrict o = out + i * d + c0;
#pragma omp simd
        for (int64_t j = 0; j < w; j++) o[j] = ai[j];
        for (int tb = 0; tb < n_tables; tb++) {
            const float *restrict row = table + (offsets[tb] + codes[i * n_tables + tb]) * d + c0;
#pragma omp simd
            for (int64_t j = 0; j < w; j++) o[j] += row[j];
        }
#pragma omp simd
        for (int64_t j = 0; j < w; j++) sum[j] += o[j];
    }
    for (int64_t j = 0; j < w; j++) mean[j] = (float)(sum[j] / n);
    /* pass 2: sum of squared deviations (two passes: no cancellation) */
    for (int64_t i = 0; i < n; i++) {
        const float *restrict o = out + i * d + c0;
#pragma omp simd
        for (int64_t j = 0; j < w; j++) {
            const double dv = (double)(o[j] - mean[j]);
            ssq[j] += dv * dv;
        }
    }
    float *restrict inv = invstd + c0;
    const float *restrict g = gamma + c0, *restrict be = beta + c0;
    for (int64_t j = 0; j < w; j++) inv[j] = (float)(1.0 / sqrt(ssq[j] / n + eps));
    if (running_mean) {
        for (int64_t j = 0; j < w; j++) {
            const double unbiased = ssq[j] / (n - 1);
            running_mean[c0 + j] = (float)((1.0 - momentum) * running_mean[c0 + j] + momentum * (sum[j] / n));
            running_var[c0 + j] = (float)((1.0 - momentum) * running_var[c0 + j] + momentum * unbiased);
        }
    }
    /* pass 3: normalise, affine, ReLU, dropout */
    for (int64_t i = 0; i < n; i++) {
        float *restrict o = out + i * d + c0;
        float *restrict xh = xhat + i * d + c0;
        float *restrict kp = keep + i * d + c0;
        const uint32_t k = row_key(i, seed);
#pragma omp simd
        for (int64_t j = 0; j < w; j++) {
            const float x = (o[j] - mean[j]) * inv[j];
            const float y = g[j] * x + be[j];
            const float m = uniform16(k, c0 + j) >= threshold ? scale : 0.0f;
            const float r = y <= 0.0f ? 0.0f : y; /* NaN stays NaN */
            o[j] = r * m;
            xh[j] = x;
            kp[j] = y > 0.0f ? m : 0.0f;
        }
    }
}

/* Returns 0; 1 when a code is outside its table; 2 when scratch memory could not be
 * allocated (nothing is written in either case).
 *
 * a, out, xhat: n x d (n > 1). codes: n x n_tables (row-major), the code of table t in
 * [0, offsets[t+1] - offsets[t]); table: offsets[n_tables] x d. running_mean and running_var
 * are NULL when not tracked. keep (n x d): the derivative of out with respect to y (the dropout
 * scale where y > 0 and the entry is kept, else 0); invstd: d. xhat, keep and invstd are what
 * the backward pass needs.
 */
int cellvi_hidden_forward(int64_t n, int64_t d, const float *restrict a, int n_tables,
                          const int64_t *restrict codes, const int64_t *restrict offsets,
                          const float *restrict table, const float *restrict gamma,
                          const float *restrict beta, float *restrict running_mean,
                          float *restrict running_var, float momentum, float eps, uint64_t seed,
                          uint32_t threshold, float scale, float *restrict out,
                          float *restrict xhat, float *restrict keep, float *restrict invstd,
                          int n_threads) {
    for (int64_t i = 0; i < n * n_tables; i++) {
        const int t = (int)(i % n_tables);
        if (codes[i] < 0 || codes[i] >= offsets[t + 1] - offsets[t]) return 1;
    }
    double *scratch = malloc((size_t)d * (2 * sizeof(double) + sizeof(float)));
    if (!scratch) return 2;
    if (n_threads < 1) n_threads = 1;
#pragma omp parallel num_threads(n_threads)
    {
        int64_t c0, c1;
        own_columns(d, &c0, &c1);
        if (c1 > c0)
            forward_columns(n, d, c0, c1, a, n_tables, codes, offsets, table, gamma, beta,
                            running_mean, running_var, momentum, eps, seed, threshold, scale,
                            out, xhat, keep, invstd, scratch + c0, scratch + d + c0,
                            (float *)(scratch + 2 * d) + c0);
    }
    free(scratch);
    return 0;
}

static void backward_columns(int64_t n, int64_t d, int64_t c0, int64_t c1,
                             const float *restrict grad_out, const float *restrict xhat,
                             const float *restrict keep, const float *restrict invstd,
                             const float *restrict gamma, int n_tables,
                             const int64_t *restrict codes, const int64_t *restrict offsets,
                             float *restrict grad_a, float *restrict grad_gamma,
                             float *restrict grad_beta, float *restrict grad_table,
                             double *restrict sg, double *restrict sgx, float *restrict k,
                             float *restrict mg, float *restrict mgx) {
    const int64_t w = c1 - c0;
    for (int64_t j = 0; j < w; j++) sg[j] = sgx[j] = 0.0;
    /* pass 1: gradient at y (through dropout and ReLU), kept in grad_a; its sums */
    for (int64_t i = 0; i < n; i++) {
        const float *restrict go = grad_out + i * d + c0;
        const float *restrict xh = xhat + i * d + c0;
        const float *restrict kp = keep + i * d + c0;
        float *restrict ga = grad_a + i * d + c0;
#pragma omp simd
        for (int64_t j = 0; j < w; j++) {
            const float gy = go[j] * kp[j];
            ga[j] = gy;
            sg[j] += gy;
            sgx[j] += (double)(gy * xh[j]);
        }
    }
    for (int64_t j = 0; j < w; j++) {
        grad_beta[c0 + j] = (float)sg[j];
        grad_gamma[c0 + j] = (float)sgx[j];
        k[j] = gamma[c0 + j] * invstd[c0 + j];
        mg[j] = (float)(sg[j] / n);
        mgx[j] = (float)(sgx[j] / n);
    }
    /* pass 2: through the normalisation (batch statistics), and to the tables */
    for (int64_t i = 0; i < n; i++) {
        const float *restrict xh = xhat + i * d + c0;
        float *restrict ga = grad_a + i * d + c0;
#pragma omp simd
        for (int64_t j = 0; j < w; j++) ga[j] = k[j] * (ga[j] - mg[j] - xh[j] * mgx[j]);
        if (!grad_table) continue; /* the tables need no gradient (frozen covariates) */
        for (int tb = 0; tb < n_tables; tb++) {
            float *restrict row = grad_table + (offsets[tb] + codes[i * n_tables + tb]) * d + c0;
#pragma omp simd
            for (int64_t j = 0; j < w; j++) row[j] += ga[j];
        }
    }
}

/* Gradients of the forward pass from grad_out (n x d): grad_a (n x d), grad_gamma,
 * grad_beta (d) and grad_table (offsets[n_tables] x d, zeroed by the caller; NULL when the
 * tables need no gradient).
 * Returns 0, or 2 when scratch memory could not be allocated. */
int cellvi_hidden_backward(int64_t n, int64_t d, const float *restrict grad_out,
                           const float *restrict xhat, const float *restrict keep,
                           const float *restrict invstd, const float *restrict gamma,
                           int n_tables, const int64_t *restrict codes,
                           const int64_t *restrict offsets, float *restrict grad_a,
                           float *restrict grad_gamma, float *restrict grad_beta,
                           float *restrict grad_table, int n_threads) {
    double *scratch = malloc((size_t)d * (2 * sizeof(double) + 3 * sizeof(float)) + 16);
    if (!scratch) return 2;
    float *fs = (float *)(scratch + 2 * d);
    if (n_threads < 1) n_threads = 1;
#pragma omp parallel num_threads(n_threads)
    {
        int64_t c0, c1;
        own_columns(d, &c0, &c1);
        if (c1 > c0)
            backward_columns(n, d, c0, c1, grad_out, xhat, keep, invstd, gamma,
                             n_tables, codes, offsets, grad_a, grad_gamma, grad_beta,
                             grad_table, scratch + c0, scratch + d + c0, fs + c0,
                             fs + d + c0, fs + 2 * d + c0);
    }
    free(scratch);
    return 0;
}
