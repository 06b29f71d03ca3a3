/* The mask kernel: token walks against a lexer DFA, in C.
 *
 * Two entry points, each the compiled twin of a numpy function in mask.py (which stays
 * the fallback, and the reference the tests compare against):
 *
 *   walk_trie   <-> walk_from_start: the whole vocabulary from one lexer state. Tokens
 *                   live in a byte trie (preorder; tokens sorted by bytes), walked depth
 *                   first; a dead byte skips its whole subtree at once.
 *   walk_tokens <-> walk: given tokens from given byte offsets (the rest of tokens
 *                   whose lexeme ended inside them).
 *
 * Results: tokens read without leaving the lexeme are OR-ed into a uint32 bitmask;
 * "boundary" tokens (the lexeme completed at some byte, more bytes follow) come back as
 * three int64 byte strings (token id, byte offset, accepting state). The GIL is released
 * while walking, so masks of different sequences can be built on several threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t *ids, *pos, *state;
    Py_ssize_t n, cap;
    int failed;
} Bounds;

static void bounds_push(Bounds *b, int64_t id, int64_t pos, int64_t state) {
    if (b->failed) return;
    if (b->n == b->cap) {
        Py_ssize_t cap = b->cap ? b->cap * 2 : 256;
        int64_t *ids = realloc(b->ids, cap * sizeof(int64_t));
        if (ids) b->ids = ids;
        int64_t *pos_ = realloc(b->pos, cap * sizeof(int64_t));
        if (pos_) b->pos = pos_;
        int64_t *st = realloc(b->state, cap * sizeof(int64_t));
        if (st) b->state = st;
        if (!ids || !pos_ || !st) { b->failed = 1; return; }
        b->cap = cap;
    }
    b->ids[b->n] = id;
    b->pos[b->n] = pos;
    b->state[b->n] = state;
    b->n++;
}

static void bounds_free(Bounds *b) {
    free(b->ids);
    free(b->pos);
    free(b->state);
}

/* y# turns a NULL pointer into None: empty vectors point at a real (empty) buffer */
static char empty[1];
#define VEC(v, b) ((b)->n ? (char *)(b)->v : empty), ((b)->n * (Py_ssize_t)sizeof(int64_t))

static PyObject *result5(Bounds *b, Bounds *p) {
    if (b->failed || p->failed) return PyErr_NoMemory();
    return Py_BuildValue("(y#y#y#y#y#)", VEC(ids, b), VEC(pos, b), VEC(state, b), VEC(ids, p), VEC(state, p));
}

static PyObject *result6(Bounds *b, Bounds *p) {
    if (b->failed || p->failed) return PyErr_NoMemory();
    return Py_BuildValue("(y#y#y#y#y#y#)", VEC(ids, b), VEC(pos, b), VEC(state, b), VEC(ids, p), VEC(pos, p),
                         VEC(state, p));
}

static int check_buf(Py_buffer *buf, Py_ssize_t itemsize, Py_ssize_t min_items, const char *name) {
    if (buf->len % itemsize || buf->len / itemsize < min_items) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd items of %zd bytes", name, min_items, itemsize);
        return -1;
    }
    return 0;
}

#define UNKNOWN (-2) /* a row the lazy lexer has not built yet: report, let Python build it */

/* walk_trie(node_byte u8[N], node_depth i32[N], node_end i32[N], node_tok i32[N+1],
 *           tok_ids i64[T], table i32[S*256], accepting u8[S],
 *           start_nodes i32[P], start_states i32[P], words u32[W] (written))
 *   -> (boundary ids, pos, state, pending nodes, pending states) as int64 bytes.
 * Walks the subtree of each start node, whose parent (the byte before it) left the lexer
 * in the given state. node_tok[i]..node_tok[i+1] are the tokens ending at node i;
 * node_tok[i]..node_tok[node_end[i]] the tokens of its subtree (preorder). Tokens whose
 * first byte is dead are skipped (the caller handles them as starting the next lexeme).
 * A subtree under a state whose row is UNKNOWN comes back as pending (node, state). */
