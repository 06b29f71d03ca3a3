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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int32_t earley_scan_c(PyObject *obj, int32_t uid, const int32_t *lex, Py_ssize_t n);
Py_ssize_t earley_allowed_c(PyObject *obj, int32_t uid, int32_t *out, Py_ssize_t n_out);
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

/* a registered walk result: its inside words (held buffers) and its boundary groups */
typedef struct {
    Py_buffer a, b;  /* dense: a = the words; compact: a = indices (i64), b = values (u32) */
    int dense, held;
    int32_t n_groups;
    int32_t *rep;    /* per group: a boundary state of it (they all complete the same lexemes) */
} Walk;

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
} Boundaries;

static void walk_release(Walk *w) {
    if (w->held) {
        PyBuffer_Release(&w->a);
        if (!w->dense) PyBuffer_Release(&w->b);
    }
    free(w->rep);
}

static void Boundaries_dealloc(Boundaries *r) {
    Py_XDECREF(r->earley);
    for (Py_ssize_t i = 0; i < r->n_walks; i++) walk_release(r->walks + i);
    free(r->walks); free(r->ignore); free(r->acc.e); free(r->child.e); free(r->sub.e); free(r->sets.e);
    free(r->col_lex); free(r->pool.v); free(r->scratch);
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

/* add_walk(inside: dense u32 words or (indices i64, values u32), rep_states (sequence)) -> W */
static PyObject *Boundaries_add_walk(Boundaries *r, PyObject *args) {
    PyObject *inside, *reps;
    if (!PyArg_ParseTuple(args, "OO", &inside, &reps)) return NULL;
    if (r->n_walks == r->cap_walks) {
        Py_ssize_t cap = r->cap_walks ? 2 * r->cap_walks : 256;
        Walk *w = realloc(r->walks, cap * sizeof(Walk));
        if (!w) return PyErr_NoMemory();
        r->walks = w, r->cap_walks = cap;
    }
    Walk w = {0};
    int tuple = PyTuple_Check(inside);
    if (tuple && PyTuple_GET_SIZE(inside) != 2) {
        PyErr_SetString(PyExc_ValueError, "add_walk: a compact part is (indices, values)");
        return NULL;
    }
    if (PyObject_GetBuffer(tuple ? PyTuple_GET_ITEM(inside, 0) : inside, &w.a, PyBUF_SIMPLE)) return NULL;
    w.dense = !tuple;
    if (tuple && PyObject_GetBuffer(PyTuple_GET_ITEM(inside, 1), &w.b, PyBUF_SIMPLE)) {
        PyBuffer_Release(&w.a);
        return NULL;
    }
    w.held = 1;
    int bad = w.dense ? w.a.len != r->n_words * 4 : (w.a.len % 8 || w.b.len != w.a.len / 2);
    const int64_t *idx = w.a.buf;
    for (Py_ssize_t j = 0; !bad && !w.dense && j < w.a.len / 8; j++) bad = idx[j] < 0 || idx[j] >= r->n_words;
    PyObject *seq = bad ? NULL : PySequence_Fast(reps, "rep_states must be a sequence");
    if (bad) PyErr_SetString(PyExc_ValueError, "add_walk: words of another width or out of range");
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
        const uint32_t *src = w->a.buf;
        for (Py_ssize_t i = 0; i < n_words; i++) out[i] |= src[i];
        return;
    }
    const int64_t *idx = w->a.buf;
    const uint32_t *val = w->b.buf;
    for (Py_ssize_t j = 0, m = w->a.len / 8; j < m; j++) out[idx[j]] |= val[j];
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
        if (!map_get(&r->acc, L, st, 0, &off)) {
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
            report(x, Py_BuildValue("(siii)", "walk", w, g, L2));
            continue;
        }
        or_walk(r->walks + w2, x->out, r->n_words);
        if (r->walks[w2].n_groups) recurse(x, nxt, L2, w2);
    }
}

/* run(column, L, W, out u32[n_words] (writable), deadline (time.monotonic)) -> list of what is
 * missing: ("accepts", L, state), ("lexer", allowed lexemes), ("walk", W, group, L'); empty
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

static PyMethodDef Boundaries_methods[] = {
    {"set_child", (PyCFunction)Boundaries_set_child, METH_VARARGS, "The column a scan leads to (python_scans)."},
    {"set_column_lexer", (PyCFunction)Boundaries_set_column_lexer, METH_VARARGS, "A column's lexer (python_scans)."},
    {"lexer_of", (PyCFunction)Boundaries_lexer_of, METH_O, "The lexer registered for an allowed set, or -1."},
    {"add_walk", (PyCFunction)Boundaries_add_walk, METH_VARARGS, "Register a walk result: its id."},
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
