/* CPU kernels of label-synchronous compression (see compress.py and compress_kernels.py).
 *
 * Why: compression reads V-wide frame posteriors (V = 25,055) in two places, the argmax of the
 * frames that blank does not clearly win and the mean of each kept run of frames, and in between
 * finds the runs with a few dozen small tensor ops. torch gathers the rows into temporaries first,
 * its argmax is several times slower than a pass over the memory, and on a batch the small ops
 * cost as much as the rest. These read each row where it lies, find the runs in one sequential
 * pass per utterance, and write each output row once. Same results as the torch ops, bit for bit:
 * the first index of the maximum, sums taken in frame order, float32 comparisons.
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

/* The index of the first maximum of x[0 .. v); a NaN counts as the maximum (as in torch.argmax),
 * its first occurrence wins. */
MULTIVERSION
static int64_t row_argmax(const float *x, int64_t v) {
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
  return j;
}

/* The runs compression keeps, for probs [b, t, v] with valid lengths[b]:
 * 1. each valid frame's argmax (blank, unread, where blank holds more than half the mass);
 * 2. per utterance, in frame order: a run of one non-blank argmax, or a single blank-argmax frame,
 *    kept when its mean blank probability (summed in frame order) is below the threshold.
 * Utterance u's kept runs go to starts/counts[u * t + 0 .. kept[u]) (starts: flat frame index);
 * labels [b * t] is scratch. */
void kept_runs(const float *probs, int64_t b, int64_t t, int64_t v, const int64_t *lengths, float threshold,
               int64_t blank_id, int64_t *labels, int64_t *starts, int64_t *counts, int64_t *kept,
               int threads) {
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(dynamic, 16)
    for (int64_t i = 0; i < b * t; i++) {
      const float *x = probs + i * v;
      if (i % t < lengths[i / t]) labels[i] = x[blank_id] > 0.5f ? blank_id : row_argmax(x, v);
    }
#pragma omp for schedule(static)
    for (int64_t u = 0; u < b; u++) {
      const int64_t base = u * t, n = lengths[u];
      int64_t k = 0;
      for (int64_t f = 0; f < n;) {
        const int64_t label = labels[base + f];
        int64_t end = f + 1;
        if (label != blank_id)
          while (end < n && labels[base + end] == label) end++;
        float blank = probs[(base + f) * v + blank_id];
        for (int64_t g = f + 1; g < end; g++) blank += probs[(base + g) * v + blank_id];
        if (blank / (float)(end - f) < threshold) {
          starts[base + k] = base + f;
          counts[base + k] = end - f;
          k++;
        }
        f = end;
      }
      kept[u] = k;
    }
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
