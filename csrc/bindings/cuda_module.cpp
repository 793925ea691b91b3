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
  regions.def(
      "render",
      [](const py::array& images, const py::object& masks, const py::array& boxes,
         const py::array& image_index, const py::array& fill, int mode, int64_t size,
         const py::array& mean, const py::array& std) {
        std::vector<py::object> keep;
        const RenderArgs a =
            parse_render_args(images, masks, boxes, image_index, fill, mode, size, mean, std, keep);
        py::array_t<float> out = render_output(a);
        {
          py::gil_scoped_release release;
          render_cuda(a, out.mutable_data());
        }
        return out;
      },
      py::arg("images"), py::arg("masks"), py::arg("boxes"), py::arg("image_index"),
      py::arg("fill"), py::arg("mode"), py::arg("size"), py::arg("mean"), py::arg("std"));

  auto scoring = m.def_submodule("scoring", "CUDA region scoring.");
  scoring.def(
      "compare",
      [](const py::array& region_emb, const py::array& image_emb, const py::array& image_index,
         const py::array& text_emb, float scale, int k) {
        std::vector<py::object> keep;
        const CompareArgs a =
            parse_compare_args(region_emb, image_emb, image_index, text_emb, scale, k, keep);
        CompareOutputs out;
        py::tuple result = compare_outputs(a, out);
        {
          py::gil_scoped_release release;
          compare_cuda(a, out);
        }
        return result;
      },
      py::arg("region_emb"), py::arg("image_emb"), py::arg("image_index"), py::arg("text_emb"),
      py::arg("scale"), py::arg("k"));

  scoring.def(
      "trigger_scores",
      [](const py::array& occluded_emb, const py::array& isolated_emb, const py::array& image_emb,
         const py::array& image_index, const py::array& candidate, const py::array& text_emb,
         float scale) {
        std::vector<py::object> keep;
        const TriggerArgs a = parse_trigger_args(occluded_emb, isolated_emb, image_emb, image_index,
                                                 candidate, text_emb, scale, keep);
        TriggerOutputs out;
        py::tuple result = trigger_outputs(a, out);
        {
          py::gil_scoped_release release;
          trigger_scores_cuda(a, out);
        }
        return result;
      },
      py::arg("occluded_emb"), py::arg("isolated_emb"), py::arg("image_emb"), py::arg("image_index"),
      py::arg("candidate"), py::arg("text_emb"), py::arg("scale"));

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
