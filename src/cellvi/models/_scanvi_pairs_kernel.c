/* scANVI's per-(cell, class) networks in training mode, fused: the network of q(z2 | z1, y),
 * the reparameterised draw of z2, the network of p(z1 | z2, y), and the two latent terms each
 * (cell, class) pair contributes, forward and backward.
 *
 * For pair p (cell c = cells[p], class y = ys[p]) and each of the two networks (E: input
 * x = z1[c]; D: input x = z2[p]), one hidden layer of width H:
 *
 *   v    = W1 x + b1 + T[y]                      (the class as a learned bias)
 *   xhat = (v - mean(v)) / sqrt(var(v) + eps)    (batch statistics over the P pairs)
 *   h    = relu(gamma * xhat + beta) * keep      (inverted dropout; D has none)
 *   o    = W2 h + b2,  m = o[:L],  s2 = exp(o[L:]) + VAR_EPS
 *
 * with z2 = m2 + sqrt(s2_E) * eps[p], and per pair
 *
 *   kl[p]    = KL(N(m2, s2_E) || N(0, I)) = 0.5 sum (s2_E + m2^2 - 1 - log s2_E)
 *   log_p[p] = log N(z1[c]; m1, s2_D)
 *
 * In torch this is some thirty operations per step, each with its own pass over a P x H
 * matrix and its own dispatch; the thin matrix products (inner dimension L or 2L) run far
 * below the machine's speed. Here each pair is one pass per network forward (after the batch
 * statistics) and two backward, the matrix products in small register tiles. The forward pass
 * keeps xhat and h of each network (P x H each) for the backward pass.
 *
 * The dropout bit of entry (p, j) is the one cellvi/nn/_hidden_kernel.c draws for row p and
 * column j from the same seed (the same hash), so the fused networks draw the masks the
 * unfused kernel path draws for the same generator state.
 *
 * Threads: the rows are cut into at most NCH chunks of whole RB-row blocks, a cut that depends
 * on P alone; each chunk sums its own batch statistics and weight gradients, and the chunks'
 * sums are added in chunk order, the (cell, class) pairs' gradients at z1 in pair order. The
 * results are the same bit for bit for any number of threads, and without OpenMP.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VAR_EPS 1e-4f /* cellvi.nn.encoder.VAR_EPS */
#define HALF_LOG_2PI 0.918938533204672742f

/* One network as the caller holds it (torch's layouts, float32, contiguous). */
typedef struct {
    const float *w1;                 /* H x L: the first layer's weight */
    const float *b1;                 /* H */
    const float *table;              /* K x H: one bias row per class */
    const float *gamma, *beta;       /* H: batch norm's scale and shift */
    float *running_mean;             /* H, or NULL: not tracked */
    float *running_var;              /* H, or NULL */
    const float *wm, *bm, *wv, *bv;  /* L x H and L: the mean head, the log-variance head */
    float *mean, *invstd;            /* H: written by the forward pass, read by the backward */
    float *xhat, *h;                 /* P x H: written by the forward pass, read by the backward */
    /* gradients, written by the backward pass (same shapes as the parameters) */
    float *g_w1, *g_b1, *g_table, *g_gamma, *g_beta, *g_wm, *g_bm, *g_wv, *g_bv;
    uint64_t seed;                   /* dropout */
    uint32_t threshold;              /* keep when the 16-bit draw is >= threshold (0: none) */
    float scale;                     /* kept entries' scale */
} net_args;

/* The same network in the kernel's working layout: W1 transposed, both heads stacked, and
 * the gradients of those accumulated here before they are written back. */
typedef struct {
    const net_args *a;
    float *w1t;  /* L x H */
    float *w2;   /* 2L x H */
    float *b2;   /* 2L */
    float *w2t;  /* H x pad(2L): the heads transposed, zero-padded to whole vectors */
    float *w1p;  /* H x pad(L): W1 zero-padded */
    float *g_w1t, *g_w2, *g_b2;
} net;

#define VEC 16 /* floats per tile column block (one AVX-512 register) */
static inline int64_t pad(int64_t n) { return (n + VEC - 1) / VEC * VEC; }

/* Rows per block in the backward pass: the outer products of a block's rows go into the weight
 * gradients together, so each gradient row is loaded and stored once per block. */
#define RB 16
#define NCH 8 /* chunks of rows at most (see the top) */

