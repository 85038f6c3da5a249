/* dcim.drivers.modbus._float32: the decode plan's shortest float32 digits, for a group of values at once.
 *
 * `shortest_float32s(raws, indexes, out, texts)` does what decodeplan.py's `_shortest_float32s` does, and
 * `shortest_float32(raw)` what its `_shortest_float32` does (for a float32 point read with others), with
 * the same tries in the same order, through the same functions Python's own `"%.7g" % value` and
 * `float(text)` call (PyOS_double_to_string, PyOS_string_to_double); the cast to float rounds to nearest
 * even as struct.pack(">f") does. So each value and text is the one the Python code gives, by construction;
 * tests/drivers/test_modbus_decodeplan.py compares the two.
 *
 * For each finite float32 value raws[i] (a float64 holding it, as struct.unpack gives), out[indexes[i]] is
 * the first of its roundings to 7, then 6 (where 6 can be the same float32 as well), 8 and 9 significant
 * digits that is the same float32, and texts[indexes[i]] the line protocol's text of it (its repr: "230.1",
 * "230.0"), left as it is where the digits take an exponent. A value that is not finite goes into `out` as
 * it is, with no text (the plan does not call it with one).
 *
 * Why C: in Python the tries cost about 0.6 us a meter value (13 us a poll of 20, the largest single cost of
 * a poll); here about 0.2 us. The module is optional: setup.py builds it where a C compiler and Python's
 * headers are found, and the plan falls back to the Python code where it is missing. */
#define PY_SSIZE_T_CLEAN
/* The stable ABI of Python 3.11 (as setup.py builds it): one wheel for every CPython from 3.11 on. */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030B0000
#endif
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The smallest positive normal float32: below it float32 values are evenly spaced (2 ** -149 apart). */
static const double F32_MIN_NORMAL = 1.17549435082228750797e-38;

/* Whether `candidate` is `bits` once rounded to float32 (what `struct.pack(">f", candidate) == data` says;
 * a candidate past the float32 range is not, where struct.pack would raise). */
static inline int same_float32(double candidate, uint32_t bits) {
    float rounded = (float)candidate;
    uint32_t got;
    memcpy(&got, &rounded, sizeof got);
    return got == bits;
}

/* `"%.{digits}g" % value` (a PyMem buffer the caller frees), and `float()` of it into *candidate.
 * NULL with an exception set on failure (out of memory). */
static char *rounded(double value, int digits, double *candidate) {
    char *text = PyOS_double_to_string(value, 'g', digits, 0, NULL);
    if (text == NULL) {
        return NULL;
    }
    *candidate = PyOS_string_to_double(text, NULL, NULL);
    if (*candidate == -1.0 && PyErr_Occurred()) {
        PyMem_Free(text);
        return NULL;
    }
    return text;
}

/* The shortest digits of one finite value: the text (a PyMem buffer, or NULL with *value the raw value
 * itself, which is not reached: 9 digits are always the same float32) and its value. -1 on failure. */
static int shortest(double raw, char **text, double *value) {
    float narrow = (float)raw;
    uint32_t bits;
    memcpy(&bits, &narrow, sizeof bits);
    *text = rounded(raw, 7, value);
    if (*text == NULL) {
        return -1;
    }
    if (same_float32(*value, bits)) {
        /* As decodeplan.py's `_shortest_float32` says why: where 7 digits are the same float32, 6 can be as
         * well only if the text is longer than 6 characters and does not start with a digit from 1 to 7, or
         * the value is below the smallest normal float32. */
        if (strlen(*text) > 6 && !((*text)[0] >= '1' && (*text)[0] <= '7' && raw >= F32_MIN_NORMAL)) {
            double shorter;
            char *six = rounded(raw, 6, &shorter);
            if (six == NULL) {
                PyMem_Free(*text);
                return -1;
            }
            if (same_float32(shorter, bits)) {
                PyMem_Free(*text);
                *text = six;
                *value = shorter;
            } else {
                PyMem_Free(six);
            }
        }
        return 0;
    }
    for (int digits = 8; digits <= 9; digits++) {
        PyMem_Free(*text);
        *text = rounded(raw, digits, value);
        if (*text == NULL) {
            return -1;
        }
        if (same_float32(*value, bits)) {
            return 0;
        }
    }
    PyMem_Free(*text);
    *text = NULL;
    *value = raw;
    return 0;
}

