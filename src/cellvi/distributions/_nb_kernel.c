/* Per-cell (zero-inflated) negative binomial log-likelihood from decoder logits, with the
 * derivatives a training step needs, in one pass over each cell.
 *
 * cellvi compiles this file on first use (cellvi/utils/native.py) and calls it through
 * ctypes (cellvi/distributions/_native_likelihood.py); without a C compiler the torch
 * implementation in _likelihood.py runs instead. Both compute the same quantities:
 *
 *   scale = softmax(logits), mu = scale * exp(log_library), r = mu / theta,
 *   t = -theta * log1p(r) = log NB(0 | mu, theta),
 *   zero-inflated (logits rho): log p(0) = softplus(t - rho) - softplus(-rho),
 *   x > 0: log NB(x) = t + lgamma(x + theta) - lgamma(theta) - log x! + x log(mu / (theta + mu)),
 *          zero-inflated: log p(x) = log NB(x) - softplus(rho).
 *
 * The zero case is summed over every entry of a cell (dense, vectorised) and corrected at the
 * cell's non-zero entries (given in CSR form). Outputs, per cell i and gene j, are the
 * log-likelihood out[i] and, when d_logits is not NULL, the partial derivatives of out[i]:
 * d_logits[i, j] (through the softmax), d_log_library[i], d_theta[i, j] (with respect to
 * theta[j] or theta[i, j]) and, zero-inflated, d_rho[i, j]. The caller multiplies them by the
 * upstream gradient of out[i].
 *
 * The dense pass is in float32; the non-zero terms (differences of lgamma / digamma) are in
 * float64. Every cell is handled by one thread from start to end, so results do not depend on
 * the number of threads.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* glibc's vector math library (libmvec) lets the compiler vectorise these calls without
 * -ffast-math. Two ways in:
 *
 * - GCC: a function declared __simd__ gets vector calls. It may be declared so only where the
 *   glibc this is built against has its vector variants, or the library fails to load
 *   (`undefined symbol`): exp, expf and log since glibc 2.22, log1p and log1pf since 2.35
 *   (RHEL 8 / 9 and Ubuntu 20.04 have older ones). CELLVI_ASSUME_GLIBC=MMmm (e.g. 228 for
 *   2.28) checks the guards against another version.
 * - clang: -fveclib=libmvec, with libmvec linked; cellvi/utils/native.py adds both, and
 *   CELLVI_VECLIB_LIBMVEC, for clang on x86-64 Linux. clang's list of libmvec functions has
 *   exp and log (float and double) but no log1p.
 *
 * Where exp and log are vectorised but log1p is not, log1p goes through the vector log (see
 * cellvi_log1pf below): one scalar log1p call would leave its whole loop scalar.
 * CELLVI_NO_VECTOR_MATH (a fallback flag set of cellvi/utils/native.py) turns all of it off.
 * cellvi_vector_math() tells the caller which build this is. */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__) \
    && !defined(CELLVI_NO_VECTOR_MATH)
#ifdef CELLVI_ASSUME_GLIBC
#define CELLVI_GLIBC_AT_LEAST(major, minor) (CELLVI_ASSUME_GLIBC >= (major) * 100 + (minor))
#elif defined(__GLIBC_PREREQ)
#define CELLVI_GLIBC_AT_LEAST(major, minor) __GLIBC_PREREQ(major, minor)
#else
#define CELLVI_GLIBC_AT_LEAST(major, minor) 0
#endif
#endif
#ifndef CELLVI_GLIBC_AT_LEAST
#define CELLVI_GLIBC_AT_LEAST(major, minor) 0
#endif
#if CELLVI_GLIBC_AT_LEAST(2, 22)
#define CELLVI_SIMD_2_22 __attribute__((__simd__("notinbranch")))
#define CELLVI_VECTOR_LOG 1
#else
#define CELLVI_SIMD_2_22
#endif
#if CELLVI_GLIBC_AT_LEAST(2, 35)
#define CELLVI_SIMD_2_35 __attribute__((__simd__("notinbranch")))
#define CELLVI_VECTOR_LOG1P 1
#else
#define CELLVI_SIMD_2_35
#endif
#if defined(__clang__) && defined(CELLVI_VECLIB_LIBMVEC) && !defined(CELLVI_NO_VECTOR_MATH)
#define CELLVI_VECTOR_LOG 1
#endif
#ifndef CELLVI_VECTOR_LOG
#define CELLVI_VECTOR_LOG 0
#endif
#ifndef CELLVI_VECTOR_LOG1P
#define CELLVI_VECTOR_LOG1P 0
#endif
extern float expf(float) CELLVI_SIMD_2_22;
extern float logf(float) CELLVI_SIMD_2_22;
extern double exp(double) CELLVI_SIMD_2_22;
extern double log(double) CELLVI_SIMD_2_22;
extern float log1pf(float) CELLVI_SIMD_2_35;
extern double log1p(double) CELLVI_SIMD_2_35;