/* The rows' chunks: chunk c is rows start[c] <= p < start[c + 1], whole blocks of RB rows. */
typedef struct {
    int64_t n;
    int64_t start[NCH + 1];
} chunks;

static void chunks_of(chunks *ch, int64_t P) {
    const int64_t blocks = (P + RB - 1) / RB;
    ch->n = blocks < NCH ? blocks : NCH;
    for (int64_t c = 0; c <= ch->n; c++) {
        const int64_t row = blocks * c / ch->n * RB;
        ch->start[c] = row < P ? row : P;
    }
}

static int net_open(net *nt, const net_args *a, int64_t L, int64_t H, int grads) {
    const int64_t O = 2 * L;
    const size_t n = (size_t)(L * H + O * H + O) * (grads ? 2 : 1) + (size_t)(H * (pad(O) + pad(L)));
    nt->a = a;
    nt->w1t = malloc(n * sizeof(float));
    if (!nt->w1t) return 0;
    nt->w2 = nt->w1t + L * H;
    nt->b2 = nt->w2 + O * H;
    nt->w2t = nt->b2 + O;
    nt->w1p = nt->w2t + H * pad(O);
    memset(nt->w2t, 0, (size_t)(H * (pad(O) + pad(L))) * sizeof(float));
    for (int64_t j = 0; j < H; j++)
        for (int64_t l = 0; l < L; l++) {
            nt->w1t[l * H + j] = a->w1[j * L + l];
            nt->w1p[j * pad(L) + l] = a->w1[j * L + l];
            nt->w2t[j * pad(O) + l] = a->wm[l * H + j];
            nt->w2t[j * pad(O) + L + l] = a->wv[l * H + j];
        }
    memcpy(nt->w2, a->wm, (size_t)(L * H) * sizeof(float));
    memcpy(nt->w2 + L * H, a->wv, (size_t)(L * H) * sizeof(float));
    memcpy(nt->b2, a->bm, (size_t)L * sizeof(float));
    memcpy(nt->b2 + L, a->bv, (size_t)L * sizeof(float));
    if (grads) {
        nt->g_w1t = nt->w1p + H * pad(L);
        nt->g_w2 = nt->g_w1t + L * H;
        nt->g_b2 = nt->g_w2 + O * H;
        memset(nt->g_w1t, 0, (size_t)(L * H + O * H + O) * sizeof(float));
    } else {
        nt->g_w1t = nt->g_w2 = nt->g_b2 = NULL;
    }
    return 1;
}

/* Writes the accumulated gradients (if any) back in the caller's layouts, and frees. */
static void net_close(net *nt, int64_t L, int64_t H) {
    const net_args *a = nt->a;
    if (nt->g_w1t) {
        for (int64_t j = 0; j < H; j++)
            for (int64_t l = 0; l < L; l++) a->g_w1[j * L + l] = nt->g_w1t[l * H + j];
        memcpy(a->g_wm, nt->g_w2, (size_t)(L * H) * sizeof(float));
        memcpy(a->g_wv, nt->g_w2 + L * H, (size_t)(L * H) * sizeof(float));
        memcpy(a->g_bm, nt->g_b2, (size_t)L * sizeof(float));
        memcpy(a->g_bv, nt->g_b2 + L, (size_t)L * sizeof(float));
    }
    free(nt->w1t);
}

/* Both networks opened (net_open), or neither: returns 0 when memory ran out. */
static int nets_open(net *enc, net *dec, const net_args *enc_args, const net_args *dec_args,
                     int64_t L, int64_t H, int grads) {
    if (!net_open(enc, enc_args, L, H, grads)) return 0;
    if (net_open(dec, dec_args, L, H, grads)) return 1;
    free(enc->w1t);
    return 0;
}

/* lowbias32 (C. Wellons), as in _hidden_kernel.c */
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

static inline uint32_t uniform16(uint32_t k, int64_t j) {
    return mix32(k + (uint32_t)j * 0x9E3779B9U) >> 16;
}

