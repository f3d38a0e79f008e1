/* CPU kernels of the sparse LayerNorm(V) + Linear(V, H) (see layernorm_linear.py for the math).
 *
 * Why: on CPU, a TASU text-only step spends most of its extra time reading and writing the
 * H x V = 2,048 x 25,055 weight (205 MB in float32): two mat-vecs in the forward pass, two in the
 * backward pass and the dense rank-two weight gradient. Each is memory-bound, and BLAS reads the
 * weight once per mat-vec. These kernels read it once per *pair* of mat-vecs, pick up the gathered
 * columns on the same pass, and write the gradient (both rank-one terms and the sparse columns)
 * while the backward pair reads W, with stores that bypass the caches. Plain C with OpenMP, no
 * torch headers: it compiles in about a second, is loaded with ctypes, and every function has a
 * torch-op twin that gives the same numbers to rounding.
 *
 * Layout: W is row-major [h, v] (nn.Linear's weight: one row per output unit), float32,
 * contiguous. Column ids are int64. `threads` is torch's intra-op thread count.
 */
#include <omp.h>
#include <stdint.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* One binary for every x86-64 CPU: the loader picks the widest vector unit present. */
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

/* Rows of W taken together: each element of x1 and x2 is loaded once per block of ROWS rows. */
#define ROWS 4

/* u1 = W x1, u2 = W x2 (forward: W gamma and W beta), and cols[i, n] = W[i, ids[n]] for n < n_ids
 * (the columns the sparse rows touch, gathered while their rows of W are in cache; [h, n_ids], so
 * that each row's gathered values are written side by side). */
MULTIVERSION
void pair_matvec_and_gather(const float *W, int64_t h, int64_t v, const float *x1, const float *x2,
                            float *u1, float *u2, const int64_t *ids, int64_t n_ids, float *cols,
                            int threads) {
  const int64_t blocks = (h + ROWS - 1) / ROWS;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t i0 = b * ROWS, rows = h - i0 < ROWS ? h - i0 : ROWS;
    if (rows == ROWS) {
      const float *w0 = W + i0 * v, *w1 = w0 + v, *w2 = w1 + v, *w3 = w2 + v;
      float a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
      for (int64_t j = 0; j < v; j++) {
        const float x = x1[j], y = x2[j];
        a0 += w0[j] * x; a1 += w1[j] * x; a2 += w2[j] * x; a3 += w3[j] * x;
        b0 += w0[j] * y; b1 += w1[j] * y; b2 += w2[j] * y; b3 += w3[j] * y;
      }
      u1[i0] = a0; u1[i0 + 1] = a1; u1[i0 + 2] = a2; u1[i0 + 3] = a3;
      u2[i0] = b0; u2[i0 + 1] = b1; u2[i0 + 2] = b2; u2[i0 + 3] = b3;
    } else {
      for (int64_t i = i0; i < i0 + rows; i++) {
        const float *w = W + i * v;
        float a = 0, c = 0;
#pragma omp simd reduction(+ : a, c)
        for (int64_t j = 0; j < v; j++) { a += w[j] * x1[j]; c += w[j] * x2[j]; }
        u1[i] = a; u2[i] = c;
      }
    }
    for (int64_t i = i0; i < i0 + rows; i++)
      for (int64_t n = 0; n < n_ids; n++) cols[i * n_ids + n] = W[i * v + ids[n]];
  }
}

/* Writes one cache line (16 floats, `dst` 64-byte aligned) past the caches where the CPU can: the
 * weight gradient is read next by the optimizer, long after it would have left the caches, so an
 * ordinary store's fetch of the old line (to own it before writing) would be wasted traffic. */
static inline void store_line(float *dst, const float *src) {
#if defined(__SSE__)
  for (int q = 0; q < 16; q += 4) _mm_stream_ps(dst + q, _mm_loadu_ps(src + q));
#else
  for (int q = 0; q < 16; q++) dst[q] = src[q];
#endif
}

/* One row of the weight gradient: d[j] = a * gamma[j] + c * beta[j], plus cols[k] at column ids[k]
 * (ids sorted, repeats add up). Whole aligned lines go through store_line; the unaligned head and
 * tail of the row take ordinary stores. */
