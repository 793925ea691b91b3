// CPU decoding of YOLOv8-seg / FastSAM outputs: detection is parallel over images, mask assembly
// over detections; the per-element math is in decode.hpp.
#include <algorithm>
#include <cstring>
#include <vector>

#include "clipguard/decode.hpp"
#include "clipguard/parallel.hpp"

namespace clipguard {

namespace {

constexpr int64_t kMaxSide = 1 << 15;  // image and grid sides; keeps every index product in int64

void validate_letterbox(const Letterbox& lb) {
  CLIPGUARD_CHECK_ARG(std::isfinite(lb.scale_x) && std::isfinite(lb.scale_y) && lb.scale_x > 0.f &&
                          lb.scale_y > 0.f,
                      "letterbox scales must be finite and > 0, got (", lb.scale_x, ", ",
                      lb.scale_y, ")");
  CLIPGUARD_CHECK_ARG(std::isfinite(lb.pad_x) && std::isfinite(lb.pad_y),
                      "letterbox pads must be finite, got (", lb.pad_x, ", ", lb.pad_y, ")");
}

void validate_side(int64_t v, const char* name) {
  CLIPGUARD_CHECK_ARG(v > 0 && v <= kMaxSide, name, " must be in [1, ", kMaxSide, "], got ", v);
}

}  // namespace

void validate_detect_args(const DetectArgs& a) {
  CLIPGUARD_CHECK_ARG(a.batch >= 0 && a.anchors >= 0, "preds must be [B, C, A], got B=", a.batch,
                      " A=", a.anchors);
  CLIPGUARD_CHECK_ARG(a.num_classes >= 1 && a.num_masks >= 0 &&
                          a.channels == 4 + a.num_classes + a.num_masks,
                      "preds has ", a.channels, " channels; expected 4 + num_classes (",
                      a.num_classes, ") + num_masks (", a.num_masks, ")");
  validate_side(a.image_h, "image height");
  validate_side(a.image_w, "image width");
  validate_letterbox(a.letterbox);
  CLIPGUARD_CHECK_ARG(std::isfinite(a.score_threshold), "score_threshold must be finite");
  CLIPGUARD_CHECK_ARG(std::isfinite(a.iou_threshold), "iou_threshold must be finite");
  CLIPGUARD_CHECK_ARG(a.max_det >= 1, "max_det must be >= 1, got ", a.max_det);
  CLIPGUARD_CHECK_ARG(a.max_candidates >= 1, "max_candidates must be >= 1, got ", a.max_candidates);
}

void validate_mask_args(const MaskArgs& a) {
  CLIPGUARD_CHECK_ARG(a.n_det >= 0 && a.batch >= 0, "negative detection or image count");
  CLIPGUARD_CHECK_ARG(a.num_masks >= 1, "protos need at least one prototype, got ", a.num_masks);
  validate_side(a.proto_h, "prototype height");
  validate_side(a.proto_w, "prototype width");
  validate_side(a.input_h, "input height");
  validate_side(a.input_w, "input width");
  validate_side(a.image_h, "image height");
  validate_side(a.image_w, "image width");
  validate_letterbox(a.letterbox);
  CLIPGUARD_CHECK_ARG(std::isfinite(a.threshold), "mask threshold must be finite");
  for (int64_t d = 0; d < a.n_det; ++d) {
    const int64_t i = a.image_index[d];
    CLIPGUARD_CHECK_ARG(i >= 0 && i < a.batch, "image_index[", d, "] = ", i,
                        " is out of range for ", a.batch, " images");
    for (int c = 0; c < 4; ++c)
      CLIPGUARD_CHECK_ARG(std::isfinite(a.boxes[4 * d + c]), "box ", d, " is not finite");
  }
}

void sort_candidates(std::vector<Candidate>& cands, int64_t max_candidates) {
  auto better = [](const Candidate& x, const Candidate& y) {
    return x.score > y.score || (x.score == y.score && x.anchor < y.anchor);
  };
  if (static_cast<int64_t>(cands.size()) > max_candidates) {
    std::partial_sort(cands.begin(), cands.begin() + max_candidates, cands.end(), better);
    cands.resize(static_cast<size_t>(max_candidates));
  } else {
    std::sort(cands.begin(), cands.end(), better);
  }
}

Detection make_detection(const DetectArgs& a, int64_t image, const Candidate& c, int32_t label,
                         const float* input_box) {
  Detection d;
  d.image = image;
  d.anchor = c.anchor;
  d.score = c.score;
  d.label = label;
  for (int k = 0; k < 4; ++k) d.input_box[k] = input_box[k];
  clipguard::image_box(input_box, a.letterbox, a.image_h, a.image_w, d.image_box);
  return d;
}

std::vector<Detection> detect_cpu(const DetectArgs& a) {
  validate_detect_args(a);
  std::vector<std::vector<Detection>> per_image(static_cast<size_t>(a.batch));
  parallel_for(a.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<Candidate> cands;
    for (int64_t b = begin; b < end; ++b) {
      const float* pred = a.preds + b * a.channels * a.anchors;
      cands.clear();
      for (int64_t i = 0; i < a.anchors; ++i) {
        int32_t label;
        const float s = anchor_score(pred, a.anchors, a.num_classes, i, &label);
        if (s > a.score_threshold) cands.push_back(Candidate{s, i});
      }
      sort_candidates(cands, a.max_candidates);
      // Greedy NMS: a candidate survives unless a kept (better) box overlaps it too much. Only
      // kept boxes suppress, so comparing against the <= max_det kept ones is the whole job.
      std::vector<Detection>& kept = per_image[static_cast<size_t>(b)];
      for (const Candidate& c : cands) {
        if (static_cast<int64_t>(kept.size()) >= a.max_det) break;
        float box[4];
        anchor_box(pred, a.anchors, c.anchor, box);
        bool suppressed = false;
        for (const Detection& k : kept) {
          if (box_iou(k.input_box, box) > a.iou_threshold) {
            suppressed = true;
            break;
          }
        }
        if (suppressed) continue;
        int32_t label;
        anchor_score(pred, a.anchors, a.num_classes, c.anchor, &label);
        kept.push_back(make_detection(a, b, c, label, box));
      }
    }
  });
  std::vector<Detection> out;
  for (auto& v : per_image) out.insert(out.end(), v.begin(), v.end());
  return out;
}