/* 1 when the likelihood loops call vector exp and log (and log1p, natively or through log):
 * a build without them is slower than the torch implementation, which cellvi then uses. */
int cellvi_vector_math(void) { return CELLVI_VECTOR_LOG; }

#if CELLVI_VECTOR_LOG && !CELLVI_VECTOR_LOG1P
/* log1p(x) from the vector log. u = 1 + x is rounded; its rounding error is x - d, with
 * d = u - 1 (both exact where it matters, x < 1), so log1p(x) = log(u) + log1p((x - d) / u),
 * and (x - d) / u is below half an ulp of 1: its log1p is itself to working precision.
 * Tiny x (u == 1) gives x exactly; d == x (an exact sum, huge x, infinity) gives log(u); NaN
 * propagates. Branch-free, so its loop vectorises. Error against float64 log1p
 * (tests/native/test_log1p.py): within 4 ulps, mostly that of the vector log (glibc's scalar
 * log1pf: within 1); D. Goldberg's log(u) * x / d (1991, theorem 4) measured up to 4.4. */
static inline float cellvi_log1pf(float x) {
    const float u = 1.0f + x, d = u - 1.0f, l = logf(u);
    return d == x ? l : l + (x - d) / u;
}

static inline double cellvi_log1p(double x) {
    const double u = 1.0 + x, d = u - 1.0, l = log(u);
    return d == x ? l : l + (x - d) / u;
}
#else
#define cellvi_log1pf log1pf
#define cellvi_log1p log1p
#endif

#define THETA_EPS 1e-8
#define HALF_LOG_2PI 0.91893853320467274178

/* lgamma(z) for z > 0: six recurrence steps, then Stirling's series (about 1e-14 relative) */
static inline double lgamma_positive(double z) {
    double p = z * (z + 1.0) * (z + 2.0) * (z + 3.0) * (z + 4.0) * (z + 5.0);
    double w = z + 6.0, iw = 1.0 / w, iw2 = iw * iw;
    double series = iw * (1.0 / 12 - iw2 * (1.0 / 360 - iw2 * (1.0 / 1260 - iw2 / 1680)));
    return (w - 0.5) * log(w) - w + HALF_LOG_2PI + series - log(p);
}

/* digamma(z) for z > 0: six recurrence steps, then the asymptotic series */
static inline double digamma_positive(double z) {
    double head = 1.0 / z + 1.0 / (z + 1.0) + 1.0 / (z + 2.0) + 1.0 / (z + 3.0) + 1.0 / (z + 4.0)
                  + 1.0 / (z + 5.0);
    double w = z + 6.0, iw = 1.0 / w, iw2 = iw * iw;
    double series = iw2 * (1.0 / 12 - iw2 * (1.0 / 120 - iw2 * (1.0 / 252 - iw2 * (1.0 / 240 - iw2 / 132))));
    return log(w) - 0.5 * iw - series - head;
}

/* per-thread scratch: one cell's scale and its non-zero entries gathered contiguously */
typedef struct {
    float *scale;
    double *x, *sc, *th, *lg, *dg, *rho, *d_mu, *d_th, *w;
} scratch_t;

