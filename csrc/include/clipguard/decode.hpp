// Decoding of YOLOv8-seg / FastSAM segmentation outputs: box decode, class-agnostic NMS,
// prototype-mask assembly, crop to the box, upsampling to the image and threshold.
//
// Layout (one image b of a batch):
//   preds  [B, C, A]      C = 4 + num_classes + num_masks; per anchor a: cx, cy, w, h (input
//                         pixels), num_classes scores (already sigmoid), num_masks coefficients
//   protos [B, nm, ph, pw] mask prototypes covering the whole S_h x S_w input
// The input is the image letterboxed: input = image * scale + pad, per axis.
//
// The per-element math below is shared by the CPU loops (csrc/cpu/decode_cpu.cpp) and the CUDA
// kernels (csrc/cuda/decode_cuda.cu).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "clipguard/common.hpp"
#include "clipguard/regions.hpp"  // Tap

namespace clipguard {

// Where the image sits in the model input: input_coord = image_coord * scale + pad.
struct Letterbox {
  float scale_x = 1.f, scale_y = 1.f;
  float pad_x = 0.f, pad_y = 0.f;
};

struct DetectArgs {
  const float* preds = nullptr;  // [B, C, A]
  int64_t batch = 0, channels = 0, anchors = 0;
  int64_t num_classes = 1, num_masks = 0;  // channels == 4 + num_classes + num_masks
  int64_t image_h = 0, image_w = 0;        // boxes are returned clipped to this image
  Letterbox letterbox;
  float score_threshold = 0.25f;  // kept: score > threshold
  float iou_threshold = 0.7f;     // suppressed: IoU with a kept box > threshold
  int64_t max_det = 300;          // detections kept per image
  int64_t max_candidates = 30000; // best-scoring candidates per image that enter NMS
};

// One kept detection. Boxes are (x0, y0, x1, y1).
struct Detection {
  int64_t image = 0;
  int64_t anchor = 0;
  float score = 0.f;
  int32_t label = 0;
  float input_box[4] = {0.f, 0.f, 0.f, 0.f};  // input pixels, as the model gave it
  float image_box[4] = {0.f, 0.f, 0.f, 0.f};  // image pixels, clipped to the image
};

struct MaskArgs {
  const float* coeffs = nullptr;        // [D, nm] mask coefficients of the detections
  const float* protos = nullptr;        // [B, nm, ph, pw]
  const int64_t* image_index = nullptr; // [D] image of each detection
  const float* boxes = nullptr;         // [D, 4] image-pixel boxes the masks are cropped to
  int64_t n_det = 0, batch = 0, num_masks = 0, proto_h = 0, proto_w = 0;
  int64_t input_h = 0, input_w = 0;     // the model input the prototypes cover
  int64_t image_h = 0, image_w = 0;     // output masks are [D, image_h, image_w]
  Letterbox letterbox;
  float threshold = 0.5f;               // pixel on: upsampled sigmoid > threshold
};

// ---- per-element math, host and device ----

// Box (x0, y0, x1, y1) in input pixels of anchor a from its (cx, cy, w, h) rows.
CLIPGUARD_HD void anchor_box(const float* pred, int64_t anchors, int64_t a, float box[4]) {
  const float cx = pred[a], cy = pred[anchors + a];
  const float hw = 0.5f * pred[2 * anchors + a], hh = 0.5f * pred[3 * anchors + a];
  box[0] = cx - hw;
  box[1] = cy - hh;
  box[2] = cx + hw;
  box[3] = cy + hh;
}

// Class-agnostic score of anchor a: its best class score; ties go to the lower class.
CLIPGUARD_HD float anchor_score(const float* pred, int64_t anchors, int64_t num_classes, int64_t a,
                                int32_t* label) {
  float best = pred[4 * anchors + a];
  int32_t arg = 0;
  for (int64_t c = 1; c < num_classes; ++c) {
    const float s = pred[(4 + c) * anchors + a];
    if (s > best) {
      best = s;
      arg = static_cast<int32_t>(c);
    }
  }
  *label = arg;
  return best;
}

// A box given inverted (x1 < x0) has area 0: it overlaps nothing.
CLIPGUARD_HD float box_area(const float* b) {
  return fmaxf(b[2] - b[0], 0.f) * fmaxf(b[3] - b[1], 0.f);
}

CLIPGUARD_HD float box_iou(const float* a, const float* b) {
  const float iw = fmaxf(fminf(a[2], b[2]) - fmaxf(a[0], b[0]), 0.f);
  const float ih = fmaxf(fminf(a[3], b[3]) - fmaxf(a[1], b[1]), 0.f);
  const float inter = iw * ih;
  const float uni = box_area(a) + box_area(b) - inter;
  return uni > 0.f ? inter / uni : 0.f;
}

// Input-pixel box -> image-pixel box, clipped to the image.
CLIPGUARD_HD void image_box(const float* in, const Letterbox& lb, int64_t height, int64_t width,
                            float* out) {
  const float w = static_cast<float>(width), h = static_cast<float>(height);
  out[0] = fminf(fmaxf((in[0] - lb.pad_x) / lb.scale_x, 0.f), w);
  out[1] = fminf(fmaxf((in[1] - lb.pad_y) / lb.scale_y, 0.f), h);
  out[2] = fminf(fmaxf((in[2] - lb.pad_x) / lb.scale_x, 0.f), w);
  out[3] = fminf(fmaxf((in[3] - lb.pad_y) / lb.scale_y, 0.f), h);
}

// The pixels [lo, hi) of an axis of length n whose centres i + 0.5 lie in [b0, b1).
CLIPGUARD_HD void pixel_span(float b0, float b1, int64_t n, int64_t* lo, int64_t* hi) {
  int64_t l = static_cast<int64_t>(ceilf(b0 - 0.5f)), h = static_cast<int64_t>(ceilf(b1 - 0.5f));
  l = l < 0 ? 0 : (l > n ? n : l);
  h = h < l ? l : (h > n ? n : h);
  *lo = l;
  *hi = h;
}

// Bilinear tap on the prototype grid for image pixel i along one axis: the pixel centre is mapped
// into the input (letterbox) and then onto the grid with half-pixel centres, clamped at the
// borders (OpenCV INTER_LINEAR / torch align_corners=False).
CLIPGUARD_HD Tap proto_tap(int64_t i, float scale, float pad, int64_t input_len, int64_t proto_len) {
  const float stride = static_cast<float>(input_len) / static_cast<float>(proto_len);
  float f = ((static_cast<float>(i) + 0.5f) * scale + pad) / stride - 0.5f;
  int64_t s = static_cast<int64_t>(floorf(f));
  f -= static_cast<float>(s);
  if (s < 0) { s = 0; f = 0.f; }
  if (s >= proto_len - 1) { s = proto_len - 1; f = 0.f; }
  return Tap{s, s + 1 < proto_len ? s + 1 : s, f};
}

// coeffs . protos[:, idx] for one prototype pixel (plane = ph * pw).
CLIPGUARD_HD float proto_logit(const float* coeffs, const float* protos, int64_t num_masks,
                               int64_t plane, int64_t idx) {
  float acc = 0.f;
  for (int64_t k = 0; k < num_masks; ++k) acc += coeffs[k] * protos[k * plane + idx];
  return acc;
}

CLIPGUARD_HD float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// Bilinear value of a grid of mask probabilities (row pitch `pitch`, its element (0, 0) at grid
// position (y0, x0)) at the taps ty, tx.
CLIPGUARD_HD float mask_value(const float* grid, int64_t pitch, int64_t y0, int64_t x0,
                              const Tap& ty, const Tap& tx) {
  const int64_t r0 = (ty.i0 - y0) * pitch - x0, r1 = (ty.i1 - y0) * pitch - x0;
  const float top = grid[r0 + tx.i0] + tx.w * (grid[r0 + tx.i1] - grid[r0 + tx.i0]);
  const float bottom = grid[r1 + tx.i0] + tx.w * (grid[r1 + tx.i1] - grid[r1 + tx.i0]);
  return top + ty.w * (bottom - top);
}

// ---- CPU entry points (csrc/cpu/decode_cpu.cpp) ----

// Checks the arguments (throws std::invalid_argument); shared by both backends.
void validate_detect_args(const DetectArgs& args);
void validate_mask_args(const MaskArgs& args);

// Score threshold, best max_candidates, class-agnostic greedy NMS, max_det per image. Detections
// come image by image, each image's by descending score (ties: lower anchor first).
std::vector<Detection> detect_cpu(const DetectArgs& args);

// The mask coefficients [D, num_masks] of detections, gathered from preds.
void detection_coeffs(const DetectArgs& args, const std::vector<Detection>& dets, float* out);

// Masks [D, image_h, image_w] (0/1): sigmoid(coeffs . protos) upsampled bilinearly onto the
// image, > threshold, and zero outside the detection's box (pixel centres in [x0, x1) x [y0, y1)).
void masks_cpu(const MaskArgs& args, uint8_t* out);

// Host helpers the CUDA backend shares: the candidates of one image sorted by descending score
// (ties: lower anchor first), truncated to max_candidates.
struct Candidate {
  float score;
  int64_t anchor;
};
void sort_candidates(std::vector<Candidate>& cands, int64_t max_candidates);
Detection make_detection(const DetectArgs& args, int64_t image, const Candidate& c, int32_t label,
                         const float* input_box);

}  // namespace clipguard
