// mxcomm fast CPU codec: the numerics of mxcomm/kernels/reference.py in integer arithmetic.
//
// Built when mxcomm is installed (setup.py, mxcomm/kernels/native_build.py: one library with AVX2 +
// F16C, one baseline) and loaded with ctypes by mxcomm/kernels/cpu_backend.py; mxcomm never compiles
// it at run time. No torch or Python headers: the kernels see raw pointers (a plain C ABI, so one
// build serves every Python and torch), the Python side owns the tensors and the threading (one
// call per range of blocks; ctypes releases the GIL during a call). Loops are written with
// GCC/Clang vector extensions (8 lanes; AVX2 where the build enables it), with a few AVX2/F16C
// intrinsics behind #if; the AVX2 build adds fast kernels for the layouts real traffic has
// ("Fast kernels", intrinsics throughout), and the library recycles large output buffers
// ("recycled output buffers"). The format parameters (struct Format) and the enum codes come from
// codec_params.h, generated from mxcomm/kernels/params.py.
//
// Exactness. Every element is held as m * 2**E with an integer m < 2**24 (the input's fp32 bit
// pattern, or the fp32 quotient x / X for float scale types), so rounding onto an element grid
// is an integer right shift of m plus an exact round/sticky decision -- the same decisions the
// reference makes in float64. Round-to-nearest-even may instead use the FPU's own rounding
// where that is provably the same (element_codes_rne_fpu). Nothing here may be compiled with
// fast-math or FMA contraction: decode rounds every product and every sum separately, as the
// reference does, and so does the random Hadamard rotation of rotated formats (see "rotation").

#include <cmath>
#include <cstdint>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <cstdlib>
#include <cstring>
#include <limits>
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <sys/mman.h>
#define MX_HAVE_MMAP 1
#endif

#include "codec_params.h"

// sha256 of this file and codec_params.h, set by the build (native_build.py): the backend refuses a
// library built from other sources than the ones next to it
#ifndef MX_SOURCE_HASH
#define MX_SOURCE_HASH "unknown"
#endif

#if defined(__GNUC__)
#define MX_INLINE inline __attribute__((always_inline))
#define MX_RESTRICT __restrict__
#else
#define MX_INLINE inline
#define MX_RESTRICT
#endif

static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE float/double expected");

namespace {

// internal: float32 blocks laid out per 16 elements as the 8 even-indexed, then the 8 odd-indexed
// ones (the rotated blocks of the fast encode path, see "rotation"); not a dtype code
enum { DT_PAIRED = -1 };

MX_INLINE uint32_t f2u(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

MX_INLINE float u2f(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// -- 8-lane vectors (GCC/Clang vector extensions; plain SSE/NEON/scalar code where AVX2 is absent)
constexpr int W = 8;
typedef int32_t vi32 __attribute__((vector_size(32)));
typedef uint32_t vu32 __attribute__((vector_size(32)));
typedef float vf32 __attribute__((vector_size(32)));
typedef int64_t vi64 __attribute__((vector_size(64)));
typedef uint16_t vu16 __attribute__((vector_size(16)));
typedef uint8_t vu8 __attribute__((vector_size(8)));

MX_INLINE vi32 splat(int32_t v) { return vi32{} + v; }
MX_INLINE vi32 vmin(vi32 a, vi32 b) { return a < b ? a : b; }
MX_INLINE vi32 vmax(vi32 a, vi32 b) { return a > b ? a : b; }

// -- input: fp32 bit patterns of 8 elements --------------------------------------------------
template <int DT>
MX_INLINE vu32 load8(const void* p, int64_t i);

template <>
MX_INLINE vu32 load8<DT_FP32>(const void* p, int64_t i) {
    vu32 v;
    std::memcpy(&v, static_cast<const uint32_t*>(p) + i, sizeof(v));
    return v;
}

template <>
MX_INLINE vu32 load8<DT_BF16>(const void* p, int64_t i) {
    vu16 h;
    std::memcpy(&h, static_cast<const uint16_t*>(p) + i, sizeof(h));
    return __builtin_convertvector(h, vu32) << 16;
}

// fp16 bit patterns (low 16 bits of each lane) to fp32 bit patterns, exactly
MX_INLINE vu32 fp16_to_fp32_bits(vi32 h) {
#if defined(__F16C__) && defined(__AVX2__)
    const __m128i h16 = _mm_packus_epi32(_mm256_castsi256_si128((__m256i)(h & 0xFFFF)),
                                         _mm256_extracti128_si256((__m256i)(h & 0xFFFF), 1));
    return (vu32)_mm256_cvtph_ps(h16);
#endif
    const vi32 sign = (h & 0x8000) << 16;
    const vi32 e = (h >> 10) & 0x1F;
    const vi32 m = h & 0x3FF;
    const vi32 normal = ((e + 112) << 23) | (m << 13);
    const vi32 special = splat(0x7F800000) | (m << 13);
    // subnormal: m * 2**-24, exact in float32 (and normal there)
    const vi32 sub = (vi32)(__builtin_convertvector(m, vf32) * 5.9604644775390625e-08f);
    const vi32 mag = e == 0 ? sub : (e == 31 ? special : normal);
    return (vu32)(sign | mag);
}

template <>
MX_INLINE vu32 load8<DT_FP16>(const void* p, int64_t i) {
#if defined(__F16C__) && defined(__AVX2__)
    return (vu32)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i)));
#else
    vu16 h16;
    std::memcpy(&h16, static_cast<const uint16_t*>(p) + i, sizeof(h16));
    return fp16_to_fp32_bits(__builtin_convertvector(h16, vi32));
#endif
}

// Elements [i, i + 16) as fp32 bit patterns: even = elements i, i+2, ..., odd = i+1, i+3, ...
// (lane l of both holds the pair that shares code byte l of 4-bit codes).
template <int DT>
MX_INLINE void load16_pairs(const void* p, int64_t i, vu32& even, vu32& odd) {
    if constexpr (DT == DT_PAIRED) {
        even = load8<DT_FP32>(p, i);
        odd = load8<DT_FP32>(p, i + W);
    } else if constexpr (DT == DT_FP32) {
        const vu32 a = load8<DT_FP32>(p, i), b = load8<DT_FP32>(p, i + W);
#if defined(__clang__)
        even = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
        odd = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
#else
        even = __builtin_shuffle(a, b, vu32{0, 2, 4, 6, 8, 10, 12, 14});
        odd = __builtin_shuffle(a, b, vu32{1, 3, 5, 7, 9, 11, 13, 15});
#endif
    } else {
        vu32 w;  // two 16-bit elements per word, the even one in the low half (little-endian)
        std::memcpy(&w, static_cast<const uint16_t*>(p) + i, sizeof(w));
        if constexpr (DT == DT_BF16) {
            even = w << 16;
            odd = w & 0xFFFF0000u;
        } else {
            even = fp16_to_fp32_bits((vi32)(w & 0xFFFFu));
            odd = fp16_to_fp32_bits((vi32)(w >> 16));
        }
    }
}

// 8 lanes < 256 -> 8 bytes
MX_INLINE void store_bytes8(uint8_t* out, vi32 v) {
    const vu8 b = __builtin_convertvector(__builtin_convertvector(v, vu16), vu8);
    std::memcpy(out, &b, sizeof(b));
}

// 8 lanes < 65536 -> 8 little-endian 16-bit words
MX_INLINE void store_words8(uint8_t* out, vi32 v) {
    const vu16 h = __builtin_convertvector(v, vu16);
    std::memcpy(out, &h, sizeof(h));
}

// Elements [i, i + n) with n < 8, zero-filled.
template <int DT>
MX_INLINE vu32 load_tail(const void* p, int64_t i, int32_t n) {
    uint32_t tmp[W] = {0, 0, 0, 0, 0, 0, 0, 0};
    const size_t esize = DT == DT_FP32 ? 4 : 2;
    std::memcpy(tmp, static_cast<const char*>(p) + i * int64_t(esize), size_t(n) * esize);
    return load8<DT>(tmp, 0);
}

// -- output conversions (round to nearest even; finite values saturate, like saturating_cast) --
MX_INLINE vu32 to_bf16(vf32 y) {
    vi32 u = (vi32)y;
    const vi32 a = u & 0x7FFFFFFF;
    u = (a < 0x7F800000) & (a > 0x7F7F0000) ? (u & splat(int32_t(0x80000000u))) | 0x7F7F0000 : u;
    const vu32 uu = (vu32)u;
    const vu32 r = (uu + 0x7FFFu + ((uu >> 16) & 1u)) >> 16;
    const vu32 nan = ((uu >> 16) & 0x8000u) | 0x7FC0u;
    return a > 0x7F800000 ? nan : r;
}

MX_INLINE vu32 to_fp16(vf32 y) {
#if defined(__F16C__) && defined(__AVX2__)
    // clamp finite values to +-65504 first, then the hardware conversion rounds to nearest even
    const __m256 big = _mm256_set1_ps(65504.0f);
    const __m256 c = _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), big), _mm256_min_ps(big, (__m256)y));
    const __m256 magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), (__m256)y);
    const __m256 keep = _mm256_cmp_ps(magnitude, _mm256_set1_ps(INFINITY), _CMP_NLT_UQ);  // inf, NaN: as is
    const __m128i h = _mm256_cvtps_ph(_mm256_blendv_ps(c, (__m256)y, keep), _MM_FROUND_TO_NEAREST_INT);
    return (vu32)_mm256_cvtepu16_epi32(h);
#endif
    const vi32 u = (vi32)y;
    const vi32 sign = (vi32)(((vu32)u >> 16) & 0x8000u);
    const vi32 a = u & 0x7FFFFFFF;
    const vi32 r = a - 0x38000000;
    const vi32 normal = (r + 0xFFF + ((r >> 13) & 1)) >> 13;
    // subnormal fp16: |y| * 2**24 < 1024 is exact in float32; adding and removing 2**23 rounds
    // it to an integer, nearest even
    const vf32 scaled = (vf32)a * 16777216.0f;
    const vi32 sub = __builtin_convertvector((scaled + 8388608.0f) - 8388608.0f, vi32);
    vi32 mag = a >= 0x38800000 ? normal : sub;
    mag = a >= 0x477FE000 ? splat(0x7BFF) : mag;  // >= 65504: saturate at the fp16 max
    mag = a == 0x7F800000 ? splat(0x7C00) : mag;
    mag = a > 0x7F800000 ? splat(0x7E00) : mag;
    return (vu32)(sign | mag);
}

template <int ODT>
MX_INLINE void store8(void* out, int64_t i, vf32 y);

// Round to nearest even for values known finite and within the bf16 range.
MX_INLINE vu32 to_bf16_in_range(vf32 y) {
    const vu32 u = (vu32)y;
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}

template <int ODT>
MX_INLINE void store8_in_range(void* out, int64_t i, vf32 y) {
    if constexpr (ODT == DT_BF16) {
        const vu16 h = __builtin_convertvector(to_bf16_in_range(y), vu16);
        std::memcpy(static_cast<uint16_t*>(out) + i, &h, sizeof(h));
    } else {
        store8<ODT>(out, i, y);
    }
}

template <int ODT>
MX_INLINE void store8(void* out, int64_t i, vf32 y) {
    if constexpr (ODT == DT_FP32) {
        std::memcpy(static_cast<float*>(out) + i, &y, sizeof(y));
    } else {
        const vu16 h = __builtin_convertvector(ODT == DT_BF16 ? to_bf16(y) : to_fp16(y), vu16);
        std::memcpy(static_cast<uint16_t*>(out) + i, &h, sizeof(h));
    }
}

// The first n < 8 lanes of y.
template <int ODT>
MX_INLINE void store_tail(void* out, int64_t i, vf32 y, int32_t n) {
    if constexpr (ODT == DT_FP32) {
        std::memcpy(static_cast<float*>(out) + i, &y, size_t(n) * 4);
    } else {
        const vu16 h = __builtin_convertvector(ODT == DT_BF16 ? to_bf16(y) : to_fp16(y), vu16);
        std::memcpy(static_cast<uint16_t*>(out) + i, &h, size_t(n) * 2);
    }
}

// -- counter-based random words (mxcomm/kernels/random.py) ------------------------------------
MX_INLINE uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

MX_INLINE vu32 mix32(vu32 x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

MX_INLINE uint32_t seed_key(uint64_t seed, uint32_t index_hi) {
    const uint32_t lo = uint32_t(seed), hi = uint32_t(seed >> 32);
    return mix32(lo ^ mix32(hi ^ index_hi));
}

// -- element rounding ------------------------------------------------------------------------
struct Grid {
    int32_t mbits, emin, max_code, bits, is_int;
    // negative codes: (code ^ neg_xor) + neg_add -- sign bit set (float), two's complement (int)
    int32_t neg_xor, neg_add;
    Grid(int32_t mbits_, int32_t emin_, int32_t max_code_, int32_t bits_, int32_t is_int_)
        : mbits(mbits_), emin(emin_), max_code(max_code_), bits(bits_), is_int(is_int_),
          neg_xor(is_int_ ? (1 << bits_) - 1 : 0), neg_add(is_int_ ? 1 : 1 << (bits_ - 1)) {}
};

// Codes of negative inputs (sign bit of sign_src set) with a non-zero magnitude code; -0 is +0.
MX_INLINE vi32 apply_sign(vi32 code, vu32 sign_src, const Grid& g) {
    if (!g.is_int) {  // the input's sign bit moved to the code's, where the code is not 0
        return code | ((vi32)((sign_src >> 31) << (g.bits - 1)) & (code > 0));
    }
    const vi32 neg = ((vi32)sign_src < 0) & (code > 0);
    return neg ? (code ^ g.neg_xor) + g.neg_add : code;
}

// Codes of the values bits(u) * 2**-e on the element grid (saturating; +0 for zero).
// NORM=false skips normalising subnormal inputs: exact whenever -126 - e <= emin (a subnormal
// input then lies in the grid's subnormal binade, where only its scaled mantissa matters).
template <int RND, bool NORM>
MX_INLINE vi32 element_codes(vu32 u, int32_t e, const Grid& g, vu32 rand_bits) {
    const vi32 a = (vi32)(u & 0x7FFFFFFFu);
    const vi32 ef = a >> 23;
    const vi32 mraw = (a & 0x7FFFFF) | ((ef != 0) & 0x800000);
    vi32 mn, F;  // value = mn * 2**(F - 23); F = floor(log2(value)) for normalised mn
    if constexpr (NORM) {
        // normalise through an exact int -> float conversion (mraw < 2**24): no count-leading-zeros
        const vi32 fb = (vi32)__builtin_convertvector(mraw, vf32);
        mn = (mraw != 0) & ((fb & 0x7FFFFF) | 0x800000);
        F = (fb >> 23) + vmax(ef, splat(1)) - (277 + e);
    } else {
        mn = mraw;
        F = vmax(ef, splat(1)) - (127 + e);
    }
    const vi32 binade = vmax(F, splat(g.emin));
    const vi32 r = binade - F + (23 - g.mbits);  // right shift onto the grid, >= 13
    vi32 q;
    if constexpr (RND == RND_STOCHASTIC) {
        // round up iff frac * 2**32 > rand_bits, frac = rem / 2**r (an exact integer comparison)
        const vi32 rc = vmin(r, splat(56));
        const vi64 rc64 = __builtin_convertvector(rc, vi64);
        const vi64 m64 = __builtin_convertvector(mn, vi64);
        const vi64 rem = m64 & (((vi64{} + 1) << rc64) - 1);
        const vi64 lhs = rem << (rc64 <= 32 ? 32 - rc64 : vi64{});
        const vi64 rhs = __builtin_convertvector(rand_bits, vi64) << (rc64 > 32 ? rc64 - 32 : vi64{});
        q = __builtin_convertvector(m64 >> rc64, vi32) - __builtin_convertvector(lhs > rhs, vi32);
    } else {
        const vi32 rc = vmin(r, splat(25));  // mn < 2**24: a shift of 25 rounds everything to 0
        const vi32 half = splat(1) << (rc - 1);
        if constexpr (RND == RND_RNE) {
            q = (mn + half - 1 + ((mn >> rc) & 1)) >> rc;
        } else if constexpr (RND == RND_AWAY) {
            q = (mn + half) >> rc;
        } else {
            q = mn >> rc;
        }
    }
    const vi32 code = vmin(((binade - g.emin) << g.mbits) + q, splat(g.max_code));
    return apply_sign(code, u, g);
}

// Round to nearest even with the FPU: adding C = 2**(binade + 23 - mbits) to v >= 0 rounds v to
// a multiple of the grid step 2**(binade - mbits) (the ulp of C), and bits(v + C) - bits(C) is
// the rounded value in steps. Exact whenever v is the exact value to round (float scale types:
// the quotient x / X is by definition a float32) or a float32 product x * 2**-e that can only be
// inexact below 2**-126 <= step/2 (Format.float_rne, checked by the Python side), and C stays
// finite. ``vabs`` is v >= 0; the sign comes from ``sign_src``.
MX_INLINE vi32 element_codes_rne_fpu(vf32 vabs, vu32 sign_src, const Grid& g) {
    const vi32 emin_bits = splat((g.emin + 127) << 23);
    const vi32 cb = vmax((vi32)vabs & 0x7F800000, emin_bits) + ((23 - g.mbits) << 23);
    const vi32 ub = (vi32)(vabs + (vf32)cb);
    // (binade - emin) << mbits + (ub - cb); cb has no mantissa bits, so (cb >> 23) << mbits is
    // cb >> (23 - mbits)
    const vi32 code = vmin((cb >> (23 - g.mbits)) + (ub - cb) - ((150 - g.mbits + g.emin) << g.mbits),
                           splat(g.max_code));
    return apply_sign(code, sign_src, g);
}

// -- block scales ----------------------------------------------------------------------------
MX_INLINE int32_t e8m0_exponent(uint32_t amax, const Format& f) {
    if (amax == 0) return -127;
    int32_t flog;
    int32_t frac;
    const uint32_t ef = amax >> 23;
    if (ef != 0) {
        flog = int32_t(ef) - 127;
        frac = int32_t(amax & 0x7FFFFFu);
    } else {
        const int l = 31 - __builtin_clz(amax);
        flog = l - 149;
        frac = int32_t((amax << (23 - l)) & 0x7FFFFFu);
    }
    int32_t e;
    switch (f.scale_mode) {
        case MODE_FLOOR:
            e = flog - f.emax;
            break;
        case MODE_CEIL:
            e = flog + (frac != 0 ? 1 : 0) - f.emax;
            break;
        case MODE_RCEIL:
            e = flog - f.emax + (frac > f.max_normal_frac ? 1 : 0);
            break;
        default:
            e = flog + (frac >= f.even_frac ? 1 : 0) - f.emax;
            break;
    }
    return e < -127 ? -127 : (e > 127 ? 127 : e);
}

MX_INLINE uint64_t d2u(double d) {
    uint64_t u;
    std::memcpy(&u, &d, 8);
    return u;
}

MX_INLINE double pow2d(int32_t n) {  // 2**n for -1022 <= n <= 1023, exact
    const uint64_t u = uint64_t(n + 1023) << 52;
    double d;
    std::memcpy(&d, &u, 8);
    return d;
}

// Smallest value of the grid (mbits, emin) >= q, clamped to maxv (reference.round_up_to_scale);
// q is a positive normal double.
MX_INLINE double round_up_grid(double q, int32_t mbits, int32_t emin, double maxv) {
    const uint64_t bits = d2u(q);
    const int32_t ex = int32_t((bits >> 52) & 0x7FF) - 1023;  // floor(log2(q))
    const int32_t binade = ex > emin ? ex : emin;
    const uint64_t mant = (bits & ((uint64_t(1) << 52) - 1)) | (uint64_t(1) << 52);
    const int32_t shift = 52 - mbits + (binade - ex);  // q / step = mant / 2**shift, shift >= 29
    uint64_t steps = 1;                                // q below one step rounds up to one step
    if (shift < 64) steps = (mant >> shift) + ((mant & ((uint64_t(1) << shift) - 1)) != 0 ? 1 : 0);
    const double value = double(steps) * pow2d(binade - mbits);
    return value < maxv ? value : maxv;
}

// Code of an exactly representable value v >= 0 on the grid (mbits, emin): the storage bit pattern.
MX_INLINE uint32_t exact_grid_code(double v, int32_t mbits, int32_t emin) {
    if (v == 0.0) return 0;
    const uint64_t bits = d2u(v);
    const int32_t ex = int32_t((bits >> 52) & 0x7FF) - 1023;
    const int32_t binade = ex > emin ? ex : emin;
    const uint64_t mant = (bits & ((uint64_t(1) << 52) - 1)) | (uint64_t(1) << 52);
    return (uint32_t(binade - emin) << mbits) + uint32_t(mant >> (52 - mbits + (binade - ex)));
}

MX_INLINE void store_scale(void* scales, int64_t k, int32_t scale_type, uint32_t pattern) {
    if (scale_type == SC_E8M0 || scale_type == SC_E4M3) {
        static_cast<uint8_t*>(scales)[k] = uint8_t(pattern);
    } else if (scale_type == SC_FP32) {
        static_cast<uint32_t*>(scales)[k] = pattern;
    } else {
        static_cast<uint16_t*>(scales)[k] = uint16_t(pattern);
    }
}

MX_INLINE float fp16_bits_to_float(uint32_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(uint16_t(h));  // (a vector load of a just-stored word stalls on store forwarding)
#else
    const uint16_t tmp[W] = {uint16_t(h), 0, 0, 0, 0, 0, 0, 0};
    return u2f(load8<DT_FP16>(tmp, 0)[0]);
#endif
}

// The float32 multiplier X of block k (reference.block_scale_fp32).
MX_INLINE float block_multiplier(const void* scales, int64_t k, const Format& f, float tensor_scale) {
    float x;
    switch (f.scale_type) {
        case SC_E8M0: {
            const uint32_t c = static_cast<const uint8_t*>(scales)[k];
            if (c == f.scale_nan) return std::numeric_limits<float>::quiet_NaN();
            return c == 0 ? u2f(0x00400000u) : u2f(c << 23);  // 2**(c - 127), exact
        }
        case SC_E4M3: {
            const uint32_t c = static_cast<const uint8_t*>(scales)[k];
            // the NaN code, and codes with the (unused) sign bit set
            if (c >= f.scale_nan) return std::numeric_limits<float>::quiet_NaN();
            const uint32_t ef = c >> f.scale_mbits, m = c & ((1u << f.scale_mbits) - 1);
            // (1 + m * 2**-mbits) * 2**(ef - 1 + emin) for ef >= 1, else m * 2**(emin - mbits) (both exact)
            x = ef ? u2f(((ef + uint32_t(126 + f.scale_emin)) << 23) | (m << (23 - f.scale_mbits)))
                   : float(m) * u2f(uint32_t(127 + f.scale_emin - f.scale_mbits) << 23);
            break;
        }
        case SC_FP16:
            x = fp16_bits_to_float(static_cast<const uint16_t*>(scales)[k]);
            break;
        case SC_BF16:
            x = u2f(uint32_t(static_cast<const uint16_t*>(scales)[k]) << 16);
            break;
        default:
            x = static_cast<const float*>(scales)[k];
            break;
    }
    if (f.tensor_scale) x = float(double(x) * double(tensor_scale));
    return x;
}

// -- code stream -------------------------------------------------------------------------------
// LSB-first bitstream (mxcomm/kernels/bitpack.py). A call covers whole blocks starting at a
// byte boundary; blocks whose codes fill whole bytes are packed with fixed patterns.
struct BitWriter {
    uint8_t* out;
    uint64_t acc = 0;
    int32_t nacc = 0;
    MX_INLINE void put(uint32_t code, int32_t bits) {
        acc |= uint64_t(code) << nacc;
        nacc += bits;
        while (nacc >= 8) {
            *out++ = uint8_t(acc);
            acc >>= 8;
            nacc -= 8;
        }
    }
    MX_INLINE void flush() {
        if (nacc > 0) *out++ = uint8_t(acc);
        acc = 0;
        nacc = 0;
    }
};

struct BitReader {
    const uint8_t* in;
    uint64_t acc = 0;
    int32_t nacc = 0;
    MX_INLINE uint32_t get(int32_t bits) {
        while (nacc < bits) {
            acc |= uint64_t(*in++) << nacc;
            nacc += 8;
        }
        const uint32_t code = uint32_t(acc & ((uint64_t(1) << bits) - 1));
        acc >>= bits;
        nacc -= bits;
        return code;
    }
};

// Pack n codes (n * bits a multiple of 8 when aligned) into out; returns bytes written.
MX_INLINE void pack_block(const uint16_t* MX_RESTRICT codes, int32_t n, int32_t bits, uint8_t* MX_RESTRICT out) {
    if (bits == 8) {
        for (int32_t j = 0; j < n; ++j) out[j] = uint8_t(codes[j]);
    } else if (bits == 4) {
        for (int32_t j = 0; j < n / 2; ++j) out[j] = uint8_t(codes[2 * j] | (codes[2 * j + 1] << 4));
    } else if (bits == 2 && n % 4 == 0) {
        for (int32_t j = 0; j < n / 4; ++j)
            out[j] = uint8_t(codes[4 * j] | (codes[4 * j + 1] << 2) | (codes[4 * j + 2] << 4) | (codes[4 * j + 3] << 6));
    } else if (bits < 8 && n % 8 == 0) {
        for (int32_t g = 0; g < n / 8; ++g) {
            uint64_t w = 0;
            for (int32_t k = 0; k < 8; ++k) w |= uint64_t(codes[8 * g + k]) << (k * bits);
            for (int32_t k = 0; k < bits; ++k) out[g * bits + k] = uint8_t(w >> (8 * k));
        }
    } else {
        BitWriter bw{out};
        for (int32_t j = 0; j < n; ++j) bw.put(codes[j], bits);
        bw.flush();
    }
}

MX_INLINE void unpack_block(const uint8_t* MX_RESTRICT in, int32_t n, int32_t bits, uint16_t* MX_RESTRICT codes) {
    if (bits == 8) {
        for (int32_t j = 0; j < n; ++j) codes[j] = in[j];
    } else if (bits == 4) {
        for (int32_t j = 0; j < n / 2; ++j) {
            codes[2 * j] = in[j] & 0xF;
            codes[2 * j + 1] = in[j] >> 4;
        }
    } else if (bits < 8 && n % 8 == 0) {
        const uint32_t mask = (1u << bits) - 1;
        for (int32_t g = 0; g < n / 8; ++g) {
            uint64_t w = 0;
            for (int32_t k = 0; k < bits; ++k) w |= uint64_t(in[g * bits + k]) << (8 * k);
            for (int32_t k = 0; k < 8; ++k) codes[8 * g + k] = uint16_t((w >> (k * bits)) & mask);
        }
    } else {
        BitReader br{in};
        for (int32_t j = 0; j < n; ++j) codes[j] = uint16_t(br.get(bits));
    }
}

// Walks blocks [b0, b1) of a (rows, length) tensor cut into blocks_per_row blocks per row.
struct BlockCursor {
    int64_t length, bpr, bs, row, col;
    BlockCursor(int64_t length_, int64_t bpr_, int64_t bs_, int64_t b0)
        : length(length_), bpr(bpr_), bs(bs_), row(bpr_ ? b0 / bpr_ : 0), col(bpr_ ? b0 % bpr_ : 0) {}
    MX_INLINE int64_t offset() const { return row * length + col * bs; }
    MX_INLINE int32_t valid() const {
        const int64_t left = length - col * bs;
        return int32_t(left < bs ? left : bs);
    }
    MX_INLINE void next() {
        if (++col == bpr) {
            col = 0;
            ++row;
        }
    }
};

MX_INLINE int32_t hmax(vi32 v) {
#if defined(__AVX2__)
    __m256i m = (__m256i)v;
    __m128i h = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0x4E));
    h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0xB1));
    return _mm_cvtsi128_si32(h);