/* v = W1 x + b1 + T[y] for one row, 32 columns at a time in registers */
static inline void pre_activation(const net *nt, const float *restrict x, int64_t y, int64_t L,
                                  int64_t H, float *restrict v) {
    const float *restrict t = nt->a->table + y * H;
    const float *restrict b = nt->a->b1;
    int64_t j0 = 0;
    for (; j0 + 32 <= H; j0 += 32) {
        float acc[32];
#pragma omp simd
        for (int jj = 0; jj < 32; jj++) acc[jj] = b[j0 + jj] + t[j0 + jj];
        for (int64_t l = 0; l < L; l++) {
            const float xl = x[l];
            const float *restrict w = nt->w1t + l * H + j0;
#pragma omp simd
            for (int jj = 0; jj < 32; jj++) acc[jj] += w[jj] * xl;
        }
#pragma omp simd
        for (int jj = 0; jj < 32; jj++) v[j0 + jj] = acc[jj];
    }
    if (j0 < H) {
#pragma omp simd
        for (int64_t j = j0; j < H; j++) v[j] = b[j] + t[j];
        for (int64_t l = 0; l < L; l++) {
            const float xl = x[l];
            const float *restrict w = nt->w1t + l * H;
#pragma omp simd
            for (int64_t j = j0; j < H; j++) v[j] += w[j] * xl;
        }
    }
}

/* out[r * Np + c] = sum_j a[r * H + j] bt[j * Np + c] for r < R, c < Np (Np a multiple of
 * VEC): rows times a thin matrix, in tiles of 8 rows by VEC columns (eight independent sums
 * per column, no horizontal reductions) */
static void rows_times(const float *restrict a, const float *restrict bt, int64_t R, int64_t H,
                       int64_t Np, float *restrict out) {
    int64_t r0 = 0;
    for (; r0 + 8 <= R; r0 += 8) {
        const float *restrict a0 = a + r0 * H;
        for (int64_t c0 = 0; c0 < Np; c0 += VEC) {
            float acc[8][VEC];
            for (int i = 0; i < 8; i++)
#pragma omp simd
                for (int c = 0; c < VEC; c++) acc[i][c] = 0.0f;
            for (int64_t j = 0; j < H; j++) {
                const float *restrict w = bt + j * Np + c0;
                for (int i = 0; i < 8; i++) {
                    const float x = a0[i * H + j];
#pragma omp simd
                    for (int c = 0; c < VEC; c++) acc[i][c] += x * w[c];
                }
            }
            for (int i = 0; i < 8; i++)
#pragma omp simd
                for (int c = 0; c < VEC; c++) out[(r0 + i) * Np + c0 + c] = acc[i][c];
        }
    }
    for (; r0 < R; r0++) {
        float *restrict o = out + r0 * Np;
        for (int64_t c = 0; c < Np; c++) o[c] = 0.0f;
        for (int64_t j = 0; j < H; j++) {
            const float x = a[r0 * H + j];
            const float *restrict w = bt + j * Np;
#pragma omp simd
            for (int64_t c = 0; c < Np; c++) o[c] += x * w[c];
        }
    }
}

/* Register tiles of the matrix products below: MR rows (or gradient rows) by NC columns. */
#define MR 4
#define NC 32

/* gh[r * H + j] = sum_q g[r * O + q] w2[q * H + j] for r < R <= MR: the heads' gradient at the
 * hidden outputs of R rows */
static inline void head_grad(const float *restrict w2, const float *restrict g, int64_t R,
                             int64_t O, int64_t H, float *restrict gh) {
    int64_t j0 = 0;
    if (R == MR) {
        for (; j0 + NC <= H; j0 += NC) {
            float a0[NC], a1[NC], a2[NC], a3[NC];
#pragma omp simd
            for (int jj = 0; jj < NC; jj++) a0[jj] = a1[jj] = a2[jj] = a3[jj] = 0.0f;
            for (int64_t q = 0; q < O; q++) {
                const float *restrict w = w2 + q * H + j0;
                const float g0 = g[q], g1 = g[O + q], g2 = g[2 * O + q], g3 = g[3 * O + q];
#pragma omp simd
                for (int jj = 0; jj < NC; jj++) {
                    a0[jj] += g0 * w[jj];
                    a1[jj] += g1 * w[jj];
                    a2[jj] += g2 * w[jj];
                    a3[jj] += g3 * w[jj];
                }
            }
#pragma omp simd
            for (int jj = 0; jj < NC; jj++) {
                gh[j0 + jj] = a0[jj];
                gh[H + j0 + jj] = a1[jj];
                gh[2 * H + j0 + jj] = a2[jj];
                gh[3 * H + j0 + jj] = a3[jj];
            }
        }
    }
    for (int64_t r = 0; r < R; r++) { /* the remaining columns (every column when R < MR) */
        float *restrict out = gh + r * H;
        for (int64_t j = j0; j < H; j++) out[j] = 0.0f;
        for (int64_t q = 0; q < O; q++) {
            const float gq = g[r * O + q];
            const float *restrict w = w2 + q * H;
#pragma omp simd
            for (int64_t j = j0; j < H; j++) out[j] += gq * w[j];
        }
    }
}

