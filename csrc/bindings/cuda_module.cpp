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
  def_detect(decode, detect_cuda);
  def_masks(decode, masks_cuda);
}