#else
    int32_t best = v[0];
    for (int l = 1; l < W; ++l) best = v[l] > best ? v[l] : best;
    return best;
#endif
}

template <int DT>
MX_INLINE void block_amax(const void* x, int64_t off, int32_t n, uint32_t* amax_all, uint32_t* amax_finite) {
    vi32 all = {}, fin = {};
    for (int32_t j = 0; j < n; j += W) {
        const vu32 u = n - j >= W ? load8<DT>(x, off + j) : load_tail<DT>(x, off + j, n - j);
        const vi32 a = (vi32)(u & 0x7FFFFFFFu);
        all = vmax(all, a);
        fin = vmax(fin, a < 0x7F800000 ? a : vi32{});
    }
    *amax_all = uint32_t(hmax(all));
    *amax_finite = uint32_t(hmax(fin));
}

// Codes leave the vector registers either straight into the stream (8-bit codes, or 4-bit
// codes two per byte; blocks of whole vectors) or through a per-block buffer (every width).
enum { PACK_BUFFER = 0, PACK_NIBBLES = 4, PACK_BYTES = 8 };

typedef uint8_t vu8x4 __attribute__((vector_size(4)));
typedef uint64_t vu64x4 __attribute__((vector_size(32)));

MX_INLINE void put_codes(uint8_t* out, int32_t j, vi32 c, int pack, uint16_t* cbuf) {
    if (pack == PACK_BYTES) {
        store_bytes8(out + j, c);
    } else if (pack == PACK_NIBBLES) {
        const vu64x4 w = (vu64x4)c;  // lane i: code 2i (low word) and code 2i+1 (high word)
        const vu8x4 b = __builtin_convertvector((w & 0xFu) | ((w >> 28) & 0xF0u), vu8x4);
        std::memcpy(out + j / 2, &b, sizeof(b));
    } else {
        const vu16 c16 = __builtin_convertvector(c, vu16);
        std::memcpy(cbuf + j, &c16, sizeof(c16));
    }
}

template <int DT, int RND, bool NORM, int PACK>
MX_INLINE void block_codes(const void* x, int64_t off, int32_t n, int32_t e, bool pow2, float divisor, const Grid& g,
                           uint64_t seed, uint64_t base, uint8_t* out, uint16_t* cbuf) {
    const vu32 lane = {0, 1, 2, 3, 4, 5, 6, 7};
    // stochastic rounding: the random word of element index i = k * bs + j
    const bool one_key = (base >> 32) == ((base + uint64_t(n) - 1) >> 32);
    const uint32_t key = RND == RND_STOCHASTIC ? seed_key(seed, uint32_t(base >> 32)) : 0u;
    for (int32_t j = 0; j < n; j += W) {
        vu32 u = n - j >= W ? load8<DT>(x, off + j) : load_tail<DT>(x, off + j, n - j);
        vu32 rand_bits = {};
        if constexpr (RND == RND_STOCHASTIC) {
            if (one_key) {
                rand_bits = mix32(key ^ (uint32_t(base) + uint32_t(j) + lane));
            } else {  // a block straddling element index h * 2**32
                for (int l = 0; l < W; ++l) {
                    const uint64_t idx = base + uint64_t(j + l);
                    rand_bits[l] = mix32(seed_key(seed, uint32_t(idx >> 32)) ^ uint32_t(idx));
                }
            }
        }
        if (!pow2) u = (vu32)((vf32)u / divisor);  // the float32 quotient x / X (IEEE division)
        put_codes(out, j, element_codes<RND, NORM>(u, pow2 ? e : 0, g, rand_bits), PACK, cbuf);
    }
}

typedef uint16_t vu16x16 __attribute__((vector_size(32)));

MX_INLINE uint32_t hmax16(vu16x16 v) {
#if defined(__AVX2__)
    const __m256i m = (__m256i)v;
    const __m128i h = _mm_max_epu16(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    // max = ~min(~h): one phminposuw instead of a shuffle tree
    return 0xFFFFu & ~uint32_t(_mm_cvtsi128_si32(_mm_minpos_epu16(_mm_xor_si128(h, _mm_set1_epi16(-1)))));
#else
    uint32_t best = 0;
    for (int l = 0; l < 16; ++l) best = v[l] > best ? v[l] : best;
    return best;
#endif
}

// Block amax of 16-bit inputs on their bit patterns (magnitude order = bit order), 16 lanes at
// once: over all elements (FINITE=false; a non-finite element makes it >= inf) or over the
// finite ones.
template <int DT, bool FINITE>
MX_INLINE uint32_t block_amax16(const void* x, int64_t off, int32_t n) {
    const uint16_t inf16 = DT == DT_BF16 ? 0x7F80 : 0x7C00;
    const uint16_t* h = static_cast<const uint16_t*>(x) + off;
    vu16x16 best_v = {};
    int32_t j = 0;
    for (; j + 16 <= n; j += 16) {
        vu16x16 v;
        std::memcpy(&v, h + j, sizeof(v));
        v &= 0x7FFF;
        if (FINITE) v = v < inf16 ? v : vu16x16{};
        best_v = v > best_v ? v : best_v;
    }
    uint32_t best = hmax16(best_v);
    for (; j < n; ++j) {
        uint32_t v = h[j] & 0x7FFFu;
        if (FINITE && v >= inf16) v = 0;
        best = v > best ? v : best;
    }
    if (DT == DT_BF16) return best << 16;
    if (!FINITE && best >= inf16) return 0x7F800000u;  // non-finite: only that matters then
    return fp16_to_fp32_bits(splat(int32_t(best)))[0];
}

// fp32 bits of the block's amax over all elements (>= inf if any is not finite) or the finite ones.
template <int DT, bool FINITE>
MX_INLINE uint32_t any_block_amax(const void* x, int64_t off, int32_t n) {
    if constexpr (DT != DT_FP32) {
        return block_amax16<DT, FINITE>(x, off, n);
    } else {
        uint32_t all, fin;
        block_amax<DT>(x, off, n, &all, &fin);
        return FINITE ? fin : all;
    }
}

// Codes of a whole block of 16k contiguous elements, written straight to the stream as nibbles
// (4-bit codes) or bytes (8-bit codes).
template <int DT, int RND, int PACK, bool FPU>
MX_INLINE void block_codes_pairs(const void* x, int64_t off, int32_t bs, int32_t e, bool pow2, float divisor,
                                 const Grid& g, uint64_t seed, uint64_t base, uint8_t* out) {
    const float scale_mul = u2f(e <= 126 ? uint32_t(127 - e) << 23 : 0x00400000u);  // 2**-e, exact
    const vu32 lane2 = {0, 2, 4, 6, 8, 10, 12, 14};
    const bool one_key = (base >> 32) == ((base + uint64_t(bs) - 1) >> 32);
    const uint32_t key = RND == RND_STOCHASTIC ? seed_key(seed, uint32_t(base >> 32)) : 0u;
    const int32_t ee = pow2 ? e : 0;
    for (int32_t j = 0; j < bs; j += 2 * W) {
        vu32 even, odd;
        load16_pairs<DT>(x, off + j, even, odd);
        vu32 rand_even = {}, rand_odd = {};
        if constexpr (RND == RND_STOCHASTIC) {
            if (one_key) {
                const vu32 idx = uint32_t(base) + uint32_t(j) + lane2;
                rand_even = mix32(key ^ idx);
                rand_odd = mix32(key ^ (idx + 1u));
            } else {  // a block straddling element index h * 2**32
                for (int l = 0; l < W; ++l) {
                    const uint64_t i0 = base + uint64_t(j + 2 * l), i1 = i0 + 1;
                    rand_even[l] = mix32(seed_key(seed, uint32_t(i0 >> 32)) ^ uint32_t(i0));
                    rand_odd[l] = mix32(seed_key(seed, uint32_t(i1 >> 32)) ^ uint32_t(i1));
                }
            }
        }
        vi32 ce, co;
        if constexpr (FPU) {
            // |x| * 2**-e (e8m0) or |x| / X (float scales), both in float32
            const vf32 ae = (vf32)(even & 0x7FFFFFFFu), ao = (vf32)(odd & 0x7FFFFFFFu);
            ce = element_codes_rne_fpu(pow2 ? ae * scale_mul : ae / divisor, even, g);
            co = element_codes_rne_fpu(pow2 ? ao * scale_mul : ao / divisor, odd, g);
        } else {
            if (!pow2) {  // the float32 quotients x / X (IEEE division)
                even = (vu32)((vf32)even / divisor);
                odd = (vu32)((vf32)odd / divisor);
            }
            ce = element_codes<RND, false>(even, ee, g, rand_even);
            co = element_codes<RND, false>(odd, ee, g, rand_odd);
        }
        if constexpr (PACK == PACK_NIBBLES) {
            store_bytes8(out + j / 2, ce | (co << 4));
        } else {
            store_words8(out + j, ce | (co << 8));
        }
    }
}

// Scale of one block (stored to scales_out) and how to encode its elements.
struct BlockPlan {
    int32_t e;        // e8m0: the shared exponent
    float divisor;    // float scale types: the float32 multiplier X
    bool zero_codes;  // NaN block, or a block that decodes to 0 whatever its codes
    bool norm;        // subnormal inputs need normalising (element_codes NORM=true)
    bool clipped;     // the block saturated or was flushed (reference.e8m0_clipped / float_block_scales)
};

// Clipped e8m0 blocks (docs/semantics.md, "Range") by the amax thresholds params.py derives from the
// reference: 0 < amax < flush_below (the scale mode asks for less than 2**-127) or a finite amax above
// saturate_above (beyond max_normal * 2**127).
MX_INLINE bool e8m0_clipped(uint32_t amax, const Format& f) {
    return (amax > 0 && amax < f.e8m0_flush_below) || (amax > f.e8m0_saturate_above && amax < 0x7F800000u);
}

// The smallest normal float32: an effective multiplier X below it is a float32 subnormal (flushed).
constexpr float FP32_MIN_NORMAL = 0x1p-126f;

// The plan of block k from its amax over all elements (float32 bits of the largest |x|; >= inf
// if some element is not finite).
MX_INLINE BlockPlan plan_from_amax(const Format& f, uint32_t amax, int64_t k, double denom, float tensor_scale,
                                   void* scales_out) {
    const bool nan_block = amax >= 0x7F800000u;
    BlockPlan plan{0, 1.0f, nan_block, false, false};
    if (f.scale_type == SC_E8M0) {
        plan.e = e8m0_exponent(amax, f);
        store_scale(scales_out, k, f.scale_type, nan_block ? f.scale_nan : uint32_t(plan.e + 127));
        plan.norm = -126 - plan.e > f.grid_emin;  // see element_codes
        plan.clipped = e8m0_clipped(amax, f);
    } else {
        const bool positive = !nan_block && amax > 0;
        double block_scale = 0.0;
        bool out_of_grid = false;  // q below the smallest normal scale, or above the largest scale
        if (positive) {
            const double q = double(u2f(amax)) / denom;
            out_of_grid = q < pow2d(f.scale_emin) || q > f.scale_max;
            block_scale = round_up_grid(q, f.scale_mbits, f.scale_emin, f.scale_max);
        }
        const float effective = f.tensor_scale ? float(block_scale * double(tensor_scale)) : float(block_scale);
        plan.clipped = positive && (out_of_grid || effective < FP32_MIN_NORMAL);
        // an effective scale that underflowed to 0 decodes every element to 0: codes are 0
        plan.zero_codes = nan_block || !(positive && effective > 0.0f);
        plan.divisor = effective;
        store_scale(scales_out, k, f.scale_type,
                    nan_block ? f.scale_nan : exact_grid_code(block_scale, f.scale_mbits, f.scale_emin));
        plan.norm = -126 > f.grid_emin;
    }
    return plan;
}

template <int DT>
MX_INLINE BlockPlan plan_block(const Format& f, const void* x, int64_t off, int32_t n, int64_t k, double denom,
                               float tensor_scale, void* scales_out) {
    // over all elements: a block with a non-finite element is a NaN block, whose scale and codes
    // do not depend on the amax of its finite elements
    return plan_from_amax(f, any_block_amax<DT, false>(x, off, n), k, denom, tensor_scale, scales_out);
}

// General path: any layout, width, rounding (blocks may end in row padding; codes through a buffer
// unless they can be written straight to the stream).
// Each encoder returns how many of its blocks clipped.
template <int DT, int RND>
int64_t encode_range(const Format& f, const void* x, int64_t length, int64_t bpr, int64_t b0, int64_t b1,
                     float tensor_scale, uint64_t seed, uint8_t* codes_out, void* scales_out, uint16_t* cbuf) {
    const int32_t bs = f.block_size, bits = f.bits;
    const Grid grid{f.grid_mbits, f.grid_emin, f.max_code, bits, f.is_int};
    const bool pow2 = f.scale_type == SC_E8M0;
    const bool aligned = (int64_t(bs) * bits) % 8 == 0;
    // whole blocks back to back in memory (no row padding): codes can go straight to the stream
    const bool contiguous = length % bs == 0;
    constexpr bool direct = RND == RND_RNE || RND == RND_STOCHASTIC;  // others: fewer kernels to compile
    const int pack = direct && contiguous && bs % W == 0
                         ? (bits == 8 ? PACK_BYTES : (bits == 4 ? PACK_NIBBLES : PACK_BUFFER))
                         : PACK_BUFFER;
    const int64_t block_bytes = aligned ? int64_t(bs) * bits / 8 : 0;
    BitWriter stream{codes_out + (b0 * bs * bits) / 8};  // the caller starts ranges on byte boundaries
    BlockCursor cur(length, bpr, bs, b0);
    const double denom = f.max_normal * (f.tensor_scale ? double(tensor_scale) : 1.0);
    int64_t clipped = 0;
    for (int64_t k = b0; k < b1; ++k, cur.next()) {
        const int64_t off = contiguous ? k * bs : cur.offset();
        const int32_t n = contiguous ? bs : cur.valid();
        uint8_t* out = codes_out + k * block_bytes;
        const BlockPlan plan = plan_block<DT>(f, x, off, n, k, denom, tensor_scale, scales_out);
        clipped += plan.clipped;
        const int32_t e = plan.e;
        const float divisor = plan.divisor;
        int block_pack = pack;
        const uint64_t base = uint64_t(k) * uint64_t(bs);
        if (plan.zero_codes) {
            if (pack != PACK_BUFFER) {
                std::memset(out, 0, size_t(block_bytes));
            } else {
                std::memset(cbuf, 0, sizeof(uint16_t) * size_t(bs));
            }
        } else if (plan.norm) {
            block_pack = PACK_BUFFER;
            block_codes<DT, RND, true, PACK_BUFFER>(x, off, n, e, pow2, divisor, grid, seed, base, out, cbuf);
        } else if (direct && pack == PACK_BYTES) {
            if constexpr (direct) {
                block_codes<DT, RND, false, PACK_BYTES>(x, off, n, e, pow2, divisor, grid, seed, base, out, cbuf);
            }
        } else if (direct && pack == PACK_NIBBLES) {
            if constexpr (direct) {
                block_codes<DT, RND, false, PACK_NIBBLES>(x, off, n, e, pow2, divisor, grid, seed, base, out, cbuf);
            }
        } else {
            block_codes<DT, RND, false, PACK_BUFFER>(x, off, n, e, pow2, divisor, grid, seed, base, out, cbuf);
        }
        if (block_pack == PACK_BUFFER) {
            if (n < bs && !plan.zero_codes) std::memset(cbuf + n, 0, sizeof(uint16_t) * size_t(bs - n));  // row padding
            if (aligned) {
                pack_block(cbuf, bs, bits, out);
            } else {
                for (int32_t j = 0; j < bs; ++j) stream.put(cbuf[j], bits);
            }
        }
    }
    if (!aligned) stream.flush();
    return clipped;
}

// Fast path: blocks of 16k elements back to back, 4- or 8-bit codes. Per chunk of blocks, first
// every block's scale, then every block's codes (a tight loop with its constants in registers).
template <int DT, int RND, int PACK, bool FPU>
int64_t encode_pairs_range(const Format& f, const void* x, int64_t b0, int64_t b1, float tensor_scale, uint64_t seed,
                        uint8_t* codes_out, void* scales_out, uint16_t* cbuf) {
    constexpr int64_t CHUNK = 64;
    const int32_t bs = f.block_size, bits = f.bits;
    const Grid grid{f.grid_mbits, f.grid_emin, f.max_code, bits, f.is_int};
    const bool pow2 = f.scale_type == SC_E8M0;
    const int64_t block_bytes = int64_t(bs) * bits / 8;
    const double denom = f.max_normal * (f.tensor_scale ? double(tensor_scale) : 1.0);
    BlockPlan plans[CHUNK];
    int64_t clipped = 0;
    for (int64_t c0 = b0; c0 < b1; c0 += CHUNK) {
        const int64_t c1 = c0 + CHUNK < b1 ? c0 + CHUNK : b1;
        for (int64_t k = c0; k < c1; ++k) {
            plans[k - c0] = plan_block<DT>(f, x, k * bs, bs, k, denom, tensor_scale, scales_out);
            clipped += plans[k - c0].clipped;
        }
        for (int64_t k = c0; k < c1; ++k) {
            const BlockPlan& plan = plans[k - c0];
            uint8_t* out = codes_out + k * block_bytes;
            if (plan.zero_codes) {
                std::memset(out, 0, size_t(block_bytes));
            } else if (plan.norm) {
                block_codes<DT, RND, true, PACK_BUFFER>(x, k * bs, bs, plan.e, pow2, plan.divisor, grid, seed,
                                                        uint64_t(k) * bs, out, cbuf);
                pack_block(cbuf, bs, bits, out);
            } else {
                block_codes_pairs<DT, RND, PACK, FPU>(x, k * bs, bs, plan.e, pow2, plan.divisor, grid, seed,
                                                     uint64_t(k) * bs, out);
            }
        }
    }
    return clipped;
}

template <int DT, int RND>
int64_t encode_dispatch(const Format& f, const void* x, int64_t length, int64_t bpr, int64_t b0, int64_t b1,
                     float tensor_scale, uint64_t seed, uint8_t* codes_out, void* scales_out, uint16_t* cbuf) {
    const int32_t bs = f.block_size, bits = f.bits;
    // (round-half-away and toward-zero take the general path only: fewer kernels to compile)
    const bool pairs = (RND == RND_RNE || RND == RND_STOCHASTIC) && length % bs == 0 && bs % (2 * W) == 0 &&
                       (bits == 4 || bits == 8);
    const bool fpu = RND == RND_RNE && f.float_rne != 0;
#define MX_PAIRS(PACK, FPU) \
    return encode_pairs_range<DT, RND, PACK, FPU>(f, x, b0, b1, tensor_scale, seed, codes_out, scales_out, cbuf)
    if constexpr (RND == RND_RNE) {
        if (pairs && fpu) {
            if (bits == 4) {
                MX_PAIRS(PACK_NIBBLES, true);
            } else {
                MX_PAIRS(PACK_BYTES, true);
            }
        }
    }
    if constexpr (RND == RND_RNE || RND == RND_STOCHASTIC) {
        if (pairs) {
            if (bits == 4) {
                MX_PAIRS(PACK_NIBBLES, false);
            } else {
                MX_PAIRS(PACK_BYTES, false);
            }
        }
    }
    return encode_range<DT, RND>(f, x, length, bpr, b0, b1, tensor_scale, seed, codes_out, scales_out, cbuf);
#undef MX_PAIRS
}

MX_INLINE vf32 saturated_products(vf32 v, float X, bool check_inf) {
    // product rounded to float32; a finite element never overflows to inf (saturate)
    const float fmax = std::numeric_limits<float>::max();
    const vf32 prod = v * X;
    const vf32 sat = prod > fmax ? vf32{} + fmax : (prod < -fmax ? vf32{} - fmax : prod);
    if (!check_inf) return sat;
    const vi32 v_inf = ((vi32)v & 0x7FFFFFFF) == 0x7F800000;
    return v_inf ? prod : sat;
}

enum { UNPACK_BUFFER = 0, UNPACK_NIBBLES = 4, UNPACK_BYTES = 8 };

// Element values of codes [j, j + 8) of a block.
template <int UNPACK>
MX_INLINE vf32 block_values(const uint8_t* in, const uint16_t* cbuf, int32_t j, const float* table, vf32 tlo,
                            vf32 thi) {
    vi32 idx;
    if constexpr (UNPACK == UNPACK_NIBBLES) {
        uint32_t w;
        std::memcpy(&w, in + j / 2, 4);
        const vi32 shifts = {0, 4, 8, 12, 16, 20, 24, 28};
        idx = (vi32)(((vu32{} + w) >> (vu32)shifts) & 0xFu);
#if defined(__AVX2__)
        const __m256 lo = _mm256_permutevar8x32_ps((__m256)tlo, (__m256i)idx);
        const __m256 hi = _mm256_permutevar8x32_ps((__m256)thi, (__m256i)idx);
        return (vf32)_mm256_blendv_ps(lo, hi, (__m256)(idx << 28));  // code bit 3 picks the half
#endif
    } else if constexpr (UNPACK == UNPACK_BYTES) {
        vu8 b;
        std::memcpy(&b, in + j, sizeof(b));
        idx = __builtin_convertvector(b, vi32);
#if defined(__AVX2__)
        return (vf32)_mm256_i32gather_ps(table, (__m256i)idx, 4);
#endif
    } else {
        vu16 c;
        std::memcpy(&c, cbuf + j, sizeof(c));
        idx = __builtin_convertvector(c, vi32);
    }
    (void)tlo;
    (void)thi;
    vf32 v;
    for (int l = 0; l < W; ++l) v[l] = table[idx[l]];
    return v;
}

#if defined(__AVX2__)
// 4-bit codes decoded to a 16-bit type through a table of the 16 possible outputs of a block
// (each computed exactly as the element path computes it: product in float32, then rounded), as
// two byte planes, looked up with byte shuffles. Needs in-range products.
struct NibbleOutputs {
    __m128i lo, hi;
};

template <int ODT>
MX_INLINE NibbleOutputs nibble_outputs(float X, vf32 tlo, vf32 thi) {
    const vu32 o0 = ODT == DT_BF16 ? to_bf16_in_range(tlo * X) : to_fp16(tlo * X);
    const vu32 o1 = ODT == DT_BF16 ? to_bf16_in_range(thi * X) : to_fp16(thi * X);
    const __m128i w0 = (__m128i)__builtin_convertvector(o0, vu16), w1 = (__m128i)__builtin_convertvector(o1, vu16);
    const __m128i low_bytes = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i high_bytes = _mm_setr_epi8(1, 3, 5, 7, 9, 11, 13, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    return NibbleOutputs{_mm_unpacklo_epi64(_mm_shuffle_epi8(w0, low_bytes), _mm_shuffle_epi8(w1, low_bytes)),
                         _mm_unpacklo_epi64(_mm_shuffle_epi8(w0, high_bytes), _mm_shuffle_epi8(w1, high_bytes))};
}

// One block (bs % 16 == 0) through its output table: 32 codes per step, then 16.
MX_INLINE void decode_nibbles_with(const uint8_t* in, int32_t bs, NibbleOutputs t, uint16_t* out) {
    const __m256i tab_lo = _mm256_broadcastsi128_si256(t.lo), tab_hi = _mm256_broadcastsi128_si256(t.hi);
    int32_t j = 0;
    for (; j + 32 <= bs; j += 32) {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + j / 2));
        const __m128i nibble = _mm_set1_epi8(0x0F);
        const __m128i lo = _mm_and_si128(b, nibble), hi = _mm_and_si128(_mm_srli_epi16(b, 4), nibble);
        const __m256i codes = _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));  // 0-15 | 16-31
        const __m256i vl = _mm256_shuffle_epi8(tab_lo, codes), vh = _mm256_shuffle_epi8(tab_hi, codes);
        const __m256i first = _mm256_unpacklo_epi8(vl, vh), second = _mm256_unpackhi_epi8(vl, vh);  // 0-7, 16-23 | 8-15, 24-31
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), _mm256_permute2x128_si256(first, second, 0x20));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j + 16), _mm256_permute2x128_si256(first, second, 0x31));
    }
    if (j < bs) {
        const __m128i nibble = _mm_set1_epi8(0x0F);
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(in + j / 2));
        const __m128i lo = _mm_and_si128(b, nibble), hi = _mm_and_si128(_mm_srli_epi16(b, 4), nibble);
        const __m128i codes = _mm_unpacklo_epi8(lo, hi);  // codes j .. j+15 in order
        const __m128i vl = _mm_shuffle_epi8(t.lo, codes), vh = _mm_shuffle_epi8(t.hi, codes);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm_unpacklo_epi8(vl, vh));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j + 8), _mm_unpackhi_epi8(vl, vh));
    }
}

