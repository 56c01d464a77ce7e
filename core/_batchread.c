/* core._batchread: a batch folder's newest file found and read with the GIL released once
   (why, and what the Python path still does: core/batchread.py). Anything out of the
   ordinary gives None, and core/sources.py reads the folder its own way, naming the
   problem; nothing here decides what an error means. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_AT_LEAST 4096 /* core/sources.py _READ_AT_LEAST */

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* The order of core/sources.py natural_key on ASCII names: text runs compared as text,
   digit runs as numbers, a key that ends first is the lesser; <0, 0 (equal keys) or >0. */
static int natural_cmp(const char *a, const char *b) {
    for (;;) {
        const char *ea = a, *eb = b;
        while (*ea && !is_digit(*ea)) ea++;
        while (*eb && !is_digit(*eb)) eb++;
        size_t la = (size_t)(ea - a), lb = (size_t)(eb - b);
        int c = memcmp(a, b, la < lb ? la : lb);
        if (c != 0) return c;
        if (la != lb) return la < lb ? -1 : 1;
        a = ea, b = eb;
        if (!*a || !*b) return (*a != 0) - (*b != 0);
        while (*a == '0' && is_digit(a[1])) a++; /* the number's value: leading zeros off */
        while (*b == '0' && is_digit(b[1])) b++;
        for (ea = a; is_digit(*ea); ea++) {}
        for (eb = b; is_digit(*eb); eb++) {}
        la = (size_t)(ea - a), lb = (size_t)(eb - b);
        if (la != lb) return la < lb ? -1 : 1;
        c = memcmp(a, b, la);
        if (c != 0) return c;
        a = ea, b = eb;
    }
}

static int ends_with(const char *name, size_t len, const char *suffix) {
    size_t n = strlen(suffix);
    return len >= n && memcmp(name + len - n, suffix, n) == 0;
}

/* A candidate's name, or 0 for a name to skip; -1: look at the folder the Python way (a
   name not ASCII, an entry of unknown type). */
static int candidate(int dirfd, const struct dirent *e, const char *temp_suffix, int follow) {
    size_t len = strlen(e->d_name);
    if (!ends_with(e->d_name, len, ".json") || e->d_name[0] == '.' || ends_with(e->d_name, len, temp_suffix)) return 0;
    for (const unsigned char *p = (const unsigned char *)e->d_name; *p; p++)
        if (*p >= 0x80) return -1;
    if (e->d_type == DT_REG) return 1;
    if (e->d_type == DT_LNK) {
        if (!follow) return 0;
        struct stat st;
        return fstatat(dirfd, e->d_name, &st, 0) == 0 && S_ISREG(st.st_mode);
    }
    return e->d_type == DT_UNKNOWN ? -1 : 0;
}

typedef struct {
    struct stat folder, file;
    char name[NAME_MAX + 1];
    char *data;
    ssize_t got;
} Found;

/* The folder's stat, its newest candidate and that file's bytes (whole, at most `cap`).
   0 when found; -1 otherwise. Runs without the GIL. */
static int find_newest(const char *folder, long long cap, const char *temp_suffix, int follow, Found *out) {
    int dirfd = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) return -1;
    if (fstat(dirfd, &out->folder) != 0) { close(dirfd); return -1; }
    DIR *dir = fdopendir(dirfd);
    if (dir == NULL) { close(dirfd); return -1; }
    int found = 0, odd = 0;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(dir)) != NULL) {
        int is = candidate(dirfd, e, temp_suffix, follow);
        if (is < 0) { odd = 1; break; }
        if (is && (!found || natural_cmp(e->d_name, out->name) > 0)) { /* ties: the first listed */
            strcpy(out->name, e->d_name);
            found = 1;
        }
        errno = 0; /* a link's fstatat may have set it: only readdir's end is looked at */
    }
    int listed = errno == 0 && !odd && found;
    if (!listed) { closedir(dir); return -1; }
    int fd = openat(dirfd, out->name, O_RDONLY | O_CLOEXEC | O_NONBLOCK | (follow ? 0 : O_NOFOLLOW));
    closedir(dir);
    if (fd < 0) return -1;
    int ok = fstat(fd, &out->file) == 0 && S_ISREG(out->file.st_mode) && out->file.st_size <= cap;
    if (ok) {
        long long size = out->file.st_size, want = size + 1 < READ_AT_LEAST ? READ_AT_LEAST : size + 1;
        if (want > cap + 1) want = cap + 1;
        out->data = malloc((size_t)want);
        out->got = out->data == NULL ? -1 : read(fd, out->data, (size_t)want);
        ok = out->got == size && out->got < want; /* the whole file the fstat saw, nothing after */
    }
    close(fd);
    return ok ? 0 : -1;
}

static long long mtime_ns(const struct stat *st) {
    return (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
}

/* newest(folder, cap, temp_suffix, follow) -> None, or (the folder's st_dev, st_ino,
   st_mtime_ns, the newest file's name, its bytes, its st_mtime_ns, st_size). */
static PyObject *newest(PyObject *self, PyObject *args) {
    PyObject *folder; long long cap; const char *temp_suffix; int follow;
    if (!PyArg_ParseTuple(args, "O&Lsp", PyUnicode_FSConverter, &folder, &cap, &temp_suffix, &follow)) return NULL;
    Found found = {0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = find_newest(PyBytes_AS_STRING(folder), cap, temp_suffix, follow, &found);
    Py_END_ALLOW_THREADS
    Py_DECREF(folder);
    PyObject *out = rc != 0 ? Py_NewRef(Py_None) : Py_BuildValue(
        "(KKLs#y#LL)", (unsigned long long)found.folder.st_dev, (unsigned long long)found.folder.st_ino,
        mtime_ns(&found.folder), found.name, (Py_ssize_t)strlen(found.name), found.data, (Py_ssize_t)found.got,
        mtime_ns(&found.file), (long long)found.file.st_size);
    free(found.data);
    return out;
}

static PyMethodDef methods[] = {
    {"newest", newest, METH_VARARGS, "A batch folder's newest file and its bytes, the GIL released once."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_batchread", NULL, -1, methods};

PyMODINIT_FUNC PyInit__batchread(void) { return PyModule_Create(&module); }
