// CUDA region scoring: normalize, a shared-memory tiled GEMM for the logits, then one thread per
// row for the softmax/top-k (scoring.hpp, the same code the CPU runs).
#include <algorithm>

#include "cuda_check.hpp"

namespace clipguard {

namespace {

constexpr int kTile = 16;
constexpr int64_t kRowChunk = 8192;  // rows of logits materialized at once

__global__ void normalize_kernel(const float* x, int64_t n, int64_t d, float* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) l2_normalize_row(x + i * d, d, out + i * d);
}

// logits[i, j] = <x[i], t[j]> for x [n, d], t [c, d].
__global__ void logits_kernel(const float* x, int64_t n, const float* t, int64_t c, int64_t d,
                              float* logits) {
  __shared__ float xs[kTile][kTile + 1], ts[kTile][kTile + 1];
  const int64_t row = blockIdx.y * int64_t(kTile) + threadIdx.y;
  const int64_t col = blockIdx.x * int64_t(kTile) + threadIdx.x;
  float acc = 0.f;
  for (int64_t k0 = 0; k0 < d; k0 += kTile) {
    const int64_t kx = k0 + threadIdx.x;
    xs[threadIdx.y][threadIdx.x] = (row < n && kx < d) ? x[row * d + kx] : 0.f;
    const int64_t trow = blockIdx.x * int64_t(kTile) + threadIdx.y;
    ts[threadIdx.y][threadIdx.x] = (trow < c && kx < d) ? t[trow * d + kx] : 0.f;
    __syncthreads();
    for (int k = 0; k < kTile; ++k) acc += xs[threadIdx.y][k] * ts[threadIdx.x][k];
    __syncthreads();
  }
  if (row < n && col < c) logits[row * c + col] = acc;
}

__global__ void topk_kernel(const float* logits, int64_t n, int64_t c, float scale, int k,
                            int32_t* labels, float* probs) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) softmax_topk_row(logits + i * c, c, scale, k, labels + i * k, probs + i * k);
}

__global__ void cos_kernel(const float* regions, const float* images, const int64_t* index,
                           int64_t r, int64_t d, float* cos) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= r) return;
  float dot = 0.f;
  for (int64_t k = 0; k < d; ++k) dot += regions[i * d + k] * images[index[i] * d + k];
  cos[i] = dot;
}

__global__ void image_prob_kernel(const float* images, const int64_t* candidate, const float* text,
                                  int64_t n, int64_t c, int64_t d, float scale, float* logits,
                                  float* p_image) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  int32_t top1;
  p_image[i] = candidate[i] < 0 ? NAN
                                : label_prob_row(images + i * d, text, c, d, scale, candidate[i],
                                                 logits + i * c, &top1);
}

__global__ void trigger_kernel(TriggerArgs a, const float* p_image, float* logits,
                               TriggerOutputs out) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= a.n_regions) return;
  const int64_t i = a.image_index[r], label = a.candidate[i], c = a.n_labels, d = a.dim;
  if (label < 0) {
    out.p_image[r] = out.p_occluded[r] = out.p_isolated[r] = NAN;
    out.occluded_top1[r] = out.isolated_top1[r] = -1;
    out.score[r] = 0.f;
    return;
  }
  out.p_occluded[r] = label_prob_row(a.occluded_emb + r * d, a.text_emb, c, d, a.scale, label,
                                     logits + r * c, out.occluded_top1 + r);
  out.p_isolated[r] = label_prob_row(a.isolated_emb + r * d, a.text_emb, c, d, a.scale, label,
                                     logits + r * c, out.isolated_top1 + r);
  out.p_image[r] = p_image[i];
  out.score[r] = trigger_score(p_image[i], out.p_occluded[r], out.p_isolated[r]);
}

int blocks_for(int64_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

// Top-k labels of the rows of normalized x against normalized texts, in row chunks.
void topk_rows(const float* x, int64_t n, const float* t, const CompareArgs& a, int32_t* labels,
               float* probs) {
  if (n == 0) return;
  const int64_t c = a.n_labels, chunk = std::min(n, kRowChunk);
  DeviceBuffer<float> logits(chunk * c);
  DeviceBuffer<int32_t> dev_labels(n * a.k);
  DeviceBuffer<float> dev_probs(n * a.k);
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - r0);
    const dim3 grid(blocks_for(c, kTile), blocks_for(rows, kTile)), block(kTile, kTile);
    logits_kernel<<<grid, block>>>(x + r0 * a.dim, rows, t, c, a.dim, logits.get());
    topk_kernel<<<blocks_for(rows, 128), 128>>>(logits.get(), rows, c, a.scale, a.k,
                                                 dev_labels.get() + r0 * a.k,
                                                 dev_probs.get() + r0 * a.k);
    CLIPGUARD_CUDA_CHECK(cudaGetLastError());
  }
  CLIPGUARD_CUDA_CHECK(cudaDeviceSynchronize());
  dev_labels.to_host(labels);
  dev_probs.to_host(probs);
}

}  // namespace