template <int ODT>
MX_INLINE void decode_nibbles_by_table(const uint8_t* in, int32_t bs, float X, vf32 tlo, vf32 thi, uint16_t* out) {
    decode_nibbles_with(in, bs, nibble_outputs<ODT>(X, tlo, thi), out);
}
#endif

template <int ODT, int UNPACK>
void decode_blocks_impl(const Format& f, int32_t nparts, const uint8_t* const* codes, const void* const* scales,
                        const float* tensor_scales, const float* table, int64_t length, int64_t bpr, int64_t b0,
                        int64_t b1, void* out, uint16_t* cbuf, float* acc, BitReader* readers) {
    const int32_t bs = f.block_size, bits = f.bits;
    const bool aligned = (int64_t(bs) * bits) % 8 == 0;
    const bool contiguous = length % bs == 0;
    const int64_t block_bytes = aligned ? int64_t(bs) * bits / 8 : 0;
    const bool check_inf = f.table_has_inf != 0;
    const float fmax = std::numeric_limits<float>::max();
    const float bf16_max = u2f(0x7F7F0000u);
    vf32 tlo = {}, thi = {};
    if constexpr (UNPACK == UNPACK_NIBBLES) {
        std::memcpy(&tlo, table, sizeof(tlo));
        std::memcpy(&thi, table + 8, sizeof(thi));
    }
    for (int32_t p = 0; p < nparts; ++p) readers[p] = BitReader{codes[p] + (b0 * bs * bits) / 8};
    BlockCursor cur(length, bpr, bs, b0);
    for (int64_t k = b0; k < b1; ++k, cur.next()) {
        const int64_t off = contiguous ? k * bs : cur.offset();
        const int32_t n = contiguous ? bs : cur.valid();
        for (int32_t p = 0; p < nparts; ++p) {
            const uint8_t* in = codes[p] + k * block_bytes;
            if constexpr (UNPACK == UNPACK_BUFFER) {
                if (aligned) {
                    unpack_block(in, bs, bits, cbuf);
                } else {
                    for (int32_t j = 0; j < bs; ++j) cbuf[j] = uint16_t(readers[p].get(bits));
                }
            }
            const float X = block_multiplier(scales[p], k, f, tensor_scales[p]);
            // |X| * table_max within range: no finite product needs saturating. (inf and NaN codes
            // give inf or quiet NaN products, which every conversion passes through; a NaN X fails
            // the test, so no NaN with an arbitrary payload reaches the fast bf16 rounding.)
            const float top = std::fabs(X) * f.table_max;
            const bool in_range = top <= (ODT == DT_BF16 ? bf16_max : fmax);
#if defined(__AVX2__)
            if constexpr (UNPACK == UNPACK_NIBBLES && ODT != DT_FP32) {
                if (nparts == 1 && in_range && n == bs && bs % 16 == 0) {
                    decode_nibbles_by_table<ODT>(in, bs, X, tlo, thi, static_cast<uint16_t*>(out) + off);
                    continue;
                }
            }
#endif
            if (nparts == 1 && in_range && n == bs && bs % W == 0) {
                for (int32_t j = 0; j < n; j += W) {
                    store8_in_range<ODT>(out, off + j, block_values<UNPACK>(in, cbuf, j, table, tlo, thi) * X);
                }
                continue;
            }
            const bool no_overflow = top <= fmax;  // no product needs saturating (NaN X: false)
            for (int32_t j = 0; j < n; j += W) {
                const vf32 v = block_values<UNPACK>(in, cbuf, j, table, tlo, thi);
                const vf32 prod = no_overflow ? v * X : saturated_products(v, X, check_inf);
                vf32 y = prod;
                if (p > 0) {
                    std::memcpy(&y, acc + j, sizeof(y));
                    y += prod;  // float32 accumulation in part order
                }
                if (p < nparts - 1) {
                    std::memcpy(acc + j, &y, sizeof(y));
                } else if (n - j >= W) {
                    store8<ODT>(out, off + j, y);
                } else {
                    store_tail<ODT>(out, off + j, y, n - j);
                }
            }
        }
    }
}

template <int ODT>
void decode_range(const Format& f, int32_t nparts, const uint8_t* const* codes, const void* const* scales,
                  const float* tensor_scales, const float* table, int64_t length, int64_t bpr, int64_t b0,
                  int64_t b1, void* out, uint16_t* cbuf, float* acc, BitReader* readers) {
    const int32_t bs = f.block_size, bits = f.bits;
    const bool fast = length % bs == 0 && bs % W == 0;
#define MX_DEC_IMPL(UNPACK) \
    decode_blocks_impl<ODT, UNPACK>(f, nparts, codes, scales, tensor_scales, table, length, bpr, b0, b1, out, cbuf, \
                                    acc, readers)
    if (fast && bits == 4) {
        MX_DEC_IMPL(UNPACK_NIBBLES);
    } else if (fast && bits == 8) {
        MX_DEC_IMPL(UNPACK_BYTES);
    } else {
        MX_DEC_IMPL(UNPACK_BUFFER);
    }
#undef MX_DEC_IMPL
}


// -- random Hadamard rotation (mxcomm/kernels/rotation.py) --------------------------------------
// Encode: signs, the butterfly stages h = 1, 2, 4, ..., bs/2, then times 1/bs, of every block of
// the zero-padded float32 row, before its scale is computed. Decode: the float32 sum of the parts,
// the same stages, then times the signs, before the output cast. Each sum, difference and
// product is one float32 rounding in exactly the reference's order (no contraction, no
// reassociation: see the build flags), so codes and outputs are bit-identical to rotating around
// the plain codec. The sign of position pos along the padded row is the low bit of its random
// word (the stochastic-rounding hash, keyed by the rotation seed). A block never straddles a
// multiple of 2**32 positions (bs is a power of two), so one key serves a whole block.
//
// Two layouts of a block in registers / in the rotation buffer: natural (8 consecutive elements
// per vector), and paired (per 16 elements, one vector of the 8 even-indexed and one of the 8
// odd-indexed ones; blocks of 16k with 4- or 8-bit codes). In the paired layout stage h = 1 is a
// plain vector sum / difference, 16-bit inputs and outputs split / join with shifts, and the
// encoder's element loop (block_codes_pairs) reads it as it is.

#if defined(__GNUC__)
#define MX_NOINLINE __attribute__((noinline))
#else
#define MX_NOINLINE
#endif

MX_INLINE vf32 loadf8(const float* p) {
    vf32 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

MX_INLINE void storef8(float* p, vf32 v) { std::memcpy(p, &v, sizeof(v)); }

// +-1.0f for positions pos0 + step * lane
template <uint32_t STEP>
MX_INLINE vf32 rotation_signs8(uint32_t key, uint32_t pos0) {
    const vu32 lane = {0, STEP, 2 * STEP, 3 * STEP, 4 * STEP, 5 * STEP, 6 * STEP, 7 * STEP};
    return (vf32)((mix32(key ^ (pos0 + lane)) << 31) | 0x3F800000u);
}

// The signs of one block: from a table of the row's signs (in the block's layout), or hashed.
struct BlockSigns {
    const float* table;  // the block's first sign in the row table, or null
    uint32_t key, pos;   // seed_key of the block's high position word; low word of its first position
    // natural layout: positions j .. j + 7 of the block
    MX_INLINE vf32 at(int32_t j) const {
        return table ? loadf8(table + j) : rotation_signs8<1>(key, pos + uint32_t(j));
    }
    // paired layout: positions j, j + 2, ..., j + 14 and j + 1, j + 3, ..., j + 15 (j % 16 == 0)
    MX_INLINE void pair(int32_t j, vf32& even, vf32& odd) const {
        if (table) {
            even = loadf8(table + j);
            odd = loadf8(table + j + W);
        } else {
            even = rotation_signs8<2>(key, pos + uint32_t(j));
            odd = rotation_signs8<2>(key, pos + uint32_t(j) + 1u);
        }
    }
};

// Signs for the blocks of one call: a table of one padded row's signs where rows are short and
// the call covers at least two of them (rows share their signs), else hashed per block.
class RotationSigns {
  public:
    static constexpr int64_t MAX_TABLE = int64_t(1) << 16;  // positions (256 KiB of floats)

    RotationSigns(const Format& f, int64_t bpr, int64_t b0, int64_t b1, bool paired)
        : seed_(f.rotation_seed), bs_(f.block_size) {
        const int64_t row = bpr * bs_;
        if (row > MAX_TABLE || b1 - b0 < 2 * bpr || (paired && bs_ % 16 != 0)) return;
        // whole vectors, past the row's end too: a block of bs < 8 reads 8 signs
        table_ = static_cast<float*>(std::malloc(sizeof(float) * size_t(row + 2 * W)));
        if (!table_) return;  // hashing per block gives the same signs
        const uint32_t key = seed_key(seed_, 0);
        if (paired) {
            for (int64_t j = 0; j < row; j += 2 * W) {
                storef8(table_ + j, rotation_signs8<2>(key, uint32_t(j)));
                storef8(table_ + j + W, rotation_signs8<2>(key, uint32_t(j) + 1u));
            }
        } else {
            for (int64_t j = 0; j < row + W; j += W) storef8(table_ + j, rotation_signs8<1>(key, uint32_t(j)));
        }
    }
    ~RotationSigns() { std::free(table_); }
    RotationSigns(const RotationSigns&) = delete;
    RotationSigns& operator=(const RotationSigns&) = delete;

    MX_INLINE BlockSigns block(int64_t col) const {
        const uint64_t pos = uint64_t(col) * uint64_t(bs_);
        if (table_) return BlockSigns{table_ + pos, 0, 0};
        return BlockSigns{nullptr, seed_key(seed_, uint32_t(pos >> 32)), uint32_t(pos)};
    }

  private:
    uint64_t seed_;
    int64_t bs_;
    float* table_ = nullptr;
};

// Lane l of the result is lane l ^ H of x.
template <int H>
MX_INLINE vf32 partner_lanes(vf32 x) {
#if defined(__clang__)
    if constexpr (H == 1) return __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6);
    else if constexpr (H == 2) return __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5);
    else return __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3);
#else
    return __builtin_shuffle(x, vi32{0 ^ H, 1 ^ H, 2 ^ H, 3 ^ H, 4 ^ H, 5 ^ H, 6 ^ H, 7 ^ H});
#endif
}

// One butterfly stage between lanes H apart (H < 8): lane l (l & H == 0) gets a + b with
// a = x[l], b = x[l + H]; lane l + H gets a - b, computed as (-b) + a -- IEEE subtraction is the
// addition of the negated operand and addition commutes, so it is the same float32 result.
template <int H>
MX_INLINE vf32 stage_in_vector(vf32 x) {
#if defined(__AVX2__)
    if constexpr (H == 4) {  // the 128-bit halves: lane-crossing permutes are slow on some CPUs
        const __m128 a = _mm256_castps256_ps128((__m256)x), b = _mm256_extractf128_ps((__m256)x, 1);
        return (vf32)_mm256_insertf128_ps(_mm256_castps128_ps256(_mm_add_ps(a, b)), _mm_sub_ps(a, b), 1);
    }
#endif
    constexpr uint32_t S = 0x80000000u;
    const vu32 negate = {0, 1 & H ? S : 0, 2 & H ? S : 0, 3 & H ? S : 0,
                         4 & H ? S : 0, 5 & H ? S : 0, 6 & H ? S : 0, 7 & H ? S : 0};
    return (vf32)((vu32)x ^ negate) + partner_lanes<H>(x);
}

// Natural layout: the stages h < min(bs, 8) of 8 lanes (one block of bs <= 8 in the low lanes,
// or 8 elements of a larger one).
MX_INLINE vf32 stages_in_vector(vf32 x, int32_t bs) {
    x = stage_in_vector<1>(x);
    if (bs >= 4) x = stage_in_vector<2>(x);
    if (bs >= 8) x = stage_in_vector<4>(x);
    return x;
}

// Paired layout: the stages h = 1, 2, 4, 8 of 16 elements.
MX_INLINE void stages_in_pair(vf32& even, vf32& odd) {
    const vf32 a = even, b = odd;
    even = stage_in_vector<4>(stage_in_vector<2>(stage_in_vector<1>(a + b)));
    odd = stage_in_vector<4>(stage_in_vector<2>(stage_in_vector<1>(a - b)));
}

// The stages h = first_h, 2 * first_h, ..., last_h (first_h >= 8) of one block in memory (either
// layout: from h = 16 on, both put the partners of a stage h apart).
MX_INLINE void stages_across_vectors(float* v, int32_t bs, int32_t first_h, int32_t last_h) {
    for (int32_t h = first_h; h <= last_h; h *= 2) {
        for (int32_t i0 = 0; i0 < bs; i0 += 2 * h) {
            for (int32_t j = i0; j < i0 + h; j += W) {
                const vf32 a = loadf8(v + j), b = loadf8(v + j + h);
                storef8(v + j, a + b);
                storef8(v + j + h, a - b);
            }
        }
    }
}

// The stages between vectors 1, 2, 4, ... apart of NV vectors in registers.
template <int NV>
MX_INLINE void stages_across_registers(vf32* v) {
    for (int h = 1; h < NV; h *= 2) {
        for (int i0 = 0; i0 < NV; i0 += 2 * h) {
            for (int i = i0; i < i0 + h; ++i) {
                const vf32 a = v[i], b = v[i + h];
                v[i] = a + b;
                v[i + h] = a - b;
            }
        }
    }
}

MX_INLINE vi32 abs_bits(vf32 v) { return (vi32)v & 0x7FFFFFFF; }

// The last stage (h = bs / 2) of a block in memory, times mul; returns the amax of the results
// when AMAX (in plan_from_amax's convention: abs bit patterns order like magnitudes, NaN above inf).
template <bool AMAX>
MX_INLINE uint32_t last_stage(float* v, int32_t bs, vf32 mul) {
    const int32_t h = bs / 2;
    vi32 amax = {};
    for (int32_t j = 0; j < h; j += W) {
        const vf32 a = loadf8(v + j), b = loadf8(v + j + h);
        const vf32 lo = (a + b) * mul, hi = (a - b) * mul;
        storef8(v + j, lo);
        storef8(v + j + h, hi);
        if (AMAX) amax = vmax(amax, vmax(abs_bits(lo), abs_bits(hi)));
    }
    return uint32_t(hmax(amax));
}

// Elements [i, i + 16) of x as pairs, of which the first m < 16 are valid (the rest zero).
template <int DT>
MX_INLINE void load16_pairs_partial(const void* x, int64_t i, int32_t m, vu32& even, vu32& odd) {
    uint32_t tmp[2 * W] = {};
    const size_t esize = DT == DT_FP32 ? 4 : 2;
    if (m > 0) std::memcpy(tmp, static_cast<const char*>(x) + i * int64_t(esize), size_t(m) * esize);
    load16_pairs<DT>(tmp, 0, even, odd);
}

// Encode: H D x / bs of the block of n <= bs valid elements at x + off (zero-padded to bs) into
// rot as float32 (bs + W floats), natural layout. Returns the block's amax over all elements.
template <int DT>
MX_INLINE uint32_t rotate_block(const void* x, int64_t off, int32_t n, int32_t bs, const BlockSigns& s, float* rot) {
    const float inv = 1.0f / float(bs);  // a power of two: exact
    if (bs <= W) {  // one vector; lanes >= bs are not part of the block
        const vu32 u = n >= W ? load8<DT>(x, off) : load_tail<DT>(x, off, n);
        const vf32 v = stages_in_vector((vf32)u * s.at(0), bs) * inv;
        storef8(rot, v);
        const vi32 lane = {0, 1, 2, 3, 4, 5, 6, 7};
        return uint32_t(hmax(lane < bs ? abs_bits(v) : vi32{}));
    }
    for (int32_t j = 0; j < bs; j += W) {
        const vu32 u = n - j >= W ? load8<DT>(x, off + j) : (n > j ? load_tail<DT>(x, off + j, n - j) : vu32{});
        storef8(rot + j, stages_in_vector((vf32)u * s.at(j), W));
    }
    stages_across_vectors(rot, bs, W, bs / 4);
    return last_stage<true>(rot, bs, vf32{} + inv);
}

// rotate_block for bs = 8 * NV, in registers.
template <int DT, int NV>
MX_INLINE uint32_t rotate_block_in_registers(const void* x, int64_t off, int32_t n, const BlockSigns& s, float* rot) {
    constexpr float inv = 1.0f / float(NV * W);
    vf32 v[NV];
    for (int i = 0; i < NV; ++i) {
        const int32_t j = i * W;
        const vu32 u = n - j >= W ? load8<DT>(x, off + j) : (n > j ? load_tail<DT>(x, off + j, n - j) : vu32{});
        v[i] = stages_in_vector((vf32)u * s.at(j), W);
    }
    stages_across_registers<NV>(v);
    vi32 amax = {};
    for (int i = 0; i < NV; ++i) {
        v[i] = v[i] * inv;
        amax = vmax(amax, abs_bits(v[i]));
        storef8(rot + i * W, v[i]);
    }
    return uint32_t(hmax(amax));
}

MX_NOINLINE uint32_t rotate_natural(int32_t dt, const void* x, int64_t off, int32_t n, int32_t bs,
                                    const BlockSigns& s, float* rot) {
#define MX_ROTATE(DT)                                                        \
    switch (bs) {                                                            \
        case 16: return rotate_block_in_registers<DT, 2>(x, off, n, s, rot); \
        case 32: return rotate_block_in_registers<DT, 4>(x, off, n, s, rot); \
        case 64: return rotate_block_in_registers<DT, 8>(x, off, n, s, rot); \
        default: return rotate_block<DT>(x, off, n, bs, s, rot);             \
    }
    switch (dt) {
        case DT_FP32: MX_ROTATE(DT_FP32);
        case DT_BF16: MX_ROTATE(DT_BF16);
        default: MX_ROTATE(DT_FP16);
    }
#undef MX_ROTATE
}

// Elements [j, j + 16) of the block at x + off with n valid elements, times their signs, as pairs.
template <int DT>
MX_INLINE void signed_pairs(const void* x, int64_t off, int32_t n, int32_t j, const BlockSigns& s, vf32& even,
                            vf32& odd) {
    vu32 ue, uo;
    if (n - j >= 2 * W) {
        load16_pairs<DT>(x, off + j, ue, uo);
    } else {
        load16_pairs_partial<DT>(x, off + j, n - j, ue, uo);
    }
    vf32 se, so;
    s.pair(j, se, so);
    even = (vf32)ue * se;
    odd = (vf32)uo * so;
}

// rotate_block into the paired layout, for bs = 16 * NG in registers, or (NG = 0) any bs % 16 == 0.
template <int DT, int NG>
MX_INLINE uint32_t rotate_block_paired(const void* x, int64_t off, int32_t n, int32_t bs, const BlockSigns& s,
                                       float* rot) {
    const float inv = 1.0f / float(bs);
    if constexpr (NG == 0) {
        for (int32_t j = 0; j < bs; j += 2 * W) {
            vf32 even, odd;
            signed_pairs<DT>(x, off, n, j, s, even, odd);
            stages_in_pair(even, odd);
            storef8(rot + j, even);
            storef8(rot + j + W, odd);
        }
        stages_across_vectors(rot, bs, 2 * W, bs / 4);
        return last_stage<true>(rot, bs, vf32{} + inv);
    } else {
        vf32 even[NG], odd[NG];
        for (int g = 0; g < NG; ++g) {
            signed_pairs<DT>(x, off, n, 2 * W * g, s, even[g], odd[g]);
            stages_in_pair(even[g], odd[g]);
        }
        stages_across_registers<NG>(even);
        stages_across_registers<NG>(odd);
        vi32 amax = {};
        for (int g = 0; g < NG; ++g) {
            even[g] = even[g] * inv;
            odd[g] = odd[g] * inv;
            amax = vmax(amax, vmax(abs_bits(even[g]), abs_bits(odd[g])));
            storef8(rot + 2 * W * g, even[g]);
            storef8(rot + 2 * W * g + W, odd[g]);
        }
        return uint32_t(hmax(amax));
    }
}

