// hostcuda's float16: CuPy's float16 interface on the host, with the device's conversions
// (round to nearest even, subnormal halves kept: a half result is never flushed on the device).
#pragma once

#include "cupy/carray.cuh"
#include "hostcuda_floats.h"

class float16 {
    unsigned short bits_;

public:
    float16() : bits_(0) {}
    float16(float value) : bits_(hostcuda::float_to_half(value)) {}
    explicit float16(double value) : bits_(hostcuda::float_to_half(static_cast<float>(value))) {}
    explicit float16(bool value) : float16(static_cast<float>(value)) {}
    explicit float16(int value) : float16(static_cast<float>(value)) {}
    explicit float16(unsigned int value) : float16(static_cast<float>(value)) {}
    explicit float16(long long value) : float16(static_cast<float>(value)) {}
    explicit float16(unsigned long long value) : float16(static_cast<float>(value)) {}
    template <typename T, typename = typename cupy::type_traits::enable_if<
                              cupy::type_traits::is_same<T, bfloat16>::value>::type>
    explicit float16(T value) : float16(static_cast<float>(value)) {}

    operator float() const { return hostcuda::half_to_float(bits_); }

    float16& operator=(const float16&) = default;
    template <typename T>
    float16& operator=(const T& value) {
        *this = static_cast<float16>(value);
        return *this;
    }

    unsigned short to_bits() const { return bits_; }
    static float16 from_bits(unsigned short bits) {
        float16 result;
        result.bits_ = bits;
        return result;
    }
};