static void grad_row(float *d, int64_t v, float a, float c, const float *gamma, const float *beta,
                     const int64_t *ids, int64_t n_ids, const float *cols) {
  int64_t j = 0, k = 0;
  const int64_t head = (int64_t)((64 - ((uintptr_t)d & 63)) & 63) / (int64_t)sizeof(float);
  for (; j < head && j < v; j++) d[j] = a * gamma[j] + c * beta[j];
  for (; k < n_ids && ids[k] < j; k++) d[ids[k]] += cols[k];
  float line[16];
  for (; j + 16 <= v; j += 16) {
#pragma omp simd
    for (int t = 0; t < 16; t++) line[t] = a * gamma[j + t] + c * beta[j + t];
    for (; k < n_ids && ids[k] < j + 16; k++) line[ids[k] - j] += cols[k];
    store_line(d + j, line);
  }
  for (int64_t t = j; t < v; t++) d[t] = a * gamma[t] + c * beta[t];
  for (; k < n_ids; k++) d[ids[k]] += cols[k];
}

/* The backward pass over W, each part optional (NULL skips it):
 *   z1 = W^T y1, z2 = W^T y2 (W^T Ga and W^T G), when z1 is given;
 *   dW = y1 (x) gamma + y2 (x) beta, plus cols[i, k] at dW[i, ids[k]], when dW is given.
 * Each thread takes a contiguous range of rows, so W is read and dW written as long streams; its
 * transposed sums go to its own `partials` (2 x v floats per thread, `threads` of them, in L2),
 * added up at the end. ids are sorted ascending; cols is [h, n_ids] in the same order. */
MULTIVERSION
void transposed_pair_and_weight_grad(const float *W, int64_t h, int64_t v, const float *y1, const float *y2,
                                     float *z1, float *z2, float *partials, float *dW, const float *gamma,
                                     const float *beta, const int64_t *ids, int64_t n_ids, const float *cols,
                                     int threads) {
  const int64_t blocks = (h + ROWS - 1) / ROWS;
#pragma omp parallel num_threads(threads)
  {
    const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t first = blocks * tid / nth * ROWS, last_block = blocks * (tid + 1) / nth * ROWS;
    const int64_t last = last_block < h ? last_block : h;
    float *s1 = partials + 2 * tid * v, *s2 = s1 + v;
    if (z1)
      for (int64_t j = 0; j < v; j++) { s1[j] = 0; s2[j] = 0; }
    for (int64_t i0 = first; i0 < last; i0 += ROWS) {
      const int64_t rows = last - i0 < ROWS ? last - i0 : ROWS;
      if (z1 && rows == ROWS) {
        const float *w0 = W + i0 * v, *w1 = w0 + v, *w2 = w1 + v, *w3 = w2 + v;
        const float a0 = y1[i0], a1 = y1[i0 + 1], a2 = y1[i0 + 2], a3 = y1[i0 + 3];
        const float b0 = y2[i0], b1 = y2[i0 + 1], b2 = y2[i0 + 2], b3 = y2[i0 + 3];
#pragma omp simd
        for (int64_t j = 0; j < v; j++) {
          s1[j] += w0[j] * a0 + w1[j] * a1 + w2[j] * a2 + w3[j] * a3;
          s2[j] += w0[j] * b0 + w1[j] * b1 + w2[j] * b2 + w3[j] * b3;
        }
      } else if (z1) {
        for (int64_t i = i0; i < i0 + rows; i++) {
          const float *w = W + i * v;
          const float a = y1[i], c = y2[i];
#pragma omp simd
          for (int64_t j = 0; j < v; j++) { s1[j] += w[j] * a; s2[j] += w[j] * c; }
        }
      }
      if (dW)
        for (int64_t i = i0; i < i0 + rows; i++)
          grad_row(dW + i * v, v, y1[i], y2[i], gamma, beta, ids, n_ids, cols + i * n_ids);
    }
#if defined(__SSE__)
    _mm_sfence();  /* the streamed lines are visible before anyone reads dW */
#endif
    if (z1) {
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t j = 0; j < v; j++) {
        float a = 0, c = 0;
        for (int64_t t = 0; t < nth; t++) { a += partials[2 * t * v + j]; c += partials[(2 * t + 1) * v + j]; }
        z1[j] = a; z2[j] = c;
      }
    }
  }
}
