/* Part of the _native extension (see _native.c): the bitmask words of a mask miss.
 *
 * A mask is the OR of many walk results (most of them a few nonzero words, kept as
 * (indices, values) pairs; see mask.py's ``compact``). In numpy each OR of a compact part
 * is a fancy-indexing round trip of several microseconds, and compacting a walk's words
 * was a flatnonzero over the whole bitmask: both were a large part of the Python time of
 * mask misses. These two functions do them in one C call each.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define TAKE_BLOCK 256

/* take_words(scratch u32[W] (writable), limit) -> (indices i64 bytes, values u32 bytes) when
 * at most `limit` words are nonzero, else the W words as bytes. Either way the scratch is
 * left all zero, ready for the next walk. */
PyObject *take_words(PyObject *self, PyObject *args) {
    Py_buffer sb;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "w*n", &sb, &limit)) return NULL;
    PyObject *res = NULL;
    if (sb.len % 4) {
        PyErr_SetString(PyExc_ValueError, "take_words: scratch is not uint32 words");
        goto done;
    }
    uint32_t *w = sb.buf;
    Py_ssize_t n = sb.len / 4, nz = 0;
    /* counted in blocks whose inner loop vectorises (a check of the limit per word kept the
     * loop scalar: ~3 us over Llama-3's 4,008 words, more than most walks it follows) */
    for (Py_ssize_t i = 0; i < n && nz <= limit; i += TAKE_BLOCK) {
        Py_ssize_t e = i + TAKE_BLOCK < n ? i + TAKE_BLOCK : n, c = 0;
        for (Py_ssize_t k = i; k < e; k++) c += w[k] != 0;
        nz += c;
    }
    if (nz > limit) {
        res = PyBytes_FromStringAndSize((const char *)w, sb.len);
        if (res) memset(w, 0, sb.len);
        goto done;
    }
    PyObject *idx = PyBytes_FromStringAndSize(NULL, nz * 8), *val = PyBytes_FromStringAndSize(NULL, nz * 4);
    if (!idx || !val) {
        Py_XDECREF(idx);
        Py_XDECREF(val);
        goto done;
    }
    int64_t *pi = (int64_t *)PyBytes_AS_STRING(idx);
    uint32_t *pv = (uint32_t *)PyBytes_AS_STRING(val);
    for (Py_ssize_t i = 0, j = 0; j < nz; i++) {
        if ((i & 7) == 0 && i + 8 <= n) { /* a block of 8 zero words at once */
            uint32_t any = 0;
            for (int k = 0; k < 8; k++) any |= w[i + k];
            if (!any) { i += 7; continue; }
        }
        if (!w[i]) continue;
        pi[j] = i, pv[j++] = w[i];
        w[i] = 0;
    }
    res = PyTuple_Pack(2, idx, val);
    Py_DECREF(idx);
    Py_DECREF(val);
done:
    PyBuffer_Release(&sb);
    return res;
}

static int dense(PyObject *obj, Py_buffer *b, Py_ssize_t n) {
    if (PyObject_GetBuffer(obj, b, PyBUF_SIMPLE)) return -1;
    if (b->len == n * 4) return 0;
    PyBuffer_Release(b);
    PyErr_SetString(PyExc_ValueError, "or_parts: a dense part has another width");
    return -1;
}

/* out |= a & b, for dense a and b (the next column's own mask, cut to the tokens that
 * start the next lexeme): no 16 KB temporary per mask miss */
static int or_and(uint32_t *out, Py_ssize_t n, PyObject *a, PyObject *b) {
    Py_buffer ab, bb;
    if (dense(a, &ab, n)) return -1;
    if (dense(b, &bb, n)) {
        PyBuffer_Release(&ab);
        return -1;
    }
    const uint32_t *x = ab.buf, *y = bb.buf;
    for (Py_ssize_t i = 0; i < n; i++) out[i] |= x[i] & y[i];
    PyBuffer_Release(&ab);
    PyBuffer_Release(&bb);
    return 0;
}

/* OR one part into out: a buffer of n words, (indices i64, values u32) of nonzero words,
 * or ("&", a, b): the words of a & b. */
static int or_one(uint32_t *out, Py_ssize_t n, PyObject *part) {
    if (PyTuple_Check(part) && PyTuple_GET_SIZE(part) == 3)
        return or_and(out, n, PyTuple_GET_ITEM(part, 1), PyTuple_GET_ITEM(part, 2));
    if (PyTuple_Check(part)) {
        if (PyTuple_GET_SIZE(part) != 2) {
            PyErr_SetString(PyExc_ValueError, "or_parts: a compact part is (indices, values)");
            return -1;
        }
        Py_buffer ib, vb;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(part, 0), &ib, PyBUF_SIMPLE)) return -1;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(part, 1), &vb, PyBUF_SIMPLE)) {
            PyBuffer_Release(&ib);
            return -1;
        }
        int rc = 0;
        Py_ssize_t m = ib.len / 8;
        if (ib.len % 8 || vb.len != m * 4) rc = -1;
        const int64_t *idx = ib.buf;
        const uint32_t *val = vb.buf;
        for (Py_ssize_t j = 0; !rc && j < m; j++) rc = idx[j] < 0 || idx[j] >= n ? -1 : 0;
        if (rc) PyErr_SetString(PyExc_ValueError, "or_parts: compact part out of range");
        else for (Py_ssize_t j = 0; j < m; j++) out[idx[j]] |= val[j];
        PyBuffer_Release(&ib);
        PyBuffer_Release(&vb);
        return rc;
    }
    Py_buffer pb;
    if (dense(part, &pb, n)) return -1;
    const uint32_t *src = pb.buf;
    for (Py_ssize_t i = 0; i < n; i++) out[i] |= src[i];
    PyBuffer_Release(&pb);
    return 0;
}

