/* Part of the _native extension (see _native.c): the boundary recursion of a mask miss.
 *
 * A token whose lexeme ends inside it goes on in the next lexeme: the parser scans the
 * completed lexemes (a new column), the column's lexer walks the rest of the token, and
 * so on (mask.py's MaskComputer._boundaries, which stays the pure-Python twin). In Python
 * each level was a few microseconds of interpreter work (scan, lexer lookup, sub-walk
 * lookup, recursion); a mask miss runs tens of levels. Boundaries runs the whole
 * recursion of one mask in one call over pieces Python registered before: the Earley
 * scans are done here (on the C Earley), and what only Python can build is reported
 * back instead (which lexemes a lexer state completes, which lexer a lexeme set has, a
 * sub-walk not made yet); Python builds those, registers them and runs it again (OR-ing
 * twice is harmless), until nothing is missing.
 *
 * Ids: a lexer L is Python's index of a LexerDFA of this grammar, a walk W its index of
 * a WalkResult (inside words, and per boundary group the state that represents it).
 *
 * Sub-walks in C: with the trie (set_trie) and the C product of each lexer (set_product:
 * the Product and its lexemes' grammar ids), a walk registered with its boundary nodes
 * (add_walk_nodes) is grouped here, by the lexemes each boundary state completes, and the
 * walk of a group's subtrees in the next lexer is made here too (trie_walk from the start
 * state, as mask.py's _walk_rest) and registered as a walk of its own, with no Python
 * object and no report. Python still makes what needs a lexer without a C product (the
 * pure-Python core of an empty lexeme set) and a sub-walk over the lexer's state budget
 * (its error is Python's).
 */
#include "_native_walk.h" /* first: it includes Python.h */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int32_t earley_scan_c(PyObject *obj, int32_t uid, const int32_t *lex, Py_ssize_t n);
Py_ssize_t earley_allowed_c(PyObject *obj, int32_t uid, int32_t *out, Py_ssize_t n_out);
Py_ssize_t earley_scannable_c(PyObject *obj, int32_t uid, int32_t *out, Py_ssize_t n_out);
extern PyTypeObject EarleyType;

/* a map from three int32 keys to an int32 value: open addressing, a = INT32_MIN empty */
typedef struct { int32_t a, b, c, v; } Ent;
typedef struct { Ent *e; Py_ssize_t n, cap; } Map3;

static inline Py_ssize_t map_slot(int32_t a, int32_t b, int32_t c, Py_ssize_t cap) {
    uint64_t h = (uint64_t)(uint32_t)a * 0x9E3779B97F4A7C15ULL;
    h = (h ^ (uint32_t)b) * 0xBF58476D1CE4E5B9ULL;
    h = (h ^ (uint32_t)c) * 0x94D049BB133111EBULL;
    return (Py_ssize_t)(h >> 17) & (cap - 1);
}

static int map_get(const Map3 *m, int32_t a, int32_t b, int32_t c, int32_t *v) {
    if (!m->cap) return 0;
    for (Py_ssize_t i = map_slot(a, b, c, m->cap);; i = (i + 1) & (m->cap - 1)) {
        const Ent *x = m->e + i;
        if (x->a == INT32_MIN) return 0;
        if (x->a == a && x->b == b && x->c == c) { *v = x->v; return 1; }
    }
}

static int map_put(Map3 *m, int32_t a, int32_t b, int32_t c, int32_t v) {
    if (2 * (m->n + 1) > m->cap) {
        Py_ssize_t cap = m->cap ? 2 * m->cap : 1024;
        Ent *e = malloc(cap * sizeof(Ent));
        if (!e) return -1;
        for (Py_ssize_t i = 0; i < cap; i++) e[i].a = INT32_MIN;
        for (Py_ssize_t i = 0; i < m->cap; i++) {
            Ent x = m->e[i];
            if (x.a == INT32_MIN) continue;
            Py_ssize_t j = map_slot(x.a, x.b, x.c, cap);
            while (e[j].a != INT32_MIN) j = (j + 1) & (cap - 1);
            e[j] = x;
        }
        free(m->e);
        m->e = e, m->cap = cap;
    }
    Py_ssize_t i = map_slot(a, b, c, m->cap);
    while (m->e[i].a != INT32_MIN) {
        if (m->e[i].a == a && m->e[i].b == b && m->e[i].c == c) { m->e[i].v = v; return 0; }
        i = (i + 1) & (m->cap - 1);
    }
    m->e[i] = (Ent){a, b, c, v};
    m->n++;
    return 0;
}

typedef struct { int32_t *v; Py_ssize_t n, cap; } Pool;

static int pool_push(Pool *p, int32_t x) {
    if (p->n == p->cap) {
        Py_ssize_t cap = p->cap ? 2 * p->cap : 1024;
        int32_t *v = realloc(p->v, cap * sizeof(int32_t));
        if (!v) return -1;
        p->v = v, p->cap = cap;
    }
    p->v[p->n++] = x;
    return 0;
}

/* a registered walk result: its inside words and its boundary groups */
typedef struct {
    Py_buffer a, b;  /* from Python: dense a = the words; compact: a = indices (i64), b = values (u32) */
    int dense, held;
    const void *wa;  /* the words (dense, n_words u32) or the indices (i64)... */
    const uint32_t *wb; /* ...and values (u32) of the m nonzero ones (compact) */
    Py_ssize_t m;
    void *own;       /* made here: one block holding wa (and wb) */
    int32_t n_groups;
    int32_t *rep;    /* per group: a boundary state of it (they all complete the same lexemes) */
    int32_t *gstart; /* grouped here: group g's trie nodes are gnodes[gstart[g] .. gstart[g + 1]) */
    int32_t *gnodes; /* (NULL: grouped by Python, whose sub-walks Python makes) */
    int32_t L;       /* the lexer of rep's states, -1 not said (add_walk without it) */
} Walk;

/* a lexer's C product and the grammar lexeme id of each of its lexemes (P NULL: none) */
typedef struct {
    Product *P;
    int32_t *order;
    int empty; /* no lexemes (the text must end): every walk in it is empty */
    /* a filtered lexer (id FILTERED_BASE + i, made here): the product of the column's
     * unfiltered set, walked through filt (the lexemes the check kept) */
    uint8_t *keep;
    WalkFilter filt;
    int32_t set; /* pool offset of its allowed set (count, ids) */
} LexInfo;