/* acc[q * H + j] += sum_r a[r * n + q] b[r * H + j] for q < n, r < R: the outer products of
 * R rows added to an n x H gradient, MR gradient rows by NC columns at a time */
static inline void outer(float *restrict acc, const float *restrict a, const float *restrict b,
                         int64_t R, int64_t n, int64_t H) {
    int64_t q0 = 0;
    const int64_t j_tail = H - H % NC;
    for (; q0 + MR <= n; q0 += MR) {
        for (int64_t j0 = 0; j0 < j_tail; j0 += NC) {
            float s0[NC], s1[NC], s2[NC], s3[NC];
            float *restrict o0 = acc + q0 * H + j0;
#pragma omp simd
            for (int jj = 0; jj < NC; jj++) {
                s0[jj] = o0[jj];
                s1[jj] = o0[H + jj];
                s2[jj] = o0[2 * H + jj];
                s3[jj] = o0[3 * H + jj];
            }
            for (int64_t r = 0; r < R; r++) {
                const float *restrict br = b + r * H + j0;
                const float *restrict ar = a + r * n + q0;
                const float x0 = ar[0], x1 = ar[1], x2 = ar[2], x3 = ar[3];
#pragma omp simd
                for (int jj = 0; jj < NC; jj++) {
                    s0[jj] += x0 * br[jj];
                    s1[jj] += x1 * br[jj];
                    s2[jj] += x2 * br[jj];
                    s3[jj] += x3 * br[jj];
                }
            }
#pragma omp simd
            for (int jj = 0; jj < NC; jj++) {
                o0[jj] = s0[jj];
                o0[H + jj] = s1[jj];
                o0[2 * H + jj] = s2[jj];
                o0[3 * H + jj] = s3[jj];
            }
        }
    }
    /* the remaining gradient rows (all columns) and the remaining columns (all rows) */
    for (int64_t q = 0; q < n; q++) {
        const int64_t j_start = q < q0 ? j_tail : 0;
        float *restrict out = acc + q * H;
        for (int64_t r = 0; r < R; r++) {
            const float x = a[r * n + q];
            const float *restrict br = b + r * H;
#pragma omp simd
            for (int64_t j = j_start; j < H; j++) out[j] += x * br[j];
        }
    }
}

static inline const float *input_row(const float *x, const int64_t *rows, int64_t p, int64_t L) {
    return x + (rows ? rows[p] : p) * L;
}

/* One network's hidden layer over the P rows: v into h (kept), its batch statistics (shifted
 * by the first row's v, summed in double, per chunk) into mean and invstd, the running
 * statistics moved as torch.nn.BatchNorm1d's (biased variance to normalise, unbiased to
 * track); then in place h = relu(gamma xhat + beta) * keep, and xhat. s: 2 H doubles of
 * scratch per chunk. */
