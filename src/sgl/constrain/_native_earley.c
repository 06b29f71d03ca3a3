/* Part of the _native extension (see _native.c): the Earley parser's columns and
 * closure, the compiled twin of earley.py's EarleyParser. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

PyTypeObject EarleyType;

/* ------------------------------------------------------------------------------------
 * Earley: the parser's columns and their closure (the twin of earley.py's EarleyParser).
 *
 * An item is (rule, dot, origin column) packed in 64 bits. A column keeps, sorted by
 * symbol, the items waiting for each nonterminal (completions look them up later) and
 * the items that can scan each lexeme. Prediction sets (what predicting a nonterminal
 * adds to any column) are computed once per symbol, as in the Python version.
 * ------------------------------------------------------------------------------------ */
#define ITEM(r, d, o) (((uint64_t)(uint32_t)(r) << 42) | ((uint64_t)(uint32_t)(d) << 32) | (uint32_t)(o))
#define I_RULE(x) ((int32_t)((x) >> 42))
#define I_DOT(x) ((int32_t)(((x) >> 32) & 1023))
#define I_ORIGIN(x) ((int32_t)((x) & 0xffffffffu))

typedef struct { int32_t sym; uint64_t item; } SymItem;

typedef struct {
    SymItem *waiting, *scannable; /* sorted by sym */
    int32_t n_waiting, n_scannable; /* (int32: a column costs 40 bytes here, not 56) */
    /* the duplicate-key check (earley.py's EarleyParser._track_keys), once set_keys ran: */
    int32_t box;      /* the innermost open container (Earley.boxes), -1 none */
    int32_t read;     /* key lexemes scanned into this column (a kpool set), -1 none */
    int32_t allowed;  /* the allowed lexemes after the check's filter (a kpool set, one per
                       * content: columns share it, as Python's _drop shares frozensets);
                       * -1: the scannable symbols as they are */
    uint8_t at_key, accepting, wide; /* wide: lexed with the used keys too (EarleySet.wide) */
} Column;

/* an open object or array of the text (shared by every column inside it) */
typedef struct { int32_t parent, keys; uint8_t is_object; } Box; /* keys: a kpool set, -1 none */

/* lexeme classes of the duplicate-key check (grammar.UniqueKeys), bits of Earley.lex_class */
enum { K_OPEN_OBJECT = 1, K_OPEN_ARRAY = 2, K_CLOSE = 4, K_COMMA = 8, K_COLON = 16, K_KEY = 32, K_IGNORE = 64 };

/* a map from (column, lexeme) to the column a one-lexeme scan gives: open addressing over
 * packed keys + 1 (0 empty) */
typedef struct { uint64_t *k; int32_t *v; Py_ssize_t n, cap; } ChildMap;
/* a scan of several lexemes made: the set (a kpool set), the column, the next entry with
 * the same (column, hash) */
typedef struct { int32_t set, child, next; } MultiEnt;

typedef struct {
    PyObject_HEAD
    int32_t n_rules, n_nt, start_rule;
    int32_t *lhs, *rhs_off, *rhs, *rules_of_off, *rules_of;
    uint8_t *nullable;
    int32_t **pred;      /* per nonterminal: (rule, dot) pairs, or NULL until computed */
    int32_t *pred_len;
    int32_t **pred_syms; /* per nonterminal: the nonterminals predicted with it */
    int32_t *pred_syms_len;
    Column *cols;
    Py_ssize_t n_cols, cap_cols;
    /* the duplicate-key check, registered by set_keys (tracking = 0 before) */
    int tracking;
    uint8_t *lex_class; int32_t n_lex_class; /* per lexeme id: K_* bits */
    int32_t wide_min; /* objects of at least this many keys get wide key positions; -1 none */
    Box *boxes; Py_ssize_t n_boxes, cap_boxes;
    int32_t *kpool; Py_ssize_t n_kpool, cap_kpool; /* key sets: count, then ascending ids */
    ChildMap child; /* one-lexeme scans made (shared by Python's scans, the look-ahead and
                     * the boundary recursion: one column each) */
    ChildMap multi; /* scans of several lexemes: (column, hash of the set) -> a chain in ments */
    MultiEnt *ments; Py_ssize_t n_ments, cap_ments;
} Earley;


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

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
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

