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

}  // namespace clipguard::bindings
