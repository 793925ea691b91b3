// clipguard._cuda: the CUDA versions of the kernels, same arguments as clipguard._core.
#include "../cuda/cuda_check.hpp"
#include "../cuda/decode_cuda.hpp"
#include "decode_args.hpp"
#include "parse.hpp"

namespace py = pybind11;
using namespace clipguard;
using namespace clipguard::bindings;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "clipguard CUDA kernels. Private: clipguard.regions / clipguard.scoring pick them.";
  py::register_exception<ClipguardError>(m, "ClipguardError", PyExc_RuntimeError);
  m.def("device_count", &cuda_device_count, "Visible CUDA devices (0 without driver or GPU).");
  m.attr("cuda_runtime_version") = CUDART_VERSION;

  auto regions = m.def_submodule("regions", "CUDA region views.");
  def_render(regions, render_cuda);

  auto scoring = m.def_submodule("scoring", "CUDA region scoring.");
  def_compare(scoring, compare_cuda);

  def_trigger_scores(scoring, trigger_scores_cuda);

  auto decode = m.def_submodule("decode", "CUDA YOLOv8-seg / FastSAM output decoding.");
  decode.def(
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
          dets = detect_cuda(a);
        }
        return detections_to_arrays(a, dets);
      },
      py::arg("preds"), py::arg("num_masks"), py::arg("image_h"), py::arg("image_w"),
      py::arg("letterbox"), py::arg("score_threshold"), py::arg("iou_threshold"),
      py::arg("max_det"), py::arg("max_candidates"));
  decode.def(
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
          masks_cuda(a, out.mutable_data());
        }
        return out;
      },
      py::arg("coeffs"), py::arg("protos"), py::arg("image_index"), py::arg("boxes"),
      py::arg("input_h"), py::arg("input_w"), py::arg("image_h"), py::arg("image_w"),
      py::arg("letterbox"), py::arg("threshold"));
}