/* Filtered lexers: a column the duplicate-key check filtered (a key position without its
 * used keys, a value's end without a dead `,`) whose allowed set has no lexer yet gets one
 * made here, over the product of the column's unfiltered set (the set Python registered,
 * once per object), seen through the kept lexemes (WalkFilter): no Python lexer, product
 * or report per set of used keys, and the rows are the wider set's, built once. Their ids
 * start here, above every id Python gives (boundary.FILTERED_BASE). */
#define FILTERED_BASE (1 << 28)

/* words of a walk made here with at most this many nonzero kept compact (mask.py's SPARSE_WORDS) */
#define SPARSE_WORDS 64

typedef struct {
    PyObject_HEAD
    PyObject *earley;
    int32_t *ignore; Py_ssize_t n_ignore; /* sorted */
    Py_ssize_t n_words;
    Walk *walks; Py_ssize_t n_walks, cap_walks;
    Map3 acc;      /* (L, state, 0) -> offset in pool: count, then the lexeme ids it completes */
    Map3 child;    /* (column, L, state) -> column after those lexemes, or -1 */
    Map3 sub;      /* (W, group, L') -> W' */
    Map3 sets;     /* (hash lo, hash hi, count) -> offset in pool of an allowed set: count, ids, L */
    int32_t *col_lex; Py_ssize_t n_col_lex; /* per column uid: its lexer, -1 unknown */
    Pool pool;
    int32_t *scratch; Py_ssize_t n_scratch;
    int python_scans; /* scans and column lexers come from Python (a parser that filters columns) */
    Trie trie; Py_buffer tb[4]; int has_trie; /* set_trie: the held buffers of the trie */
    LexInfo *lex; Py_ssize_t n_lex;
    uint32_t *wscratch;  /* n_words, all zero between sub-walks */
    int32_t *zeros; Py_ssize_t n_zeros; /* start states of a sub-walk */
    Py_ssize_t n_made;   /* sub-walks made here */
    int32_t empty_walk;  /* the walk with nothing (into an empty lexer), -1 not made yet */
    int filtered;        /* make filtered lexers (set_filtered; on by default; 2: their sub-walks by Python) */
    LexInfo *flex; Py_ssize_t n_flex, cap_flex; /* filtered lexer FILTERED_BASE + i */
    int32_t *scratch2; Py_ssize_t n_scratch2;   /* a column's unfiltered set */
} Boundaries;

static void walk_release(Walk *w) {
    if (w->held) {
        PyBuffer_Release(&w->a);
        if (!w->dense) PyBuffer_Release(&w->b);
    }
    free(w->own); free(w->rep); free(w->gstart); free(w->gnodes);
}

static void Boundaries_dealloc(Boundaries *r) {
    Py_XDECREF(r->earley);
    for (Py_ssize_t i = 0; i < r->n_walks; i++) walk_release(r->walks + i);
    free(r->walks); free(r->ignore); free(r->acc.e); free(r->child.e); free(r->sub.e); free(r->sets.e);
    free(r->col_lex); free(r->pool.v); free(r->scratch);
    if (r->has_trie)
        for (int i = 0; i < 4; i++) PyBuffer_Release(r->tb + i);
    for (Py_ssize_t L = 0; L < r->n_lex; L++) { Py_XDECREF(r->lex[L].P); free(r->lex[L].order); }
    for (Py_ssize_t i = 0; i < r->n_flex; i++) {
        LexInfo *f = r->flex + i;
        Py_XDECREF(f->P); free(f->order); free(f->keep); free(f->filt.flags);
    }
    free(r->lex); free(r->wscratch); free(r->zeros); free(r->flex); free(r->scratch2);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Boundaries(earley, ignore lexemes (sequence of int), n_words, python_scans=0): with
 * python_scans, a new scan or column lexer is reported (("scan", col, L, state), ("column",
 * col)) instead of done here (tests; no parser needs it since the duplicate-key check,
 * which filters columns, runs inside the Earley scan: earley_scan_c and earley_allowed_c
 * give the filtered columns) */
static PyObject *Boundaries_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *earley, *ignore;
    Py_ssize_t n_words;
    int python_scans = 0;
    if (!PyArg_ParseTuple(args, "O!On|p", &EarleyType, &earley, &ignore, &n_words, &python_scans)) return NULL;
    PyObject *seq = PySequence_Fast(ignore, "ignore must be a sequence");
    if (!seq) return NULL;
    Boundaries *r = (Boundaries *)type->tp_alloc(type, 0);
    if (!r) { Py_DECREF(seq); return NULL; }
    Py_INCREF(earley);
    r->earley = earley;
    r->n_words = n_words;
    r->python_scans = python_scans;
    r->empty_walk = -1;
    r->filtered = 1;
    r->n_ignore = PySequence_Fast_GET_SIZE(seq);
    r->ignore = malloc((r->n_ignore + 1) * sizeof(int32_t));
    if (!r->ignore) { Py_DECREF(seq); Py_DECREF(r); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < r->n_ignore; i++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (x == -1 && PyErr_Occurred()) { Py_DECREF(seq); Py_DECREF(r); return NULL; }
        r->ignore[i] = (int32_t)x;
    }
    Py_DECREF(seq);
    qsort(r->ignore, r->n_ignore, sizeof(int32_t), cmp_i32);
    return (PyObject *)r;
}

static int walks_room(Boundaries *r) {
    if (r->n_walks < r->cap_walks) return 0;
    Py_ssize_t cap = r->cap_walks ? 2 * r->cap_walks : 256;
    Walk *w = realloc(r->walks, cap * sizeof(Walk));
    if (!w) return -1;
    r->walks = w, r->cap_walks = cap;
    return 0;
}

/* w's inside words from Python: dense u32 words or (indices i64, values u32); 0 or -1 */
static int inside_from_py(Boundaries *r, PyObject *inside, Walk *w) {
    int tuple = PyTuple_Check(inside);
    if (tuple && PyTuple_GET_SIZE(inside) != 2) {
        PyErr_SetString(PyExc_ValueError, "add_walk: a compact part is (indices, values)");
        return -1;
    }
    if (PyObject_GetBuffer(tuple ? PyTuple_GET_ITEM(inside, 0) : inside, &w->a, PyBUF_SIMPLE)) return -1;
    w->dense = !tuple;
    if (tuple && PyObject_GetBuffer(PyTuple_GET_ITEM(inside, 1), &w->b, PyBUF_SIMPLE)) {
        PyBuffer_Release(&w->a);
        return -1;
    }
    w->held = 1;
    int bad = w->dense ? w->a.len != r->n_words * 4 : (w->a.len % 8 || w->b.len != w->a.len / 2);
    const int64_t *idx = w->a.buf;
    for (Py_ssize_t j = 0; !bad && !w->dense && j < w->a.len / 8; j++) bad = idx[j] < 0 || idx[j] >= r->n_words;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "add_walk: words of another width or out of range");
        walk_release(w);
        return -1;
    }
    w->wa = w->a.buf, w->wb = w->dense ? NULL : w->b.buf, w->m = w->dense ? 0 : w->a.len / 8;
    return 0;
}

