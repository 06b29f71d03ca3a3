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
 *
 * Here: the Boundaries type and the tables Python registers; the recursion (run) and the
 * sub-walks it makes are in _native_boundary_run.c, both over _native_boundary.h.
 */
#include "_native_boundary.h" /* first: it includes Python.h */

int map_put(Map3 *m, int32_t a, int32_t b, int32_t c, int32_t v) {
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


int pool_push(Pool *p, int32_t x) {
    if (p->n == p->cap) {
        Py_ssize_t cap = p->cap ? 2 * p->cap : 1024;
        int32_t *v = realloc(p->v, cap * sizeof(int32_t));
        if (!v) return -1;
        p->v = v, p->cap = cap;
    }
    p->v[p->n++] = x;
    return 0;
}

void walk_release(Walk *w) {
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

int walks_room(Boundaries *r) {
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
int32_t set_lexer(const Boundaries *r, const int32_t *v, Py_ssize_t n) {
    int32_t lo, hi, off;
    set_hash(v, n, &lo, &hi);
    for (int32_t k = (int32_t)n;; k += 1 << 24) { /* colliding sets: the next key along */
        if (!map_get(&r->sets, lo, hi, k, &off)) return -1;
        if (r->pool.v[off] == n && !memcmp(r->pool.v + off + 1, v, n * sizeof(int32_t))) return r->pool.v[off + 1 + n];
    }
}

/* Register allowed set v[0..n) (ascending, not known yet: set_lexer is -1) as lexer L's:
 * 0, or -1 (memory). v must not point into the pool. */
int sets_add(Boundaries *r, const int32_t *v, Py_ssize_t n, int32_t L) {
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

static Product *product_of(const Boundaries *r, int32_t L) {
    const LexInfo *li = lex_info(r, L);
    return li ? li->P : NULL;
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
