// CUDA region views: one thread per output pixel, same per-pixel math as the CPU (regions.hpp).
#include "cuda_check.hpp"

namespace clipguard {

namespace {

__global__ void render_kernel(RenderArgs a, float* out) {
  const int64_t plane = a.size * a.size;
  const int64_t total = a.n_regions * plane;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / plane, oy = (i % plane) / a.size, ox = i % a.size;
    const Canvas cv = view_canvas(a.mode, a.boxes + 4 * r, a.height, a.width);
    float rgb[3];
    if (cv.h == 0) {
      for (int c = 0; c < 3; ++c) rgb[c] = a.fill[3 * r + c];
    } else {
      view_pixel(a, r, cv, linear_tap(oy, cv.h, a.size), linear_tap(ox, cv.w, a.size), rgb);
    }
    float* dst = out + r * 3 * plane + oy * a.size + ox;
    for (int c = 0; c < 3; ++c) dst[c * plane] = normalize_value(a, c, rgb[c]);
  }
}

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

void render_cuda(const RenderArgs& host, float* out) {
  validate_render_args(host);
  if (host.n_regions == 0) return;
  const size_t pixels = static_cast<size_t>(host.n_images * host.height * host.width);
  DeviceBuffer<uint8_t> images(host.images, pixels * 3);
  DeviceBuffer<uint8_t> masks(host.masks, host.masks ? host.n_regions * host.height * host.width : 0);
  DeviceBuffer<int32_t> boxes(host.boxes, host.n_regions * 4);
  DeviceBuffer<int64_t> index(host.image_index, host.n_regions);
  DeviceBuffer<float> fill(host.fill, host.n_regions * 3);
  DeviceBuffer<float> result(host.n_regions * 3 * host.size * host.size);
  RenderArgs dev = host;
  dev.images = images.get();
  dev.masks = host.masks ? masks.get() : nullptr;
  dev.boxes = boxes.get();
  dev.image_index = index.get();
  dev.fill = fill.get();
  const int threads = 256;
  const int64_t total = host.n_regions * host.size * host.size;
  const int blocks = static_cast<int>((total + threads - 1) / threads < 65535 * 16
                                          ? (total + threads - 1) / threads
                                          : 65535 * 16);
  render_kernel<<<blocks, threads>>>(dev, result.get());
  CLIPGUARD_CUDA_CHECK(cudaGetLastError());
  CLIPGUARD_CUDA_CHECK(cudaDeviceSynchronize());
  result.to_host(out);
}

}  // namespace clipguard
