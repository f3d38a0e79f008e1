/* CPU kernels of the sparse LayerNorm(V) + Linear(V, H) (see layernorm_linear.py for the math).
 *
 * Why: on CPU, a TASU text-only step spends most of its extra time reading and writing the
 * H x V = 2,048 x 25,055 weight (205 MB in float32): two mat-vecs in the forward pass, two in the
 * backward pass and the dense rank-two weight gradient. Each is memory-bound, and BLAS reads the
 * weight once per mat-vec. These kernels read it once per *pair* of mat-vecs, pick up the gathered
 * columns on the same pass, and write the gradient (both rank-one terms and the sparse columns)
 * in one pass. Plain C with OpenMP, no torch headers: it compiles in about a second, is loaded
 * with ctypes, and every function has a torch-op twin that gives the same numbers to rounding.
 *
 * Layout: W is row-major [h, v] (nn.Linear's weight: one row per output unit), float32,
 * contiguous. Column ids are int64. `threads` is torch's intra-op thread count.
 */
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* One binary for every x86-64 CPU: the loader picks the widest vector unit present. */
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

/* Rows of W taken together: each element of x1 and x2 is loaded once per block of ROWS rows. */
#define ROWS 4

/* u1 = W x1, u2 = W x2 (forward: W gamma and W beta), and cols[n, i] = W[i, ids[n]] for n < n_ids
 * (the columns the sparse rows touch, gathered while their rows of W are in cache). */
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
      for (int64_t n = 0; n < n_ids; n++) cols[n * h + i] = W[i * v + ids[n]];
  }
}

/* Columns of W taken together in the transposed pair: the partial sums of one block stay in L1. */
#define COLS 1024

/* z1 = W^T y1, z2 = W^T y2 (backward: W^T Ga and W^T G). */
MULTIVERSION
void pair_matvec_transposed(const float *W, int64_t h, int64_t v, const float *y1, const float *y2,
                            float *z1, float *z2, int threads) {
  const int64_t blocks = (v + COLS - 1) / COLS;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t j0 = b * COLS, n = v - j0 < COLS ? v - j0 : COLS;
    float *s1 = z1 + j0, *s2 = z2 + j0;
    for (int64_t j = 0; j < n; j++) { s1[j] = 0; s2[j] = 0; }
    int64_t i = 0;
    for (; i + ROWS <= h; i += ROWS) {
      const float *w0 = W + i * v + j0, *w1 = w0 + v, *w2 = w1 + v, *w3 = w2 + v;
      const float a0 = y1[i], a1 = y1[i + 1], a2 = y1[i + 2], a3 = y1[i + 3];
      const float b0 = y2[i], b1 = y2[i + 1], b2 = y2[i + 2], b3 = y2[i + 3];
#pragma omp simd
      for (int64_t j = 0; j < n; j++) {
        s1[j] += w0[j] * a0 + w1[j] * a1 + w2[j] * a2 + w3[j] * a3;
        s2[j] += w0[j] * b0 + w1[j] * b1 + w2[j] * b2 + w3[j] * b3;
      }
    }
    for (; i < h; i++) {
      const float *w = W + i * v + j0;
      const float a = y1[i], c = y2[i];
#pragma omp simd
      for (int64_t j = 0; j < n; j++) { s1[j] += w[j] * a; s2[j] += w[j] * c; }
    }
  }
}

/* dW[i, j] = a[i] * gamma[j] + c[i] * beta[j], then dW[i, ids[n]] += cols[n, i] for n < n_ids
 * (repeated ids add up), one row at a time while it is in cache. */
MULTIVERSION
void rank_two_plus_columns(float *dW, int64_t h, int64_t v, const float *a, const float *gamma,
                           const float *c, const float *beta, const int64_t *ids, int64_t n_ids,
                           const float *cols, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < h; i++) {
    float *d = dW + i * v;
    const float ai = a[i], ci = c[i];
#pragma omp simd
    for (int64_t j = 0; j < v; j++) d[j] = ai * gamma[j] + ci * beta[j];
    for (int64_t n = 0; n < n_ids; n++) d[ids[n]] += cols[n * h + i];
  }
}
