/* Part of the _native extension (see _native.c): the Earley parser's columns and
 * closure, the compiled twin of earley.py's EarleyParser. */
#include "_native_earley.h" /* first: it includes Python.h */

PyTypeObject EarleyType;

static void earley_dealloc(Earley *e) {
    free(e->lhs); free(e->rhs_off); free(e->rhs); free(e->rules_of_off); free(e->rules_of); free(e->nullable);
    if (e->pred) for (int32_t a = 0; a < e->n_nt; a++) { free(e->pred[a]); free(e->pred_syms[a]); }
    free(e->pred); free(e->pred_len); free(e->pred_syms); free(e->pred_syms_len);
    for (Py_ssize_t c = 0; c < e->n_cols; c++) {
        free(e->cols[c].waiting); free(e->cols[c].scannable);
    }
    free(e->cols);
    free(e->lex_class); free(e->boxes); free(e->kpool); free(e->child.k); free(e->child.v);
    free(e->multi.k); free(e->multi.v); free(e->ments);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static int32_t *copy_i32(Py_buffer *b) {
    int32_t *out = malloc(b->len ? b->len : 1);
    if (out) memcpy(out, b->buf, b->len);
    return out;
}

/* Earley(lhs i32[R], rhs_off i32[R+1], rhs i32[], rules_of_off i32[N+1], rules_of i32[], nullable u8[N], start_rule) */
static PyObject *earley_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Py_buffer bl, bo, br, bro, brs, bn;
    int start_rule;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*i", &bl, &bo, &br, &bro, &brs, &bn, &start_rule)) return NULL;
    Earley *e = NULL;
    Py_ssize_t n_rules = bl.len / 4, n_nt = bn.len;
    int ok = bl.len % 4 == 0 && bo.len == (n_rules + 1) * 4 && bro.len == (n_nt + 1) * 4 && n_rules < (1 << 21) &&
             start_rule >= 0 && start_rule < n_rules;
    if (ok) {
        const int32_t *off = bo.buf, *rhs = br.buf, *lhs = bl.buf, *roff = bro.buf, *rof = brs.buf;
        ok = off[0] == 0 && off[n_rules] == br.len / 4 && roff[0] == 0 && roff[n_nt] == brs.len / 4;
        for (Py_ssize_t r = 0; ok && r < n_rules; r++) {
            ok = lhs[r] >= 0 && lhs[r] < n_nt && off[r + 1] >= off[r] && off[r + 1] - off[r] < 1023;
            for (int32_t i = off[r]; ok && i < off[r + 1]; i++) ok = rhs[i] < n_nt;
        }
        for (Py_ssize_t a = 0; ok && a < n_nt; a++) {
            ok = roff[a + 1] >= roff[a];
            for (int32_t i = roff[a]; ok && i < roff[a + 1]; i++) ok = rof[i] >= 0 && rof[i] < n_rules;
        }
    }
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "Earley: inconsistent grammar tables");
        goto done;
    }
    e = (Earley *)type->tp_alloc(type, 0);
    if (!e) goto done;
    e->n_rules = (int32_t)n_rules;
    e->n_nt = (int32_t)n_nt;
    e->start_rule = start_rule;
    e->lhs = copy_i32(&bl); e->rhs_off = copy_i32(&bo); e->rhs = copy_i32(&br);
    e->rules_of_off = copy_i32(&bro); e->rules_of = copy_i32(&brs);
    e->nullable = malloc(n_nt ? n_nt : 1);
    e->pred = calloc(n_nt ? n_nt : 1, sizeof(int32_t *));
    e->pred_len = calloc(n_nt ? n_nt : 1, sizeof(int32_t));
    e->pred_syms = calloc(n_nt ? n_nt : 1, sizeof(int32_t *));
    e->pred_syms_len = calloc(n_nt ? n_nt : 1, sizeof(int32_t));
    if (!e->lhs || !e->rhs_off || !e->rhs || !e->rules_of_off || !e->rules_of || !e->nullable || !e->pred ||
        !e->pred_len || !e->pred_syms || !e->pred_syms_len) {
        Py_DECREF(e);
        e = NULL;
        PyErr_NoMemory();
        goto done;
    }
    memcpy(e->nullable, bn.buf, n_nt);
