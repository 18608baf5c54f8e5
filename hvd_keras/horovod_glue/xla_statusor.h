// XLA removed xla::StatusOr, which horovod's GPU XLA ops still name.
#include "absl/status/statusor.h"
namespace xla {
template <typename T>
using StatusOr = absl::StatusOr<T>;
}  // namespace xla