/* ---- the duplicate-key check (earley.py's EarleyParser._track_keys, its twin) ----------
 * Per column: the innermost open container of the text (a Box: object or array, the key
 * lexemes its object read so far, the one around it), whether the column is at a key
 * position, and the allowed lexemes after the check's filter (used keys dropped at key
 * positions; a `,` dropped where every key after it would be used). Derived in the scan
 * from the lexeme classes set_keys registered, exactly as _track_keys does, so that the
 * boundary recursion scans by itself on these grammars too, and Python reads a native
 * column's allowed/wide from here (both sides agree by construction). */

static inline uint64_t child_key(int32_t uid, int32_t lex) {
    return ((uint64_t)(uint32_t)uid << 32 | (uint32_t)lex) + 1;
}

static inline Py_ssize_t child_slot(uint64_t k, Py_ssize_t cap) {
    return (Py_ssize_t)((k * 0x9E3779B97F4A7C15ULL) >> 20) & (cap - 1);
}

static int child_get(const ChildMap *m, int32_t uid, int32_t lex, int32_t *out) {
    if (!m->cap) return 0;
    uint64_t k = child_key(uid, lex);
    for (Py_ssize_t i = child_slot(k, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (!m->k[i]) return 0;
        if (m->k[i] == k) { *out = m->v[i]; return 1; }
    }
}

static int child_put(ChildMap *m, int32_t uid, int32_t lex, int32_t v) { /* 0, or -1 memory */
    if (4 * (m->n + 1) > 3 * m->cap) { /* at most 3/4 full: one entry per scan made */
        Py_ssize_t cap = m->cap ? 2 * m->cap : 64;
        uint64_t *k = calloc(cap, sizeof(uint64_t));
        int32_t *vv = malloc(cap * sizeof(int32_t));
        if (!k || !vv) { free(k); free(vv); return -1; }
        for (Py_ssize_t i = 0; i < m->cap; i++) {
            if (!m->k[i]) continue;
            Py_ssize_t j = child_slot(m->k[i], cap);
            while (k[j]) j = (j + 1) & (cap - 1);
            k[j] = m->k[i], vv[j] = m->v[i];
        }
        free(m->k); free(m->v);
        m->k = k, m->v = vv, m->cap = cap;
    }
    uint64_t key = child_key(uid, lex);
    Py_ssize_t i = child_slot(key, m->cap);
    while (m->k[i] && m->k[i] != key) i = (i + 1) & (m->cap - 1);
    if (!m->k[i]) m->n++;
    m->k[i] = key, m->v[i] = v;
    return 0;
}

static inline int lex_class(const Earley *e, int32_t lex) {
    return lex >= 0 && lex < e->n_lex_class ? e->lex_class[lex] : 0;
}

/* a key set (ascending ids[0..n)) onto kpool: its offset, or -1 (memory) */
static int32_t kpool_add(Earley *e, const int32_t *ids, Py_ssize_t n) {
    if (e->n_kpool + n + 1 > e->cap_kpool) {
        Py_ssize_t cap = e->cap_kpool ? 2 * e->cap_kpool : 64;
        while (cap < e->n_kpool + n + 1) cap *= 2;
        if (cap > INT32_MAX) return -1;
        int32_t *v = realloc(e->kpool, cap * sizeof(int32_t));
        if (!v) return -1;
        e->kpool = v, e->cap_kpool = cap;
    }
    int32_t off = (int32_t)e->n_kpool;
    e->kpool[off] = (int32_t)n;
    memcpy(e->kpool + off + 1, ids, n * sizeof(int32_t));
    e->n_kpool += n + 1;
    return off;
}

static int kpool_has(const Earley *e, int32_t set, int32_t x) {
    const int32_t *v = e->kpool + set + 1;
    int32_t a = 0, b = e->kpool[set];
    while (a < b) {
        int32_t m = (a + b) / 2;
        if (v[m] < x) a = m + 1; else if (v[m] > x) b = m; else return 1;
    }
    return 0;
}

/* the union of key sets a (or -1: empty) and b: its offset, or -2 (memory) */
static int32_t kpool_union(Earley *e, int32_t a, int32_t b) {
    if (a < 0) return b;
    int32_t na = e->kpool[a], nb = e->kpool[b];
    int32_t *tmp = malloc((na + nb + 1) * sizeof(int32_t));
    if (!tmp) return -2;
    const int32_t *x = e->kpool + a + 1, *y = e->kpool + b + 1;
    int32_t i = 0, j = 0, k = 0;
    while (i < na || j < nb) {
        if (j == nb || (i < na && x[i] < y[j])) tmp[k++] = x[i++];
        else if (i == na || y[j] < x[i]) tmp[k++] = y[j++];
        else tmp[k++] = x[i++], j++;
    }
    int32_t off = kpool_add(e, tmp, k);
    free(tmp);
    return off < 0 ? -2 : off;
}

/* a new container: its index, or -2 (memory) */
static int32_t new_box(Earley *e, int is_object, int32_t keys, int32_t parent) {
    if (e->n_boxes == e->cap_boxes) {
        Py_ssize_t cap = e->cap_boxes ? 2 * e->cap_boxes : 16;
        if (cap > INT32_MAX) return -2;
        Box *b = realloc(e->boxes, cap * sizeof(Box));
        if (!b) return -2;
        e->boxes = b, e->cap_boxes = cap;
    }
    e->boxes[e->n_boxes] = (Box){parent, keys, (uint8_t)is_object};
    return (int32_t)e->n_boxes++;
}

/* The lexemes column uid allows (ascending, once each) into *out (malloc'ed): the
 * filtered list where the check filtered it, else its scannable symbols. Their count,
 * -1 on memory. */
static Py_ssize_t column_allowed(const Earley *e, int32_t uid, int32_t **out, int filtered) {
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

static int32_t earley_step(Earley *e, int32_t uid, const int32_t *lex, Py_ssize_t n);
static int32_t set_hash32(const int32_t *v, Py_ssize_t n);
static int multi_put(Earley *e, int32_t uid, int32_t h, int32_t head, const int32_t *v, Py_ssize_t n, int32_t child);

/* The kpool set equal to v[0..n) (ascending), added when new: its offset, or -2
 * (memory). Filtered allowed lists are kept once per content (the `multi` map under
 * column INT32_MAX, which no scan reaches). */
static int32_t intern_set(Earley *e, const int32_t *v, Py_ssize_t n) {
    int32_t h = set_hash32(v, n), head = -1;
    if (child_get(&e->multi, INT32_MAX, h, &head))
        for (int32_t i = head; i >= 0; i = e->ments[i].next) {
            const int32_t *w = e->kpool + e->ments[i].set;
            if (w[0] == n && !memcmp(w + 1, v, n * sizeof(int32_t))) return e->ments[i].set;
        }
    else head = -1;
    if (multi_put(e, INT32_MAX, h, head, v, n, -1)) return -2;
    return e->ments[e->n_ments - 1].set;
}

static int32_t set_hash32(const int32_t *v, Py_ssize_t n) {
    uint64_t h = 0x243F6A8885A308D3ULL;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ (uint32_t)v[i]) * 0x100000001B3ULL + (h >> 29);
    return (int32_t)(uint32_t)(h ^ (h >> 32));
}

/* Record the scan of set v[0..n) (ascending) from uid: child; head: the chain of entries
 * with the same (uid, hash), -1 none. 0, or -1 (memory). */
static int multi_put(Earley *e, int32_t uid, int32_t h, int32_t head, const int32_t *v, Py_ssize_t n, int32_t child) {
    if (e->n_ments == e->cap_ments) {
        Py_ssize_t cap = e->cap_ments ? 2 * e->cap_ments : 16;
        if (cap > INT32_MAX) return -1;
        MultiEnt *m = realloc(e->ments, cap * sizeof(MultiEnt));
        if (!m) return -1;
        e->ments = m, e->cap_ments = cap;
    }
    int32_t set = kpool_add(e, v, n);
    if (set < 0) return -1;
    e->ments[e->n_ments] = (MultiEnt){set, child, head};
    if (child_put(&e->multi, uid, h, (int32_t)e->n_ments)) return -1;
    e->n_ments++;
    return 0;
}

/* Column nx's `,` look-ahead (the non-key positions of an object with used keys): is
 * the column after `comma` a dead end (no column, or one that allows nothing but ignored
 * lexemes and does not accept: every key the grammar allows there is used)? 1 dead,
 * 0 not, -1 memory. */
static int comma_dead(Earley *e, int32_t nx, int32_t comma) {
    int32_t after = earley_step(e, nx, &comma, 1);
    if (after == -2) return -1;
    if (after == -1 && (lex_class(e, comma) & K_IGNORE)) after = nx; /* EarleyParser.scan's ignore rule */
    if (after < 0) return 1;
    if (e->cols[after].accepting) return 0;
    int32_t *v;
    Py_ssize_t n = column_allowed(e, after, &v, 1);
    if (n < 0) return -1;
    int dead = 1;
    for (Py_ssize_t i = 0; dead && i < n; i++) dead = (lex_class(e, v[i]) & K_IGNORE) != 0;
    free(v);
    return dead;
}

/* The check for column nx, just scanned from p over kept[0..nk) (EarleyParser._track_keys):
 * 0, or -1 (memory). */
static int earley_track(Earley *e, int32_t p, int32_t nx, const int32_t *kept, Py_ssize_t nk) {
    int cls = 0, n_read = 0;
    for (Py_ssize_t i = 0; i < nk; i++) {
        int k = lex_class(e, kept[i]);
        cls |= k;
        n_read += (k & K_KEY) != 0;
    }
    if (n_read) { /* the key lexemes read here, for the `:` that may follow */
        int32_t *ids = malloc(n_read * sizeof(int32_t));
        if (!ids) return -1;
        int32_t k = 0;
        for (Py_ssize_t i = 0; i < nk; i++) if (lex_class(e, kept[i]) & K_KEY) ids[k++] = kept[i];
        qsort(ids, k, sizeof(int32_t), cmp_i32);
        int32_t m = 0;
        for (int32_t i = 0; i < k; i++) if (!m || ids[i] != ids[m - 1]) ids[m++] = ids[i];
        int32_t off = kpool_add(e, ids, m);
        free(ids);
        if (off < 0) return -1;
        e->cols[nx].read = off;
    }
    int32_t box = e->cols[p].box;
    int at_key = 0;
    if (cls & K_OPEN_OBJECT) box = new_box(e, 1, -1, box), at_key = 1;
    else if (cls & K_OPEN_ARRAY) box = new_box(e, 0, -1, box);
    else if (cls & K_CLOSE) box = box >= 0 ? e->boxes[box].parent : -1;
    else if (cls & K_COMMA) at_key = box >= 0 && e->boxes[box].is_object;
    else if ((cls & K_COLON) && box >= 0 && e->boxes[box].is_object && e->cols[p].read >= 0) {
        int32_t keys = kpool_union(e, e->boxes[box].keys, e->cols[p].read);
        box = keys == -2 ? -2 : new_box(e, 1, keys, e->boxes[box].parent);
    }
    if (box == -2) return -1;
    e->cols[nx].box = box;
    e->cols[nx].at_key = (uint8_t)at_key;
    if (box < 0 || !e->boxes[box].is_object || e->boxes[box].keys < 0) return 0;
    int32_t used = e->boxes[box].keys, *v;
    Py_ssize_t n = column_allowed(e, nx, &v, 0), k = 0, n_keys = 0;
    if (n < 0) return -1;
    if (at_key) { /* the used keys dropped */
        for (Py_ssize_t i = 0; i < n; i++) {
            n_keys += (lex_class(e, v[i]) & K_KEY) != 0;
            if (!kpool_has(e, used, v[i])) v[k++] = v[i];
        }
        e->cols[nx].wide = k < n && e->wide_min >= 0 && n_keys >= e->wide_min;
    } else { /* a `,` after which every key is used dropped */
        for (Py_ssize_t i = 0; i < n; i++) {
            int dead = (lex_class(e, v[i]) & K_COMMA) ? comma_dead(e, nx, v[i]) : 0;
            if (dead < 0) { free(v); return -1; }
            if (!dead) v[k++] = v[i];
        }
    }
    int32_t off = k == n ? -1 : intern_set(e, v, k);
    free(v);
    if (off == -2) return -1;
    e->cols[nx].allowed = off;
    return 0;
}

/* The column after one span read as any of lex[0..n) from column uid (valid), with the
 * duplicate-key check where registered: a wide key position refuses its used keys
 * (EarleyParser.scan), the new column is tracked. One-lexeme scans are made once. Its
 * uid, -1 when no item scans them, -2 on memory. */
static int32_t earley_step(Earley *e, int32_t uid, const int32_t *lex, Py_ssize_t n) {
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

static PyObject *int_list(const int32_t *v, Py_ssize_t n) {
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

/* Mark the lexemes of sequence `seq` with class bit k. 0, or -1 with an error set. */
static int mark_class(Earley *e, PyObject *obj, int k) {
    PyObject *seq = PySequence_Fast(obj, "set_keys: lexeme ids must be a sequence");
    if (!seq) return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (x == -1 && PyErr_Occurred()) { Py_DECREF(seq); return -1; }
        if (x < 0 || x >= (1 << 24)) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "set_keys: bad lexeme id");
            return -1;
        }
        if (x >= e->n_lex_class) {
            int32_t cap = e->n_lex_class ? e->n_lex_class : 64;
            while (cap <= x) cap *= 2;
            uint8_t *c = realloc(e->lex_class, cap);
            if (!c) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
            memset(c + e->n_lex_class, 0, cap - e->n_lex_class);
            e->lex_class = c, e->n_lex_class = cap;
        }
        e->lex_class[x] |= (uint8_t)k;
    }
    Py_DECREF(seq);
    return 0;
}

