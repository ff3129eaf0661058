/* One-pass statistics of a block of float32/float64/float16/bfloat16 memory, for
 * graphviz_autograd.record.stats.
 *
 * NumPy or torch need 4-5 calls (and as many passes over the data) for the
 * statistics of one gradient: sum of squares, sum, min, max, non-zeros. Each
 * call costs 2-10 us before it reads anything, and a small model's recorded
 * step reduces dozens of tensors. This reads each element once, in one call.
 *
 * The caller (stats.py) passes the address of a dense block of `n` elements
 * that it keeps alive during the call: a CPU tensor's data_ptr(), checked to
 * be one block of memory. The GIL is released while reading.
 *
 * float32 is summed in float within blocks of BLOCK elements (8-wide vectors)
 * and the blocks in double: relative error ~1e-7 against a double sum. float16 and
 * bfloat16 elements are converted exactly to float (bit operations, no tables) and
 * summed like float32; a bfloat16 block whose squares left float's range is summed again in
 * double.
 * NaN and Inf are counted in a second pass, only when the sum of squares is not finite.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

#define BLOCK 4096

/* Element types, by the code stats.py passes (checked by valid_code). */
enum { DT_F32 = 0, DT_F64 = 1, DT_F16 = 2, DT_BF16 = 3 };
static const size_t ELEMENT_SIZE[] = {4, 8, 2, 2};

static int valid_code(int code) {
    if (code < DT_F32 || code > DT_BF16) {
        PyErr_Format(PyExc_ValueError, "bad dtype code %d: 0 float32, 1 float64, 2 float16, 3 bfloat16", code);
        return 0;
    }
    return 1;
}

/* Saturation is |y| > 0.99 or y < 0.01 for the exact value (compared in double). For float
 * values that is |y| >= 0.99f and y <= 0.01f: 0.99f lies just above 0.99, 0.01f just below 0.01,
 * and no float lies in between. */
#define SAT_HI 0.99f
#define SAT_LO 0.01f

typedef struct { double ss, s, lo, hi, nz; } grad_t;
typedef struct { double s, ss, nz, sat; } act_t;
enum { SAT_NONE = 0, SAT_TANH = 1, SAT_SIGMOID = 2 };

/* bfloat16 is the upper half of a float32: exact. */
static inline float load_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16; float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE half to float, exact, branch-free (masks, so it vectorises), and without float
 * subnormals on the way (so a denormals-are-zero mode cannot flush a half subnormal). */
