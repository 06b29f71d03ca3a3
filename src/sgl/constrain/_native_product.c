/* The lexer's product DFA over k lexeme DFAs, built lazily, row by row (twin of
 * lexer.LexerCore), and the per-state facts the trie walk (_native.c) uses to take whole
 * subtrees at once: loops (a string body) and steps (a counting maxLength string). */
#include "_native_product.h" /* first: it includes Python.h */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------
 * Product: the lexer's product DFA over k lexeme DFAs, built lazily, row by row.
 *
 * The components are Dfa objects (one lexeme's table, checked once, shared by every
 * product that contains the lexeme: building a product copies nothing). A
 * product state is the vector of its components' states (-1 = that component is dead);
 * a hash table maps vectors to ids. A state gets an id when a built row first leads to
 * it; its own row is built on first use, by the walks (walk_trie in _native.c: inline,
 * no round trip to Python) or by `expand`. A product of one lexeme is its DFA (direct).
 * ------------------------------------------------------------------------------------ */

static void Dfa_dealloc(Dfa *d) {
    if (d->weakreflist) PyObject_ClearWeakRefs((PyObject *)d);
    if (d->held.obj) PyBuffer_Release(&d->held);
    else free((void *)d->table);
    free(d->accepting);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

/* Dfa(table int32[n*256], accepting u8[n]): every target checked to be -1 or a state.
 * A read-only table is kept and used in place (a large maxLength string's table is
 * megabytes: copying it into fresh pages cost more than the walks); a writable one is
 * copied, so that no later write can break what was checked. */
static PyObject *Dfa_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Py_buffer tb, ab;
    if (!PyArg_ParseTuple(args, "y*y*", &tb, &ab)) return NULL;
    Dfa *d = NULL;
    int keep = 0;
    Py_ssize_t n = ab.len;
    if (n < 1 || n >= INT32_MAX / 256 || tb.len != n * 256 * 4) {
        PyErr_SetString(PyExc_ValueError, "Dfa: inconsistent arrays");
        goto done;
    }
    {
        /* a min/max reduction (vectorised): megabytes of table checked in well under a ms */
        const int32_t *v = tb.buf;
        int32_t lo = -1, hi = -1;
        for (Py_ssize_t i = 0; i < n * 256; i++) {
            lo = v[i] < lo ? v[i] : lo;
            hi = v[i] > hi ? v[i] : hi;
        }
        if (lo < -1 || hi >= n) { PyErr_SetString(PyExc_ValueError, "Dfa: bad target"); goto done; }
    }
    d = (Dfa *)type->tp_alloc(type, 0);
    if (!d) goto done;
    d->n = (int32_t)n;
    keep = tb.readonly;
    int32_t *copy = keep ? NULL : malloc(tb.len);
    d->accepting = malloc(n);
    if ((!keep && !copy) || !d->accepting) {
        free(copy);
        Py_DECREF(d);
        d = NULL;
        PyErr_NoMemory();
        goto done;
    }
    if (keep) {
        d->held = tb; /* released by Dfa_dealloc */
        d->table = tb.buf;
    } else {
        memcpy(copy, tb.buf, tb.len);
        d->table = copy;
    }
    for (Py_ssize_t i = 0; i < n; i++) d->accepting[i] = ((uint8_t *)ab.buf)[i] != 0;
done:
    if (!keep) PyBuffer_Release(&tb);
    PyBuffer_Release(&ab);
    return (PyObject *)d;
}

static PyObject *Dfa_n_states(Dfa *d, void *unused) { return PyLong_FromLong(d->n); }