MX_NOINLINE uint32_t rotate_paired(int32_t dt, const void* x, int64_t off, int32_t n, int32_t bs,
                                   const BlockSigns& s, float* rot) {
#define MX_ROTATE(DT)                                                         \
    switch (bs) {                                                             \
        case 16: return rotate_block_paired<DT, 1>(x, off, n, bs, s, rot);    \
        case 32: return rotate_block_paired<DT, 2>(x, off, n, bs, s, rot);    \
        case 64: return rotate_block_paired<DT, 4>(x, off, n, bs, s, rot);    \
        default: return rotate_block_paired<DT, 0>(x, off, n, bs, s, rot);    \
    }
    switch (dt) {
        case DT_FP32: MX_ROTATE(DT_FP32);
        case DT_BF16: MX_ROTATE(DT_BF16);
        default: MX_ROTATE(DT_FP16);
    }
#undef MX_ROTATE
}

// A paired-layout block (bs % 16 == 0) in natural order.
MX_INLINE void unpair_block(const float* paired, int32_t bs, float* natural) {
    for (int32_t j = 0; j < bs; j += 2 * W) {
        for (int32_t l = 0; l < W; ++l) {
            natural[j + 2 * l] = paired[j + l];
            natural[j + 2 * l + 1] = paired[j + W + l];
        }
    }
}

// Blocks rotated (and their scales computed) before their codes: independent work for the
// out-of-order core, in place of one block's chain of rotation -> amax -> scale -> codes.
constexpr int32_t ROT_CHUNK_ELEMENTS = 1024;
constexpr int32_t ROT_CHUNK_MAX_BLOCKS = 64;

MX_INLINE int32_t rot_chunk_blocks(int32_t bs) {
    const int32_t c = ROT_CHUNK_ELEMENTS / bs;
    return c < 1 ? 1 : (c > ROT_CHUNK_MAX_BLOCKS ? ROT_CHUNK_MAX_BLOCKS : c);
}

// Floats of the encoder's rotation buffer: a chunk of rotated blocks, then one block in natural order.
MX_INLINE size_t rot_buffer_floats(int32_t bs) { return size_t(rot_chunk_blocks(bs) + 1) * size_t(bs) + 2 * W; }

// Encode blocks [b0, b1) of a rotated format: every block is rotated into rot and encoded from
// there like a float32 block of the plain format (whole blocks: the padding is encoded too).
// PACK: the fast path's code layout (rne / stochastic, 4- or 8-bit codes, bs % 16 == 0; the
// blocks are rotated into the paired layout), else PACK_BUFFER (natural layout); FPU as in
// block_codes_pairs. rot: rot_buffer_floats(bs) floats.
template <int RND, int PACK, bool FPU>
int64_t encode_rotated_range(const Format& f, int32_t dt, const void* x, int64_t length, int64_t bpr, int64_t b0,
                          int64_t b1, float tensor_scale, uint64_t seed, uint8_t* codes_out, void* scales_out,
                          uint16_t* cbuf, float* rot) {
    constexpr bool paired = PACK != PACK_BUFFER;
    const int32_t bs = f.block_size, bits = f.bits;
    const Grid grid{f.grid_mbits, f.grid_emin, f.max_code, bits, f.is_int};
    const bool pow2 = f.scale_type == SC_E8M0;
    const bool aligned = (int64_t(bs) * bits) % 8 == 0;
    const int64_t block_bytes = aligned ? int64_t(bs) * bits / 8 : 0;
    const double denom = f.max_normal * (f.tensor_scale ? double(tensor_scale) : 1.0);
    const int32_t chunk = rot_chunk_blocks(bs);
    float* natural = rot + int64_t(chunk) * bs + W;
    const RotationSigns signs(f, bpr, b0, b1, paired);
    BlockPlan plans[ROT_CHUNK_MAX_BLOCKS];
    BitWriter stream{codes_out + (b0 * bs * bits) / 8};  // the caller starts ranges on byte boundaries
    BlockCursor cur(length, bpr, bs, b0);
    int64_t clipped = 0;
    for (int64_t c0 = b0; c0 < b1; c0 += chunk) {
        const int64_t c1 = c0 + chunk < b1 ? c0 + chunk : b1;
        for (int64_t k = c0; k < c1; ++k, cur.next()) {
            float* r = rot + (k - c0) * bs;
            const BlockSigns s = signs.block(cur.col);
            const uint32_t amax = paired ? rotate_paired(dt, x, cur.offset(), cur.valid(), bs, s, r)
                                         : rotate_natural(dt, x, cur.offset(), cur.valid(), bs, s, r);
            plans[k - c0] = plan_from_amax(f, amax, k, denom, tensor_scale, scales_out);
            clipped += plans[k - c0].clipped;
        }
        for (int64_t k = c0; k < c1; ++k) {
            const BlockPlan& plan = plans[k - c0];
            const float* r = rot + (k - c0) * bs;
            uint8_t* out = codes_out + k * block_bytes;
            const uint64_t base = uint64_t(k) * uint64_t(bs);
            if (plan.zero_codes) {
                if (aligned) {
                    std::memset(out, 0, size_t(block_bytes));
                    continue;
                }
                std::memset(cbuf, 0, sizeof(uint16_t) * size_t(bs));
            } else if (paired && !plan.norm) {
                if constexpr (paired) {
                    block_codes_pairs<DT_PAIRED, RND, PACK, FPU>(r, 0, bs, plan.e, pow2, plan.divisor, grid, seed,
                                                                base, out);
                }
                continue;
            } else if (plan.norm) {
                if (paired) {
                    unpair_block(r, bs, natural);
                    r = natural;
                }
                block_codes<DT_FP32, RND, true, PACK_BUFFER>(r, 0, bs, plan.e, pow2, plan.divisor, grid, seed, base,
                                                            out, cbuf);
            } else {
                block_codes<DT_FP32, RND, false, PACK_BUFFER>(r, 0, bs, plan.e, pow2, plan.divisor, grid, seed, base,
                                                             out, cbuf);
            }
            if (aligned) {
                pack_block(cbuf, bs, bits, out);
            } else {
                for (int32_t j = 0; j < bs; ++j) stream.put(cbuf[j], bits);
            }
        }
    }
    if (!aligned) stream.flush();
    return clipped;
}

template <int RND>
int64_t encode_rotated_dispatch(const Format& f, int32_t dt, const void* x, int64_t length, int64_t bpr, int64_t b0,
                             int64_t b1, float tensor_scale, uint64_t seed, uint8_t* codes_out, void* scales_out,
                             uint16_t* cbuf, float* rot) {
    const int32_t bs = f.block_size, bits = f.bits;
#define MX_ROT(PACK, FPU)                                                                                       \
    return encode_rotated_range<RND, PACK, FPU>(f, dt, x, length, bpr, b0, b1, tensor_scale, seed, codes_out,     \
                                                scales_out, cbuf, rot)
    // (round-half-away and toward-zero take the general path only: fewer kernels to compile)
    if constexpr (RND == RND_RNE || RND == RND_STOCHASTIC) {
        if (bs % (2 * W) == 0 && (bits == 4 || bits == 8)) {
            if constexpr (RND == RND_RNE) {
                if (f.float_rne != 0) {
                    if (bits == 4) {
                        MX_ROT(PACK_NIBBLES, true);
                    } else {
                        MX_ROT(PACK_BYTES, true);
                    }
                }
            }
            if (bits == 4) {
                MX_ROT(PACK_NIBBLES, false);
            } else {
                MX_ROT(PACK_BYTES, false);
            }
        }
    }
    MX_ROT(PACK_BUFFER, false);
#undef MX_ROT
}

// Decode (sum) blocks [b0, b1) of a rotated format, natural layout: per block, the float32 sum of
// the parts' values over the whole block (padding included), un-rotated, then its valid elements
// stored.
template <int ODT, int UNPACK>
void decode_rotated_impl(const Format& f, int32_t nparts, const uint8_t* const* codes, const void* const* scales,
                         const float* tensor_scales, const float* table, int64_t length, int64_t bpr, int64_t b0,
                         int64_t b1, void* out, uint16_t* cbuf, float* acc, BitReader* readers) {
    const int32_t bs = f.block_size, bits = f.bits;
    const bool aligned = (int64_t(bs) * bits) % 8 == 0;
    const int64_t block_bytes = aligned ? int64_t(bs) * bits / 8 : 0;
    const bool check_inf = f.table_has_inf != 0;
    const float fmax = std::numeric_limits<float>::max();
    const RotationSigns signs(f, bpr, b0, b1, false);
    vf32 tlo = {}, thi = {};
    if constexpr (UNPACK == UNPACK_NIBBLES) {
        std::memcpy(&tlo, table, sizeof(tlo));
        std::memcpy(&thi, table + 8, sizeof(thi));
    }
    for (int32_t p = 0; p < nparts; ++p) readers[p] = BitReader{codes[p] + (b0 * bs * bits) / 8};
    BlockCursor cur(length, bpr, bs, b0);
    for (int64_t k = b0; k < b1; ++k, cur.next()) {
        for (int32_t p = 0; p < nparts; ++p) {
            const uint8_t* in = codes[p] + k * block_bytes;
            if constexpr (UNPACK == UNPACK_BUFFER) {
                if (aligned) {
                    unpack_block(in, bs, bits, cbuf);
                } else {
                    for (int32_t j = 0; j < bs; ++j) cbuf[j] = uint16_t(readers[p].get(bits));
                }
            }
            const float X = block_multiplier(scales[p], k, f, tensor_scales[p]);
            const bool no_overflow = std::fabs(X) * f.table_max <= fmax;  // (NaN X: false)
            const bool last = p == nparts - 1;
            for (int32_t j = 0; j < bs; j += W) {  // (bs < 8: one vector, lanes >= bs unused)
                const vf32 v = block_values<UNPACK>(in, cbuf, j, table, tlo, thi);
                const vf32 prod = no_overflow ? v * X : saturated_products(v, X, check_inf);
                vf32 y = p > 0 ? loadf8(acc + j) + prod : prod;  // float32 accumulation in part order
                if (last) y = stages_in_vector(y, bs);
                storef8(acc + j, y);
            }
        }
        const BlockSigns s = signs.block(cur.col);
        const int64_t off = cur.offset();
        const int32_t n = cur.valid();
        if (bs > W) {
            stages_across_vectors(acc, bs, W, bs / 4);
            const int32_t h = bs / 2;
            for (int32_t j = 0; j < h; j += W) {  // the last stage, times the signs
                const vf32 a = loadf8(acc + j), b = loadf8(acc + j + h);
                const vf32 lo = (a + b) * s.at(j), hi = (a - b) * s.at(j + h);
                if (n == bs) {
                    store8<ODT>(out, off + j, lo);
                    store8<ODT>(out, off + j + h, hi);
                } else {
                    storef8(acc + j, lo);
                    storef8(acc + j + h, hi);
                }
            }
            if (n == bs) continue;
        } else {
            storef8(acc, loadf8(acc) * s.at(0));
        }
        for (int32_t j = 0; j < n; j += W) {
            if (n - j >= W) {
                store8<ODT>(out, off + j, loadf8(acc + j));
            } else {
                store_tail<ODT>(out, off + j, loadf8(acc + j), n - j);
            }
        }
    }
}

// The float32 values of the 16 codes of a 4-bit element as four byte planes (plane b, byte c:
// byte b of the value of code c), looked up 16 codes at a time with byte shuffles.
struct NibbleTable {
#if defined(__AVX2__)
    __m128i plane[4];
#endif
    explicit NibbleTable(const float* table) {
#if defined(__AVX2__)
        alignas(16) uint8_t bytes[4][16];
        for (int code = 0; code < 16; ++code) {
            const uint32_t u = f2u(table[code]);
            for (int b = 0; b < 4; ++b) bytes[b][code] = uint8_t(u >> (8 * b));
        }
        for (int b = 0; b < 4; ++b) plane[b] = _mm_load_si128(reinterpret_cast<const __m128i*>(bytes[b]));
#else
        (void)table;
#endif
    }
};

// Element values of codes [j, j + 16) of a block (4- or 8-bit codes) in the paired layout.
template <int UNPACK>
MX_INLINE void paired_values(const uint8_t* in, int32_t j, const float* table, const NibbleTable& nt, vf32& even,
                             vf32& odd) {
    vi32 ie, io;
    if constexpr (UNPACK == UNPACK_NIBBLES) {  // byte l: code j + 2l (low nibble), j + 2l + 1 (high)
#if defined(__AVX2__)
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(in + j / 2));
        const __m128i nibble = _mm_set1_epi8(0x0F);
        // bytes 0-7: the even codes, 8-15: the odd ones
        const __m128i idx = _mm_unpacklo_epi64(_mm_and_si128(b, nibble), _mm_and_si128(_mm_srli_epi16(b, 4), nibble));
        const __m128i p0 = _mm_shuffle_epi8(nt.plane[0], idx), p1 = _mm_shuffle_epi8(nt.plane[1], idx);
        const __m128i p2 = _mm_shuffle_epi8(nt.plane[2], idx), p3 = _mm_shuffle_epi8(nt.plane[3], idx);
        const __m128i low_even = _mm_unpacklo_epi8(p0, p1), low_odd = _mm_unpackhi_epi8(p0, p1);
        const __m128i high_even = _mm_unpacklo_epi8(p2, p3), high_odd = _mm_unpackhi_epi8(p2, p3);
        even = (vf32)_mm256_set_m128i(_mm_unpackhi_epi16(low_even, high_even), _mm_unpacklo_epi16(low_even, high_even));
        odd = (vf32)_mm256_set_m128i(_mm_unpackhi_epi16(low_odd, high_odd), _mm_unpacklo_epi16(low_odd, high_odd));
        return;
#else
        vu8 bytes;
        std::memcpy(&bytes, in + j / 2, sizeof(bytes));
        const vi32 w = __builtin_convertvector(bytes, vi32);
        ie = w & 0xF;
        io = w >> 4;
#endif
    } else {  // 16-bit word l: code j + 2l (low byte), j + 2l + 1 (high byte)
        vu16 h;
        std::memcpy(&h, in + j, sizeof(h));
        const vi32 w = __builtin_convertvector(h, vi32);
        ie = w & 0xFF;
        io = w >> 8;
#if defined(__AVX2__)
        even = (vf32)_mm256_i32gather_ps(table, (__m256i)ie, 4);
        odd = (vf32)_mm256_i32gather_ps(table, (__m256i)io, 4);
        return;
#endif
    }
    (void)nt;
    for (int l = 0; l < W; ++l) {
        even[l] = table[ie[l]];
        odd[l] = table[io[l]];
    }
}

// to_bf16 / to_fp16 of values known finite and within the output type's range.
template <int ODT>
MX_INLINE vu32 to_half_in_range(vf32 y) {
    if constexpr (ODT == DT_BF16) {
        return to_bf16_in_range(y);
    } else {
#if defined(__F16C__) && defined(__AVX2__)
        return (vu32)_mm256_cvtepu16_epi32(_mm256_cvtps_ph((__m256)y, _MM_FROUND_TO_NEAREST_INT));
#else
        return to_fp16(y);
#endif
    }
}

// Elements [i, i + 16) in natural order from the paired layout, stored as ODT (IN_RANGE: every
// value is finite and within ODT's range).
template <int ODT, bool IN_RANGE>
MX_INLINE void store16_paired(void* out, int64_t i, vf32 even, vf32 odd) {
    if constexpr (ODT == DT_FP32) {
#if defined(__AVX2__)
        const __m256 lo = _mm256_unpacklo_ps((__m256)even, (__m256)odd);  // e0 o0 e1 o1 | e4 o4 e5 o5
        const __m256 hi = _mm256_unpackhi_ps((__m256)even, (__m256)odd);  // e2 o2 e3 o3 | e6 o6 e7 o7
        float* o = static_cast<float*>(out) + i;
        _mm_storeu_ps(o, _mm256_castps256_ps128(lo));
        _mm_storeu_ps(o + 4, _mm256_castps256_ps128(hi));
        _mm_storeu_ps(o + 8, _mm256_extractf128_ps(lo, 1));
        _mm_storeu_ps(o + 12, _mm256_extractf128_ps(hi, 1));
#else
        float* o = static_cast<float*>(out) + i;
        for (int l = 0; l < W; ++l) {
            o[2 * l] = even[l];
            o[2 * l + 1] = odd[l];
        }
#endif
    } else {  // word l: element 2l in the low half, 2l + 1 in the high half (little-endian)
        const vu32 e = IN_RANGE ? to_half_in_range<ODT>(even) : ODT == DT_BF16 ? to_bf16(even) : to_fp16(even);
        const vu32 o = IN_RANGE ? to_half_in_range<ODT>(odd) : ODT == DT_BF16 ? to_bf16(odd) : to_fp16(odd);
        const vu32 w = e | (o << 16);
        std::memcpy(static_cast<uint16_t*>(out) + i, &w, sizeof(w));
    }
}

// decode_rotated_impl in the paired layout, for bs = 16 * NG and 4- or 8-bit codes, in registers.
template <int ODT, int UNPACK, int NG>
void decode_rotated_paired(const Format& f, int32_t nparts, const uint8_t* const* codes, const void* const* scales,
                           const float* tensor_scales, const float* table, int64_t length, int64_t bpr, int64_t b0,
                           int64_t b1, void* out, float* acc) {
    constexpr int32_t bs = 16 * NG;
    constexpr int64_t block_bytes = UNPACK == UNPACK_NIBBLES ? bs / 2 : bs;
    const bool check_inf = f.table_has_inf != 0;
    const float fmax = std::numeric_limits<float>::max();
    const RotationSigns signs(f, bpr, b0, b1, true);
    // a bound on |output| below which it needs no saturation: the un-rotated sum is at most
    // bs * table_max * sum_p |X_p| exactly, and its float32 roundings add far less than the margin
    const double half_max = ODT == DT_BF16 ? double(u2f(0x7F7F0000u)) : 65504.0;
    const double range_limit = half_max * (1.0 - 1.0 / 4096) / (double(bs) * double(f.table_max));
    const NibbleTable nt(table);
    BlockCursor cur(length, bpr, bs, b0);
    for (int64_t k = b0; k < b1; ++k, cur.next()) {
        vf32 even[NG] = {}, odd[NG] = {};
        double sum_x = 0.0;
        for (int32_t p = 0; p < nparts; ++p) {
            const uint8_t* in = codes[p] + k * block_bytes;
            const float X = block_multiplier(scales[p], k, f, tensor_scales[p]);
            sum_x += std::fabs(double(X));
            const bool no_overflow = std::fabs(X) * f.table_max <= fmax;  // (NaN X: false)
            for (int g = 0; g < NG; ++g) {
                vf32 ve, vo;
                paired_values<UNPACK>(in, 2 * W * g, table, nt, ve, vo);
                const vf32 pe = no_overflow ? ve * X : saturated_products(ve, X, check_inf);
                const vf32 po = no_overflow ? vo * X : saturated_products(vo, X, check_inf);
                even[g] = p > 0 ? even[g] + pe : pe;  // float32 accumulation in part order
                odd[g] = p > 0 ? odd[g] + po : po;
            }
        }
        for (int g = 0; g < NG; ++g) stages_in_pair(even[g], odd[g]);
        stages_across_registers<NG>(even);
        stages_across_registers<NG>(odd);
        const BlockSigns s = signs.block(cur.col);
        const int64_t off = cur.offset();
        const int32_t n = cur.valid();
        for (int g = 0; g < NG; ++g) {
            vf32 se, so;
            s.pair(2 * W * g, se, so);
            even[g] = even[g] * se;
            odd[g] = odd[g] * so;
        }
        if (n == bs) {
            // no element decodes to +-inf, no scale is NaN, and the bound holds (NaN sum_x: false)
            if (ODT != DT_FP32 && !check_inf && sum_x <= range_limit) {
                for (int g = 0; g < NG; ++g) store16_paired<ODT, true>(out, off + 2 * W * g, even[g], odd[g]);
            } else {
                for (int g = 0; g < NG; ++g) store16_paired<ODT, false>(out, off + 2 * W * g, even[g], odd[g]);
            }
            continue;
        }
        for (int g = 0; g < NG; ++g) {
            storef8(acc + 2 * W * g, even[g]);
            storef8(acc + 2 * W * g + W, odd[g]);
        }
        float natural[bs + W];
        unpair_block(acc, bs, natural);
        for (int32_t j = 0; j < n; j += W) {
            if (n - j >= W) {
                store8<ODT>(out, off + j, loadf8(natural + j));
            } else {
                store_tail<ODT>(out, off + j, loadf8(natural + j), n - j);
            }
        }
    }
}

template <int ODT>
void decode_rotated_range(const Format& f, int32_t nparts, const uint8_t* const* codes, const void* const* scales,
                          const float* tensor_scales, const float* table, int64_t length, int64_t bpr, int64_t b0,
                          int64_t b1, void* out, uint16_t* cbuf, float* acc, BitReader* readers) {
    const int32_t bs = f.block_size, bits = f.bits;
#define MX_DEC_PAIRED(UNPACK, NG)                                                                             \
    decode_rotated_paired<ODT, UNPACK, NG>(f, nparts, codes, scales, tensor_scales, table, length, bpr, b0, b1, \
                                           out, acc)
#define MX_DEC_PAIRED_BS(UNPACK)               \
    switch (bs) {                              \
        case 16: MX_DEC_PAIRED(UNPACK, 1); return; \
        case 32: MX_DEC_PAIRED(UNPACK, 2); return; \
        case 64: MX_DEC_PAIRED(UNPACK, 4); return; \
        default: break;                        \
    }
    if (bits == 4) MX_DEC_PAIRED_BS(UNPACK_NIBBLES);
    if (bits == 8) MX_DEC_PAIRED_BS(UNPACK_BYTES);
#undef MX_DEC_PAIRED_BS
#undef MX_DEC_PAIRED
#define MX_DEC_ROT(UNPACK)                                                                                          \
    decode_rotated_impl<ODT, UNPACK>(f, nparts, codes, scales, tensor_scales, table, length, bpr, b0, b1, out, cbuf, \
                                     acc, readers)
    if (bs % W == 0 && bits == 4) {
        MX_DEC_ROT(UNPACK_NIBBLES);
    } else if (bs % W == 0 && bits == 8) {
        MX_DEC_ROT(UNPACK_BYTES);
    } else {
        MX_DEC_ROT(UNPACK_BUFFER);
    }
#undef MX_DEC_ROT
}