/* add_walk(inside: dense u32 words or (indices i64, values u32), rep_states (sequence),
 * L=-1 (the lexer of those states)) -> W: a walk grouped by Python (its sub-walks are
 * reported, made by Python) */
static PyObject *Boundaries_add_walk(Boundaries *r, PyObject *args) {
    PyObject *inside, *reps;
    int L = -1;
    if (!PyArg_ParseTuple(args, "OO|i", &inside, &reps, &L)) return NULL;
    if (walks_room(r)) return PyErr_NoMemory();
    Walk w = {0};
    w.L = L < 0 ? -1 : L;
    if (inside_from_py(r, inside, &w)) return NULL;
    PyObject *seq = PySequence_Fast(reps, "rep_states must be a sequence");
    if (!seq) { walk_release(&w); return NULL; }
    w.n_groups = (int32_t)PySequence_Fast_GET_SIZE(seq);
    w.rep = malloc((w.n_groups + 1) * sizeof(int32_t));
    for (int32_t g = 0; w.rep && g < w.n_groups; g++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, g));
        if (x == -1 && PyErr_Occurred()) { Py_DECREF(seq); walk_release(&w); return NULL; }
        w.rep[g] = (int32_t)x;
    }
    Py_DECREF(seq);
    if (!w.rep) { walk_release(&w); return PyErr_NoMemory(); }
    r->walks[r->n_walks] = w;
    return PyLong_FromSsize_t(r->n_walks++);
}

/* Push ``seq`` (a sequence of int) onto the pool as its count then its items; the
 * offset of the count, or -1 with an exception set. ``max_n``: most items allowed. */
static Py_ssize_t pool_push_ints(Pool *p, PyObject *obj, const char *what, Py_ssize_t max_n) {
    PyObject *seq = PySequence_Fast(obj, what);
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), off = p->n;
    if (n > max_n) { Py_DECREF(seq); PyErr_SetString(PyExc_ValueError, "too many lexemes"); return -1; }
    int rc = pool_push(p, (int32_t)n);
    for (Py_ssize_t i = 0; !rc && i < n; i++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (x == -1 && PyErr_Occurred()) { Py_DECREF(seq); return -1; }
        rc = pool_push(p, (int32_t)x);
    }
    Py_DECREF(seq);
    if (rc) { PyErr_NoMemory(); return -1; }
    return off;
}

/* set_accepts(L, state, lexemes (sequence of int)): the lexemes lexer L completes in state */
static PyObject *Boundaries_set_accepts(Boundaries *r, PyObject *args) {
    int L, st;
    PyObject *lex;
    if (!PyArg_ParseTuple(args, "iiO", &L, &st, &lex)) return NULL;
    Py_ssize_t off = pool_push_ints(&r->pool, lex, "lexemes must be a sequence", INT32_MAX);
    if (off < 0) return NULL;
    if (map_put(&r->acc, L, st, 0, (int32_t)off)) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static void set_hash(const int32_t *v, Py_ssize_t n, int32_t *lo, int32_t *hi) {
    uint64_t h = 0x243F6A8885A308D3ULL;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ (uint32_t)v[i]) * 0x100000001B3ULL + (h >> 29);
    *lo = (int32_t)(uint32_t)h, *hi = (int32_t)(uint32_t)(h >> 32);
    if (*lo == INT32_MIN) *lo = 0; /* the map's empty mark */
}

/* The lexer of an allowed set (ascending ids), -1 unknown. Sets with the same hash and
 * count are told apart by content: their key's third field counts up past the count. */
static int32_t set_lexer(const Boundaries *r, const int32_t *v, Py_ssize_t n) {
    int32_t lo, hi, off;
    set_hash(v, n, &lo, &hi);
    for (int32_t k = (int32_t)n;; k += 1 << 24) { /* colliding sets: the next key along */
        if (!map_get(&r->sets, lo, hi, k, &off)) return -1;
        if (r->pool.v[off] == n && !memcmp(r->pool.v + off + 1, v, n * sizeof(int32_t))) return r->pool.v[off + 1 + n];
    }
}

/* Register allowed set v[0..n) (ascending, not known yet: set_lexer is -1) as lexer L's:
 * 0, or -1 (memory). v must not point into the pool. */
static int sets_add(Boundaries *r, const int32_t *v, Py_ssize_t n, int32_t L) {
    Py_ssize_t off = r->pool.n;
    int rc = pool_push(&r->pool, (int32_t)n);
    for (Py_ssize_t i = 0; !rc && i < n; i++) rc = pool_push(&r->pool, v[i]);
    if (rc || pool_push(&r->pool, L)) return -1;
    int32_t lo, hi, dummy;
    set_hash(v, n, &lo, &hi);
    int32_t k = (int32_t)n;
    while (map_get(&r->sets, lo, hi, k, &dummy)) k += 1 << 24;
    return map_put(&r->sets, lo, hi, k, (int32_t)off);
}

