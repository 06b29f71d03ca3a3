/* The mask kernel: token walks against a lexer DFA, in C.
 *
 * walk_trie is the compiled twin of mask.py's numpy walks (which stay the fallback, and
 * the reference the tests compare against): token-trie subtrees from lexer states, the
 * whole vocabulary from one state or the rest of tokens whose lexeme ended inside them.
 * Tokens live in a byte trie (preorder; tokens sorted by bytes), walked depth first; a
 * dead byte skips its whole subtree at once.
 *
 * Results: tokens read without leaving the lexeme are OR-ed into a uint32 bitmask;
 * "boundary" subtrees (the lexeme completed before a node's byte) come back as three
 * int64 byte strings (trie node, byte offset, accepting state). The GIL is released
 * while walking, so masks of different sequences can be built on several threads.
 *
 * Elsewhere: Product, the lexer's product DFA built lazily (twin of lexer.LexerCore), in
 * _native_product.c; Earley, the parser's columns and closure (twin of
 * earley.EarleyParser), in _native_earley.c.
 */
#include "_native_walk.h" /* first: it includes Python.h */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

void bounds_free(Bounds *b) {
    free(b->ids);
    free(b->pos);
    free(b->state);
}

/* y# turns a NULL pointer into None: empty vectors point at a real (empty) buffer */
static char empty[1];
#define VEC(v, b) ((b)->n ? (char *)(b)->v : empty), ((b)->n * (Py_ssize_t)sizeof(int64_t))

static PyObject *result3(Bounds *b) {
    if (b->failed) return PyErr_NoMemory();
    return Py_BuildValue("(y#y#y#)", VEC(ids, b), VEC(pos, b), VEC(state, b));
}

static int check_buf(Py_buffer *buf, Py_ssize_t itemsize, Py_ssize_t min_items, const char *name) {
    if (buf->len % itemsize || buf->len / itemsize < min_items) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd items of %zd bytes", name, min_items, itemsize);
        return -1;
    }
    return 0;
}

/* check_trie(nodes Node[N+1], ids i64[T], n_words) -> None: validates a trie once, so
 * that walks can trust it (every index in range, subtrees nested, depths consistent,
 * token ids within a bitmask of n_words words). */
static PyObject *check_trie(PyObject *self, PyObject *args) {
    Py_buffer nb, ib;
    Py_ssize_t n_words;
    if (!PyArg_ParseTuple(args, "y*y*n", &nb, &ib, &n_words)) return NULL;
    const Node *nd = nb.buf;
    const int64_t *ids = ib.buf;
    Py_ssize_t n = nb.len / (Py_ssize_t)sizeof(Node) - 1, n_tok = ib.len / 8;
    int bad = nb.len % sizeof(Node) || ib.len % 8 || n < 0 || nd[n].tok != n_tok;
    for (Py_ssize_t t = 0; t < n_tok && !bad; t++) bad = ids[t] < 0 || (ids[t] >> 5) >= n_words;
    for (Py_ssize_t i = 0; i < n && !bad; i++) {
        bad = nd[i].depth < 1 || nd[i].depth >= 1024 || nd[i].end <= i || nd[i].end > n ||
              nd[i].tok < 0 || nd[i + 1].tok < nd[i].tok || nd[i].tok > n_tok ||
              (i + 1 < n && nd[i + 1].depth > nd[i].depth + 1) || (i == 0 && nd[i].depth != 1);
    }
    PyBuffer_Release(&nb);
    PyBuffer_Release(&ib);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "check_trie: malformed trie");
        return NULL;
    }
    Py_RETURN_NONE;
}

