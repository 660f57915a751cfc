// hostcuda's bfloat16: CuPy's bfloat16 interface on the host, rounding to nearest even.
#pragma once

#include "cupy/carray.cuh"
#include "hostcuda_floats.h"

class bfloat16 {
    unsigned short bits_;

public:
    bfloat16() : bits_(0) {}
    bfloat16(float value) : bits_(hostcuda::float_to_bfloat16(value)) {}
    explicit bfloat16(double value) : bfloat16(static_cast<float>(value)) {}
    explicit bfloat16(bool value) : bfloat16(static_cast<float>(value)) {}
    explicit bfloat16(int value) : bfloat16(static_cast<float>(value)) {}
    explicit bfloat16(unsigned int value) : bfloat16(static_cast<float>(value)) {}
    explicit bfloat16(long long value) : bfloat16(static_cast<float>(value)) {}
    explicit bfloat16(unsigned long long value) : bfloat16(static_cast<float>(value)) {}
    template <typename T, typename = typename cupy::type_traits::enable_if<
                              cupy::type_traits::is_same<T, float16>::value>::type>
    explicit bfloat16(T value) : bfloat16(static_cast<float>(value)) {}

    operator float() const { return hostcuda::bfloat16_to_float(bits_); }

    bfloat16& operator=(const bfloat16&) = default;
    template <typename T>
    bfloat16& operator=(const T& value) {
        *this = static_cast<bfloat16>(value);
        return *this;
    }

    unsigned short to_bits() const { return bits_; }
    static bfloat16 from_bits(unsigned short bits) {
        bfloat16 result;
        result.bits_ = bits;
        return result;
    }
};
