// A typed dispatcher handle of a registered op, for kernels that call other ops through the dispatcher (the C++
// autograd kernels, the composite train step): `static auto op = op_handle<Signature>("fairlit::name");`.
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>

namespace fairlit {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace fairlit
