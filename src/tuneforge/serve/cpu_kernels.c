/* tuneforge's CPU kernels for int8 serving: q8_0 matmuls and one whole Llama-family decode step.
 *
 * Why this file exists: at batch 1 a small model's decode step on a CPU is ~600 tiny PyTorch ops per token, and
 * on a 2-core machine their dispatch and Python costs were ~55% of the step (bench/RESULTS.md); the matmuls
 * themselves read the weights at memory speed. Here the whole step (RMSNorm, q8_0 projections with LoRA on top,
 * RoPE, attention over the KV cache, SwiGLU, output head) is one C call, so a token costs what its bytes cost.
 *
 * Weight format: q8_0, llama.cpp's 8-bit format: rows split into blocks of 32 values, each block stored as 32
 * int8 and one fp32 scale d = max|w| / 127 (llama.cpp stores d in fp16). Activations are quantized the same way
 * on the fly (per block of 32, `quantize_rows`), and a block's dot product is d_w * d_x * sum(q_w * q_x) with an
 * int32 sum: ggml's ggml_vec_dot_q8_0_q8_0, whose AVX2 form is `dot_q8` below.
 *
 * LoRA stays unmerged and fp32: per projection group, xa = A x (A: the group's A's stacked, (R, in)) and
 * y += B xa (B: (out, R), block-diagonal with the alpha/r scales folded in), on the unquantized x.
 *
 * Built by tuneforge/serve/cpu_kernels.py with the system C compiler (-O3, -fopenmp, -mavx2 -mfma where the CPU
 * has them; a scalar path otherwise) and called through ctypes, which releases the GIL for the call.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TF_AVX2 1
#endif

#define QK 32

typedef struct {
    const int8_t *q;    /* (rows, cols) */
    const float *d;     /* (rows, cols / QK) block scales */
    const float *bias;  /* (rows) or NULL */
    int64_t rows, cols;
} q8_matrix;

typedef struct {
    const float *a;     /* (r, cols of the group's input) or NULL: the group is not adapted */
    const float *b;     /* (rows of the group's output, r), scales folded in */
    int64_t r;
} lora_group;

typedef struct {
    const float *in_norm, *post_norm; /* RMSNorm weights (hidden) */
    q8_matrix qkv, o, gate_up, down;  /* q/k/v and gate/up fused along their outputs */
} q8_layer;

typedef struct {
    int64_t hidden, n_layers, n_heads, n_kv, head_dim, inter, vocab;
    float eps, scaling;
    const float *embed;      /* (vocab, hidden) fp32 */
    const float *final_norm; /* (hidden) */
    q8_matrix head;          /* (vocab, hidden) */
    const q8_layer *layers;  /* n_layers */
} q8_model;

int tf_kernels_simd(void) {
#ifdef TF_AVX2
    return 1;
#else
    return 0;
#endif
}

/* ------------------------------------------------------------------------------------------------ helpers */
#ifdef TF_AVX2
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

static inline float dot_f32(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float s = 0.0f;
#ifdef TF_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    s = hsum8(_mm256_add_ps(acc0, acc1));
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* y += a * x over n floats */
static inline void axpy(float *y, float a, const float *x, int64_t n) {
    int64_t i = 0;
#ifdef TF_AVX2
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += a * x[i];
}

/* sum over blocks of d_w[b] * d_x[b] * <q_w block, q_x block> */
static inline float dot_q8(const int8_t *wq, const float *wd, const int8_t *xq, const float *xd, int64_t nb) {
#ifdef TF_AVX2
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i w = _mm256_loadu_si256((const __m256i *)(wq + b * QK));
        __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * QK));
        /* maddubs multiplies unsigned by signed bytes: |x| times w with x's sign moved onto w. Both sides are in
           [-127, 127], so a pair sum is at most 2 * 127 * 127 < 32767: no int16 saturation. */
        __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x));
        __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(wd[b] * xd[b]), p, acc);
    }
    return hsum8(acc);
#else
    float s = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t t = 0;
        for (int j = 0; j < QK; j++) t += (int32_t)wq[b * QK + j] * (int32_t)xq[b * QK + j];
        s += wd[b] * xd[b] * (float)t;
    }
    return s;
#endif
}

