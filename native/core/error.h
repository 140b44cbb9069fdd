// Error type thrown by native code. The addon turns it into a JS Error whose `code`
// lib/errors.ts maps to a typed class. Native code never aborts the process: every
// check that can fail on user input throws one of these instead.
#pragma once
#include <exception>
#include <sstream>
#include <string>

namespace dualroute {

enum class ErrorCode : int {
  Shape = 0,     // shapes do not fit together
  DType = 1,     // unsupported or mismatched dtype
  Device = 2,    // device missing, mismatched or failed
  Range = 3,     // an index or value out of range
  Format = 4,    // malformed file or buffer
  Value = 5,     // an invalid argument value
  Disposed = 6,  // use after dispose
  Memory = 7,    // allocation failed
  Internal = 8,  // a bug: an invariant did not hold
};

inline const char* error_code_name(ErrorCode c) {
  switch (c) {
    case ErrorCode::Shape: return "ShapeError";
    case ErrorCode::DType: return "DTypeError";
    case ErrorCode::Device: return "DeviceError";
    case ErrorCode::Range: return "OutOfRangeError";
    case ErrorCode::Format: return "FormatError";
    case ErrorCode::Value: return "ValueError";
    case ErrorCode::Disposed: return "DisposedError";
    case ErrorCode::Memory: return "MemoryError";
    default: return "InternalError";
  }
}

class Error : public std::exception {
 public:
  Error(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
  std::string message_;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... R>
void append(std::ostringstream& os, const T& v, const R&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

template <typename... Args>
[[noreturn]] void fail(ErrorCode code, const Args&... parts) {
  std::ostringstream os;
  detail::append(os, parts...);
  throw Error(code, os.str());
}

}  // namespace dualroute

// DR_CHECK(cond, Code, "message", parts...): throws dualroute::Error when cond is false.
#define DR_CHECK(cond, code, ...)                                         \
  do {                                                                    \
    if (!(cond)) ::dualroute::fail(::dualroute::ErrorCode::code, __VA_ARGS__); \
  } while (0)
