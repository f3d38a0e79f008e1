/* CPU kernels of label-synchronous compression (see compress.py and compress_kernels.py).
 *
 * Why: compression reads V-wide frame posteriors (V = 25,055) in two places, the argmax of the
 * frames that blank does not clearly win and the mean of each kept run of frames. torch gathers
 * those rows into temporaries first, and its argmax is several times slower than a pass over the
 * memory. These read each row where it lies and write each output row once. Same results as the
 * torch ops, bit for bit: the first index of the maximum, and sums taken in frame order.
 *
 * Layout: `src` is [rows, v] row-major float32; row indices are int64.
 */
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

/* Rows are scanned in blocks that stay in L1: the maximum of each block, then the first index of
 * the overall maximum inside the first block that holds it (no second pass over the row). */
#define BLOCK 1024

/* out[k] = index of the first maximum of row rows[k] of src; a NaN counts as the maximum (as in
 * torch.argmax), its first occurrence wins. */
MULTIVERSION
void rows_argmax(const float *src, int64_t v, const int64_t *rows, int64_t n, int64_t *out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t k = 0; k < n; k++) {
    const float *x = src + rows[k] * v;
    float best = x[0];
    int64_t best_block = 0;
    int nan = 0;
    for (int64_t b = 0; b < v; b += BLOCK) {
      const int64_t e = b + BLOCK < v ? b + BLOCK : v;
      float m = x[b];
#pragma omp simd reduction(max : m) reduction(| : nan)
      for (int64_t j = b; j < e; j++) {
        m = x[j] > m ? x[j] : m;
        nan |= x[j] != x[j];
      }
      if (m > best) { best = m; best_block = b; }
    }
    int64_t j = 0;
    if (nan)
      while (x[j] == x[j]) j++;
    else
      for (j = best_block; x[j] != best; j++) {}
    out[k] = j;
  }
}

/* out[r] = (src[starts[r]] + src[starts[r] + 1] + ... ) / counts[r], the sum in frame order over
 * counts[r] rows; a row with counts[r] == 0 is all zeros (padding). */
MULTIVERSION
void segment_means(const float *src, int64_t v, const int64_t *starts, const int64_t *counts, int64_t n,
                   float *out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t r = 0; r < n; r++) {
    float *o = out + r * v;
    const float *first = src + starts[r] * v;
    const int64_t c = counts[r];
    if (c == 0) {
      for (int64_t j = 0; j < v; j++) o[j] = 0.0f;
      continue;
    }
    if (c == 1) {
#pragma omp simd
      for (int64_t j = 0; j < v; j++) o[j] = first[j];
      continue;
    }
    /* ((x0 + x1) + x2 + ... + x(c-1)) / c, element by element: the order of the frame loop */
    const float count = (float)c, *second = first + v, *last = first + (c - 1) * v;
    if (c == 2) {
#pragma omp simd
      for (int64_t j = 0; j < v; j++) o[j] = (first[j] + second[j]) / count;
      continue;
    }
#pragma omp simd
    for (int64_t j = 0; j < v; j++) o[j] = first[j] + second[j];
    for (int64_t f = 2; f < c - 1; f++) {
      const float *x = first + f * v;
#pragma omp simd
      for (int64_t j = 0; j < v; j++) o[j] += x[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < v; j++) o[j] = (o[j] + last[j]) / count;
  }
}
