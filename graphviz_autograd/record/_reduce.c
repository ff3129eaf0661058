/* One-pass statistics of a block of float32/float64 memory, for graphviz_autograd.record.stats.
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
 * and the blocks in double: relative error ~1e-7 against a double sum.
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

typedef struct { double ss, s, lo, hi, nz; } grad_t;
typedef struct { double s, ss, nz, sat; } act_t;
enum { SAT_NONE = 0, SAT_TANH = 1, SAT_SIGMOID = 2 };

VECTOR_CLONES
static grad_t grad_f32(const float *x, Py_ssize_t n) {
    double ss = 0, s = 0; float lo = INFINITY, hi = -INFINITY; Py_ssize_t nz = 0;
    for (Py_ssize_t b = 0; b < n; b += BLOCK) {
        Py_ssize_t e = n - b < BLOCK ? n : b + BLOCK;
        float bss = 0, bs = 0; int bnz = 0;
        #pragma omp simd reduction(+:bss,bs,bnz) reduction(min:lo) reduction(max:hi)
        for (Py_ssize_t i = b; i < e; i++) {
            float v = x[i];
            bss += v * v; bs += v; bnz += (v != 0.0f);
            lo = v < lo ? v : lo; hi = v > hi ? v : hi;
        }
        ss += bss; s += bs; nz += bnz;
    }
    grad_t r = {ss, s, lo, hi, (double)nz};
    return r;
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

/* Elements 0, stride, 2*stride, ... below n. */
#define ACT_BODY                                                                      \
    double s = 0, ss = 0; Py_ssize_t nz = 0, sat = 0;                                 \
    for (Py_ssize_t i = 0; i < n; i += stride) {                                      \
        double v = (double)x[i];                                                      \
        s += v; ss += v * v; nz += (v != 0.0);                                         \
        if (kind == SAT_TANH) sat += fabs(v) > 0.99;                                  \
        else if (kind == SAT_SIGMOID) sat += (v < 0.01) | (v > 0.99);                 \
    }                                                                                 \
    act_t r = {s, ss, (double)nz, (double)sat};                                       \
    return r;

static act_t act_strided_f32(const float *x, Py_ssize_t n, Py_ssize_t stride, int kind) { ACT_BODY }
static act_t act_strided_f64(const double *x, Py_ssize_t n, Py_ssize_t stride, int kind) { ACT_BODY }

VECTOR_CLONES
static act_t act_f32(const float *x, Py_ssize_t n, int kind) {
    double s = 0, ss = 0; Py_ssize_t nz = 0, sat = 0;
    for (Py_ssize_t b = 0; b < n; b += BLOCK) {
        Py_ssize_t e = n - b < BLOCK ? n : b + BLOCK;
        float bs = 0, bss = 0; int bnz = 0, bsat = 0;
        if (kind == SAT_TANH) {
            #pragma omp simd reduction(+:bs,bss,bnz,bsat)
            for (Py_ssize_t i = b; i < e; i++) {
                float v = x[i];
                bs += v; bss += v * v; bnz += (v != 0.0f); bsat += fabsf(v) > 0.99f;
            }
        } else if (kind == SAT_SIGMOID) {
            #pragma omp simd reduction(+:bs,bss,bnz,bsat)
            for (Py_ssize_t i = b; i < e; i++) {
                float v = x[i];
                bs += v; bss += v * v; bnz += (v != 0.0f); bsat += (v < 0.01f) | (v > 0.99f);
            }
        } else {
            #pragma omp simd reduction(+:bs,bss,bnz)
            for (Py_ssize_t i = b; i < e; i++) {
                float v = x[i];
                bs += v; bss += v * v; bnz += (v != 0.0f);
            }
        }
        s += bs; ss += bss; nz += bnz; sat += bsat;
    }
    act_t r = {s, ss, (double)nz, (double)sat};
    return r;
}

/* ||a - b||^2 and ||b||^2 in one pass. */
VECTOR_CLONES
static void diff_f32(const float *a, const float *b, Py_ssize_t n, double *dd, double *bb) {
    double d2 = 0, b2 = 0;
    for (Py_ssize_t k = 0; k < n; k += BLOCK) {
        Py_ssize_t e = n - k < BLOCK ? n : k + BLOCK;
        float bd = 0, bn = 0;
        #pragma omp simd reduction(+:bd,bn)
        for (Py_ssize_t i = k; i < e; i++) {
            float d = a[i] - b[i];
            bd += d * d; bn += b[i] * b[i];
        }
        d2 += bd; b2 += bn;
    }
    *dd = d2; *bb = b2;
}

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

static int parse_block(PyObject *args, const char *fmt, unsigned long long *addr,
                       Py_ssize_t *n, int *dbl) {
    if (!PyArg_ParseTuple(args, fmt, addr, n, dbl)) return 0;
    if (*n < 0 || (*addr == 0 && *n > 0)) {
        PyErr_Format(PyExc_ValueError, "bad block: address %llu, %zd elements", *addr, *n);
        return 0;
    }
    return 1;
}

static void count_nan_inf(const void *p, Py_ssize_t n, int dbl, Py_ssize_t *nan, Py_ssize_t *inf) {
    Py_ssize_t a = 0, b = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double v = dbl ? ((const double *)p)[i] : ((const float *)p)[i];
        a += isnan(v) != 0; b += isinf(v) != 0;
    }
    *nan = a; *inf = b;
}