void trigger_scores_cuda(const TriggerArgs& a, const TriggerOutputs& out) {
  validate_trigger_args(a);
  const int64_t r = a.n_regions, n = a.n_images, c = a.n_labels, d = a.dim;
  DeviceBuffer<float> occ(a.occluded_emb, r * d), iso(a.isolated_emb, r * d), images(a.image_emb, n * d);
  DeviceBuffer<float> texts(a.text_emb, c * d);
  DeviceBuffer<int64_t> index(a.image_index, r), candidate(a.candidate, n);
  for (auto [buf, rows] : {std::pair{occ.get(), r}, std::pair{iso.get(), r},
                           std::pair{images.get(), n}, std::pair{texts.get(), c}})
    if (rows) normalize_kernel<<<blocks_for(rows, 128), 128>>>(buf, rows, d, buf);
  CLIPGUARD_CUDA_CHECK(cudaGetLastError());
  DeviceBuffer<float> p_image(n), logits(std::max(r, n) * c);
  if (n)
    image_prob_kernel<<<blocks_for(n, 128), 128>>>(images.get(), candidate.get(), texts.get(), n, c,
                                                   d, a.scale, logits.get(), p_image.get());
  CLIPGUARD_CUDA_CHECK(cudaGetLastError());
  if (r == 0) return;
  DeviceBuffer<float> p_img_r(r), p_occ(r), p_iso(r), score(r);
  DeviceBuffer<int32_t> occ_top1(r), iso_top1(r);
  TriggerArgs dev = a;
  dev.occluded_emb = occ.get();
  dev.isolated_emb = iso.get();
  dev.image_emb = images.get();
  dev.image_index = index.get();
  dev.candidate = candidate.get();
  dev.text_emb = texts.get();
  TriggerOutputs dev_out{p_img_r.get(), p_occ.get(), p_iso.get(), occ_top1.get(), iso_top1.get(), score.get()};
  trigger_kernel<<<blocks_for(r, 128), 128>>>(dev, p_image.get(), logits.get(), dev_out);
  CLIPGUARD_CUDA_CHECK(cudaGetLastError());
  CLIPGUARD_CUDA_CHECK(cudaDeviceSynchronize());
  p_img_r.to_host(out.p_image);
  p_occ.to_host(out.p_occluded);
  p_iso.to_host(out.p_isolated);
  occ_top1.to_host(out.occluded_top1);
  iso_top1.to_host(out.isolated_top1);
  score.to_host(out.score);
}

void compare_cuda(const CompareArgs& a, const CompareOutputs& out) {
  validate_compare_args(a);
  const int64_t d = a.dim;
  DeviceBuffer<float> regions(a.region_emb, a.n_regions * d), images(a.image_emb, a.n_images * d);
  DeviceBuffer<float> texts(a.text_emb, a.n_labels * d);
  DeviceBuffer<int64_t> index(a.image_index, a.n_regions);
  // Normalize in place: the buffers are our own copies.
  for (auto [buf, n] : {std::pair{regions.get(), a.n_regions}, std::pair{images.get(), a.n_images},
                        std::pair{texts.get(), a.n_labels}})
    if (n) normalize_kernel<<<blocks_for(n, 128), 128>>>(buf, n, d, buf);
  CLIPGUARD_CUDA_CHECK(cudaGetLastError());
  topk_rows(regions.get(), a.n_regions, texts.get(), a, out.region_labels, out.region_probs);
  topk_rows(images.get(), a.n_images, texts.get(), a, out.image_labels, out.image_probs);
  if (a.n_regions) {
    DeviceBuffer<float> cos(a.n_regions);
    cos_kernel<<<blocks_for(a.n_regions, 128), 128>>>(regions.get(), images.get(), index.get(),
                                                      a.n_regions, d, cos.get());
    CLIPGUARD_CUDA_CHECK(cudaGetLastError());
    CLIPGUARD_CUDA_CHECK(cudaDeviceSynchronize());
    cos.to_host(out.region_image_cos);
  }
}

}  // namespace clipguard