/* set_lexer(allowed (ascending sequence of int), L): the lexer of columns that allow these */
static PyObject *Boundaries_set_lexer(Boundaries *r, PyObject *args) {
    PyObject *lex;
    int L;
    if (!PyArg_ParseTuple(args, "Oi", &lex, &L)) return NULL;
    /* the count shares a key field with the collision counter (set_lexer) */
    Py_ssize_t off = pool_push_ints(&r->pool, lex, "allowed must be a sequence", (1 << 24) - 1);
    if (off < 0) return NULL;
    Py_ssize_t n = r->pool.n - off - 1;
    if (pool_push(&r->pool, L)) return PyErr_NoMemory();
    const int32_t *v = r->pool.v + off + 1;
    for (Py_ssize_t i = 1; i < n; i++)
        if (v[i] <= v[i - 1]) { r->pool.n = off; PyErr_SetString(PyExc_ValueError, "set_lexer: not ascending"); return NULL; }
    if (set_lexer(r, v, n) >= 0) { r->pool.n = off; Py_RETURN_NONE; }
    int32_t lo, hi, dummy;
    set_hash(v, n, &lo, &hi);
    int32_t k = (int32_t)n;
    while (map_get(&r->sets, lo, hi, k, &dummy)) k += 1 << 24;
    if (map_put(&r->sets, lo, hi, k, (int32_t)off)) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* set_sub(W, group, L', W'): the walk of group's subtrees from L''s start state */
static PyObject *Boundaries_set_sub(Boundaries *r, PyObject *args) {
    int w, g, L, w2;
    if (!PyArg_ParseTuple(args, "iiii", &w, &g, &L, &w2)) return NULL;
    if (w < 0 || w >= r->n_walks || w2 < 0 || w2 >= r->n_walks || g < 0 || g >= r->walks[w].n_groups) {
        PyErr_SetString(PyExc_IndexError, "set_sub: unknown walk or group");
        return NULL;
    }
    if (map_put(&r->sub, w, g, L, w2)) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* set_trie(nodes Node[N+1] (checked by check_trie), subtree_bytes u64[N*4], max_chars u8[N],
 * tok_ids i64[T]): the trie the sub-walks made here read (held until this object goes) */
static PyObject *Boundaries_set_trie(Boundaries *r, PyObject *args) {
    if (r->has_trie) { PyErr_SetString(PyExc_ValueError, "set_trie: the trie is set already"); return NULL; }
    Py_buffer *tb = r->tb;
    if (!PyArg_ParseTuple(args, "y*y*y*y*", tb, tb + 1, tb + 2, tb + 3)) return NULL;
    Py_ssize_t n = tb[0].len / (Py_ssize_t)sizeof(Node) - 1, n_tok = tb[3].len / 8;
    const Node *nd = tb[0].buf;
    const int64_t *ids = tb[3].buf;
    int bad = tb[0].len % sizeof(Node) || n < 0 || tb[1].len < n * 32 || tb[2].len < n || tb[3].len % 8 ||
              nd[n].tok != n_tok;
    for (Py_ssize_t t = 0; t < n_tok && !bad; t++) bad = ids[t] < 0 || (ids[t] >> 5) >= r->n_words;
    r->wscratch = bad ? NULL : calloc(r->n_words + 1, sizeof(uint32_t));
    if (bad || !r->wscratch) {
        for (int i = 0; i < 4; i++) PyBuffer_Release(tb + i);
        if (bad) PyErr_SetString(PyExc_ValueError, "set_trie: a trie of another size or bitmask width");
        return bad ? NULL : PyErr_NoMemory();
    }
    r->trie = (Trie){nd, tb[1].buf, tb[2].buf, ids, n};
    r->has_trie = 1;
    Py_RETURN_NONE;
}

/* set_product(L, product or None, lexemes (sequence of int: the grammar id of each of its
 * lexemes)): lexer L's C product, so that what its states complete and the sub-walks into
 * it are computed here; None with no lexemes: L is empty (reads nothing) */
static PyObject *Boundaries_set_product(Boundaries *r, PyObject *args) {
    int L;
    PyObject *prod, *order;
    if (!PyArg_ParseTuple(args, "iOO", &L, &prod, &order)) return NULL;
    Product *P = prod == Py_None ? NULL : (Product *)prod;
    if (P && !PyObject_TypeCheck(prod, &ProductType)) { PyErr_SetString(PyExc_TypeError, "set_product: not a Product"); return NULL; }
    if (L < 0) { PyErr_SetString(PyExc_ValueError, "set_product: bad lexer"); return NULL; }
    if (L < r->n_lex && (r->lex[L].P || r->lex[L].empty)) {
        PyErr_SetString(PyExc_ValueError, "set_product: lexer set already");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(order, "lexemes must be a sequence");
    if (!seq) return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != (P ? P->k : 0)) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "set_product: one lexeme id per lexeme of the product");
        return NULL;
    }
    int32_t k = P ? P->k : 0, *o = malloc((k + 1) * sizeof(int32_t));
    for (int32_t j = 0; o && j < k; j++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, j));
        if (x == -1 && PyErr_Occurred()) { free(o); Py_DECREF(seq); return NULL; }
        o[j] = (int32_t)x;
    }
    Py_DECREF(seq);
    if (!o) return PyErr_NoMemory();
    if (L >= r->n_lex) {
        Py_ssize_t cap = r->n_lex ? r->n_lex : 64;
        while (cap <= L) cap *= 2;
        LexInfo *x = realloc(r->lex, cap * sizeof(LexInfo));
        if (!x) { free(o); return PyErr_NoMemory(); }
        memset(x + r->n_lex, 0, (cap - r->n_lex) * sizeof(LexInfo));
        r->lex = x, r->n_lex = cap;
    }
    Py_XINCREF(P);
    r->lex[L] = (LexInfo){P, o, !P};
    Py_RETURN_NONE;
}

static LexInfo *lex_info(const Boundaries *r, int32_t L) {
    if (L >= FILTERED_BASE) return L - FILTERED_BASE < r->n_flex ? r->flex + (L - FILTERED_BASE) : NULL;
    return L >= 0 && L < r->n_lex ? r->lex + L : NULL;
}

static Product *product_of(const Boundaries *r, int32_t L) {
    const LexInfo *li = lex_info(r, L);
    return li ? li->P : NULL;
}

/* The pool offset of the lexemes lexer L completes in state st (ascending grammar ids),
 * computed from its product when not known yet (mask.py: LexerDFA.accepts); -1 memory
 * (error set), -2 no product */
static int32_t accepts_of(Boundaries *r, int32_t L, int32_t st) {
    int32_t off;
    if (map_get(&r->acc, L, st, 0, &off)) return off;
    const LexInfo *li = lex_info(r, L);
    Product *P = li ? li->P : NULL;
    if (!P) return -2;
    const int32_t *order = li->order;
    const uint8_t *keep = li->keep; /* a filtered lexer: its kept lexemes only */
    off = (int32_t)r->pool.n;
    int rc = pool_push(&r->pool, 0);
    product_lock(P); /* a walk on another thread may be growing its arrays */
    const int32_t *comp = P->comps + (Py_ssize_t)st * P->k;
    for (int32_t j = 0; !rc && j < P->k; j++)
        if (comp[j] >= 0 && (!keep || keep[j]) && P->dfas[j]->accepting[comp[j]]) rc = pool_push(&r->pool, order[j]);
    PyThread_release_lock(P->lock);
    if (rc || map_put(&r->acc, L, st, 0, off)) { PyErr_NoMemory(); return -1; }
    int32_t *v = r->pool.v + off;
    v[0] = (int32_t)(r->pool.n - off - 1);
    qsort(v + 1, v[0], sizeof(int32_t), cmp_i32);
    return off;
}

