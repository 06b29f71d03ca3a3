/* Shared by the boundary recursion's C files: the Boundaries object and its tables
 * (_native_boundary.c: the type, what Python registers), read by the recursion and the
 * sub-walks it makes (_native_boundary_run.c). */
#ifndef SGL_NATIVE_BOUNDARY_H
#define SGL_NATIVE_BOUNDARY_H
#include "_native_walk.h" /* first: it includes Python.h */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

static inline int map_get(const Map3 *m, int32_t a, int32_t b, int32_t c, int32_t *v) {
    if (!m->cap) return 0;
    for (Py_ssize_t i = map_slot(a, b, c, m->cap);; i = (i + 1) & (m->cap - 1)) {
        const Ent *x = m->e + i;
        if (x->a == INT32_MIN) return 0;
        if (x->a == a && x->b == b && x->c == c) { *v = x->v; return 1; }
    }
}

int map_put(Map3 *m, int32_t a, int32_t b, int32_t c, int32_t v);

typedef struct { int32_t *v; Py_ssize_t n, cap; } Pool;

int pool_push(Pool *p, int32_t x);

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

static inline int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static inline LexInfo *lex_info(const Boundaries *r, int32_t L) {
    if (L >= FILTERED_BASE) return L - FILTERED_BASE < r->n_flex ? r->flex + (L - FILTERED_BASE) : NULL;
    return L >= 0 && L < r->n_lex ? r->lex + L : NULL;
}

/* In _native_boundary.c: the tables Python fills (and the recursion grows). */
void walk_release(Walk *w);
int walks_room(Boundaries *r);
int32_t set_lexer(const Boundaries *r, const int32_t *v, Py_ssize_t n);
int sets_add(Boundaries *r, const int32_t *v, Py_ssize_t n, int32_t L);

/* In _native_boundary_run.c: the recursion, the sub-walks made here. */
int group_walk(Boundaries *r, Walk *w, int32_t L, const int64_t *nodes, const int64_t *states, Py_ssize_t n);
int put_column_lexer(Boundaries *r, int32_t col, int32_t L);
PyObject *int_tuple(const int32_t *v, Py_ssize_t n);
PyObject *Boundaries_run(Boundaries *r, PyObject *args);

#endif
