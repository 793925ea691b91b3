// clipguard._core: wires up one submodule per area; each area registers itself.
#include <pybind11/pybind11.h>

#include <exception>
#include <new>

#include "clipguard/common.hpp"
#include "clipguard/parallel.hpp"

namespace py = pybind11;

namespace clipguard::bindings {
void register_regions(py::module_& m);
void register_scoring(py::module_& m);
void register_decode(py::module_& m);
}  // namespace clipguard::bindings

namespace {
PyObject* g_error_type = nullptr;  // the package's ClipguardError, for the translator below
}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "clipguard native core (CPU). Private: use clipguard.regions and clipguard.scoring.";
  py::register_exception<clipguard::ClipguardError>(m, "ClipguardError", PyExc_RuntimeError);
  // A request too large for this machine is an argument problem the caller can act on.
  py::object error = m.attr("ClipguardError");
  g_error_type = error.ptr();  // kept alive by the module attribute
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::bad_alloc&) {
      PyErr_SetString(g_error_type, "not enough memory for this request (the arrays or sizes are too large)");
    }
  });
  auto regions = m.def_submodule("regions", "Batched region views (crop, isolate, occlude).");
  clipguard::bindings::register_regions(regions);
  auto scoring = m.def_submodule("scoring", "Region scoring and label anomaly.");
  clipguard::bindings::register_scoring(scoring);
  auto decode = m.def_submodule("decode", "YOLOv8-seg / FastSAM output decoding (boxes, NMS, masks).");
  clipguard::bindings::register_decode(decode);
  m.def("num_threads", &clipguard::num_threads, "Worker threads the kernels use (CLIPGUARD_NUM_THREADS).");
  m.attr("__version__") = CLIPGUARD_VERSION;
  m.attr("compiler") = CLIPGUARD_COMPILER;
  m.attr("build_type") = CLIPGUARD_BUILD_TYPE;
  m.attr("cuda_status") = CLIPGUARD_CUDA_STATUS;
}
