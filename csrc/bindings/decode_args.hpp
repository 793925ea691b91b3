// Argument parsing for the decode kernels, shared by the CPU (_core) and CUDA (_cuda) modules so
// both accept exactly the same arrays and reject the same mistakes.
#pragma once

#include <vector>

#include "arrays.hpp"
#include "clipguard/decode.hpp"

namespace clipguard::bindings {

// letterbox: float32 [4] = (scale_x, scale_y, pad_x, pad_y).
inline Letterbox parse_letterbox(const py::array& arr) {
  auto lb = checked<float>(arr, "letterbox", {4});
  const float* p = lb.data();
  return Letterbox{p[0], p[1], p[2], p[3]};
}

// preds: float32 [B, 4 + num_classes + num_masks, A].
inline DetectArgs parse_detect_args(const py::array& preds_arr, int64_t num_masks, int64_t image_h,
                                    int64_t image_w, const py::array& letterbox,
                                    float score_threshold, float iou_threshold, int64_t max_det,
                                    int64_t max_candidates, std::vector<py::object>& keep) {
  auto preds = checked<float>(preds_arr, "preds", {-1, -1, -1});
  keep = {preds};
  DetectArgs a;
  a.preds = preds.data();
  a.batch = preds.shape(0);
  a.channels = preds.shape(1);
  a.anchors = preds.shape(2);
  a.num_masks = num_masks;
  a.num_classes = a.channels - 4 - num_masks;
  a.image_h = image_h;
  a.image_w = image_w;
  a.letterbox = parse_letterbox(letterbox);
  a.score_threshold = score_threshold;
  a.iou_threshold = iou_threshold;
  a.max_det = max_det;
  a.max_candidates = max_candidates;
  validate_detect_args(a);
  return a;
}

// Detections as Python arrays: (boxes [D,4] image pixels, scores [D], labels [D] int32,
// image_index [D] int64, anchors [D] int64, coeffs [D,nm], input_boxes [D,4] input pixels).
inline py::tuple detections_to_arrays(const DetectArgs& a, const std::vector<Detection>& dets) {
  const py::ssize_t n = static_cast<py::ssize_t>(dets.size()), nm = a.num_masks;
  py::array_t<float> boxes({n, py::ssize_t{4}}), input_boxes({n, py::ssize_t{4}});
  py::array_t<float> scores({n}), coeffs({n, nm});
  py::array_t<int32_t> labels({n});
  py::array_t<int64_t> image_index({n}), anchors({n});
  float* b = boxes.mutable_data();
  float* ib = input_boxes.mutable_data();
  for (py::ssize_t i = 0; i < n; ++i) {
    const Detection& d = dets[static_cast<size_t>(i)];
    for (int k = 0; k < 4; ++k) {
      b[4 * i + k] = d.image_box[k];
      ib[4 * i + k] = d.input_box[k];
    }
    scores.mutable_data()[i] = d.score;
    labels.mutable_data()[i] = d.label;
    image_index.mutable_data()[i] = d.image;
    anchors.mutable_data()[i] = d.anchor;
  }
  detection_coeffs(a, dets, coeffs.mutable_data());
  return py::make_tuple(boxes, scores, labels, image_index, anchors, coeffs, input_boxes);
}

// coeffs [D,nm], protos [B,nm,ph,pw], image_index [D], boxes [D,4] (image pixels).
inline MaskArgs parse_mask_args(const py::array& coeffs_arr, const py::array& protos_arr,
                                const py::array& index_arr, const py::array& boxes_arr,
                                int64_t input_h, int64_t input_w, int64_t image_h,
                                int64_t image_w, const py::array& letterbox, float threshold,
                                std::vector<py::object>& keep) {
  auto protos = checked<float>(protos_arr, "protos", {-1, -1, -1, -1});
  const py::ssize_t nm = protos.shape(1);
  auto coeffs = checked<float>(coeffs_arr, "coeffs", {-1, nm});
  const py::ssize_t d = coeffs.shape(0);
  auto index = checked<int64_t>(index_arr, "image_index", {d});
  auto boxes = checked<float>(boxes_arr, "boxes", {d, 4});
  keep = {protos, coeffs, index, boxes};
  MaskArgs a;
  a.coeffs = coeffs.data();
  a.protos = protos.data();
  a.image_index = index.data();
  a.boxes = boxes.data();
  a.n_det = d;
  a.batch = protos.shape(0);
  a.num_masks = nm;
  a.proto_h = protos.shape(2);
  a.proto_w = protos.shape(3);
  a.input_h = input_h;
  a.input_w = input_w;
  a.image_h = image_h;
  a.image_w = image_w;
  a.letterbox = parse_letterbox(letterbox);
  a.threshold = threshold;
  validate_mask_args(a);
  return a;
}

inline py::array_t<uint8_t> mask_output(const MaskArgs& a) {
  return py::array_t<uint8_t>({static_cast<py::ssize_t>(a.n_det),
                               static_cast<py::ssize_t>(a.image_h),
                               static_cast<py::ssize_t>(a.image_w)});
}

// The Python functions of the decode kernels, defined once for the CPU and CUDA modules.
template <typename Kernel>
void def_detect(py::module_& m, Kernel kernel) {
  m.def(
      "detect",
      [kernel](const py::array& preds, int64_t num_masks, int64_t image_h, int64_t image_w,
         const py::array& letterbox, float score_threshold, float iou_threshold, int64_t max_det,
         int64_t max_candidates) {
        std::vector<py::object> keep;
        const DetectArgs a = parse_detect_args(preds, num_masks, image_h, image_w, letterbox,
                                               score_threshold, iou_threshold, max_det,
                                               max_candidates, keep);
        std::vector<Detection> dets;
        {
          py::gil_scoped_release release;
          dets = kernel(a);
        }
        return detections_to_arrays(a, dets);
      },
      py::arg("preds"), py::arg("num_masks"), py::arg("image_h"), py::arg("image_w"),
      py::arg("letterbox"), py::arg("score_threshold"), py::arg("iou_threshold"),
      py::arg("max_det"), py::arg("max_candidates"),
      "(boxes, scores, labels, image_index, anchors, coeffs, input_boxes); see "
      "clipguard.oracle.decode.");
}

template <typename Kernel>
void def_masks(py::module_& m, Kernel kernel) {
  m.def(
      "masks",
      [kernel](const py::array& coeffs, const py::array& protos, const py::array& image_index,
         const py::array& boxes, int64_t input_h, int64_t input_w, int64_t image_h,
         int64_t image_w, const py::array& letterbox, float threshold) {
        std::vector<py::object> keep;
        const MaskArgs a = parse_mask_args(coeffs, protos, image_index, boxes, input_h, input_w,
                                           image_h, image_w, letterbox, threshold, keep);
        py::array_t<uint8_t> out = mask_output(a);
        {
          py::gil_scoped_release release;
          kernel(a, out.mutable_data());
        }
        return out;
      },
      py::arg("coeffs"), py::arg("protos"), py::arg("image_index"), py::arg("boxes"),
      py::arg("input_h"), py::arg("input_w"), py::arg("image_h"), py::arg("image_w"),
      py::arg("letterbox"), py::arg("threshold"),
      "Instance masks [D,H,W] uint8 (0/1) from prototype coefficients.");
}

}  // namespace clipguard::bindings
