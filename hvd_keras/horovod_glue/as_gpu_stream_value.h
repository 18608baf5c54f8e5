// TensorFlow 2.21 no longer exports stream_executor::gpu::AsGpuStreamValue,
// which horovod's mpi_ops.cc calls to get TensorFlow's CUDA stream.
#if HAVE_CUDA
#include <cuda_runtime.h>
#include "xla/stream_executor/stream.h"
namespace stream_executor {
namespace gpu {
// The CUDA stream of a TensorFlow GPU stream, as TensorFlow <= 2.20 exported it.
cudaStream_t AsGpuStreamValue(Stream* stream) {
  return static_cast<cudaStream_t>(stream->platform_specific_handle().stream);
}
}  // namespace gpu
}  // namespace stream_executor
#endif
