/* core._fsbatch: a receipt slice's system calls made with the GIL released once (why, and
   the Python calls made where this is not built: core/batchfs.py). Each file's outcome is
   its own errno; nothing here decides what an error means. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* The list of `n` errno values (a new reference; NULL with an exception set). */
static PyObject *errno_list(const int *err, Py_ssize_t n) {
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromLong(err[i]);
        if (v == NULL) { Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

/* stage_many(paths, datas, mode, chmod) -> list of errno (0: written). Each path created
   (O_EXCL, O_CLOEXEC) with `mode`, fchmod'ed to it when `chmod` (the umask took bits off),
   filled with its data and closed; one that fails is removed. Nothing is fsynced. */
static PyObject *stage_many(PyObject *self, PyObject *args) {
    PyObject *paths, *datas; int mode, need_chmod;
    if (!PyArg_ParseTuple(args, "O!O!ip", &PyList_Type, &paths, &PyList_Type, &datas, &mode, &need_chmod)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paths);
    if (PyList_GET_SIZE(datas) != n) { PyErr_SetString(PyExc_ValueError, "paths and datas differ in length"); return NULL; }
    PyObject **enc = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    PyObject **held = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));  /* the data, kept while the GIL is released */
    const char **cp = PyMem_Calloc(n ? n : 1, sizeof(char *));
    const char **dp = PyMem_Calloc(n ? n : 1, sizeof(char *));
    Py_ssize_t *dl = PyMem_Calloc(n ? n : 1, sizeof(Py_ssize_t));
    int *err = PyMem_Calloc(n ? n : 1, sizeof(int));
    PyObject *out = NULL;
    if (!enc || !held || !cp || !dp || !dl || !err) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_FSConverter(PyList_GET_ITEM(paths, i), &enc[i])) goto done;
        cp[i] = PyBytes_AS_STRING(enc[i]);
        PyObject *d = PyList_GET_ITEM(datas, i);
        if (!PyBytes_Check(d)) { PyErr_SetString(PyExc_TypeError, "datas must be bytes"); goto done; }
        Py_INCREF(d);
        held[i] = d;
        dp[i] = PyBytes_AS_STRING(d); dl[i] = PyBytes_GET_SIZE(d);
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int fd = open(cp[i], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (fd < 0) { err[i] = errno; continue; }
        int e = 0;
        if (need_chmod && fchmod(fd, mode) != 0) e = errno;
        const char *p = dp[i]; Py_ssize_t left = dl[i];
        while (!e && left > 0) {
            ssize_t w = write(fd, p, (size_t)left);
            if (w < 0) { if (errno == EINTR) continue; e = errno; break; }
            p += w; left -= w;
        }
        if (close(fd) != 0 && !e && errno != EINTR) e = errno;
        if (e) { unlink(cp[i]); err[i] = e; }
    }
    Py_END_ALLOW_THREADS
    out = errno_list(err, n);
done:
    for (Py_ssize_t i = 0; i < n; i++) {
        if (enc) Py_XDECREF(enc[i]);
        if (held) Py_XDECREF(held[i]);
    }
    PyMem_Free(enc); PyMem_Free(held); PyMem_Free(cp); PyMem_Free(dp); PyMem_Free(dl); PyMem_Free(err);
    return out;
}

/* link_many(sources, targets) -> list of errno of link(2); the source is unlinked after a
   link made (0) or refused as existing (EEXIST), kept after any other error. */
static PyObject *link_many(PyObject *self, PyObject *args) {
    PyObject *srcs, *dsts;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &srcs, &PyList_Type, &dsts)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(srcs);
    if (PyList_GET_SIZE(dsts) != n) { PyErr_SetString(PyExc_ValueError, "sources and targets differ in length"); return NULL; }
    PyObject **enc = PyMem_Calloc(2 * (n ? n : 1), sizeof(PyObject *));
    int *err = PyMem_Calloc(n ? n : 1, sizeof(int));
    PyObject *out = NULL;
    if (!enc || !err) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_FSConverter(PyList_GET_ITEM(srcs, i), &enc[2 * i])) goto done;
        if (!PyUnicode_FSConverter(PyList_GET_ITEM(dsts, i), &enc[2 * i + 1])) goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *s = PyBytes_AS_STRING(enc[2 * i]), *d = PyBytes_AS_STRING(enc[2 * i + 1]);
        int e = link(s, d) == 0 ? 0 : errno;
        err[i] = e;
        if (e == 0 || e == EEXIST) unlink(s);
    }
    Py_END_ALLOW_THREADS
    out = errno_list(err, n);
done:
    if (enc) for (Py_ssize_t i = 0; i < 2 * n; i++) Py_XDECREF(enc[i]);
    PyMem_Free(enc); PyMem_Free(err);
    return out;
}

static PyMethodDef methods[] = {
    {"stage_many", stage_many, METH_VARARGS, "Create and fill new files, the GIL released."},
    {"link_many", link_many, METH_VARARGS, "Link staged files under their names, the GIL released."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fsbatch", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fsbatch(void) { return PyModule_Create(&module); }
