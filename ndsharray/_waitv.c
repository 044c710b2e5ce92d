/* One thread waiting on many futex words at once, for asyncio readers (see aio.py).
 *
 * futex_waitv (Linux 5.16+, syscall 449 on x86-64 and aarch64 alike) sleeps until any of
 * up to 128 32-bit words is woken, or returns at once (EAGAIN) if one of them no longer
 * holds the value the caller saw. So one waiter thread serves up to 127 segments' notify
 * words (plus its own kick word) instead of one thread per blocked reader. Where the
 * kernel lacks it (ENOSYS), waitv() raises OSError and aio.py polls instead.
 *
 * Every address must stay mapped for the whole call: aio.py holds the mappings.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449 /* the generic syscall table: x86-64 and aarch64 alike */
#endif
#define MAX_WORDS 128 /* FUTEX_WAITV_MAX */
#define WAITV_FUTEX_32 2

struct waitv_entry { /* struct futex_waitv */
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};

static int get_addr(PyObject *o, uintptr_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (v == 0 || v % 4) {
        PyErr_SetString(PyExc_ValueError, "a futex word must be a non-null 4-byte aligned address");
        return -1;
    }
    *out = (uintptr_t)v;
    return 0;
}

/* waitv(addresses, values, timeout) -> the index of a word that was woken; -1: timeout;
 * -2: a word no longer held its value (EAGAIN); -3: a signal. Sleeps without the GIL.
 * Raises OSError(ENOSYS) where the kernel has no futex_waitv. */
static PyObject *waitv(PyObject *self, PyObject *args) {
    PyObject *addrs, *vals;
    double timeout;
    if (!PyArg_ParseTuple(args, "O!O!d", &PyList_Type, &addrs, &PyList_Type, &vals, &timeout)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(addrs);
    if (n < 1 || n > MAX_WORDS || PyList_GET_SIZE(vals) != n) {
        PyErr_SetString(PyExc_ValueError, "waitv() takes 1 to 128 addresses and as many values");
        return NULL;
    }
    struct waitv_entry w[MAX_WORDS];
    for (Py_ssize_t k = 0; k < n; k++) {
        uintptr_t a;
        if (get_addr(PyList_GET_ITEM(addrs, k), &a) < 0) return NULL;
        unsigned long v = PyLong_AsUnsignedLong(PyList_GET_ITEM(vals, k));
        if (v == (unsigned long)-1 && PyErr_Occurred()) return NULL;
        w[k].val = (uint32_t)v;
        w[k].uaddr = (uint64_t)a;
        w[k].flags = WAITV_FUTEX_32; /* shared words: the writers wake them from other processes */
        w[k].reserved = 0;
    }
#ifdef __linux__
    if (!(timeout > 0)) timeout = 0;
    if (timeout > 1e6) timeout = 1e6;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* futex_waitv's timeout is absolute */
    double whole = (double)(time_t)timeout;
    ts.tv_sec += (time_t)timeout;
    ts.tv_nsec += (long)((timeout - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    long rc;
    int err;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_futex_waitv, w, (unsigned)n, 0, &ts, CLOCK_MONOTONIC);
    err = errno;
    Py_END_ALLOW_THREADS
    if (rc >= 0) return PyLong_FromLong(rc);
    if (err == ETIMEDOUT) return PyLong_FromLong(-1);
    if (err == EAGAIN) return PyLong_FromLong(-2);
    if (err == EINTR) return PyLong_FromLong(-3);
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
#else
    errno = ENOSYS;
    return PyErr_SetFromErrno(PyExc_OSError);
#endif
}

/* load(address) -> the 32-bit word there (acquire). */
static PyObject *load(PyObject *self, PyObject *arg) {
    uintptr_t a;
    if (get_addr(arg, &a) < 0) return NULL;
    return PyLong_FromUnsignedLong(atomic_load_explicit((_Atomic uint32_t *)a, memory_order_acquire));
}

/* wait1(address, value, timeout) -> False on timeout, else True: FUTEX_WAIT on one word
 * (the fallback where futex_waitv is missing: the waiter sleeps on its kick word). */
static PyObject *wait1(PyObject *self, PyObject *args) {
    PyObject *oaddr;
    unsigned long val;
    double timeout;
    uintptr_t a;
    if (!PyArg_ParseTuple(args, "Okd", &oaddr, &val, &timeout) || get_addr(oaddr, &a) < 0) return NULL;
#ifdef __linux__
    if (!(timeout > 0)) timeout = 0;
    if (timeout > 1e6) timeout = 1e6;
    struct timespec ts = {(time_t)timeout, (long)((timeout - (double)(time_t)timeout) * 1e9)};
    long rc;
    int err;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_futex, (void *)a, FUTEX_WAIT, (uint32_t)val, &ts, NULL, 0);
    err = errno;
    Py_END_ALLOW_THREADS
    if (rc == -1 && err == ETIMEDOUT) Py_RETURN_FALSE;
#endif
    Py_RETURN_TRUE;
}

/* kick(address): add 1 to the word and wake every waiter on it (the waiter's kick word). */
static PyObject *kick(PyObject *self, PyObject *arg) {
    uintptr_t a;
    if (get_addr(arg, &a) < 0) return NULL;
    atomic_fetch_add_explicit((_Atomic uint32_t *)a, 1, memory_order_seq_cst);
#ifdef __linux__
    syscall(SYS_futex, (void *)a, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
#endif
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"waitv", waitv, METH_VARARGS, "Sleep until one of up to 128 futex words is woken (futex_waitv)."},
    {"load", load, METH_O, "The 32-bit word at an address (acquire)."},
    {"wait1", wait1, METH_VARARGS, "FUTEX_WAIT on one word."},
    {"kick", kick, METH_O, "Add 1 to a word and wake its waiters."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_waitv", "futex_waitv for ndsharray's asyncio waiter (see aio.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__waitv(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MAX_WORDS", MAX_WORDS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
