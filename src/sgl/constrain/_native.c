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
#include <pythread.h>

#define UNKNOWN (-2) /* a row not built yet */

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



/* ------------------------------------------------------------------------------------
 * Product: the lexer's product DFA over k lexeme DFAs, built lazily, row by row.
 *
 * All component DFAs share one table of "global" states, `big` ((G+1) x 256; row G is
 * the dead state, looping on itself). A product state is the vector of its components'
 * global states; a hash table maps vectors to ids. A state gets an id when a built row
 * first leads to it; its own row is built on first use, by the walks below (inline, no
 * round trip to Python) or by `expand`.
 * ------------------------------------------------------------------------------------ */
typedef struct {
    PyObject_HEAD
    int32_t *big;
    uint8_t *acc_global;
    int32_t dead, k;
    int32_t *comps;    /* n x k */
    int32_t *table;    /* n x 256: target, -1 dead, UNKNOWN not built */
    uint8_t *accepting, *built; /* built: 0 not yet, 1 built, 2 built and "loopy" */
    uint64_t *loops;              /* n x 4: the bytes on which a built state loops to itself */
    Py_ssize_t n, cap, max_states;
    int32_t *slots;    /* open addressing: state id or -1 */
    Py_ssize_t n_slots;
    int32_t *scratch;  /* k */
    PyThread_type_lock lock;
} Product;

static uint64_t comp_hash(const int32_t *c, int32_t k) {
    uint64_t h = 1469598103934665603ULL;
    for (int32_t j = 0; j < k; j++) {
        h ^= (uint32_t)c[j];
        h *= 1099511628211ULL;
        h ^= h >> 29;
    }
    return h;
}

static int product_rehash(Product *p, Py_ssize_t n_slots) {
    int32_t *slots = malloc(n_slots * sizeof(int32_t));
    if (!slots) return -1;
    memset(slots, 0xff, n_slots * sizeof(int32_t));
    for (Py_ssize_t s = 0; s < p->n; s++) {
        Py_ssize_t h = (Py_ssize_t)(comp_hash(p->comps + s * p->k, p->k) & (uint64_t)(n_slots - 1));
        while (slots[h] >= 0) h = (h + 1) & (n_slots - 1);
        slots[h] = (int32_t)s;
    }
    free(p->slots);
    p->slots = slots;
    p->n_slots = n_slots;
    return 0;
}

/* The id of product state `c` (k global states), registering it if new.
 * Returns -1 for the all-dead vector, -2 on the state budget, -3 out of memory. */
static int32_t product_intern(Product *p, const int32_t *c) {
    int32_t k = p->k, live = 0;
    for (int32_t j = 0; j < k; j++) live |= (c[j] != p->dead);
    if (!live) return -1;
    uint64_t hv = comp_hash(c, k);
    Py_ssize_t h = (Py_ssize_t)(hv & (uint64_t)(p->n_slots - 1));
    while (p->slots[h] >= 0) {
        int32_t s = p->slots[h];
        if (!memcmp(p->comps + (Py_ssize_t)s * k, c, k * sizeof(int32_t))) return s;
        h = (h + 1) & (p->n_slots - 1);
    }
    if (p->n >= p->max_states) return -2;
    if (p->n == p->cap) {
        Py_ssize_t cap = p->cap * 2;
        int32_t *comps = realloc(p->comps, cap * k * sizeof(int32_t));
        if (comps) p->comps = comps;
        int32_t *table = realloc(p->table, cap * 256 * sizeof(int32_t));
        if (table) p->table = table;
        uint8_t *acc = realloc(p->accepting, cap);
        if (acc) p->accepting = acc;
        uint8_t *built = realloc(p->built, cap);
        if (built) p->built = built;
        uint64_t *loops = realloc(p->loops, cap * 4 * sizeof(uint64_t));
        if (loops) p->loops = loops;
        if (!comps || !table || !acc || !built || !loops) return -3;
        p->cap = cap;
    }
    int32_t s = (int32_t)p->n++;
    memcpy(p->comps + (Py_ssize_t)s * k, c, k * sizeof(int32_t));
    uint8_t acc = 0;
    for (int32_t j = 0; j < k; j++) acc |= p->acc_global[c[j]];
    p->accepting[s] = acc;
    p->built[s] = 0;
    for (int b = 0; b < 256; b++) p->table[(Py_ssize_t)s * 256 + b] = UNKNOWN;
    p->slots[h] = s;
    if (2 * p->n > p->n_slots && product_rehash(p, p->n_slots * 2)) return -3;
    return s;
}

