// The pieces an op's argument struct (generated/optable.h) is made of. A tensor argument is a
// TensorImpl held by value: a copy of the caller's view sharing its storage, so the op keeps
// its inputs alive while it waits in a stream even if JavaScript disposes them meanwhile.
#pragma once
#include <optional>

#include "attention.h"
#include "ops.h"
#include "tensor.h"

namespace dualroute {

// How an op uses a tensor argument: read, written whole, or read and updated in place.
enum class Access { In, Out, Inout };

// An optional tensor argument ("Tensor?" in the op table).
class OptTensor {
 public:
  OptTensor() = default;
  explicit OptTensor(const TensorImpl& t) : t_(t) {}
  explicit operator bool() const { return t_.has_value(); }
  const TensorImpl& operator*() const { return *t_; }
  const TensorImpl* operator->() const { return &*t_; }
  // The tensor or nullptr, for helpers that take optional tensors as pointers.
  const TensorImpl* get() const { return t_ ? &*t_ : nullptr; }
  void reset(const TensorImpl& t) { t_ = t; }

 private:
  std::optional<TensorImpl> t_;
};

}  // namespace dualroute
