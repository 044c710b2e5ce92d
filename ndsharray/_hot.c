/* The hot path of the slot protocol: atomics on a segment's shared memory, no syscalls.
 *
 * Python cannot order its stores and loads between processes, so the few steps that must
 * be ordered live here (C11 atomics; the futex calls too). The protocol itself is described
 * in segment.py. Every address comes from a mapping that segment.py holds open for as long
 * as it calls these functions; they check nothing but what the protocol needs.
 *
 * Offsets (bytes) into a segment's header, as in segment.py:
 *   56 notify word (u32, the futex), 60 reader rows in use (u32, high-water mark),
 *   64 publish word (u64: count << 8 | slot), 128 + 16 i slot i's (write count, stamp).
 * A reader row (64 bytes, one per reader): u32 waiting, u32 owner pid, 24 bytes unused,
 * then u64 pins[4], bit i set while the reader holds a view of slot i.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define OFF_NOTIFY 56
#define OFF_ROWS_USED 60
#define OFF_PUBLISH 64
#define SLOT_TABLE 128
#define SLOT_ENTRY 16
#define ROW_WAITING 0
#define ROW_PINS 32
#define READER_ROWS 256 /* rows in a segment: segment.READER_ROWS */

typedef _Atomic uint64_t a64;
typedef _Atomic uint32_t a32;

static inline a64 *u64_at(uintptr_t base, size_t off) { return (a64 *)(base + off); }
static inline a32 *u32_at(uintptr_t base, size_t off) { return (a32 *)(base + off); }

static inline a64 *pin_word(uintptr_t row, unsigned slot) {
    return u64_at(row, ROW_PINS + 8 * (slot >> 6));
}

/* Rows in use, never past the table (the word is in shared memory: trust nothing). */
static inline uint32_t rows_used(uintptr_t base) {
    uint32_t used = atomic_load_explicit(u32_at(base, OFF_ROWS_USED), memory_order_acquire);
    return used > READER_ROWS ? READER_ROWS : used;
}

static int get_addr(PyObject *o, uintptr_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (uintptr_t)v;
    return 0;
}