static inline float load_f16(uint16_t h) {
    uint32_t em = h & 0x7fffu, sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t normal = (em << 13) + (112u << 23);            /* rebias the exponent: 127 - 15 */
    float sub = (float)(int32_t)em * 0x1p-24f;              /* zero and subnormals: em * 2^-24 */
    uint32_t subbits, is_sub = 0u - (uint32_t)(em < 0x400u), is_special = 0u - (uint32_t)(em >= 0x7c00u);
    float f;
    memcpy(&subbits, &sub, sizeof sub);
    /* Inf and NaN: exponent all ones, mantissa (NaN payload) kept */
    uint32_t bits = (subbits & is_sub) | ((normal | (is_special & 0x7f800000u)) & ~is_sub);
    bits |= sign;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float load_f32(float v) { return v; }

/* Summed in float within blocks (float16's range cannot overflow a block: 4096 * 65504^2 <
 * 2^38). bfloat16 has float32's range, so its squares can leave it: see bf16_in_double. */
#define GRAD_BLOCKED(NAME, T, LOAD, ACC)                                                    \
VECTOR_CLONES                                                                               \
static grad_t NAME(const T *x, Py_ssize_t n) {                                              \
    double ss = 0, s = 0; float lo = INFINITY, hi = -INFINITY; Py_ssize_t nz = 0;           \
    for (Py_ssize_t b = 0; b < n; b += BLOCK) {                                             \
        Py_ssize_t e = n - b < BLOCK ? n : b + BLOCK;                                       \
        ACC bss = 0, bs = 0; int bnz = 0;                                                   \
        _Pragma("omp simd reduction(+:bss,bs,bnz) reduction(min:lo) reduction(max:hi)")     \
        for (Py_ssize_t i = b; i < e; i++) {                                                \
            float v = LOAD(x[i]); ACC w = (ACC)v;                                           \
            bss += w * w; bs += w; bnz += (v != 0.0f);                                      \
            lo = v < lo ? v : lo; hi = v > hi ? v : hi;                                     \
        }                                                                                   \
        ss += bss; s += bs; nz += bnz;                                                      \
    }                                                                                       \
    grad_t r = {ss, s, lo, hi, (double)nz};                                                 \
    return r;                                                                               \
}

GRAD_BLOCKED(grad_f32, float, load_f32, float)
GRAD_BLOCKED(grad_f16, uint16_t, load_f16, float)
GRAD_BLOCKED(grad_bf16, uint16_t, load_bf16, float)
GRAD_BLOCKED(grad_bf16_double, uint16_t, load_bf16, double)

/* Whether a bfloat16 pass summed in float must be redone in double: a sum or sum of squares
 * that overflowed float (|x| > ~1.8e19), or squares so small that some fell below float's
 * normal range (each lost square is < 2^-126, n of them < 2^-24 of a sum >= n * 2^-102). */
static int bf16_in_double(double ss, double s, int nonzero, Py_ssize_t n) {
    return !isfinite(ss) || !isfinite(s) || (nonzero && ss < (double)n * 0x1p-102);
}

VECTOR_CLONES
static grad_t grad_f64(const double *x, Py_ssize_t n) {
    double ss = 0, s = 0, lo = INFINITY, hi = -INFINITY; Py_ssize_t nz = 0;
    #pragma omp simd reduction(+:ss,s,nz) reduction(min:lo) reduction(max:hi)
    for (Py_ssize_t i = 0; i < n; i++) {
        double v = x[i];
        ss += v * v; s += v; nz += (v != 0.0);
        lo = v < lo ? v : lo; hi = v > hi ? v : hi;
    }
    grad_t r = {ss, s, lo, hi, (double)nz};
    return r;
}

/* Elements 0, stride, 2*stride, ... below n, in double. */
#define ACT_STRIDED(NAME, T, LOAD)                                                          \
static act_t NAME(const T *x, Py_ssize_t n, Py_ssize_t stride, int kind) {                  \
    double s = 0, ss = 0; Py_ssize_t nz = 0, sat = 0;                                       \
    for (Py_ssize_t i = 0; i < n; i += stride) {                                            \
        float f = LOAD(x[i]); double v = (double)f;                                         \
        s += v; ss += v * v; nz += (v != 0.0);                                              \
        if (kind == SAT_TANH) sat += fabsf(f) >= SAT_HI;                                    \
        else if (kind == SAT_SIGMOID) sat += (f <= SAT_LO) | (f >= SAT_HI);                 \
    }                                                                                       \
    act_t r = {s, ss, (double)nz, (double)sat};                                             \
    return r;                                                                               \
}

ACT_STRIDED(act_strided_f32, float, load_f32)
ACT_STRIDED(act_strided_f16, uint16_t, load_f16)
ACT_STRIDED(act_strided_bf16, uint16_t, load_bf16)

static act_t act_strided_f64(const double *x, Py_ssize_t n, Py_ssize_t stride, int kind) {
    double s = 0, ss = 0; Py_ssize_t nz = 0, sat = 0;
    for (Py_ssize_t i = 0; i < n; i += stride) {
        double v = x[i];
        s += v; ss += v * v; nz += (v != 0.0);
        if (kind == SAT_TANH) sat += fabs(v) > 0.99;
        else if (kind == SAT_SIGMOID) sat += (v < 0.01) | (v > 0.99);
    }
    act_t r = {s, ss, (double)nz, (double)sat};
    return r;
}

#define ACT_LOOP(T, LOAD, ACC, SAT)                                                         \
    _Pragma("omp simd reduction(+:bs,bss,bnz,bsat)")                                        \
    for (Py_ssize_t i = b; i < e; i++) {                                                    \
        float v = LOAD(x[i]); ACC w = (ACC)v;                                               \
        bs += w; bss += w * w; bnz += (v != 0.0f); bsat += SAT;                             \
    }

#define ACT_BLOCKED(NAME, T, LOAD, ACC)                                                     \
VECTOR_CLONES                                                                               \
static act_t NAME(const T *x, Py_ssize_t n, int kind) {                                     \
    double s = 0, ss = 0; Py_ssize_t nz = 0, sat = 0;                                       \
    for (Py_ssize_t b = 0; b < n; b += BLOCK) {                                             \
        Py_ssize_t e = n - b < BLOCK ? n : b + BLOCK;                                       \
        ACC bs = 0, bss = 0; int bnz = 0, bsat = 0;                                         \
        if (kind == SAT_TANH) { ACT_LOOP(T, LOAD, ACC, fabsf(v) >= SAT_HI) }                \
        else if (kind == SAT_SIGMOID) { ACT_LOOP(T, LOAD, ACC, (v <= SAT_LO) | (v >= SAT_HI)) } \
        else { ACT_LOOP(T, LOAD, ACC, 0) }                                                  \
        s += bs; ss += bss; nz += bnz; sat += bsat;                                         \
    }                                                                                       \
    act_t r = {s, ss, (double)nz, (double)sat};                                             \
    return r;                                                                               \
}

ACT_BLOCKED(act_f32, float, load_f32, float)
ACT_BLOCKED(act_f16, uint16_t, load_f16, float)
ACT_BLOCKED(act_bf16, uint16_t, load_bf16, float)
ACT_BLOCKED(act_bf16_double, uint16_t, load_bf16, double)

/* ||a - b||^2 and ||b||^2 in one pass. */
#define DIFF_BLOCKED(NAME, T, LOAD, ACC)                                                    \
VECTOR_CLONES                                                                               \
static void NAME(const T *a, const T *b, Py_ssize_t n, double *dd, double *bb) {            \
    double d2 = 0, b2 = 0;                                                                  \
    for (Py_ssize_t k = 0; k < n; k += BLOCK) {                                             \
        Py_ssize_t e = n - k < BLOCK ? n : k + BLOCK;                                       \
        ACC bd = 0, bn = 0;                                                                 \
        _Pragma("omp simd reduction(+:bd,bn)")                                              \
        for (Py_ssize_t i = k; i < e; i++) {                                                \
            float y = LOAD(b[i]); ACC d = (ACC)(LOAD(a[i]) - y), w = (ACC)y;                \
            bd += d * d; bn += w * w;                                                       \
        }                                                                                   \
        d2 += bd; b2 += bn;                                                                 \
    }                                                                                       \
    *dd = d2; *bb = b2;                                                                     \
}

DIFF_BLOCKED(diff_f32, float, load_f32, float)
DIFF_BLOCKED(diff_f16, uint16_t, load_f16, float)
DIFF_BLOCKED(diff_bf16, uint16_t, load_bf16, double)

VECTOR_CLONES
static void diff_f64(const double *a, const double *b, Py_ssize_t n, double *dd, double *bb) {
    double d2 = 0, b2 = 0;
    #pragma omp simd reduction(+:d2,b2)
    for (Py_ssize_t i = 0; i < n; i++) {
        double d = a[i] - b[i];
        d2 += d * d; b2 += b[i] * b[i];
    }
    *dd = d2; *bb = b2;
}

/* NaN and Inf counted on the bits: exponent all ones, then mantissa zero (Inf) or not (NaN). */
static void count_nan_inf(const void *p, Py_ssize_t n, int code, Py_ssize_t *nan, Py_ssize_t *inf) {
    Py_ssize_t a = 0, b = 0;
    if (code == DT_F16 || code == DT_BF16) {
        const uint16_t *x = (const uint16_t *)p;
        uint16_t exp = code == DT_F16 ? 0x7c00u : 0x7f80u, man = code == DT_F16 ? 0x03ffu : 0x007fu;
        for (Py_ssize_t i = 0; i < n; i++) {
            int special = (x[i] & exp) == exp, has_man = (x[i] & man) != 0;
            a += special & has_man; b += special & !has_man;
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            double v = code == DT_F64 ? ((const double *)p)[i] : ((const float *)p)[i];
            a += isnan(v) != 0; b += isinf(v) != 0;
        }
    }
    *nan = a; *inf = b;
}

static grad_t grad_any(const void *p, Py_ssize_t n, int code) {
    switch (code) {
    case DT_F64: return grad_f64((const double *)p, n);
    case DT_F16: return grad_f16((const uint16_t *)p, n);
    case DT_BF16: {
        grad_t r = grad_bf16((const uint16_t *)p, n);
        if (bf16_in_double(r.ss, r.s, r.lo != 0 || r.hi != 0, n)) r = grad_bf16_double((const uint16_t *)p, n);
        return r;
    }
    default: return grad_f32((const float *)p, n);
    }
}

/* The gradient row of stats.py: (sum of squares, sum, |max|, non-zeros, NaNs, Infs, n).
 * NaN and Inf are counted only when the sum of squares is not finite; |max| is NaN
 * when there is a NaN (min/max are not reliable then). */
static PyObject *grad(PyObject *self, PyObject *args) {
    unsigned long long addr; Py_ssize_t n, nan = 0, inf = 0; int code; grad_t r;
    if (!PyArg_ParseTuple(args, "Kni", &addr, &n, &code) || !valid_code(code)) return NULL;
    if (n < 0 || (addr == 0 && n > 0)) {
        PyErr_Format(PyExc_ValueError, "bad block: address %llu, %zd elements", addr, n);
        return NULL;
    }
    const void *p = (const void *)(uintptr_t)addr;
    Py_BEGIN_ALLOW_THREADS
    r = grad_any(p, n, code);
    if (!isfinite(r.ss)) count_nan_inf(p, n, code, &nan, &inf);
    Py_END_ALLOW_THREADS
    double absmax = nan ? NAN : (-r.lo > r.hi ? -r.lo : r.hi);
    return Py_BuildValue("(ddddddd)", r.ss, r.s, absmax, r.nz, (double)nan, (double)inf, (double)n);
}

static act_t act_any(const void *p, Py_ssize_t n, Py_ssize_t stride, int code, int kind) {
    if (stride == 1) {
        switch (code) {
        case DT_F32: return act_f32((const float *)p, n, kind);
        case DT_F16: return act_f16((const uint16_t *)p, n, kind);
        case DT_BF16: {
            act_t r = act_bf16((const uint16_t *)p, n, kind);
            if (bf16_in_double(r.ss, r.s, r.nz > 0, n)) r = act_bf16_double((const uint16_t *)p, n, kind);
            return r;
        }
        default: break;
        }
    }
    switch (code) {
    case DT_F64: return act_strided_f64((const double *)p, n, stride, kind);
    case DT_F16: return act_strided_f16((const uint16_t *)p, n, stride, kind);
    case DT_BF16: return act_strided_bf16((const uint16_t *)p, n, stride, kind);
    default: return act_strided_f32((const float *)p, n, stride, kind);
    }
}

/* The activation row of stats.py: (sum, sum of squares, non-zeros, saturated or -1, n),
 * estimated from elements 0, stride, 2*stride, ... (scaled up to n). */
static PyObject *act(PyObject *self, PyObject *args) {
    unsigned long long addr; Py_ssize_t n, stride; int code, kind; act_t r;
    if (!PyArg_ParseTuple(args, "Knnii", &addr, &n, &stride, &code, &kind) || !valid_code(code))
        return NULL;
    if (n < 0 || stride < 1 || (addr == 0 && n > 0) || kind < SAT_NONE || kind > SAT_SIGMOID) {
        PyErr_Format(PyExc_ValueError, "bad block: address %llu, %zd elements, stride %zd, kind %d",
                     addr, n, stride, kind);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    r = act_any((const void *)(uintptr_t)addr, n, stride, code, kind);
    Py_END_ALLOW_THREADS
    Py_ssize_t seen = n ? (n - 1) / stride + 1 : 0;
    double scale = seen ? (double)n / (double)seen : 0.0;
    return Py_BuildValue("(ddddd)", r.s * scale, r.ss * scale, r.nz * scale,
                         kind == SAT_NONE ? -1.0 : r.sat * scale, (double)n);
}

/* pairs: a list of (address_a, address_b, n, dtype code) tuples (the update buffer and the
 * parameter, the same memory layout). */
static int parse_pair(PyObject *pairs, Py_ssize_t i, char **a, char **b, Py_ssize_t *n, int *code) {
    unsigned long long x, y;
    PyObject *item = PyList_GET_ITEM(pairs, i);
    if (!PyArg_ParseTuple(item, "KKni", &x, &y, n, code) || !valid_code(*code)) return 0;
    if (*n < 0 || ((x == 0 || y == 0) && *n > 0)) {
        PyErr_Format(PyExc_ValueError, "bad pair %zd: addresses %llu, %llu, %zd elements", i, x, y, *n);
        return 0;
    }
    *a = (char *)(uintptr_t)x; *b = (char *)(uintptr_t)y;
    return 1;
}

static void diff_any(const char *a, const char *b, Py_ssize_t n, int code, double *dd, double *bb) {
    switch (code) {
    case DT_F64: diff_f64((const double *)a, (const double *)b, n, dd, bb); break;
    case DT_F16: diff_f16((const uint16_t *)a, (const uint16_t *)b, n, dd, bb); break;
    case DT_BF16: diff_bf16((const uint16_t *)a, (const uint16_t *)b, n, dd, bb); break;
    default: diff_f32((const float *)a, (const float *)b, n, dd, bb);
    }
}

static PyObject *diff_many(PyObject *self, PyObject *args) {
    PyObject *pairs;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &pairs)) return NULL;
    Py_ssize_t k = PyList_GET_SIZE(pairs);
    PyObject *out = PyList_New(k);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < k; i++) {
        char *a, *b; Py_ssize_t n; int code; double dd, bb;
        if (!parse_pair(pairs, i, &a, &b, &n, &code)) { Py_DECREF(out); return NULL; }
        diff_any(a, b, n, code, &dd, &bb);
        PyObject *row = Py_BuildValue("(dd)", dd, bb);
        if (row == NULL) { Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(out, i, row);
    }
    return out;
}

