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

// Allocates render()'s [R,3,size,size] output.
py::array_t<float> render_output(const RenderArgs& args);

}  // namespace clipguard::bindings