static void hidden_layer(const net *nt, int64_t P, int64_t L, int64_t H, const float *x,
                         const int64_t *rows, const int64_t *ys, float momentum, float eps,
                         const chunks *ch, double *restrict s, int n_threads) {
    const net_args *a = nt->a;
    float *restrict hs = a->h, *restrict xs = a->xhat;
    const float *restrict shift = hs; /* row 0's v, computed first */
    pre_activation(nt, input_row(x, rows, 0, L), ys[0], L, H, hs);
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t c = 0; c < ch->n; c++) {
        double *restrict s1 = s + 2 * H * c, *restrict s2 = s1 + H;
        for (int64_t j = 0; j < H; j++) s1[j] = s2[j] = 0.0;
        for (int64_t p = c ? ch->start[c] : 1; p < ch->start[c + 1]; p++) {
            float *restrict v = hs + p * H;
            pre_activation(nt, input_row(x, rows, p, L), ys[p], L, H, v);
#pragma omp simd
            for (int64_t j = 0; j < H; j++) {
                const double d = (double)(v[j] - shift[j]);
                s1[j] += d;
                s2[j] += d * d;
            }
        }
    }
    float *restrict mean = a->mean, *restrict inv = a->invstd;
    for (int64_t j = 0; j < H; j++) {
        double sum1 = 0.0, sum2 = 0.0;
        for (int64_t c = 0; c < ch->n; c++) {
            sum1 += s[2 * H * c + j];
            sum2 += s[2 * H * c + H + j];
        }
        const double m = sum1 / P;
        double var = sum2 / P - m * m;
        if (var < 0.0) var = 0.0; /* (rounding); NaN stays NaN */
        mean[j] = (float)(hs[j] + m);
        inv[j] = (float)(1.0 / sqrt(var + eps));
        if (a->running_mean) {
            a->running_mean[j] = (float)((1.0 - momentum) * a->running_mean[j] + momentum * (hs[j] + m));
            a->running_var[j] = (float)((1.0 - momentum) * a->running_var[j] + momentum * var * P / (P - 1));
        }
    }
    const float *restrict g = a->gamma, *restrict be = a->beta;
    const uint32_t threshold = a->threshold;
    const float scale = a->scale;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t p = 0; p < P; p++) {
        float *restrict h = hs + p * H, *restrict xh = xs + p * H;
        if (threshold) {
            const uint32_t key = row_key(p, a->seed);
#pragma omp simd
            for (int64_t j = 0; j < H; j++) {
                const float xv = (h[j] - mean[j]) * inv[j];
                const float y = g[j] * xv + be[j];
                const float m = uniform16(key, j) >= threshold ? scale : 0.0f;
                xh[j] = xv;
                h[j] = (y <= 0.0f ? 0.0f : y) * m; /* NaN stays NaN */
            }
        } else {
#pragma omp simd
            for (int64_t j = 0; j < H; j++) {
                const float xv = (h[j] - mean[j]) * inv[j];
                const float y = g[j] * xv + be[j];
                xh[j] = xv;
                h[j] = y <= 0.0f ? 0.0f : y;
            }
        }
    }
}

static int codes_valid(int64_t P, int64_t n_cells, int64_t K, const int64_t *cells,
                       const int64_t *ys) {
    for (int64_t p = 0; p < P; p++)
        if (cells[p] < 0 || cells[p] >= n_cells || ys[p] < 0 || ys[p] >= K) return 0;
    return 1;
}

/* The output rows of one network over chunk c: o = W2 h + b2 (Op floats per row). */
static void heads(const net *nt, const chunks *ch, int64_t c, int64_t H, int64_t O, int64_t Op,
                  float *restrict o) {
    const int64_t p0 = ch->start[c], R = ch->start[c + 1] - p0;
    rows_times(nt->a->h + p0 * H, nt->w2t, R, H, Op, o + p0 * Op);
    for (int64_t p = p0; p < p0 + R; p++)
        for (int64_t q = 0; q < O; q++) o[p * Op + q] += nt->b2[q];
}

/* Forward pass. z1: n_cells x L; cells, ys: P; eps: P x L standard-normal draws. Outputs:
 * z2, m2, s2e (q(z2 | z1, y)'s mean and variance), m1, s2d (p(z1 | z2, y)'s): P x L each;
 * log_p, kl: P each; each network's mean, invstd, xhat and h (and running statistics).
 * Returns 0; 1 when a cell or class index is out of range (nothing written); 2 when scratch
 * memory could not be allocated. P > 1. */