done:
    PyBuffer_Release(&bl); PyBuffer_Release(&bo); PyBuffer_Release(&br); PyBuffer_Release(&bro);
    PyBuffer_Release(&brs); PyBuffer_Release(&bn);
    return (PyObject *)e;
}

/* growable arrays */
typedef struct { uint64_t *v; Py_ssize_t n, cap; } U64Vec;
typedef struct { SymItem *v; Py_ssize_t n, cap; } SIVec;
typedef struct { int32_t *v; Py_ssize_t n, cap; } I32Vec;

static int u64_push(U64Vec *a, uint64_t x) {
    if (a->n == a->cap) {
        Py_ssize_t cap = a->cap ? 2 * a->cap : 64;
        uint64_t *v = realloc(a->v, cap * sizeof(uint64_t));
        if (!v) return -1;
        a->v = v, a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

static int si_push(SIVec *a, int32_t sym, uint64_t item) {
    if (a->n == a->cap) {
        Py_ssize_t cap = a->cap ? 2 * a->cap : 64;
        SymItem *v = realloc(a->v, cap * sizeof(SymItem));
        if (!v) return -1;
        a->v = v, a->cap = cap;
    }
    a->v[a->n].sym = sym;
    a->v[a->n++].item = item;
    return 0;
}

static int i32_push(I32Vec *a, int32_t x) {
    if (a->n == a->cap) {
        Py_ssize_t cap = a->cap ? 2 * a->cap : 64;
        int32_t *v = realloc(a->v, cap * sizeof(int32_t));
        if (!v) return -1;
        a->v = v, a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

/* a set of 64-bit items: open addressing, key+1 stored (0 = empty) */
typedef struct { uint64_t *slots; Py_ssize_t n, cap; } ItemSet;

static int set_add(ItemSet *s, uint64_t x) { /* 1 added, 0 present, -1 memory */
    if (2 * (s->n + 1) > s->cap) {
        Py_ssize_t cap = s->cap ? 2 * s->cap : 256;
        uint64_t *slots = calloc(cap, sizeof(uint64_t));
        if (!slots) return -1;
        for (Py_ssize_t i = 0; i < s->cap; i++) {
            uint64_t y = s->slots[i];
            if (!y) continue;
            Py_ssize_t h = (Py_ssize_t)(((y - 1) * 0x9E3779B97F4A7C15ULL) >> 20) & (cap - 1);
            while (slots[h]) h = (h + 1) & (cap - 1);
            slots[h] = y;
        }
        free(s->slots);
        s->slots = slots, s->cap = cap;
    }
    Py_ssize_t h = (Py_ssize_t)((x * 0x9E3779B97F4A7C15ULL) >> 20) & (s->cap - 1);
    while (s->slots[h]) {
        if (s->slots[h] == x + 1) return 0;
        h = (h + 1) & (s->cap - 1);
    }
    s->slots[h] = x + 1;
    s->n++;
    return 1;
}

/* The prediction set of nonterminal a (computed once): (rule, dot) pairs, predicted syms. */
static int earley_prediction(Earley *e, int32_t a) {
    if (e->pred[a]) return 0;
    ItemSet seen = {0};
    U64Vec order = {0}, agenda = {0};
    I32Vec syms = {0};
    uint8_t *has = calloc(e->n_nt, 1);
    int rc = has ? 0 : -1;
    if (!rc) { has[a] = 1; rc = i32_push(&syms, a); }
    for (int32_t i = e->rules_of_off[a]; !rc && i < e->rules_of_off[a + 1]; i++) rc = u64_push(&agenda, ITEM(e->rules_of[i], 0, 0));
    while (!rc && agenda.n) {
        uint64_t it = agenda.v[--agenda.n];
        int added = set_add(&seen, it);
        if (added < 0) { rc = -1; break; }
        if (!added) continue;
        if ((rc = u64_push(&order, it))) break;
        int32_t r = I_RULE(it), d = I_DOT(it);
        if (d == e->rhs_off[r + 1] - e->rhs_off[r]) continue;
        int32_t nx = e->rhs[e->rhs_off[r] + d];
        if (nx < 0) continue;
        if (!has[nx]) {
            has[nx] = 1;
            if ((rc = i32_push(&syms, nx))) break;
            for (int32_t i = e->rules_of_off[nx]; !rc && i < e->rules_of_off[nx + 1]; i++)
                rc = u64_push(&agenda, ITEM(e->rules_of[i], 0, 0));
        }
        if (!rc && e->nullable[nx]) rc = u64_push(&agenda, ITEM(r, d + 1, 0));
    }
    if (!rc) {
        int32_t *pairs = malloc((order.n ? order.n : 1) * 2 * sizeof(int32_t));
        if (!pairs) rc = -1;
        else {
            for (Py_ssize_t i = 0; i < order.n; i++) pairs[2 * i] = I_RULE(order.v[i]), pairs[2 * i + 1] = I_DOT(order.v[i]);
            e->pred[a] = pairs;
            e->pred_len[a] = (int32_t)order.n;
            e->pred_syms[a] = syms.v;
            e->pred_syms_len[a] = (int32_t)syms.n;
            syms.v = NULL;
        }
    }
    free(seen.slots); free(order.v); free(agenda.v); free(syms.v); free(has);
    return rc;
}

static int cmp_symitem(const void *a, const void *b) {
    int32_t x = ((const SymItem *)a)->sym, y = ((const SymItem *)b)->sym;
    return (x > y) - (x < y);
}

/* [lo, hi) of sym in a sorted SymItem array */
static void sym_range(const SymItem *v, Py_ssize_t n, int32_t sym, Py_ssize_t *lo, Py_ssize_t *hi) {
    Py_ssize_t a = 0, b = n;
    while (a < b) { Py_ssize_t m = (a + b) / 2; if (v[m].sym < sym) a = m + 1; else b = m; }
    *lo = a;
    b = n;
    while (a < b) { Py_ssize_t m = (a + b) / 2; if (v[m].sym <= sym) a = m + 1; else b = m; }
    *hi = a;
}

/* Close a new column over its kernel items and append it: 0, or -1 (memory; no error set). */
static int earley_close_col(Earley *e, U64Vec *agenda, int *accepting_out) {
    if (e->n_cols == e->cap_cols) {
        Py_ssize_t cap = e->cap_cols ? 2 * e->cap_cols : 64;
        Column *cols = realloc(e->cols, cap * sizeof(Column));
        if (!cols) return -1;
        e->cols = cols, e->cap_cols = cap;
    }
    int32_t uid = (int32_t)e->n_cols;
    ItemSet items = {0};
    SIVec waiting = {0}, scannable = {0};
    uint8_t *predicted = calloc(e->n_nt ? e->n_nt : 1, 1);
    int rc = predicted ? 0 : -1, accepting = 0;
    while (!rc && agenda->n) {
        uint64_t it = agenda->v[--agenda->n];
        int added = set_add(&items, it);
        if (added < 0) { rc = -1; break; }
        if (!added) continue;
        int32_t r = I_RULE(it), d = I_DOT(it), o = I_ORIGIN(it);
        int32_t len = e->rhs_off[r + 1] - e->rhs_off[r];
        if (r == e->start_rule && d == 1) accepting = 1;
        if (d == len) {
            if (o == uid) continue; /* nullable completion: advanced over at prediction time */
            Py_ssize_t lo, hi;
            const Column *oc = e->cols + o;
            sym_range(oc->waiting, oc->n_waiting, e->lhs[r], &lo, &hi);
            for (Py_ssize_t i = lo; !rc && i < hi; i++) {
                uint64_t w = oc->waiting[i].item;
                rc = u64_push(agenda, ITEM(I_RULE(w), I_DOT(w) + 1, I_ORIGIN(w)));
            }
            continue;
        }
        int32_t sym = e->rhs[e->rhs_off[r] + d];
        if (sym < 0) { rc = si_push(&scannable, ~sym, it); continue; }
        if ((rc = si_push(&waiting, sym, it))) break;
        if (!predicted[sym]) {
            if ((rc = earley_prediction(e, sym))) break;
            for (int32_t i = 0; i < e->pred_syms_len[sym]; i++) predicted[e->pred_syms[sym][i]] = 1;
            const int32_t *pairs = e->pred[sym];
            for (int32_t i = 0; !rc && i < e->pred_len[sym]; i++) {
                int32_t pr = pairs[2 * i], pd = pairs[2 * i + 1];
                uint64_t pit = ITEM(pr, pd, uid);
                int a2 = set_add(&items, pit);
                if (a2 < 0) { rc = -1; break; }
                if (!a2) continue;
                if (pr == e->start_rule && pd == 1) accepting = 1;
                if (pd == e->rhs_off[pr + 1] - e->rhs_off[pr]) continue;
                int32_t s2 = e->rhs[e->rhs_off[pr] + pd];
                rc = s2 < 0 ? si_push(&scannable, ~s2, pit) : si_push(&waiting, s2, pit);
            }
        }
        if (!rc && e->nullable[sym]) rc = u64_push(agenda, ITEM(r, d + 1, o));
    }
    free(items.slots);
    free(predicted);
    if (rc) {
        free(waiting.v); free(scannable.v);
        return -1;
    }
    qsort(waiting.v, waiting.n, sizeof(SymItem), cmp_symitem);
    qsort(scannable.v, scannable.n, sizeof(SymItem), cmp_symitem);
    if (waiting.n > INT32_MAX || scannable.n > INT32_MAX) {
        free(waiting.v); free(scannable.v);
        return -1;
    }
    Column *c = e->cols + e->n_cols++;
    c->waiting = waiting.v, c->n_waiting = (int32_t)waiting.n;
    c->scannable = scannable.v, c->n_scannable = (int32_t)scannable.n;
    c->box = c->read = -1;
    c->allowed = -1;
    c->at_key = c->wide = 0;
    c->accepting = (uint8_t)accepting;
    *accepting_out = accepting;
    return 0;
}

/* The lexemes column uid allows (ascending, once each) into *out (malloc'ed): the
 * filtered list where the check filtered it, else its scannable symbols. Their count,
 * -1 on memory. */
Py_ssize_t column_allowed(const Earley *e, int32_t uid, int32_t **out, int filtered) {
    const Column *c = e->cols + uid;
    if (filtered && c->allowed >= 0) {
        int32_t n = e->kpool[c->allowed];
        *out = malloc((n + 1) * sizeof(int32_t));
        if (!*out) return -1;
        memcpy(*out, e->kpool + c->allowed + 1, n * sizeof(int32_t));
        return n;
    }
    *out = malloc((c->n_scannable + 1) * sizeof(int32_t));
    if (!*out) return -1;
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < c->n_scannable; i++)
        if (!i || c->scannable[i].sym != c->scannable[i - 1].sym) (*out)[k++] = c->scannable[i].sym;
    return k;
}

/* The column after one span read as any of lex[0..n) from column uid (valid), with the
 * duplicate-key check where registered: a wide key position refuses its used keys
 * (EarleyParser.scan), the new column is tracked. One-lexeme scans are made once. Its
 * uid, -1 when no item scans them, -2 on memory. */
int32_t earley_step(Earley *e, int32_t uid, const int32_t *lex, Py_ssize_t n) {
    int32_t small[8], *kept = n > 8 ? malloc(n * sizeof(int32_t)) : small;
    if (!kept) return -2;
    int32_t used = e->cols[uid].wide ? e->boxes[e->cols[uid].box].keys : -1, out = -1;
    Py_ssize_t nk = 0;
    for (Py_ssize_t j = 0; j < n; j++)
        if (used < 0 || !kpool_has(e, used, lex[j])) kept[nk++] = lex[j];
    if (nk == 1 && child_get(&e->child, uid, kept[0], &out)) goto done;
    int32_t h = 0, head = -1;
    if (nk > 1) { /* the same set from this column (another lexer state, Python) is one column */
        qsort(kept, nk, sizeof(int32_t), cmp_i32);
        Py_ssize_t m = 1;
        for (Py_ssize_t j = 1; j < nk; j++) if (kept[j] != kept[m - 1]) kept[m++] = kept[j];
        nk = m;
        h = set_hash32(kept, nk);
        if (child_get(&e->multi, uid, h, &head)) {
            for (int32_t i = head; i >= 0; i = e->ments[i].next) {
                const int32_t *v = e->kpool + e->ments[i].set;
                if (v[0] == nk && !memcmp(v + 1, kept, nk * sizeof(int32_t))) { out = e->ments[i].child; goto done; }
            }
        } else head = -1;
    }
    U64Vec agenda = {0};
    for (Py_ssize_t j = 0; j < nk; j++) {
        const Column *c = e->cols + uid;
        Py_ssize_t lo, hi;
        sym_range(c->scannable, c->n_scannable, kept[j], &lo, &hi);
        for (Py_ssize_t i = lo; i < hi; i++) {
            uint64_t it = c->scannable[i].item;
            if (u64_push(&agenda, ITEM(I_RULE(it), I_DOT(it) + 1, I_ORIGIN(it)))) { out = -2; break; }
        }
        if (out == -2) break;
    }
    int accepting;
    if (out != -2 && agenda.n) out = earley_close_col(e, &agenda, &accepting) ? -2 : (int32_t)(e->n_cols - 1);
    free(agenda.v);
    if (out >= 0 && e->tracking && earley_track(e, uid, out, kept, nk)) out = -2;
    if (out != -2 && nk == 1 && child_put(&e->child, uid, kept[0], out)) out = -2;
    if (out != -2 && nk > 1 && multi_put(e, uid, h, head, kept, nk, out)) out = -2;
done:
    if (kept != small) free(kept);
    return out;
}

PyObject *int_list(const int32_t *v, Py_ssize_t n) {
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *x = PyLong_FromLong(v[i]);
        if (!x) { Py_CLEAR(out); break; }
        PyList_SET_ITEM(out, i, x);
    }
    return out;
}

/* (uid, allowed lexemes, accepting, wide) of column uid: allowed after the key check's
 * filter, wide (its scannable lexemes) where a key position is lexed with its used keys
 * too, else None */
static PyObject *column_result(Earley *e, int32_t uid) {
    const Column *c = e->cols + uid;
    int32_t *v;
    Py_ssize_t n = column_allowed(e, uid, &v, 1);
    if (n < 0) return PyErr_NoMemory();
    PyObject *allowed = int_list(v, n), *wide = Py_None;
    free(v);
    if (!allowed) return NULL;
    if (c->wide) {
        n = column_allowed(e, uid, &v, 0);
        if (n < 0) { Py_DECREF(allowed); return PyErr_NoMemory(); }
        wide = int_list(v, n);
        free(v);
        if (!wide) { Py_DECREF(allowed); return NULL; }
    } else Py_INCREF(wide);
    return Py_BuildValue("(iNON)", uid, allowed, c->accepting ? Py_True : Py_False, wide);
}

/* initial() -> (uid, allowed, accepting, wide) of the first column */
static PyObject *earley_initial(Earley *e, PyObject *unused) {
    U64Vec agenda = {0};
    if (u64_push(&agenda, ITEM(e->start_rule, 0, e->n_cols))) return PyErr_NoMemory();
    int accepting;
    int rc = earley_close_col(e, &agenda, &accepting);
    free(agenda.v);
    if (rc) return PyErr_NoMemory();
    return column_result(e, (int32_t)(e->n_cols - 1));
}

/* scan(uid, lexemes) -> (uid, allowed, accepting, wide) of the column after one span read
 * as any of `lexemes` (column_result), or None when no item can scan them. */
static PyObject *earley_scan(Earley *e, PyObject *args) {
    int uid;
    PyObject *lexemes;
    if (!PyArg_ParseTuple(args, "iO", &uid, &lexemes)) return NULL;
    if (uid < 0 || uid >= e->n_cols) {
        PyErr_SetString(PyExc_IndexError, "Earley.scan: unknown column");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(lexemes, "lexemes must be iterable");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int32_t *lex = malloc((n + 1) * sizeof(int32_t));
    if (!lex) { Py_DECREF(seq); return PyErr_NoMemory(); }
    for (Py_ssize_t j = 0; j < n; j++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, j));
        if (x == -1 && PyErr_Occurred()) { free(lex); Py_DECREF(seq); return NULL; }
        lex[j] = (int32_t)x;
    }
    Py_DECREF(seq);
    int32_t out = earley_step(e, uid, lex, n);
    free(lex);
    if (out == -2) return PyErr_NoMemory();
    if (out == -1) Py_RETURN_NONE;
    return column_result(e, out);
}

/* For the boundary recursion (_native_boundary.c), with the GIL held: the column after
 * one span read as any of lex[0..n), as earley_scan (the key check included): its uid,
 * -1 when no item scans them, -2 on memory (no error set). */
int32_t earley_scan_c(PyObject *obj, int32_t uid, const int32_t *lex, Py_ssize_t n) {
    Earley *e = (Earley *)obj;
    if (uid < 0 || uid >= e->n_cols) return -1;
    return earley_step(e, uid, lex, n);
}

/* The lexemes column uid allows (ascending, once each; after the key check's filter)
 * into out (room for n_out); returns how many there are (maybe more than n_out), -1 for
 * a bad uid. */
Py_ssize_t earley_allowed_c(PyObject *obj, int32_t uid, int32_t *out, Py_ssize_t n_out) {
    Earley *e = (Earley *)obj;
    if (uid < 0 || uid >= e->n_cols) return -1;
    const Column *c = e->cols + uid;
    if (c->allowed >= 0) {
        const int32_t *v = e->kpool + c->allowed + 1;
        for (Py_ssize_t i = 0; i < v[-1] && i < n_out; i++) out[i] = v[i];
        return v[-1];
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < c->n_scannable; i++) {
        if (i && c->scannable[i].sym == c->scannable[i - 1].sym) continue;
        if (k < n_out) out[k] = c->scannable[i].sym;
        k++;
    }
    return k;
}

/* The lexemes column uid's items scan (ascending, once each) before the key check's
 * filter, into out (room for n_out): how many (maybe more than n_out); -2 where the check
 * filtered nothing there (earley_allowed_c gives the same set), -1 for a bad uid. */
Py_ssize_t earley_scannable_c(PyObject *obj, int32_t uid, int32_t *out, Py_ssize_t n_out) {
    Earley *e = (Earley *)obj;
    if (uid < 0 || uid >= e->n_cols) return -1;
    const Column *c = e->cols + uid;
    if (c->allowed < 0) return -2;
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < c->n_scannable; i++) {
        if (i && c->scannable[i].sym == c->scannable[i - 1].sym) continue;
        if (k < n_out) out[k] = c->scannable[i].sym;
        k++;
    }
    return k;
}

static PyMethodDef Earley_methods[] = {
    {"initial", (PyCFunction)earley_initial, METH_NOARGS, "The first column: (uid, allowed, accepting)."},
    {"scan", (PyCFunction)earley_scan, METH_VARARGS, "The column after lexemes, or None."},
    {"set_keys", (PyCFunction)earley_set_keys, METH_VARARGS, "Turn the duplicate-key check on."},
    {"set_wide_min", (PyCFunction)earley_set_wide_min, METH_O, "Objects of this many keys get wide key positions."},
    {"keys_of", (PyCFunction)earley_keys_of, METH_O, "A column's duplicate-key state (for tests)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject EarleyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sgl.constrain._native.Earley",
    .tp_basicsize = sizeof(Earley),
    .tp_dealloc = (destructor)earley_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Earley columns and their closure.",
    .tp_methods = Earley_methods,
    .tp_new = earley_new,
};