uint8_t filter_flags(WalkFilter *f, const Product *P, int32_t s) {
    if (s >= f->cap) {
        Py_ssize_t cap = P->cap > s ? P->cap : (Py_ssize_t)s + 1;
        uint8_t *fl = realloc(f->flags, cap);
        if (!fl) return 0;
        memset(fl + f->cap, 0, cap - f->cap);
        f->flags = fl, f->cap = cap;
    }
    if (f->flags[s]) return f->flags[s];
    const int32_t *comp = P->comps + (Py_ssize_t)s * P->k;
    uint8_t fl = FILTER_KNOWN | FILTER_PURE;
    for (int32_t j = 0; j < P->k; j++) {
        if (comp[j] < 0) continue;
        if (!f->keep[j]) { fl &= (uint8_t)~FILTER_PURE; continue; }
        fl |= FILTER_ALIVE;
        if (P->dfas[j]->accepting[comp[j]]) fl |= FILTER_ACC;
    }
    return f->flags[s] = fl;
}

/* The walk (see _native_walk.h): depth first with a stack of lexer states by depth;
 * through filter f where not NULL (trie_walk_filtered; inlined twice, so that the plain
 * walk tests nothing of it). */
static inline __attribute__((always_inline)) int walk_impl(const Trie *t, Product *P, const int32_t *start_nodes,
                                                           const int32_t *start_states, Py_ssize_t n_points,
                                                           uint32_t *words, Bounds *b, WalkFilter *f) {
    const Node *nd = t->nd;
    const uint64_t *sub = t->sub;
    const uint8_t *max_chars = t->max_chars;
    const int64_t *ids = t->ids;
    Py_ssize_t n_nodes = t->n_nodes;
    int32_t stk[1024];
    int bad = 0, code = 0;
    product_lock(P);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t pt = 0; pt < n_points && !bad && !code; pt++) {
        Py_ssize_t i = start_nodes[pt];
        int32_t p0 = start_states[pt];
        if (i < 0 || i >= n_nodes || p0 < 0 || p0 >= P->n) { bad = 1; break; }
        if ((code = product_build(P, p0))) break;
        if (f) { /* a start no kept lexeme is alive in reads nothing and ends nothing */
            uint8_t fl = filter_flags(f, P, p0);
            if (!fl) { code = -3; break; }
            if (!(fl & FILTER_ALIVE)) continue;
        }
        const int32_t *tbl = P->table;
        const uint8_t *acc = P->accepting, *built = P->built;
        const uint64_t *loops = P->loops;
        const Count *cnt = P->cnt;
        Py_ssize_t stop = nd[i].end;
        stk[nd[i].depth - 1] = p0;
        while (i < stop) {
            const Node *x = nd + i;
            int32_t d = x->depth;
            int32_t p = stk[d - 1];
            const uint64_t *sp = sub + i * 4;
            int take = 0;
            if (built[p] >= 2 && x->end > i + 1) {
                /* every byte of the subtree loops on p, or (a UTF-8 loopy p) its ASCII
                 * bytes loop on p and the rest is well-formed UTF-8, every character
                 * of which leads back to p: all its tokens end inside. (Not for a
                 * leaf: its one byte is read as cheaply, without loading its byte set,
                 * a cache miss in most walks.) */
                const uint64_t *lp = loops + (Py_ssize_t)p * 4;
                take = !(sp[0] & ~lp[0]) && !(sp[1] & ~lp[1]) &&
                       ((built[p] == 3 && x->utf8) || (!(sp[2] & ~lp[2]) && !(sp[3] & ~lp[3])));
            }
            /* a counting state (each character moves one state on): a subtree of its
             * characters, no token longer than the chain, is all inside. A chain known
             * too short (ASCII's is the longest; below 2 chars nothing worth taking) is
             * rejected before reading the node's counts and byte set: cache misses,
             * where walks start at scattered nodes (a one-char lexeme's boundaries). */
            if (!take && cnt[p].step_kind != 1 && x->end > i + 1 && (!f || (f->flags[p] & FILTER_PURE)) &&
                !(cnt[p].chain[0].done == 1 && cnt[p].chain[0].len < 2) && max_chars[i] < MAX_CHARS &&
                !(cnt[p].chain[0].done == 1 && cnt[p].chain[0].len < max_chars[i])) {
                if (!cnt[p].step_kind) {
                    if ((code = product_step_info(P, p))) break;
                    tbl = P->table, acc = P->accepting, built = P->built, loops = P->loops, cnt = P->cnt;
                }
                const Count *c = cnt + p;
                int utf = (sp[2] | sp[3]) != 0; /* non-ASCII bytes: well-formed UTF-8 only */
                if (c->step_kind == 2 && !(sp[0] & ~c->set[0]) && !(sp[1] & ~c->set[1]) && (!utf || x->utf8)) {
                    int r = product_count(P, p, max_chars[i], utf);
                    if (r < 0) { code = r; break; }
                    tbl = P->table, acc = P->accepting, built = P->built, loops = P->loops, cnt = P->cnt;
                    take = r;
                }
            }
            if (take) {
                for (int32_t t = x->tok, e = nd[x->end].tok; t < e; t++) {
                    int64_t id = ids[t];
                    words[id >> 5] |= (uint32_t)1 << (id & 31);
                }
                i = x->end;
                continue;
            }
            int32_t nx = tbl[(Py_ssize_t)p * 256 + x->byte];
            if (f && nx >= 0) { /* dead unless a kept lexeme is alive */
                uint8_t fl = nx < f->cap ? f->flags[nx] : 0;
                if (!fl && !(fl = filter_flags(f, P, nx))) { code = -3; break; }
                if (!(fl & FILTER_ALIVE)) nx = -1;
            }
            if (nx < 0) {
                /* the lexeme ends before this byte: the whole subtree's tokens go on
                 * in the next lexeme, which the caller walks from this node */
                if (d > 1 && (f ? (f->flags[p] & FILTER_ACC) != 0 : acc[p] != 0) && nd[x->end].tok > x->tok)
                    bounds_push(b, i, d - 1, p);
                i = x->end;
                continue;
            }
            if (!built[nx] && x->end > i + 1) { /* the children read nx's row */
                if ((code = product_build(P, nx))) break;
                tbl = P->table, acc = P->accepting, built = P->built, loops = P->loops, cnt = P->cnt; /* may have moved */
            }
            stk[d] = nx;
            for (int32_t t = x->tok, e = x[1].tok; t < e; t++) {
                int64_t id = ids[t];
                words[id >> 5] |= (uint32_t)1 << (id & 31);
            }
            i++;
        }
    }
    PyThread_release_lock(P->lock);
    Py_END_ALLOW_THREADS
    return code ? code : bad;
}