static int scratch_alloc(scratch_t *s, int64_t n_genes) {
    s->scale = malloc(sizeof(float) * (size_t)n_genes);
    double *b = malloc(sizeof(double) * (size_t)n_genes * 9);
    if (s->scale == NULL || b == NULL) {
        free(s->scale);
        free(b);
        return 0;
    }
    s->x = b;
    s->sc = b + n_genes;
    s->th = b + 2 * n_genes;
    s->lg = b + 3 * n_genes;
    s->dg = b + 4 * n_genes;
    s->rho = b + 5 * n_genes;
    s->d_mu = b + 6 * n_genes;
    s->d_th = b + 7 * n_genes;
    s->w = b + 8 * n_genes;
    return 1;
}

static void scratch_free(scratch_t *s) {
    free(s->scale);
    free(s->x);
}

/* The dense pass over one cell: softmax, the zero-case log-likelihood of every entry and
 * its derivatives. Returns the sum; leaves scale = softmax(logits) in s->scale. */
static float dense_pass(int64_t n_genes, const float *logits, float log_library,
                        const float *theta, const float *inv_theta, const float *rho,
                        float *scale, float *d_logits, float *d_theta, float *d_rho) {
    float m = -FLT_MAX;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n_genes; j++) m = logits[j] > m ? logits[j] : m;
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < n_genes; j++) {
        float e = expf(logits[j] - m);
        scale[j] = e;
        total += e;
    }
    const float inv_total = 1.0f / total, library = expf(log_library);
    float acc = 0.f;
    if (rho != NULL) {
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < n_genes; j++) {
            float sc = scale[j] * inv_total;
            scale[j] = sc;
            float r = sc * library * inv_theta[j];
            float lp = cellvi_log1pf(r), q = r / (1.0f + r), t = -theta[j] * lp;
            float rh = rho[j], a = t - rh;
            float ea = expf(-fabsf(a)), er = expf(-fabsf(rh));
            acc += (a > 0.f ? a : 0.f) + cellvi_log1pf(ea) - (rh < 0.f ? -rh : 0.f)
                   - cellvi_log1pf(er);
            if (d_logits != NULL) {
                float sig_a = (a >= 0.f ? 1.0f : ea) / (1.0f + ea);
                float sig_neg_rho = (rh <= 0.f ? 1.0f : er) / (1.0f + er);
                d_rho[j] = sig_neg_rho - sig_a;
                d_logits[j] = -sig_a * theta[j] * q; /* d / d log mu, for now */
                d_theta[j] = sig_a * (q - lp);
            }
        }
    } else if (d_logits != NULL) {
        /* the loop is written twice, with and without derivatives: with the test inside it,
         * GCC left the no-derivative version scalar (3x slower under torch.no_grad) */
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < n_genes; j++) {
            float sc = scale[j] * inv_total;
            scale[j] = sc;
            float r = sc * library * inv_theta[j];
            float lp = cellvi_log1pf(r), q = r / (1.0f + r);
            acc += -theta[j] * lp;
            d_logits[j] = -theta[j] * q;
            d_theta[j] = q - lp;
        }
    } else {
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < n_genes; j++) {
            float sc = scale[j] * inv_total;
            scale[j] = sc;
            acc += -theta[j] * cellvi_log1pf(sc * library * inv_theta[j]);
        }
    }
    return acc;
}

/* The non-zero entries of one cell, gathered in s (n of them): their correction to the
 * dense sum, and their derivatives in s->d_mu, s->d_th, s->w. */