/* set_keys(open_object, open_array, close, comma, colon, keys, ignore, wide_min): turn the
 * duplicate-key check on (before the first scan), with the lexeme classes of
 * ParserTables.unique_keys and the parser's ignored lexemes */
static PyObject *earley_set_keys(Earley *e, PyObject *args) {
    PyObject *cls[7];
    int wide_min;
    if (!PyArg_ParseTuple(args, "OOOOOOOi", cls, cls + 1, cls + 2, cls + 3, cls + 4, cls + 5, cls + 6, &wide_min))
        return NULL;
    if (e->n_cols > 1) {
        PyErr_SetString(PyExc_ValueError, "set_keys: columns were scanned already");
        return NULL;
    }
    static const int bits[7] = {K_OPEN_OBJECT, K_OPEN_ARRAY, K_CLOSE, K_COMMA, K_COLON, K_KEY, K_IGNORE};
    for (int i = 0; i < 7; i++)
        if (mark_class(e, cls[i], bits[i])) return NULL;
    e->tracking = 1;
    e->wide_min = wide_min;
    Py_RETURN_NONE;
}

/* set_wide_min(n): objects of at least n keys (n >= 0) get wide key positions; -1 none */
static PyObject *earley_set_wide_min(Earley *e, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    e->wide_min = n < 0 ? -1 : (int32_t)(n > INT32_MAX ? INT32_MAX : n);
    Py_RETURN_NONE;
}

/* keys_of(uid) -> None outside containers, else (is an object, its keys read (ascending),
 * at a key position): the check's state of a column (for tests) */
static PyObject *earley_keys_of(Earley *e, PyObject *arg) {
    long uid = PyLong_AsLong(arg);
    if (uid == -1 && PyErr_Occurred()) return NULL;
    if (uid < 0 || uid >= e->n_cols) {
        PyErr_SetString(PyExc_IndexError, "Earley.keys_of: unknown column");
        return NULL;
    }
    const Column *c = e->cols + uid;
    if (c->box < 0) Py_RETURN_NONE;
    const Box *b = e->boxes + c->box;
    PyObject *keys = b->keys < 0 ? PyList_New(0) : int_list(e->kpool + b->keys + 1, e->kpool[b->keys]);
    if (!keys) return NULL;
    return Py_BuildValue("(ONO)", b->is_object ? Py_True : Py_False, keys, c->at_key ? Py_True : Py_False);
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