int trie_walk(const Trie *t, Product *P, const int32_t *start_nodes, const int32_t *start_states,
              Py_ssize_t n_points, uint32_t *words, Bounds *b) {
    return walk_impl(t, P, start_nodes, start_states, n_points, words, b, NULL);
}

int trie_walk_filtered(const Trie *t, Product *P, const int32_t *start_nodes, const int32_t *start_states,
                       Py_ssize_t n_points, uint32_t *words, Bounds *b, WalkFilter *f) {
    return walk_impl(t, P, start_nodes, start_states, n_points, words, b, f);
}

/* walk_trie(nodes Node[N+1] (checked), subtree_bytes u64[N*4], max_chars u8[N], tok_ids i64[T], product,
 *           start_nodes i32[P], start_states i32[P], words u32[W]) -> (boundary nodes, pos, state) as int64 bytes.
 * max_chars: per node, the most characters (UTF-8 lead or ASCII bytes) any token below it
 * holds from the node's byte on, MAX_CHARS meaning that many or more.
 * Walks the subtree of each start node, whose parent (the byte before it) left the lexer
 * in the given state; tokens read without leaving the lexeme are OR-ed into words.
 * Tokens whose first byte is dead are skipped (the caller handles them as starting the
 * next lexeme). Lexer rows are built on the way, as the walk reaches them. */
