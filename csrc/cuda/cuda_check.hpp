// CUDA entry points of clipguard._cuda and the check macro every CUDA call goes through.
#pragma once

#include <cuda_runtime.h>

#include "clipguard/common.hpp"
#include "clipguard/regions.hpp"
#include "clipguard/scoring.hpp"

#define CLIPGUARD_CUDA_CHECK(expr)                                                           \
  do {                                                                                       \
    const cudaError_t err_ = (expr);                                                         \
    if (err_ != cudaSuccess)                                                                 \
      throw ::clipguard::ClipguardError(::clipguard::detail::concat(                        \
          __FILE__, ":", __LINE__, ": CUDA error ", cudaGetErrorName(err_), ": ",           \
          cudaGetErrorString(err_), " (in ", #expr, ")"));                                   \
  } while (0)

namespace clipguard {

// Number of visible CUDA devices; 0 (never an exception) when there is no driver or device.
int cuda_device_count();

// Same contracts as render_cpu / compare_cpu: host arrays in, host arrays out.
void render_cuda(const RenderArgs& args, float* out);
void compare_cuda(const CompareArgs& args, const CompareOutputs& out);
void trigger_scores_cuda(const TriggerArgs& args, const TriggerOutputs& out);

// Owns a device buffer for the duration of a call.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count_) CLIPGUARD_CUDA_CHECK(cudaMalloc(&ptr_, count_ * sizeof(T)));
  }
  DeviceBuffer(const T* host, size_t count) : DeviceBuffer(count) {
    if (count_) CLIPGUARD_CUDA_CHECK(cudaMemcpy(ptr_, host, count_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DeviceBuffer() { if (ptr_) cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }
  void to_host(T* host) const {
    if (count_) CLIPGUARD_CUDA_CHECK(cudaMemcpy(host, ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost));
  }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

}  // namespace clipguard