int cellvi_scanvi_pairs_forward(int64_t P, int64_t n_cells, int64_t L, int64_t H, int64_t K,
                                const float *restrict z1, const int64_t *restrict cells,
                                const int64_t *restrict ys, const float *restrict eps,
                                const net_args *enc_args, const net_args *dec_args,
                                float momentum, float bn_eps, float *restrict z2,
                                float *restrict m2, float *restrict s2e, float *restrict m1,
                                float *restrict s2d, float *restrict log_p, float *restrict kl,
                                int n_threads) {
    if (!codes_valid(P, n_cells, K, cells, ys)) return 1;
    if (n_threads < 1) n_threads = 1;
    const int64_t O = 2 * L;
    const int64_t Op = pad(O);
    chunks ch;
    chunks_of(&ch, P);
    net enc, dec;
    double *s = malloc((size_t)(2 * H * ch.n) * sizeof(double) + (size_t)(P * Op) * sizeof(float));
    if (!s) return 2;
    if (!nets_open(&enc, &dec, enc_args, dec_args, L, H, 0)) {
        free(s);
        return 2;
    }
    float *o = (float *)(s + 2 * H * ch.n);
    /* q(z2 | z1, y), then the draw */
    hidden_layer(&enc, P, L, H, z1, cells, ys, momentum, bn_eps, &ch, s, n_threads);
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t c = 0; c < ch.n; c++) {
        heads(&enc, &ch, c, H, O, Op, o);
        for (int64_t p = ch.start[c]; p < ch.start[c + 1]; p++) {
            const float *restrict op = o + p * Op;
            double acc = 0.0;
            for (int64_t l = 0; l < L; l++) {
                const float m = op[l], var = expf(op[L + l]) + VAR_EPS;
                m2[p * L + l] = m;
                s2e[p * L + l] = var;
                z2[p * L + l] = m + sqrtf(var) * eps[p * L + l];
                acc += var + m * m - 1.0f - logf(var);
            }
            kl[p] = (float)(0.5 * acc);
        }
    }
    /* p(z1 | z2, y) */
    hidden_layer(&dec, P, L, H, z2, NULL, ys, momentum, bn_eps, &ch, s, n_threads);
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t c = 0; c < ch.n; c++) {
        heads(&dec, &ch, c, H, O, Op, o);
        for (int64_t p = ch.start[c]; p < ch.start[c + 1]; p++) {
            const float *restrict op = o + p * Op;
            const float *restrict target = z1 + cells[p] * L;
            double acc = 0.0;
            for (int64_t l = 0; l < L; l++) {
                const float m = op[l], var = expf(op[L + l]) + VAR_EPS;
                const float d = target[l] - m;
                m1[p * L + l] = m;
                s2d[p * L + l] = var;
                acc -= HALF_LOG_2PI + 0.5f * logf(var) + 0.5f * d * d / var;
            }
            log_p[p] = (float)acc;
        }
    }
    net_close(&enc, L, H);
    net_close(&dec, L, H);
    free(s);
    return 0;
}

/* One chunk's share of the backward pass: its sums of the gradients, and its scratch. */
typedef struct {
    double *sg, *sgx;                         /* H each: batch norm's column sums */
    float *g_b2, *g_w2, *g_table, *g_b1, *g_w1t;  /* 2L, 2L x H, K x H, H, L x H */
    float *gh, *gas, *xs, *dxs;               /* MR x H, RB x H, RB x L, RB x pad(L) */
} chunk_sums;

static size_t chunk_floats(int64_t L, int64_t H, int64_t K) {
    const int64_t O = 2 * L;
    return (size_t)(O + O * H + K * H + H + L * H + MR * H + RB * H + RB * L + RB * pad(L));
}

/* Chunk c's part of d (2 H doubles per chunk) and f (chunk_floats per chunk). */
static chunk_sums chunk_part(double *d, float *f, int64_t c, int64_t L, int64_t H, int64_t K) {
    const int64_t O = 2 * L;
    chunk_sums cs;
    cs.sg = d + 2 * H * c;
    cs.sgx = cs.sg + H;
    cs.g_b2 = f + chunk_floats(L, H, K) * c;
    cs.g_w2 = cs.g_b2 + O;
    cs.g_table = cs.g_w2 + O * H;
    cs.g_b1 = cs.g_table + K * H;
    cs.g_w1t = cs.g_b1 + H;
    cs.gh = cs.g_w1t + L * H;
    cs.gas = cs.gh + MR * H;
    cs.xs = cs.gas + RB * H;
    cs.dxs = cs.xs + RB * L;
    return cs;
}

/* out[i] = sum over the chunks, in order, of the n values at offset (the member's address in
 * chunk 0 minus f) of each chunk's floats */
static void add_chunks(float *restrict out, const float *f, const float *member0, int64_t n,
                       int64_t n_chunks, size_t stride) {
    const size_t off = (size_t)(member0 - f);
    for (int64_t i = 0; i < n; i++) {
        float acc = 0.0f;
        for (int64_t c = 0; c < n_chunks; c++) acc += f[stride * c + off + i];
        out[i] = acc;
    }
}

/* Backward through one network, from go (P x 2L: the gradient at its outputs m and log s2):
 * the parameter gradients (written), and the input gradient W1^T dv of pair p into row p of
 * gx (added when add, else written). x[rows[p]] (x[p] without rows) is pair p's input.
 * gy: P x H floats of scratch; d, f: each chunk's sums (chunk_part); k: 3 H floats. */
