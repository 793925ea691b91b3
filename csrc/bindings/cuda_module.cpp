// clipguard._cuda: the CUDA versions of the kernels, same arguments as clipguard._core.
#include <exception>
#include <new>

#include "../cuda/cuda_check.hpp"
#include "../cuda/decode_cuda.hpp"
#include "decode_args.hpp"
#include "parse.hpp"

namespace py = pybind11;
using namespace clipguard;
using namespace clipguard::bindings;

namespace {
PyObject* g_error_type = nullptr;  // the package's ClipguardError, for the translator below
}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "clipguard CUDA kernels. Private: clipguard.regions / clipguard.scoring pick them.";
  // One exception class for the package: errors raised here surface as clipguard._core's
  // ClipguardError. The translator is module-local, so it cannot shadow _core's own (pybind11's
  // global translators are shared by every module and the last registered wins).
  py::object error = py::module_::import("clipguard._core").attr("ClipguardError");
  m.attr("ClipguardError") = error;
  g_error_type = error.ptr();  // kept alive by the attribute above and by _core
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ClipguardError& e) {
      PyErr_SetString(g_error_type, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(g_error_type, "not enough memory for this request (the arrays or sizes are too large)");
    }
  });
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
