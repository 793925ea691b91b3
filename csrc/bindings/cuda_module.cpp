// clipguard._cuda: the CUDA versions of the kernels, same arguments as clipguard._core.
#include "../cuda/cuda_check.hpp"
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
}