static PyObject *copy_many(PyObject *self, PyObject *args) {
    PyObject *pairs;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &pairs)) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pairs); i++) {
        char *a, *b; Py_ssize_t n; int code;
        if (!parse_pair(pairs, i, &a, &b, &n, &code)) return NULL;
        memmove(a, b, (size_t)n * ELEMENT_SIZE[code]);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"grad", grad, METH_VARARGS,
     "grad(address, n, dtype) -> (sum of squares, sum, |max|, non-zeros, NaNs, Infs, n); "
     "dtype 0 float32, 1 float64, 2 float16, 3 bfloat16"},
    {"act", act, METH_VARARGS,
     "act(address, n, stride, dtype, kind) -> (sum, sum of squares, non-zeros, saturated, n) "
     "from elements 0, stride, 2*stride, ... scaled up to n; kind 0 none (saturated: -1), "
     "1 tanh (|y| > 0.99), 2 sigmoid (y < 0.01 or y > 0.99)"},
    {"diff_many", diff_many, METH_VARARGS,
     "diff_many([(address_a, address_b, n, dtype), ...]) -> [(||a - b||^2, ||b||^2), ...]"},
    {"copy_many", copy_many, METH_VARARGS,
     "copy_many([(address_dst, address_src, n, dtype), ...]): dst[:n] = src[:n] for each"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_reduce",
                                    "One-pass statistics of float32/float64/float16/bfloat16 memory blocks.", -1, methods};

PyMODINIT_FUNC PyInit__reduce(void) { return PyModule_Create(&module); }
