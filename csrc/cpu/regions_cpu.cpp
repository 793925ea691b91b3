// CPU region views: parallel over (region, output row); the per-pixel math is in regions.hpp.
#include <algorithm>
#include <vector>

#include "clipguard/parallel.hpp"
#include "clipguard/regions.hpp"

namespace clipguard {

void validate_render_args(const RenderArgs& a) {
  CLIPGUARD_CHECK_ARG(a.n_images >= 0 && a.height > 0 && a.width > 0,
                      "images must be [N,H,W,3] with H, W > 0, got H=", a.height, " W=", a.width);
  CLIPGUARD_CHECK_ARG(a.size > 0 && a.size <= 8192, "size must be in [1, 8192], got ", a.size);
  CLIPGUARD_CHECK_ARG(a.n_regions >= 0, "negative region count");
  CLIPGUARD_CHECK_ARG(a.mode == RenderMode::Crop || a.mode == RenderMode::Isolate ||
                          a.mode == RenderMode::Occlude,
                      "unknown render mode ", static_cast<int>(a.mode));
  for (int c = 0; c < 3; ++c)
    CLIPGUARD_CHECK_ARG(std::isfinite(a.mean[c]) && std::isfinite(a.std[c]) && a.std[c] != 0.f,
                        "mean and std must be finite and std nonzero");
  for (int64_t r = 0; r < a.n_regions; ++r) {
    const int64_t i = a.image_index[r];
    CLIPGUARD_CHECK_ARG(i >= 0 && i < a.n_images, "image_index[", r, "] = ", i,
                        " is out of range for ", a.n_images, " images");
    const int32_t* b = a.boxes + 4 * r;
    CLIPGUARD_CHECK_ARG(0 <= b[0] && b[0] <= b[2] && b[2] <= a.width && 0 <= b[1] &&
                            b[1] <= b[3] && b[3] <= a.height,
                        "box ", r, " = (", b[0], ", ", b[1], ", ", b[2], ", ", b[3],
                        ") is not a box (x0 <= x1, y0 <= y1) inside the ", a.width, "x",
                        a.height, " image");
    for (int c = 0; c < 3; ++c)
      CLIPGUARD_CHECK_ARG(std::isfinite(a.fill[3 * r + c]), "fill of region ", r, " is not finite");
  }
}

void mask_boxes_cpu(const uint8_t* masks, int64_t n_regions, int64_t height, int64_t width,
                    int32_t* boxes, int64_t* areas) {
  parallel_for(n_regions, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint8_t* m = masks + r * height * width;
      int64_t x0 = width, y0 = height, x1 = -1, y1 = -1, area = 0;
      for (int64_t y = 0; y < height; ++y) {
        const uint8_t* row = m + y * width;
        int64_t first = -1, last = -1, count = 0;
        for (int64_t x = 0; x < width; ++x) {
          if (row[x]) {
            if (first < 0) first = x;
            last = x;
            ++count;
          }
        }
        if (count == 0) continue;
        area += count;
        x0 = std::min(x0, first);
        x1 = std::max(x1, last);
        y0 = std::min(y0, y);
        y1 = y;
      }
      int32_t* b = boxes + 4 * r;
      if (area == 0) {
        b[0] = b[1] = b[2] = b[3] = 0;
      } else {
        b[0] = static_cast<int32_t>(x0);
        b[1] = static_cast<int32_t>(y0);
        b[2] = static_cast<int32_t>(x1 + 1);
        b[3] = static_cast<int32_t>(y1 + 1);
      }
      areas[r] = area;
    }
  });
}

void image_means_cpu(const uint8_t* images, int64_t n_images, int64_t height, int64_t width,
                     float* means) {
  const int64_t pixels = height * width;
  parallel_for(n_images, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t* p = images + i * pixels * 3;
      uint64_t sum[3] = {0, 0, 0};  // exact: 2^64 / 255 pixels is far beyond any image
      for (int64_t k = 0; k < pixels; ++k)
        for (int c = 0; c < 3; ++c) sum[c] += p[3 * k + c];
      for (int c = 0; c < 3; ++c)
        means[3 * i + c] = pixels ? static_cast<float>(static_cast<double>(sum[c]) / pixels) : 0.f;
    }
  });
}

void render_cpu(const RenderArgs& a, float* out) {
  validate_render_args(a);
  const int64_t size = a.size, plane = size * size;
  // One task per output row of one region keeps both cores busy even for a handful of regions.
  parallel_for(a.n_regions * size, 2 * size, [&](int64_t begin, int64_t end) {
    std::vector<Tap> xtaps(size);
    int64_t cached_region = -1;
    Canvas cv{};
    bool empty = false;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / size, oy = task % size;
      if (r != cached_region) {
        cached_region = r;
        cv = view_canvas(a.mode, a.boxes + 4 * r, a.height, a.width);
        empty = cv.h == 0;  // crop of an empty mask: nothing but fill
        if (!empty)
          for (int64_t ox = 0; ox < size; ++ox) xtaps[ox] = linear_tap(ox, cv.w, size);
      }
      float* dst = out + r * 3 * plane + oy * size;
      if (empty) {
        for (int c = 0; c < 3; ++c)
          std::fill(dst + c * plane, dst + c * plane + size, normalize_value(a, c, a.fill[3 * r + c]));
        continue;
      }
      const Tap ty = linear_tap(oy, cv.h, size);
      float rgb[3];
      for (int64_t ox = 0; ox < size; ++ox) {
        view_pixel(a, r, cv, ty, xtaps[ox], rgb);
        for (int c = 0; c < 3; ++c) dst[c * plane + ox] = normalize_value(a, c, rgb[c]);
      }
    }
  });
}

}  // namespace clipguard