static void net_backward(net *nt, int64_t P, int64_t L, int64_t H, int64_t K, const float *x,
                         const int64_t *rows, const int64_t *ys, const float *restrict go,
                         float *restrict gx, int add, float *restrict gy, const chunks *ch,
                         double *d, float *f, float *restrict k, int n_threads) {
    const net_args *a = nt->a;
    const int64_t O = 2 * L, Lp = pad(L);
    const size_t stride = chunk_floats(L, H, K);
    float *restrict mg = k + H, *restrict mgx = mg + H;
    const float *restrict hs = a->h, *restrict xhs = a->xhat;
    const float scale = a->scale;
    /* pass 1: the heads' gradients; dL/dy and its column sums (batch norm's gradients) */
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t c = 0; c < ch->n; c++) {
        const chunk_sums cs = chunk_part(d, f, c, L, H, K);
        for (int64_t j = 0; j < H; j++) cs.sg[j] = cs.sgx[j] = 0.0;
        memset(cs.g_b2, 0, (size_t)(O + O * H) * sizeof(float));
        for (int64_t p0 = ch->start[c]; p0 < ch->start[c + 1]; p0 += RB) {
            const int64_t R = ch->start[c + 1] - p0 < RB ? ch->start[c + 1] - p0 : RB;
            for (int64_t r0 = 0; r0 < R; r0 += MR) {
                const int64_t R4 = R - r0 < MR ? R - r0 : MR;
                head_grad(nt->w2, go + (p0 + r0) * O, R4, O, H, cs.gh);
                for (int64_t i = 0; i < R4; i++) {
                    const int64_t p = p0 + r0 + i;
                    const float *restrict h = hs + p * H, *restrict xh = xhs + p * H;
                    const float *restrict ghi = cs.gh + i * H;
                    float *restrict gyp = gy + p * H;
                    double *restrict sg = cs.sg, *restrict sgx = cs.sgx;
                    for (int64_t q = 0; q < O; q++) cs.g_b2[q] += go[p * O + q];
#pragma omp simd
                    for (int64_t j = 0; j < H; j++) {
                        /* dh/dy: the scale where the entry is kept and y > 0, i.e. where h > 0 */
                        const float v = h[j] > 0.0f ? ghi[j] * scale : 0.0f;
                        gyp[j] = v;
                        sg[j] += v;
                        sgx[j] += (double)(v * xh[j]);
                    }
                }
            }
            outer(cs.g_w2, go + p0 * O, hs + p0 * H, R, O, H);
        }
    }
    const chunk_sums c0 = chunk_part(d, f, 0, L, H, K);
    add_chunks(nt->g_b2, f, c0.g_b2, O, ch->n, stride);
    add_chunks(nt->g_w2, f, c0.g_w2, O * H, ch->n, stride);
    for (int64_t j = 0; j < H; j++) {
        double sg = 0.0, sgx = 0.0;
        for (int64_t c = 0; c < ch->n; c++) {
            sg += d[2 * H * c + j];
            sgx += d[2 * H * c + H + j];
        }
        a->g_beta[j] = (float)sg;
        a->g_gamma[j] = (float)sgx;
        k[j] = a->gamma[j] * a->invstd[j];
        mg[j] = (float)(sg / P);
        mgx[j] = (float)(sgx / P);
    }
    /* pass 2: through the batch statistics to v, then to the class table, W1, b1 and x */
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t c = 0; c < ch->n; c++) {
        const chunk_sums cs = chunk_part(d, f, c, L, H, K);
        memset(cs.g_table, 0, (size_t)(K * H + H + L * H) * sizeof(float));
        for (int64_t p0 = ch->start[c]; p0 < ch->start[c + 1]; p0 += RB) {
            const int64_t R = ch->start[c + 1] - p0 < RB ? ch->start[c + 1] - p0 : RB;
            for (int64_t r = 0; r < R; r++) {
                const int64_t p = p0 + r;
                memcpy(cs.xs + r * L, input_row(x, rows, p, L), (size_t)L * sizeof(float));
                const float *restrict xh = xhs + p * H, *restrict gyp = gy + p * H;
                float *restrict ga = cs.gas + r * H;
                float *restrict gt = cs.g_table + ys[p] * H, *restrict gb = cs.g_b1;
#pragma omp simd
                for (int64_t j = 0; j < H; j++) {
                    const float v = k[j] * (gyp[j] - mg[j] - xh[j] * mgx[j]);
                    ga[j] = v;
                    gt[j] += v;
                    gb[j] += v;
                }
            }
            /* to the inputs: W1^T dv, the block's rows at once */
            rows_times(cs.gas, nt->w1p, R, H, Lp, cs.dxs);
            for (int64_t r = 0; r < R; r++) {
                float *restrict gxp = gx + (p0 + r) * L;
                const float *restrict dx = cs.dxs + r * Lp;
                for (int64_t l = 0; l < L; l++) gxp[l] = add ? gxp[l] + dx[l] : dx[l];
            }
            outer(cs.g_w1t, cs.xs, cs.gas, R, L, H);
        }
    }
    add_chunks(a->g_table, f, c0.g_table, K * H, ch->n, stride);
    add_chunks(a->g_b1, f, c0.g_b1, H, ch->n, stride);
    add_chunks(nt->g_w1t, f, c0.g_w1t, L * H, ch->n, stride);
}

