/* The hot path of the slot protocol: atomics on a segment's shared memory, no syscalls.
 *
 * Python cannot order its stores and loads between processes, so the few steps that must
 * be ordered live here (C11 atomics; the futex calls too). The protocol itself is described
 * in ndsharray/segment/. Every address comes from a mapping that ndsharray/segment/ holds open for as long
 * as it calls these functions; they check nothing but what the protocol needs.
 *
 * The offsets are those of ndsharray/layout.py (the single source; see the #defines
 * below and OFFSETS): the notify word (u32, the futex; moves when a writer wakes sleepers), the reader rows in use (u32), the
 * publish word (u64: count << 8 | slot), then per slot a 128-byte entry (write count,
 * stamp, and the frame's descriptor: dtype text, ndim, shape, metadata length), then the
 * reader rows (64 bytes each: u32 sleepers, u32 owner pid, the frame read last, and
 * u64 pins[4], bit i set while the reader holds a view of slot i).
 */
#define PY_SSIZE_T_CLEAN
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <Python.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <numpy/arrayobject.h>
#if NPY_ABI_VERSION < 0x02000000 /* numpy 1.x headers (a build without isolation) */
#define PyDataType_ELSIZE(d) ((d)->elsize)
#endif
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

/* The layout (segment layout version 3). Every constant here is also in OFFSETS (see the
 * end of this file), which ndsharray/segment/ compares at import with the single layout table in
 * ndsharray/layout.py: a change on one side only is an ImportError, never a misread. */
#define LAYOUT_VERSION 4
#define OFF_RETIRED 52
#define OFF_NOTIFY 56
#define OFF_ROWS_USED 60
#define OFF_PUBLISH 64
#define SLOT_TABLE 128
#define SLOT_ENTRY 128
#define ENTRY_COUNT 0      /* u64 write count (0 while the slot is written) */
#define ENTRY_STAMP 8      /* u64 publish time */
#define ENTRY_META_LEN 16  /* u32 bytes of metadata, at slot + capacity */
#define ENTRY_META_KIND 20 /* u8 META_* */
#define ENTRY_NDIM 21      /* u8 0..MAX_SLOT_NDIM, or NDIM_HEADER: the header's dtype and shape */
#define ENTRY_SHAPE_GEN 24 /* u32 the writer's count of shape/dtype changes */
#define ENTRY_DTYPE 32     /* char[16] numpy dtype.str, NUL padded */
#define ENTRY_SHAPE 48     /* u64[8] */
#define MAX_SLOT_NDIM 8
#define MAX_SLOT_DTYPE 16
#define NDIM_HEADER 255
#define META_NONE 0
#define META_BYTES 1
#define META_JSON 2
#define RETIRED_REMOVED 2
#define ROW_SIZE 64
#define ROW_WAITING 0
#define ROW_PID 4
#define ROW_READ_NS 8 /* u64 read ns, then u64 write ns, u64 count */
#define ROW_WRITE_NS 16
#define ROW_READ_COUNT 24
#define ROW_PINS 32
#define READER_ROWS 256 /* rows in a segment */

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

/* ---- frame dtypes: a slot names its frame's dtype by numpy's dtype.str (<= 16 bytes) ----
 * Both directions are cached here, so that a read or a write of a frame whose dtype was
 * seen before costs no Python call; a miss asks ndsharray/segment/ once (set_dtype_hooks), which
 * decides which dtypes a slot may describe and checks text read from shared memory. */
static PyObject *dtype_of_hook; /* text -> np.dtype; raises for text no writer of ours makes */
static PyObject *text_of_hook;  /* np.dtype -> its slot text, or None (the slow path) */

#define DTYPE_CACHE 32
typedef struct {
    char text[MAX_SLOT_DTYPE];
    PyArray_Descr *descr; /* a reference */
    int ok;               /* by_descr: 1 if a slot can describe it */
} DtypeEntry;
static DtypeEntry by_text[DTYPE_CACHE], by_descr[DTYPE_CACHE];
static int by_text_next, by_descr_next;

static DtypeEntry *cache_slot(DtypeEntry *cache, int *next) {
    DtypeEntry *e = &cache[*next];
    *next = (*next + 1) % DTYPE_CACHE;
    Py_CLEAR(e->descr);
    memset(e->text, 0, sizeof e->text);
    return e;
}

/* The dtype a slot's text names (16 bytes as stored), borrowed from the cache; NULL with
 * an exception set when the text names nothing a writer of ours would write. */
static PyArray_Descr *dtype_from_text(const char *text) {
    for (int i = 0; i < DTYPE_CACHE; i++)
        if (by_text[i].descr != NULL && memcmp(by_text[i].text, text, MAX_SLOT_DTYPE) == 0) return by_text[i].descr;
    if (dtype_of_hook == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ndsharray._hot: set_dtype_hooks() was not called");
        return NULL;
    }
    PyObject *str = PyUnicode_DecodeASCII(text, (Py_ssize_t)strnlen(text, MAX_SLOT_DTYPE), "strict");
    if (str == NULL) return NULL;
    PyObject *d = PyObject_CallOneArg(dtype_of_hook, str);
    Py_DECREF(str);
    if (d == NULL) return NULL;
    if (!PyArray_DescrCheck(d) || PyDataType_HASSUBARRAY((PyArray_Descr *)d) ||
        PyDataType_HASFIELDS((PyArray_Descr *)d) || PyDataType_REFCHK((PyArray_Descr *)d)) {
        Py_DECREF(d);
        PyErr_SetString(PyExc_ValueError, "not a plain dtype");
        return NULL;
    }
    DtypeEntry *e = cache_slot(by_text, &by_text_next);
    memcpy(e->text, text, MAX_SLOT_DTYPE);
    e->descr = (PyArray_Descr *)d;
    return e->descr;
}

/* 1 and `text` (16 bytes, NUL padded) when a slot can describe dtype d, 0 when it cannot
 * (structured, sub-array, a long text: the caller takes the slow path), -1 on an error. */
static int text_from_dtype(PyArray_Descr *d, char *text) {
    for (int i = 0; i < DTYPE_CACHE; i++) {
        if (by_descr[i].descr == d) {
            memcpy(text, by_descr[i].text, MAX_SLOT_DTYPE);
            return by_descr[i].ok;
        }
    }
    if (text_of_hook == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ndsharray._hot: set_dtype_hooks() was not called");
        return -1;
    }
    PyObject *got = PyObject_CallOneArg(text_of_hook, (PyObject *)d);
    if (got == NULL) return -1;
    char buf[MAX_SLOT_DTYPE] = {0};
    int ok = 0;
    if (PyUnicode_Check(got)) {
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(got, &n);
        if (u == NULL) {
            Py_DECREF(got);
            return -1;
        }
        if (n > 0 && n <= MAX_SLOT_DTYPE) {
            memcpy(buf, u, (size_t)n);
            ok = 1;
        }
    }
    Py_DECREF(got);
    DtypeEntry *e = cache_slot(by_descr, &by_descr_next);
    Py_INCREF(d); /* held: the pointer is the key, and must not be reused by another dtype */
    e->descr = d;
    e->ok = ok;
    memcpy(e->text, buf, MAX_SLOT_DTYPE);
    memcpy(text, buf, MAX_SLOT_DTYPE);
    return ok;
}

/* set_dtype_hooks(dtype_of, text_of): see above. */
static PyObject *hot_set_dtype_hooks(PyObject *self, PyObject *args) {
    PyObject *a, *b;
    if (!PyArg_ParseTuple(args, "OO", &a, &b)) return NULL;
    Py_XSETREF(dtype_of_hook, Py_NewRef(a));
    Py_XSETREF(text_of_hook, Py_NewRef(b));
    Py_RETURN_NONE;
}

/* Checked size of a frame: the non-zero dimensions times the item size must fit in
 * npy_intp, as numpy checks it (a zero dimension would hide an overflow in the others:
 * (2**61, 2**61, 0)); signed overflow is undefined behaviour, never let it happen.
 * -1 for a negative dimension or an overflow. */
static npy_intp frame_bytes(npy_intp itemsize, int ndim, const npy_intp *dims) {
    npy_intp span = itemsize > 0 ? itemsize : 1;
    int empty = itemsize == 0;
    for (int k = 0; k < ndim; k++) {
        if (dims[k] < 0) return -1;
        if (dims[k] == 0)
            empty = 1;
        else if (__builtin_mul_overflow(span, dims[k], &span))
            return -1;
    }
    return empty ? 0 : span;
}

