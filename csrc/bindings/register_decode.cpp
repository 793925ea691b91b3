#include "decode_args.hpp"

namespace clipguard::bindings {

void register_decode(py::module_& m) {
  m.def(
      "detect",
      [](const py::array& preds, int64_t num_masks, int64_t image_h, int64_t image_w,
         const py::array& letterbox, float score_threshold, float iou_threshold, int64_t max_det,
         int64_t max_candidates) {
        std::vector<py::object> keep;
        const DetectArgs a = parse_detect_args(preds, num_masks, image_h, image_w, letterbox,
                                               score_threshold, iou_threshold, max_det,
                                               max_candidates, keep);
        std::vector<Detection> dets;
        {
          py::gil_scoped_release release;
          dets = detect_cpu(a);
        }
        return detections_to_arrays(a, dets);
      },
      py::arg("preds"), py::arg("num_masks"), py::arg("image_h"), py::arg("image_w"),
      py::arg("letterbox"), py::arg("score_threshold"), py::arg("iou_threshold"),
      py::arg("max_det"), py::arg("max_candidates"),
      "(boxes, scores, labels, image_index, anchors, coeffs, input_boxes); see "
      "clipguard.oracle.decode.");

  m.def(
      "masks",
      [](const py::array& coeffs, const py::array& protos, const py::array& image_index,
         const py::array& boxes, int64_t input_h, int64_t input_w, int64_t image_h,
         int64_t image_w, const py::array& letterbox, float threshold) {
        std::vector<py::object> keep;
        const MaskArgs a = parse_mask_args(coeffs, protos, image_index, boxes, input_h, input_w,
                                           image_h, image_w, letterbox, threshold, keep);
        py::array_t<uint8_t> out = mask_output(a);
        {
          py::gil_scoped_release release;
          masks_cpu(a, out.mutable_data());
        }
        return out;
      },
      py::arg("coeffs"), py::arg("protos"), py::arg("image_index"), py::arg("boxes"),
      py::arg("input_h"), py::arg("input_w"), py::arg("image_h"), py::arg("image_w"),
      py::arg("letterbox"), py::arg("threshold"),
      "Instance masks [D,H,W] uint8 (0/1) from prototype coefficients.");
}

}  // namespace clipguard::bindings