static double nonzero_pass(int64_t n, double log_library, int per_entry, int zero_inflated,
                           scratch_t *s) {
    const double library = exp(log_library);
    const double *restrict xs = s->x, *restrict ths = s->th, *restrict scs = s->sc;
    const double *restrict rhos = s->rho;
    double *restrict lgs = s->lg, *restrict dgs = s->dg;
    double *restrict d_mus = s->d_mu, *restrict d_ths = s->d_th, *restrict ws = s->w;
    if (per_entry) {
#pragma omp simd
        for (int64_t k = 0; k < n; k++) {
            lgs[k] = lgamma_positive(ths[k]);
            dgs[k] = digamma_positive(ths[k]);
        }
    }
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < n; k++) {
        double x = xs[k], th = ths[k], sc = scs[k];
        double lg_th = lgs[k], dg_th = dgs[k];
        double r = sc * library / th, lp = cellvi_log1p(r), q = r / (1.0 + r);
        /* log mu; the floor only matters where the softmax underflowed */
        double log_mu = log(sc > (double)FLT_MIN ? sc : (double)FLT_MIN) + log_library;
        double v = lgamma_positive(x + th) - lg_th + x * (log_mu - log(th) - lp);
        double d_mu = x * (1.0 - q);
        double d_th = digamma_positive(x + th) - dg_th - d_mu / th;
        double w = 0.0;
        if (zero_inflated) {
            double d = rhos[k] + th * lp; /* rho - t */
            double e = exp(-fabs(d));
            v -= (d > 0.0 ? d : 0.0) + cellvi_log1p(e); /* t - logaddexp(rho, t) */
            w = (d >= 0.0 ? 1.0 : e) / (1.0 + e);
            d_mu -= w * th * q;
            d_th += w * (q - lp);
        }
        acc += v;
        d_mus[k] = d_mu;
        d_ths[k] = d_th;
        ws[k] = w;
    }
    return acc;
}

/* Returns 0 on success, 1 when the non-zero entries are not grouped by cell as indptr says,
 * 2 when scratch memory could not be allocated. theta is (n_genes,) when theta_per_entry is
 * 0, else (n_cells, n_genes); rho and the d_* outputs may be NULL. All arrays are C-contiguous. */
int cellvi_nb_loglik(int64_t n_cells, int64_t n_genes, const float *logits,
                     const float *log_library, const float *theta, int theta_per_entry,
                     const float *rho, const int64_t *indptr, const int64_t *rows,
                     const int64_t *cols, const float *values, const float *log_x_factorial,
                     float *out, float *d_logits, float *d_log_library, float *d_theta,
                     float *d_rho, int n_threads) {
    const int grad = d_logits != NULL, zero_inflated = rho != NULL;
    const int64_t n_theta = theta_per_entry ? n_cells * n_genes : n_genes;
    float *theta_e = malloc(sizeof(float) * (size_t)n_theta);
    float *inv_theta = malloc(sizeof(float) * (size_t)n_theta);
    double *lg_theta = malloc(sizeof(double) * (size_t)n_genes);
    double *dg_theta = malloc(sizeof(double) * (size_t)n_genes);
    int status = 0;
    if (theta_e == NULL || inv_theta == NULL || lg_theta == NULL || dg_theta == NULL) {
        status = 2;
        goto done;
    }
    for (int64_t j = 0; j < n_theta; j++) {
        theta_e[j] = theta[j] + (float)THETA_EPS;
        inv_theta[j] = 1.0f / theta_e[j];
    }
    if (!theta_per_entry) {
        for (int64_t j = 0; j < n_genes; j++) {
            lg_theta[j] = lgamma_positive((double)theta_e[j]);
            dg_theta[j] = digamma_positive((double)theta_e[j]);
        }
    }
#pragma omp parallel num_threads(n_threads) reduction(| : status)
    {
        scratch_t s;
        if (!scratch_alloc(&s, n_genes)) {
            status |= 2;
        } else {
#pragma omp for schedule(static)
            for (int64_t i = 0; i < n_cells; i++) {
                const int64_t row = i * n_genes, th_off = theta_per_entry ? row : 0;
                const float *th = theta_e + th_off, *inv_th = inv_theta + th_off;
                const float *rh = zero_inflated ? rho + row : NULL;
                float *dl = grad ? d_logits + row : NULL;
                float *dt = grad ? d_theta + row : NULL;
                float *dr = (grad && zero_inflated) ? d_rho + row : NULL;
                float dense = dense_pass(n_genes, logits + row, log_library[i], th, inv_th, rh,
                                         s.scale, dl, dt, dr);
                const int64_t k0 = indptr[i], nk = indptr[i + 1] - k0;
                for (int64_t k = 0; k < nk; k++) {
                    const int64_t j = cols[k0 + k];
                    if (rows[k0 + k] != i || j < 0 || j >= n_genes) {
                        status |= 1;
                        break;
                    }
                    s.x[k] = values[k0 + k];
                    s.sc[k] = s.scale[j];
                    s.th[k] = th[j];
                    s.lg[k] = theta_per_entry ? 0.0 : lg_theta[j];
                    s.dg[k] = theta_per_entry ? 0.0 : dg_theta[j];
                    s.rho[k] = zero_inflated ? rh[j] : 0.0;
                }
                if (status & 1) continue;
                double sparse = nonzero_pass(nk, log_library[i], theta_per_entry, zero_inflated, &s);
                out[i] = dense + (float)sparse - log_x_factorial[i];
                if (!grad) continue;
                for (int64_t k = 0; k < nk; k++) {
                    const int64_t j = cols[k0 + k];
                    dl[j] += (float)s.d_mu[k];
                    dt[j] += (float)s.d_th[k];
                    if (zero_inflated) dr[j] -= (float)s.w[k];
                }
                /* through the softmax: d/d logits = d/d log mu - scale * sum(d/d log mu) */
                float total = 0.f;
#pragma omp simd reduction(+ : total)
                for (int64_t j = 0; j < n_genes; j++) total += dl[j];
#pragma omp simd
                for (int64_t j = 0; j < n_genes; j++) dl[j] -= s.scale[j] * total;
                d_log_library[i] = total;
            }
            scratch_free(&s);
        }
    }
done:
    free(theta_e);
    free(inv_theta);
    free(lg_theta);
    free(dg_theta);
    return status;
}