static PyObject *walk_trie(PyObject *self, PyObject *args) {
    Py_buffer nb, nd, ne, nt, ti, tb, ac, sn, ss, wo;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*w*", &nb, &nd, &ne, &nt, &ti, &tb, &ac, &sn, &ss, &wo))
        return NULL;
    PyObject *res = NULL;
    Py_ssize_t n_nodes = nb.len, n_states = ac.len, n_words = wo.len / 4, n_points = sn.len / 4;
    Bounds b = {0}, pend = {0};
    if (check_buf(&nd, 4, n_nodes, "node_depth") || check_buf(&ne, 4, n_nodes, "node_end") ||
        check_buf(&nt, 4, n_nodes + 1, "node_tok") || check_buf(&tb, 4, n_states * 256, "table") ||
        check_buf(&ti, 8, 0, "tok_ids") || check_buf(&sn, 4, 0, "start_nodes") ||
        check_buf(&ss, 4, n_points, "start_states"))
        goto done;
    {
        const uint8_t *byte = nb.buf, *acc = ac.buf;
        const int32_t *depth = nd.buf, *end = ne.buf, *tok = nt.buf, *table = tb.buf;
        const int32_t *start_nodes = sn.buf, *start_states = ss.buf;
        const int64_t *ids = ti.buf;
        uint32_t *words = wo.buf;
        Py_ssize_t n_tok = ti.len / 8;
        int32_t stk[1024];
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t pt = 0; pt < n_points && !bad; pt++) {
            Py_ssize_t i = start_nodes[pt];
            int32_t p0 = start_states[pt];
            if (i < 0 || i >= n_nodes || p0 < 0 || p0 >= n_states || depth[i] < 1 || depth[i] >= 1024) { bad = 1; break; }
            Py_ssize_t stop = end[i];
            stk[depth[i] - 1] = p0;
            while (i < stop) {
                int32_t d = depth[i];
                if (d < 1 || d >= 1024 || end[i] <= i || end[i] > n_nodes || tok[i] < 0 ||
                    tok[end[i]] > n_tok || tok[i + 1] < tok[i]) { bad = 1; break; }
                int32_t p = stk[d - 1];
                int32_t nx = table[(Py_ssize_t)p * 256 + byte[i]];
                if (nx < 0) {
                    if (nx == UNKNOWN) bounds_push(&pend, i, 0, p);
                    else if (d > 1 && acc[p])
                        for (int32_t t = tok[i]; t < tok[end[i]]; t++) bounds_push(&b, ids[t], d - 1, p);
                    i = end[i];
                    continue;
                }
                if (nx >= n_states) { bad = 1; break; }
                stk[d] = nx;
                for (int32_t t = tok[i]; t < tok[i + 1]; t++) {
                    int64_t id = ids[t];
                    if (id < 0 || (id >> 5) >= n_words) { bad = 1; break; }
                    words[id >> 5] |= (uint32_t)1 << (id & 31);
                }
                if (bad) break;
                i++;
            }
        }
        Py_END_ALLOW_THREADS
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "walk_trie: malformed trie or table");
            goto done;
        }
    }
    res = result5(&b, &pend);
done:
    bounds_free(&b);
    bounds_free(&pend);
    PyBuffer_Release(&nb); PyBuffer_Release(&nd); PyBuffer_Release(&ne); PyBuffer_Release(&nt);
    PyBuffer_Release(&ti); PyBuffer_Release(&tb); PyBuffer_Release(&ac); PyBuffer_Release(&sn);
    PyBuffer_Release(&ss); PyBuffer_Release(&wo);
    return res;
}

/* walk_tokens(tok_bytes u8[], tok_off i64[V+1], ids i64[K], pos i64[K], states i32[K],
 *             table i32[S*256], accepting u8[S], words u32[W] (written))
 *   -> (boundary ids, pos, state, pending ids, pending pos, pending states).
 * Token ids[j] is read from byte pos[j] on, the lexer in states[j]. */
static PyObject *walk_tokens(PyObject *self, PyObject *args) {
    Py_buffer by, of, ib, pb, sb, tb, ac, wo;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*", &by, &of, &ib, &pb, &sb, &tb, &ac, &wo))
        return NULL;
    PyObject *res = NULL;
    Py_ssize_t n_states = ac.len, n_words = wo.len / 4, n_vocab = of.len / 8 - 1, k = ib.len / 8;
    Bounds b = {0}, pend = {0};
    if (check_buf(&of, 8, 1, "tok_off") || check_buf(&ib, 8, 0, "ids") || check_buf(&pb, 8, k, "pos") ||
        check_buf(&sb, 4, k, "states") || check_buf(&tb, 4, n_states * 256, "table"))
        goto done;
    {
        const uint8_t *bytes = by.buf, *acc = ac.buf;
        const int64_t *off = of.buf, *ids = ib.buf, *pos = pb.buf;
        const int32_t *table = tb.buf, *states = sb.buf;
        uint32_t *words = wo.buf;
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t j = 0; j < k && !bad; j++) {
            int64_t id = ids[j];
            if (id < 0 || id >= n_vocab || (id >> 5) >= n_words || off[id + 1] > by.len || pos[j] < 0 ||
                states[j] < 0 || states[j] >= n_states) { bad = 1; break; }
            int64_t start = off[id], stop = off[id + 1], q = start + pos[j];
            int32_t cur = states[j];
            for (;; q++) {
                if (q >= stop) { words[id >> 5] |= (uint32_t)1 << (id & 31); break; }
                int32_t nx = table[(Py_ssize_t)cur * 256 + bytes[q]];
                if (nx < 0) {
                    if (nx == UNKNOWN) bounds_push(&pend, id, q - start, cur);
                    else if (acc[cur]) bounds_push(&b, id, q - start, cur);
                    break;
                }
                if (nx >= n_states) { bad = 1; break; }
                cur = nx;
            }
        }
        Py_END_ALLOW_THREADS
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "walk_tokens: malformed tokens or table");
            goto done;
        }
    }
    res = result6(&b, &pend);
done:
    bounds_free(&b);
    bounds_free(&pend);
    PyBuffer_Release(&by); PyBuffer_Release(&of); PyBuffer_Release(&ib); PyBuffer_Release(&pb);
    PyBuffer_Release(&sb); PyBuffer_Release(&tb); PyBuffer_Release(&ac); PyBuffer_Release(&wo);
    return res;
}

static PyMethodDef methods[] = {
    {"walk_trie", walk_trie, METH_VARARGS, "Walk the whole token trie from one lexer state."},
    {"walk_tokens", walk_tokens, METH_VARARGS, "Walk given tokens from given byte offsets."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "SGL's mask kernel.", -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