// == Fast kernels (AVX2 + F16C builds) ============================================================
// The formats that carry real traffic (MXFP4/6/8, MXINT8, NVFP4 and their relatives) at memory
// speed: whole blocks of 16k elements back to back (no row padding), 4-, 6- or 8-bit codes. The
// general kernels above spend most of their time per block (a horizontal amax, a scalar scale, a
// gather per decoded element, a pass per part of a sum); these work on 8 blocks at once where a
// block needs scalar work, and on 16 or 32 elements at once otherwise:
//
// encode (round to nearest even): the amax of 8 blocks in one transposing reduction, their 8
//   scales in vector integer (E8M0) or float64 (float scale types) arithmetic, then every block's
//   codes with the FPU rounding of element_codes_rne_fpu (floats) or a float -> int conversion
//   (ints: k = rne(|x| * 2**-e * 2**(bits-2)), saturated), packed straight from 32-code byte
//   vectors: 8-bit direct, 4-bit by a byte multiply-add, 6-bit as 4 codes in 3 bytes (a multiply-add
//   into 24-bit words, then a byte shuffle).
// decode: element values from the codes without a gather: 4- and 6-bit codes look up the high
//   16 bits of their float32 value (every value of a <= 8-bit element is a bfloat16) with byte
//   shuffles; 8-bit floats build them arithmetically (a shift and an add; subnormals from a small
//   shuffle table), 8-bit ints convert. Products and part sums in float32 registers, part after
//   part in list order, once per output vector (decode_sum reads its output never). A bfloat16
//   output of one part with a power-of-two scale that keeps every product a normal bfloat16 is
//   the value's bits plus the scale exponent (exact), no float arithmetic at all.
//
// Every block whose numbers leave the easy range (a NaN scale, products that need saturating, NaN
// or inf codes, subnormal products) is decoded by the general kernel instead, block by block; every
// choice made here is exact for the blocks it takes (tests/kernels/test_cpu_backend.py checks
// every path against the reference, bit for bit).
#if defined(__AVX2__) && defined(__F16C__)
#define MX_FAST_KERNELS 1

MX_INLINE __m256i lddqu256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
MX_INLINE __m128i lddqu128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// -- encode: amax of 8 blocks ---------------------------------------------------------------------
// |x| bit patterns of one block, maxed down to one vector (16-bit inputs: 16 lanes; fp32: 8 lanes).
template <int DT>
MX_INLINE __m256i absmax_lanes(const void* x, int64_t off, int32_t bs) {
    __m256i m = _mm256_setzero_si256();
    if constexpr (DT == DT_FP32) {
        const __m256i abs = _mm256_set1_epi32(0x7FFFFFFF);
        const float* p = static_cast<const float*>(x) + off;
        for (int32_t j = 0; j < bs; j += 8) m = _mm256_max_epi32(m, _mm256_and_si256(lddqu256(p + j), abs));
    } else {
        const __m256i abs = _mm256_set1_epi16(0x7FFF);
        const uint16_t* p = static_cast<const uint16_t*>(x) + off;
        for (int32_t j = 0; j < bs; j += 16) m = _mm256_max_epu16(m, _mm256_and_si256(lddqu256(p + j), abs));
    }
    return m;
}

// Word i: the max of the 16 words of v[i] (a transposing reduction: 23 instructions for 8 blocks).
MX_INLINE __m128i reduce8_u16(const __m256i* v) {
    __m256i a[4], b[2];
    for (int i = 0; i < 4; ++i)  // per 128-bit lane, words alternate v[2i], v[2i+1]
        a[i] = _mm256_max_epu16(_mm256_unpacklo_epi16(v[2 * i], v[2 * i + 1]), _mm256_unpackhi_epi16(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; ++i)  // words v[4i] .. v[4i+3], twice per lane
        b[i] = _mm256_max_epu16(_mm256_unpacklo_epi32(a[2 * i], a[2 * i + 1]), _mm256_unpackhi_epi32(a[2 * i], a[2 * i + 1]));
    const __m256i c = _mm256_max_epu16(_mm256_unpacklo_epi64(b[0], b[1]), _mm256_unpackhi_epi64(b[0], b[1]));
    return _mm_max_epu16(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
}

// Lane i: the max of the 8 (non-negative) lanes of v[i].
MX_INLINE __m256i reduce8_u32(const __m256i* v) {
    __m256i a[4], b[2];
    for (int i = 0; i < 4; ++i)
        a[i] = _mm256_max_epi32(_mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]), _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; ++i)
        b[i] = _mm256_max_epi32(_mm256_unpacklo_epi64(a[2 * i], a[2 * i + 1]), _mm256_unpackhi_epi64(a[2 * i], a[2 * i + 1]));
    return _mm256_max_epi32(_mm256_permute2x128_si256(b[0], b[1], 0x20), _mm256_permute2x128_si256(b[0], b[1], 0x31));
}

// float32 bits of the amax over all elements of blocks off, off + bs, ... (n <= 8 of them; lanes
// >= n are 0); >= 0x7F800000 where a block holds a NaN or an inf.
template <int DT>
MX_INLINE __m256i amax8(const void* x, int64_t off, int32_t bs, int32_t n) {
    __m256i v[8];
    if (DT != DT_FP32 && bs == 16 && n == 8) {  // NVFP4's blocks: one vector each, no loop
        const __m256i abs = _mm256_set1_epi16(0x7FFF);
        const uint16_t* p = static_cast<const uint16_t*>(x) + off;
        for (int i = 0; i < 8; ++i) v[i] = _mm256_and_si256(lddqu256(p + 16 * i), abs);
    } else {
        for (int i = 0; i < 8; ++i) v[i] = i < n ? absmax_lanes<DT>(x, off + int64_t(i) * bs, bs) : _mm256_setzero_si256();
    }
    if constexpr (DT == DT_FP32) {
        return reduce8_u32(v);
    } else {
        const __m128i h = reduce8_u16(v);
        const __m256i w = _mm256_cvtepu16_epi32(h);
        if constexpr (DT == DT_BF16) return _mm256_slli_epi32(w, 16);
        const __m256i f = _mm256_castps_si256(_mm256_cvtph_ps(h));  // exact, subnormals too
        return _mm256_blendv_epi8(f, _mm256_set1_epi32(0x7F800000), _mm256_cmpgt_epi32(w, _mm256_set1_epi32(0x7BFF)));
    }
}

// -- encode: the scales of 8 blocks -------------------------------------------------------------
// What the element loop needs per block: the multiplier (E8M0: 2**-e) or divisor (float scale
// types: X), and whether the block's codes are all 0 (NaN blocks; float scales: X not usable).
struct ChunkPlans {
    static constexpr int MAX_BLOCKS = 64;
    alignas(32) float m[MAX_BLOCKS];
    alignas(32) int32_t code[MAX_BLOCKS];  // the stored scale (its bit pattern)
    uint64_t zero = 0;                      // bit i: block i's codes are all 0
    int64_t clipped = 0;                    // blocks that clipped, over every chunk planned so far
};

MX_INLINE int popcount32(uint32_t v) { return __builtin_popcount(v); }

// Byte 0 of every 32-bit lane, in order, as the low 8 bytes.
MX_INLINE __m128i low_bytes8(__m256i v) {
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i b = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, pick), _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
    return _mm256_castsi256_si128(b);
}

// e8m0_exponent of 8 amaxes (float32 bits), vectorised.
MX_INLINE __m256i e8m0_exponents(__m256i amax, const Format& f) {
    // the scale modes as one test: e = floor(log2 amax) - emax, plus 1 where frac > threshold
    const int32_t threshold = f.scale_mode == MODE_FLOOR  ? INT32_MAX
                              : f.scale_mode == MODE_CEIL ? 0
                              : f.scale_mode == MODE_RCEIL ? f.max_normal_frac
                                                           : f.even_frac - 1;
    const __m256i zero = _mm256_setzero_si256();
    const __m256i ef = _mm256_srli_epi32(amax, 23);
    const __m256i sub = _mm256_cmpeq_epi32(ef, zero);
    // a subnormal amax (< 2**23 as an integer) normalised by an exact int -> float conversion
    const __m256i fb = _mm256_castps_si256(_mm256_cvtepi32_ps(amax));
    const __m256i flog = _mm256_blendv_epi8(_mm256_sub_epi32(ef, _mm256_set1_epi32(127)),
                                            _mm256_sub_epi32(_mm256_srli_epi32(fb, 23), _mm256_set1_epi32(276)), sub);
    const __m256i frac = _mm256_and_si256(_mm256_blendv_epi8(amax, fb, sub), _mm256_set1_epi32(0x7FFFFF));
    __m256i e = _mm256_sub_epi32(_mm256_sub_epi32(flog, _mm256_set1_epi32(f.emax)),
                                 _mm256_cmpgt_epi32(frac, _mm256_set1_epi32(threshold)));
    e = _mm256_blendv_epi8(e, _mm256_set1_epi32(-127), _mm256_cmpeq_epi32(amax, zero));
    return _mm256_max_epi32(_mm256_min_epi32(e, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
}

// Plans of blocks [i0, i0 + n) of a chunk (n <= 8) from their amaxes; stores their E8M0 scales.
MX_INLINE void plan8_e8m0(const Format& f, __m256i amax, int32_t i0, int32_t n, uint8_t* scale_out, ChunkPlans& plans) {
    const __m256i nan = _mm256_cmpgt_epi32(amax, _mm256_set1_epi32(0x7F7FFFFF));
    const __m256i e = e8m0_exponents(amax, f);
    // e8m0_clipped: 0 < amax < flush_below, or saturate_above < amax (finite); lanes >= n hold 0
    const __m256i flushed = _mm256_and_si256(_mm256_cmpgt_epi32(amax, _mm256_setzero_si256()),
                                             _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(f.e8m0_flush_below)), amax));
    const __m256i saturated = _mm256_andnot_si256(nan, _mm256_cmpgt_epi32(amax, _mm256_set1_epi32(int32_t(f.e8m0_saturate_above))));
    plans.clipped += popcount32(uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_or_si256(flushed, saturated)))));
    const __m256i code = _mm256_blendv_epi8(_mm256_add_epi32(e, _mm256_set1_epi32(127)),
                                            _mm256_set1_epi32(int32_t(f.scale_nan)), nan);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(plans.code + i0), code);
    const __m128i bytes = low_bytes8(code);
    if (n == 8) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(scale_out), bytes);
    } else {
        alignas(16) uint8_t tmp[16];
        _mm_store_si128(reinterpret_cast<__m128i*>(tmp), bytes);
        std::memcpy(scale_out, tmp, size_t(n));
    }
    // 2**-e, exact (2**-127 a subnormal)
    const __m256i mul = _mm256_blendv_epi8(_mm256_slli_epi32(_mm256_sub_epi32(_mm256_set1_epi32(127), e), 23),
                                           _mm256_set1_epi32(0x00400000), _mm256_cmpeq_epi32(e, _mm256_set1_epi32(127)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(plans.m + i0), mul);
    const uint64_t z = uint64_t(uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(nan)))) & ((uint64_t(1) << n) - 1);
    plans.zero |= z << i0;
}

// Constants of the float-scale planner (scale grid and tensor scale).
struct FloatScalePlanner {
    __m256d denom, maxv, tensor, min_step, two_emin, to_steps, magic;
    __m256i shift_base, code_base, one;
    __m128i mant_shift;
    bool apply_tensor;
    FloatScalePlanner(const Format& f, float tensor_scale) {
        const int32_t mbits = f.scale_mbits, emin = f.scale_emin;
        denom = _mm256_set1_pd(f.max_normal * (f.tensor_scale ? double(tensor_scale) : 1.0));
        maxv = _mm256_set1_pd(f.scale_max);
        tensor = _mm256_set1_pd(double(tensor_scale));
        apply_tensor = f.tensor_scale != 0;
        min_step = _mm256_set1_pd(pow2d(emin - mbits));  // the grid's smallest positive value
        two_emin = _mm256_set1_pd(pow2d(emin));
        to_steps = _mm256_set1_pd(pow2d(mbits - emin));
        magic = _mm256_set1_pd(4503599627370496.0);  // 2**52
        shift_base = _mm256_set1_epi64x(52 - mbits);
        code_base = _mm256_set1_epi64x(int64_t(1022 + emin) << mbits);
        one = _mm256_set1_epi64x(1);
        mant_shift = _mm_cvtsi32_si128(52 - mbits);
    }
};

// plan_from_amax of 4 blocks (float scale types), vectorised in float64: the block scale is
// round_up_grid(amax / denom), computed on the quotient's bits (clamped below to one grid step,
// its bit pattern rounded up to a multiple of the grid spacing: an exact ceiling, carries into
// the next binade included), its storage pattern is its grid code, and the divisor is
// X = fp32(scale * tensor scale). Returns the stored codes (64-bit lanes); writes the divisors (1
// where unused) and zero flags of blocks i0 .. i0 + 3.
MX_INLINE __m256i plan4_float(const FloatScalePlanner& c, __m128i amax, int32_t i0, ChunkPlans& plans,
                              const Format& f) {
    const __m128i nan = _mm_cmpgt_epi32(amax, _mm_set1_epi32(0x7F7FFFFF));
    const __m128i positive = _mm_andnot_si128(nan, _mm_cmpgt_epi32(amax, _mm_setzero_si128()));
    const __m256d a = _mm256_cvtps_pd(_mm_blendv_ps(_mm_set1_ps(1.0f), _mm_castsi128_ps(amax), _mm_castsi128_ps(positive)));
    const __m256d qd = _mm256_div_pd(a, c.denom);
    const __m256i q = _mm256_castpd_si256(_mm256_max_pd(qd, c.min_step));
    // spacing of the grid at q: 2**(max(ex, emin) - mbits), i.e. 2**shift units of q's bits with
    // shift = 52 - mbits + max(emin - ex, 0) <= 52 (a 32-bit max: the operands are small)
    const __m256i ex = _mm256_sub_epi64(_mm256_srli_epi64(q, 52), _mm256_set1_epi64x(1023));
    const __m256i shift = _mm256_max_epi32(_mm256_add_epi64(c.shift_base, _mm256_sub_epi64(_mm256_set1_epi64x(f.scale_emin), ex)),
                                           c.shift_base);
    const __m256i mask = _mm256_sub_epi64(_mm256_sllv_epi64(c.one, shift), c.one);
    const __m256d value = _mm256_min_pd(_mm256_castsi256_pd(_mm256_andnot_si256(mask, _mm256_add_epi64(q, mask))), c.maxv);
    // grid code: from the bits for a normal value, value / step below 2**emin
    const __m256i normal_code = _mm256_sub_epi64(_mm256_srl_epi64(_mm256_castpd_si256(value), c.mant_shift), c.code_base);
    const __m256i sub_code = _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(_mm256_mul_pd(value, c.to_steps), c.magic)),
                                              _mm256_castpd_si256(c.magic));
    __m256i code = _mm256_blendv_epi8(normal_code, sub_code, _mm256_castpd_si256(_mm256_cmp_pd(value, c.two_emin, _CMP_LT_OQ)));
    const __m128 effective = _mm256_cvtpd_ps(c.apply_tensor ? _mm256_mul_pd(value, c.tensor) : value);
    const __m128i usable = _mm_and_si128(positive, _mm_castps_si128(_mm_cmpgt_ps(effective, _mm_setzero_ps())));
    // clipped (plan_from_amax): q below the smallest normal scale or above the largest, or X subnormal
    const int out_of_grid = _mm256_movemask_pd(_mm256_or_pd(_mm256_cmp_pd(qd, c.two_emin, _CMP_LT_OQ),
                                                            _mm256_cmp_pd(qd, c.maxv, _CMP_GT_OQ)));
    const int tiny = _mm_movemask_ps(_mm_cmplt_ps(effective, _mm_set1_ps(FP32_MIN_NORMAL)));
    plans.clipped += popcount32(uint32_t((out_of_grid | tiny) & _mm_movemask_ps(_mm_castsi128_ps(positive))));
    _mm_storeu_ps(plans.m + i0, _mm_blendv_ps(_mm_set1_ps(1.0f), effective, _mm_castsi128_ps(usable)));
    plans.zero |= uint64_t(uint32_t(~_mm_movemask_ps(_mm_castsi128_ps(usable)) & 0xF)) << i0;
    code = _mm256_and_si256(code, _mm256_cvtepi32_epi64(positive));  // all-zero blocks store scale 0
    return _mm256_blendv_epi8(code, _mm256_set1_epi64x(f.scale_nan), _mm256_cvtepi32_epi64(nan));
}

// The same plans in float32, 8 blocks at once, where that is provably the same: the quotient is
// estimated as amax * fl32(1 / denom) (relative error below 2**-23 + 2**-47, i.e. within 2 ulps)
// and rounded up by its bits (the grid spacing is a fixed number of its bits where it is at least
// 2**emin); that is the exact block scale unless the estimate lies within 3 ulps of a grid point,
// or below 2**emin, or out of range -- then nothing is written and the caller runs plan8_float.
// (scale grids of at most 10 mantissa bits: E4M3, fp16, bf16)
struct FloatScalePlanner32 {
    bool usable = false;
    __m256 inv, tensor, maxv, two_emin, limit;
    __m256i mask, code_base, near_hi;
    __m128i mant_shift;
    FloatScalePlanner32(const Format& f, float tensor_scale) {
        const double denom = f.max_normal * (f.tensor_scale ? double(tensor_scale) : 1.0);
        const float inv32 = float(1.0 / denom);
        const int32_t mbits = f.scale_mbits, emin = f.scale_emin;
        usable = mbits <= 10 && std::isnormal(inv32) && inv32 < 0x1p100f && inv32 > 0x1p-100f;
        inv = _mm256_set1_ps(inv32);
        tensor = _mm256_set1_ps(f.tensor_scale ? tensor_scale : 1.0f);
        maxv = _mm256_set1_ps(float(f.scale_max));
        two_emin = _mm256_set1_ps(std::ldexp(1.0f, emin));
        limit = _mm256_set1_ps(0x1p120f);
        mask = _mm256_set1_epi32((1 << (23 - mbits)) - 1);
        near_hi = _mm256_set1_epi32((1 << (23 - mbits)) - 1 - 3);
        code_base = _mm256_set1_epi32((126 + emin) << mbits);
        mant_shift = _mm_cvtsi32_si128(23 - mbits);
    }
};

MX_INLINE bool plan8_float32(const Format& f, const FloatScalePlanner32& c, __m256i amax, int32_t i0, int32_t n,
                             int64_t k0, void* scales_out, ChunkPlans& plans) {
    const __m256i nan = _mm256_cmpgt_epi32(amax, _mm256_set1_epi32(0x7F7FFFFF));
    const __m256i positive = _mm256_andnot_si256(nan, _mm256_cmpgt_epi32(amax, _mm256_setzero_si256()));
    const __m256 q = _mm256_mul_ps(_mm256_blendv_ps(_mm256_set1_ps(1.0f), _mm256_castsi256_ps(amax), _mm256_castsi256_ps(positive)), c.inv);
    const __m256i qb = _mm256_castps_si256(q);
    const __m256i low = _mm256_and_si256(qb, c.mask);
    const __m256i near = _mm256_or_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(4), low), _mm256_cmpgt_epi32(low, c.near_hi));
    const __m256i out_of_range = _mm256_castps_si256(
        _mm256_or_ps(_mm256_cmp_ps(q, c.two_emin, _CMP_LT_OQ), _mm256_cmp_ps(q, c.limit, _CMP_GE_OQ)));
    if (!_mm256_testz_si256(_mm256_or_si256(near, out_of_range), positive)) return false;
    const __m256 value = _mm256_min_ps(_mm256_castsi256_ps(_mm256_andnot_si256(c.mask, _mm256_add_epi32(qb, c.mask))), c.maxv);
    __m256i code = _mm256_sub_epi32(_mm256_srl_epi32(_mm256_castps_si256(value), c.mant_shift), c.code_base);
    const __m256 effective = _mm256_mul_ps(value, c.tensor);  // one float32 rounding of the exact product
    const __m256i usable = _mm256_and_si256(positive, _mm256_castps_si256(_mm256_cmp_ps(effective, _mm256_setzero_ps(), _CMP_GT_OQ)));
    // clipped (plan_from_amax): q >= 2**emin here; q > scale_max is decided exactly, as scale_max
    // is a grid point and an estimate near one took the exact planner above; or X subnormal
    const __m256 clip = _mm256_or_ps(_mm256_cmp_ps(q, c.maxv, _CMP_GT_OQ),
                                     _mm256_cmp_ps(effective, _mm256_set1_ps(FP32_MIN_NORMAL), _CMP_LT_OQ));
    plans.clipped += popcount32(uint32_t(_mm256_movemask_ps(_mm256_and_ps(clip, _mm256_castsi256_ps(positive)))));
    _mm256_storeu_ps(plans.m + i0, _mm256_blendv_ps(_mm256_set1_ps(1.0f), effective, _mm256_castsi256_ps(usable)));
    plans.zero |= (uint64_t(uint32_t(~_mm256_movemask_ps(_mm256_castsi256_ps(usable)) & 0xFF)) << i0) & (~uint64_t(0) >> (64 - (i0 + n)));
    code = _mm256_blendv_epi8(_mm256_and_si256(code, positive), _mm256_set1_epi32(int32_t(f.scale_nan)), nan);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(plans.code + i0), code);
    if (f.scale_type == SC_E4M3 && n == 8) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(static_cast<uint8_t*>(scales_out) + k0), low_bytes8(code));
        return true;
    }
    alignas(32) uint32_t tmp[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), code);
    for (int32_t i = 0; i < n; ++i) store_scale(scales_out, k0 + i, f.scale_type, tmp[i]);
    return true;
}

MX_INLINE void plan8_float(const Format& f, const FloatScalePlanner& c, __m256i amax, int32_t i0, int32_t n,
                           int64_t k0, void* scales_out, ChunkPlans& plans) {
    const __m256i lo = plan4_float(c, _mm256_castsi256_si128(amax), i0, plans, f);
    const __m256i hi = plan4_float(c, _mm256_extracti128_si256(amax, 1), i0 + 4, plans, f);
    plans.zero &= ~uint64_t(0) >> (64 - (i0 + n));  // not the lanes past the last block
    // the 8 codes as 32-bit lanes, in order
    const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const __m256i codes = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(lo, idx), _mm256_permutevar8x32_epi32(hi, idx), 0xF0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(plans.code + i0), codes);
    if (f.scale_type == SC_E4M3 && n == 8) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(static_cast<uint8_t*>(scales_out) + k0), low_bytes8(codes));
        return;
    }
    alignas(32) uint32_t tmp[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), codes);
    for (int32_t i = 0; i < n; ++i) store_scale(scales_out, k0 + i, f.scale_type, tmp[i]);
}

// -- encode: element codes ---------------------------------------------------------------------
struct ElementConsts {
    __m256i abs, expmask, emin_bits, cb_add, k, max_code, max_code8;
    __m128i shift;  // 23 - mbits
    __m256 step_inv, kmax;
    explicit ElementConsts(const Format& f) {
        abs = _mm256_set1_epi32(0x7FFFFFFF);
        expmask = _mm256_set1_epi32(0x7F800000);
        emin_bits = _mm256_set1_epi32((f.grid_emin + 127) << 23);
        cb_add = _mm256_set1_epi32((23 - f.grid_mbits) << 23);
        k = _mm256_set1_epi32((150 - f.grid_mbits + f.grid_emin) << f.grid_mbits);
        max_code = _mm256_set1_epi32(f.max_code);
        max_code8 = _mm256_set1_epi8(char(f.max_code));
        shift = _mm_cvtsi32_si128(23 - f.grid_mbits);
        step_inv = _mm256_set1_ps(std::ldexp(1.0f, f.bits - 2));
        kmax = _mm256_set1_ps(float(f.max_code));
    }
};

// Magnitude codes of 8 elements (float32 bits u; ABS: already without their sign) scaled by m
// (E8M0: times 2**-e; else divided by X). BYTE_CLAMP: float codes are left above max_code, for
// codes32 to clamp the packed bytes (the packing saturates, and a saturated code is still
// >= max_code) -- fewer instructions for 8-bit codes; for the others the compiler then keeps
// fewer constants in registers, which costs more than it saves.
template <bool IS_INT, bool DIV, bool ABS, bool BYTE_CLAMP>
MX_INLINE __m256i magnitude_codes(__m256i u, __m256 m, const ElementConsts& c) {
    const __m256 a = _mm256_castsi256_ps(ABS ? u : _mm256_and_si256(u, c.abs));
    const __m256 v = DIV ? _mm256_div_ps(a, m) : _mm256_mul_ps(a, m);
    if constexpr (IS_INT) {
        // k = rne(v * 2**(bits-2)) (the product is exact), at most kmax: clamping first gives the
        // same k and keeps the conversion in range
        return _mm256_cvtps_epi32(_mm256_min_ps(_mm256_mul_ps(v, c.step_inv), c.kmax));
    } else {  // element_codes_rne_fpu
        const __m256i cb = _mm256_add_epi32(_mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(v), c.expmask), c.emin_bits),
                                            c.cb_add);
        const __m256i ub = _mm256_castps_si256(_mm256_add_ps(v, _mm256_castsi256_ps(cb)));
        const __m256i code = _mm256_add_epi32(_mm256_srl_epi32(cb, c.shift), _mm256_sub_epi32(ub, c.k));
        return BYTE_CLAMP ? _mm256_sub_epi32(code, cb) : _mm256_min_epi32(_mm256_sub_epi32(code, cb), c.max_code);
    }
}

