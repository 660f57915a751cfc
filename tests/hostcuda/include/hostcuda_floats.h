// Bit-exact conversions between float and the 16-bit formats, as the device does them.
#pragma once

#include <stdint.h>
#include <string.h>

namespace hostcuda {

inline uint32_t float_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

inline float bits_float(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

// float -> IEEE half, round to nearest even; NaN stays NaN, overflow gives inf.
inline unsigned short float_to_half(float value) {
    const uint32_t bits = float_bits(value);
    const uint32_t sign = (bits >> 16) & 0x8000u;
    const uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude >= 0x7f800000u) {  // inf or NaN
        return static_cast<unsigned short>(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u : 0));
    }
    if (magnitude >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // >= 65520
    if (magnitude < 0x38800000u) {  // below the smallest normal half: a subnormal or zero
        if (magnitude < 0x33000000u) return static_cast<unsigned short>(sign);  // < 2^-25
        const uint32_t exponent = magnitude >> 23;
        const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - exponent;  // 14 + (113 - exponent) - 1, in [14, 24]
        uint32_t half = mantissa >> shift;
        const uint32_t remainder = mantissa & ((1u << shift) - 1);
        const uint32_t halfway = 1u << (shift - 1);
        if (remainder > halfway || (remainder == halfway && (half & 1u))) ++half;
        return static_cast<unsigned short>(sign | half);
    }
    uint32_t half = ((magnitude - 0x38000000u) >> 13);
    const uint32_t remainder = magnitude & 0x1fffu;
    if (remainder > 0x1000u || (remainder == 0x1000u && (half & 1u))) ++half;
    return static_cast<unsigned short>(sign | half);
}

inline float half_to_float(unsigned short value) {
    const uint32_t sign = (static_cast<uint32_t>(value) & 0x8000u) << 16;
    const uint32_t exponent = (value >> 10) & 0x1fu;
    uint32_t mantissa = value & 0x3ffu;
    if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent != 0) return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
    if (mantissa == 0) return bits_float(sign);
    // A subnormal half is a normal float: computed in integers so that DAZ cannot touch it.
    int shift = 0;
    while (!(mantissa & 0x400u)) {
        mantissa <<= 1;
        ++shift;
    }
    return bits_float(sign | static_cast<uint32_t>(113 - shift) << 23 | ((mantissa & 0x3ffu) << 13));
}

inline unsigned short float_to_bfloat16(float value) {
    const uint32_t bits = float_bits(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((bits >> 16) | 0x40u);
    const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<unsigned short>((bits + rounding) >> 16);
}

inline float bfloat16_to_float(unsigned short value) {
    return bits_float(static_cast<uint32_t>(value) << 16);
}

}  // namespace hostcuda
