// Array checks at the binding layer: the second of the two validations (the Python wrappers do
// the first). Only csrc/bindings includes pybind11.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "clipguard/common.hpp"

namespace clipguard::bindings {

namespace py = pybind11;

inline constexpr py::ssize_t kMaxAxis = (py::ssize_t{1} << 31) - 1;

// Returns a typed view of `arr` after checking dtype, C-contiguity and ndim; `dims` gives the
// expected size per axis, -1 for any.
template <typename T>
py::array_t<T> checked(const py::array& arr, const char* name, std::vector<py::ssize_t> dims) {
  CLIPGUARD_CHECK_ARG(py::dtype::of<T>().is(arr.dtype()), name, ": expected dtype ",
                      std::string(py::str(py::dtype::of<T>())), ", got ",
                      std::string(py::str(arr.dtype())));
  CLIPGUARD_CHECK_ARG(arr.flags() & py::array::c_style, name, ": array must be C-contiguous");
  CLIPGUARD_CHECK_ARG(arr.ndim() == static_cast<py::ssize_t>(dims.size()), name, ": expected ",
                      dims.size(), " dimensions, got ", arr.ndim());
  for (size_t i = 0; i < dims.size(); ++i) {
    CLIPGUARD_CHECK_ARG(dims[i] < 0 || arr.shape(i) == dims[i], name, ": axis ", i, " has size ",
                        arr.shape(i), ", expected ", dims[i]);
    // An empty or zero-stride array can claim any size without memory; outputs are sized from
    // these axes, so bound them before anything is allocated.
    CLIPGUARD_CHECK_ARG(arr.shape(i) <= kMaxAxis, name, ": axis ", i, " has size ", arr.shape(i),
                        ", more than ", kMaxAxis);
  }
  return py::array_t<T>::ensure(arr);
}

}  // namespace clipguard::bindings