static PyGetSetDef Dfa_getset[] = {
    {"n_states", (getter)Dfa_n_states, NULL, "states", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject DfaType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sgl.constrain._native.Dfa",
    .tp_basicsize = sizeof(Dfa),
    .tp_dealloc = (destructor)Dfa_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One lexeme's DFA, checked once, shared by products.",
    .tp_getset = Dfa_getset,
    .tp_weaklistoffset = offsetof(Dfa, weakreflist),
    .tp_new = Dfa_new,
};


/* A vector's hash sums a mix of each live (position, state) pair, dead ones adding
 * nothing: a row build that knows which positions are live hashes only those. */
static inline uint64_t pair_mix(int32_t j, int32_t v) {
    uint64_t x = ((uint64_t)(uint32_t)j << 32 | (uint32_t)v) * 0x9E3779B97F4A7C15ULL;
    return x ^ (x >> 31);
}

static inline uint64_t hash_finish(uint64_t h) { return h * 0xBF58476D1CE4E5B9ULL ^ (h >> 27); }

static uint64_t comp_hash(const int32_t *c, int32_t k) {
    uint64_t h = 0;
    for (int32_t j = 0; j < k; j++)
        if (c[j] >= 0) h += pair_mix(j, c[j]);
    return hash_finish(h);
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
static int32_t product_intern_h(Product *p, const int32_t *c, uint64_t hv);

static int32_t product_intern(Product *p, const int32_t *c) {
    if (p->direct) return c[0] >= 0 ? c[0] : -1;
    int32_t live = 0;
    for (int32_t j = 0; j < p->k; j++) live |= (c[j] >= 0);
    if (!live) return -1;
    return product_intern_h(p, c, comp_hash(c, p->k));
}

/* product_intern with the vector known live and its hash known */
static int32_t product_intern_h(Product *p, const int32_t *c, uint64_t hv) {
    int32_t k = p->k;
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
        Count *cnt = realloc(p->cnt, cap * sizeof(Count));
        if (cnt) p->cnt = cnt;
        if (!comps || !table || !acc || !built || !loops || !cnt) return -3;
        p->cap = cap;
    }
    int32_t s = (int32_t)p->n++;
    memcpy(p->comps + (Py_ssize_t)s * k, c, k * sizeof(int32_t));
    uint8_t acc = 0;
    for (int32_t j = 0; j < k; j++) acc |= c[j] >= 0 && p->dfas[j]->accepting[c[j]];
    p->accepting[s] = acc;
    p->built[s] = 0;
    for (int b = 0; b < 256; b++) p->table[(Py_ssize_t)s * 256 + b] = UNKNOWN;
    p->slots[h] = s;
    if (2 * p->n > p->n_slots && product_rehash(p, p->n_slots * 2)) return -3;
    return s;
}

static int product_fill_row(Product *p, int32_t s);
static int product_loop_facts(Product *p, int32_t s);

/* The state after byte b from s (s's row built first): >= -1, or -2/-3 as product_build. */
static int32_t product_step(Product *p, int32_t s, int b) {
    if (!p->built[s]) {
        int code = product_build(p, s);
        if (code) return code;
    }
    return p->table[(Py_ssize_t)s * 256 + b];
}

/* Do all continuation bytes 80..BF lead from s into `to` (to_n ids)? 1 yes, 0 no, <0 error */
static int conts_lead_to(Product *p, int32_t s, int lo, int hi, const int32_t *to, int to_n) {
    if (s < 0) return 0;
    for (int c = lo; c <= hi; c++) {
        int32_t t = product_step(p, s, c);
        if (t < -1) return t;
        int found = 0;
        for (int i = 0; i < to_n; i++) found |= t == to[i];
        if (!found) return 0;
    }
    return 1;
}

/* Does every well-formed UTF-8 character of 2 to 4 bytes lead from s to `target`? With
 * target s (a loop), a walk takes a subtree of well-formed UTF-8 whose ASCII bytes loop
 * on s at once, as the inside of a JSON string; with another target, s counts characters
 * (see product_count). 1 yes, 0 no, <0 error. Builds the rows on the way. */
static int product_utf8_leads(Product *p, int32_t s, int32_t target) {
    int32_t one[8], two[8]; /* states that reach target after 1 (2) more continuation bytes */
    int n_one = 0, n_two = 0;
    for (int b = 0xC2; b <= 0xF4; b++) {
        int32_t t = product_step(p, s, b);
        if (t < -1) return t;
        if (t < 0) return 0;
        int lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80;
        int hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
        int need = b < 0xE0 ? 1 : b < 0xF0 ? 2 : 3; /* continuation bytes after b */
        int32_t *set = need == 1 ? NULL : need == 2 ? one : two;
        int *set_n = need == 2 ? &n_one : &n_two;
        if (need == 1) {
            int r = conts_lead_to(p, t, lo, hi, &target, 1);
            if (r <= 0) return r;
            continue;
        }
        /* t's continuations lead to states that must each be in `set` (verified on entry) */
        for (int c = lo; c <= hi; c++) {
            int32_t t2 = product_step(p, t, c);
            if (t2 < -1) return t2;
            if (t2 < 0) return 0;
            int known = 0;
            for (int i = 0; i < *set_n; i++) known |= set[i] == t2;
            if (known) continue;
            if (*set_n == 8) return 0;
            int r = need == 2 ? conts_lead_to(p, t2, 0x80, 0xBF, &target, 1) : conts_lead_to(p, t2, 0x80, 0xBF, one, n_one);
            if (r <= 0 && need == 3 && r == 0) {
                /* t2's continuations may reach states not verified yet: verify them first */
                for (int c2 = 0x80; c2 <= 0xBF; c2++) {
                    int32_t t3 = product_step(p, t2, c2);
                    if (t3 < -1) return t3;
                    int k2 = 0;
                    for (int i = 0; i < n_one; i++) k2 |= one[i] == t3;
                    if (k2) continue;
                    if (n_one == 8) return 0;
                    int r3 = conts_lead_to(p, t3, 0x80, 0xBF, &target, 1);
                    if (r3 <= 0) return r3;
                    one[n_one++] = t3;
                }
                r = 1;
            }
            if (r <= 0) return r;
            set[(*set_n)++] = t2;
        }
    }
    return 1;
}

/* Build the row of state s: 0, or -2 (budget) / -3 (memory). */
int product_build(Product *p, int32_t s) {
    if (p->built[s]) return 0;
    memset(p->cnt + s, 0, sizeof(Count)); /* valid from now on (see Count) */
    p->cnt[s].chain[0].at = p->cnt[s].chain[1].at = s;
    if (!p->direct) {
        int code = product_fill_row(p, s);
        if (code) return code;
    }
    return product_loop_facts(p, s);
}

/* The row of s (not direct): each byte's target vector, interned. 0, or -2 / -3. */
static int product_fill_row(Product *p, int32_t s) {
    /* Only the live components move (dead ones stay dead): iterate over those. */
    int32_t k = p->k, *c = p->scratch, *live = p->scratch + k, n_live = 0;
    const int32_t *src0 = p->comps + (Py_ssize_t)s * k;
    for (int32_t j = 0; j < k; j++) {
        c[j] = -1;
        if (src0[j] >= 0) live[n_live++] = j;
    }
    int32_t prev_t = -1;
    for (int b = 0; b < 256; b++) {
        const int32_t *src = p->comps + (Py_ssize_t)s * k; /* intern may move comps */
        uint64_t h = 0;
        int any = 0, same = b > 0;
        for (int32_t i = 0; i < n_live; i++) {
            int32_t j = live[i];
            const int32_t *row = p->dfas[j]->table + (Py_ssize_t)src[j] * 256;
            int32_t v = row[b];
            c[j] = v;
            same &= b > 0 && v == row[b - 1];
            if (v >= 0) h += pair_mix(j, v), any = 1;
        }
        /* bytes of one class (letters, digits...) lead every component alike: the same
         * target as the byte before, without hashing and comparing the vector again */
        int32_t t = same ? prev_t : any ? product_intern_h(p, c, hash_finish(h)) : -1;
        prev_t = t;
        for (int32_t i = 0; i < n_live; i++) c[live[i]] = -1;
        if (t < -1) return t;
        p->table[(Py_ssize_t)s * 256 + b] = t; /* after intern: it may move p->table */
    }
    return 0;
}

/* Which bytes s loops on, and whether every UTF-8 character does too (built[s] 1-3). */
static int product_loop_facts(Product *p, int32_t s) {
    /* A state that loops on most bytes (a string body) lets a walk take whole subtrees
     * made only of those bytes at once (see walk_trie). */
    uint64_t *lp = p->loops + (Py_ssize_t)s * 4;
    int n_loop = 0;
    lp[0] = lp[1] = lp[2] = lp[3] = 0;
    for (int b = 0; b < 256; b++)
        if (p->table[(Py_ssize_t)s * 256 + b] == s) lp[b >> 6] |= (uint64_t)1 << (b & 63), n_loop++;
    p->built[s] = n_loop >= 64 ? 2 : 1;
    if (n_loop >= 64 && !p->in_utf8_check) {
        p->in_utf8_check = 1;
        int u = product_utf8_leads(p, s, s);
        p->in_utf8_check = 0;
        if (u < 0) return u;
        if (u) p->built[s] = 3;
    }
    return 0;
}

/* Fill s's step facts (cnt[s]: do most ASCII bytes that do not loop lead to one state?).
 * 0, or <0 as product_build. */
int product_step_info(Product *p, int32_t s) {
    int code = product_build(p, s); /* first: cnt[s] is valid once s is built */
    if (code) return code;
    if (p->cnt[s].step_kind) return 0;
    const int32_t *row = p->table + (Py_ssize_t)s * 256;
    int32_t cand[8];
    int votes[8], n_cand = 0, best = -1;
    for (int b = 0; b < 128; b++) {
        int32_t t = row[b];
        if (t < 0 || t == s) continue;
        int c = 0;
        while (c < n_cand && cand[c] != t) c++;
        if (c == n_cand) {
            if (n_cand == 8) continue;
            cand[n_cand] = t, votes[n_cand++] = 0;
        }
        if (++votes[c] >= MIN_STEP_BYTES && (best < 0 || votes[c] > votes[best])) best = c;
    }
    Count *c = p->cnt + s;
    c->step_kind = 1;
    if (best >= 0) {
        c->step_to = cand[best];
        c->set[0] = c->set[1] = 0;
        for (int b = 0; b < 128; b++)
            if (row[b] == c->step_to) c->set[b >> 6] |= (uint64_t)1 << (b & 63);
        c->step_kind = 2;
    }
    return 0;
}

/* cnt[s].utf8 (s steps): does every UTF-8 character of 2-4 bytes lead to step_to too?
 * Checked only when a walk meets non-ASCII bytes there (it builds a dozen rows). */
static int product_step_utf8(Product *p, int32_t s) {
    if (p->cnt[s].utf8) return 0;
    int saved = p->in_utf8_check;
    p->in_utf8_check = 1; /* rows built for the check get no check of their own */
    int u = product_utf8_leads(p, s, p->cnt[s].step_to);
    p->in_utf8_check = saved;
    if (u < 0) return u;
    p->cnt[s].utf8 = u ? 2 : 1; /* after the check: it may have moved cnt */
    return 0;
}

/* Can m characters of s's step class (its ASCII step bytes, and with `utf` every UTF-8
 * character) be read from s, one after the other, without dying? Each moves to the next
 * state of a chain that must step on the same class (a maxLength string's states: n
 * chars left), or may end in a state that loops on it. Then a walk takes at once a
 * subtree whose tokens are all at most m such characters. 1 yes, 0 no, <0 error. The
 * chain is followed as far as asked and remembered per state. s must step (step_kind 2). */
int product_count(Product *p, int32_t s, int m, int utf) {
    Chain *ch = p->cnt[s].chain + utf;
    if (ch->len >= m || ch->done == 2) return 1;
    if (ch->done == 1) return 0;
    uint64_t a0 = p->cnt[s].set[0], a1 = p->cnt[s].set[1];
    int32_t q = ch->at, len = ch->len;
    int done = 0, code = 0;
    while (len < m) {
        if ((code = product_step_info(p, q))) return code;
        if (p->built[q] >= 2) { /* a loop that reads the whole class: no limit from here */
            const uint64_t *lp = p->loops + (Py_ssize_t)q * 4;
            if (!(a0 & ~lp[0]) && !(a1 & ~lp[1]) && (!utf || p->built[q] == 3)) {
                done = 2;
                break;
            }
        }
        const Count *cq = p->cnt + q;
        if (cq->step_kind != 2 || (a0 & ~cq->set[0]) || (a1 & ~cq->set[1])) {
            done = 1;
            break;
        }
        if (utf) {
            if ((code = product_step_utf8(p, q))) return code;
            if (p->cnt[q].utf8 != 2) {
                done = 1;
                break;
            }
        }
        q = p->cnt[q].step_to;
        len++;
    }
    ch = p->cnt[s].chain + utf; /* the steps may have moved cnt */
    ch->len = len, ch->at = q, ch->done = (uint8_t)done;
    return len >= m || done == 2;
}

int product_error(int code) {
    if (code == -2) PyErr_SetString(PyExc_OverflowError, "lexer state budget exceeded");
    else PyErr_NoMemory();
    return -1;
}

/* Lock a product without ever waiting for it while holding the GIL (a walker holds the
 * lock with the GIL released, and needs the GIL back before it lets go). */
void product_lock(Product *p) {
    if (!PyThread_acquire_lock(p->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(p->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

static void Product_dealloc(Product *p) {
    if (!p->direct) free(p->table); /* a direct product reads its Dfa's table */
    Py_XDECREF(p->dfa_tuple); free(p->dfas); free(p->comps); free(p->accepting);
    free(p->built); free(p->loops); free(p->cnt); free(p->slots); free(p->scratch);
    if (p->lock) PyThread_free_lock(p->lock);
    Py_TYPE(p)->tp_free((PyObject *)p);
}


/* Product(dfas tuple of Dfa, max_states): starts in every component's state 0 */
static PyObject *Product_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *tup;
    Py_ssize_t max_states;
    if (!PyArg_ParseTuple(args, "O!n", &PyTuple_Type, &tup, &max_states)) return NULL;
    Py_ssize_t k = PyTuple_GET_SIZE(tup);
    if (k < 1 || k > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "Product: expected 1 or more Dfa");
        return NULL;
    }
    for (Py_ssize_t j = 0; j < k; j++)
        if (!PyObject_TypeCheck(PyTuple_GET_ITEM(tup, j), &DfaType)) {
            PyErr_SetString(PyExc_TypeError, "Product: components must be Dfa objects");
            return NULL;
        }
    Product *p = (Product *)type->tp_alloc(type, 0);
    if (!p) return NULL;
    Py_INCREF(tup);
    p->dfa_tuple = tup;
    p->k = (int32_t)k;
    p->cap = 16;
    p->max_states = max_states;
    /* One lexeme within the budget: its DFA is the product, every state has its id and
     * its row already (first walks of a maxLength string built ~1,000 rows, ~2 us each);
     * only the per-state facts (loops, steps) are computed as walks reach them. */
    Dfa *d0 = (Dfa *)PyTuple_GET_ITEM(tup, 0);
    if (k == 1 && d0->n <= max_states) {
        p->direct = 1;
        p->cap = d0->n;
        p->table = (int32_t *)d0->table; /* never written: product_build fills no row */
    }
    p->dfas = malloc(k * sizeof(Dfa *));
    p->comps = malloc(p->cap * k * sizeof(int32_t));
    if (!p->direct) p->table = malloc(p->cap * 256 * sizeof(int32_t));
    p->accepting = malloc(p->cap);
    p->built = malloc(p->cap);
    p->loops = malloc(p->cap * 4 * sizeof(uint64_t));
    p->cnt = malloc(p->cap * sizeof(Count));
    p->scratch = malloc(2 * k * sizeof(int32_t)); /* a vector, then the live positions */
    p->lock = PyThread_allocate_lock();
    if (!p->dfas || !p->comps || !p->table || !p->accepting || !p->built || !p->loops || !p->cnt || !p->scratch ||
        !p->lock || product_rehash(p, 64)) {
        Py_DECREF(p);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        p->dfas[j] = (Dfa *)PyTuple_GET_ITEM(tup, j);
        p->scratch[j] = 0;
    }
    if (p->direct) {
        p->n = p->cap;
        for (Py_ssize_t s = 0; s < p->n; s++) p->comps[s] = (int32_t)s;
        memcpy(p->accepting, d0->accepting, p->n);
        memset(p->built, 0, p->n);
    } else if (product_intern(p, p->scratch) != 0) {
        Py_DECREF(p);
        return PyErr_NoMemory();
    }
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

/* run(state, data, start) -> (i, s): data[start:] read from `state` (rows built as
 * needed), stopping before the first byte with no way on: `i` is that byte's index
 * (len(data) if every byte was read) and `s` the state before it. The byte loop of
 * advancing a matcher by a token, without a Python row per state (each row kept as a
 * list of 256 ints was ~2.7 KB, the largest item of a long-running process's memory). */
static PyObject *Product_run(Product *p, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "run(state, data, start)");
        return NULL;
    }
    Py_ssize_t s = PyLong_AsSsize_t(args[0]);
    if (s == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t i = PyLong_AsSsize_t(args[2]);
    if (i == -1 && PyErr_Occurred()) return NULL;
    Py_buffer data;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE)) return NULL;
    const uint8_t *bytes = data.buf;
    int code = 0;
    if (i < 0) i = 0;
    product_lock(p);
    if (product_check_state(p, s)) code = 1;
    for (; !code && i < data.len; i++) {
        int32_t t = product_step(p, (int32_t)s, bytes[i]);
        if (t < -1) code = t;
        else if (t == -1) break;
        else s = t;
    }
    PyThread_release_lock(p->lock);
    PyBuffer_Release(&data);
    if (code) {
        if (code < 0) product_error(code);
        return NULL;
    }
    return Py_BuildValue("(nn)", i, s);
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

/* comp(state) -> each component's state (-1 dead), int32 bytes */
static PyObject *Product_comp(Product *p, PyObject *arg) {
    Py_ssize_t s = PyLong_AsSsize_t(arg);
    if (s == -1 && PyErr_Occurred()) return NULL;
    product_lock(p); /* a walk on another thread may be growing the arrays */
    PyObject *res = product_check_state(p, s) ? NULL
        : PyBytes_FromStringAndSize((char *)(p->comps + s * p->k), p->k * sizeof(int32_t));
    PyThread_release_lock(p->lock);
    return res;
}

/* intern(comp int32 bytes: each component's state, -1 dead) -> the id of that product
 * state (registered if new; -1 if all dead) */
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
            if (v < -1 || v >= p->dfas[j]->n) bad = 1;
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
    {"run", (PyCFunction)(void (*)(void))Product_run, METH_FASTCALL,
     "run(state, data, start) -> (i, s): bytes read from state until one has no way on."},
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

PyTypeObject ProductType = {
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
