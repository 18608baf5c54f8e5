// Stand-in for LLVM's ArrayRef.h: enough for TensorFlow 2.19's tma_metadata.h to parse.
#pragma once
#include <cstddef>
#include <initializer_list>
namespace llvm {
template <typename T>
class ArrayRef {
 public:
  ArrayRef() = default;
  ArrayRef(const T* data, size_t size) : data_(data), size_(size) {}
  ArrayRef(std::initializer_list<T> list) : data_(list.begin()), size_(list.size()) {}
  template <typename C>
  ArrayRef(const C& c) : data_(c.data()), size_(c.size()) {}
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size_; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  const T* data_ = nullptr;
  size_t size_ = 0;
};
}  // namespace llvm