/* Build the row of state s: 0, or -2 (budget) / -3 (memory). */
static int product_build(Product *p, int32_t s) {
    if (p->built[s]) return 0;
    int32_t k = p->k, *c = p->scratch;
    for (int b = 0; b < 256; b++) {
        const int32_t *src = p->comps + (Py_ssize_t)s * k;
        for (int32_t j = 0; j < k; j++) c[j] = p->big[(Py_ssize_t)src[j] * 256 + b];
        int32_t t = product_intern(p, c);
        if (t < -1) return t;
        p->table[(Py_ssize_t)s * 256 + b] = t; /* after intern: it may move p->table */
    }
    /* A state that loops on most bytes (a string body) lets a walk take whole subtrees
     * made only of those bytes at once (see walk_trie). */
    uint64_t *lp = p->loops + (Py_ssize_t)s * 4;
    int n_loop = 0;
    lp[0] = lp[1] = lp[2] = lp[3] = 0;
    for (int b = 0; b < 256; b++)
        if (p->table[(Py_ssize_t)s * 256 + b] == s) lp[b >> 6] |= (uint64_t)1 << (b & 63), n_loop++;
    p->built[s] = n_loop >= 64 ? 2 : 1;
    return 0;
}

static int product_error(int code) {
    if (code == -2) PyErr_SetString(PyExc_OverflowError, "lexer state budget exceeded");
    else PyErr_NoMemory();
    return -1;
}

/* Lock a product without ever waiting for it while holding the GIL (a walker holds the
 * lock with the GIL released, and needs the GIL back before it lets go). */
