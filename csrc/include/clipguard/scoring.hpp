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

// ---- Trigger-candidate scoring (Algorithm 1, step 5) ----

// Probability of `label` under softmax(scale * <x, t_j>) over the c normalized label texts, for a
// normalized row x; `logits` is scratch space of c floats. Also gives the row's top-1 label.
CLIPGUARD_HD float label_prob_row(const float* x, const float* text, int64_t c, int64_t d,
                                  float scale, int64_t label, float* logits, int32_t* top1) {
  float best = -INFINITY;
  int32_t arg = 0;
  for (int64_t j = 0; j < c; ++j) {
    float dot = 0.f;
    for (int64_t k = 0; k < d; ++k) dot += x[k] * text[j * d + k];
    logits[j] = scale * dot;
    if (logits[j] > best) { best = logits[j]; arg = static_cast<int32_t>(j); }
  }
  float sum = 0.f;
  for (int64_t j = 0; j < c; ++j) sum += expf(logits[j] - best);
  *top1 = arg;
  return expf(logits[label] - best) / sum;
}

// How strongly a region explains its image's candidate label: the share of the image's
// probability for the label that occluding the region removes (the counterfactual), weighted up
// when the region on its own also shows the label.
CLIPGUARD_HD float trigger_score(float p_image, float p_occluded, float p_isolated) {
  const float drop = fmaxf(0.f, p_image - p_occluded) / fmaxf(p_image, 1e-6f);
  return drop * (0.5f + 0.5f * p_isolated);
}

struct TriggerArgs {
  const float* occluded_emb = nullptr;  // [R,D] embeddings of the occlude views
  const float* isolated_emb = nullptr;  // [R,D] embeddings of the isolate views
  const float* image_emb = nullptr;     // [N,D]
  const int64_t* image_index = nullptr;  // [R]
  const int64_t* candidate = nullptr;   // [N] candidate label per image, -1 for none
  const float* text_emb = nullptr;      // [C,D]
  int64_t n_regions = 0, n_images = 0, n_labels = 0, dim = 0;
  float scale = 100.f;
};

// Per region; regions of images without a candidate get NaN probabilities, top-1 -1, score 0.
struct TriggerOutputs {
  float* p_image = nullptr;      // [R] the image's probability of its candidate
  float* p_occluded = nullptr;   // [R] ... with the region occluded
  float* p_isolated = nullptr;   // [R] the region alone
  int32_t* occluded_top1 = nullptr;  // [R]
  int32_t* isolated_top1 = nullptr;  // [R]
  float* score = nullptr;        // [R] trigger_score
};

void validate_trigger_args(const TriggerArgs& args);
void trigger_scores_cpu(const TriggerArgs& args, const TriggerOutputs& out);

}  // namespace clipguard
