/* Gather the rows of a CSR count matrix for one minibatch, in two calls:
 *
 *   cellvi_csr_count: the minibatch's row pointer (out_indptr, n + 1 entries) from the chosen
 *                     cells `rows`; returns the number of non-zero entries, -1 when a cell is
 *                     out of range, -2 when the CSR row pointer is not valid there (nothing
 *                     is then read outside the arrays).
 *   cellvi_csr_fill_i32 / _i64 (the CSR column indices' type): the coordinates of every
 *                     non-zero entry (minibatch row, column) and its value, and each cell's
 *                     total count.
 *
 * cellvi compiles this file on first use (cellvi/utils/native.py) and calls it through ctypes
 * (cellvi/data/loader.py); without a C compiler a few torch operations do the same. One pass
 * over the chosen rows replaces a dozen torch operations per minibatch.
 */
#include <stdint.h>

int64_t cellvi_csr_count(int64_t n, const int64_t *restrict rows, int64_t n_cells,
                         const int64_t *restrict indptr, int64_t nnz,
                         int64_t *restrict out_indptr) {
    out_indptr[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = rows[i];
        if (r < 0 || r >= n_cells) return -1;
        if (indptr[r] < 0 || indptr[r] > indptr[r + 1] || indptr[r + 1] > nnz) return -2;
        out_indptr[i + 1] = out_indptr[i] + (indptr[r + 1] - indptr[r]);
    }
    return out_indptr[n];
}

#define FILL(NAME, IDX_T)                                                                        \
    void NAME(int64_t n, const int64_t *restrict rows, const int64_t *restrict indptr,          \
              const IDX_T *restrict indices, const float *restrict values,                      \
              const int64_t *restrict out_indptr, int64_t *restrict out_rows,                    \
              int64_t *restrict out_cols, float *restrict out_values,                           \
              float *restrict out_totals) {                                                      \
        for (int64_t i = 0; i < n; i++) {                                                       \
            const int64_t start = indptr[rows[i]], k0 = out_indptr[i];                          \
            const int64_t len = out_indptr[i + 1] - k0;                                          \
            const IDX_T *restrict idx = indices + start;                                         \
            const float *restrict val = values + start;                                          \
            float total = 0.0f;                                                                  \
            for (int64_t k = 0; k < len; k++) {                                                  \
                out_rows[k0 + k] = i;                                                            \
                out_cols[k0 + k] = (int64_t)idx[k];                                              \
                out_values[k0 + k] = val[k];                                                     \
                total += val[k];                                                                 \
            }                                                                                    \
            out_totals[i] = total;                                                               \
        }                                                                                        \
    }

FILL(cellvi_csr_fill_i32, int32_t)
FILL(cellvi_csr_fill_i64, int64_t)
