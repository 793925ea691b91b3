// CUDA decoding of YOLOv8-seg / FastSAM outputs, with the per-element math of decode.hpp.
// Detection: anchor scores on the device; the host keeps and sorts the candidates (a few hundred
// in practice); the device fills the pairwise-overlap bitmask and the host walks it greedily, as
// torchvision's CUDA NMS does. Masks: prototype grids then one thread per output pixel.
#include <algorithm>
#include <vector>

#include "cuda_check.hpp"
#include "decode_cuda.hpp"

namespace clipguard {

namespace {

constexpr int kThreads = 256;
constexpr int kNmsBlock = 64;  // candidates per bitmask word
constexpr int64_t kMaxBlocks = 65535 * 16;

int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

__global__ void score_kernel(const float* preds, int64_t batch, int64_t channels, int64_t anchors,
                             int64_t num_classes, float* scores, int32_t* labels) {
  const int64_t total = batch * anchors;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / anchors, a = i % anchors;
    scores[i] = anchor_score(preds + b * channels * anchors, anchors, num_classes, a, labels + i);
  }
}

// Bit j of mask[i * col_blocks + cb] is set when candidate cb*64 + j (> i) overlaps candidate i
// by more than the threshold. Only the upper triangle of blocks is filled (and read).
__global__ void nms_mask_kernel(const float* pred, int64_t anchors, const int64_t* cand, int64_t k,
                                float iou_threshold, int64_t col_blocks,
                                unsigned long long* mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (row_block > col_block) return;
  const int64_t row_size = min(k - row_block * kNmsBlock, int64_t(kNmsBlock));
  const int64_t col_size = min(k - col_block * kNmsBlock, int64_t(kNmsBlock));
  __shared__ float col_boxes[kNmsBlock * 4];
  if (threadIdx.x < col_size)
    anchor_box(pred, anchors, cand[col_block * kNmsBlock + threadIdx.x], col_boxes + 4 * threadIdx.x);
  __syncthreads();
  if (threadIdx.x < row_size) {
    const int64_t i = row_block * kNmsBlock + threadIdx.x;
    float box[4];
    anchor_box(pred, anchors, cand[i], box);
    unsigned long long bits = 0;
    for (int64_t j = row_block == col_block ? threadIdx.x + 1 : 0; j < col_size; ++j)
      if (box_iou(box, col_boxes + 4 * j) > iou_threshold) bits |= 1ULL << j;
    mask[i * col_blocks + col_block] = bits;
  }
}

__global__ void proto_kernel(MaskArgs a, float* grid) {
  const int64_t plane = a.proto_h * a.proto_w, total = a.n_det * plane;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = i / plane, idx = i % plane;
    const float* protos = a.protos + a.image_index[d] * a.num_masks * plane;
    grid[i] = sigmoid(proto_logit(a.coeffs + d * a.num_masks, protos, a.num_masks, plane, idx));
  }
}

__global__ void mask_kernel(MaskArgs a, const float* grid, uint8_t* out) {
  const int64_t plane = a.proto_h * a.proto_w, pixels = a.image_h * a.image_w;
  const int64_t total = a.n_det * pixels;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = i / pixels, y = (i % pixels) / a.image_w, x = i % a.image_w;
    const float* box = a.boxes + 4 * d;
    int64_t x_lo, x_hi, y_lo, y_hi;
    pixel_span(box[0], box[2], a.image_w, &x_lo, &x_hi);
    pixel_span(box[1], box[3], a.image_h, &y_lo, &y_hi);
    uint8_t on = 0;
    if (x >= x_lo && x < x_hi && y >= y_lo && y < y_hi) {
      const Tap ty = proto_tap(y, a.letterbox.scale_y, a.letterbox.pad_y, a.input_h, a.proto_h);
      const Tap tx = proto_tap(x, a.letterbox.scale_x, a.letterbox.pad_x, a.input_w, a.proto_w);
      on = mask_value(grid + d * plane, a.proto_w, 0, 0, ty, tx) > a.threshold;
    }
    out[i] = on;
  }
}

}  // namespace