/* q8_0 quantization of `m` rows of `k` floats (k a multiple of QK): q (m, k) int8, d (m, k / QK) */
static void quantize_rows(const float *x, int64_t m, int64_t k, int8_t *q, float *d) {
    const int64_t nb = k / QK;
    for (int64_t r = 0; r < m; r++) {
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + r * k + b * QK;
            int8_t *qb = q + r * k + b * QK;
            float amax = 0.0f;
            for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
            const float scale = amax / 127.0f, inv = scale > 0.0f ? 1.0f / scale : 0.0f;
            d[r * nb + b] = scale;
            for (int j = 0; j < QK; j++) qb[j] = (int8_t)lrintf(xb[j] * inv);
        }
    }
}

static inline int thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* y (m, rows) = x (m, cols) W^T + bias, plus the LoRA group's B (A x) when adapted. `xq`/`xd` are x quantized;
   `xa` is scratch of m * lora->r floats per thread. Output rows are split across the threads of the enclosing
   parallel region (it must be called by all of them). */
static void linear_in_region(const q8_matrix *w, const float *x, const int8_t *xq, const float *xd, int64_t m,
                             const lora_group *lora, float *xa, float *y) {
    const int64_t k = w->cols, nb = k / QK, n = w->rows;
    const int adapted = lora != NULL && lora->a != NULL;
    if (adapted) {
        /* every thread computes all of A x (r * k multiply-adds, ~2 us for SmolLM2's q/k/v at rank 8) into its own
           scratch: cheaper than a barrier, which on a busy 2-core machine can wait a whole time slice */
        const int64_t r = lora->r;
        xa += (int64_t)thread_index() * m * r;
        for (int64_t t = 0; t < m * r; t++) xa[t] = dot_f32(lora->a + (t % r) * k, x + (t / r) * k, k);
    }
#pragma omp for schedule(static)
    for (int64_t o = 0; o < n; o++) {
        const int8_t *wq = w->q + o * k;
        const float *wd = w->d + o * nb;
        const float bias = w->bias ? w->bias[o] : 0.0f;
        for (int64_t i = 0; i < m; i++) {
            float s = dot_q8(wq, wd, xq + i * k, xd + i * nb, nb) + bias;
            if (adapted) s += dot_f32(lora->b + o * lora->r, xa + i * lora->r, lora->r);
            y[i * n + o] = s;
        }
    }
}

/* y (m, rows) = x (m, cols) W^T + bias: the matmul the PyTorch path uses for several rows (prefill, batches) */
void tf_q8_matmul(const float *x, int64_t m, const q8_matrix *w, float *y, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    const int64_t k = w->cols;
    int8_t *xq = malloc((size_t)(m * k));
    float *xd = malloc(sizeof(float) * (size_t)(m * (k / QK)));
    quantize_rows(x, m, k, xq, xd);
#pragma omp parallel num_threads(nthreads)
    linear_in_region(w, x, xq, xd, m, NULL, NULL, y);
    free(xq);
    free(xd);
}