static void product_lock(Product *p) {
    if (!PyThread_acquire_lock(p->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(p->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

static void Product_dealloc(Product *p) {
    free(p->big); free(p->acc_global); free(p->comps); free(p->table); free(p->accepting);
    free(p->built); free(p->loops); free(p->slots); free(p->scratch);
    if (p->lock) PyThread_free_lock(p->lock);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyTypeObject ProductType;

/* Product(big int32[(G+1)*256], acc_global u8[G+1], start int32[k], max_states) */
static PyObject *Product_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Py_buffer bg, ag, st;
    Py_ssize_t max_states;
    if (!PyArg_ParseTuple(args, "y*y*y*n", &bg, &ag, &st, &max_states)) return NULL;
    Product *p = NULL;
    Py_ssize_t g1 = ag.len, k = st.len / 4;
    if (bg.len != g1 * 256 * 4 || k < 1 || st.len % 4 || g1 < 1) {
        PyErr_SetString(PyExc_ValueError, "Product: inconsistent arrays");
        goto done;
    }
    for (Py_ssize_t i = 0; i < g1 * 256; i++) {
        int32_t v = ((int32_t *)bg.buf)[i];
        if (v < 0 || v >= g1) { PyErr_SetString(PyExc_ValueError, "Product: bad target"); goto done; }
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        int32_t v = ((int32_t *)st.buf)[j];
        if (v < 0 || v >= g1) { PyErr_SetString(PyExc_ValueError, "Product: bad start"); goto done; }
    }
    p = (Product *)type->tp_alloc(type, 0);
    if (!p) goto done;
    p->dead = (int32_t)(g1 - 1);
    p->k = (int32_t)k;
    p->cap = 16;
    p->max_states = max_states;
    p->big = malloc(bg.len);
    p->acc_global = malloc(g1);
    p->comps = malloc(p->cap * k * sizeof(int32_t));
    p->table = malloc(p->cap * 256 * sizeof(int32_t));
    p->accepting = malloc(p->cap);
    p->built = malloc(p->cap);
    p->loops = malloc(p->cap * 4 * sizeof(uint64_t));
    p->scratch = malloc(k * sizeof(int32_t));
    p->lock = PyThread_allocate_lock();
    if (!p->big || !p->acc_global || !p->comps || !p->table || !p->accepting || !p->built || !p->loops || !p->scratch ||
        !p->lock || product_rehash(p, 64)) {
        Py_DECREF(p);
        p = NULL;
        PyErr_NoMemory();
        goto done;
    }
    memcpy(p->big, bg.buf, bg.len);
    memcpy(p->acc_global, ag.buf, g1);
    if (product_intern(p, st.buf) != 0) {
        Py_DECREF(p);
        p = NULL;
        PyErr_SetString(PyExc_ValueError, "Product: the start state is dead");
    }
done:
    PyBuffer_Release(&bg); PyBuffer_Release(&ag); PyBuffer_Release(&st);
    return (PyObject *)p;
}

static int product_check_state(Product *p, Py_ssize_t s) {
    if (s < 0 || s >= p->n) {
        PyErr_Format(PyExc_IndexError, "lexer state %zd out of range", s);
        return -1;
    }
    return 0;
}

/* row(state) -> the state's row as int32 bytes (built if needed) */
static PyObject *Product_row(Product *p, PyObject *arg) {
    Py_ssize_t s = PyLong_AsSsize_t(arg);
    if (s == -1 && PyErr_Occurred()) return NULL;
    PyObject *res = NULL;
    product_lock(p);
    if (!product_check_state(p, s)) {
        int code = product_build(p, (int32_t)s);
        if (code) product_error(code);
        else res = PyBytes_FromStringAndSize((char *)(p->table + s * 256), 256 * sizeof(int32_t));
    }
    PyThread_release_lock(p->lock);
    return res;
}

/* expand_all() -> builds every reachable row (for the numpy walks) */
static PyObject *Product_expand_all(Product *p, PyObject *unused) {
    int code = 0;
    product_lock(p);
    for (Py_ssize_t s = 0; s < p->n && !code; s++) code = product_build(p, (int32_t)s);
    PyThread_release_lock(p->lock);
    if (code) return product_error(code), NULL;
    Py_RETURN_NONE;
}

/* arrays() -> (table int32 bytes n*256, accepting u8 bytes n): a copy, for numpy */
static PyObject *Product_arrays(Product *p, PyObject *unused) {
    product_lock(p);
    PyObject *res = Py_BuildValue("(y#y#)", (char *)p->table, p->n * 256 * (Py_ssize_t)sizeof(int32_t),
                                  (char *)p->accepting, p->n);
    PyThread_release_lock(p->lock);
    return res;
}

/* comp(state) -> the component global states, int32 bytes */
static PyObject *Product_comp(Product *p, PyObject *arg) {
    Py_ssize_t s = PyLong_AsSsize_t(arg);
    if (s == -1 && PyErr_Occurred()) return NULL;
    product_lock(p); /* a walk on another thread may be growing the arrays */
    PyObject *res = product_check_state(p, s) ? NULL
        : PyBytes_FromStringAndSize((char *)(p->comps + s * p->k), p->k * sizeof(int32_t));
    PyThread_release_lock(p->lock);
    return res;
}

/* intern(comp int32 bytes) -> the id of that product state (registered if new; -1 if all dead) */
static PyObject *Product_intern(Product *p, PyObject *arg) {
    Py_buffer cb;
    if (PyObject_GetBuffer(arg, &cb, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *res = NULL;
    if (cb.len != p->k * (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "intern: expected k int32 states");
    } else {
        int bad = 0;
        for (int32_t j = 0; j < p->k; j++) {
            int32_t v = ((int32_t *)cb.buf)[j];
            if (v < 0 || v > p->dead) bad = 1;
        }
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "intern: state out of range");
        } else {
            product_lock(p);
            int32_t t = product_intern(p, cb.buf);
            PyThread_release_lock(p->lock);
            if (t < -1) product_error(t);
            else res = PyLong_FromLong(t);
        }
    }
    PyBuffer_Release(&cb);
    return res;
}

static PyObject *Product_accepting(Product *p, PyObject *arg) {
    Py_ssize_t s = PyLong_AsSsize_t(arg);
    if (s == -1 && PyErr_Occurred()) return NULL;
    product_lock(p);
    PyObject *res = product_check_state(p, s) ? NULL : PyBool_FromLong(p->accepting[s]);
    PyThread_release_lock(p->lock);
    return res;
}

static PyObject *Product_n_states(Product *p, void *unused) { return PyLong_FromSsize_t(p->n); }

static PyMethodDef Product_methods[] = {
    {"row", (PyCFunction)Product_row, METH_O, "The row of a state (built if needed), int32 bytes."},
    {"expand_all", (PyCFunction)Product_expand_all, METH_NOARGS, "Build every reachable row."},
    {"arrays", (PyCFunction)Product_arrays, METH_NOARGS, "(table, accepting) as bytes."},
    {"comp", (PyCFunction)Product_comp, METH_O, "A state's component states, int32 bytes."},
    {"intern", (PyCFunction)Product_intern, METH_O, "The id of a vector of component states."},
    {"accepting", (PyCFunction)Product_accepting, METH_O, "Does any lexeme accept in this state?"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Product_getset[] = {
    {"n_states", (getter)Product_n_states, NULL, "states with an id so far", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ProductType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sgl.constrain._native.Product",
    .tp_basicsize = sizeof(Product),
    .tp_dealloc = (destructor)Product_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A lexer product DFA, built lazily.",
    .tp_methods = Product_methods,
    .tp_getset = Product_getset,
    .tp_new = Product_new,
};

/* One trie node, packed (12 bytes): its subtree ends before node `end`; tokens
 * tok .. next node's tok end here; `depth` 1 = a token's first byte. */
typedef struct {
    int32_t end;
    int32_t tok;
    uint16_t depth;
    uint8_t byte;
    uint8_t pad;
} Node;

/* check_trie(nodes Node[N+1], n_tok) -> None: validates a trie once, so that walks can
 * trust it (every index in range, subtrees nested, depths consistent). */
static PyObject *check_trie(PyObject *self, PyObject *args) {
    Py_buffer nb;
    Py_ssize_t n_tok;
    if (!PyArg_ParseTuple(args, "y*n", &nb, &n_tok)) return NULL;
    const Node *nd = nb.buf;
    Py_ssize_t n = nb.len / (Py_ssize_t)sizeof(Node) - 1;
    int bad = nb.len % sizeof(Node) || n < 0 || nd[n].tok != n_tok;
    for (Py_ssize_t i = 0; i < n && !bad; i++) {
        bad = nd[i].depth < 1 || nd[i].depth >= 1024 || nd[i].end <= i || nd[i].end > n ||
              nd[i].tok < 0 || nd[i + 1].tok < nd[i].tok || nd[i].tok > n_tok ||
              (i + 1 < n && nd[i + 1].depth > nd[i].depth + 1) || (i == 0 && nd[i].depth != 1);
    }
    PyBuffer_Release(&nb);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "check_trie: malformed trie");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* walk_trie(nodes Node[N+1] (checked), subtree_bytes u64[N*4], tok_ids i64[T], product, start_nodes i32[P],
 *           start_states i32[P], words u32[W]) -> (boundary ids, pos, state) as int64 bytes.
 * Walks the subtree of each start node, whose parent (the byte before it) left the lexer
 * in the given state; tokens read without leaving the lexeme are OR-ed into words.
 * Tokens whose first byte is dead are skipped (the caller handles them as starting the
 * next lexeme). Lexer rows are built on the way, as the walk reaches them. */
static PyObject *walk_trie(PyObject *self, PyObject *args) {
    Py_buffer nb, sb, ti, sn, ss, wo;
    Product *P;
    if (!PyArg_ParseTuple(args, "y*y*y*O!y*y*w*", &nb, &sb, &ti, &ProductType, &P, &sn, &ss, &wo)) return NULL;
    PyObject *res = NULL;
    Py_ssize_t n_nodes = nb.len / (Py_ssize_t)sizeof(Node) - 1, n_words = wo.len / 4, n_points = sn.len / 4;
    Py_ssize_t n_tok = ti.len / 8;
    Bounds b = {0};
    if (check_buf(&sn, 4, 0, "start_nodes") || check_buf(&ss, 4, n_points, "start_states") ||
        check_buf(&sb, 32, n_nodes, "subtree_bytes"))
        goto done;
    if (n_nodes < 0 || ((const Node *)nb.buf)[n_nodes].tok != n_tok) {
        PyErr_SetString(PyExc_ValueError, "walk_trie: trie and token ids disagree");
        goto done;
    }
    {
        const Node *nd = nb.buf;
        const uint64_t *sub = sb.buf;
        const int64_t *ids = ti.buf;
        const int32_t *start_nodes = sn.buf, *start_states = ss.buf;
        uint32_t *words = wo.buf;
        int32_t stk[1024];
        int bad = 0, code = 0;
        for (Py_ssize_t t = 0; t < n_tok; t++) bad |= ids[t] < 0 || (ids[t] >> 5) >= n_words;
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "walk_trie: token id beyond the bitmask");
            goto done;
        }
        product_lock(P);
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t pt = 0; pt < n_points && !bad && !code; pt++) {
            Py_ssize_t i = start_nodes[pt];
            int32_t p0 = start_states[pt];
            if (i < 0 || i >= n_nodes || p0 < 0 || p0 >= P->n) { bad = 1; break; }
            if ((code = product_build(P, p0))) break;
            const int32_t *tbl = P->table;
            const uint8_t *acc = P->accepting, *built = P->built;
            const uint64_t *loops = P->loops;
            Py_ssize_t stop = nd[i].end;
            stk[nd[i].depth - 1] = p0;
            while (i < stop) {
                const Node *x = nd + i;
                int32_t d = x->depth;
                int32_t p = stk[d - 1];
                if (built[p] == 2) {
                    /* every byte of the subtree loops on p: all its tokens end inside */
                    const uint64_t *lp = loops + (Py_ssize_t)p * 4, *sp = sub + i * 4;
                    if (!(sp[0] & ~lp[0]) && !(sp[1] & ~lp[1]) && !(sp[2] & ~lp[2]) && !(sp[3] & ~lp[3])) {
                        for (int32_t t = x->tok, e = nd[x->end].tok; t < e; t++) {
                            int64_t id = ids[t];
                            words[id >> 5] |= (uint32_t)1 << (id & 31);
                        }
                        i = x->end;
                        continue;
                    }
                }
                int32_t nx = tbl[(Py_ssize_t)p * 256 + x->byte];
                if (nx < 0) {
                    if (d > 1 && acc[p])
                        for (int32_t t = x->tok; t < nd[x->end].tok; t++) bounds_push(&b, ids[t], d - 1, p);
                    i = x->end;
                    continue;
                }
                if (!built[nx] && x->end > i + 1) { /* the children read nx's row */
                    if ((code = product_build(P, nx))) break;
                    tbl = P->table, acc = P->accepting, built = P->built, loops = P->loops; /* may have moved */
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
        if (code) {
            product_error(code);
            goto done;
        }
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "walk_trie: start point out of range");
            goto done;
        }
    }
    res = result3(&b);
done:
    bounds_free(&b);
    PyBuffer_Release(&nb); PyBuffer_Release(&sb); PyBuffer_Release(&ti); PyBuffer_Release(&sn);
    PyBuffer_Release(&ss); PyBuffer_Release(&wo);
    return res;
}

/* walk_tokens(tok_bytes u8[], tok_off i64[V+1], ids i64[K], pos i64[K], product, state,
 *             words u32[W]) -> (boundary ids, pos, state).
 * Token ids[j] is read from byte pos[j] on, the lexer starting in `state`. */
static PyObject *walk_tokens(PyObject *self, PyObject *args) {
    Py_buffer by, of, ib, pb, wo;
    Product *P;
    int state0;
    if (!PyArg_ParseTuple(args, "y*y*y*y*O!iw*", &by, &of, &ib, &pb, &ProductType, &P, &state0, &wo))
        return NULL;
    PyObject *res = NULL;
    Py_ssize_t n_words = wo.len / 4, n_vocab = of.len / 8 - 1, k = ib.len / 8;
    Bounds b = {0};
    if (check_buf(&of, 8, 1, "tok_off") || check_buf(&ib, 8, 0, "ids") || check_buf(&pb, 8, k, "pos"))
        goto done;
    if (state0 < 0 || state0 >= P->n) {
        PyErr_SetString(PyExc_ValueError, "walk_tokens: state out of range");
        goto done;
    }
    {
        const uint8_t *bytes = by.buf;
        const int64_t *off = of.buf, *ids = ib.buf, *pos = pb.buf;
        uint32_t *words = wo.buf;
        int bad = 0, code = 0;
        product_lock(P);
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t j = 0; j < k && !bad && !code; j++) {
            int64_t id = ids[j];
            if (id < 0 || id >= n_vocab || (id >> 5) >= n_words || off[id + 1] > by.len || pos[j] < 0) { bad = 1; break; }
            int64_t start = off[id], stop = off[id + 1], q = start + pos[j];
            int32_t cur = state0;
            for (;; q++) {
                if (q >= stop) { words[id >> 5] |= (uint32_t)1 << (id & 31); break; }
                if (!P->built[cur] && (code = product_build(P, cur))) break;
                int32_t nx = P->table[(Py_ssize_t)cur * 256 + bytes[q]];
                if (nx < 0) {
                    if (P->accepting[cur]) bounds_push(&b, id, q - start, cur);
                    break;
                }
                cur = nx;
            }
        }
        PyThread_release_lock(P->lock);
        Py_END_ALLOW_THREADS
        if (code) {
            product_error(code);
            goto done;
        }
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "walk_tokens: malformed tokens");
            goto done;
        }
    }
    res = result3(&b);
done:
    bounds_free(&b);
    PyBuffer_Release(&by); PyBuffer_Release(&of); PyBuffer_Release(&ib); PyBuffer_Release(&pb);
    PyBuffer_Release(&wo);
    return res;
}

static PyMethodDef methods[] = {
    {"check_trie", check_trie, METH_VARARGS, "Validate a packed trie once."},
    {"walk_trie", walk_trie, METH_VARARGS, "Walk token trie subtrees from lexer states."},
    {"walk_tokens", walk_tokens, METH_VARARGS, "Walk given tokens from given byte offsets."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "SGL's mask kernel.", -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&ProductType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ProductType);
    if (PyModule_AddObject(m, "Product", (PyObject *)&ProductType) < 0) {
        Py_DECREF(&ProductType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