std::vector<Detection> detect_cuda(const DetectArgs& a) {
  validate_detect_args(a);
  std::vector<Detection> out;
  const int64_t total = a.batch * a.anchors;
  if (total == 0) return out;
  const int64_t per_image = a.channels * a.anchors;
  DeviceBuffer<float> preds(a.preds, static_cast<size_t>(a.batch * per_image));
  DeviceBuffer<float> dev_scores(static_cast<size_t>(total));
  DeviceBuffer<int32_t> dev_labels(static_cast<size_t>(total));
  score_kernel<<<blocks_for(total), kThreads>>>(preds.get(), a.batch, a.channels, a.anchors,
                                                a.num_classes, dev_scores.get(), dev_labels.get());
  CLIPGUARD_CUDA_CHECK(cudaGetLastError());
  CLIPGUARD_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> scores(static_cast<size_t>(total));
  std::vector<int32_t> labels(static_cast<size_t>(total));
  dev_scores.to_host(scores.data());
  dev_labels.to_host(labels.data());

  std::vector<Candidate> cands;
  std::vector<int64_t> anchors;
  std::vector<unsigned long long> mask, removed;
  for (int64_t b = 0; b < a.batch; ++b) {
    cands.clear();
    for (int64_t i = 0; i < a.anchors; ++i) {
      const float s = scores[b * a.anchors + i];
      if (s > a.score_threshold) cands.push_back(Candidate{s, i});
    }
    sort_candidates(cands, a.max_candidates);
    const int64_t k = static_cast<int64_t>(cands.size());
    if (k == 0) continue;
    const int64_t col_blocks = (k + kNmsBlock - 1) / kNmsBlock;
    CLIPGUARD_CHECK_ARG(col_blocks <= 65535, "too many NMS candidates (", k,
                        ") for the CUDA backend; lower max_candidates");
    anchors.resize(static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i) anchors[i] = cands[i].anchor;
    DeviceBuffer<int64_t> dev_anchors(anchors.data(), static_cast<size_t>(k));
    DeviceBuffer<unsigned long long> dev_mask(static_cast<size_t>(k * col_blocks));
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
    nms_mask_kernel<<<grid, kNmsBlock>>>(preds.get() + b * per_image, a.anchors, dev_anchors.get(),
                                         k, a.iou_threshold, col_blocks, dev_mask.get());
    CLIPGUARD_CUDA_CHECK(cudaGetLastError());
    CLIPGUARD_CUDA_CHECK(cudaDeviceSynchronize());
    mask.resize(static_cast<size_t>(k * col_blocks));
    dev_mask.to_host(mask.data());
    // Greedy walk: keep a candidate no kept one has removed, then remove what it overlaps.
    removed.assign(static_cast<size_t>(col_blocks), 0ULL);
    const float* pred = a.preds + b * per_image;
    int64_t kept = 0;
    for (int64_t i = 0; i < k && kept < a.max_det; ++i) {
      if (removed[i / kNmsBlock] >> (i % kNmsBlock) & 1ULL) continue;
      for (int64_t cb = i / kNmsBlock; cb < col_blocks; ++cb) removed[cb] |= mask[i * col_blocks + cb];
      float box[4];
      anchor_box(pred, a.anchors, cands[i].anchor, box);
      out.push_back(make_detection(a, b, cands[i], labels[b * a.anchors + cands[i].anchor], box));
      ++kept;
    }
  }
  return out;
}

void masks_cuda(const MaskArgs& host, uint8_t* out) {
  validate_mask_args(host);
  if (host.n_det == 0) return;
  const int64_t plane = host.proto_h * host.proto_w;
  const int64_t pixels = host.image_h * host.image_w;
  DeviceBuffer<float> coeffs(host.coeffs, static_cast<size_t>(host.n_det * host.num_masks));
  DeviceBuffer<float> protos(host.protos, static_cast<size_t>(host.batch * host.num_masks * plane));
  DeviceBuffer<int64_t> index(host.image_index, static_cast<size_t>(host.n_det));
  DeviceBuffer<float> boxes(host.boxes, static_cast<size_t>(host.n_det * 4));
  DeviceBuffer<float> grid(static_cast<size_t>(host.n_det * plane));
  DeviceBuffer<uint8_t> result(static_cast<size_t>(host.n_det * pixels));
  MaskArgs dev = host;
  dev.coeffs = coeffs.get();
  dev.protos = protos.get();
  dev.image_index = index.get();
  dev.boxes = boxes.get();
  proto_kernel<<<blocks_for(host.n_det * plane), kThreads>>>(dev, grid.get());
  CLIPGUARD_CUDA_CHECK(cudaGetLastError());
  mask_kernel<<<blocks_for(host.n_det * pixels), kThreads>>>(dev, grid.get(), result.get());
  CLIPGUARD_CUDA_CHECK(cudaGetLastError());
  CLIPGUARD_CUDA_CHECK(cudaDeviceSynchronize());
  result.to_host(out);
}

}  // namespace clipguard