/* The line protocol's text of the digits (their repr): "" (None here) with an exponent, ".0" added to an
 * integer. A new reference, NULL with an exception set on failure; *none set when there is no text. */
static PyObject *line_text(const char *text, int *none) {
    *none = 0;
    if (text == NULL || strchr(text, 'e') != NULL) {
        *none = 1;
        return NULL;
    }
    if (strchr(text, '.') != NULL) {
        return PyUnicode_FromString(text);
    }
    return PyUnicode_FromFormat("%s.0", text);
}

static PyObject *shortest_float32s(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "shortest_float32s() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *raws = args[0], *indexes = args[1], *out = args[2], *texts = args[3];
    if (!PyTuple_Check(raws) || !PyTuple_Check(indexes) || !PyList_Check(out) || !PyList_Check(texts)) {
        PyErr_SetString(PyExc_TypeError, "shortest_float32s(raws: tuple, indexes: tuple, out: list, texts: list)");
        return NULL;
    }
    Py_ssize_t count = PyTuple_Size(raws);
    if (PyTuple_Size(indexes) != count) {
        PyErr_SetString(PyExc_ValueError, "shortest_float32s: raws and indexes differ in length");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        double raw = PyFloat_AsDouble(PyTuple_GetItem(raws, i));
        if (raw == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        Py_ssize_t index = PyLong_AsSsize_t(PyTuple_GetItem(indexes, i));
        if (index == -1 && PyErr_Occurred()) {
            return NULL;
        }
        /* Bounds first, so that nothing is computed or half-written for an index out of range (the lists'
         * sizes are asked each time: a raw that is not a float can run Python code in its __float__). */
        if (index < 0 || index >= PyList_Size(out) || index >= PyList_Size(texts)) {
            PyErr_SetString(PyExc_IndexError, "shortest_float32s: index out of range");
            return NULL;
        }
        char *text = NULL;
        double value = raw;
        if (isfinite(raw) && shortest(raw, &text, &value) < 0) {
            return NULL;
        }
        int none;
        PyObject *line = line_text(text, &none);
        PyMem_Free(text);
        if (line == NULL && !none) {
            return NULL;
        }
        PyObject *number = PyFloat_FromDouble(value);
        if (number == NULL) {
            Py_XDECREF(line);
            return NULL;
        }
        /* Each steals its item, also when it fails (it cannot here: the index is in range). */
        if (PyList_SetItem(out, index, number) < 0) {
            Py_XDECREF(line);
            return NULL;
        }
        if (line != NULL && PyList_SetItem(texts, index, line) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* shortest_float32(raw): the same for one value (decodeplan's `_shortest_float32`: the value only); a value
 * that is not finite is returned as it is. */
static PyObject *shortest_float32(PyObject *module, PyObject *arg) {
    (void)module;
    double raw = PyFloat_AsDouble(arg);
    if (raw == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    char *text = NULL;
    double value = raw;
    if (isfinite(raw) && shortest(raw, &text, &value) < 0) {
        return NULL;
    }
    PyMem_Free(text);
    return PyFloat_FromDouble(value);
}

static PyMethodDef methods[] = {
    {"shortest_float32", shortest_float32, METH_O,
     "shortest_float32(raw): decodeplan._shortest_float32, in C."},
    {"shortest_float32s", (PyCFunction)(void (*)(void))shortest_float32s, METH_FASTCALL,
     "shortest_float32s(raws, indexes, out, texts): decodeplan._shortest_float32s, in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_float32", "The decode plan's shortest float32 digits, in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__float32(void) {
    return PyModule_Create(&module);
}
