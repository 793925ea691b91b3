// Shared macros and error types of the native core. No Python, no CUDA runtime here.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

// Functions marked CLIPGUARD_HD compile for both host and device, so the per-element math is
// written once and used by the CPU loops and the CUDA kernels alike.
#if defined(__CUDACC__)
#define CLIPGUARD_HD __host__ __device__ __forceinline__
#else
#define CLIPGUARD_HD inline
#endif

namespace clipguard {

// clipguard's own failures (as opposed to bad arguments, which are std::invalid_argument).
class ClipguardError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace clipguard

// Argument checks at the native boundary: they throw std::invalid_argument (ValueError in Python).
#define CLIPGUARD_CHECK_ARG(cond, ...)                                              \
  do {                                                                              \
    if (!(cond)) throw std::invalid_argument(::clipguard::detail::concat(__VA_ARGS__)); \
  } while (0)

// Internal invariants: they throw ClipguardError with the place they failed.
#define CLIPGUARD_CHECK(cond, ...)                                                   \
  do {                                                                               \
    if (!(cond))                                                                     \
      throw ::clipguard::ClipguardError(::clipguard::detail::concat(                \
          __FILE__, ":", __LINE__, ": ", __VA_ARGS__));                              \
  } while (0)