/* ---------------------------------------------------------------------------------------------
 * The protein likelihood: a two-component NB mixture per entry, scored from the log means
 * (cellvi/distributions/_mixture_likelihood.py has the torch version):
 *
 *   L_c  = log(theta + exp(m_c)),  c = background (m_b), foreground (m_f)
 *   lp_c = lgamma(y + theta) - lgamma(theta) - lgamma(y + 1) + theta (log theta - L_c)
 *          + y (m_c - L_c)
 *   lp   = logaddexp(lp_b - softplus(-rho), lp_f - softplus(rho))     (rho: background logit)
 *
 * out[i] = sum_j mask[i, j] lp[i, j]. When d_back is not NULL the partial derivatives of
 * mask * lp are written per entry: d_back, d_fore (log means), d_theta, d_rho. Everything is
 * computed in float64; a row is handled by one thread, so results do not depend on the number
 * of threads. NaN propagates.
 * ------------------------------------------------------------------------------------------- */
/* log(theta + exp(m)) without overflow */
static inline double log_theta_plus_exp(double log_theta, double m) {
    const double hi = log_theta > m ? log_theta : m, d = log_theta - m;
    return hi + cellvi_log1p(exp(-(d < 0 ? -d : d)));
}

/* One entry of the mixture: adds mask * lp to *total and, when d_back is not NULL, writes the
 * derivatives at index k. log_theta, lgamma(theta) and digamma(theta) come precomputed. */
static inline double mixture_entry(double yy, double th, double log_th, double lg_th,
                                   double dg_th, double mb, double mf, double rh, double w_mask,
                                   int64_t k, float *restrict d_back, float *restrict d_fore,
                                   float *restrict d_theta, float *restrict d_rho) {
    const double lb = log_theta_plus_exp(log_th, mb), lf = log_theta_plus_exp(log_th, mf);
    const double common = lgamma_positive(yy + th) - lg_th - lgamma_positive(yy + 1.0);
    const double lp_b = common + th * (log_th - lb) + yy * (mb - lb);
    const double lp_f = common + th * (log_th - lf) + yy * (mf - lf);
    /* softplus(rho) and softplus(-rho) = softplus(rho) - rho share exp(-|rho|) */
    const double e = exp(-(rh < 0 ? -rh : rh));
    const double sp_pos = (rh > 0 ? rh : 0.0) + cellvi_log1p(e), sp_neg = sp_pos - rh;
    const double a_b = lp_b - sp_neg, a_f = lp_f - sp_pos;
    const double hi = a_b > a_f ? a_b : a_f, gap = a_b - a_f;
    const double e_gap = exp(-(gap < 0 ? -gap : gap));
    const double lp = hi + cellvi_log1p(e_gap);
    if (d_back) {
        /* responsibility of the background: sigmoid(a_b - a_f) */
        const double w_b = gap >= 0 ? 1.0 / (1.0 + e_gap) : e_gap / (1.0 + e_gap), w_f = 1.0 - w_b;
        const double mu_b = exp(mb - lb), mu_f = exp(mf - lf); /* mu / (theta + mu) */
        const double shared = digamma_positive(yy + th) - dg_th + log_th + 1.0;
        /* (theta + y) / (theta + mu) = (theta + y) (1 - mu / (theta + mu)) / theta */
        const double ty = (th + yy) / th;
        const double dth_b = shared - lb - ty * (1.0 - mu_b);
        const double dth_f = shared - lf - ty * (1.0 - mu_f);
        const double sig_rho = rh > 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        d_back[k] = (float)(w_mask * w_b * (yy - (th + yy) * mu_b));
        d_fore[k] = (float)(w_mask * w_f * (yy - (th + yy) * mu_f));
        d_theta[k] = (float)(w_mask * (w_b * dth_b + w_f * dth_f));
        d_rho[k] = (float)(w_mask * (w_b - sig_rho));
    }
    return w_mask * lp;
}