static void rms_norm(const float *x, const float *w, int64_t n, float eps, float *out) {
    const float ms = dot_f32(x, x, n) / (float)n;
    const float inv = 1.0f / sqrtf(ms + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

/* HF Llama's RoPE on one head: out = x cos + rotate_half(x) sin, rotate_half(x) = (-x[half:], x[:half]) */
static void rope(float *x, const float *cos, const float *sin, int64_t hd) {
    const int64_t half = hd / 2;
    for (int64_t i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* One decode step for one sequence: `token` goes at position `pos`; its keys and values are written to the
   cache (row 0 of a (layers, rows, kv_heads, capacity, head_dim) buffer: `layer_stride` and `head_stride` are
   in floats), attention covers positions 0..pos. `cos`/`sin` are RoPE's tables at `pos` (head_dim each).
   `lora` is n_layers * 4 groups (qkv, o, gate_up, down) or NULL for the base. Writes `logits` (vocab). */
void tf_q8_step(const q8_model *md, int64_t token, int64_t pos, float *keys, float *values, int64_t layer_stride,
                int64_t head_stride, const float *cos, const float *sin, const lora_group *lora, float *logits,
                int nthreads) {
    if (nthreads < 1) nthreads = 1;
    const int64_t H = md->hidden, hd = md->head_dim, nh = md->n_heads, nkv = md->n_kv, I = md->inter;
    const int64_t qs = nh * hd, kvs = nkv * hd, group = nh / nkv, ctx = pos + 1;
    const int64_t kmax = I > qs ? (I > H ? I : H) : (qs > H ? qs : H);
    int64_t rmax = 0;
    if (lora)
        for (int64_t g = 0; g < md->n_layers * 4; g++) rmax = lora[g].r > rmax ? lora[g].r : rmax;
    float *h = malloc(sizeof(float) * (size_t)H);
    float *x = malloc(sizeof(float) * (size_t)kmax);
    float *qkv = malloc(sizeof(float) * (size_t)(qs + 2 * kvs));
    float *att = malloc(sizeof(float) * (size_t)qs);
    float *gu = malloc(sizeof(float) * (size_t)(2 * I));
    float *out = malloc(sizeof(float) * (size_t)H);
    float *scores = malloc(sizeof(float) * (size_t)(nh * ctx));
    float *xa = malloc(sizeof(float) * (size_t)(nthreads * (rmax > 0 ? rmax : 1)));
    int8_t *xq = malloc((size_t)kmax);
    float *xd = malloc(sizeof(float) * (size_t)(kmax / QK));
    memcpy(h, md->embed + token * H, sizeof(float) * (size_t)H);

#pragma omp parallel num_threads(nthreads)
    for (int64_t l = 0; l < md->n_layers; l++) {
        const q8_layer *L = md->layers + l;
        const lora_group *lg = lora ? lora + 4 * l : NULL;
        float *kc = keys + l * layer_stride, *vc = values + l * layer_stride;
        /* attention block */
#pragma omp single
        {
            rms_norm(h, L->in_norm, H, md->eps, x);
            quantize_rows(x, 1, H, xq, xd);
        }
        linear_in_region(&L->qkv, x, xq, xd, 1, lg ? lg + 0 : NULL, xa, qkv);
#pragma omp single
        {
            for (int64_t i = 0; i < nh + nkv; i++) rope(qkv + i * hd, cos, sin, hd); /* q heads, then k heads */
            for (int64_t g = 0; g < nkv; g++) {
                memcpy(kc + g * head_stride + pos * hd, qkv + qs + g * hd, sizeof(float) * (size_t)hd);
                memcpy(vc + g * head_stride + pos * hd, qkv + qs + kvs + g * hd, sizeof(float) * (size_t)hd);
            }
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < nh; i++) {
            const float *q = qkv + i * hd;
            const float *kh = kc + (i / group) * head_stride, *vh = vc + (i / group) * head_stride;
            float *s = scores + i * ctx, *o = att + i * hd;
            float mx = -INFINITY;
            for (int64_t j = 0; j < ctx; j++) {
                s[j] = dot_f32(q, kh + j * hd, hd) * md->scaling;
                mx = fmaxf(mx, s[j]);
            }
            float sum = 0.0f;
            for (int64_t j = 0; j < ctx; j++) sum += (s[j] = expf(s[j] - mx));
            memset(o, 0, sizeof(float) * (size_t)hd);
            for (int64_t j = 0; j < ctx; j++) axpy(o, s[j] / sum, vh + j * hd, hd);
        }
#pragma omp single
        quantize_rows(att, 1, qs, xq, xd);
        linear_in_region(&L->o, att, xq, xd, 1, lg ? lg + 1 : NULL, xa, out);
        /* MLP block */
#pragma omp single
        {
            for (int64_t i = 0; i < H; i++) h[i] += out[i];
            rms_norm(h, L->post_norm, H, md->eps, x);
            quantize_rows(x, 1, H, xq, xd);
        }
        linear_in_region(&L->gate_up, x, xq, xd, 1, lg ? lg + 2 : NULL, xa, gu);
#pragma omp single
        {
            for (int64_t i = 0; i < I; i++) {
                const float g = gu[i];
                x[i] = g / (1.0f + expf(-g)) * gu[I + i]; /* SiLU(gate) * up */
            }
            quantize_rows(x, 1, I, xq, xd);
        }
        /* x is read by LoRA's A inside the region below: nothing writes it until the next layer's single */
        linear_in_region(&L->down, x, xq, xd, 1, lg ? lg + 3 : NULL, xa, out);
#pragma omp single
        for (int64_t i = 0; i < H; i++) h[i] += out[i];
    }
    rms_norm(h, md->final_norm, H, md->eps, x);
    quantize_rows(x, 1, H, xq, xd);
#pragma omp parallel num_threads(nthreads)
    linear_in_region(&md->head, x, xq, xd, 1, NULL, NULL, logits);

    free(h);
    free(x);
    free(qkv);
    free(att);
    free(gu);
    free(out);
    free(scores);
    free(xa);
    free(xq);
    free(xd);
}