static PyObject *walk_trie(PyObject *self, PyObject *args) {
    Py_buffer nb, sb, mb, ti, sn, ss, wo;
    Product *P;
    if (!PyArg_ParseTuple(args, "y*y*y*y*O!y*y*w*", &nb, &sb, &mb, &ti, &ProductType, &P, &sn, &ss, &wo))
        return NULL;
    PyObject *res = NULL;
    Py_ssize_t n_nodes = nb.len / (Py_ssize_t)sizeof(Node) - 1, n_points = sn.len / 4;
    Py_ssize_t n_tok = ti.len / 8;
    Bounds b = {0};
    if (check_buf(&sn, 4, 0, "start_nodes") || check_buf(&ss, 4, n_points, "start_states") ||
        check_buf(&sb, 32, n_nodes, "subtree_bytes") || check_buf(&mb, 1, n_nodes, "max_chars"))
        goto done;
    if (n_nodes < 0 || ((const Node *)nb.buf)[n_nodes].tok != n_tok) {
        PyErr_SetString(PyExc_ValueError, "walk_trie: trie and token ids disagree");
        goto done;
    }
    /* ids were checked against the bitmask width by check_trie */
    Trie t = {nb.buf, sb.buf, mb.buf, ti.buf, n_nodes};
    int code = trie_walk(&t, P, sn.buf, ss.buf, n_points, wo.buf, &b);
    if (code < 0) {
        product_error(code);
        goto done;
    }
    if (code) {
        PyErr_SetString(PyExc_ValueError, "walk_trie: start point out of range");
        goto done;
    }
    res = result3(&b);
done:
    bounds_free(&b);
    PyBuffer_Release(&nb); PyBuffer_Release(&sb); PyBuffer_Release(&mb); PyBuffer_Release(&ti); PyBuffer_Release(&sn);
    PyBuffer_Release(&ss); PyBuffer_Release(&wo);
    return res;
}

/* Earley (the parser's columns and closure) is in _native_earley.c */
extern PyTypeObject EarleyType;
/* Boundaries (the boundary recursion of mask misses) is in _native_boundary.c */
extern PyTypeObject BoundariesType;
/* the OR and compaction of mask words are in _native_words.c */
PyObject *take_words(PyObject *self, PyObject *args);
PyObject *or_parts(PyObject *self, PyObject *args);
PyObject *words_digest(PyObject *self, PyObject *arg);
PyObject *words_equal(PyObject *self, PyObject *args);
PyObject *mask_logits(PyObject *self, PyObject *args);

static PyMethodDef methods[] = {
    {"check_trie", check_trie, METH_VARARGS, "Validate a packed trie once."},
    {"walk_trie", walk_trie, METH_VARARGS, "Walk token trie subtrees from lexer states."},
    {"take_words", take_words, METH_VARARGS, "A walk's words, compact when few, and clear the scratch."},
    {"or_parts", or_parts, METH_VARARGS, "OR dense and compact word parts into a bitmask."},
    {"words_digest", words_digest, METH_O, "A 64-bit digest of a bitmask."},
    {"words_equal", words_equal, METH_VARARGS, "Do two bitmasks hold the same bytes?"},
    {"mask_logits", mask_logits, METH_VARARGS, "Set the logits of a row's masked tokens to -inf."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "SGL's mask kernel.", -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&DfaType) < 0 || PyType_Ready(&ProductType) < 0 || PyType_Ready(&EarleyType) < 0 ||
        PyType_Ready(&BoundariesType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ProductType);
    if (PyModule_AddObject(m, "Product", (PyObject *)&ProductType) < 0) {
        Py_DECREF(&ProductType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&DfaType);
    if (PyModule_AddObject(m, "Dfa", (PyObject *)&DfaType) < 0) {
        Py_DECREF(&DfaType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&EarleyType);
    if (PyModule_AddObject(m, "Earley", (PyObject *)&EarleyType) < 0) {
        Py_DECREF(&EarleyType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&BoundariesType);
    if (PyModule_AddObject(m, "Boundaries", (PyObject *)&BoundariesType) < 0) {
        Py_DECREF(&BoundariesType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