/* The gradient row of stats.py: (sum of squares, sum, |max|, non-zeros, NaNs, Infs, n).
 * NaN and Inf are counted only when the sum of squares is not finite; |max| is NaN
 * when there is a NaN (min/max are not reliable then). */
static PyObject *grad(PyObject *self, PyObject *args) {
    unsigned long long addr; Py_ssize_t n, nan = 0, inf = 0; int dbl; grad_t r;
    if (!parse_block(args, "Knp", &addr, &n, &dbl)) return NULL;
    const void *p = (const void *)(uintptr_t)addr;
    Py_BEGIN_ALLOW_THREADS
    r = dbl ? grad_f64((const double *)p, n) : grad_f32((const float *)p, n);
    if (!isfinite(r.ss)) count_nan_inf(p, n, dbl, &nan, &inf);
    Py_END_ALLOW_THREADS
    double absmax = nan ? NAN : (-r.lo > r.hi ? -r.lo : r.hi);
    return Py_BuildValue("(ddddddd)", r.ss, r.s, absmax, r.nz, (double)nan, (double)inf, (double)n);
}

/* The activation row of stats.py: (sum, sum of squares, non-zeros, saturated or -1, n),
 * estimated from elements 0, stride, 2*stride, ... (scaled up to n). */
static PyObject *act(PyObject *self, PyObject *args) {
    unsigned long long addr; Py_ssize_t n, stride; int dbl, kind; act_t r;
    if (!PyArg_ParseTuple(args, "Knnpi", &addr, &n, &stride, &dbl, &kind)) return NULL;
    if (n < 0 || stride < 1 || (addr == 0 && n > 0) || kind < SAT_NONE || kind > SAT_SIGMOID) {
        PyErr_Format(PyExc_ValueError, "bad block: address %llu, %zd elements, stride %zd, kind %d",
                     addr, n, stride, kind);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (stride == 1 && !dbl) r = act_f32((const float *)(uintptr_t)addr, n, kind);
    else if (dbl) r = act_strided_f64((const double *)(uintptr_t)addr, n, stride, kind);
    else r = act_strided_f32((const float *)(uintptr_t)addr, n, stride, kind);
    Py_END_ALLOW_THREADS
    Py_ssize_t seen = n ? (n - 1) / stride + 1 : 0;
    double scale = seen ? (double)n / (double)seen : 0.0;
    return Py_BuildValue("(ddddd)", r.s * scale, r.ss * scale, r.nz * scale,
                         kind == SAT_NONE ? -1.0 : r.sat * scale, (double)n);
}

/* pairs: a list of (address_a, address_b, n, is_double) tuples (the update buffer and the
 * parameter, the same memory layout). */
static int parse_pair(PyObject *pairs, Py_ssize_t i, char **a, char **b, Py_ssize_t *n, int *dbl) {
    unsigned long long x, y;
    PyObject *item = PyList_GET_ITEM(pairs, i);
    if (!PyArg_ParseTuple(item, "KKnp", &x, &y, n, dbl)) return 0;
    if (*n < 0 || ((x == 0 || y == 0) && *n > 0)) {
        PyErr_Format(PyExc_ValueError, "bad pair %zd: addresses %llu, %llu, %zd elements", i, x, y, *n);
        return 0;
    }
    *a = (char *)(uintptr_t)x; *b = (char *)(uintptr_t)y;
    return 1;
}

static PyObject *diff_many(PyObject *self, PyObject *args) {
    PyObject *pairs;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &pairs)) return NULL;
    Py_ssize_t k = PyList_GET_SIZE(pairs);
    PyObject *out = PyList_New(k);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < k; i++) {
        char *a, *b; Py_ssize_t n; int dbl; double dd, bb;
        if (!parse_pair(pairs, i, &a, &b, &n, &dbl)) { Py_DECREF(out); return NULL; }
        if (dbl) diff_f64((const double *)a, (const double *)b, n, &dd, &bb);
        else diff_f32((const float *)a, (const float *)b, n, &dd, &bb);
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
        char *a, *b; Py_ssize_t n; int dbl;
        if (!parse_pair(pairs, i, &a, &b, &n, &dbl)) return NULL;
        memmove(a, b, (size_t)n * (dbl ? 8 : 4));
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"grad", grad, METH_VARARGS,
     "grad(address, n, is_double) -> (sum of squares, sum, |max|, non-zeros, NaNs, Infs, n)"},
    {"act", act, METH_VARARGS,
     "act(address, n, stride, is_double, kind) -> (sum, sum of squares, non-zeros, saturated, n) "
     "from elements 0, stride, 2*stride, ... scaled up to n; kind 0 none (saturated: -1), "
     "1 tanh (|y| > 0.99), 2 sigmoid (y < 0.01 or y > 0.99)"},
    {"diff_many", diff_many, METH_VARARGS,
     "diff_many([(address_a, address_b, n, is_double), ...]) -> [(||a - b||^2, ||b||^2), ...]"},
    {"copy_many", copy_many, METH_VARARGS,
     "copy_many([(address_dst, address_src, n, is_double), ...]): dst[:n] = src[:n] for each"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_reduce",
                                    "One-pass statistics of float32/float64 memory blocks.", -1, methods};

PyMODINIT_FUNC PyInit__reduce(void) { return PyModule_Create(&module); }
