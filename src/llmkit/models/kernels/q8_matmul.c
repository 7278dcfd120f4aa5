/* y = x @ W.T for int8 weights with a scale per block of 32 inputs, activations quantized to int8 per
 * block of 32 on the way in (W8A8 in blocks, as llama.cpp's q8_0): AVX2 integer dot products.
 *
 * Why this exists: PyTorch's weight-only int8 CPU kernel converts every code to float (its fast path
 * is AVX-512), so on AVX2 a one-row product runs at about a third of the memory bandwidth; fbgemm's
 * int8 x int8 takes one activation scale per row, too coarse where a language model has outlier
 * features. Blocks of 32 keep an outlier's scale local to its block.
 *
 * Plain C with a C ABI (loaded with ctypes, the GIL released during the call); OpenMP for threads,
 * linked against the libgomp PyTorch has already loaded, so both share one thread pool.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define BLOCK 32

/* x (K,) -> q (K,) int8 and d (K / 32,) scales: x ~ q * d per block. */
static void quantize_row(const float *x, int64_t K, int8_t *q, float *d) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < K / BLOCK; b++) {
        const float *xb = x + b * BLOCK;
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(xb + 8 * j);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float m = _mm_cvtss_f32(m4);
        const float scale = m / 127.0f;
        d[b] = scale;
        const __m256 inv = _mm256_set1_ps(m > 0.0f ? 127.0f / m : 0.0f);
        __m256i i[4];
        for (int j = 0; j < 4; j++)
            i[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], inv), _MM_ROUND_NEAREST | _MM_FROUND_NO_EXC));
        /* 32 int32 -> 32 int8, undoing the lane interleaving of the packs */
        __m256i p16a = _mm256_packs_epi32(i[0], i[1]), p16b = _mm256_packs_epi32(i[2], i[3]);
        __m256i p8 = _mm256_packs_epi16(p16a, p16b);
        p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + b * BLOCK), p8);
    }
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One output: sum over blocks of w_scale * x_scale * <w codes, x codes>. */
static inline float dot_row(const int8_t *w, const float *ws, const int8_t *q, const float *d, int64_t nb) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i wv = _mm256_loadu_si256((const __m256i *)(w + b * BLOCK));
        __m256i qv = _mm256_loadu_si256((const __m256i *)(q + b * BLOCK));
        /* maddubs multiplies unsigned by signed bytes: |w| times x with w's sign (codes are in -127..127) */
        __m256i prod = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(qv, wv));
        __m256 sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(ws[b] * d[b]), sum, acc);
    }
    return hsum(acc);
}

/* Four activation rows against one weight row: the weight block is loaded and its magnitudes taken once for the
 * four (batched decoding and prefill). */
static inline void dot_row4(const int8_t *w, const float *ws, const int8_t *q, const float *d, int64_t K, int64_t nb,
                            float *out) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++) {
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + b * BLOCK));
        const __m256i wabs = _mm256_sign_epi8(wv, wv);
        for (int j = 0; j < 4; j++) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + j * K + b * BLOCK));
            const __m256i prod = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(qv, wv));
            const __m256 sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(ws[b] * d[j * nb + b]), sum, acc[j]);
        }
    }
    for (int j = 0; j < 4; j++)
        out[j] = hsum(acc[j]);
}

/* sum of squares of x (K,), K % 8 == 0 */
static float sum_squares(const float *x, int64_t K) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < K; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    return hsum(acc);
}

/* x (M, K) float, w (N, K) int8, ws (N, K / 32) float -> y (M, N) float. K % 32 == 0.
 * norm (K,) or NULL: each row of x is RMS-normalised first, x * rsqrt(mean(x^2) + eps) * norm (the RMSNorm
 * before a projection, fused so a decode step pays one call instead of five small ops).
 * residual (M, N) or NULL: added to y (the residual connection after a projection). */
int llmkit_q8_matmul(const float *x, const int8_t *w, const float *ws, float *y,
                     int64_t M, int64_t N, int64_t K, int threads,
                     const float *norm, float eps, const float *residual) {
    const int64_t nb = K / BLOCK;
    int8_t *q = malloc((size_t)(M * K));
    float *d = malloc((size_t)(M * nb) * sizeof(float));
    float *row = norm ? malloc((size_t)K * sizeof(float)) : NULL;
    if (!q || !d || (norm && !row)) {
        free(q);
        free(d);
        free(row);
        return 1;
    }
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * K;
        if (norm) {
            const float r = 1.0f / sqrtf(sum_squares(xm, K) / (float)K + eps);
            for (int64_t i = 0; i < K; i++)
                row[i] = xm[i] * r * norm[i];
            xm = row;
        }
        quantize_row(xm, K, q + m * K, d + m * nb);
    }
    /* chunks of 16 outputs: enough to balance two to a few dozen threads, few enough to stay cheap */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 16) {
        const int64_t n1 = n0 + 16 < N ? n0 + 16 : N;
        for (int64_t n = n0; n < n1; n++) {
            int64_t m = 0;
            for (; m + 4 <= M; m += 4) {
                float v[4];
                dot_row4(w + n * K, ws + n * nb, q + m * K, d + m * nb, K, nb, v);
                for (int j = 0; j < 4; j++)
                    y[(m + j) * N + n] = residual ? residual[(m + j) * N + n] + v[j] : v[j];
            }
            for (; m < M; m++) {
                const float v = dot_row(w + n * K, ws + n * nb, q + m * K, d + m * nb, nb);
                y[m * N + n] = residual ? residual[m * N + n] + v : v;
            }
        }
    }
    free(q);
    free(d);
    free(row);
    return 0;
}

/* Attention of one query per head over one sequence's cache, on the calling thread (for one sequence the work is
 * a few microseconds: splitting it over threads costs more than it saves, which is where SDPA loses at batch 1).
 * q (nkv * n_rep, hd), already scaled; k and v: head g's rows at k + g * head_stride, L rows of hd; out like q.
 * scratch: L floats. hd % 8 == 0. */
void llmkit_attend_one(const float *q, const float *k, const float *v, float *out, int64_t nkv, int64_t n_rep,
                       int64_t hd, int64_t L, int64_t head_stride, float *scratch) {
    for (int64_t g = 0; g < nkv; g++) {
        const float *kh = k + g * head_stride, *vh = v + g * head_stride;
        for (int64_t r = 0; r < n_rep; r++) {
            const float *qh = q + (g * n_rep + r) * hd;
            float *o = out + (g * n_rep + r) * hd;
            float top = -INFINITY;
            for (int64_t t = 0; t < L; t++) {
                __m256 acc = _mm256_setzero_ps();
                for (int64_t i = 0; i < hd; i += 8)
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i), _mm256_loadu_ps(kh + t * hd + i), acc);
                scratch[t] = hsum(acc);
                top = scratch[t] > top ? scratch[t] : top;
            }
            float sum = 0.0f;
            for (int64_t t = 0; t < L; t++) {
                scratch[t] = expf(scratch[t] - top);
                sum += scratch[t];
            }
            for (int64_t i = 0; i < hd; i += 8) {
                __m256 acc = _mm256_setzero_ps();
                for (int64_t t = 0; t < L; t++)
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(scratch[t]), _mm256_loadu_ps(vh + t * hd + i), acc);
                _mm256_storeu_ps(o + i, _mm256_mul_ps(acc, _mm256_set1_ps(1.0f / sum)));
            }
        }
    }
}