// Codes of elements [off, off + 32) (HALF: [off, off + 16)) as 32 bytes in element order, with
// their signs: m_lo scales the first 16 elements, m_hi the next 16.
template <int DT, int BITS, bool IS_INT, bool DIV, bool HALF>
MX_INLINE __m256i codes32(const void* x, int64_t off, __m256 m_lo, __m256 m_hi, const ElementConsts& c) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i u[4], s;
    if constexpr (DT == DT_BF16) {
        const uint16_t* p = static_cast<const uint16_t*>(x) + off;
        const __m256i a = lddqu256(p), b = HALF ? zero : lddqu256(p + 16);
        const __m256i abs16 = _mm256_set1_epi16(0x7FFF);
        const __m256i aa = _mm256_and_si256(a, abs16), ab = _mm256_and_si256(b, abs16);
        // per 128-bit lane: u0 = elements 0-3 | 8-11, u1 = 4-7 | 12-15 (packus_epi32 restores the order)
        u[0] = _mm256_unpacklo_epi16(zero, aa);
        u[1] = _mm256_unpackhi_epi16(zero, aa);
        u[2] = _mm256_unpacklo_epi16(zero, ab);
        u[3] = _mm256_unpackhi_epi16(zero, ab);
        s = _mm256_packs_epi16(a, b);  // sign bytes, in the order the codes are packed below
    } else {
        if constexpr (DT == DT_FP32) {
            const float* p = static_cast<const float*>(x) + off;
            u[0] = lddqu256(p);
            u[1] = lddqu256(p + 8);
            u[2] = HALF ? zero : lddqu256(p + 16);
            u[3] = HALF ? zero : lddqu256(p + 24);
        } else {
            const uint16_t* p = static_cast<const uint16_t*>(x) + off;
            const __m256i a = lddqu256(p), b = HALF ? zero : lddqu256(p + 16);
            u[0] = _mm256_castps_si256(_mm256_cvtph_ps(_mm256_castsi256_si128(a)));
            u[1] = _mm256_castps_si256(_mm256_cvtph_ps(_mm256_extracti128_si256(a, 1)));
            u[2] = _mm256_castps_si256(_mm256_cvtph_ps(_mm256_castsi256_si128(b)));
            u[3] = _mm256_castps_si256(_mm256_cvtph_ps(_mm256_extracti128_si256(b, 1)));
        }
        s = _mm256_packs_epi16(_mm256_packs_epi32(u[0], u[1]), _mm256_packs_epi32(u[2], u[3]));
    }
    constexpr bool ABS = DT == DT_BF16;
    const __m256i k0 = magnitude_codes<IS_INT, DIV, ABS, BITS == 8>(u[0], m_lo, c), k1 = magnitude_codes<IS_INT, DIV, ABS, BITS == 8>(u[1], m_lo, c);
    __m256i k2 = zero, k3 = zero;
    if constexpr (!HALF) {
        k2 = magnitude_codes<IS_INT, DIV, ABS, BITS == 8>(u[2], m_hi, c);
        k3 = magnitude_codes<IS_INT, DIV, ABS, BITS == 8>(u[3], m_hi, c);
    }
    __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(k0, k1), _mm256_packus_epi32(k2, k3));
    if constexpr (!IS_INT && BITS == 8) b = _mm256_min_epu8(b, c.max_code8);  // BYTE_CLAMP (max_code < 255)
    if constexpr (IS_INT) {  // two's complement of the magnitude where the input is negative
        b = _mm256_sign_epi8(b, _mm256_or_si256(s, _mm256_set1_epi8(1)));
        if constexpr (BITS < 8) b = _mm256_and_si256(b, _mm256_set1_epi8(char((1 << BITS) - 1)));
    } else {  // the sign bit where the code is not 0 (-0 and negatives that round to 0 are +0)
        const __m256i sign = BITS == 8 ? _mm256_and_si256(s, _mm256_set1_epi8(char(0x80)))
                                       : _mm256_and_si256(_mm256_srli_epi16(s, 8 - BITS), _mm256_set1_epi8(char(1 << (BITS - 1))));
        b = _mm256_or_si256(b, _mm256_andnot_si256(_mm256_cmpeq_epi8(b, zero), sign));
    }
    if constexpr (DT == DT_BF16) {  // bytes were elements 0-7, 16-23 | 8-15, 24-31
        return _mm256_permute4x64_epi64(b, 0xD8);
    } else {  // dwords were elements 0-3, 8-11, 16-19, 24-27 | 4-7, 12-15, 20-23, 28-31
        return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    }
}

// Pack 32 (HALF: 16) byte codes in element order into BITS-bit codes at out.
template <int BITS, bool HALF>
MX_INLINE void store_packed(uint8_t* out, __m256i b) {
    if constexpr (BITS == 8) {
        if (HALF) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(b));
        } else {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), b);
        }
    } else if constexpr (BITS == 4) {
        const __m256i w = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x1001));  // code 2i + 16 * code 2i+1
        const __m256i p = _mm256_packus_epi16(w, w);
        if (HALF) {
            _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(p));
        } else {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(_mm256_permute4x64_epi64(p, 0x08)));
        }
    } else {  // 6: 4 codes in 3 bytes (LSB first)
        const __m256i w = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x4001));             // c0 + 64 c1
        const __m256i d = _mm256_madd_epi16(w, _mm256_set1_epi32(0x10000001));             // + 4096 (c2 + 64 c3)
        const __m256i t = _mm256_shuffle_epi8(d, _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1,
                                                                   0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1));
        if (HALF) {
            const __m128i lo = _mm256_castsi256_si128(t);
            _mm_storel_epi64(reinterpret_cast<__m128i*>(out), lo);
            const uint32_t tail = uint32_t(_mm_extract_epi32(lo, 2));
            std::memcpy(out + 8, &tail, 4);
        } else {
            const __m256i packed = _mm256_permutevar8x32_epi32(t, _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(packed));
            _mm_storel_epi64(reinterpret_cast<__m128i*>(out + 16), _mm256_extracti128_si256(packed, 1));
        }
    }
}

// Elements [off, off + 32) (HALF: 16) of one or two blocks: codes stored at out. zero_lo / zero_hi:
// the first / second 16 elements belong to a block whose codes are all 0.
template <int DT, int BITS, bool IS_INT, bool DIV, bool HALF>
MX_INLINE void encode_step(const void* x, int64_t off, float m_lo, float m_hi, bool zero_lo, bool zero_hi,
                           const ElementConsts& c, uint8_t* out) {
    __m256i b = codes32<DT, BITS, IS_INT, DIV, HALF>(x, off, _mm256_set1_ps(m_lo), _mm256_set1_ps(m_hi), c);
    if (__builtin_expect(zero_lo || zero_hi, 0)) {
        b = _mm256_and_si256(b, _mm256_set_m128i(_mm_set1_epi8(zero_hi ? 0 : -1), _mm_set1_epi8(zero_lo ? 0 : -1)));
    }
    store_packed<BITS, HALF>(out, b);
}

// -- encode: 4-bit codes of bfloat16 inputs by comparisons ---------------------------------------
// A 4-bit element has 8 magnitudes, so its code is the number of the 7 rounding thresholds between
// them that |x| passes. For a power-of-two scale 2**e the thresholds are the midpoints times 2**e,
// exact bfloat16 values (their exponent plus e), and |x| passes one iff its bit pattern is greater
// (or, where the tie rounds up, greater or equal): 16 elements per integer comparison, subnormal
// inputs included, no float arithmetic. For E4M3 block scales (NVFP4) the element is the float32
// quotient fl(|x| / X); fl(|x| / X) passes a midpoint t iff |x| / X passes t +- half an ulp of t,
// i.e. iff |x| passes that bound times X (exact in float64), rounded to bfloat16 in the right
// direction -- one set of 7 thresholds per scale code, computed once per call (there are 127).
// Each threshold is stored twice in a 32-bit word (dup16): a broadcast of a dword from memory is a
// plain load, of a word it costs a shuffle too (14 per 32 elements).
MX_INLINE int32_t dup16(int32_t t) { return int32_t((uint32_t(t) & 0xFFFFu) * 0x10001u); }

struct Thresholds4 {
    static constexpr int N = 7;
    bool usable = false;
    // E8M0: the thresholds of block scale code c are base + ((c - 127) << 7), for c in [c_lo, c_hi]
    alignas(32) int32_t base[8] = {};
    int32_t c_lo = 1, c_hi = 0;
    // E4M3: the thresholds of scale code c, where valid[c]
    alignas(32) int32_t table[128][8];
    bool valid[128] = {};

    Thresholds4(const Format& f, float tensor_scale, int64_t nblocks) {
        if (f.bits != 4 || f.max_code != 7) return;
        const bool e8m0 = f.scale_type == SC_E8M0;
        // the tables cost about as much as a few hundred blocks
        if (!e8m0 && (f.scale_type != SC_E4M3 || nblocks < 512)) return;
        const Grid grid{f.grid_mbits, f.grid_emin, f.max_code, f.bits, f.is_int};
        double mid[N];
        bool up[N];  // a value exactly at the midpoint rounds up (to the even neighbour)
        for (int i = 0; i < N; ++i) {
            mid[i] = 0.5 * (grid_value(i, f.grid_mbits, f.grid_emin) + grid_value(i + 1, f.grid_mbits, f.grid_emin));
            const vi32 code = element_codes<RND_RNE, true>(vu32{} + f2u(float(mid[i])), 0, grid, vu32{});
            up[i] = code[0] == i + 1;
            if (code[0] != i && code[0] != i + 1) return;  // not the grid this assumes
        }
        if (e8m0) {
            int32_t exp_lo = 255, exp_hi = 0;
            for (int i = 0; i < N; ++i) {
                const uint32_t b = f2u(float(mid[i]));
                if (b & 0xFFFF) return;  // not a bfloat16
                base[i] = dup16(int32_t(b >> 16) - (up[i] ? 1 : 0));
                const int32_t ex = int32_t(b >> 23);
                exp_lo = ex < exp_lo ? ex : exp_lo;
                exp_hi = ex > exp_hi ? ex : exp_hi;
            }
            c_lo = 127 + 1 - exp_lo;  // every threshold a normal bfloat16
            c_hi = 127 + 254 - exp_hi;
            usable = true;
            return;
        }
        for (int c = 0; c < 127; ++c) {
            const double value = grid_value(c, f.scale_mbits, f.scale_emin);
            const float X = float(f.tensor_scale ? value * double(tensor_scale) : value);
            if (!(X > 0.0f) || !std::isfinite(X)) continue;
            bool ok = true;
            for (int i = 0; i < N && ok; ++i) {
                // the bound on |x| / X: above mid + ulp/2 (ties to mid, which is even), or at or
                // above mid - ulp_below/2 (ties to mid)
                const int32_t ex = std::ilogb(mid[i]);
                const double below = (std::ldexp(1.0, ex) == mid[i] ? std::ldexp(1.0, ex - 24) : std::ldexp(1.0, ex - 23)) / 2;
                const double bound = up[i] ? mid[i] - below : mid[i] + std::ldexp(1.0, ex - 23) / 2;
                const double p = bound * double(X);  // exact: 26 + 24 significant bits
                int32_t t;
                ok = bf16_threshold(p, up[i], &t);
                table[c][i] = dup16(t);
            }
            valid[c] = ok;
            usable = usable || ok;
        }
    }

    // float_grid_value: the magnitude of code m of a grid (exact)
    static double grid_value(int32_t m, int32_t mbits, int32_t emin) {
        const int32_t field = m >> mbits, mant = m & ((1 << mbits) - 1);
        return field > 0 ? std::ldexp(double(mant + (1 << mbits)), field - 1 + emin - mbits)
                         : std::ldexp(double(mant), emin - mbits);
    }

    // The bfloat16 bit pattern t with: |x| > p iff bits(|x|) > t (strict), or |x| >= p iff
    // bits(|x|) > t (not strict), for every bfloat16 |x|; false if p is not a normal bfloat16.
    static bool bf16_threshold(double p, bool not_strict, int32_t* t) {
        if (!(p >= 0x1p-126 && p < 0x1p127)) return false;
        const uint64_t u = d2u(p);
        const int32_t down = int32_t(((u >> 52) - 1023 + 127) << 7 | ((u >> 45) & 0x7F));  // rounded down
        const bool exact = (u & ((uint64_t(1) << 45) - 1)) == 0;
        *t = not_strict ? down + (exact ? 0 : 1) - 1 : down;
        return *t <= 0x7F7F;
    }
};

// Codes of 32 (HALF: 16) bfloat16 elements at x16 against thresholds lo (first 16) and hi (the
// rest), with signs, packed as 4-bit codes at out.
template <bool IS_INT, bool HALF>
MX_INLINE void encode4_step(const uint16_t* x16, const int32_t* lo, const int32_t* hi, bool zero_lo, bool zero_hi,
                            uint8_t* out) {
    const __m256i zero = _mm256_setzero_si256(), abs = _mm256_set1_epi16(0x7FFF);
    const __m256i a = lddqu256(x16), b = HALF ? zero : lddqu256(x16 + 16);
    const __m256i ma = _mm256_and_si256(a, abs), mb = _mm256_and_si256(b, abs);
    // minus the counts (comparisons are -1 where passed), summed as a tree; negated once as bytes
    __m256i na[Thresholds4::N], nb[Thresholds4::N];
    for (int i = 0; i < Thresholds4::N; ++i) {
        na[i] = _mm256_cmpgt_epi16(ma, _mm256_set1_epi32(lo[i]));
        nb[i] = HALF ? zero : _mm256_cmpgt_epi16(mb, _mm256_set1_epi32(hi[i]));
    }
    const __m256i sa = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(na[0], na[1]), _mm256_add_epi16(na[2], na[3])),
                                        _mm256_add_epi16(_mm256_add_epi16(na[4], na[5]), na[6]));
    const __m256i sb = HALF ? zero
                            : _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(nb[0], nb[1]), _mm256_add_epi16(nb[2], nb[3])),
                                               _mm256_add_epi16(_mm256_add_epi16(nb[4], nb[5]), nb[6]));
    // elements 0-7, 16-23 | 8-15, 24-31
    __m256i bytes = _mm256_sub_epi8(zero, _mm256_packs_epi16(sa, sb));
    const __m256i s = _mm256_packs_epi16(a, b);    // their signs, in the same order
    if constexpr (IS_INT) {
        bytes = _mm256_and_si256(_mm256_sign_epi8(bytes, _mm256_or_si256(s, _mm256_set1_epi8(1))), _mm256_set1_epi8(0x0F));
    } else {
        const __m256i sign = _mm256_and_si256(_mm256_srli_epi16(s, 4), _mm256_set1_epi8(0x08));
        bytes = _mm256_or_si256(bytes, _mm256_andnot_si256(_mm256_cmpeq_epi8(bytes, zero), sign));
    }
    // packed as store_packed<4> does, in this order: dwords of 8 codes each, elements 0-7, 16-23 |
    // 8-15, 24-31, put in order by one permutation
    const __m256i w = _mm256_maddubs_epi16(bytes, _mm256_set1_epi16(0x1001));  // code 2i + 16 * code 2i+1
    const __m256i p = _mm256_packus_epi16(w, w);
    __m128i packed = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5)));
    if (__builtin_expect(zero_lo || zero_hi, 0)) {  // bytes 0-7: the first 16 elements
        packed = _mm_and_si128(packed, _mm_set_epi64x(zero_hi ? 0 : -1, zero_lo ? 0 : -1));
    }
    if (HALF) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out), packed);
    } else {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), packed);
    }
}

// The thresholds of block i of a chunk into buf (8 entries), or null where they do not apply.
MX_INLINE const int32_t* block_thresholds(const Thresholds4& t, const ChunkPlans& plans, int32_t i, bool e8m0,
                                          int32_t* buf) {
    const int32_t c = plans.code[i];
    if (e8m0) {
        if (c < t.c_lo || c > t.c_hi) return nullptr;
        _mm256_store_si256(reinterpret_cast<__m256i*>(buf),
                           _mm256_add_epi16(_mm256_load_si256(reinterpret_cast<const __m256i*>(t.base)),
                                            _mm256_set1_epi16(int16_t((c - 127) << 7))));
        return buf;
    }
    return c >= 0 && c < 128 && t.valid[c] ? t.table[c] : nullptr;
}

// The codes of the n planned blocks at x16 (bfloat16, 4-bit codes): by comparisons where the
// block's thresholds apply, else by encode_step.
template <bool IS_INT, bool E8M0>
void encode4_chunk(const Format& f, const Thresholds4& t, const ChunkPlans& plans, const uint16_t* x16, int32_t n,
                   const ElementConsts& consts, uint8_t* out0) {
    constexpr bool DIV = !E8M0;
    const int32_t bs = f.block_size;
    alignas(32) int32_t buf0[8], buf1[8];
    if (bs == 16) {  // two blocks per step
        for (int32_t i = 0; i < n; i += 2) {
            const bool half = i + 1 == n;
            const bool z0 = (plans.zero >> i) & 1, z1 = !half && ((plans.zero >> (i + 1)) & 1);
            const int32_t* t0 = block_thresholds(t, plans, i, E8M0, buf0);
            const int32_t* t1 = half ? t0 : block_thresholds(t, plans, i + 1, E8M0, buf1);
            const uint16_t* x = x16 + 16 * i;
            uint8_t* out = out0 + 8 * i;
            // a line two chunks ahead (a prefetch never faults past the end): the amaxes of a chunk
            // then find their inputs in the cache, not at DRAM latency in one burst of loads
            // (measured on NVFP4's 16-element blocks: one chunk ahead gained less)
            _mm_prefetch(reinterpret_cast<const char*>(x + 2 * 16 * ChunkPlans::MAX_BLOCKS), _MM_HINT_T0);
            if (__builtin_expect(t0 && t1, 1)) {
                if (half) {
                    encode4_step<IS_INT, true>(x, t0, t0, z0, false, out);
                } else {
                    encode4_step<IS_INT, false>(x, t0, t1, z0, z1, out);
                }
            } else if (half) {
                encode_step<DT_BF16, 4, IS_INT, DIV, true>(x, 0, plans.m[i], plans.m[i], z0, false, consts, out);
            } else {
                encode_step<DT_BF16, 4, IS_INT, DIV, false>(x, 0, plans.m[i], plans.m[i + 1], z0, z1, consts, out);
            }
        }
        return;
    }
    for (int32_t i = 0; i < n; ++i) {
        const bool z = (plans.zero >> i) & 1;
        const int32_t* th = block_thresholds(t, plans, i, E8M0, buf0);
        const uint16_t* x = x16 + int64_t(i) * bs;
        uint8_t* out = out0 + int64_t(i) * bs / 2;
        int32_t j = 0;
        for (; j + 32 <= bs; j += 32) {
            if (__builtin_expect(th != nullptr, 1)) {
                encode4_step<IS_INT, false>(x + j, th, th, z, z, out + j / 2);
            } else {
                encode_step<DT_BF16, 4, IS_INT, DIV, false>(x + j, 0, plans.m[i], plans.m[i], z, z, consts, out + j / 2);
            }
        }
        if (j < bs) {
            if (th) {
                encode4_step<IS_INT, true>(x + j, th, th, z, z, out + j / 2);
            } else {
                encode_step<DT_BF16, 4, IS_INT, DIV, true>(x + j, 0, plans.m[i], plans.m[i], z, z, consts, out + j / 2);
            }
        }
    }
}

// Encode blocks [b0, b1) of whole blocks back to back (bs % 16 == 0), chunk by chunk: the scales
// of a chunk's blocks first (8 at a time), then their codes.
template <int DT, int BITS, bool IS_INT, bool E8M0>
int64_t encode_fast_range(const Format& f, const void* x, int64_t b0, int64_t b1, float tensor_scale,
                          uint8_t* codes_out, void* scales_out) {
    constexpr bool DIV = !E8M0;
    const int32_t bs = f.block_size;
    const int64_t block_bytes = int64_t(bs) * BITS / 8;
    const ElementConsts consts(f);
    const FloatScalePlanner planner(f, tensor_scale);
    const FloatScalePlanner32 planner32(f, tensor_scale);
    const Thresholds4 thresholds = BITS == 4 && DT == DT_BF16 ? Thresholds4(f, tensor_scale, b1 - b0) : Thresholds4(f, 0.0f, -1);
    ChunkPlans plans;
    const int64_t chunk = bs <= 32 ? ChunkPlans::MAX_BLOCKS : ChunkPlans::MAX_BLOCKS / 2;
    for (int64_t c0 = b0; c0 < b1; c0 += chunk) {
        const int32_t n = int32_t(c0 + chunk < b1 ? chunk : b1 - c0);
        plans.zero = 0;
        for (int32_t i = 0; i < n; i += 8) {
            const int32_t g = n - i < 8 ? n - i : 8;
            const __m256i amax = amax8<DT>(x, (c0 + i) * bs, bs, g);
            if constexpr (E8M0) {
                plan8_e8m0(f, amax, i, g, static_cast<uint8_t*>(scales_out) + c0 + i, plans);
            } else {
                if (!planner32.usable || !plan8_float32(f, planner32, amax, i, g, c0 + i, scales_out, plans)) {
                    plan8_float(f, planner, amax, i, g, c0 + i, scales_out, plans);
                }
            }
        }
        const int64_t off0 = c0 * bs;
        uint8_t* out0 = codes_out + c0 * block_bytes;
        if constexpr (BITS == 4 && DT == DT_BF16) {
            if (thresholds.usable) {
                encode4_chunk<IS_INT, E8M0>(f, thresholds, plans, static_cast<const uint16_t*>(x) + off0, n, consts, out0);
                continue;
            }
        }
        if (bs == 16) {  // two blocks per step
            int32_t i = 0;
            for (; i + 1 < n; i += 2) {
                encode_step<DT, BITS, IS_INT, DIV, false>(x, off0 + 16 * i, plans.m[i], plans.m[i + 1], (plans.zero >> i) & 1,
                                                          (plans.zero >> (i + 1)) & 1, consts, out0 + 2 * i * BITS);
            }
            if (i < n) {
                encode_step<DT, BITS, IS_INT, DIV, true>(x, off0 + 16 * i, plans.m[i], plans.m[i], (plans.zero >> i) & 1, false,
                                                         consts, out0 + 2 * i * BITS);
            }
        } else {
            for (int32_t i = 0; i < n; ++i) {
                const float m = plans.m[i];
                const bool z = (plans.zero >> i) & 1;
                const int64_t off = off0 + int64_t(i) * bs;
                uint8_t* out = out0 + i * block_bytes;
                int32_t j = 0;
                for (; j + 32 <= bs; j += 32) {
                    encode_step<DT, BITS, IS_INT, DIV, false>(x, off + j, m, m, z, z, consts, out + j * BITS / 8);
                }
                if (j < bs) encode_step<DT, BITS, IS_INT, DIV, true>(x, off + j, m, m, z, z, consts, out + j * BITS / 8);
            }
        }
    }
    return plans.clipped;
}

