/* Shared by the Earley parser's C files: the parser's columns and closure
 * (_native_earley.c) and the duplicate-key check its scans run (_native_earley_keys.c). */
#ifndef SGL_NATIVE_EARLEY_H
#define SGL_NATIVE_EARLEY_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

static inline int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* the maps of scans made (Earley.child, Earley.multi): see _native_earley_keys.c */
static inline uint64_t child_key(int32_t uid, int32_t lex) {
    return ((uint64_t)(uint32_t)uid << 32 | (uint32_t)lex) + 1;
}

static inline Py_ssize_t child_slot(uint64_t k, Py_ssize_t cap) {
    return (Py_ssize_t)((k * 0x9E3779B97F4A7C15ULL) >> 20) & (cap - 1);
}

static inline int child_get(const ChildMap *m, int32_t uid, int32_t lex, int32_t *out) {
    if (!m->cap) return 0;
    uint64_t k = child_key(uid, lex);
    for (Py_ssize_t i = child_slot(k, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (!m->k[i]) return 0;
        if (m->k[i] == k) { *out = m->v[i]; return 1; }
    }
}

static inline int lex_class(const Earley *e, int32_t lex) {
    return lex >= 0 && lex < e->n_lex_class ? e->lex_class[lex] : 0;
}

static inline int kpool_has(const Earley *e, int32_t set, int32_t x) {
    const int32_t *v = e->kpool + set + 1;
    int32_t a = 0, b = e->kpool[set];
    while (a < b) {
        int32_t m = (a + b) / 2;
        if (v[m] < x) a = m + 1; else if (v[m] > x) b = m; else return 1;
    }
    return 0;
}

/* In _native_earley.c: the parser. */
Py_ssize_t column_allowed(const Earley *e, int32_t uid, int32_t **out, int filtered);
int32_t earley_step(Earley *e, int32_t uid, const int32_t *lex, Py_ssize_t n);
PyObject *int_list(const int32_t *v, Py_ssize_t n);

/* In _native_earley_keys.c: the duplicate-key check and the maps of scans made. */
int child_put(ChildMap *m, int32_t uid, int32_t lex, int32_t v);
int32_t set_hash32(const int32_t *v, Py_ssize_t n);
int multi_put(Earley *e, int32_t uid, int32_t h, int32_t head, const int32_t *v, Py_ssize_t n, int32_t child);
int earley_track(Earley *e, int32_t p, int32_t nx, const int32_t *kept, Py_ssize_t nk);
PyObject *earley_set_keys(Earley *e, PyObject *args);
PyObject *earley_set_wide_min(Earley *e, PyObject *arg);
PyObject *earley_keys_of(Earley *e, PyObject *arg);

#endif
