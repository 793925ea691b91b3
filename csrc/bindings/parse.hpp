// Argument parsing shared by the CPU (_core) and CUDA (_cuda) modules, so both accept exactly the
// same arrays and reject the same mistakes.
#pragma once

#include <vector>

#include "arrays.hpp"
#include "clipguard/regions.hpp"
#include "clipguard/scoring.hpp"

namespace clipguard::bindings {

// `keep` holds the checked arrays alive for as long as the returned pointers are used.
RenderArgs parse_render_args(const py::array& images, const py::object& masks,
                             const py::array& boxes, const py::array& image_index,
                             const py::array& fill, int mode, int64_t size, const py::array& mean,
                             const py::array& std, std::vector<py::object>& keep);

CompareArgs parse_compare_args(const py::array& region_emb, const py::array& image_emb,
                               const py::array& image_index, const py::array& text_emb,
                               float scale, int k, std::vector<py::object>& keep);

// Allocates compare()'s outputs, points `out` at them and returns them as the Python tuple
// (region_labels, region_probs, image_labels, image_probs, region_image_cos).
py::tuple compare_outputs(const CompareArgs& args, CompareOutputs& out);

TriggerArgs parse_trigger_args(const py::array& occluded_emb, const py::array& isolated_emb,
                               const py::array& image_emb, const py::array& image_index,
                               const py::array& candidate, const py::array& text_emb, float scale,
                               std::vector<py::object>& keep);

// Allocates trigger_scores()'s outputs, points `out` at them and returns them as the Python tuple
// (p_image, p_occluded, p_isolated, occluded_top1, isolated_top1, score).
py::tuple trigger_outputs(const TriggerArgs& args, TriggerOutputs& out);

// Allocates render()'s [R,3,size,size] output.
py::array_t<float> render_output(const RenderArgs& args);

// The Python functions of the kernels, defined once for both modules: `kernel` is the CPU or the
// CUDA entry point, with the same contract.
template <typename Kernel>
void def_render(py::module_& m, Kernel kernel) {
  m.def(
      "render",
      [kernel](const py::array& images, const py::object& masks, const py::array& boxes,
               const py::array& image_index, const py::array& fill, int mode, int64_t size,
               const py::array& mean, const py::array& std) {
        std::vector<py::object> keep;
        const RenderArgs a =
            parse_render_args(images, masks, boxes, image_index, fill, mode, size, mean, std, keep);
        py::array_t<float> out = render_output(a);
        {
          py::gil_scoped_release release;
          kernel(a, out.mutable_data());
        }
        return out;
      },
      py::arg("images"), py::arg("masks"), py::arg("boxes"), py::arg("image_index"),
      py::arg("fill"), py::arg("mode"), py::arg("size"), py::arg("mean"), py::arg("std"),
      "Region views [R,3,size,size] float32; see clipguard.regions.render.");
}

template <typename Kernel>
void def_compare(py::module_& m, Kernel kernel) {
  m.def(
      "compare",
      [kernel](const py::array& region_emb, const py::array& image_emb,
               const py::array& image_index, const py::array& text_emb, float scale, int k) {
        std::vector<py::object> keep;
        const CompareArgs a =
            parse_compare_args(region_emb, image_emb, image_index, text_emb, scale, k, keep);
        CompareOutputs out;
        py::tuple result = compare_outputs(a, out);
        {
          py::gil_scoped_release release;
          kernel(a, out);
        }
        return result;
      },
      py::arg("region_emb"), py::arg("image_emb"), py::arg("image_index"), py::arg("text_emb"),
      py::arg("scale"), py::arg("k"),
      "(region_labels, region_probs, image_labels, image_probs, region_image_cos).");
}

template <typename Kernel>
void def_trigger_scores(py::module_& m, Kernel kernel) {
  m.def(
      "trigger_scores",
      [kernel](const py::array& occluded_emb, const py::array& isolated_emb,
               const py::array& image_emb, const py::array& image_index,
               const py::array& candidate, const py::array& text_emb, float scale) {
        std::vector<py::object> keep;
        const TriggerArgs a = parse_trigger_args(occluded_emb, isolated_emb, image_emb, image_index,
                                                 candidate, text_emb, scale, keep);
        TriggerOutputs out;
        py::tuple result = trigger_outputs(a, out);
        {
          py::gil_scoped_release release;
          kernel(a, out);
        }
        return result;
      },
      py::arg("occluded_emb"), py::arg("isolated_emb"), py::arg("image_emb"), py::arg("image_index"),
      py::arg("candidate"), py::arg("text_emb"), py::arg("scale"),
      "(p_image, p_occluded, p_isolated, occluded_top1, isolated_top1, score) per region.");
}

}  // namespace clipguard::bindings
