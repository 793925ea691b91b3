// Region scoring: the batched mask-region embedding comparison and the label anomaly statistic
// of Algorithm 2. The per-row math below is shared by the CPU and CUDA backends.
#pragma once

#include <cmath>
#include <cstdint>

#include "clipguard/common.hpp"

namespace clipguard {

// x / max(||x||, eps), as torch.nn.functional.normalize: a zero vector stays zero.
CLIPGUARD_HD void l2_normalize_row(const float* x, int64_t d, float* out) {
  double sq = 0.0;
  for (int64_t i = 0; i < d; ++i) sq += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / fmax(sqrt(sq), 1e-12));
  for (int64_t i = 0; i < d; ++i) out[i] = x[i] * inv;
}

// Softmax of scale * logits over one row of c labels, reduced to its k most probable labels
// (descending; ties go to the lower label index) and their probabilities.
CLIPGUARD_HD void softmax_topk_row(const float* logits, int64_t c, float scale, int k,
                                   int32_t* labels, float* probs) {
  float best = -INFINITY;
  for (int64_t j = 0; j < c; ++j) best = fmaxf(best, scale * logits[j]);
  float sum = 0.f;
  int filled = 0;
  for (int64_t j = 0; j < c; ++j) {
    const float z = scale * logits[j];
    sum += expf(z - best);
    // Insertion into the running top-k (k is small: a handful of labels).
    if (filled < k || z > probs[filled - 1]) {
      int pos = filled < k ? filled++ : k - 1;
      while (pos > 0 && probs[pos - 1] < z) {
        probs[pos] = probs[pos - 1];
        labels[pos] = labels[pos - 1];
        --pos;
      }
      probs[pos] = z;
      labels[pos] = static_cast<int32_t>(j);
    }
  }
  for (int i = 0; i < filled; ++i) probs[i] = expf(probs[i] - best) / sum;
}

// Anomaly index of each label's rate counts/totals: (rate - median) / (1.4826 * MAD) over the
// labels with totals > 0 (Neural Cleanse's rule, signed so that only excess is positive). Labels
// with totals == 0 get 0. When the MAD is 0 the mean absolute deviation (x 1.2533) stands in; when
// that is 0 too, every label is at the median and all indices are 0.
void label_anomaly_cpu(const double* counts, const double* totals, int64_t c, double* index);

struct CompareArgs {
  const float* region_emb = nullptr;  // [R,D]
  const float* image_emb = nullptr;   // [N,D]
  const int64_t* image_index = nullptr;  // [R]
  const float* text_emb = nullptr;    // [C,D]
  int64_t n_regions = 0, n_images = 0, n_labels = 0, dim = 0;
  float scale = 100.f;
  int k = 5;
};

struct CompareOutputs {
  int32_t* region_labels = nullptr;  // [R,k]
  float* region_probs = nullptr;     // [R,k]
  int32_t* image_labels = nullptr;   // [N,k]
  float* image_probs = nullptr;      // [N,k]
  float* region_image_cos = nullptr;  // [R]
};

void validate_compare_args(const CompareArgs& args);
void compare_cpu(const CompareArgs& args, const CompareOutputs& out);

}  // namespace clipguard