/* Group w's n boundary subtrees (trie nodes, states of lexer L) by the lexemes their state
 * completes (mask.py's _group_boundaries): w's groups, each with a representative state
 * and its nodes in walk order. 0, or -1 with an error set. */
static int group_walk(Boundaries *r, Walk *w, int32_t L, const int64_t *nodes, const int64_t *states, Py_ssize_t n) {
    int32_t *gi = malloc((n + 1) * sizeof(int32_t)), *seen = NULL, *seen_g = NULL, *g_off = NULL;
    Py_ssize_t n_seen = 0, cap = 0;
    int rc = gi ? 0 : -1;
    w->n_groups = 0;
    for (Py_ssize_t i = 0; !rc && i < n; i++) {
        int32_t st = (int32_t)states[i], g = -1;
        for (Py_ssize_t k = n_seen; k-- > 0;) /* few distinct states per walk */
            if (seen[k] == st) { g = seen_g[k]; break; }
        if (g < 0) {
            int32_t off = accepts_of(r, L, st);
            if (off < 0) { rc = -2; break; }
            const int32_t *v = r->pool.v + off;
            for (int32_t h = 0; h < w->n_groups && g < 0; h++) {
                const int32_t *u = r->pool.v + g_off[h];
                if (u[0] == v[0] && !memcmp(u + 1, v + 1, v[0] * sizeof(int32_t))) g = h;
            }
            if (n_seen == cap) {
                cap = cap ? 2 * cap : 16;
                int32_t *a = realloc(seen, cap * sizeof(int32_t)), *b = a ? realloc(seen_g, cap * sizeof(int32_t)) : NULL;
                int32_t *c = b ? realloc(g_off, cap * sizeof(int32_t)) : NULL, *d = c ? realloc(w->rep, cap * sizeof(int32_t)) : NULL;
                if (a) seen = a;
                if (b) seen_g = b;
                if (c) g_off = c;
                if (d) w->rep = d;
                if (!d) { rc = -1; break; }
            }
            if (g < 0) g = w->n_groups, g_off[g] = off, w->rep[g] = st, w->n_groups++;
            seen[n_seen] = st, seen_g[n_seen++] = g;
        }
        gi[i] = g;
    }
    if (!rc) {
        w->gstart = calloc(w->n_groups + 1, sizeof(int32_t));
        w->gnodes = malloc((n + 1) * sizeof(int32_t));
        if (!w->gstart || !w->gnodes) rc = -1;
    }
    if (!rc) { /* a counting sort by group, stable: each group's nodes in walk order */
        for (Py_ssize_t i = 0; i < n; i++) w->gstart[gi[i] + 1]++;
        for (int32_t g = 0; g < w->n_groups; g++) w->gstart[g + 1] += w->gstart[g];
        int32_t *at = seen; /* reused: the next free slot of each group (n_groups <= n_seen) */
        if (w->n_groups) memcpy(at, w->gstart, w->n_groups * sizeof(int32_t));
        for (Py_ssize_t i = 0; i < n; i++) w->gnodes[at[gi[i]]++] = (int32_t)nodes[i];
    }
    if (rc == -1) PyErr_NoMemory();
    else if (rc == -2 && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "add_walk_nodes: a lexer without a product");
    free(gi); free(seen); free(seen_g); free(g_off);
    return rc ? -1 : 0;
}

/* add_walk_nodes(inside (as add_walk), boundary nodes (i64 bytes), their states (i64 bytes), L) -> W:
 * a walk of lexer L (set_product) whose boundary subtrees are grouped here; the sub-walks
 * of its groups are made here as the recursion meets them */
static PyObject *Boundaries_add_walk_nodes(Boundaries *r, PyObject *args) {
    PyObject *inside;
    Py_buffer nb, sb;
    int L;
    if (!PyArg_ParseTuple(args, "Oy*y*i", &inside, &nb, &sb, &L)) return NULL;
    PyObject *res = NULL;
    Product *P = product_of(r, L);
    Py_ssize_t n = nb.len / 8;
    const int64_t *nodes = nb.buf, *states = sb.buf;
    int bad = !r->has_trie || !P || nb.len % 8 || sb.len != nb.len;
    for (Py_ssize_t i = 0; !bad && i < n; i++)
        bad = nodes[i] < 0 || nodes[i] >= r->trie.n_nodes || states[i] < 0 || states[i] >= P->n;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "add_walk_nodes: no trie or product, or nodes or states out of range");
        goto done;
    }
    if (walks_room(r)) { PyErr_NoMemory(); goto done; }
    Walk w = {0};
    if (inside_from_py(r, inside, &w)) goto done;
    w.L = L;
    if (group_walk(r, &w, L, nodes, states, n)) { walk_release(&w); goto done; }
    r->walks[r->n_walks] = w;
    res = PyLong_FromSsize_t(r->n_walks++);
done:
    PyBuffer_Release(&nb);
    PyBuffer_Release(&sb);
    return res;
}

/* group_nodes(W, g) -> the trie nodes of a group of a walk grouped here (int32 bytes), for
 * the sub-walks Python makes (a lexer without a C product, a state budget error) */
static PyObject *Boundaries_group_nodes(Boundaries *r, PyObject *args) {
    int w, g;
    if (!PyArg_ParseTuple(args, "ii", &w, &g)) return NULL;
    if (w < 0 || w >= r->n_walks || !r->walks[w].gnodes || g < 0 || g >= r->walks[w].n_groups) {
        PyErr_SetString(PyExc_IndexError, "group_nodes: unknown walk or group, or one grouped by Python");
        return NULL;
    }
    const Walk *x = r->walks + w;
    return PyBytes_FromStringAndSize((const char *)(x->gnodes + x->gstart[g]),
                                     (x->gstart[g + 1] - x->gstart[g]) * (Py_ssize_t)sizeof(int32_t));
}

/* counts() -> (walks registered, walks made here) */
static PyObject *Boundaries_counts(Boundaries *r, PyObject *unused) {
    return Py_BuildValue("(nn)", r->n_walks, r->n_made);
}

/* one run: the output words, what is missing (a list of report tuples), the budget */
typedef struct {
    Boundaries *r;
    uint32_t *out;
    PyObject *missing;
    double deadline;
    long steps;
    int over, failed; /* over: the deadline passed; failed: a Python error is set */
} Run;

static void or_walk(const Walk *w, uint32_t *out, Py_ssize_t n_words) {
    if (w->dense) {
        const uint32_t *src = w->wa;
        for (Py_ssize_t i = 0; i < n_words; i++) out[i] |= src[i];
        return;
    }
    const int64_t *idx = w->wa;
    const uint32_t *val = w->wb;
    for (Py_ssize_t j = 0; j < w->m; j++) out[idx[j]] |= val[j];
}

