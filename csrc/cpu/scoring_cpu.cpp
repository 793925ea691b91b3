// CPU region scoring: a blocked GEMM of normalized embeddings against the label texts, fused with
// the per-row softmax/top-k so that the [R,C] logit matrix never exists as a whole.
#include <algorithm>
#include <cstring>
#include <vector>

#include "clipguard/parallel.hpp"
#include "clipguard/scoring.hpp"

// Compile the GEMM micro-kernel for several x86 ISAs; the loader picks the best one the CPU has,
// so a portable build still runs AVX-512 or AVX2 code where it can.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLIPGUARD_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLIPGUARD_MULTIVERSION
#endif

namespace clipguard {
namespace {

constexpr int64_t kTileRows = 8;    // rows of A per register tile
constexpr int64_t kTileCols = 48;   // label columns per register tile
constexpr int64_t kBlockRows = 64;  // rows per task; its logits stay in cache

// out[i, j] = sum_k a[i, k] * bt[k, j] for a [kTileRows, d] and a kTileCols-wide slice of bt
// [d, ldb]; out has leading dimension ldo.
CLIPGUARD_MULTIVERSION
void tile_dot(const float* a, int64_t d, const float* bt, int64_t ldb, float* out, int64_t ldo) {
  float acc[kTileRows][kTileCols] = {};
  for (int64_t k = 0; k < d; ++k) {
    const float* b = bt + k * ldb;
    for (int64_t i = 0; i < kTileRows; ++i) {
      const float av = a[i * d + k];
      for (int64_t j = 0; j < kTileCols; ++j) acc[i][j] += av * b[j];
    }
  }
  for (int64_t i = 0; i < kTileRows; ++i)
    std::memcpy(out + i * ldo, acc[i], sizeof(float) * kTileCols);
}

// Rows of x [n, d], L2-normalized, zero-padded to a multiple of kTileRows rows.
std::vector<float> normalized_rows(const float* x, int64_t n, int64_t d) {
  const int64_t padded = (n + kTileRows - 1) / kTileRows * kTileRows;
  std::vector<float> out(static_cast<size_t>(padded * d), 0.f);
  parallel_for(n, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) l2_normalize_row(x + i * d, d, out.data() + i * d);
  });
  return out;
}

}  // namespace

void validate_compare_args(const CompareArgs& a) {
  CLIPGUARD_CHECK_ARG(a.dim > 0, "embedding dimension must be positive, got ", a.dim);
  CLIPGUARD_CHECK_ARG(a.n_labels > 0, "text_emb must hold at least one label");
  CLIPGUARD_CHECK_ARG(a.k >= 1 && a.k <= a.n_labels, "k must be in [1, ", a.n_labels, "], got ", a.k);
  CLIPGUARD_CHECK_ARG(std::isfinite(a.scale), "scale must be finite");
  for (int64_t r = 0; r < a.n_regions; ++r)
    CLIPGUARD_CHECK_ARG(a.image_index[r] >= 0 && a.image_index[r] < a.n_images, "image_index[", r,
                        "] = ", a.image_index[r], " is out of range for ", a.n_images, " images");
}

void compare_cpu(const CompareArgs& a, const CompareOutputs& out) {
  validate_compare_args(a);
  const int64_t d = a.dim, c = a.n_labels;
  const std::vector<float> regions = normalized_rows(a.region_emb, a.n_regions, d);
  const std::vector<float> images = normalized_rows(a.image_emb, a.n_images, d);

  // Texts transposed to [d, c_pad] so a tile's columns are contiguous; pad columns are zero and
  // never read back.
  const int64_t c_pad = (c + kTileCols - 1) / kTileCols * kTileCols;
  std::vector<float> bt(static_cast<size_t>(d * c_pad), 0.f);
  {
    std::vector<float> row(static_cast<size_t>(d));
    for (int64_t j = 0; j < c; ++j) {
      l2_normalize_row(a.text_emb + j * d, d, row.data());
      for (int64_t k = 0; k < d; ++k) bt[k * c_pad + j] = row[k];
    }
  }

  // Tasks: blocks of region rows, then blocks of image rows.
  const int64_t region_blocks = (a.n_regions + kBlockRows - 1) / kBlockRows;
  const int64_t image_blocks = (a.n_images + kBlockRows - 1) / kBlockRows;
  parallel_for(region_blocks + image_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> logits(static_cast<size_t>(kBlockRows * c_pad));
    for (int64_t task = begin; task < end; ++task) {
      const bool is_region = task < region_blocks;
      const int64_t block = is_region ? task : task - region_blocks;
      const int64_t n = is_region ? a.n_regions : a.n_images;
      const float* x = (is_region ? regions : images).data();
      const int64_t row0 = block * kBlockRows, rows = std::min(kBlockRows, n - row0);
      const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
      // Column tiles outer, so one slice of texts serves every row tile of the block.
      for (int64_t j0 = 0; j0 < c_pad; j0 += kTileCols)
        for (int64_t t = 0; t < tiles; ++t)
          tile_dot(x + (row0 + t * kTileRows) * d, d, bt.data() + j0, c_pad,
                   logits.data() + t * kTileRows * c_pad + j0, c_pad);
      int32_t* labels = is_region ? out.region_labels : out.image_labels;
      float* probs = is_region ? out.region_probs : out.image_probs;
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t row = row0 + i;
        softmax_topk_row(logits.data() + i * c_pad, c, a.scale, a.k, labels + row * a.k,
                         probs + row * a.k);
        if (is_region) {
          const float* e = x + row * d;
          const float* z = images.data() + a.image_index[row] * d;
          float dot = 0.f;
          for (int64_t k = 0; k < d; ++k) dot += e[k] * z[k];
          out.region_image_cos[row] = dot;
        }
      }
    }
  });
}