/* or_parts(out u32[W] (writable), parts list) -> None: out |= every part (dense words,
 * compact (indices, values) pairs, or ("&", a, b)), in one call. */
PyObject *or_parts(PyObject *self, PyObject *args) {
    Py_buffer ob;
    PyObject *parts;
    if (!PyArg_ParseTuple(args, "w*O!", &ob, &PyList_Type, &parts)) return NULL;
    int rc = ob.len % 4 ? -1 : 0;
    if (rc) PyErr_SetString(PyExc_ValueError, "or_parts: out is not uint32 words");
    for (Py_ssize_t i = 0; !rc && i < PyList_GET_SIZE(parts); i++)
        rc = or_one(ob.buf, ob.len / 4, PyList_GET_ITEM(parts, i));
    PyBuffer_Release(&ob);
    if (rc) return NULL;
    Py_RETURN_NONE;
}

/* words_digest(words) -> int: a 64-bit digest of a bitmask, to find masks equal to one
 * already kept (most masks of a grammar repeat: string bodies, values, separators) */
PyObject *words_digest(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE)) return NULL;
    const unsigned char *p = b.buf;
    /* four independent lanes (one multiply chain was ~4 us over Llama-3's 16 KB, the
     * multiplies' latency end to end), folded at the end */
    uint64_t l[4] = {0x9E3779B97F4A7C15ULL ^ (uint64_t)b.len, 0xD6E8FEB86659FD93ULL, 0xA0761D6478BD642FULL,
                     0xE7037ED1A0B428DBULL}, x;
    Py_ssize_t i = 0;
    for (; i + 32 <= b.len; i += 32) {
        for (int k = 0; k < 4; k++) {
            memcpy(&x, p + i + 8 * k, 8);
            l[k] = (l[k] ^ x) * 0xBF58476D1CE4E5B9ULL;
            l[k] ^= l[k] >> 31;
        }
    }
    uint64_t h = l[0];
    for (int k = 1; k < 4; k++) h = (h ^ l[k]) * 0x94D049BB133111EBULL, h ^= h >> 29;
    for (; i < b.len; i++) h = (h ^ p[i]) * 0x100000001B3ULL;
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLongLong(h);
}

/* words_equal(a, b) -> bool: the same bytes */
PyObject *words_equal(PyObject *self, PyObject *args) {
    Py_buffer a, b;
    if (!PyArg_ParseTuple(args, "y*y*", &a, &b)) return NULL;
    int eq = a.len == b.len && !memcmp(a.buf, b.buf, a.len);
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return PyBool_FromLong(eq);
}

/* mask_logits(row (writable, contiguous floats of `itemsize` bytes), words u32) -> None:
 * every logit whose token's bit is clear, or past the words' end, becomes -inf; the
 * others are left as they are. What ``logits[~unpack(words)] = -inf`` does, without the
 * unpacked bools: it reads the mask's words (6 KB for 49k tokens) and writes only the
 * logits it masks, so the logits are the only large memory a decoding step's apply
 * touches. Half, single and double precision (-inf by bit pattern). */
#define MASK_LOOP(T, NEG)                                                             \
    do {                                                                              \
        T *x = (T *)rb.buf, neg = (T)(NEG);                                           \
        for (Py_ssize_t k = 0; k < nw && 32 * k < n; k++) {                           \
            uint32_t w = mw[k];                                                       \
            Py_ssize_t base = 32 * k, end = base + 32 < n ? base + 32 : n;            \
            if (w == 0xFFFFFFFFu) continue;                                           \
            if (w == 0) {                                                             \
                for (Py_ssize_t i = base; i < end; i++) x[i] = neg;                   \
                continue;                                                             \
            }                                                                         \
            for (Py_ssize_t i = base; i < end; i++)                                   \
                if (!((w >> (i - base)) & 1u)) x[i] = neg;                            \
        }                                                                             \
        for (Py_ssize_t i = 32 * nw; i < n; i++) x[i] = neg;                          \
    } while (0)

PyObject *mask_logits(PyObject *self, PyObject *args) {
    Py_buffer rb, wb;
    Py_ssize_t itemsize;
    if (!PyArg_ParseTuple(args, "w*y*n", &rb, &wb, &itemsize)) return NULL;
    PyObject *res = NULL;
    if ((itemsize != 2 && itemsize != 4 && itemsize != 8) || rb.len % itemsize || wb.len % 4) {
        PyErr_SetString(PyExc_ValueError, "mask_logits: logits of 2, 4 or 8 bytes and uint32 words");
        goto done;
    }
    const uint32_t *mw = wb.buf;
    Py_ssize_t n = rb.len / itemsize, nw = wb.len / 4;
    if (itemsize == 2) MASK_LOOP(uint16_t, 0xFC00u);                 /* float16 -inf */
    else if (itemsize == 4) MASK_LOOP(uint32_t, 0xFF800000u);        /* float32 -inf */
    else MASK_LOOP(uint64_t, 0xFFF0000000000000ull);                 /* float64 -inf */
    res = Py_None;
    Py_INCREF(res);
done:
    PyBuffer_Release(&rb);
    PyBuffer_Release(&wb);
    return res;
}
