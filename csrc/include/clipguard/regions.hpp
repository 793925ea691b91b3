// Region views: batched mask-region crops, isolations and occlusions rendered straight into
// normalized NCHW float32 model inputs. The per-pixel math below is shared by the CPU loops
// (csrc/cpu/regions_cpu.cpp) and the CUDA kernels (csrc/cuda/regions_cuda.cu).
#pragma once

#include <cmath>
#include <cstdint>

#include "clipguard/common.hpp"

namespace clipguard {

enum class RenderMode : int32_t {
  Crop = 0,     // the region's tight box, outside-mask pixels filled, padded to square, resized
  Isolate = 1,  // the whole image, pixels outside the region filled, resized
  Occlude = 2,  // the whole image, pixels inside the region filled, resized
};

// Everything one render call needs. Regions are given by tight boxes [R,4] (x0, y0, x1, y1,
// end-exclusive) and, optionally, masks [R,H,W]; without masks a region is its whole box.
struct RenderArgs {
  const uint8_t* images = nullptr;     // [N,H,W,3]
  int64_t n_images = 0, height = 0, width = 0;
  const uint8_t* masks = nullptr;      // [R,H,W] (nonzero = in region) or nullptr
  const int32_t* boxes = nullptr;      // [R,4]
  const int64_t* image_index = nullptr;  // [R]
  const float* fill = nullptr;         // [R,3] fill colour per region, 0..255
  int64_t n_regions = 0;
  RenderMode mode = RenderMode::Crop;
  int64_t size = 224;                  // output is [R,3,size,size]
  float mean[3] = {0.f, 0.f, 0.f};
  float std[3] = {1.f, 1.f, 1.f};
};

// The canvas a view is resampled from, in the coordinates of its image.
struct Canvas {
  int64_t origin_y, origin_x;  // image position of canvas pixel (0, 0)
  int64_t h, w;
};

CLIPGUARD_HD Canvas view_canvas(RenderMode mode, const int32_t* box, int64_t height, int64_t width) {
  if (mode != RenderMode::Crop) return Canvas{0, 0, height, width};
  const int64_t bh = box[3] - box[1], bw = box[2] - box[0];
  const int64_t side = bh > bw ? bh : bw;
  // Centre the box on a square canvas, as FastSAM pads its crops.
  return Canvas{box[1] - (side - bh) / 2, box[0] - (side - bw) / 2, side, side};
}

// One bilinear tap pair along an axis, with OpenCV's INTER_LINEAR convention (half-pixel
// centres, clamped at the borders), so results agree with cv2.resize.
struct Tap {
  int64_t i0, i1;
  float w;  // weight of i1
};

CLIPGUARD_HD Tap linear_tap(int64_t dst, int64_t src_len, int64_t dst_len) {
  const double scale = static_cast<double>(src_len) / static_cast<double>(dst_len);
  float f = static_cast<float>((dst + 0.5) * scale - 0.5);
  int64_t s = static_cast<int64_t>(floorf(f));
  f -= static_cast<float>(s);
  if (s < 0) { s = 0; f = 0.f; }
  if (s >= src_len - 1) { s = src_len - 1; f = 0.f; }
  return Tap{s, s + 1 < src_len ? s + 1 : s, f};
}

// The colour of canvas pixel (cy, cx) of region view r: image pixel or fill.
CLIPGUARD_HD void canvas_pixel(const RenderArgs& a, int64_t r, const Canvas& cv, int64_t cy,
                               int64_t cx, float rgb[3]) {
  const int32_t* box = a.boxes + 4 * r;
  const int64_t iy = cv.origin_y + cy, ix = cv.origin_x + cx;
  const bool in_image = iy >= 0 && iy < a.height && ix >= 0 && ix < a.width;
  bool in_region = in_image && iy >= box[1] && iy < box[3] && ix >= box[0] && ix < box[2];
  if (in_region && a.masks != nullptr)
    in_region = a.masks[(r * a.height + iy) * a.width + ix] != 0;
  const bool keep = a.mode == RenderMode::Occlude ? (in_image && !in_region) : in_region;
  if (keep) {
    const uint8_t* p = a.images + ((a.image_index[r] * a.height + iy) * a.width + ix) * 3;
    rgb[0] = p[0]; rgb[1] = p[1]; rgb[2] = p[2];
  } else {
    const float* f = a.fill + 3 * r;
    rgb[0] = f[0]; rgb[1] = f[1]; rgb[2] = f[2];
  }
}

// Output pixel (oy, ox) of region view r, before normalization: bilinear over the canvas.
// Taps with zero weight are not fetched, so an unscaled view is an exact copy.
CLIPGUARD_HD void view_pixel(const RenderArgs& a, int64_t r, const Canvas& cv, const Tap& ty,
                             const Tap& tx, float rgb[3]) {
  float top[3], bottom[3], t[3];
  canvas_pixel(a, r, cv, ty.i0, tx.i0, top);
  if (tx.w != 0.f) {
    canvas_pixel(a, r, cv, ty.i0, tx.i1, t);
    for (int c = 0; c < 3; ++c) top[c] += tx.w * (t[c] - top[c]);
  }
  if (ty.w != 0.f) {
    canvas_pixel(a, r, cv, ty.i1, tx.i0, bottom);
    if (tx.w != 0.f) {
      canvas_pixel(a, r, cv, ty.i1, tx.i1, t);
      for (int c = 0; c < 3; ++c) bottom[c] += tx.w * (t[c] - bottom[c]);
    }
    for (int c = 0; c < 3; ++c) top[c] += ty.w * (bottom[c] - top[c]);
  }
  for (int c = 0; c < 3; ++c) rgb[c] = top[c];
}

// (x/255 - mean) / std for channel c.
CLIPGUARD_HD float normalize_value(const RenderArgs& a, int c, float v) {
  return (v / 255.f - a.mean[c]) / a.std[c];
}

// ---- CPU entry points (csrc/cpu/regions_cpu.cpp) ----

// Tight boxes [R,4] (x0, y0, x1, y1, end-exclusive) and areas [R] of masks [R,H,W].
// An empty mask gets box (0, 0, 0, 0) and area 0.
void mask_boxes_cpu(const uint8_t* masks, int64_t n_regions, int64_t height, int64_t width,
                    int32_t* boxes, int64_t* areas);

// Mean colour [N,3] of images [N,H,W,3].
void image_means_cpu(const uint8_t* images, int64_t n_images, int64_t height, int64_t width,
                     float* means);

// Renders [R,3,size,size] float32 into out.
void render_cpu(const RenderArgs& args, float* out);

// Checks the arguments' consistency (throws std::invalid_argument); shared by both backends.
void validate_render_args(const RenderArgs& args);

}  // namespace clipguard