static long futex_wake(uintptr_t addr) {
#ifdef __linux__
    return syscall(SYS_futex, (void *)addr, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
#else
    (void)addr;
    return 0;
#endif
}

/* latest(base, row, last_count, nslots) -> (count, slot, stamp) | None | int
 * Pin the latest slot if its count differs from last_count. A negative int reports
 * corruption: -1 the publish word names a slot >= nslots, -2 a pinned latest slot holds
 * another count than an unchanged publish word says. */
static PyObject *hot_latest(PyObject *self, PyObject *args) {
    PyObject *obase, *orow;
    unsigned long long last;
    unsigned int nslots;
    uintptr_t base, row;
    if (!PyArg_ParseTuple(args, "OOKI", &obase, &orow, &last, &nslots)) return NULL;
    if (get_addr(obase, &base) || get_addr(orow, &row)) return NULL;
    a64 *pub = u64_at(base, OFF_PUBLISH);
    for (int tries = 0;; tries++) {
        uint64_t p = atomic_load_explicit(pub, memory_order_acquire);
        uint64_t count = p >> 8;
        unsigned slot = (unsigned)(p & 0xFF);
        if (count == last || count == 0) Py_RETURN_NONE;
        if (slot >= nslots) return PyLong_FromLong(-1);
        uint64_t bit = 1ull << (slot & 63);
        /* Pin, then look: the writer zeroes a slot's count, then looks for pins. */
        uint64_t had = atomic_fetch_or_explicit(pin_word(row, slot), bit, memory_order_seq_cst);
        atomic_thread_fence(memory_order_seq_cst);
        a64 *entry = u64_at(base, SLOT_TABLE + SLOT_ENTRY * slot);
        uint64_t seq = atomic_load_explicit(entry, memory_order_acquire);
        if (seq == count) {
            uint64_t stamp = atomic_load_explicit(entry + 1, memory_order_relaxed);
            return Py_BuildValue("(KIK)", (unsigned long long)count, slot, (unsigned long long)stamp);
        }
        if (!(had & bit))  /* keep the pin of a view this reader already holds */
            atomic_fetch_and_explicit(pin_word(row, slot), ~bit, memory_order_release);
        if (atomic_load_explicit(pub, memory_order_acquire) == p) return PyLong_FromLong(-2);
        if (tries > 64) {  /* lapped by a writer again and again: let it run */
            Py_BEGIN_ALLOW_THREADS
            sched_yield();
            Py_END_ALLOW_THREADS
        }
    }
}

/* unpin(row, slot): the last view of the slot in this reader is gone. */
static PyObject *hot_unpin(PyObject *self, PyObject *args) {
    PyObject *orow;
    unsigned int slot;
    uintptr_t row;
    if (!PyArg_ParseTuple(args, "OI", &orow, &slot)) return NULL;
    if (get_addr(orow, &row)) return NULL;
    atomic_fetch_and_explicit(pin_word(row, slot), ~(1ull << (slot & 63)), memory_order_release);
    Py_RETURN_NONE;
}

/* acquire(base, rows, candidates, skip) -> slot or -1
 * The first candidate slot (bytes of slot indexes, warmest first) that no reader row pins,
 * its count set to 0 so that no reader accepts it from now on; skip is a slot lent out. */
static PyObject *hot_acquire(PyObject *self, PyObject *args) {
    PyObject *obase, *orows;
    Py_buffer cand;
    int skip;
    uintptr_t base, rows;
    if (!PyArg_ParseTuple(args, "OOy*i", &obase, &orows, &cand, &skip)) return NULL;
    if (get_addr(obase, &base) || get_addr(orows, &rows)) {
        PyBuffer_Release(&cand);
        return NULL;
    }
    const unsigned char *c = cand.buf;
    long found = -1;
    for (Py_ssize_t k = 0; k < cand.len && found < 0; k++) {
        unsigned slot = c[k];
        if ((int)slot == skip) continue;
        a64 *entry = u64_at(base, SLOT_TABLE + SLOT_ENTRY * slot);
        atomic_store_explicit(entry, 0, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst);
        uint32_t used = rows_used(base);
        uint64_t bit = 1ull << (slot & 63);
        int pinned = 0;
        for (uint32_t r = 0; r < used && !pinned; r++)
            pinned = (atomic_load_explicit(pin_word(rows + 64 * (uintptr_t)r, slot),
                                           memory_order_relaxed) & bit) != 0;
        if (!pinned) found = slot;
    }
    /* The copy that follows must not be seen before the count's 0 by a reader that pins
     * later; the acquire fence orders our later stores after the loads above, and the
     * stores of the copy come after the seq_cst fence. */
    atomic_thread_fence(memory_order_seq_cst);
    PyBuffer_Release(&cand);
    return PyLong_FromLong(found);
}

/* publish(base, rows, slot, count, stamp) -> number of reader rows that wait (0: no wake)
 * Store the slot's count and time, the publish word and the notify word, then wake the
 * futex if a reader says it may sleep on it. */
static PyObject *hot_publish(PyObject *self, PyObject *args) {
    PyObject *obase, *orows;
    unsigned int slot;
    unsigned long long count, stamp;
    uintptr_t base, rows;
    if (!PyArg_ParseTuple(args, "OOIKK", &obase, &orows, &slot, &count, &stamp)) return NULL;
    if (get_addr(obase, &base) || get_addr(orows, &rows)) return NULL;
    a64 *entry = u64_at(base, SLOT_TABLE + SLOT_ENTRY * slot);
    atomic_store_explicit(entry + 1, stamp, memory_order_relaxed);
    atomic_store_explicit(entry, count, memory_order_release);
    atomic_store_explicit(u64_at(base, OFF_PUBLISH), (count << 8) | slot, memory_order_release);
    atomic_store_explicit(u32_at(base, OFF_NOTIFY), (uint32_t)count, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t used = rows_used(base);
    long waiting = 0;
    for (uint32_t r = 0; r < used; r++)
        waiting += atomic_load_explicit(u32_at(rows + 64 * (uintptr_t)r, ROW_WAITING),
                                        memory_order_relaxed) != 0;
    if (waiting) futex_wake(base + OFF_NOTIFY);
    return PyLong_FromLong(waiting);
}

/* set_waiting(row, flag): a reader says it may sleep on the notify word (1) or not (0).
 * After the store, a full fence: the reader then reads the notify word, the writer stores
 * it before reading the flags, so one of them sees the other. */
static PyObject *hot_set_waiting(PyObject *self, PyObject *args) {
    PyObject *orow;
    unsigned int flag;
    uintptr_t row;
    if (!PyArg_ParseTuple(args, "OI", &orow, &flag)) return NULL;
    if (get_addr(orow, &row)) return NULL;
    atomic_store_explicit(u32_at(row, ROW_WAITING), flag, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    Py_RETURN_NONE;
}

/* claim_row(base, row, index, pid): a reader took row `index` (it holds the row's lock):
 * clear what a dead predecessor left and count the row in. */
static PyObject *hot_claim_row(PyObject *self, PyObject *args) {
    PyObject *obase, *orow;
    unsigned int index, pid;
    uintptr_t base, row;
    if (!PyArg_ParseTuple(args, "OOII", &obase, &orow, &index, &pid)) return NULL;
    if (get_addr(obase, &base) || get_addr(orow, &row)) return NULL;
    for (int w = 0; w < 4; w++) atomic_store_explicit(u64_at(row, ROW_PINS + 8 * w), 0, memory_order_relaxed);
    atomic_store_explicit(u32_at(row, ROW_WAITING), 0, memory_order_relaxed);
    atomic_store_explicit(u32_at(row, 4), pid, memory_order_relaxed);
    a32 *used = u32_at(base, OFF_ROWS_USED);
    uint32_t cur = atomic_load_explicit(used, memory_order_relaxed);
    while (cur < index + 1 &&
           !atomic_compare_exchange_weak_explicit(used, &cur, index + 1, memory_order_seq_cst,
                                                  memory_order_relaxed)) {
    }
    atomic_thread_fence(memory_order_seq_cst);
    Py_RETURN_NONE;
}

/* clear_row(row): the writer found a row whose reader died (its lock was free). */
static PyObject *hot_clear_row(PyObject *self, PyObject *args) {
    PyObject *orow;
    uintptr_t row;
    if (!PyArg_ParseTuple(args, "O", &orow)) return NULL;
    if (get_addr(orow, &row)) return NULL;
    for (int w = 0; w < 4; w++) atomic_store_explicit(u64_at(row, ROW_PINS + 8 * w), 0, memory_order_release);
    atomic_store_explicit(u32_at(row, ROW_WAITING), 0, memory_order_release);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"latest", hot_latest, METH_VARARGS, "Pin the latest slot if it is newer than last_count."},
    {"unpin", hot_unpin, METH_VARARGS, "Clear a reader's pin bit of a slot."},
    {"acquire", hot_acquire, METH_VARARGS, "The writer's next slot: unpinned, count zeroed."},
    {"publish", hot_publish, METH_VARARGS, "Publish a slot; wake sleeping readers."},
    {"set_waiting", hot_set_waiting, METH_VARARGS, "A reader's may-sleep flag, fenced."},
    {"claim_row", hot_claim_row, METH_VARARGS, "Initialise a reader row just locked."},
    {"clear_row", hot_clear_row, METH_VARARGS, "Clear a dead reader's row."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hot", "Atomics of ndsharray's slot protocol (see segment.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__hot(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "READER_ROWS", READER_ROWS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