static inline uint64_t monotonic_ns(void) { /* time.monotonic_ns()'s clock */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long futex_wake(uintptr_t addr) {
#ifdef __linux__
    return syscall(SYS_futex, (void *)addr, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
#else
    (void)addr;
    return 0;
#endif
}

/* address(buffer) -> the address of its first byte (of a mapping: futex words and reader
 * rows are addressed, not indexed). */
static PyObject *hot_address(PyObject *self, PyObject *obj) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *addr = PyLong_FromVoidPtr(view.buf);
    PyBuffer_Release(&view);
    return addr;
}

/* retire(mapping, why): flag a segment replaced (1) or its tag removed (2; "removed" wins),
 * then move the notify word and wake every sleeper, so that blocked readers look for what
 * replaced it. Release stores: a reader that sees the new notify word sees the flag. */
static PyObject *hot_retire(PyObject *self, PyObject *args) {
    PyObject *mapping;
    unsigned int why;
    if (!PyArg_ParseTuple(args, "OI", &mapping, &why)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(mapping, &view, PyBUF_WRITABLE) < 0) return NULL;
    if (view.len < 128) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "not a segment header");
        return NULL;
    }
    uintptr_t base = (uintptr_t)view.buf;
    a32 *retired = u32_at(base, OFF_RETIRED);
    uint32_t cur = atomic_load_explicit(retired, memory_order_relaxed);
    while (cur < why && !atomic_compare_exchange_weak_explicit(retired, &cur, why, memory_order_release,
                                                                memory_order_relaxed)) {
    }
    atomic_fetch_add_explicit(u32_at(base, OFF_NOTIFY), 1, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    futex_wake(base + OFF_NOTIFY);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* Set a row to "free, nothing pinned, nothing read" and then to `pid` (0: free). */
static void reset_row(uintptr_t row, uint32_t pid) {
    for (int w = 0; w < 4; w++) atomic_store_explicit(u64_at(row, ROW_PINS + 8 * w), 0, memory_order_release);
    for (int w = 0; w < 3; w++) atomic_store_explicit(u64_at(row, ROW_READ_NS + 8 * w), 0, memory_order_relaxed);
    atomic_store_explicit(u32_at(row, ROW_WAITING), 0, memory_order_release);
    atomic_store_explicit(u32_at(row, ROW_PID), pid, memory_order_relaxed);
}

/* claim_row(base, row, index, pid): a reader took row `index` (it holds the row's lock):
 * clear what a dead predecessor left and count the row in. */
static PyObject *hot_claim_row(PyObject *self, PyObject *args) {
    PyObject *obase, *orow;
    unsigned int index, pid;
    uintptr_t base, row;
    if (!PyArg_ParseTuple(args, "OOII", &obase, &orow, &index, &pid)) return NULL;
    if (get_addr(obase, &base) || get_addr(orow, &row)) return NULL;
    reset_row(row, pid);
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
    reset_row(row, 0);
    Py_RETURN_NONE;
}

/* ---- a reader: pins counted per slot, views that unpin when collected ------------------ */

static pid_t current_pid; /* kept current across fork: a child must not drop the parent's pins */
static void after_fork_child(void) { current_pid = getpid(); }

typedef struct {
    PyObject_HEAD
    uintptr_t base, row; /* the read-only mapping; our row, in the read-write one */
    unsigned nslots;
    /* data_offset: where slot 0's data starts (segment.Layout.data_offset: the header, plus
     * the page skew of big slots; never recomputed here); nbytes: a slot's frame capacity */
    Py_ssize_t data_offset, stride, nbytes;
    Py_ssize_t meta_capacity;
    long refs[256];    /* views (and pins handed out by latest) per slot */
    long pending[256]; /* pins latest() handed out that no view() or unpin() took yet */
    long total;
    pid_t owner;
    PyObject *keep;    /* the mappings: alive for as long as any view */
    PyObject *on_idle; /* called when the last pin goes (set by a closing reader) */
    PyArray_Descr *descr; /* the header's dtype and shape, for frames of NDIM_HEADER (NULL: */
    int ndim;             /* structured: views of those are built in Python) */
    npy_intp dims[64];
    unsigned long long count, stamp, read_ns; /* of the frame read() returned last */
    unsigned shape_gen;   /* of that frame */
    /* The descriptor of the last view built, checked: a frame described alike (the usual
     * case) reuses its dtype and size check without a lookup. */
    uint64_t seen_text[2];
    unsigned seen_ndim;
    npy_intp seen_dims[MAX_SLOT_NDIM];
    PyArray_Descr *seen_descr; /* a reference; NULL: nothing seen */
    PyObject *meta;       /* its metadata (bytes) or NULL */
    int meta_kind;
    int waiting;  /* threads in wait() now (each holds the GIL before and after its sleep) */
    int stopped;  /* stop() ended every wait for good: the handle closed */
    long async_sleeps; /* sleep_begin() calls not yet ended by sleep_end() */
} ReaderObject;

static void reader_release(ReaderObject *r, unsigned slot) {
    if (current_pid != r->owner || r->refs[slot] <= 0) return;
    r->total--;
    if (--r->refs[slot] == 0 && r->row != 0)
        atomic_fetch_and_explicit(pin_word(r->row, slot), ~(1ull << (slot & 63)), memory_order_release);
    if (r->total == 0 && r->on_idle != NULL) {
        PyObject *cb = r->on_idle, *type, *value, *tb;
        r->on_idle = NULL;
        PyErr_Fetch(&type, &value, &tb); /* may run inside a deallocation */
        PyObject *res = PyObject_CallNoArgs(cb);
        if (res == NULL) PyErr_WriteUnraisable(cb);
        Py_XDECREF(res);
        Py_DECREF(cb);
        PyErr_Restore(type, value, tb);
    }
}

typedef struct {
    PyObject_HEAD
    ReaderObject *reader;
    unsigned slot;
    unsigned shape_gen; /* of the frame it holds, and its metadata (bytes, or NULL) */
    int meta_kind;
    PyObject *meta;
} PinObject;

static int pin_getbuffer(PinObject *p, Py_buffer *view, int flags) {
    ReaderObject *r = p->reader;
    void *data = (void *)(r->base + (uintptr_t)r->data_offset + (uintptr_t)p->slot * (uintptr_t)r->stride);
    return PyBuffer_FillInfo(view, (PyObject *)p, data, r->nbytes, 1, flags);
}

static void pin_dealloc(PinObject *p) {
    Py_CLEAR(p->meta);
    reader_release(p->reader, p->slot);
    Py_DECREF(p->reader);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyBufferProcs pin_as_buffer = {(getbufferproc)pin_getbuffer, NULL};

static PyObject *pin_get_meta(PinObject *p, void *c) {
    if (p->meta == NULL) Py_RETURN_NONE;
    return Py_BuildValue("(iO)", p->meta_kind, p->meta);
}
static PyObject *pin_get_shape_gen(PinObject *p, void *c) { return PyLong_FromUnsignedLong(p->shape_gen); }

static PyGetSetDef pin_getset[] = {
    {"meta", (getter)pin_get_meta, NULL, "(kind, bytes) of the metadata of the frame it holds, or None", NULL},
    {"shape_gen", (getter)pin_get_shape_gen, NULL, "the writer's shape/dtype change count at that frame", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PinType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ndsharray._hot.Pin",
    .tp_basicsize = sizeof(PinObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One slot, read-only, pinned until this object (the base of every view of it) goes.",
    .tp_dealloc = (destructor)pin_dealloc,
    .tp_as_buffer = &pin_as_buffer,
    .tp_getset = pin_getset,
};

static int reader_init(ReaderObject *r, PyObject *args, PyObject *kw) {
    PyObject *obase, *orow, *keep, *shape = Py_None, *dtype = Py_None;
    static char *kwlist[] = {"base", "row", "nslots", "data_offset", "stride", "nbytes", "keep",
                             "shape", "dtype", "meta_capacity", NULL};
    r->meta_capacity = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOInnnO|OOn", kwlist, &obase, &orow, &r->nslots,
                                     &r->data_offset, &r->stride, &r->nbytes, &keep, &shape, &dtype,
                                     &r->meta_capacity))
        return -1;
    if (r->nbytes < 0 || r->meta_capacity < 0 || r->nbytes + r->meta_capacity > r->stride) {
        PyErr_SetString(PyExc_ValueError, "capacity and meta_capacity do not fit the stride");
        return -1;
    }
    if (r->data_offset < 0 || r->data_offset % 64 != 0 || r->stride % 64 != 0) {
        PyErr_SetString(PyExc_ValueError, "slot data must be 64-byte aligned (data_offset and stride)");
        return -1;
    }
    Py_CLEAR(r->descr);
    if (dtype != Py_None) { /* plain dtypes only: a sub-array dtype would add dimensions */
        if (!PyArray_DescrCheck(dtype) || !PyTuple_Check(shape) || PyTuple_GET_SIZE(shape) > 64) {
            PyErr_SetString(PyExc_TypeError, "dtype must be a numpy dtype and shape a tuple of at most 64");
            return -1;
        }
        PyArray_Descr *d = (PyArray_Descr *)dtype;
        r->ndim = (int)PyTuple_GET_SIZE(shape);
        for (int k = 0; k < r->ndim; k++) {
            r->dims[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, k));
            if (r->dims[k] == -1 && PyErr_Occurred()) return -1;
        }
        npy_intp total = frame_bytes((npy_intp)PyDataType_ELSIZE(d), r->ndim, r->dims);
        if (total < 0) {
            PyErr_SetString(PyExc_ValueError, "shape has a negative dimension or spans more bytes than numpy can index");
            return -1;
        }
        if (PyDataType_HASSUBARRAY(d) || total > r->nbytes) {
            PyErr_SetString(PyExc_ValueError, "shape and dtype exceed the capacity (or a sub-array dtype)");
            return -1;
        }
        Py_INCREF(d);
        r->descr = d;
    }
    if (get_addr(obase, &r->base) || get_addr(orow, &r->row)) return -1;
    if (r->nslots < 1 || r->nslots > 255) {
        PyErr_SetString(PyExc_ValueError, "bad slot count");
        return -1;
    }
    memset(r->refs, 0, sizeof r->refs);
    memset(r->pending, 0, sizeof r->pending);
    r->total = 0;
    r->owner = current_pid;
    Py_INCREF(keep);
    Py_XSETREF(r->keep, keep);
    return 0;
}

static void reader_dealloc(ReaderObject *r) {
    Py_XDECREF(r->keep);
    Py_XDECREF(r->on_idle);
    Py_XDECREF(r->descr);
    Py_XDECREF(r->meta);
    Py_XDECREF(r->seen_descr);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

/* Pin the latest slot if its count differs from last: 1 (pinned; the caller owns one pin),
 * 0 nothing newer, -1 the publish word names a slot past the table, -2 a pinned latest slot
 * holds another count than an unchanged publish word says (both corruption), -3 the
 * segment is retired (look for its successor) or this reader detached, -4 the slot's
 * metadata length exceeds its capacity (corruption), -5 out of memory (exception set).
 *
 * Why the frame's descriptor (dtype, shape, metadata) read after the count matches is that
 * frame's, on aarch64 as on x86-64: the writer stores the descriptor and the metadata with
 * plain stores after it zeroed the count and found no pin, then stores the count with
 * memory_order_release (STLR on aarch64: every earlier store is visible before it). Our
 * load of the count is memory_order_acquire (LDAR): seeing the writer's count, we see every
 * store that came before it, the descriptor included. And the slot stays that frame's: we
 * pinned before loading the count (seq_cst fence between), the writer zeroes a count before
 * it looks for pins (seq_cst fence between), so it cannot take the slot again while our pin
 * is set (the Dekker pair in ndsharray/segment/). */
static int reader_pin_latest(ReaderObject *r, uint64_t last, uint64_t *count_out, unsigned *slot_out,
                             uint64_t *stamp_out) {
    if (r->row == 0 || atomic_load_explicit(u32_at(r->base, OFF_RETIRED), memory_order_relaxed) != 0)
        return -3;
    a64 *pub = u64_at(r->base, OFF_PUBLISH);
    for (int tries = 0;; tries++) {
        if (tries > 64) { /* lapped by a writer again and again: let it run */
            if (tries > 10000) return 0; /* a publish word that never settles: nothing now */
            Py_BEGIN_ALLOW_THREADS
            sched_yield();
            Py_END_ALLOW_THREADS
            if (r->row == 0) return -3; /* closed by another thread meanwhile */
        }
        uint64_t p = atomic_load_explicit(pub, memory_order_acquire);
        uint64_t count = p >> 8;
        unsigned slot = (unsigned)(p & 0xFF);
        if (count == last || count == 0) return 0;
        if (slot >= r->nslots) return -1;
        uint64_t bit = 1ull << (slot & 63);
        /* Pin, then look: the writer zeroes a slot's count, then looks for pins. */
        atomic_fetch_or_explicit(pin_word(r->row, slot), bit, memory_order_seq_cst);
        atomic_thread_fence(memory_order_seq_cst);
        a64 *entry = u64_at(r->base, SLOT_TABLE + SLOT_ENTRY * slot);
        uint64_t seq = atomic_load_explicit(entry, memory_order_acquire);
        if (seq == count) {
            uint64_t stamp = atomic_load_explicit(entry + 1, memory_order_relaxed);
            const char *e = (const char *)entry;
            uint32_t meta_len, shape_gen;
            memcpy(&meta_len, e + ENTRY_META_LEN, 4);
            memcpy(&shape_gen, e + ENTRY_SHAPE_GEN, 4);
            if (meta_len == 0) {
                if (r->meta != NULL) Py_CLEAR(r->meta); /* (the hot path: one compare) */
            } else {
                PyObject *m = NULL;
                if (meta_len <= (uint64_t)r->meta_capacity) {
                    m = PyBytes_FromStringAndSize((const char *)(r->base + (uintptr_t)r->data_offset +
                                                                 (uintptr_t)slot * (uintptr_t)r->stride +
                                                                 (uintptr_t)r->nbytes), (Py_ssize_t)meta_len);
                }
                if (m == NULL) {
                    if (r->refs[slot] == 0)
                        atomic_fetch_and_explicit(pin_word(r->row, slot), ~bit, memory_order_release);
                    return meta_len <= (uint64_t)r->meta_capacity ? -5 : -4;
                }
                Py_XSETREF(r->meta, m);
                r->meta_kind = ((const unsigned char *)e)[ENTRY_META_KIND];
            }
            r->shape_gen = shape_gen;
            uint64_t now = monotonic_ns();
            r->refs[slot]++;
            r->total++;
            r->count = count;
            r->stamp = stamp;
            r->read_ns = now;
            /* For the daemon's `ls`: how late and how far behind this reader is. */
            atomic_store_explicit(u64_at(r->row, ROW_READ_NS), now, memory_order_relaxed);
            atomic_store_explicit(u64_at(r->row, ROW_WRITE_NS), stamp, memory_order_relaxed);
            atomic_store_explicit(u64_at(r->row, ROW_READ_COUNT), count, memory_order_relaxed);
            *count_out = count;
            *slot_out = slot;
            *stamp_out = stamp;
            return 1;
        }
        if (r->refs[slot] == 0) /* keep the pin of a view we already hold */
            atomic_fetch_and_explicit(pin_word(r->row, slot), ~bit, memory_order_release);
        if (atomic_load_explicit(pub, memory_order_acquire) == p) return -2;
    }
}

static PyObject *new_pin(ReaderObject *r, unsigned slot) {
    PinObject *p = PyObject_New(PinObject, &PinType);
    if (p == NULL) {
        reader_release(r, slot);
        return NULL;
    }
    Py_INCREF(r);
    p->reader = r;
    p->slot = slot; /* takes over one pin */
    p->shape_gen = r->shape_gen; /* (r describes the frame pinned last: this one) */
    p->meta_kind = r->meta_kind;
    p->meta = r->meta;
    Py_XINCREF(p->meta);
    return (PyObject *)p;
}

/* A read-only array of the slot a new pin holds, of the frame's own dtype and shape as its
 * slot-table entry describes it (stable: the pin holds the slot; see reader_pin_latest);
 * the pin becomes its base (numpy's C API: np.ndarray(shape, dtype, buffer=pin) costs ~50
 * us when its code is not in the cache, as after a camera's frame interval, and this ~2
 * us). Takes the reference to pin. A frame of the header's shape whose dtype has no plain
 * view (structured) gives the pin back as it is: Python builds that view. A descriptor
 * that describes no frame of this segment (corruption) is a ValueError. */
static PyObject *pin_array(ReaderObject *r, PyObject *pin) {
    if (pin == NULL) return NULL;
    unsigned slot = ((PinObject *)pin)->slot;
    char *data = (char *)(r->base + (uintptr_t)r->data_offset + (uintptr_t)slot * (uintptr_t)r->stride);
    const unsigned char *e = (const unsigned char *)(r->base + SLOT_TABLE + (uintptr_t)SLOT_ENTRY * slot);
    unsigned ndim = e[ENTRY_NDIM];
    PyArray_Descr *descr;
    npy_intp dims[MAX_SLOT_NDIM], *shape;
    if (ndim == NDIM_HEADER) {
        if (r->descr == NULL) return pin;
        descr = r->descr;
        ndim = (unsigned)r->ndim;
        shape = r->dims;
    } else {
        uint64_t text[2];
        memcpy(text, e + ENTRY_DTYPE, MAX_SLOT_DTYPE);
        if (ndim <= MAX_SLOT_NDIM && r->seen_descr != NULL && ndim == r->seen_ndim && text[0] == r->seen_text[0] &&
            text[1] == r->seen_text[1]) {
            int same = 1;
            for (unsigned k = 0; k < ndim; k++) {
                uint64_t n;
                memcpy(&n, e + ENTRY_SHAPE + 8 * k, 8);
                same &= (npy_intp)n == r->seen_dims[k];
            }
            if (same) {
                descr = r->seen_descr;
                shape = r->seen_dims;
                goto build;
            }
        }
        descr = ndim <= MAX_SLOT_NDIM ? dtype_from_text((const char *)text) : NULL;
        if (descr == NULL) {
            Py_DECREF(pin);
            if (ndim <= MAX_SLOT_NDIM) PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "slot %u describes its frame with %u dimensions or a dtype "
                         "no writer makes", slot, ndim);
            return NULL;
        }
        for (unsigned k = 0; k < ndim; k++) {
            uint64_t n;
            memcpy(&n, e + ENTRY_SHAPE + 8 * k, 8);
            dims[k] = n > (uint64_t)NPY_MAX_INTP ? -1 : (npy_intp)n;
        }
        npy_intp size = frame_bytes((npy_intp)PyDataType_ELSIZE(descr), (int)ndim, dims);
        if (size < 0 || size > r->nbytes) {
            Py_DECREF(pin);
            PyErr_Format(PyExc_ValueError, "slot %u describes a frame larger than the slots' "
                         "%zd bytes", slot, r->nbytes);
            return NULL;
        }
        shape = dims;
        /* Remember it (a reference of our own: the shared cache may drop its own). */
        Py_INCREF(descr);
        Py_XSETREF(r->seen_descr, descr);
        r->seen_ndim = ndim;
        memcpy(r->seen_text, text, MAX_SLOT_DTYPE);
        memcpy(r->seen_dims, dims, sizeof(npy_intp) * ndim);
        shape = r->seen_dims;
    }
build:
    Py_INCREF(descr); /* stolen by the call */
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, descr, (int)ndim, shape, NULL, data,
                                         NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    if (arr == NULL) {
        Py_DECREF(pin);
        return NULL;
    }
    PyArray_UpdateFlags((PyArrayObject *)arr, NPY_ARRAY_UPDATE_ALL);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, pin) < 0) { /* steals pin, even on failure */
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

/* The common start of latest(), read() and pin(): parse last_count and pin the latest slot.
 * 1: *slot is pinned once for the caller. 0: return *other instead (None: nothing newer; an
 * int: reader_pin_latest's code; NULL: an exception is set). */
static int pin_latest_arg(ReaderObject *r, PyObject *arg, uint64_t *count, unsigned *slot, uint64_t *stamp,
                          PyObject **other) {
    unsigned long long last = PyLong_AsUnsignedLongLong(arg);
    if (last == (unsigned long long)-1 && PyErr_Occurred()) {
        *other = NULL;
        return 0;
    }
    int got = reader_pin_latest(r, last, count, slot, stamp);
    if (got > 0) return 1;
    if (got == -5) {
        *other = NULL;
        return 0;
    }
    if (got == 0) {
        Py_INCREF(Py_None);
        *other = Py_None;
    } else {
        *other = PyLong_FromLong(got);
    }
    return 0;
}

/* latest(last_count) -> (count, slot, stamp) | None | int (see reader_pin_latest). */
static PyObject *reader_latest(ReaderObject *r, PyObject *arg) {
    uint64_t count, stamp;
    unsigned slot;
    PyObject *other;
    if (!pin_latest_arg(r, arg, &count, &slot, &stamp, &other)) return other;
    r->pending[slot]++; /* for view() or unpin() */
    return Py_BuildValue("(KIK)", (unsigned long long)count, slot, (unsigned long long)stamp);
}

/* read(last_count) -> array | Pin | None | int: latest() and the view in one call, of the
 * frame's own dtype and shape; .count, .stamp, .read_ns, .meta and .shape_gen then describe
 * it. A Pin: a frame of the header's structured dtype (build its view in Python). An int
 * is latest()'s error or retired code. */
static PyObject *reader_read(ReaderObject *r, PyObject *arg) {
    uint64_t count, stamp;
    unsigned slot;
    PyObject *other;
    if (!pin_latest_arg(r, arg, &count, &slot, &stamp, &other)) return other;
    return pin_array(r, new_pin(r, slot)); /* on failure the pin is given back */
}

/* pin(last_count) -> Pin | None | int: latest() with its pin already held by the returned
 * Pin object (the base of a view, or the source of a copy). Nothing runs between pinning
 * and handing the pin to an object that gives it back when collected, so an exception
 * raised in Python right after (KeyboardInterrupt from a signal handler) cannot leave a
 * pin that nobody owns, as latest() followed by view() or unpin() could. */
static PyObject *reader_pin(ReaderObject *r, PyObject *arg) {
    uint64_t count, stamp;
    unsigned slot;
    PyObject *other;
    if (!pin_latest_arg(r, arg, &count, &slot, &stamp, &other)) return other;
    return new_pin(r, slot); /* on failure the pin is given back */
}

static PyObject *reader_view(ReaderObject *r, PyObject *arg) {
    long slot = PyLong_AsLong(arg);
    if (slot == -1 && PyErr_Occurred()) return NULL;
    if (slot < 0 || (unsigned long)slot >= r->nslots || r->pending[slot] <= 0) {
        PyErr_SetString(PyExc_ValueError, "view() of a slot latest() did not pin");
        return NULL;
    }
    r->pending[slot]--;
    return new_pin(r, (unsigned)slot); /* takes over the pin latest() counted */
}

/* array(slot) -> the read-only array of a slot latest() pinned (view(), as an array). */
static PyObject *reader_array(ReaderObject *r, PyObject *arg) {
    return pin_array(r, reader_view(r, arg));
}

/* array_of(pin) -> the read-only array of the frame a Pin of this reader holds, or the Pin
 * itself for a frame of the header's structured dtype (see pin_array). */
static PyObject *reader_array_of(ReaderObject *r, PyObject *pin) {
    if (Py_TYPE(pin) != &PinType || ((PinObject *)pin)->reader != r) {
        PyErr_SetString(PyExc_TypeError, "array_of() takes a Pin of this reader");
        return NULL;
    }
    Py_INCREF(pin);
    return pin_array(r, pin);
}

static PyObject *reader_unpin(ReaderObject *r, PyObject *arg) {
    long slot = PyLong_AsLong(arg);
    if (slot == -1 && PyErr_Occurred()) return NULL;
    if (slot < 0 || (unsigned long)slot >= r->nslots || r->pending[slot] <= 0) {
        PyErr_SetString(PyExc_ValueError, "unpin() of a slot latest() did not pin");
        return NULL;
    }
    r->pending[slot]--;
    reader_release(r, (unsigned)slot);
    Py_RETURN_NONE;
}

/* wait(last_count, timeout) -> False on timeout, else True (woken, something new, retired,
 * or a signal: callers look again). Says "may sleep" in our row, then sleeps on the notify
 * word without the GIL unless a write newer than last_count exists (see ndsharray/segment/). */
static PyObject *reader_wait(ReaderObject *r, PyObject *args) {
    unsigned long long last;
    double timeout;
    long long expect = -1; /* the notify word the caller saw before it looked at the writer */
    if (!PyArg_ParseTuple(args, "Kd|L", &last, &timeout, &expect)) return NULL;
#ifdef __linux__
    if (r->row == 0 || r->stopped) Py_RETURN_TRUE; /* the handle closed */
    a32 *notify = u32_at(r->base, OFF_NOTIFY);
    uintptr_t row = r->row; /* (close() from another thread may detach while we sleep) */
    atomic_fetch_add_explicit(u32_at(row, ROW_WAITING), 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t seen = atomic_load_explicit(notify, memory_order_acquire);
    uint64_t count = atomic_load_explicit(u64_at(r->base, OFF_PUBLISH), memory_order_acquire) >> 8;
    int ready = (count != last && count != 0) ||
                atomic_load_explicit(u32_at(r->base, OFF_RETIRED), memory_order_acquire) != 0 ||
                (expect >= 0 && seen != (uint32_t)expect); /* moved since (a close, a death) */
    long rc = 0;
    int err = 0;
    if (!ready) {
        if (!(timeout > 0)) timeout = 0; /* negative or NaN */
        if (timeout > 1e9) timeout = 1e9;
        struct timespec ts = {(time_t)timeout, (long)((timeout - (double)(time_t)timeout) * 1e9)};
        r->waiting++;
        Py_BEGIN_ALLOW_THREADS
        rc = syscall(SYS_futex, (void *)notify, FUTEX_WAIT, seen, &ts, NULL, 0);
        err = errno;
        Py_END_ALLOW_THREADS
        r->waiting--;
    }
    if (r->row == row) /* (under the GIL: a close in another thread detaches first) */
        atomic_fetch_sub_explicit(u32_at(row, ROW_WAITING), 1, memory_order_release);
    if (rc == -1 && err == EINTR && PyErr_CheckSignals() < 0) return NULL;
    if (rc == -1 && err == ETIMEDOUT) Py_RETURN_FALSE;
    Py_RETURN_TRUE;
#else
    PyErr_SetString(PyExc_OSError, "no futex on this system: poll instead");
    return NULL;
#endif
}

/* stop(): end every wait() of this reader in other threads, now and for good (the handle
 * closes). One FUTEX_WAKE is not enough: sent after a waiter's last look at the words but
 * before its FUTEX_WAIT, it is lost, and the waiter would sleep out its slice (up to 1 s).
 * So wake until no thread of this reader is left in wait(); the sleep between two tries
 * lets the waiters take the GIL and leave. (Other readers of the segment wake for nothing
 * and sleep again.) */
static PyObject *reader_stop(ReaderObject *r, PyObject *noargs) {
    r->stopped = 1;
    for (int k = 0; r->waiting > 0 && k < 10000; k++) {
        futex_wake((uintptr_t)u32_at(r->base, OFF_NOTIFY));
        Py_BEGIN_ALLOW_THREADS
        struct timespec pause = {0, 100000};
        nanosleep(&pause, NULL);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

/* sleep_begin() -> the notify word, after saying "may sleep" in our row (as wait() does
 * before its FUTEX_WAIT), for a waiter that sleeps elsewhere (aio.py's waiter thread); None
 * once the handle closed. The caller then looks for a new write and either sleeps on the
 * word with that value or calls sleep_end(); sleep_end() in any case, exactly once. */
static PyObject *reader_sleep_begin(ReaderObject *r, PyObject *noargs) {
    if (r->row == 0 || r->stopped) Py_RETURN_NONE;
    atomic_fetch_add_explicit(u32_at(r->row, ROW_WAITING), 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    r->async_sleeps++;
    return PyLong_FromUnsignedLong(atomic_load_explicit(u32_at(r->base, OFF_NOTIFY), memory_order_acquire));
}

static PyObject *reader_sleep_end(ReaderObject *r, PyObject *noargs) {
    if (r->async_sleeps > 0) {
        r->async_sleeps--;
        if (r->row != 0) /* (a detached row may be another reader's by now) */
            atomic_fetch_sub_explicit(u32_at(r->row, ROW_WAITING), 1, memory_order_release);
    }
    Py_RETURN_NONE;
}

/* detach(): the handle closes its fd (and so gives up its row, which another reader may
 * take at once): from now on nothing here touches the row. */
static PyObject *reader_detach(ReaderObject *r, PyObject *noargs) {
    r->row = 0;
    Py_RETURN_NONE;
}

static PyObject *reader_get_pinned(ReaderObject *r, void *c) { return PyLong_FromLong(r->total); }
static PyObject *reader_get_notify(ReaderObject *r, void *c) {
    return PyLong_FromUnsignedLong(atomic_load_explicit(u32_at(r->base, OFF_NOTIFY), memory_order_acquire));
}
static PyObject *reader_get_notify_addr(ReaderObject *r, void *c) {
    return PyLong_FromUnsignedLongLong((unsigned long long)(r->base + OFF_NOTIFY));
}
static PyObject *reader_get_count(ReaderObject *r, void *c) { return PyLong_FromUnsignedLongLong(r->count); }
static PyObject *reader_get_stamp(ReaderObject *r, void *c) { return PyLong_FromUnsignedLongLong(r->stamp); }
static PyObject *reader_get_read_ns(ReaderObject *r, void *c) { return PyLong_FromUnsignedLongLong(r->read_ns); }
static PyObject *reader_get_shape_gen(ReaderObject *r, void *c) { return PyLong_FromUnsignedLong(r->shape_gen); }
static PyObject *reader_get_meta(ReaderObject *r, void *c) {
    if (r->meta == NULL) Py_RETURN_NONE;
    return Py_BuildValue("(iO)", r->meta_kind, r->meta);
}
static PyObject *reader_get_on_idle(ReaderObject *r, void *c) {
    return Py_NewRef(r->on_idle ? r->on_idle : Py_None);
}
static int reader_set_on_idle(ReaderObject *r, PyObject *v, void *c) {
    Py_XSETREF(r->on_idle, (v == NULL || v == Py_None) ? NULL : Py_NewRef(v));
    return 0;
}

static PyGetSetDef reader_getset[] = {
    {"pinned", (getter)reader_get_pinned, NULL, "pins this reader holds (views and pending reads)", NULL},
    {"notify", (getter)reader_get_notify, NULL, "the notify word now (acquire)", NULL},
    {"notify_addr", (getter)reader_get_notify_addr, NULL, "the notify word's address", NULL},
    {"count", (getter)reader_get_count, NULL, "write count of the frame pinned last", NULL},
    {"stamp", (getter)reader_get_stamp, NULL, "write time (monotonic ns) of the frame pinned last", NULL},
    {"read_ns", (getter)reader_get_read_ns, NULL, "when the frame pinned last was pinned (monotonic ns)", NULL},
    {"shape_gen", (getter)reader_get_shape_gen, NULL, "the writer's shape/dtype change count of the frame pinned last", NULL},
    {"meta", (getter)reader_get_meta, NULL, "(kind, bytes) of the frame pinned last's metadata, or None", NULL},
    {"on_idle", (getter)reader_get_on_idle, (setter)reader_set_on_idle, "called once when the last pin goes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef reader_methods[] = {
    {"latest", (PyCFunction)reader_latest, METH_O, "Pin the latest slot if it is newer than last_count."},
    {"read", (PyCFunction)reader_read, METH_O, "latest() and the view in one call."},
    {"pin", (PyCFunction)reader_pin, METH_O, "latest() as a Pin object that holds the pin (None, or an int code)."},
    {"view", (PyCFunction)reader_view, METH_O, "A read-only buffer of a pinned slot that keeps the pin."},
    {"array", (PyCFunction)reader_array, METH_O, "The read-only array of a pinned slot, keeping the pin."},
    {"array_of", (PyCFunction)reader_array_of, METH_O, "The read-only array of the frame a Pin holds (or the Pin)."},
    {"stop", (PyCFunction)reader_stop, METH_NOARGS, "End every wait() of this reader, now and for good."},
    {"unpin", (PyCFunction)reader_unpin, METH_O, "Give back a pin latest() handed out."},
    {"wait", (PyCFunction)reader_wait, METH_VARARGS, "Sleep until a write newer than last_count (or timeout)."},
    {"detach", (PyCFunction)reader_detach, METH_NOARGS, "Stop touching the row (the fd is closing)."},
    {"sleep_begin", (PyCFunction)reader_sleep_begin, METH_NOARGS, "Say may-sleep; the notify word (None: closed)."},
    {"sleep_end", (PyCFunction)reader_sleep_end, METH_NOARGS, "End one sleep_begin()."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ndsharray._hot.Reader",
    .tp_basicsize = sizeof(ReaderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A reader's side of a segment (see segment.SegmentReader).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_methods = reader_methods,
    .tp_getset = reader_getset,
};

/* ---- the writer's whole same-shape write in one call --------------------------------- */

#define MAX_DIMS 64
#define GIL_FREE_COPY (256 * 1024) /* copies this large let other threads run meanwhile */

typedef struct {
    PyObject_HEAD
    Py_buffer view; /* of the segment's mapping: while held, the mapping cannot be closed */
    int has_view;
    int closed;  /* no new write starts (a newer generation replaced the segment, or the handle closed) */
    int stopped; /* the handle closed: a write still in flight publishes nothing */
    int deferred, handed; /* hand_over(): close() gave up waiting; who handed the tag back */
    uintptr_t base, rows;
    /* nbytes: the slots' capacity for a frame; data_offset: where slot 0's data starts
     * (segment.Layout.data_offset, taken from Python, never recomputed here) */
    Py_ssize_t nbytes, data_offset, stride;
    Py_ssize_t meta_capacity;
    unsigned nslots;
    int variable; /* 0: the fast path takes only frames of the header's dtype and shape */
    /* The descriptor publish() writes for a slot nobody described: the header's frame. */
    int def_ndim; /* NDIM_HEADER when its dtype or ndim does not fit a slot's entry */
    char def_text[MAX_SLOT_DTYPE];
    npy_intp def_dims[MAX_SLOT_NDIM];
    /* The descriptor written last, and how often it changed (ndarray_mmap_name). */
    int last_ndim;
    char last_text[MAX_SLOT_DTYPE];
    npy_intp last_dims[MAX_SLOT_NDIM];
    unsigned shape_gen;
    uint64_t described[4]; /* slots given a descriptor since acquire */
    /* Shrinking: the largest frame since window_ns; shrink_to > 0 asks for a smaller
     * generation (see note_size). */
    Py_ssize_t window_max, shrink_to;
    uint64_t window_ns, shrink_window_ns; /* the window's start and least length */
    unsigned long long count;
    int latest, prev;
    uint64_t busy[4]; /* slots acquired and not yet published or released (any thread) */
    /* Per slot, who took it through acquire() and when (hot_epoch): abandon() gives back the
     * slots a thread took after a mark() if an exception (a KeyboardInterrupt) lost the
     * index on its way to the caller's except clause (review item 4). */
    unsigned long owner[256];
    unsigned long long taken[256];
    unsigned char order[256]; /* slots to try, warmest first, for (latest, prev) */
    int order_len, order_key_latest, order_key_prev;
} WriterObject;

/* Shrinking (see ndsharray/segment/__init__.py, "When a segment shrinks"): every 256
 * writes, once the window (10 s unless the writer's shrink_window_ns says otherwise: NDSHARRAY_SHRINK_WINDOW, read
 * when the writer opens) has passed since it began, a window whose largest frame used less
 * than a quarter of a capacity of at least 1 MiB asks for a generation 1.5 times that
 * frame (the next write takes the general path, which makes it). One compare per write
 * otherwise.
 * Why: a segment too big for its frames holds every slot's pages in /dev/shm (memory and
 * page cache no other process gets back), but a shrink costs a new generation (a daemon
 * round trip, fresh pages, a new mapping in every reader). The window bounds how often a
 * stream pays that (at most once per window, at most 1/256 of its writes), and the quarter
 * with the 1.5x headroom means a stream needs a four-fold drop in size to shrink and then
 * has room to grow half again before it grows: a stream that alternates two sizes keeps
 * its big frame in every window and never flaps. Below 1 MiB the memory is not worth it. */
#define SHRINK_MIN_CAPACITY (1 << 20)
#define SHRINK_WINDOW_NS 10000000000ull

static int writer_init(WriterObject *w, PyObject *args, PyObject *kw) {
    PyObject *mapping, *shape, *text;
    Py_ssize_t nbytes, data_offset, stride, rows_offset, meta_capacity = 0;
    unsigned nslots, shape_gen = 0;
    unsigned long long count;
    int latest, variable = 0;
    static char *kwlist[] = {"mapping", "rows_offset", "nslots", "nbytes", "data_offset", "stride",
                             "shape", "text", "count", "latest", "meta_capacity", "variable",
                             "shape_gen", NULL};
    if (w->has_view) {
        PyErr_SetString(PyExc_RuntimeError, "Writer initialised twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OnInnnO!OKi|npI", kwlist, &mapping, &rows_offset, &nslots,
                                     &nbytes, &data_offset, &stride, &PyTuple_Type, &shape, &text,
                                     &count, &latest, &meta_capacity, &variable, &shape_gen))
        return -1;
    /* text: the header dtype's slot text, or None when a slot cannot describe it */
    Py_ssize_t nd = PyTuple_GET_SIZE(shape);
    Py_ssize_t tlen = 0;
    const char *t = text == Py_None ? "" : PyUnicode_AsUTF8AndSize(text, &tlen);
    if (t == NULL) return -1;
    if (nslots < 1 || nslots > 255 || nd > MAX_DIMS || tlen > MAX_SLOT_DTYPE || nbytes < 0 || meta_capacity < 0 ||
        latest < -1 || latest >= (int)nslots) {
        PyErr_SetString(PyExc_ValueError, "bad writer geometry");
        return -1;
    }
    memset(w->def_text, 0, sizeof w->def_text);
    memcpy(w->def_text, t, (size_t)tlen);
    w->def_ndim = (text == Py_None || nd > MAX_SLOT_NDIM) ? NDIM_HEADER : (int)nd;
    for (Py_ssize_t k = 0; k < nd && k < MAX_SLOT_NDIM; k++) {
        w->def_dims[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, k));
        if (w->def_dims[k] == -1 && PyErr_Occurred()) return -1;
    }
    if (PyObject_GetBuffer(mapping, &w->view, PyBUF_WRITABLE) < 0) return -1;
    if (data_offset < 0 || rows_offset < 0 || rows_offset + ROW_SIZE * READER_ROWS > data_offset ||
        data_offset % 64 != 0 || stride % 64 != 0 || stride < nbytes + meta_capacity ||
        data_offset + (Py_ssize_t)nslots * stride > w->view.len) {
        PyBuffer_Release(&w->view);
        PyErr_SetString(PyExc_ValueError, "writer geometry does not fit the mapping");
        return -1;
    }
    w->has_view = 1;
    w->base = (uintptr_t)w->view.buf;
    w->rows = w->base + (uintptr_t)rows_offset;
    w->nslots = nslots;
    w->nbytes = nbytes;
    w->meta_capacity = meta_capacity;
    w->data_offset = data_offset;
    w->stride = stride;
    w->variable = variable;
    w->last_ndim = w->def_ndim;
    memcpy(w->last_text, w->def_text, sizeof w->last_text);
    memcpy(w->last_dims, w->def_dims, sizeof w->last_dims);
    w->shape_gen = shape_gen;
    memset(w->described, 0, sizeof w->described);
    w->window_max = 0;
    w->shrink_to = 0;
    w->window_ns = monotonic_ns();
    w->shrink_window_ns = SHRINK_WINDOW_NS;
    w->count = count;
    w->latest = latest;
    w->prev = -1;
    memset(w->busy, 0, sizeof w->busy);
    w->order_len = -1;
    return 0;
}

static void writer_drop_view(WriterObject *w) {
    if (w->has_view) {
        w->has_view = 0;
        PyBuffer_Release(&w->view);
    }
}

static inline int any_busy(WriterObject *w) { return (w->busy[0] | w->busy[1] | w->busy[2] | w->busy[3]) != 0; }

/* The buffer export of the mapping is what keeps it mapped: hold it while any slot is
 * acquired (a copy, in C or numpy, or a loan may still write there), let it go once the
 * writer is closed and none is. */
static void writer_maybe_drop_view(WriterObject *w) {
    if (w->closed && !any_busy(w)) writer_drop_view(w);
}

static void writer_dealloc(WriterObject *w) {
    writer_drop_view(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static inline int is_busy(WriterObject *w, unsigned slot) { return (w->busy[slot >> 6] >> (slot & 63)) & 1; }
static inline void set_busy(WriterObject *w, unsigned slot, int on) {
    if (on)
        w->busy[slot >> 6] |= 1ull << (slot & 63);
    else
        w->busy[slot >> 6] &= ~(1ull << (slot & 63));
}

/* Slots other than the latest, the one written before it first: a writer whose readers
 * keep up ping-pongs between two cache-warm slots. (Latest and prev swap on every write of
 * a ping-pong, so this runs on most writes: it wraps round the ring without a division,
 * which took ~8 ns of a 1 KiB write's ~188.) */
static void writer_order(WriterObject *w) {
    if (w->order_len >= 0 && w->order_key_latest == w->latest && w->order_key_prev == w->prev) return;
    int n = 0;
    unsigned first = w->latest >= 0 ? (unsigned)w->latest + 1 : 0;
    unsigned span = w->latest >= 0 ? w->nslots - 1 : w->nslots;
    if (w->prev >= 0 && w->prev != w->latest && (unsigned)w->prev < w->nslots) w->order[n++] = (unsigned char)w->prev;
    for (unsigned k = 0, slot = first; k < span; k++, slot++) {
        if (slot >= w->nslots) slot -= w->nslots;
        if ((int)slot != w->prev) w->order[n++] = (unsigned char)slot;
    }
    w->order_len = n;
    w->order_key_latest = w->latest;
    w->order_key_prev = w->prev;
}

/* (Called with the GIL: two threads writing through one handle never get the same slot.) */
static long writer_acquire_slot(WriterObject *w) {
    writer_order(w);
    for (int k = 0; k < w->order_len; k++) {
        unsigned slot = w->order[k];
        if (is_busy(w, slot)) continue; /* being written by another thread, or lent by loan() */
        atomic_store_explicit(u64_at(w->base, SLOT_TABLE + SLOT_ENTRY * slot), 0, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst);
        uint32_t used = rows_used(w->base);
        uint64_t bit = 1ull << (slot & 63);
        int pinned = 0;
        for (uint32_t r = 0; r < used && !pinned; r++)
            pinned = (atomic_load_explicit(pin_word(w->rows + ROW_SIZE * (uintptr_t)r, slot), memory_order_relaxed) & bit) != 0;
        if (!pinned) {
            atomic_thread_fence(memory_order_seq_cst);
            set_busy(w, slot, 1);
            w->described[slot >> 6] &= ~(1ull << (slot & 63));
            w->owner[slot] = 0; /* (acquire() says whose; write()'s own stay nobody's) */
            return slot;
        }
    }
    return -1;
}

static inline void check_shrink(WriterObject *w, unsigned long long count, uint64_t now) {
    if ((count & 255) != 0 || now - w->window_ns < w->shrink_window_ns) return;
    if (w->variable && w->nbytes >= SHRINK_MIN_CAPACITY && w->window_max < w->nbytes / 4)
        w->shrink_to = w->window_max + w->window_max / 2;
    w->window_max = 0;
    w->window_ns = now;
}

/* Write a frame's descriptor (and metadata) into the entry of acquired slot `slot` (its
 * count is 0 and no reader pins it: nobody reads the entry). Plain stores: publish()'s
 * release store of the count orders them before any reader can see the frame (see
 * reader_pin_latest). ndim NDIM_HEADER: the header's dtype and shape. */
static void put_descriptor(WriterObject *w, unsigned slot, const char *text, int ndim, const npy_intp *dims,
                           Py_ssize_t nbytes, const char *meta, Py_ssize_t meta_len, int kind) {
    if (nbytes > w->window_max) w->window_max = nbytes;
    unsigned char *e = (unsigned char *)(w->base + SLOT_TABLE + (uintptr_t)SLOT_ENTRY * slot);
    int changed = ndim != w->last_ndim;
    if (!changed && ndim != NDIM_HEADER) {
        changed = memcmp(text, w->last_text, MAX_SLOT_DTYPE) != 0;
        for (int k = 0; !changed && k < ndim; k++) changed = dims[k] != w->last_dims[k];
    }
    if (changed) {
        w->shape_gen++;
        w->last_ndim = ndim;
        if (ndim != NDIM_HEADER) {
            memcpy(w->last_text, text, MAX_SLOT_DTYPE);
            memcpy(w->last_dims, dims, sizeof(npy_intp) * (size_t)ndim);
        }
    }
    if (meta_len > 0)
        memcpy((char *)(w->base + (uintptr_t)w->data_offset + (uintptr_t)slot * (uintptr_t)w->stride +
                        (uintptr_t)w->nbytes), meta, (size_t)meta_len);
    uint32_t mlen = (uint32_t)meta_len, gen = w->shape_gen;
    memcpy(e + ENTRY_META_LEN, &mlen, 4);
    e[ENTRY_META_KIND] = meta_len > 0 ? (unsigned char)kind : META_NONE;
    e[ENTRY_NDIM] = (unsigned char)ndim;
    memcpy(e + ENTRY_SHAPE_GEN, &gen, 4);
    if (ndim != NDIM_HEADER) {
        memcpy(e + ENTRY_DTYPE, text, MAX_SLOT_DTYPE);
        for (int k = 0; k < ndim; k++) {
            uint64_t n = (uint64_t)dims[k];
            memcpy(e + ENTRY_SHAPE + 8 * k, &n, 8);
        }
    }
    w->described[slot >> 6] |= 1ull << (slot & 63);
}

/* Publish, then move the notify word and wake only if a reader may sleep. The notify word
 * shares the header's first cache line with the retired word every read() loads: storing
 * it on every write, as this did, made that line bounce between the writer's core and
 * each reader's, one cache miss per read and one per write under a flat-out writer
 * (issue 16). Left alone while nobody sleeps, the line stays shared and clean.
 *
 * Why no wake-up is lost (Dekker, as between pins and counts): the writer stores the
 * publish word, full fence, loads every row's sleepers count; a blocking reader adds 1 to
 * its sleepers, full fence, loads the notify word and then the publish word. Sequentially
 * consistent fences on both sides (x86-64: mfence or a locked instruction; aarch64: dmb ish,
 * which orders earlier stores before later loads, the one reordering both allow) mean at
 * least one side sees the other's store. If the reader sees the new publish word it does
 * not sleep. Otherwise the writer sees its sleepers count, adds 1 to the notify word and
 * then calls FUTEX_WAKE: the reader's FUTEX_WAIT either finds the word changed (EAGAIN)
 * or was queued before the wake, which then wakes it (the kernel compares the word under
 * the futex bucket lock that FUTEX_WAKE takes too). If the reader's notify load already
 * saw the writer's add, its later acquire load of the publish word sees the publish too:
 * the add is a release after the fence that follows the publish store. An add, not a
 * store of the count: the word always changes, whatever value retire() left in it. */
static unsigned long long writer_publish_slot_at(WriterObject *w, unsigned slot, uint64_t stamp, uint64_t now) {
    if (!((w->described[slot >> 6] >> (slot & 63)) & 1))
        put_descriptor(w, slot, w->def_text, w->def_ndim, w->def_dims, w->nbytes, NULL, 0, META_NONE);
    unsigned long long count = w->count + 1;
    a64 *entry = u64_at(w->base, SLOT_TABLE + SLOT_ENTRY * slot);
    atomic_store_explicit(entry + 1, stamp, memory_order_relaxed);
    atomic_store_explicit(entry, count, memory_order_release);
    atomic_store_explicit(u64_at(w->base, OFF_PUBLISH), (count << 8) | slot, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t used = rows_used(w->base);
    int waiting = 0;
    for (uint32_t r = 0; r < used && !waiting; r++)
        waiting = atomic_load_explicit(u32_at(w->rows + ROW_SIZE * (uintptr_t)r, ROW_WAITING), memory_order_relaxed) != 0;
    if (waiting) {
        atomic_fetch_add_explicit(u32_at(w->base, OFF_NOTIFY), 1, memory_order_release);
        futex_wake(w->base + OFF_NOTIFY);
    }
    w->count = count;
    check_shrink(w, count, now);
    if ((int)slot != w->latest) w->prev = w->latest;
    w->latest = (int)slot;
    set_busy(w, slot, 0);
    return count;
}

/* Publish stamped now: every writer's write and publish (the one clock read they had before). */
static inline unsigned long long writer_publish_slot(WriterObject *w, unsigned slot) {
    uint64_t now = monotonic_ns();
    return writer_publish_slot_at(w, slot, now, now);
}

#define HANDED_BY_CLOSE 1 /* WriterObject.handed: close() sends the release */
#define HANDED_BY_WRITE 2 /* the last overtaken write does */

#define CLOSED_CODE (-3) /* acquire() of a closed writer; write() overtaken by close() */

/* acquire() -> a slot now busy, -1: none is free, -2: the tag was removed, -3: closed.
 * The retired word is read here, where the mapping is known to be held: from Python, a
 * close() in another thread could unmap it between a check and the read. */
static unsigned long long hot_epoch; /* acquire() calls so far, all writers (under the GIL) */

static PyObject *writer_acquire(WriterObject *w, PyObject *noargs) {
    if (!w->has_view || w->closed) return PyLong_FromLong(CLOSED_CODE);
    if (atomic_load_explicit(u32_at(w->base, OFF_RETIRED), memory_order_relaxed) == RETIRED_REMOVED)
        return PyLong_FromLong(-2);
    long slot = writer_acquire_slot(w);
    if (slot >= 0) {
        w->owner[slot] = PyThread_get_thread_ident();
        w->taken[slot] = ++hot_epoch;
    }
    return PyLong_FromLong(slot);
}

/* mark() -> the epoch to pass to abandon(): slots acquired after this call are newer. */
static PyObject *hot_mark(PyObject *self, PyObject *noargs) { return PyLong_FromUnsignedLongLong(hot_epoch); }

/* abandon(mark) -> how many slots it gave back: those still busy that this thread took
 * through acquire() after mark() returned ``mark`` (an open loan() taken before the mark,
 * and other threads' slots, stay). Unpublished, as release() does. owner, taken and
 * hot_epoch are only touched under the GIL (in this process), so they need no ordering of
 * their own; the slot goes back to the protocol exactly as release() gives it back. */
static PyObject *writer_abandon(WriterObject *w, PyObject *arg) {
    unsigned long long mark = PyLong_AsUnsignedLongLong(arg);
    if (mark == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    unsigned long me = PyThread_get_thread_ident();
    long n = 0;
    for (unsigned slot = 0; slot < w->nslots; slot++) {
        if (is_busy(w, slot) && w->owner[slot] == me && w->taken[slot] > mark) {
            set_busy(w, slot, 0);
            n++;
        }
    }
    if (n) writer_maybe_drop_view(w);
    return PyLong_FromLong(n);
}

static long busy_slot_arg(WriterObject *w, PyObject *arg) {
    long slot = PyLong_AsLong(arg);
    if (slot == -1 && PyErr_Occurred()) return -1;
    if (slot < 0 || (unsigned long)slot >= w->nslots || !is_busy(w, (unsigned)slot)) {
        PyErr_SetString(PyExc_ValueError, "not a slot acquire() handed out");
        return -1;
    }
    return slot;
}

/* publish(slot) -> the write count, or 0: the handle was closed (stop()) while the slot was
 * being filled; it is given back unpublished. (A slot acquired before a plain close(), a
 * newer generation replacing the segment, still publishes: no successor writes here.) */
static PyObject *writer_publish_stamped(WriterObject *w, PyObject *arg, uint64_t stamp) {
    long slot = busy_slot_arg(w, arg); /* busy: the mapping is still held */
    if (slot < 0) return NULL;
    if (w->stopped) {
        set_busy(w, (unsigned)slot, 0);
        writer_maybe_drop_view(w);
        return PyLong_FromLong(0);
    }
    uint64_t now = monotonic_ns();
    unsigned long long count = writer_publish_slot_at(w, (unsigned)slot, stamp ? stamp : now, now);
    writer_maybe_drop_view(w);
    return PyLong_FromUnsignedLongLong(count);
}

static PyObject *writer_publish(WriterObject *w, PyObject *arg) { return writer_publish_stamped(w, arg, 0); }

/* publish_at(slot, stamp) -> publish(slot) with this write time (monotonic ns, not 0)
 * instead of now: a bridge's importer gives the source writer's, brought to this host's
 * clock (bridge/clocks.py). Its own entry point: write() and publish() do no more work. */
static PyObject *writer_publish_at(WriterObject *w, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "publish_at(slot, stamp) takes 2 arguments");
        return NULL;
    }
    unsigned long long stamp = PyLong_AsUnsignedLongLong(args[1]);
    if (stamp == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (stamp == 0) {
        PyErr_SetString(PyExc_ValueError, "publish_at(): a stamp of 0 means no frame; give a monotonic time");
        return NULL;
    }
    return writer_publish_stamped(w, args[0], stamp);
}

/* release(slot): give back an acquired slot unpublished (its count stays 0). */
static PyObject *writer_release(WriterObject *w, PyObject *arg) {
    long slot = busy_slot_arg(w, arg);
    if (slot < 0) return NULL;
    set_busy(w, (unsigned)slot, 0);
    writer_maybe_drop_view(w);
    Py_RETURN_NONE;
}

/* close(): no more writes start; the mapping is released now, or by the last write in
 * flight, which still publishes (the segment was replaced by a newer generation). */
static PyObject *writer_close(WriterObject *w, PyObject *noargs) {
    w->closed = 1;
    writer_maybe_drop_view(w);
    Py_RETURN_NONE;
}

/* stop(): the handle closes (review defect 1). As close(), and a write still in flight
 * publishes nothing: the tag is about to be handed back, and a successor writer taking
 * over this segment must not find a second writer's frame in it. The caller then waits
 * for busy to drop to 0 before the daemon hears of the release (see hand_over).
 *
 * Memory ordering, the reason waiting on `busy` is enough: a copying thread's stores into
 * the slot (memcpy without the GIL, numpy's copy without the GIL, or a loan's writes)
 * come before it takes the GIL back and clears its busy bit; the closing thread reads
 * busy == 0 only while holding the GIL, taken after the copier released it. The GIL is a
 * mutex (plus condition variable): its release/acquire pair orders every store before the
 * release ahead of every load after the acquire, on x86-64 (TSO, and glibc ends a
 * non-temporal memcpy with sfence) and on aarch64 alike (pthread mutexes use
 * load-acquire/store-release or LSE atomics with those semantics). Only then does the
 * closing thread send the release to the daemon, and the daemon grants the tag to a
 * successor only after receiving it: each message passes through kernel socket buffers
 * under locks (a release by the sender, an acquire by the receiver), so happens-before
 * runs from our copy's last store to the successor's first store into that slot, on any
 * architecture Linux supports. */
static PyObject *writer_stop(WriterObject *w, PyObject *noargs) {
    w->stopped = 1;
    w->closed = 1;
    writer_maybe_drop_view(w);
    Py_RETURN_NONE;
}

/* hand_over(final) -> True when the caller sends the tag back to the daemon, never while a
 * slot is still being filled. close() calls it with final=True after waiting (bounded) for
 * busy to drop to 0: True if it did; else the last overtaken write, which calls it with
 * final=False after giving its slot back, gets True and sends the release itself. Under
 * the GIL, so only one of the two parties (close(), or one write) ever sees True.
 *
 * close() may ask again (final=True) and then gets the same answer: a KeyboardInterrupt
 * can land between this call's return and the use of its result, and close()'s handler
 * then asks again so the release is still sent (review item 2). The release is
 * idempotent at the daemon (it names this handle's token), so a second one is harmless. */
static PyObject *writer_hand_over(WriterObject *w, PyObject *arg) {
    int final = PyObject_IsTrue(arg);
    if (final < 0) return NULL;
    if (!w->stopped) Py_RETURN_FALSE;
    if (w->handed) /* the same answer to the same party again (an interrupt may have lost it) */
        return PyBool_FromLong(final ? w->handed == HANDED_BY_CLOSE : w->handed == HANDED_BY_WRITE);
    if (final) w->deferred = 1;
    if (!w->deferred || any_busy(w)) Py_RETURN_FALSE;
    w->handed = final ? HANDED_BY_CLOSE : HANDED_BY_WRITE;
    Py_RETURN_TRUE;
}

/* dirty_rows() -> indexes of reader rows that hold anything (a reader's pid, pins, figures);
 * [] once closed. Read under the GIL while the mapping is held. */
static PyObject *writer_dirty_rows(WriterObject *w, PyObject *noargs) {
    PyObject *out = PyList_New(0);
    if (out == NULL || !w->has_view || w->closed) return out;
    uint32_t used = rows_used(w->base);
    for (uint32_t r = 0; r < used; r++) {
        uintptr_t row = w->rows + ROW_SIZE * (uintptr_t)r;
        uint64_t any = 0;
        for (int k = 0; k < 8; k++) any |= atomic_load_explicit(u64_at(row, 8 * (size_t)k), memory_order_relaxed);
        if (any == 0) continue;
        PyObject *i = PyLong_FromUnsignedLong(r);
        if (i == NULL || PyList_Append(out, i) < 0) {
            Py_XDECREF(i);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(i);
    }
    return out;
}

/* clear_row(index) -> False if the writer was closed meanwhile (review defect 7): the
 * caller took the row's lock through fcntl, which let other threads run, and one of them
 * may have closed this writer. close() marks it closed (here, under the GIL) before it
 * closes the fd that held the lock and before the mapping can go, so a writer found open
 * here still holds both, and nothing can close it until this call returns. */
static PyObject *writer_clear_row(WriterObject *w, PyObject *arg) {
    long index = PyLong_AsLong(arg);
    if (index == -1 && PyErr_Occurred()) return NULL;
    if (index < 0 || index >= READER_ROWS) {
        PyErr_SetString(PyExc_ValueError, "no such reader row");
        return NULL;
    }
    if (!w->has_view || w->closed) Py_RETURN_FALSE;
    reset_row(w->rows + ROW_SIZE * (uintptr_t)index, 0);
    Py_RETURN_TRUE;
}

/* The slot text of an array's dtype and its shape, if a slot's entry can describe it (0:
 * it cannot, the slow path; -1: an error). */
static int describable(PyArrayObject *a, char *text) {
    if (PyArray_NDIM(a) > MAX_SLOT_NDIM) return 0;
    return text_from_dtype(PyArray_DESCR(a), text);
}

/* Metadata arguments (bytes or None, kind): 1 and the bytes, 0 none, -1 an error. */
static int meta_args(PyObject *const *args, Py_ssize_t nargs, const char **meta, Py_ssize_t *len, int *kind) {
    *meta = NULL;
    *len = 0;
    *kind = META_NONE;
    if (nargs < 2 || args[1] == Py_None) return 0;
    if (!PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "metadata must be bytes");
        return -1;
    }
    *meta = PyBytes_AS_STRING(args[1]);
    *len = PyBytes_GET_SIZE(args[1]);
    *kind = META_BYTES;
    if (nargs > 2) {
        long k = PyLong_AsLong(args[2]);
        if (k == -1 && PyErr_Occurred()) return -1;
        *kind = (int)k;
    }
    return 1;
}

/* write(array, meta=None, kind=META_BYTES, stamp=0) -> write count, or 0: not here (anything but a
 * plain C-contiguous ndarray, a subclass included; a dtype or ndim a slot cannot describe,
 * more bytes than the capacity, more metadata than its capacity, a closed writer, a writer
 * that asks for a smaller generation; the caller takes its general path), -1: every slot is pinned, -2: the
 * tag was removed, -3: the handle was closed (stop()) in another thread while this copy
 * ran. Nothing is published unless a count is returned. ``stamp``: the write time readers
 * see (monotonic ns; 0: now), as publish_at's: a bridge's importer gives the source writer's. */
static PyObject *writer_write(WriterObject *w, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "write(array, meta=None, kind=1, stamp=0)");
        return NULL;
    }
    uint64_t stamp = 0;
    if (nargs > 3) {
        stamp = PyLong_AsUnsignedLongLong(args[3]);
        if (stamp == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    }
    PyObject *arr = args[0];
    /* Plain ndarrays only: a subclass (a masked array, say) goes through foreign.py first. */
    if (!w->has_view || w->closed || w->shrink_to || !PyArray_CheckExact(arr)) return PyLong_FromLong(0);
    if (atomic_load_explicit(u32_at(w->base, OFF_RETIRED), memory_order_relaxed) == RETIRED_REMOVED)
        return PyLong_FromLong(-2);
    PyArrayObject *a = (PyArrayObject *)arr;
    char text[MAX_SLOT_DTYPE];
    int ndim = PyArray_NDIM(a);
    npy_intp nbytes = PyArray_NBYTES(a);
    if (!PyArray_IS_C_CONTIGUOUS(a) || nbytes > w->nbytes) return PyLong_FromLong(0);
    int ok = describable(a, text);
    if (ok <= 0) {
        PyErr_Clear();
        return PyLong_FromLong(0);
    }
    npy_intp *dims = PyArray_DIMS(a);
    if (!w->variable) { /* only the header's frame */
        int same = ndim == w->def_ndim && memcmp(text, w->def_text, MAX_SLOT_DTYPE) == 0;
        for (int k = 0; same && k < ndim; k++) same = dims[k] == w->def_dims[k];
        if (!same) return PyLong_FromLong(0);
    }
    const char *meta;
    Py_ssize_t meta_len;
    int kind;
    if (meta_args(args, nargs, &meta, &meta_len, &kind) < 0) return NULL;
    if (meta_len > w->meta_capacity) return PyLong_FromLong(0);
    long slot = writer_acquire_slot(w);
    if (slot < 0) return PyLong_FromLong(-1);
    void *dst = (void *)(w->base + (uintptr_t)w->data_offset + (uintptr_t)slot * (uintptr_t)w->stride);
    Py_buffer view;
    if (nbytes >= GIL_FREE_COPY && PyObject_GetBuffer(arr, &view, PyBUF_SIMPLE) == 0) {
        /* The slot is busy: close() meanwhile leaves the mapping to us, and stop() waits
         * for busy to clear before the tag goes back to the daemon. The buffer export
         * keeps the array's memory where it is (no resize) while we copy. */
        Py_BEGIN_ALLOW_THREADS
        memcpy(dst, view.buf, (size_t)nbytes);
        Py_END_ALLOW_THREADS
        PyBuffer_Release(&view);
    } else {
        PyErr_Clear();
        memcpy(dst, PyArray_DATA(a), (size_t)nbytes);
    }
    if (w->stopped) { /* overtaken by the handle's close(): give the slot back unpublished */
        set_busy(w, (unsigned)slot, 0);
        writer_maybe_drop_view(w);
        return PyLong_FromLong(CLOSED_CODE);
    }
    put_descriptor(w, (unsigned)slot, text, ndim, dims, nbytes, meta, meta_len, kind);
    uint64_t now = monotonic_ns();
    unsigned long long count = writer_publish_slot_at(w, (unsigned)slot, stamp ? stamp : now, now);
    writer_maybe_drop_view(w);
    return PyLong_FromUnsignedLongLong(count);
}

/* describe(slot, array, meta=None, kind=META_BYTES): the frame in acquired slot `slot` has
 * array's dtype and shape (a loan, or the general path's copy), and this metadata; the
 * next publish(slot) shows them. A dtype or ndim no entry can describe is recorded as the
 * header's (the caller made sure the array has the header's dtype and shape). Raises
 * ValueError when the frame or the metadata exceed their capacity. */
static PyObject *writer_describe(WriterObject *w, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "describe(slot, array, meta=None, kind=1)");
        return NULL;
    }
    long slot = busy_slot_arg(w, args[0]);
    if (slot < 0) return NULL;
    if (!PyArray_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "describe() takes an ndarray");
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)args[1];
    const char *meta;
    Py_ssize_t meta_len;
    int kind;
    if (meta_args(args + 1, nargs - 1, &meta, &meta_len, &kind) < 0) return NULL;
    npy_intp nbytes = PyArray_NBYTES(a);
    if (nbytes > w->nbytes || meta_len > w->meta_capacity) {
        PyErr_Format(PyExc_ValueError, "a frame of %zd bytes with %zd bytes of metadata does not fit "
                     "slots of %zd + %zd bytes", (Py_ssize_t)nbytes, meta_len, w->nbytes, w->meta_capacity);
        return NULL;
    }
    char text[MAX_SLOT_DTYPE];
    int ok = describable(a, text);
    if (ok < 0) return NULL;
    if (ok)
        put_descriptor(w, (unsigned)slot, text, PyArray_NDIM(a), PyArray_DIMS(a), nbytes, meta, meta_len, kind);
    else
        put_descriptor(w, (unsigned)slot, w->def_text, NDIM_HEADER, w->def_dims, nbytes, meta, meta_len, kind);
    Py_RETURN_NONE;
}

static PyObject *writer_get_count(WriterObject *w, void *c) { return PyLong_FromUnsignedLongLong(w->count); }
static PyObject *writer_get_latest(WriterObject *w, void *c) { return PyLong_FromLong(w->latest); }
static PyObject *writer_get_shape_gen(WriterObject *w, void *c) { return PyLong_FromUnsignedLong(w->shape_gen); }
/* (dtype text, shape) of the frame described last, or None: the header's. */
static PyObject *writer_get_last_frame(WriterObject *w, void *c) {
    if (w->last_ndim == NDIM_HEADER) Py_RETURN_NONE;
    PyObject *shape = PyTuple_New(w->last_ndim);
    if (shape == NULL) return NULL;
    for (int k = 0; k < w->last_ndim; k++) {
        PyObject *n = PyLong_FromSsize_t(w->last_dims[k]);
        if (n == NULL) {
            Py_DECREF(shape);
            return NULL;
        }
        PyTuple_SET_ITEM(shape, k, n);
    }
    PyObject *text = PyUnicode_DecodeASCII(w->last_text, (Py_ssize_t)strnlen(w->last_text, MAX_SLOT_DTYPE), "strict");
    if (text == NULL) {
        Py_DECREF(shape);
        return NULL;
    }
    return Py_BuildValue("(NN)", text, shape);
}
static PyObject *writer_get_shrink_to(WriterObject *w, void *c) { return PyLong_FromSsize_t(w->shrink_to); }
static PyObject *writer_get_shrink_window_ns(WriterObject *w, void *c) {
    return PyLong_FromUnsignedLongLong(w->shrink_window_ns);
}
static int writer_set_shrink_window_ns(WriterObject *w, PyObject *v, void *c) {
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "shrink_window_ns cannot be deleted");
        return -1;
    }
    unsigned long long ns = PyLong_AsUnsignedLongLong(v); /* (an int >= 0, else an error) */
    if (ns == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    w->shrink_window_ns = ns;
    return 0;
}
static PyObject *writer_get_busy(WriterObject *w, void *c) {
    return PyLong_FromLong(__builtin_popcountll(w->busy[0]) + __builtin_popcountll(w->busy[1]) +
                           __builtin_popcountll(w->busy[2]) + __builtin_popcountll(w->busy[3]));
}

static PyGetSetDef writer_getset[] = {
    {"count", (getter)writer_get_count, NULL, "writes published in this segment", NULL},
    {"latest", (getter)writer_get_latest, NULL, "slot of the latest write (-1: none)", NULL},
    {"shape_gen", (getter)writer_get_shape_gen, NULL, "how often the frames' dtype or shape changed", NULL},
    {"last_frame", (getter)writer_get_last_frame, NULL, "(dtype text, shape) of the frame described last, or None (the header's)", NULL},
    {"shrink_to", (getter)writer_get_shrink_to, NULL, "> 0: the capacity a smaller generation should have", NULL},
    {"shrink_window_ns", (getter)writer_get_shrink_window_ns, (setter)writer_set_shrink_window_ns,
     "least length of a shrink check's window (ns; NDSHARRAY_SHRINK_WINDOW)", NULL},
    {"busy", (getter)writer_get_busy, NULL, "slots acquired and not yet published or given back (any thread)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef writer_methods[] = {
    {"write", (PyCFunction)(void (*)(void))writer_write, METH_FASTCALL, "Copy a C-contiguous array that fits into a free slot and publish it."},
    {"describe", (PyCFunction)(void (*)(void))writer_describe, METH_FASTCALL, "Set the dtype, shape and metadata of an acquired slot's frame."},
    {"acquire", (PyCFunction)writer_acquire, METH_NOARGS, "A free slot, its count zeroed; -1 if every slot is pinned."},
    {"publish", (PyCFunction)writer_publish, METH_O, "Publish an acquired slot; returns the write count."},
    {"publish_at", (PyCFunction)(void (*)(void))writer_publish_at, METH_FASTCALL, "publish() with this write time (monotonic ns) instead of now."},
    {"release", (PyCFunction)writer_release, METH_O, "Give back an acquired slot unpublished."},
    {"close", (PyCFunction)writer_close, METH_NOARGS, "No more writes; let the mapping go."},
    {"stop", (PyCFunction)writer_stop, METH_NOARGS, "The handle closes: close(), and writes in flight publish nothing."},
    {"hand_over", (PyCFunction)writer_hand_over, METH_O, "True once, when the tag may go back to the daemon."},
    {"abandon", (PyCFunction)writer_abandon, METH_O, "Give back the busy slots this thread acquired after mark."},
    {"dirty_rows", (PyCFunction)writer_dirty_rows, METH_NOARGS, "Reader rows that hold anything."},
    {"clear_row", (PyCFunction)writer_clear_row, METH_O, "Clear a dead reader's row; False if closed meanwhile."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ndsharray._hot.Writer",
    .tp_basicsize = sizeof(WriterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The single writer's side of a segment (see segment.SegmentWriter).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)writer_init,
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_methods = writer_methods,
    .tp_getset = writer_getset,
};

static PyMethodDef methods[] = {
    {"address", hot_address, METH_O, "Address of a buffer's first byte."},
    {"retire", hot_retire, METH_VARARGS, "Flag a segment retired and wake its sleepers."},
    {"mark", hot_mark, METH_NOARGS, "The acquisition epoch, for Writer.abandon()."},
    {"claim_row", hot_claim_row, METH_VARARGS, "Initialise a reader row just locked."},
    {"clear_row", hot_clear_row, METH_VARARGS, "Clear a dead reader's row."},
    {"set_dtype_hooks", hot_set_dtype_hooks, METH_VARARGS, "set_dtype_hooks(dtype_of, text_of): see _hot.c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hot", "Atomics of ndsharray's slot protocol (see ndsharray/segment/).", -1, methods,
};

PyMODINIT_FUNC PyInit__hot(void) {
    import_array(); /* numpy's C API table (returns NULL on failure) */
    current_pid = getpid();
    pthread_atfork(NULL, NULL, after_fork_child);
    if (PyType_Ready(&WriterType) < 0 || PyType_Ready(&ReaderType) < 0 || PyType_Ready(&PinType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
#ifdef __linux__
    const int have_futex = 1;
#else
    const int have_futex = 0;
#endif
    /* Every layout constant this file uses, for ndsharray/segment/ to check against layout.py. */
    PyObject *offsets = Py_BuildValue(
        "{sisisisisisisisisisisisisisisisisisisisisisisisisisisisi}",
        "VERSION", LAYOUT_VERSION, "OFF_RETIRED", OFF_RETIRED, "OFF_NOTIFY", OFF_NOTIFY,
        "OFF_ROWS_USED", OFF_ROWS_USED, "OFF_PUBLISH", OFF_PUBLISH, "SLOT_TABLE", SLOT_TABLE,
        "SLOT_ENTRY", SLOT_ENTRY, "ENTRY_COUNT", ENTRY_COUNT, "ENTRY_STAMP", ENTRY_STAMP,
        "ENTRY_META_LEN", ENTRY_META_LEN, "ENTRY_META_KIND", ENTRY_META_KIND, "ENTRY_NDIM", ENTRY_NDIM,
        "ENTRY_SHAPE_GEN", ENTRY_SHAPE_GEN, "ENTRY_DTYPE", ENTRY_DTYPE, "ENTRY_SHAPE", ENTRY_SHAPE,
        "MAX_SLOT_NDIM", MAX_SLOT_NDIM, "MAX_SLOT_DTYPE", MAX_SLOT_DTYPE, "NDIM_HEADER", NDIM_HEADER,
        "META_NONE", META_NONE, "META_BYTES", META_BYTES, "META_JSON", META_JSON,
        "ROW_SIZE", ROW_SIZE, "ROW_WAITING", ROW_WAITING, "ROW_PID", ROW_PID,
        "ROW_READ_NS", ROW_READ_NS, "ROW_WRITE_NS", ROW_WRITE_NS, "ROW_READ_COUNT", ROW_READ_COUNT,
        "ROW_PINS", ROW_PINS);
    if (offsets == NULL || PyModule_AddObject(m, "OFFSETS", offsets) < 0) {
        Py_XDECREF(offsets);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "READER_ROWS", READER_ROWS) < 0 ||
        PyModule_AddIntConstant(m, "FUTEX", have_futex) < 0 ||
        PyModule_AddObject(m, "Writer", Py_NewRef(&WriterType)) < 0 ||
        PyModule_AddObject(m, "Reader", Py_NewRef(&ReaderType)) < 0 ||
        PyModule_AddObject(m, "Pin", Py_NewRef(&PinType)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
