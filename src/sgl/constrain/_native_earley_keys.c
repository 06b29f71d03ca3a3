/* Part of the _native extension (see _native.c): the Earley parser's duplicate-key check
 * (the twin of earley.py's EarleyParser._track_keys) and the maps of the scans made;
 * the parser's columns and closure are in _native_earley.c. */
#include "_native_earley.h" /* first: it includes Python.h */

/* ---- the duplicate-key check (earley.py's EarleyParser._track_keys, its twin) ----------
 * Per column: the innermost open container of the text (a Box: object or array, the key
 * lexemes its object read so far, the one around it), whether the column is at a key
 * position, and the allowed lexemes after the check's filter (used keys dropped at key
 * positions; a `,` dropped where every key after it would be used). Derived in the scan
 * from the lexeme classes set_keys registered, exactly as _track_keys does, so that the
 * boundary recursion scans by itself on these grammars too, and Python reads a native
 * column's allowed/wide from here (both sides agree by construction). */

int child_put(ChildMap *m, int32_t uid, int32_t lex, int32_t v) { /* 0, or -1 memory */
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

int32_t set_hash32(const int32_t *v, Py_ssize_t n) {
    uint64_t h = 0x243F6A8885A308D3ULL;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ (uint32_t)v[i]) * 0x100000001B3ULL + (h >> 29);
    return (int32_t)(uint32_t)(h ^ (h >> 32));
}

/* Record the scan of set v[0..n) (ascending) from uid: child; head: the chain of entries
 * with the same (uid, hash), -1 none. 0, or -1 (memory). */
int multi_put(Earley *e, int32_t uid, int32_t h, int32_t head, const int32_t *v, Py_ssize_t n, int32_t child) {
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
int earley_track(Earley *e, int32_t p, int32_t nx, const int32_t *kept, Py_ssize_t nk) {
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
PyObject *earley_set_keys(Earley *e, PyObject *args) {
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
PyObject *earley_set_wide_min(Earley *e, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    e->wide_min = n < 0 ? -1 : (int32_t)(n > INT32_MAX ? INT32_MAX : n);
    Py_RETURN_NONE;
}

/* keys_of(uid) -> None outside containers, else (is an object, its keys read (ascending),
 * at a key position): the check's state of a column (for tests) */
PyObject *earley_keys_of(Earley *e, PyObject *arg) {
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