void validate_trigger_args(const TriggerArgs& a) {
  CLIPGUARD_CHECK_ARG(a.dim > 0 && a.n_labels > 0, "text_emb must be a non-empty [C,D] array");
  CLIPGUARD_CHECK_ARG(std::isfinite(a.scale), "scale must be finite");
  for (int64_t r = 0; r < a.n_regions; ++r)
    CLIPGUARD_CHECK_ARG(a.image_index[r] >= 0 && a.image_index[r] < a.n_images, "image_index[", r,
                        "] = ", a.image_index[r], " is out of range for ", a.n_images, " images");
  for (int64_t i = 0; i < a.n_images; ++i)
    CLIPGUARD_CHECK_ARG(a.candidate[i] >= -1 && a.candidate[i] < a.n_labels, "candidate[", i,
                        "] = ", a.candidate[i], " is not a label index in [0, ", a.n_labels,
                        ") or -1");
}

void trigger_scores_cpu(const TriggerArgs& a, const TriggerOutputs& out) {
  validate_trigger_args(a);
  const int64_t d = a.dim, c = a.n_labels;
  std::vector<float> text(static_cast<size_t>(c * d));
  for (int64_t j = 0; j < c; ++j) l2_normalize_row(a.text_emb + j * d, d, text.data() + j * d);
  // The images' own probabilities, computed once per image with a candidate.
  std::vector<float> p_image(static_cast<size_t>(a.n_images), NAN);
  parallel_for(a.n_images, 64, [&](int64_t b, int64_t e) {
    std::vector<float> x(static_cast<size_t>(d)), logits(static_cast<size_t>(c));
    int32_t top1;
    for (int64_t i = b; i < e; ++i) {
      if (a.candidate[i] < 0) continue;
      l2_normalize_row(a.image_emb + i * d, d, x.data());
      p_image[i] = label_prob_row(x.data(), text.data(), c, d, a.scale, a.candidate[i], logits.data(), &top1);
    }
  });
  parallel_for(a.n_regions, 64, [&](int64_t b, int64_t e) {
    std::vector<float> x(static_cast<size_t>(d)), logits(static_cast<size_t>(c));
    for (int64_t r = b; r < e; ++r) {
      const int64_t i = a.image_index[r], label = a.candidate[i];
      if (label < 0) {
        out.p_image[r] = out.p_occluded[r] = out.p_isolated[r] = NAN;
        out.occluded_top1[r] = out.isolated_top1[r] = -1;
        out.score[r] = 0.f;
        continue;
      }
      l2_normalize_row(a.occluded_emb + r * d, d, x.data());
      out.p_occluded[r] = label_prob_row(x.data(), text.data(), c, d, a.scale, label, logits.data(),
                                         out.occluded_top1 + r);
      l2_normalize_row(a.isolated_emb + r * d, d, x.data());
      out.p_isolated[r] = label_prob_row(x.data(), text.data(), c, d, a.scale, label, logits.data(),
                                         out.isolated_top1 + r);
      out.p_image[r] = p_image[i];
      out.score[r] = trigger_score(p_image[i], out.p_occluded[r], out.p_isolated[r]);
    }
  });
}

void label_anomaly_cpu(const double* counts, const double* totals, int64_t c, double* index) {
  std::vector<double> rates;
  rates.reserve(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) {
    CLIPGUARD_CHECK_ARG(std::isfinite(counts[j]) && std::isfinite(totals[j]) && counts[j] >= 0 &&
                            totals[j] >= 0,
                        "counts and totals must be finite and non-negative (label ", j, ")");
    if (totals[j] > 0) rates.push_back(counts[j] / totals[j]);
  }
  auto median = [](std::vector<double> v) {
    if (v.empty()) return 0.0;
    const size_t h = v.size() / 2;
    std::nth_element(v.begin(), v.begin() + h, v.end());
    const double upper = v[h];
    if (v.size() % 2) return upper;
    return 0.5 * (upper + *std::max_element(v.begin(), v.begin() + h));
  };
  const double med = median(rates);
  std::vector<double> dev(rates.size());
  double mean_dev = 0.0;
  for (size_t i = 0; i < rates.size(); ++i) {
    dev[i] = std::fabs(rates[i] - med);
    mean_dev += dev[i];
  }
  if (!rates.empty()) mean_dev /= static_cast<double>(rates.size());
  double spread = 1.4826 * median(dev);
  if (spread <= 0.0) spread = 1.2533 * mean_dev;
  for (int64_t j = 0; j < c; ++j)
    index[j] = (totals[j] > 0 && spread > 0.0) ? (counts[j] / totals[j] - med) / spread : 0.0;
}

}  // namespace clipguard
