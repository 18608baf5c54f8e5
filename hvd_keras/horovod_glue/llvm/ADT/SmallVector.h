// Stand-in for LLVM's SmallVector.h: enough for TensorFlow 2.19's tma_metadata.h to parse.
#pragma once
#include <vector>
namespace llvm {
template <typename T, unsigned N = 0>
class SmallVector : public std::vector<T> {
 public:
  using std::vector<T>::vector;
};
}  // namespace llvm