// The fast encoder for this call, if it applies (returns false otherwise: the general kernels run);
// *clipped: how many blocks clipped.
bool encode_fast(const Format& f, int32_t dt, const void* x, int64_t length, int64_t b0, int64_t b1,
                 float tensor_scale, uint8_t* codes_out, void* scales_out, int64_t* clipped) {
    const int32_t bs = f.block_size, bits = f.bits;
    if (f.rotate || f.rounding != RND_RNE || bs % 16 != 0 || length % bs != 0) return false;
    if (bits != 4 && bits != 6 && bits != 8) return false;
    if (!f.is_int && !f.float_rne) return false;
    if (f.is_int && f.max_code > 127) return false;
    const bool e8m0 = f.scale_type == SC_E8M0;
#define MX_FAST_ENC(DT, BITS, INT, E8)                                                                    \
    *clipped = encode_fast_range<DT, BITS, INT, E8>(f, x, b0, b1, tensor_scale, codes_out, scales_out); \
    return true
#define MX_FAST_ENC_SCALE(DT, BITS, INT) \
    if (e8m0) {                          \
        MX_FAST_ENC(DT, BITS, INT, true); \
    } else {                             \
        MX_FAST_ENC(DT, BITS, INT, false); \
    }
#define MX_FAST_ENC_ELEM(DT, BITS)         \
    if (f.is_int) {                        \
        MX_FAST_ENC_SCALE(DT, BITS, true)  \
    } else {                               \
        MX_FAST_ENC_SCALE(DT, BITS, false) \
    }
#define MX_FAST_ENC_BITS(DT)                         \
    switch (bits) {                                  \
        case 4: MX_FAST_ENC_ELEM(DT, 4) break;       \
        case 6: MX_FAST_ENC_ELEM(DT, 6) break;       \
        default: MX_FAST_ENC_ELEM(DT, 8) break;      \
    }
    switch (dt) {
        case DT_FP32: MX_FAST_ENC_BITS(DT_FP32) break;
        case DT_BF16: MX_FAST_ENC_BITS(DT_BF16) break;
        default: MX_FAST_ENC_BITS(DT_FP16) break;
    }
#undef MX_FAST_ENC_BITS
#undef MX_FAST_ENC_ELEM
#undef MX_FAST_ENC_SCALE
#undef MX_FAST_ENC
    return false;
}

// Finite amax of the contiguous elements [i0, i1) (float32 bits).
template <int DT>
uint32_t finite_amax_contiguous(const void* x, int64_t i0, int64_t i1) {
    if constexpr (DT == DT_FP32) {
        const float* p = static_cast<const float*>(x);
        const __m256i abs = _mm256_set1_epi32(0x7FFFFFFF), inf = _mm256_set1_epi32(0x7F800000);
        __m256i m = _mm256_setzero_si256();
        int64_t i = i0;
        for (; i + 8 <= i1; i += 8) {
            const __m256i a = _mm256_and_si256(lddqu256(p + i), abs);
            m = _mm256_max_epi32(m, _mm256_and_si256(a, _mm256_cmpgt_epi32(inf, a)));
        }
        uint32_t best = uint32_t(hmax((vi32)m));
        for (; i < i1; ++i) {
            const uint32_t a = f2u(p[i]) & 0x7FFFFFFFu;
            if (a < 0x7F800000u && a > best) best = a;
        }
        return best;
    } else {
        const uint16_t* p = static_cast<const uint16_t*>(x);
        const uint16_t inf16 = DT == DT_BF16 ? 0x7F80 : 0x7C00;
        const __m256i abs = _mm256_set1_epi16(0x7FFF), inf = _mm256_set1_epi16(int16_t(inf16));
        __m256i m = _mm256_setzero_si256();
        int64_t i = i0;
        for (; i + 16 <= i1; i += 16) {
            const __m256i a = _mm256_and_si256(lddqu256(p + i), abs);
            m = _mm256_max_epu16(m, _mm256_and_si256(a, _mm256_cmpgt_epi16(inf, a)));  // (a <= 0x7FFF: signed compare)
        }
        vu16x16 mv;
        std::memcpy(&mv, &m, sizeof(mv));
        uint32_t best = hmax16(mv);
        for (; i < i1; ++i) {
            const uint32_t a = p[i] & 0x7FFFu;
            if (a < inf16 && a > best) best = a;
        }
        if (DT == DT_BF16) return best << 16;
        return fp16_to_fp32_bits(splat(int32_t(best)))[0];
    }
}

// -- decode -------------------------------------------------------------------------------------
// How element values are made from codes (DecodeSetup::kind).
enum { VALUES_NONE = 0, VALUES_TABLE16 = 1, VALUES_FLOAT8 = 2, VALUES_INT8 = 3 };

// Per-call decoding constants, derived from the code table (and checked against it).
struct DecodeSetup {
    int kind = VALUES_NONE;
    // TABLE16 (4- and 6-bit codes): the high 16 bits of every value, as byte planes of 16-entry
    // sub-tables (sign-magnitude 6-bit formats: magnitudes only, the sign bit ORed in)
    __m256i lo[4], hi[4];
    int nsub = 0;
    bool sign_magnitude = false;
    // FLOAT8: bits = (magnitude << (7 - mbits)) + ((127 - bias) << 7); subnormals from a table
    // (low bytes of codes 0..7 in entries 0..7, high bytes in 8..15)
    __m128i shift;
    __m256i normal_add, sub_table, sub_limit, special_limit;
    bool has_special = false;  // some codes are NaN or inf (magnitude >= special_limit)
    // the nonzero finite values v satisfy 2**value_emin <= |v| < 2**(value_emax + 1)
    int32_t value_emin = 0, value_emax = 0;

    DecodeSetup(const Format& f, const float* table) {
        const int32_t n = 1 << f.bits;
        int32_t emin = 1000, emax = -1000;
        uint16_t hi16[256] = {};
        bool exact = f.bits <= 8;
        int32_t first_special = n;  // smallest code magnitude (sign-magnitude) / code with a non-finite value
        for (int32_t c = 0; exact && c < n; ++c) {
            const uint32_t u = f2u(table[c]);
            if ((u & 0xFFFF) != 0) exact = false;
            hi16[c] = uint16_t(u >> 16);
            const uint32_t a = u & 0x7FFFFFFFu;
            if (a >= 0x7F800000u) {
                const int32_t mag = f.is_int ? c : c & ((n >> 1) - 1);
                first_special = mag < first_special ? mag : first_special;
            } else if (a != 0) {
                const int32_t ex = int32_t(a >> 23) - 127;
                if (ex == -127) exact = false;  // a float32 subnormal value: never for these widths
                emin = ex < emin ? ex : emin;
                emax = ex > emax ? ex : emax;
            }
        }
        if (!exact || emax < emin) return;
        value_emin = emin;
        value_emax = emax;
        if (f.bits == 4 || f.bits == 6) {
            if (first_special < n) return;
            bool sm = !f.is_int && f.bits == 6;
            for (int32_t c = 0; sm && c < n / 2; ++c) sm = hi16[c + n / 2] == (hi16[c] | 0x8000);
            sign_magnitude = sm;
            const int32_t entries = sm ? n / 2 : n;
            nsub = entries / 16;
            for (int s = 0; s < nsub; ++s) {
                alignas(16) uint8_t l[16], h[16];
                for (int i = 0; i < 16; ++i) {
                    l[i] = uint8_t(hi16[16 * s + i]);
                    h[i] = uint8_t(hi16[16 * s + i] >> 8);
                }
                lo[s] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(l)));
                hi[s] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(h)));
            }
            kind = VALUES_TABLE16;
        } else if (f.bits == 8 && f.is_int) {
            for (int32_t c = 0; c < n; ++c) {
                if (table[c] != std::ldexp(float(int8_t(uint8_t(c))), -6)) return;
            }
            kind = VALUES_INT8;
        } else if (f.bits == 8) {
            const int32_t mbits = f.grid_mbits, bias = 1 - f.grid_emin;
            if (mbits > 3 || 127 - bias <= 0) return;
            alignas(16) uint8_t sub[16] = {};
            for (int32_t m = 0; m < (1 << mbits); ++m) {
                sub[m] = uint8_t(hi16[m]);
                sub[m + 8] = uint8_t(hi16[m] >> 8);
            }
            for (int32_t c = 0; c < n; ++c) {
                const int32_t mag = c & 0x7F;
                if (mag >= first_special) continue;
                uint32_t h = mag < (1 << mbits) ? hi16[mag] : uint32_t((mag << (7 - mbits)) + ((127 - bias) << 7));
                h |= uint32_t(c & 0x80) << 8;
                if (h != hi16[c]) return;  // not the float layout this path builds
            }
            for (int32_t mag = first_special; mag < 128; ++mag) {  // specials: only at the top
                if ((f2u(table[mag]) & 0x7FFFFFFFu) < 0x7F800000u) return;
            }
            shift = _mm_cvtsi32_si128(7 - mbits);
            normal_add = _mm256_set1_epi16(int16_t((127 - bias) << 7));
            sub_table = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(sub)));
            sub_limit = _mm256_set1_epi16(int16_t(1 << mbits));
            has_special = first_special < 128;
            special_limit = _mm256_set1_epi16(int16_t(first_special - 1));
            kind = VALUES_FLOAT8;
        }
    }
};

// 6-bit codes [16 g, 16 g + 16) of a block as 16 words: word j <- the two bytes holding bits
// 6j .. 6j + 5, then the field moved to the top and down (a multiply by 2**(10 - shift) is a
// per-word left shift). Groups come in pairs (bs % 32 == 0); the second one loads from 4 bytes
// before its start, so no load leaves its block.
MX_INLINE __m256i codes6_words(const uint8_t* in, int32_t g) {
    __m256i w;
    if (g & 1) {
        w = _mm256_broadcastsi128_si256(lddqu128(in + 12 * g - 4));
        w = _mm256_shuffle_epi8(w, _mm256_setr_epi8(4, 5, 4, 5, 5, 6, 6, 7, 7, 8, 7, 8, 8, 9, 9, 10,
                                                    10, 11, 10, 11, 11, 12, 12, 13, 13, 14, 13, 14, 14, 15, 15, -1));
    } else {
        w = _mm256_broadcastsi128_si256(lddqu128(in + 12 * g));
        w = _mm256_shuffle_epi8(w, _mm256_setr_epi8(0, 1, 0, 1, 1, 2, 2, 3, 3, 4, 3, 4, 4, 5, 5, 6,
                                                    6, 7, 6, 7, 7, 8, 8, 9, 9, 10, 9, 10, 10, 11, 11, -1));
    }
    return _mm256_srli_epi16(
        _mm256_mullo_epi16(w, _mm256_setr_epi16(1024, 16, 64, 256, 1024, 16, 64, 256, 1024, 16, 64, 256, 1024, 16, 64, 256)), 10);
}

// The high 16 bits of the values of codes [16 g, 16 g + 16) of a block (in: the block's codes),
// as 16 words in order; sets *special where a code's value is NaN or inf (FLOAT8 only).
template <int KIND, int BITS>
MX_INLINE __m256i values_hi16(const uint8_t* in, int32_t g, const DecodeSetup& d, __m256i& special) {
    if constexpr (BITS == 4) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(in + 8 * g));
        const __m128i nibble = _mm_set1_epi8(0x0F);
        const __m128i codes = _mm_unpacklo_epi8(_mm_and_si128(b, nibble), _mm_and_si128(_mm_srli_epi16(b, 4), nibble));
        const __m128i pl = _mm_shuffle_epi8(_mm256_castsi256_si128(d.lo[0]), codes);
        const __m128i ph = _mm_shuffle_epi8(_mm256_castsi256_si128(d.hi[0]), codes);
        return _mm256_set_m128i(_mm_unpackhi_epi8(pl, ph), _mm_unpacklo_epi8(pl, ph));
    } else if constexpr (BITS == 6) {
        const __m256i codes = codes6_words(in, g);
        __m256i idx = d.sign_magnitude ? _mm256_and_si256(codes, _mm256_set1_epi16(0x1F)) : codes;
        // sub-table s: index - 16 s, pushed to >= 0x80 (a zero lookup) unless it is in 0..15
        __m256i pl = _mm256_setzero_si256(), ph = _mm256_setzero_si256();
        for (int s = 0; s < d.nsub; ++s) {
            const __m256i i = _mm256_adds_epu8(_mm256_sub_epi8(idx, _mm256_set1_epi8(char(16 * s))), _mm256_set1_epi8(0x70));
            pl = _mm256_or_si256(pl, _mm256_shuffle_epi8(d.lo[s], i));
            ph = _mm256_or_si256(ph, _mm256_shuffle_epi8(d.hi[s], i));
        }
        __m256i h = _mm256_or_si256(_mm256_and_si256(pl, _mm256_set1_epi16(0xFF)), _mm256_slli_epi16(ph, 8));
        if (d.sign_magnitude) h = _mm256_or_si256(h, _mm256_and_si256(_mm256_slli_epi16(codes, 10), _mm256_set1_epi16(int16_t(0x8000))));
        return h;
    } else {  // 8-bit floats
        static_assert(KIND == VALUES_FLOAT8, "8-bit codes: FLOAT8 values only");
        const __m256i c = _mm256_cvtepu8_epi16(lddqu128(in + 16 * g));
        const __m256i mag = _mm256_and_si256(c, _mm256_set1_epi16(0x7F));
        const __m256i normal = _mm256_add_epi16(_mm256_sll_epi16(mag, d.shift), d.normal_add);
        // subnormals: table entry mag (low byte) and mag + 8 (high byte)
        const __m256i idx = _mm256_add_epi16(_mm256_mullo_epi16(mag, _mm256_set1_epi16(0x0101)), _mm256_set1_epi16(0x0800));
        const __m256i sub = _mm256_shuffle_epi8(d.sub_table, idx);
        const __m256i h = _mm256_blendv_epi8(normal, sub, _mm256_cmpgt_epi16(d.sub_limit, mag));
        if (d.has_special) special = _mm256_or_si256(special, _mm256_cmpgt_epi16(mag, d.special_limit));
        return _mm256_or_si256(h, _mm256_and_si256(_mm256_slli_epi16(c, 8), _mm256_set1_epi16(int16_t(0x8000))));
    }
}

// The high 16 bits of the values of 32 codes given as bytes in the order (0-7, 16-23 | 8-15, 24-31)
// (what packus_epi16 makes of two 16-code word vectors), as two 16-word vectors in order: 4- and
// 6-bit codes, byte-plane lookups on 32 codes at once.
MX_INLINE void lookup_hi16_32(__m256i c, const DecodeSetup& d, __m256i* h) {
    __m256i pl, ph;
    if (d.nsub == 1) {  // codes 0..15: one table
        pl = _mm256_shuffle_epi8(d.lo[0], c);
        ph = _mm256_shuffle_epi8(d.hi[0], c);
    } else {
        const __m256i idx = d.sign_magnitude ? _mm256_and_si256(c, _mm256_set1_epi8(0x1F)) : c;
        pl = _mm256_setzero_si256();
        ph = _mm256_setzero_si256();
        for (int s = 0; s < d.nsub; ++s) {  // sub-table s: index - 16 s, pushed to >= 0x80 unless in 0..15
            const __m256i i = _mm256_adds_epu8(_mm256_sub_epi8(idx, _mm256_set1_epi8(char(16 * s))), _mm256_set1_epi8(0x70));
            pl = _mm256_or_si256(pl, _mm256_shuffle_epi8(d.lo[s], i));
            ph = _mm256_or_si256(ph, _mm256_shuffle_epi8(d.hi[s], i));
        }
        if (d.sign_magnitude) ph = _mm256_or_si256(ph, _mm256_and_si256(_mm256_slli_epi16(c, 2), _mm256_set1_epi8(char(0x80))));
    }
    h[0] = _mm256_unpacklo_epi8(pl, ph);
    h[1] = _mm256_unpackhi_epi8(pl, ph);
}

// The high 16 bits of the values of codes [STEP s, STEP s + STEP) of a block (STEP = 16 or 32),
// as STEP / 16 vectors of 16 words in order.
template <int KIND, int BITS, int STEP>
MX_INLINE void values_hi16_step(const uint8_t* in, int32_t s, const DecodeSetup& d, __m256i* h, __m256i& special) {
    if constexpr (STEP == 16 || BITS == 8) {
        for (int g = 0; g < STEP / 16; ++g) h[g] = values_hi16<KIND, BITS>(in, STEP / 16 * s + g, d, special);
    } else if constexpr (BITS == 4) {
        const __m128i b = lddqu128(in + 16 * s);
        const __m128i nibble = _mm_set1_epi8(0x0F);
        const __m128i lo = _mm_and_si128(b, nibble), hi = _mm_and_si128(_mm_srli_epi16(b, 4), nibble);
        const __m128i c0 = _mm_unpacklo_epi8(lo, hi), c1 = _mm_unpackhi_epi8(lo, hi);  // codes 0-15, 16-31
        lookup_hi16_32(_mm256_set_m128i(_mm_unpackhi_epi64(c0, c1), _mm_unpacklo_epi64(c0, c1)), d, h);
    } else {  // 6: the two groups' code words, as bytes
        const __m256i w0 = codes6_words(in, 2 * s), w1 = codes6_words(in, 2 * s + 1);
        lookup_hi16_32(_mm256_packus_epi16(w0, w1), d, h);
    }
}

// float32 values times X of codes [STEP s, STEP s + STEP) of a block, per 16 codes g as
// v[2g] = elements 0-3 | 8-11, v[2g+1] = 4-7 | 12-15.
template <int KIND, int BITS, int STEP>
MX_INLINE void values_f32(const uint8_t* in, int32_t s, const DecodeSetup& d, __m256 X, __m256* v, __m256i& special) {
    if constexpr (KIND == VALUES_INT8) {  // X already holds the 2**-6 of the int grid
        for (int g = 0; g < STEP / 16; ++g) {
            const __m128i r = _mm_shuffle_epi8(lddqu128(in + STEP * s + 16 * g),
                                               _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15));
            v[2 * g] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(r)), X);
            v[2 * g + 1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(r, 8))), X);
        }
    } else {
        __m256i h[STEP / 16];
        values_hi16_step<KIND, BITS, STEP>(in, s, d, h, special);
        const __m256i zero = _mm256_setzero_si256();
        for (int g = 0; g < STEP / 16; ++g) {
            v[2 * g] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, h[g])), X);
            v[2 * g + 1] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, h[g])), X);
        }
    }
}

// Store 16 float32 results held as (0-3 | 8-11, 4-7 | 12-15) as ODT; EXACT: bfloat16 results
// need no rounding (each is a bfloat16 already).
template <int ODT, bool EXACT>
MX_INLINE void store16(void* out, int64_t i, __m256 lo, __m256 hi) {
    if constexpr (ODT == DT_BF16) {
        __m256i a, b;
        if (EXACT) {
            a = _mm256_srli_epi32(_mm256_castps_si256(lo), 16);
            b = _mm256_srli_epi32(_mm256_castps_si256(hi), 16);
        } else {
            a = (__m256i)to_bf16_in_range((vf32)lo);
            b = (__m256i)to_bf16_in_range((vf32)hi);
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i), _mm256_packus_epi32(a, b));
    } else {
        const __m256 first = _mm256_permute2f128_ps(lo, hi, 0x20), second = _mm256_permute2f128_ps(lo, hi, 0x31);
        if constexpr (ODT == DT_FP32) {
            _mm256_storeu_ps(static_cast<float*>(out) + i, first);
            _mm256_storeu_ps(static_cast<float*>(out) + i + 8, second);
        } else {
            uint16_t* o = static_cast<uint16_t*>(out) + i;
            _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm256_cvtps_ph(first, _MM_FROUND_TO_NEAREST_INT));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 8), _mm256_cvtps_ph(second, _MM_FROUND_TO_NEAREST_INT));
        }
    }
}

// The float32 multiplier of block k of part p: SCALE 0: E8M0 (built from the code), 1: a table of
// the 256 possible multipliers per part, 2: block_multiplier.
enum { FAST_SCALE_E8M0 = 0, FAST_SCALE_TABLE = 1, FAST_SCALE_GENERIC = 2 };

template <int SCALE>
MX_INLINE float fast_multiplier(const Format& f, const void* const* scales, const float* tensor_scales,
                                const float* xtab, int32_t p, int64_t k) {
    if constexpr (SCALE == FAST_SCALE_E8M0) {
        const uint32_t c = static_cast<const uint8_t*>(scales[p])[k];
        if (c == f.scale_nan) return std::numeric_limits<float>::quiet_NaN();
        return c == 0 ? u2f(0x00400000u) : u2f(c << 23);
    } else if constexpr (SCALE == FAST_SCALE_TABLE) {
        return xtab[p * 256 + static_cast<const uint8_t*>(scales[p])[k]];
    } else {
        return block_multiplier(scales[p], k, f, tensor_scales[p]);
    }
}

struct FastDecodeArgs {
    const Format* f;
    const DecodeSetup* d;
    int32_t nparts;
    const uint8_t* const* codes;
    const void* const* scales;
    const float* tensor_scales;
    const float* table;
    const float* xtab;  // FAST_SCALE_TABLE: 256 multipliers per part
    float* xs;          // nparts floats
    int64_t length, bpr;
    void* out;
    uint16_t* cbuf;
    float* acc;
    BitReader* readers;
    double limit;       // sum_p |X_p| * table_max up to this: no result needs saturating
};

// Decode (sum) blocks [b0, b1): whole blocks back to back, bs % 16 == 0 (6-bit: bs % 32 == 0).
template <int ODT, int KIND, int BITS, int SCALE, int STEP>
void decode_fast_range(const FastDecodeArgs& a, int64_t b0, int64_t b1) {
    const Format& f = *a.f;
    const DecodeSetup& d = *a.d;
    constexpr int G = STEP / 16;  // 16-code groups per step
    const int32_t bs = f.block_size, steps = bs / STEP, nparts = a.nparts;
    const int64_t block_bytes = int64_t(bs) * BITS / 8;
    const float table_max = f.table_max;
    // one part, bfloat16 out, E8M0: blocks whose products are all normal bfloat16 are exact
    const bool exact_path = ODT == DT_BF16 && nparts == 1 && SCALE == FAST_SCALE_E8M0;
    // scale codes c (X = 2**(c - 127)) that keep every nonzero product within [2**-126, 2**128)
    const int32_t exact_lo = 1 - d.value_emin, exact_hi = 254 - d.value_emax;
    const float int_step = 1.0f / 64.0f;  // VALUES_INT8: the value of code 1
    for (int64_t k = b0; k < b1; ++k) {
        const int64_t off = k * bs;
        bool ok = true;
        double bound = 0.0;
        for (int32_t p = 0; p < nparts; ++p) {
            float X = fast_multiplier<SCALE>(f, a.scales, a.tensor_scales, a.xtab, p, k);
            bound += double(std::fabs(X));
            if (KIND == VALUES_INT8) {  // fold the 2**-6 into X where that is exact
                const float Xs = X * int_step;
                ok = ok && Xs * 64.0f == X;
                X = Xs;
            }
            a.xs[p] = X;
        }
        ok = ok && bound * double(table_max) <= a.limit;  // (NaN: false)
        __m256i special = _mm256_setzero_si256();
        if constexpr (KIND != VALUES_INT8) {
            const uint8_t* in0 = a.codes[0] + k * block_bytes;
            if (ok && exact_path) {
                const int32_t c = static_cast<const uint8_t*>(a.scales[0])[k];
                if (c >= exact_lo && c <= exact_hi) {
                    // value bits + scale exponent, for nonzero values (zeros keep their sign)
                    const __m256i eadd = _mm256_set1_epi16(int16_t((c - 127) << 7));
                    uint16_t* o = static_cast<uint16_t*>(a.out) + off;
                    for (int32_t st = 0; st < steps; ++st) {
                        __m256i h[G];
                        values_hi16_step<KIND, BITS, STEP>(in0, st, d, h, special);
                        for (int g = 0; g < G; ++g) {
                            const __m256i z = _mm256_cmpeq_epi16(_mm256_and_si256(h[g], _mm256_set1_epi16(0x7FFF)), _mm256_setzero_si256());
                            _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + STEP * st + 16 * g),
                                                _mm256_add_epi16(h[g], _mm256_andnot_si256(z, eadd)));
                        }
                    }
                    if (!(d.has_special && !_mm256_testz_si256(special, special))) continue;
                    ok = false;
                }
            }
        }
        if (ok) {
            const bool exact = exact_path && static_cast<const uint8_t*>(a.scales[0])[k] >= exact_lo &&
                               static_cast<const uint8_t*>(a.scales[0])[k] <= exact_hi;
            for (int32_t st = 0; st < steps; ++st) {
                __m256 acc[2 * G];
                values_f32<KIND, BITS, STEP>(a.codes[0] + k * block_bytes, st, d, _mm256_set1_ps(a.xs[0]), acc, special);
                for (int32_t p = 1; p < nparts; ++p) {  // float32 accumulation in part order
                    __m256 v[2 * G];
                    values_f32<KIND, BITS, STEP>(a.codes[p] + k * block_bytes, st, d, _mm256_set1_ps(a.xs[p]), v, special);
                    for (int i = 0; i < 2 * G; ++i) acc[i] = _mm256_add_ps(acc[i], v[i]);
                }
                for (int g = 0; g < G; ++g) {
                    if (exact) {
                        store16<ODT, true>(a.out, off + STEP * st + 16 * g, acc[2 * g], acc[2 * g + 1]);
                    } else {
                        store16<ODT, false>(a.out, off + STEP * st + 16 * g, acc[2 * g], acc[2 * g + 1]);
                    }
                }
            }
            if (!(d.has_special && !_mm256_testz_si256(special, special))) continue;
        }
        // anything else: the general kernel, for this block
        decode_blocks_impl<ODT, UNPACK_BUFFER>(f, nparts, a.codes, a.scales, a.tensor_scales, a.table, a.length, a.bpr,
                                               k, k + 1, a.out, a.cbuf, a.acc, a.readers);
    }
}