void detection_coeffs(const DetectArgs& a, const std::vector<Detection>& dets, float* out) {
  const int64_t first = 4 + a.num_classes;
  for (size_t d = 0; d < dets.size(); ++d) {
    const float* pred = a.preds + dets[d].image * a.channels * a.anchors;
    for (int64_t k = 0; k < a.num_masks; ++k)
      out[static_cast<int64_t>(d) * a.num_masks + k] = pred[(first + k) * a.anchors + dets[d].anchor];
  }
}

void masks_cpu(const MaskArgs& a, uint8_t* out) {
  validate_mask_args(a);
  const int64_t plane = a.proto_h * a.proto_w, pixels = a.image_h * a.image_w;
  const Letterbox& lb = a.letterbox;
  parallel_for(a.n_det, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> grid;
    std::vector<Tap> xtaps;
    for (int64_t d = begin; d < end; ++d) {
      uint8_t* m = out + d * pixels;
      std::memset(m, 0, static_cast<size_t>(pixels));
      const float* box = a.boxes + 4 * d;
      int64_t x_lo, x_hi, y_lo, y_hi;
      pixel_span(box[0], box[2], a.image_w, &x_lo, &x_hi);
      pixel_span(box[1], box[3], a.image_h, &y_lo, &y_hi);
      if (x_lo >= x_hi || y_lo >= y_hi) continue;
      xtaps.resize(static_cast<size_t>(x_hi - x_lo));
      for (int64_t x = x_lo; x < x_hi; ++x)
        xtaps[x - x_lo] = proto_tap(x, lb.scale_x, lb.pad_x, a.input_w, a.proto_w);
      // Only the prototype pixels the box's taps touch are assembled (taps grow with the pixel
      // index), which is what makes small boxes cheap.
      const int64_t gx0 = xtaps.front().i0, gx1 = xtaps.back().i1 + 1;
      const int64_t gy0 = proto_tap(y_lo, lb.scale_y, lb.pad_y, a.input_h, a.proto_h).i0;
      const int64_t gy1 = proto_tap(y_hi - 1, lb.scale_y, lb.pad_y, a.input_h, a.proto_h).i1 + 1;
      const int64_t pitch = gx1 - gx0;
      grid.resize(static_cast<size_t>((gy1 - gy0) * pitch));
      const float* coeffs = a.coeffs + d * a.num_masks;
      const float* protos = a.protos + a.image_index[d] * a.num_masks * plane;
      for (int64_t gy = gy0; gy < gy1; ++gy)
        for (int64_t gx = gx0; gx < gx1; ++gx)
          grid[(gy - gy0) * pitch + gx - gx0] =
              sigmoid(proto_logit(coeffs, protos, a.num_masks, plane, gy * a.proto_w + gx));
      for (int64_t y = y_lo; y < y_hi; ++y) {
        const Tap ty = proto_tap(y, lb.scale_y, lb.pad_y, a.input_h, a.proto_h);
        uint8_t* row = m + y * a.image_w;
        for (int64_t x = x_lo; x < x_hi; ++x)
          row[x] = mask_value(grid.data(), pitch, gy0, gx0, ty, xtaps[x - x_lo]) > a.threshold;
      }
    }
  });
}

}  // namespace clipguard
