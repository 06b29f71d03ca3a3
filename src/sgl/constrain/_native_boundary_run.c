/* Part of the _native extension (see _native.c): the boundary recursion of a mask miss
 * itself (the twin of mask.py's MaskComputer._boundaries) and the sub-walks it makes in
 * C; the Boundaries object, its tables and what Python registers are in
 * _native_boundary.c (see there for the whole design). */
#include "_native_boundary.h" /* first: it includes Python.h */
#include <time.h>

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
int group_walk(Boundaries *r, Walk *w, int32_t L, const int64_t *nodes, const int64_t *states, Py_ssize_t n) {
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

int put_column_lexer(Boundaries *r, int32_t col, int32_t L) {
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

PyObject *int_tuple(const int32_t *v, Py_ssize_t n) {
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
PyObject *Boundaries_run(Boundaries *r, PyObject *args) {
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