// One part of 4-bit codes into a 16-bit type: decode_nibbles_by_table for the blocks in range.
template <int ODT, int SCALE>
void decode_nibbles_fast_range(const FastDecodeArgs& a, int64_t b0, int64_t b1) {
    const Format& f = *a.f;
    const int32_t bs = f.block_size;
    const int64_t block_bytes = bs / 2;
    // (as decode_blocks_impl: to_fp16 saturates the table's outputs, to_bf16_in_range does not)
    const float limit = ODT == DT_BF16 ? u2f(0x7F7F0000u) : std::numeric_limits<float>::max();
    vf32 tlo, thi;
    std::memcpy(&tlo, a.table, sizeof(tlo));
    std::memcpy(&thi, a.table + 8, sizeof(thi));
    if (SCALE != FAST_SCALE_GENERIC && b1 - b0 >= 512) {
        // a multiplier per scale code: the output tables of all 256 codes once, for many blocks
        NibbleOutputs tables[256];
        bool valid[256];
        for (int c = 0; c < 256; ++c) {
            const uint8_t code = uint8_t(c);
            const void* one[1] = {&code};
            const float X = fast_multiplier<SCALE>(f, one, a.tensor_scales, a.xtab, 0, 0);
            valid[c] = std::fabs(X) * f.table_max <= limit;  // (NaN: false)
            if (valid[c]) tables[c] = nibble_outputs<ODT>(X, tlo, thi);
        }
        const uint8_t* sc = static_cast<const uint8_t*>(a.scales[0]);
        for (int64_t k = b0; k < b1; ++k) {
            if (__builtin_expect(valid[sc[k]], 1)) {
                decode_nibbles_with(a.codes[0] + k * block_bytes, bs, tables[sc[k]], static_cast<uint16_t*>(a.out) + k * bs);
            } else {
                decode_blocks_impl<ODT, UNPACK_BUFFER>(f, 1, a.codes, a.scales, a.tensor_scales, a.table, a.length, a.bpr,
                                                       k, k + 1, a.out, a.cbuf, a.acc, a.readers);
            }
        }
        return;
    }
    for (int64_t k = b0; k < b1; ++k) {
        const float X = fast_multiplier<SCALE>(f, a.scales, a.tensor_scales, a.xtab, 0, k);
        if (std::fabs(X) * f.table_max <= limit) {  // (NaN: false)
            decode_nibbles_by_table<ODT>(a.codes[0] + k * block_bytes, bs, X, tlo, thi, static_cast<uint16_t*>(a.out) + k * bs);
        } else {
            decode_blocks_impl<ODT, UNPACK_BUFFER>(f, 1, a.codes, a.scales, a.tensor_scales, a.table, a.length, a.bpr, k,
                                                   k + 1, a.out, a.cbuf, a.acc, a.readers);
        }
    }
}

template <int ODT, int KIND, int BITS>
void decode_fast_scale(FastDecodeArgs& a, int64_t b0, int64_t b1) {
    const Format& f = *a.f;
    if (BITS == 4 && a.nparts == 1 && ODT != DT_FP32) {
        if (f.scale_type == SC_E8M0) return decode_nibbles_fast_range<ODT, FAST_SCALE_E8M0>(a, b0, b1);
        if (a.xtab) return decode_nibbles_fast_range<ODT, FAST_SCALE_TABLE>(a, b0, b1);
        return decode_nibbles_fast_range<ODT, FAST_SCALE_GENERIC>(a, b0, b1);
    }
    // 32 codes per step where blocks allow (6-bit codes always: decode_fast requires bs % 32 == 0)
    if (BITS != 8 && f.block_size % 32 == 0) {
        if (f.scale_type == SC_E8M0) return decode_fast_range<ODT, KIND, BITS, FAST_SCALE_E8M0, 32>(a, b0, b1);
        if (a.xtab) return decode_fast_range<ODT, KIND, BITS, FAST_SCALE_TABLE, 32>(a, b0, b1);
        return decode_fast_range<ODT, KIND, BITS, FAST_SCALE_GENERIC, 32>(a, b0, b1);
    }
    if constexpr (BITS != 6) {
        if (f.scale_type == SC_E8M0) return decode_fast_range<ODT, KIND, BITS, FAST_SCALE_E8M0, 16>(a, b0, b1);
        if (a.xtab) return decode_fast_range<ODT, KIND, BITS, FAST_SCALE_TABLE, 16>(a, b0, b1);
        return decode_fast_range<ODT, KIND, BITS, FAST_SCALE_GENERIC, 16>(a, b0, b1);
    }
}

template <int ODT>
void decode_fast_odt(FastDecodeArgs& a, int64_t b0, int64_t b1) {
    const DecodeSetup& d = *a.d;
    switch (a.f->bits) {
        case 4: return decode_fast_scale<ODT, VALUES_TABLE16, 4>(a, b0, b1);
        case 6: return decode_fast_scale<ODT, VALUES_TABLE16, 6>(a, b0, b1);
        default:
            if (d.kind == VALUES_INT8) return decode_fast_scale<ODT, VALUES_INT8, 8>(a, b0, b1);
            return decode_fast_scale<ODT, VALUES_FLOAT8, 8>(a, b0, b1);
    }
}

// The fast decoder for this call, if it applies (returns false otherwise: the general kernels run).
bool decode_fast(const Format& f, int32_t odt, int32_t nparts, const uint8_t* const* codes, const void* const* scales,
                 const float* tensor_scales, const float* table, int64_t length, int64_t bpr, int64_t b0, int64_t b1,
                 void* out, uint16_t* cbuf, float* acc, BitReader* readers) {
    const int32_t bs = f.block_size, bits = f.bits;
    if (f.rotate || bs % 16 != 0 || length % bs != 0 || (bits == 6 && bs % 32 != 0) || nparts > 4096) return false;
    if (bits != 4 && bits != 6 && bits != 8) return false;
    const DecodeSetup setup(f, table);
    if (setup.kind == VALUES_NONE) return false;
    float* xs = static_cast<float*>(std::malloc(sizeof(float) * size_t(nparts)));
    float* xtab = nullptr;
    if (f.scale_type == SC_E4M3) {  // the 256 multipliers of every part, as block_multiplier computes them
        xtab = static_cast<float*>(std::malloc(sizeof(float) * 256 * size_t(nparts)));
        if (xtab) {
            for (int32_t p = 0; p < nparts; ++p) {
                uint8_t all[256];
                for (int c = 0; c < 256; ++c) all[c] = uint8_t(c);
                for (int c = 0; c < 256; ++c) xtab[p * 256 + c] = block_multiplier(all, c, f, tensor_scales[p]);
            }
        }
    }
    if (!xs || (f.scale_type == SC_E4M3 && !xtab)) {
        std::free(xs);
        std::free(xtab);
        return false;
    }
    // no result needs saturating while sum_p |X_p| * table_max stays below the output's largest
    // finite value, with room for the float32 roundings of the products and the sum
    const double top = odt == DT_BF16 ? double(u2f(0x7F7F0000u)) : odt == DT_FP16 ? 65504.0 : double(std::numeric_limits<float>::max());
    FastDecodeArgs a{&f, &setup, nparts, codes, scales, tensor_scales, table, xtab, xs, length, bpr, out, cbuf, acc,
                     readers, nparts == 1 ? top : top * (1.0 - std::ldexp(double(nparts + 1), -20))};
    switch (odt) {
        case DT_FP32: decode_fast_odt<DT_FP32>(a, b0, b1); break;
        case DT_BF16: decode_fast_odt<DT_BF16>(a, b0, b1); break;
        default: decode_fast_odt<DT_FP16>(a, b0, b1); break;
    }
    std::free(xs);
    std::free(xtab);
    return true;
}

#endif  // AVX2 && F16C

// -- recycled output buffers (DLPack) ----------------------------------------------------------
// A fresh multi-MiB output is first touched one page fault at a time, and the kernel zeroes every
// page it maps: on the machines measured that costs about as much as copying the tensor, more than
// decoding into it. So large outputs come from here: mapped once (transparent huge pages advised),
// handed to torch as a DLPack tensor (torch owns it; its deleter gives the memory back when the
// last tensor using it is gone), and reused for the next output of the same rounded size. Freed
// buffers are kept up to a byte limit (mx_output_cache_limit; cpu_backend.py sets it), oldest
// unmapped first. No Python or torch headers: the DLPack structs are plain C (dlpack.h, v0.8).
struct DLDevice {
    int32_t device_type;  // kDLCPU = 1
    int32_t device_id;
};
struct DLDataType {
    uint8_t code;  // kDLUInt = 1
    uint8_t bits;
    uint16_t lanes;
};
struct DLTensor {
    void* data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t* shape;
    int64_t* strides;
    uint64_t byte_offset;
};
struct DLManagedTensor {
    DLTensor dl_tensor;
    void* manager_ctx;
    void (*deleter)(DLManagedTensor*);
};

struct OutputBuffer {
    DLManagedTensor managed;  // first: the DLManagedTensor* is the OutputBuffer*
    int64_t shape[1];
    void* memory;
    size_t capacity;
    OutputBuffer* next;  // in the cache
};

constexpr size_t OUTPUT_ROUNDING = size_t(1) << 21;  // a huge page

#if defined(MX_HAVE_MMAP)
pthread_mutex_t g_output_lock = PTHREAD_MUTEX_INITIALIZER;
MX_INLINE void output_lock() { pthread_mutex_lock(&g_output_lock); }
MX_INLINE void output_unlock() { pthread_mutex_unlock(&g_output_lock); }
#else
MX_INLINE void output_lock() {}
MX_INLINE void output_unlock() {}
#endif
OutputBuffer* g_output_cache = nullptr;  // most recently freed first
size_t g_output_cached_bytes = 0;
size_t g_output_cache_limit = 0;

void* map_output(size_t capacity) {
#if defined(MX_HAVE_MMAP)
    void* p = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
#if defined(MADV_HUGEPAGE)
    madvise(p, capacity, MADV_HUGEPAGE);  // advisory
#endif
    return p;
#else
    return std::malloc(capacity);
#endif
}

void unmap_output(OutputBuffer* b) {
#if defined(MX_HAVE_MMAP)
    munmap(b->memory, b->capacity);
#else
    std::free(b->memory);
#endif
    std::free(b);
}

// Drop cached buffers, oldest first, until at most `keep` bytes stay cached (lock held).
void trim_output_cache(size_t keep) {
    while (g_output_cached_bytes > keep) {
        OutputBuffer** last = &g_output_cache;
        while ((*last)->next) last = &(*last)->next;
        OutputBuffer* b = *last;
        *last = nullptr;
        g_output_cached_bytes -= b->capacity;
        unmap_output(b);
    }
}

void release_output(DLManagedTensor* managed) {
    OutputBuffer* b = reinterpret_cast<OutputBuffer*>(managed);
    output_lock();
    if (b->capacity <= g_output_cache_limit) {
        b->next = g_output_cache;
        g_output_cache = b;
        g_output_cached_bytes += b->capacity;
        trim_output_cache(g_output_cache_limit);
        b = nullptr;
    }
    output_unlock();
    if (b) unmap_output(b);
}

#if defined(MX_HAVE_MMAP)
void output_atfork_prepare() { output_lock(); }
void output_atfork_release() { output_unlock(); }
// a child forked while another thread held the lock gets it unlocked (the holder does not exist there)
const int g_output_atfork = pthread_atfork(output_atfork_prepare, output_atfork_release, output_atfork_release);
#endif

}  // namespace

extern "C" {

// A 1-D uint8 DLPack tensor of nbytes on the CPU (see "recycled output buffers"), or null when no
// memory could be mapped. The caller hands it to torch (from_dlpack), which calls its deleter.
void* mx_output_alloc(int64_t nbytes) {
    if (nbytes <= 0) return nullptr;
    const size_t capacity = (size_t(nbytes) + OUTPUT_ROUNDING - 1) / OUTPUT_ROUNDING * OUTPUT_ROUNDING;
    OutputBuffer* b = nullptr;
    output_lock();
    for (OutputBuffer** it = &g_output_cache; *it; it = &(*it)->next) {
        if ((*it)->capacity == capacity) {
            b = *it;
            *it = b->next;
            g_output_cached_bytes -= capacity;
            break;
        }
    }
    output_unlock();
    if (!b) {
        b = static_cast<OutputBuffer*>(std::calloc(1, sizeof(OutputBuffer)));
        if (!b) return nullptr;
        b->memory = map_output(capacity);
        if (!b->memory) {
            output_lock();  // memory is short: give back what the cache holds, and try once more
            trim_output_cache(0);
            output_unlock();
            b->memory = map_output(capacity);
        }
        if (!b->memory) {
            std::free(b);
            return nullptr;
        }
        b->capacity = capacity;
    }
    b->next = nullptr;
    b->shape[0] = nbytes;
    DLTensor& t = b->managed.dl_tensor;
    t.data = b->memory;
    t.device = DLDevice{1, 0};
    t.ndim = 1;
    t.dtype = DLDataType{1, 8, 1};
    t.shape = b->shape;
    t.strides = nullptr;  // compact
    t.byte_offset = 0;
    b->managed.manager_ctx = b;
    b->managed.deleter = release_output;
    return &b->managed;
}

// Give back a tensor from mx_output_alloc that was never handed to torch.
void mx_output_free(void* managed) {
    if (managed) release_output(static_cast<DLManagedTensor*>(managed));
}

// Keep at most limit bytes of freed output buffers for reuse (0: none); returns the bytes cached.
int64_t mx_output_cache_limit(int64_t limit) {
    output_lock();
    g_output_cache_limit = limit > 0 ? size_t(limit) : 0;
    trim_output_cache(g_output_cache_limit);
    const int64_t cached = int64_t(g_output_cached_bytes);
    output_unlock();
    return cached;
}


int mx_abi_version() { return MX_ABI_VERSION; }

const char* mx_source_hash() { return MX_SOURCE_HASH; }

// The instruction set this library was compiled for ("avx2": AVX2 and F16C, else "baseline").
const char* mx_build_isa() {
#if defined(__AVX2__) && defined(__F16C__)
    return "avx2";
#else
    return "baseline";
#endif
}

int mx_format_size() { return int(sizeof(Format)); }

// Encode blocks [b0, b1). x: (rows, length) row-major of dtype dt; codes_out/scales_out: the
// whole outputs (this call writes its blocks' part); *clipped: how many of the blocks clipped
// (docs/semantics.md, "Range"). Returns 0, or -1 on bad arguments.
int mx_encode(const Format* f, int32_t dt, const void* x, int64_t length, int64_t bpr, int64_t b0, int64_t b1,
              float tensor_scale, uint64_t seed, uint8_t* codes_out, void* scales_out, int64_t* clipped) {
    if (f->block_size <= 0 || f->bits < 1 || f->bits > 16 || ((b0 * f->block_size * f->bits) % 8) != 0) return -1;
    *clipped = 0;
#if defined(MX_FAST_KERNELS)
    if (encode_fast(*f, dt, x, length, b0, b1, tensor_scale, codes_out, scales_out, clipped)) return 0;
#endif
    // + W: whole vectors may be written past the last valid code
    uint16_t* cbuf = static_cast<uint16_t*>(std::malloc(sizeof(uint16_t) * size_t(f->block_size + W)));
    if (!cbuf) return -2;
    if (f->rotate) {
        float* rot = static_cast<float*>(std::malloc(sizeof(float) * rot_buffer_floats(f->block_size)));
        if (!rot) {
            std::free(cbuf);
            return -2;
        }
#define MX_ENC_ROT(RND)                                                                                      \
    *clipped = encode_rotated_dispatch<RND>(*f, dt, x, length, bpr, b0, b1, tensor_scale, seed, codes_out, scales_out, \
                                            cbuf, rot)
        switch (f->rounding) {
            case RND_RNE: MX_ENC_ROT(RND_RNE); break;
            case RND_AWAY: MX_ENC_ROT(RND_AWAY); break;
            case RND_ZERO: MX_ENC_ROT(RND_ZERO); break;
            default: MX_ENC_ROT(RND_STOCHASTIC); break;
        }
#undef MX_ENC_ROT
        std::free(rot);
        std::free(cbuf);
        return 0;
    }
#define MX_ENC(DT, RND) \
    *clipped = encode_dispatch<DT, RND>(*f, x, length, bpr, b0, b1, tensor_scale, seed, codes_out, scales_out, cbuf)
#define MX_ENC_DT(DT)                          \
    switch (f->rounding) {                     \
        case RND_RNE: MX_ENC(DT, RND_RNE); break;   \
        case RND_AWAY: MX_ENC(DT, RND_AWAY); break; \
        case RND_ZERO: MX_ENC(DT, RND_ZERO); break; \
        default: MX_ENC(DT, RND_STOCHASTIC); break; \
    }
    switch (dt) {
        case DT_FP32: MX_ENC_DT(DT_FP32); break;
        case DT_BF16: MX_ENC_DT(DT_BF16); break;
        default: MX_ENC_DT(DT_FP16); break;
    }
#undef MX_ENC_DT
#undef MX_ENC
    std::free(cbuf);
    return 0;
}

// The float32 tensor scale of a two-level format from the tensor's finite amax (float32 bits):
// reference.tensor_scale_from_amax, S = amax / (max_normal * scale_max) rounded up onto the
// float32 grid, 1 for an all-zero tensor -- without a torch round trip (which costs more than
// encoding a small message).
float mx_tensor_scale(const Format* f, uint32_t amax_bits) {
    const float amax = u2f(amax_bits);
    if (!(amax > 0.0f)) return 1.0f;
    const double q = double(amax) / (f->max_normal * f->scale_max);
    return float(round_up_grid(q, 23, -126, double(std::numeric_limits<float>::max())));
}

// Per-block amax over the finite elements of blocks [b0, b1) as float32 bits; returns their max.
uint32_t mx_finite_amax(int32_t dt, const void* x, int64_t length, int64_t bpr, int32_t bs, int64_t b0, int64_t b1) {
#if defined(MX_FAST_KERNELS)
    if (bs > 0 && length % bs == 0) {  // whole blocks back to back: one contiguous range
        switch (dt) {
            case DT_FP32: return finite_amax_contiguous<DT_FP32>(x, b0 * bs, b1 * bs);
            case DT_BF16: return finite_amax_contiguous<DT_BF16>(x, b0 * bs, b1 * bs);
            default: return finite_amax_contiguous<DT_FP16>(x, b0 * bs, b1 * bs);
        }
    }
#endif
    BlockCursor cur(length, bpr, bs, b0);
    uint32_t best = 0;
    for (int64_t k = b0; k < b1; ++k, cur.next()) {
        uint32_t fin;
        switch (dt) {
            case DT_FP32: fin = any_block_amax<DT_FP32, true>(x, cur.offset(), cur.valid()); break;
            case DT_BF16: fin = any_block_amax<DT_BF16, true>(x, cur.offset(), cur.valid()); break;
            default: fin = any_block_amax<DT_FP16, true>(x, cur.offset(), cur.valid()); break;
        }
        best = fin > best ? fin : best;
    }
    return best;
}

// Per-block amax over the finite elements of the rotated blocks [b0, b1) of a rotated format (padding
// included) as float32 bits; returns their max (the tensor scale's amax).
uint32_t mx_rotated_finite_amax(const Format* f, int32_t dt, const void* x, int64_t length, int64_t bpr, int64_t b0,
                                int64_t b1) {
    const int32_t bs = f->block_size;
    float* rot = static_cast<float*>(std::malloc(sizeof(float) * size_t(bs + W)));
    if (!rot) return 0xFFFFFFFFu;  // not a finite amax: the caller reports the failure
    const RotationSigns signs(*f, bpr, b0, b1, false);
    BlockCursor cur(length, bpr, bs, b0);
    uint32_t best = 0;
    for (int64_t k = b0; k < b1; ++k, cur.next()) {
        rotate_natural(dt, x, cur.offset(), cur.valid(), bs, signs.block(cur.col), rot);
        const uint32_t fin = any_block_amax<DT_FP32, true>(rot, 0, bs);
        best = fin > best ? fin : best;
    }
    std::free(rot);
    return best;
}

// sum_p decode_fp32(part p) over blocks [b0, b1), accumulated in float32 in part order, stored
// as odt (saturating). table: float32 value of every element code.
int mx_decode(const Format* f, int32_t odt, int32_t nparts, const uint8_t* const* codes, const void* const* scales,
              const float* tensor_scales, const float* table, int64_t length, int64_t bpr, int64_t b0, int64_t b1,
              void* out) {
    if (f->block_size <= 0 || nparts < 1 || ((b0 * f->block_size * f->bits) % 8) != 0) return -1;
    const int64_t bs = f->block_size;
    // + W: whole vectors are read and written past the last valid element
    uint16_t* cbuf = static_cast<uint16_t*>(std::calloc(size_t(bs + W), sizeof(uint16_t)));
    float* acc = static_cast<float*>(std::calloc(size_t(bs + W), sizeof(float)));
    BitReader* readers = static_cast<BitReader*>(std::malloc(sizeof(BitReader) * size_t(nparts)));
    if (!cbuf || !acc || !readers) {
        std::free(cbuf);
        std::free(acc);
        std::free(readers);
        return -2;
    }
#define MX_DEC(RANGE, ODT) \
    RANGE<ODT>(*f, nparts, codes, scales, tensor_scales, table, length, bpr, b0, b1, out, cbuf, acc, readers)
#define MX_DEC_ODT(RANGE)                              \
    switch (odt) {                                     \
        case DT_FP32: MX_DEC(RANGE, DT_FP32); break;   \
        case DT_BF16: MX_DEC(RANGE, DT_BF16); break;   \
        default: MX_DEC(RANGE, DT_FP16); break;        \
    }
    if (f->rotate) {
        MX_DEC_ODT(decode_rotated_range);
#if defined(MX_FAST_KERNELS)
    } else if (decode_fast(*f, odt, nparts, codes, scales, tensor_scales, table, length, bpr, b0, b1, out, cbuf, acc,
                           readers)) {
#endif
    } else {
        MX_DEC_ODT(decode_range);
    }
#undef MX_DEC_ODT
#undef MX_DEC
    std::free(cbuf);
    std::free(acc);
    std::free(readers);
    return 0;
}

}  // extern "C"