/* Backward pass, from g_log_p and g_kl (P each) and what the forward pass kept: the gradients
 * of both networks' parameters and of z1 (g_z1: n_cells x L, written; each cell's pairs added
 * in pair order). Returns 0, or 2 when scratch memory could not be allocated. */
int cellvi_scanvi_pairs_backward(int64_t P, int64_t n_cells, int64_t L, int64_t H, int64_t K,
                                 const float *restrict z1, const int64_t *restrict cells,
                                 const int64_t *restrict ys, const float *restrict eps,
                                 const float *restrict z2, const float *restrict m2,
                                 const float *restrict s2e, const float *restrict m1,
                                 const float *restrict s2d, const float *restrict g_log_p,
                                 const float *restrict g_kl, const net_args *enc_args,
                                 const net_args *dec_args, float *restrict g_z1, int n_threads) {
    if (n_threads < 1) n_threads = 1;
    const int64_t O = 2 * L;
    chunks ch;
    chunks_of(&ch, P);
    const size_t per_chunk = chunk_floats(L, H, K);
    const size_t floats = (size_t)(3 * H + P * O + 2 * P * L + P * H) + per_chunk * (size_t)ch.n;
    double *d = malloc((size_t)(2 * H * ch.n) * sizeof(double) + floats * sizeof(float));
    if (!d) return 2;
    net enc, dec;
    if (!nets_open(&enc, &dec, enc_args, dec_args, L, H, 1)) {
        free(d);
        return 2;
    }
    float *k = (float *)(d + 2 * H * ch.n);
    float *go = k + 3 * H, *g_z2 = go + P * O, *gzp = g_z2 + P * L, *gy = gzp + P * L;
    float *f = gy + P * H;
    /* log_p = log N(z1[c]; m1, s2d): to m1, log s2d and (pair p's row of gzp) z1 itself */
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t p = 0; p < P; p++) {
        const float gl = g_log_p[p];
        const float *restrict target = z1 + cells[p] * L;
        for (int64_t l = 0; l < L; l++) {
            const float var = s2d[p * L + l], dl = target[l] - m1[p * L + l];
            const float r = dl / var;
            go[p * O + l] = gl * r;
            go[p * O + L + l] = gl * 0.5f * (r * r - 1.0f / var) * (var - VAR_EPS);
            gzp[p * L + l] = -gl * r;
        }
    }
    net_backward(&dec, P, L, H, K, z2, NULL, ys, go, g_z2, 0, gy, &ch, d, f, k, n_threads);
    /* z2 = m2 + sqrt(s2e) eps, and kl = KL(N(m2, s2e) || N(0, I)): to m2 and log s2e */
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t p = 0; p < P; p++) {
        const float gk = g_kl[p];
        for (int64_t l = 0; l < L; l++) {
            const float gz = g_z2[p * L + l], m = m2[p * L + l], var = s2e[p * L + l];
            const float g_var = gz * eps[p * L + l] * 0.5f / sqrtf(var) + gk * 0.5f * (1.0f - 1.0f / var);
            go[p * O + l] = gz + gk * m;
            go[p * O + L + l] = g_var * (var - VAR_EPS);
        }
    }
    net_backward(&enc, P, L, H, K, z1, cells, ys, go, gzp, 1, gy, &ch, d, f, k, n_threads);
    /* the pairs' gradients to their cells, in pair order */
    memset(g_z1, 0, (size_t)(n_cells * L) * sizeof(float));
    for (int64_t p = 0; p < P; p++) {
        float *restrict gz = g_z1 + cells[p] * L;
        const float *restrict gp = gzp + p * L;
        for (int64_t l = 0; l < L; l++) gz[l] += gp[l];
    }
    net_close(&enc, L, H);
    net_close(&dec, L, H);
    free(d);
    return 0;
}