/* Returns 0, or 2 when scratch memory could not be allocated.
 *
 * The entries are scored in one flat loop over the n x p matrix (a loop over the few proteins
 * of one cell would be too short to vectorise), then summed per cell. */
int cellvi_nb_mixture_loglik(int64_t n, int64_t p, const float *restrict y,
                             const float *restrict log_back, const float *restrict log_fore,
                             const float *restrict theta, int per_entry,
                             const float *restrict rho, const float *restrict mask,
                             float *restrict out, float *restrict d_back,
                             float *restrict d_fore, float *restrict d_theta,
                             float *restrict d_rho, int n_threads) {
    const int64_t m = n * p;
    /* per entry: mask * lp, and theta, log theta, lgamma(theta), digamma(theta) */
    double *scratch = malloc(5 * (size_t)m * sizeof(double) + 8);
    double *pre = per_entry ? NULL : malloc(3 * (size_t)p * sizeof(double) + 8);
    if (!scratch || (!per_entry && !pre)) {
        free(scratch);
        free(pre);
        return 2;
    }
    double *lp = scratch, *log_th = scratch + m, *lg_th = scratch + 2 * m, *dg_th = scratch + 3 * m;
    double *th_e = scratch + 4 * m;
    if (n_threads < 1) n_threads = 1;
    if (pre) { /* per protein, computed once and repeated for every cell */
        for (int64_t j = 0; j < p; j++) {
            pre[j] = log((double)theta[j]);
            pre[p + j] = lgamma_positive(theta[j]);
            pre[2 * p + j] = digamma_positive(theta[j]);
        }
    }
#pragma omp parallel num_threads(n_threads)
    {
        if (pre) {
#pragma omp for schedule(static)
            for (int64_t i = 0; i < n; i++) {
                for (int64_t j = 0; j < p; j++) {
                    th_e[i * p + j] = theta[j];
                    log_th[i * p + j] = pre[j];
                    lg_th[i * p + j] = pre[p + j];
                    dg_th[i * p + j] = pre[2 * p + j];
                }
            }
        } else {
#pragma omp for simd schedule(static)
            for (int64_t k = 0; k < m; k++) {
                const double th = theta[k];
                th_e[k] = th;
                log_th[k] = log(th);
                lg_th[k] = lgamma_positive(th);
                dg_th[k] = d_back ? digamma_positive(th) : 0.0;
            }
        }
#pragma omp for simd schedule(static)
        for (int64_t k = 0; k < m; k++) {
            lp[k] = mixture_entry(y[k], th_e[k], log_th[k], lg_th[k], dg_th[k], log_back[k],
                                  log_fore[k], rho[k], mask ? mask[k] : 1.0, k, d_back, d_fore,
                                  d_theta, d_rho);
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            double total = 0.0;
            for (int64_t j = 0; j < p; j++) total += lp[i * p + j];
            out[i] = (float)total;
        }
    }
    free(scratch);
    free(pre);
    return 0;
}
