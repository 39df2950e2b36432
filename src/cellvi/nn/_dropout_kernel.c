/* Inverted dropout on the CPU in one pass: out = x * keep / (1 - p), with the scaled keep mask
 * written for the backward pass.
 *
 * cellvi compiles this file on first use (cellvi/utils/native.py) and calls it through ctypes
 * (cellvi/nn/dropout.py). The random bits come from a counter-based generator: 64-bit word w of
 * a call is splitmix64(seed + w * golden), and each word gives four 16-bit uniform integers;
 * an entry is kept when its integer is at or above `threshold`. The seed is drawn from torch's
 * generator by the caller, so torch.manual_seed makes the masks reproducible, and every word
 * is independent of the others, so the result does not depend on the number of threads.
 */
#include <stdint.h>

#define GOLDEN 0x9E3779B97F4A7C15ULL

static inline uint64_t splitmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* x, out, mask: n floats each (mask may alias nothing else); threshold in [0, 65536) */
void cellvi_dropout(int64_t n, const float *restrict x, float *restrict out,
                    float *restrict mask, uint64_t seed,
                    uint32_t threshold, float scale, int n_threads) {
    const int64_t n_full = n / 4;
#pragma omp parallel for simd schedule(static) num_threads(n_threads)
    for (int64_t w = 0; w < n_full; w++) {
        const uint64_t bits = splitmix64(seed + (uint64_t)w * GOLDEN);
        for (int lane = 0; lane < 4; lane++) {
            const uint32_t u = (uint32_t)(bits >> (16 * lane)) & 0xFFFFu;
            const float m = (float)(u >= threshold) * scale; /* branch-free */
            mask[4 * w + lane] = m;
            out[4 * w + lane] = x[4 * w + lane] * m;
        }
    }
    if (n_full * 4 < n) { /* the last, partial word */
        const uint64_t bits = splitmix64(seed + (uint64_t)n_full * GOLDEN);
        for (int64_t i = n_full * 4; i < n; i++) {
            const uint32_t u = (uint32_t)(bits >> (16 * (i - n_full * 4))) & 0xFFFFu;
            mask[i] = u >= threshold ? scale : 0.0f;
            out[i] = x[i] * mask[i];
        }
    }
}