static void report(Run *x, PyObject *item) {
    if (!item || PyList_Append(x->missing, item)) x->failed = 1;
    Py_XDECREF(item);
}

static int is_ignored(const Boundaries *r, const int32_t *lex, int32_t n) {
    for (int32_t i = 0; i < n; i++)
        if (bsearch(lex + i, r->ignore, r->n_ignore, sizeof(int32_t), cmp_i32)) return 1;
    return 0;
}

static int put_column_lexer(Boundaries *r, int32_t col, int32_t L) {
    if (col >= r->n_col_lex) {
        Py_ssize_t cap = r->n_col_lex ? r->n_col_lex : 256;
        while (cap <= col) cap *= 2;
        int32_t *c = realloc(r->col_lex, cap * sizeof(int32_t));
        if (!c) return -1;
        for (Py_ssize_t i = r->n_col_lex; i < cap; i++) c[i] = -1;
        r->col_lex = c, r->n_col_lex = cap;
    }
    r->col_lex[col] = L;
    return 0;
}

static PyObject *int_tuple(const int32_t *v, Py_ssize_t n) {
    PyObject *t = PyTuple_New(n);
    for (Py_ssize_t i = 0; t && i < n; i++) {
        PyObject *x = PyLong_FromLong(v[i]);
        if (!x) { Py_CLEAR(t); break; }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

/* A filtered lexer for column col, whose allowed set (r->scratch[0..n)) has no lexer:
 * its id (registered for the set); -1 none can be made here (the column is not filtered,
 * the unfiltered set's lexer has no C product); -2 the unfiltered set's lexer is reported
 * (Python makes it, once per object) or an error is set. */
static int32_t filtered_lexer(Run *x, int32_t col, Py_ssize_t n) {
    Boundaries *r = x->r;
    Py_ssize_t m = earley_scannable_c(r->earley, col, r->scratch2, r->n_scratch2);
    if (m < 0) return -1;
    if (m > r->n_scratch2) {
        int32_t *s = realloc(r->scratch2, m * sizeof(int32_t));
        if (!s) { PyErr_NoMemory(); x->failed = 1; return -2; }
        r->scratch2 = s, r->n_scratch2 = m;
        earley_scannable_c(r->earley, col, r->scratch2, m);
    }
    if (m <= n) return -1;
    int32_t LW = set_lexer(r, r->scratch2, m);
    if (LW < 0) {
        report(x, Py_BuildValue("(sNs)", "lexer", int_tuple(r->scratch2, m), "unfiltered"));
        return -2;
    }
    const LexInfo *wi = lex_info(r, LW);
    if (LW >= FILTERED_BASE || !wi || !wi->P || wi->P->direct) return -1;
    Product *P = wi->P;
    int32_t k = P->k, kept = 0;
    uint8_t *keep = calloc(k + 1, 1);
    int32_t *order = malloc((k + 1) * sizeof(int32_t));
    if (!keep || !order || (r->n_flex == r->cap_flex && r->n_flex >= FILTERED_BASE - 1)) {
        free(keep); free(order);
        PyErr_NoMemory(); x->failed = 1; return -2;
    }
    memcpy(order, wi->order, k * sizeof(int32_t));
    for (int32_t j = 0; j < k; j++) { /* kept: the column's lexemes, and the ignored ones (EarleyParser.allowed_set) */
        int in_set = bsearch(order + j, r->scratch, n, sizeof(int32_t), cmp_i32) != NULL;
        kept += in_set;
        keep[j] = in_set || bsearch(order + j, r->ignore, r->n_ignore, sizeof(int32_t), cmp_i32) != NULL;
    }
    if (kept != n) { free(keep); free(order); return -1; } /* (a lexeme the wider set lacks) */
    if (r->n_flex == r->cap_flex) {
        Py_ssize_t cap = r->cap_flex ? 2 * r->cap_flex : 64;
        LexInfo *f = realloc(r->flex, cap * sizeof(LexInfo));
        if (!f) { free(keep); free(order); PyErr_NoMemory(); x->failed = 1; return -2; }
        r->flex = f, r->cap_flex = cap;
    }
    int32_t L = (int32_t)(FILTERED_BASE + r->n_flex);
    int32_t set = (int32_t)r->pool.n;
    if (sets_add(r, r->scratch, n, L)) { free(keep); free(order); PyErr_NoMemory(); x->failed = 1; return -2; }
    Py_INCREF(P);
    r->flex[r->n_flex++] = (LexInfo){P, order, 0, keep, {keep, NULL, 0}, set};
    return L;
}

/* column uid's lexer, or -1 (reported: Python maps its allowed set to a lexer) */
static int32_t column_lexer(Run *x, int32_t col) {
    Boundaries *r = x->r;
    if (col < r->n_col_lex && r->col_lex[col] >= 0) return r->col_lex[col];
    if (r->python_scans) {
        report(x, Py_BuildValue("(si)", "column", col));
        return -1;
    }
    Py_ssize_t n = earley_allowed_c(r->earley, col, r->scratch, r->n_scratch);
    if (n < 0) { PyErr_SetString(PyExc_IndexError, "Boundaries: unknown column"); x->failed = 1; return -1; }
    if (n > r->n_scratch) {
        int32_t *s = realloc(r->scratch, n * sizeof(int32_t));
        if (!s) { PyErr_NoMemory(); x->failed = 1; return -1; }
        r->scratch = s, r->n_scratch = n;
        earley_allowed_c(r->earley, col, r->scratch, n);
    }
    int32_t L = set_lexer(r, r->scratch, n);
    if (L < 0 && r->filtered && n > 0 && (L = filtered_lexer(x, col, n)) == -2) return -1;
    if (L < 0) {
        PyObject *t = PyTuple_New(n);
        for (Py_ssize_t i = 0; t && i < n; i++) {
            PyObject *v = PyLong_FromLong(r->scratch[i]);
            if (!v) { Py_CLEAR(t); break; }
            PyTuple_SET_ITEM(t, i, v);
        }
        report(x, t ? Py_BuildValue("(sN)", "lexer", t) : NULL);
        return -1;
    }
    if (put_column_lexer(r, col, L)) { PyErr_NoMemory(); x->failed = 1; return -1; }
    return L;
}

/* The walk of group g of walk w (grouped here) in lexer L2 from its start state, made and
 * registered here: its id, or -1 when Python must make it (no trie or product; the product
 * ran over its state budget: Python's walk raises the budget error), -2 on a Python error. */
static int32_t make_sub(Run *x, int32_t w, int32_t g, int32_t L2) {
    Boundaries *r = x->r;
    LexInfo *li = lex_info(r, L2);
    Product *P = li ? li->P : NULL;
    if (r->walks[w].gnodes && li && li->empty) { /* nothing to read */
        if (r->empty_walk < 0) {
            if (walks_room(r)) { PyErr_NoMemory(); return -2; }
            r->walks[r->n_walks] = (Walk){0};
            r->walks[r->n_walks].L = -1;
            r->empty_walk = (int32_t)r->n_walks++;
        }
        if (map_put(&r->sub, w, g, L2, r->empty_walk)) { PyErr_NoMemory(); return -2; }
        return r->empty_walk;
    }
    if (!r->has_trie || !P || !r->walks[w].gnodes || (li->keep && r->filtered == 2)) return -1;
    const int32_t *nodes = r->walks[w].gnodes + r->walks[w].gstart[g];
    Py_ssize_t n = r->walks[w].gstart[g + 1] - r->walks[w].gstart[g];
    if (n > r->n_zeros) {
        int32_t *z = calloc(n, sizeof(int32_t));
        if (!z) { PyErr_NoMemory(); return -2; }
        free(r->zeros);
        r->zeros = z, r->n_zeros = n;
    }
    if (walks_room(r)) { PyErr_NoMemory(); return -2; }
    Bounds b = {0};
    uint32_t *s = r->wscratch;
    int code = li->keep ? trie_walk_filtered(&r->trie, P, nodes, r->zeros, n, s, &b, &li->filt)
                        : trie_walk(&r->trie, P, nodes, r->zeros, n, s, &b);
    if (code || b.failed) {
        memset(s, 0, r->n_words * sizeof(uint32_t));
        bounds_free(&b);
        if (!b.failed) return -1;
        PyErr_NoMemory();
        return -2;
    }
    /* the words: compact when few are nonzero (as take_words), the scratch left zero */
    Py_ssize_t nz = 0;
    for (Py_ssize_t i = 0; i < r->n_words; i++) nz += s[i] != 0;
    Walk nw = {0};
    nw.dense = nz > SPARSE_WORDS;
    nw.own = malloc(nw.dense ? r->n_words * sizeof(uint32_t) : nz * (sizeof(int64_t) + sizeof(uint32_t)) + 1);
    if (!nw.own) { memset(s, 0, r->n_words * sizeof(uint32_t)); bounds_free(&b); PyErr_NoMemory(); return -2; }
    nw.wa = nw.own;
    if (nw.dense) {
        memcpy(nw.own, s, r->n_words * sizeof(uint32_t));
        memset(s, 0, r->n_words * sizeof(uint32_t));
    } else {
        int64_t *idx = nw.own;
        uint32_t *val = (uint32_t *)(idx + nz);
        for (Py_ssize_t i = 0, j = 0; j < nz; i++) {
            if ((i & 7) == 0 && i + 8 <= r->n_words) { /* a block of 8 zero words at once */
                uint32_t any = 0;
                for (int k = 0; k < 8; k++) any |= s[i + k];
                if (!any) { i += 7; continue; }
            }
            if (s[i]) idx[j] = i, val[j++] = s[i], s[i] = 0;
        }
        nw.wb = val, nw.m = nz;
    }
    nw.L = L2;
    int rc = group_walk(r, &nw, L2, b.ids, b.state, b.n);
    bounds_free(&b);
    if (rc) { walk_release(&nw); return -2; }
    int32_t w2 = (int32_t)r->n_walks;
    r->walks[r->n_walks++] = nw;
    r->n_made++;
    if (map_put(&r->sub, w, g, L2, w2)) { PyErr_NoMemory(); return -2; }
    return w2;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The twin of MaskComputer._boundaries: walk W's boundary groups from column col, whose
 * current lexer (the one W walked) is L. */
static void recurse(Run *x, int32_t col, int32_t L, int32_t w) {
    Boundaries *r = x->r;
    if ((x->steps++ & 255) == 0 && now() > x->deadline) x->over = 1; /* from the first level on */
    for (int32_t g = 0; g < r->walks[w].n_groups && !x->over && !x->failed; g++) {
        int32_t st = r->walks[w].rep[g], off, nxt, L2, w2;
        if ((off = accepts_of(r, L, st)) == -1) { x->failed = 1; return; }
        if (off < 0) { /* a lexer without a C product: Python's accepts */
            report(x, Py_BuildValue("(sii)", "accepts", L, st));
            continue;
        }
        if (!map_get(&r->child, col, L, st, &nxt) && r->python_scans) {
            report(x, Py_BuildValue("(siii)", "scan", col, L, st));
            continue;
        } else if (!map_get(&r->child, col, L, st, &nxt)) {
            const int32_t *lex = r->pool.v + off + 1; /* the pool may move: read before scanning */
            int32_t n = r->pool.v[off];
            nxt = earley_scan_c(r->earley, col, lex, n);
            if (nxt == -2) { PyErr_NoMemory(); x->failed = 1; return; }
            if (nxt == -1 && is_ignored(r, r->pool.v + off + 1, n)) nxt = col; /* the parse state stays */
            if (map_put(&r->child, col, L, st, nxt)) { PyErr_NoMemory(); x->failed = 1; return; }
        }
        if (nxt < 0) continue;
        if ((L2 = column_lexer(x, nxt)) < 0) continue;
        if (!map_get(&r->sub, w, g, L2, &w2)) {
            w2 = make_sub(x, w, g, L2);
            if (w2 == -2) { x->failed = 1; return; }
            if (w2 < 0) {
                report(x, Py_BuildValue("(siii)", "walk", w, g, L2));
                continue;
            }
            if (now() > x->deadline) x->over = 1; /* a sub-walk may take a millisecond */
        }
        or_walk(r->walks + w2, x->out, r->n_words);
        /* (a walk into a filtered lexer Python made, over its own lexer: that lexer's states) */
        if (L2 >= FILTERED_BASE && r->walks[w2].L >= 0) L2 = r->walks[w2].L;
        if (r->walks[w2].n_groups) recurse(x, nxt, L2, w2);
    }
}

/* run(column, L, W, out u32[n_words] (writable), deadline (time.monotonic)) -> list of what is
 * missing: ("accepts", L, state), ("lexer", allowed lexemes[, "unfiltered": a filtered column's
 * set before the filter, for its filtered lexer]), ("walk", W, group, L'); empty
 * when the recursion is complete (then out holds every boundary continuation), None when the
 * deadline passed. */
static PyObject *Boundaries_run(Boundaries *r, PyObject *args) {
    int col, L, w;
    Py_buffer ob;
    double deadline;
    if (!PyArg_ParseTuple(args, "iiiw*d", &col, &L, &w, &ob, &deadline)) return NULL;
    PyObject *res = NULL;
    if (ob.len != r->n_words * 4 || w < 0 || w >= r->n_walks) {
        PyErr_SetString(PyExc_ValueError, "Boundaries.run: bad words or walk");
        goto done;
    }
    Run x = {r, ob.buf, PyList_New(0), deadline, 0, 0, 0};
    if (!x.missing) goto done;
    recurse(&x, col, L, w);
    if (x.failed) Py_CLEAR(x.missing);
    else if (x.over) { Py_DECREF(x.missing); Py_INCREF(Py_None); x.missing = Py_None; }
    res = x.missing;
done:
    PyBuffer_Release(&ob);
    return res;
}

/* set_child(col, L, state, child): the column after what lexer L completes in state, from
 * column col (-1: none); set_column_lexer(col, L). For python_scans. */
static PyObject *Boundaries_set_child(Boundaries *r, PyObject *args) {
    int col, L, st, child;
    if (!PyArg_ParseTuple(args, "iiii", &col, &L, &st, &child)) return NULL;
    if (col < 0 || child < -1) { PyErr_SetString(PyExc_ValueError, "set_child: bad column"); return NULL; }
    if (map_put(&r->child, col, L, st, child < 0 ? -1 : child)) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *Boundaries_set_column_lexer(Boundaries *r, PyObject *args) {
    int col, L;
    if (!PyArg_ParseTuple(args, "ii", &col, &L)) return NULL;
    if (col < 0 || L < 0) { PyErr_SetString(PyExc_ValueError, "set_column_lexer: bad column or lexer"); return NULL; }
    if (put_column_lexer(r, col, L)) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* lexer_of(allowed (ascending sequence of int)) -> the lexer set_lexer gave it, or -1 */
static PyObject *Boundaries_lexer_of(Boundaries *r, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "allowed must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int32_t *v = malloc((n + 1) * sizeof(int32_t));
    if (!v) { Py_DECREF(seq); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < n; i++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (x == -1 && PyErr_Occurred()) { free(v); Py_DECREF(seq); return NULL; }
        v[i] = (int32_t)x;
    }
    Py_DECREF(seq);
    int32_t L = set_lexer(r, v, n);
    free(v);
    return PyLong_FromLong(L);
}

/* set_filtered(mode): make filtered lexers (see FILTERED_BASE) for new filtered columns
 * (1) or not (0); 2: make them, but report their sub-walks to Python (tests: the path a
 * product over its state budget takes) */
static PyObject *Boundaries_set_filtered(Boundaries *r, PyObject *arg) {
    long mode = PyLong_AsLong(arg);
    if (mode == -1 && PyErr_Occurred()) return NULL;
    if (mode < 0 || mode > 2) { PyErr_SetString(PyExc_ValueError, "set_filtered: 0, 1 or 2"); return NULL; }
    r->filtered = (int)mode;
    Py_RETURN_NONE;
}

/* filtered_lexer(L) -> (allowed set, filtered lexers made, bytes of their state flags):
 * L's allowed set where L is a filtered lexer made here, else None */
static PyObject *Boundaries_filtered_lexer(Boundaries *r, PyObject *arg) {
    long L = PyLong_AsLong(arg);
    if (L == -1 && PyErr_Occurred()) return NULL;
    PyObject *set;
    if (L >= FILTERED_BASE && L - FILTERED_BASE < r->n_flex) {
        const int32_t *v = r->pool.v + r->flex[L - FILTERED_BASE].set;
        if (!(set = int_tuple(v + 1, v[0]))) return NULL;
    } else {
        set = Py_None;
        Py_INCREF(set);
    }
    Py_ssize_t flag_bytes = 0;
    for (Py_ssize_t i = 0; i < r->n_flex; i++) flag_bytes += r->flex[i].filt.cap;
    return Py_BuildValue("(Nnn)", set, r->n_flex, flag_bytes);
}

static PyMethodDef Boundaries_methods[] = {
    {"set_filtered", (PyCFunction)Boundaries_set_filtered, METH_O, "Make filtered lexers here, or not."},
    {"filtered_lexer", (PyCFunction)Boundaries_filtered_lexer, METH_O, "A filtered lexer's set; how many."},
    {"set_child", (PyCFunction)Boundaries_set_child, METH_VARARGS, "The column a scan leads to (python_scans)."},
    {"set_column_lexer", (PyCFunction)Boundaries_set_column_lexer, METH_VARARGS, "A column's lexer (python_scans)."},
    {"lexer_of", (PyCFunction)Boundaries_lexer_of, METH_O, "The lexer registered for an allowed set, or -1."},
    {"add_walk", (PyCFunction)Boundaries_add_walk, METH_VARARGS, "Register a walk result: its id."},
    {"add_walk_nodes", (PyCFunction)Boundaries_add_walk_nodes, METH_VARARGS, "Register a walk grouped here: its id."},
    {"set_trie", (PyCFunction)Boundaries_set_trie, METH_VARARGS, "The token trie sub-walks read."},
    {"set_product", (PyCFunction)Boundaries_set_product, METH_VARARGS, "A lexer's C product and lexeme ids."},
    {"group_nodes", (PyCFunction)Boundaries_group_nodes, METH_VARARGS, "The trie nodes of a group grouped here."},
    {"counts", (PyCFunction)Boundaries_counts, METH_NOARGS, "(walks registered, walks made here)."},
    {"set_accepts", (PyCFunction)Boundaries_set_accepts, METH_VARARGS, "The lexemes a lexer state completes."},
    {"set_lexer", (PyCFunction)Boundaries_set_lexer, METH_VARARGS, "The lexer of an allowed lexeme set."},
    {"set_sub", (PyCFunction)Boundaries_set_sub, METH_VARARGS, "The walk of a group's subtrees in a lexer."},
    {"run", (PyCFunction)Boundaries_run, METH_VARARGS, "OR the boundary continuations; what is missing."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject BoundariesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sgl.constrain._native.Boundaries",
    .tp_basicsize = sizeof(Boundaries),
    .tp_dealloc = (destructor)Boundaries_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The boundary recursion of mask misses over registered pieces.",
    .tp_methods = Boundaries_methods,
    .tp_new = Boundaries_new,
};
