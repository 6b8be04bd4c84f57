/* C kernels of the YouTube-VIS scorer's fast path (avis score): see avis/evaluation/rle_c.py.
 *
 * Plain CPython C API, no NumPy headers: arrays travel through the buffer protocol (C-contiguous), and the
 * Python wrapper checks their dtypes and sizes before calling. The kernels are line-for-line ports of the numba
 * kernels of avis/evaluation/rle_kernels.py (pycocotools' rleFrString decoding, the official matching and
 * accumulation arithmetic), so areas, intersections and floats are the same; tests/test_score_fast.py compares
 * them. Input bytes from files (scan_segmentations, decode) are bounds-checked: anything unexpected makes the
 * scanner answer "not certain" (the caller then takes the general path, which names the problem) and the
 * decoder stop at its buffer ends.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    Py_buffer view;
    int held;
} Buf;

/* The buffer of ``obj`` (C-contiguous; writable when asked) holding at least ``n`` items of ``itemsize``. */
static int get_buf(PyObject *obj, Buf *b, Py_ssize_t itemsize, Py_ssize_t n, int writable, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    b->held = 0;
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0) return -1;
    b->held = 1;
    if (n < 0 || b->view.len < n * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: buffer too small (%zd bytes for %zd items of %zd)", name, b->view.len,
                     n, itemsize);
        return -1;
    }
    return 0;
}

static void release(Buf *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].held) PyBuffer_Release(&bufs[i].view);
}

/* ------------------------------------------------------------------------------------------------ scanner */
/* One results entry's "segmentations" value (JSON text [p, end)): exactly ``T`` elements, each null or an
 * object with exactly the keys "size" ([h, w], plain non-negative integers equal to the video's) and "counts"
 * (a string of pycocotools' characters '0'..'o', the backslash written as the JSON escape "\\"), in either
 * order. The counts are copied unescaped to ``out`` (at *used, at most ``cap``), their offsets to ``offsets``
 * and the mask number (or -1 for null) of each frame to ``frame_mask``. Returns 0, or -1 for anything else.
 * ``out`` may be the buffer that holds the texts (compaction in place): every write lands at or before the
 * byte being read, and the caller checks that no text starts before what was written. */
static inline const char *ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

static const char *read_uint(const char *p, const char *end, int64_t *v) {
    int64_t x = 0;
    const char *s = p;
    while (p < end && *p >= '0' && *p <= '9') {
        if (p - s >= 12) return NULL; /* beyond any frame size we accept */
        x = x * 10 + (*p - '0');
        p++;
    }
    if (p == s || (*s == '0' && p - s > 1)) return NULL;
    *v = x;
    return p;
}

static int scan_one(const char *p, const char *end, int64_t T, int64_t h, int64_t w, char *out, int64_t cap,
                    int64_t *used, int64_t *offsets, int64_t max_masks, int64_t *n_masks, int64_t *frame_mask) {
    p = ws(p, end);
    if (p >= end || *p != '[') return -1;
    p = ws(p + 1, end);
    int64_t t = 0;
    if (p < end && *p == ']') {
        p++;
    } else {
        for (;;) {
            if (t >= T) return -1;
            if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
                frame_mask[t] = -1;
                p += 4;
            } else {
                if (p >= end || *p != '{') return -1;
                int have_size = 0, have_counts = 0;
                p = ws(p + 1, end);
                for (int member = 0; member < 2; member++) {
                    if (member) {
                        if (p >= end || *p != ',') return -1;
                        p = ws(p + 1, end);
                    }
                    if (end - p >= 6 && memcmp(p, "\"size\"", 6) == 0 && !have_size) {
                        int64_t a, b;
                        have_size = 1;
                        p = ws(p + 6, end);
                        if (p >= end || *p != ':') return -1;
                        p = ws(p + 1, end);
                        if (p >= end || *p != '[') return -1;
                        p = ws(p + 1, end);
                        if (!(p = read_uint(p, end, &a))) return -1;
                        p = ws(p, end);
                        if (p >= end || *p != ',') return -1;
                        p = ws(p + 1, end);
                        if (!(p = read_uint(p, end, &b))) return -1;
                        p = ws(p, end);
                        if (p >= end || *p != ']') return -1;
                        if (a != h || b != w) return -1;
                        p = ws(p + 1, end);
                    } else if (end - p >= 8 && memcmp(p, "\"counts\"", 8) == 0 && !have_counts) {
                        have_counts = 1;
                        p = ws(p + 8, end);
                        if (p >= end || *p != ':') return -1;
                        p = ws(p + 1, end);
                        if (p >= end || *p != '"') return -1;
                        p++;
                        if (*n_masks >= max_masks) return -1;
                        int64_t u = *used;
                        const char *q = memchr(p, '"', end - p);
                        if (!q) return -1;
                        /* the common string: pycocotools' characters and no backslash (a vectorisable test,
                         * then one copy) */
                        unsigned bad = 0;
                        for (const char *r = p; r < q; r++) {
                            unsigned char c = (unsigned char)*r;
                            bad |= (unsigned)((unsigned char)(c - '0') > 'o' - '0') | (unsigned)(c == '\\');
                        }
                        if (!bad) {
                            if (q - p > cap - u) return -1;
                            memmove(out + u, p, q - p); /* in place: out + u <= p */
                            u += q - p;
                            p = q;
                        } else {
                            for (;;) {
                                if (p >= end) return -1;
                                char c = *p;
                                if (c == '"') break;
                                if (c == '\\') { /* the only escape a counts string needs: the backslash, written twice */
                                    if (p + 1 >= end || p[1] != '\\') return -1;
                                    p++;
                                } else if (c < '0' || c > 'o') {
                                    return -1;
                                }
                                if (u >= cap) return -1;
                                out[u++] = c;
                                p++;
                            }
                        }
                        p = ws(p + 1, end);
                        *used = u;
                        frame_mask[t] = *n_masks;
                        offsets[++*n_masks] = u;
                    } else {
                        return -1;
                    }
                }
                if (p >= end || *p != '}') return -1;
                p++;
            }
            t++;
            p = ws(p, end);
            if (p < end && *p == ',') {
                p = ws(p + 1, end);
                continue;
            }
            if (p < end && *p == ']') {
                p++;
                break;
            }
            return -1;
        }
    }
    p = ws(p, end);
    return (p == end && t == T) ? 0 : -1;
}

static PyObject *scan_segmentations(PyObject *self, PyObject *args) {
    PyObject *raws, *o_len, *o_h, *o_w, *o_out, *o_off, *o_fm;
    Py_ssize_t used0, masks0;
    if (!PyArg_ParseTuple(args, "OOOOOnOnO", &raws, &o_len, &o_h, &o_w, &o_out, &used0, &o_off, &masks0, &o_fm))
        return NULL;
    if (!PyList_Check(raws)) return PyErr_Format(PyExc_TypeError, "raws must be a list");
    Py_ssize_t n = PyList_GET_SIZE(raws);
    Buf b[6];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    if (get_buf(o_len, &b[0], 8, n, 0, "lengths") || get_buf(o_h, &b[1], 8, n, 0, "heights") ||
        get_buf(o_w, &b[2], 8, n, 0, "widths") || get_buf(o_out, &b[3], 1, 0, 1, "out") ||
        get_buf(o_off, &b[4], 8, 1, 1, "offsets") || get_buf(o_fm, &b[5], 8, 0, 1, "frame_mask"))
        goto done;
    const int64_t *len = b[0].view.buf, *hs = b[1].view.buf, *wd = b[2].view.buf;
    char *out = b[3].view.buf;
    int64_t *offsets = b[4].view.buf, *fm = b[5].view.buf;
    int64_t cap = b[3].view.len, max_masks = b[4].view.len / 8 - 1, fm_cap = b[5].view.len / 8;
    int64_t used = used0, n_masks = masks0, f = 0;
    if (used < 0 || used > cap || n_masks < 0 || n_masks > max_masks) {
        PyErr_SetString(PyExc_ValueError, "start beyond the buffers");
        goto done;
    }
    offsets[n_masks] = used;
    int ok = 1;
    for (Py_ssize_t i = 0; i < n && ok; i++) {
        Py_buffer rv;
        if (PyObject_GetBuffer(PyList_GET_ITEM(raws, i), &rv, PyBUF_SIMPLE) < 0) goto done;
        const char *rp = rv.buf;
        /* in place, the texts must come in buffer order, each after what was written so far */
        int inside = rp + rv.len > out && rp < out + cap;
        if (len[i] < 0 || f + len[i] > fm_cap || (inside && (rp < out + used || rp + rv.len > out + cap))) {
            ok = 0;
        } else {
            const char *p = rv.buf;
            int r;
            Py_BEGIN_ALLOW_THREADS
            r = scan_one(p, p + rv.len, len[i], hs[i], wd[i], out, cap, &used, offsets, max_masks, &n_masks, fm + f);
            Py_END_ALLOW_THREADS
            ok = r == 0;
            f += len[i];
        }
        PyBuffer_Release(&rv);
    }
    if (ok)
        ret = Py_BuildValue("LL", (long long)n_masks, (long long)used);
    else
        ret = Py_NewRef(Py_None);
done:
    release(b, 6);
    return ret;
}

/* ------------------------------------------------------------------------------------------------ decoder */
/* pycocotools' rleFrString for the masks sel_lo[k]..sel_hi[k] of ``buf`` (5-bit groups with a continuation
 * bit, sign-extended, each count after the third a delta against the count two places back, counts kept as
 * uint32): area and total pixels per mask, and the foreground intervals [start, end) where need[k]. Intervals are
 * int32 (half the memory traffic of the IoU merges): a position beyond 2^31 - 1 is past any frame the loaders
 * accept (16384 x 16384 pixels), so such a mask keeps no intervals and its total, larger than the frame, is
 * refused by the caller. Returns the number of intervals, or -1 when they would exceed ``cap`` (a caller's sizing
 * error). */
/* The first column of mask k's intervals when there is exactly one per column, over consecutive columns, none
 * crossing a column boundary (the pixel order is column-major, ``height`` pixels a column): the common shape
 * of an object, whose intersections then need no merge (intersection() below); else -1. */
static int64_t one_per_column(const int32_t *starts, const int32_t *ends, int64_t i0, int64_t i1, int64_t height) {
    if (height <= 0 || i1 <= i0) return -1;
    int64_t col = starts[i0] / height, lo = col * height;
    for (int64_t i = i0; i < i1; i++, lo += height)
        if (starts[i] < lo || ends[i] > lo + height) return -1;
    return col;
}

static int64_t decode_masks(const uint8_t *buf, const int64_t *lo, const int64_t *hi, int64_t n, const uint8_t *need,
                            int32_t *starts, int32_t *ends, int64_t cap, int64_t n_iv, int64_t *iv_offsets,
                            int64_t *areas, int64_t *totals, int64_t *cols, int64_t height) {
    const int64_t M = 0xFFFFFFFFLL, P = 0x7FFFFFFFLL;
    for (int64_t k = 0; k < n; k++) {
        iv_offsets[k] = n_iv;
        const uint8_t *p = buf + lo[k], *stop = buf + hi[k];
        int64_t m = 0, pos = 0, area = 0, prev1 = 0, prev2 = 0;
        int keep = need[k] != 0;
        while (p < stop) {
            /* Most counts of real masks are one-character deltas (a run length changes little from one column to
             * the next): from the fourth count on, (background, foreground) pairs of one-character codes (no
             * continuation bit: 0 <= c < 32, sign-extended from bit 4 as (c ^ 16) - 16) take these loops, two
             * pairs at a time; a mask whose intervals are not needed takes the one without stores. */
            if (m > 2 && !(m & 1)) {
                if (!keep) {
                    while (stop - p >= 4) {
                        int64_t c0 = p[0] - 48, c1 = p[1] - 48, c2 = p[2] - 48, c3 = p[3] - 48;
                        if ((c0 | c1 | c2 | c3) & ~(int64_t)31) break;
                        int64_t bg = (((c0 ^ 16) - 16) + prev2) & M, fg = (((c1 ^ 16) - 16) + prev1) & M;
                        int64_t bg2 = (((c2 ^ 16) - 16) + bg) & M, fg2 = (((c3 ^ 16) - 16) + fg) & M;
                        prev2 = bg2;
                        prev1 = fg2;
                        pos += bg + fg + bg2 + fg2;
                        area += fg + fg2;
                        p += 4;
                        m += 4;
                    }
                } else {
                    while (stop - p >= 4) {
                        int64_t c0 = p[0] - 48, c1 = p[1] - 48, c2 = p[2] - 48, c3 = p[3] - 48;
                        if ((c0 | c1 | c2 | c3) & ~(int64_t)31) break;
                        if (n_iv + 2 > cap) return -1;
                        int64_t bg = (((c0 ^ 16) - 16) + prev2) & M, fg = (((c1 ^ 16) - 16) + prev1) & M;
                        int64_t bg2 = (((c2 ^ 16) - 16) + bg) & M, fg2 = (((c3 ^ 16) - 16) + fg) & M;
                        if (pos + bg + fg + bg2 + fg2 > P) break; /* the general code below says what to do */
                        prev2 = bg2;
                        prev1 = fg2;
                        pos += bg;
                        starts[n_iv] = (int32_t)pos;
                        pos += fg;
                        ends[n_iv] = (int32_t)pos;
                        n_iv += fg > 0;
                        pos += bg2;
                        starts[n_iv] = (int32_t)pos;
                        pos += fg2;
                        ends[n_iv] = (int32_t)pos;
                        n_iv += fg2 > 0;
                        area += fg + fg2;
                        p += 4;
                        m += 4;
                    }
                }
                if (p >= stop) break;
            }
            int64_t c = (int64_t)*p++ - 48;
            int64_t x = c & 0x1F;
            int sh = 5;
            if (c & 0x20) {
                while (p < stop) {
                    c = (int64_t)*p++ - 48;
                    x |= (c & 0x1F) << sh;
                    sh += 5;
                    if (!(c & 0x20)) break;
                }
            }
            if (!(c & 0x20)) x -= ((c >> 4) & 1) << sh; /* sign-extended unless the string ended inside a code */
            if (m > 2) x += prev2;
            x &= M;
            prev2 = prev1;
            prev1 = x;
            if (m & 1) {
                area += x;
                if (keep && x > 0) {
                    if (pos + x > P) {
                        keep = 0; /* past any accepted frame: the total is refused by the caller */
                    } else {
                        if (n_iv >= cap) return -1;
                        starts[n_iv] = (int32_t)pos;
                        ends[n_iv] = (int32_t)(pos + x);
                        n_iv++;
                    }
                }
            }
            pos += x;
            m++;
        }
        areas[k] = area;
        totals[k] = pos;
        cols[k] = keep ? one_per_column(starts, ends, iv_offsets[k], n_iv, height) : -1;
    }
    iv_offsets[n] = n_iv;
    return n_iv;
}

static PyObject *decode(PyObject *self, PyObject *args) {
    /* buf, lo, hi, need, starts, ends, iv_offsets, areas, totals, iv_start, cols, height: the intervals go to
     * starts / ends from iv_start on (a second call continues the table of a first one); cols: see one_per_column
     * (height 0: all -1) */
    PyObject *o_buf, *o_lo, *o_hi, *o_need, *o_st, *o_en, *o_ivo, *o_ar, *o_tot, *o_cols;
    Py_ssize_t iv_start, height;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOnOn", &o_buf, &o_lo, &o_hi, &o_need, &o_st, &o_en, &o_ivo, &o_ar, &o_tot,
                          &iv_start, &o_cols, &height))
        return NULL;
    Buf b[10];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    if (get_buf(o_lo, &b[1], 8, 0, 0, "lo")) goto done;
    int64_t n = b[1].view.len / 8;
    if (get_buf(o_buf, &b[0], 1, 0, 0, "buf") || get_buf(o_hi, &b[2], 8, n, 0, "hi") ||
        get_buf(o_need, &b[3], 1, n, 0, "need") || get_buf(o_st, &b[4], 4, 0, 1, "starts") ||
        get_buf(o_en, &b[5], 4, 0, 1, "ends") || get_buf(o_ivo, &b[6], 8, n + 1, 1, "iv_offsets") ||
        get_buf(o_ar, &b[7], 8, n, 1, "areas") || get_buf(o_tot, &b[8], 8, n, 1, "totals") ||
        get_buf(o_cols, &b[9], 8, n, 1, "cols"))
        goto done;
    const int64_t *lo = b[1].view.buf, *hi = b[2].view.buf;
    int64_t size = b[0].view.len;
    for (int64_t k = 0; k < n; k++)
        if (lo[k] < 0 || hi[k] < lo[k] || hi[k] > size) {
            PyErr_SetString(PyExc_ValueError, "mask bounds outside the buffer");
            goto done;
        }
    int64_t cap = b[4].view.len / 4 < b[5].view.len / 4 ? b[4].view.len / 4 : b[5].view.len / 4;
    if (iv_start < 0 || iv_start > cap) {
        PyErr_SetString(PyExc_ValueError, "iv_start beyond the interval buffers");
        goto done;
    }
    int64_t r;
    Py_BEGIN_ALLOW_THREADS
    r = decode_masks(b[0].view.buf, lo, hi, n, b[3].view.buf, b[4].view.buf, b[5].view.buf, cap, iv_start,
                     b[6].view.buf, b[7].view.buf, b[8].view.buf, b[9].view.buf, height);
    Py_END_ALLOW_THREADS
    ret = PyLong_FromLongLong(r);
done:
    release(b, 10);
    return ret;
}

/* ------------------------------------------------------------------------------------- IoU and matching */
static int64_t lower_bound(const int32_t *a, int64_t lo, int64_t hi, int64_t v) { /* first i: a[i] >= v */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] < v) lo = mid + 1; else hi = mid;
    }
    return lo;
}

static int64_t upper_bound(const int32_t *a, int64_t lo, int64_t hi, int64_t v) { /* first i: a[i] > v */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] <= v) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* Foreground pixels shared by decoded masks a and b: a merge of their sorted, disjoint intervals, restricted to
 * where both can overlap (as rle_kernels._intersection). */
static int64_t intersection(const int32_t *starts, const int32_t *ends, const int64_t *ivo, const int64_t *cols,
                            int64_t a, int64_t b) {
    int64_t i = ivo[a], ie = ivo[a + 1], j = ivo[b], je = ivo[b + 1];
    if (cols[a] >= 0 && cols[b] >= 0) {
        /* one interval per column in both: the column x interval of each is at a fixed offset, and the
         * intersection a sum over the shared columns, without the merge's unpredictable branch */
        int64_t x0 = cols[a] > cols[b] ? cols[a] : cols[b];
        int64_t xa = cols[a] + (ie - i), xb = cols[b] + (je - j), x1 = xa < xb ? xa : xb;
        const int32_t *sa = starts + i + (x0 - cols[a]), *ea = ends + i + (x0 - cols[a]);
        const int32_t *sb = starts + j + (x0 - cols[b]), *eb = ends + j + (x0 - cols[b]);
        int64_t s = 0;
        for (int64_t x = 0; x < x1 - x0; x++) {
            int32_t l = sa[x] > sb[x] ? sa[x] : sb[x], h = ea[x] < eb[x] ? ea[x] : eb[x];
            s += h > l ? h - l : 0;
        }
        return s;
    }
    if (i == ie || j == je || starts[i] >= ends[je - 1] || starts[j] >= ends[ie - 1]) return 0;
    j = upper_bound(ends, j, je, starts[i]);
    i = upper_bound(ends, i, ie, starts[j]);
    if (i >= ie) return 0;
    ie = lower_bound(starts, i, ie, ends[je - 1]);
    if (i >= ie) return 0;
    je = lower_bound(starts, j, je, ends[ie - 1]);
    if (j >= je) return 0;
    int64_t s = 0, si = starts[i], ei = ends[i], sj = starts[j], ej = ends[j];
    for (;;) {
        int64_t l = si > sj ? si : sj, h = ei < ej ? ei : ej;
        if (h > l) s += h - l;
        if (ei <= ej) {
            if (++i == ie) break;
            si = starts[i];
            ei = ends[i];
        } else {
            if (++j == je) break;
            sj = starts[j];
            ej = ends[j];
        }
    }
    return s;
}

/* The official greedy matching loop for each lane (area range) and threshold on one category's (D, G) block;
 * arrays are views with the strides given (as rle_kernels.greedy_match_kernel). */
static void greedy(const double *ious, int64_t D, int64_t G, const double *gt_ids, const uint8_t *crowd,
                   const uint8_t *ignore, int64_t ig_stride, int64_t L, const double *thr, int64_t T,
                   double *dt_match, uint8_t *dt_ignore, int64_t d_stride, int64_t *gmd, int64_t g_stride,
                   int64_t *order, uint8_t *reach) {
    double lowest = 1e300;
    for (int64_t t = 0; t < T; t++) {
        double v = thr[t] < 1 - 1e-10 ? thr[t] : 1 - 1e-10;
        if (v < lowest) lowest = v;
    }
    for (int64_t d = 0; d < D; d++) {
        reach[d] = 0;
        for (int64_t g = 0; g < G; g++)
            if (ious[d * G + g] >= lowest) {
                reach[d] = 1;
                break;
            }
    }
    for (int64_t lane = 0; lane < L; lane++) {
        const uint8_t *ig = ignore + lane * ig_stride;
        int64_t n = 0;
        for (int64_t g = 0; g < G; g++)
            if (!ig[g]) order[n++] = g;
        for (int64_t g = 0; g < G; g++)
            if (ig[g]) order[n++] = g;
        for (int64_t t = 0; t < T; t++) {
            double *dm = dt_match + (lane * T + t) * d_stride;
            uint8_t *di = dt_ignore + (lane * T + t) * d_stride;
            int64_t *gm = gmd + (lane * T + t) * g_stride;
            double start = thr[t] < 1 - 1e-10 ? thr[t] : 1 - 1e-10;
            for (int64_t d = 0; d < D; d++) {
                if (!reach[d]) continue;
                double best = start;
                int64_t m = -1;
                for (int64_t k = 0; k < G; k++) {
                    int64_t g = order[k];
                    if (gm[g] >= 0 && !crowd[g]) continue;
                    if (m > -1 && !ig[m] && ig[g]) break;
                    if (ious[d * G + g] < best) continue;
                    best = ious[d * G + g];
                    m = g;
                }
                if (m == -1) continue;
                di[d] = ig[m];
                dm[d] = gt_ids[m];
                gm[m] = d;
            }
        }
    }
}

static PyObject *greedy_match(PyObject *self, PyObject *args) {
    /* ious (D, G) f8, gt_ids (G,) f8, gt_crowd (G,) b1, gt_ignore (L, G) b1, thresholds (T,) f8, dt_match (L, T, D)
     * f8, dt_ignore (L, T, D) b1, gt_match_det (L, T, G) i8 (filled with -1 by the caller); sizes D, G, L, T */
    PyObject *o[8];
    Py_ssize_t D, G, L, T;
    if (!PyArg_ParseTuple(args, "OOOOOOOOnnnn", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &D, &G, &L,
                          &T))
        return NULL;
    Buf b[8];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    if (D < 0 || G < 0 || L < 0 || T < 0) {
        PyErr_SetString(PyExc_ValueError, "negative size");
        return NULL;
    }
    const Py_ssize_t isz[8] = {8, 8, 1, 1, 8, 8, 1, 8};
    const Py_ssize_t cnt[8] = {D * G, G, G, L * G, T, L * T * D, L * T * D, L * T * G};
    const int wr[8] = {0, 0, 0, 0, 0, 1, 1, 1};
    static const char *names[8] = {"ious", "gt_ids", "gt_crowd", "gt_ignore", "thresholds", "dt_match",
                                   "dt_ignore", "gt_match_det"};
    for (int i = 0; i < 8; i++)
        if (get_buf(o[i], &b[i], isz[i], cnt[i], wr[i], names[i])) goto done;
    int64_t *order = PyMem_Malloc(sizeof(int64_t) * (G + 1));
    uint8_t *reach = PyMem_Malloc(D + 1);
    if (!order || !reach) {
        PyMem_Free(order);
        PyMem_Free(reach);
        PyErr_NoMemory();
        goto done;
    }
    greedy(b[0].view.buf, D, G, b[1].view.buf, b[2].view.buf, b[3].view.buf, G, L, b[4].view.buf, T, b[5].view.buf,
           b[6].view.buf, D, b[7].view.buf, G, order, reach);
    PyMem_Free(order);
    PyMem_Free(reach);
    ret = Py_NewRef(Py_None);
done:
    release(b, 8);
    return ret;
}

static PyObject *video_match(PyObject *self, PyObject *args) {
    /* d_idx (D, Td), d_len (D,), g_idx (G, Tg), g_len (G,), areas, starts, ends, iv_offsets, d_lo, d_hi, g_lo,
     * g_hi (C,), iou_off (C + 1,), gt_ids (G,) f8, gt_crowd (G,) b1, gt_ignore (A, G) b1, thresholds (T,),
     * ious, dt_match (A, T, D) f8, dt_ignore (A, T, D) b1, gt_match_det (A, T, G) i8, cols (n_masks,) i8 (see
     * one_per_column; -1: merge); sizes D, Td, G, Tg, C, A, T, n_masks. */
    PyObject *o[22];
    Py_ssize_t D, Td, G, Tg, C, A, T, nm;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOOOOOOOOOnnnnnnnn", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6],
                          &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13], &o[14], &o[15], &o[16], &o[17],
                          &o[18], &o[19], &o[20], &o[21], &D, &Td, &G, &Tg, &C, &A, &T, &nm))
        return NULL;
    Buf b[22];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    const Py_ssize_t isz[22] = {8, 8, 8, 8, 8, 4, 4, 8, 8, 8, 8, 8, 8, 8, 1, 1, 8, 8, 8, 1, 8, 8};
    const Py_ssize_t cnt[22] = {D * Td, D, G * Tg, G, nm, 0, 0, nm + 1, C, C, C, C, C + 1, G, G, A * G, T, 0,
                                A * T * D, A * T * D, A * T * G, nm};
    const int wr[22] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0};
    static const char *names[22] = {"d_idx", "d_len", "g_idx", "g_len", "areas", "starts", "ends", "iv_offsets",
                                    "d_lo", "d_hi", "g_lo", "g_hi", "iou_off", "gt_ids", "gt_crowd", "gt_ignore",
                                    "thresholds", "ious", "dt_match", "dt_ignore", "gt_match_det", "cols"};
    for (int i = 0; i < 22; i++)
        if (get_buf(o[i], &b[i], isz[i], cnt[i], wr[i], names[i])) goto done;
    const int64_t *d_idx = b[0].view.buf, *d_len = b[1].view.buf, *g_idx = b[2].view.buf, *g_len = b[3].view.buf;
    const int64_t *areas = b[4].view.buf, *ivo = b[7].view.buf;
    const int32_t *starts = b[5].view.buf, *ends = b[6].view.buf;
    const int64_t *d_lo = b[8].view.buf, *d_hi = b[9].view.buf, *g_lo = b[10].view.buf, *g_hi = b[11].view.buf;
    const int64_t *iou_off = b[12].view.buf;
    const double *gt_ids = b[13].view.buf, *thr = b[16].view.buf;
    const uint8_t *crowd = b[14].view.buf, *ignore = b[15].view.buf;
    double *ious = b[17].view.buf, *dt_match = b[18].view.buf;
    uint8_t *dt_ignore = b[19].view.buf;
    int64_t *gmd = b[20].view.buf;
    const int64_t *cols = b[21].view.buf;
    int64_t n_ious = b[17].view.len / 8;
    /* internal arrays of the caller: checked once here so that the loops need no checks */
    for (Py_ssize_t c = 0; c < C; c++)
        if (d_lo[c] < 0 || d_hi[c] < d_lo[c] || d_hi[c] > D || g_lo[c] < 0 || g_hi[c] < g_lo[c] || g_hi[c] > G ||
            iou_off[c] < 0 || iou_off[c] + (d_hi[c] - d_lo[c]) * (g_hi[c] - g_lo[c]) > n_ious) {
            PyErr_SetString(PyExc_ValueError, "category slices outside the arrays");
            goto done;
        }
    for (Py_ssize_t k = 0; k < D * Td; k++)
        if (d_idx[k] >= nm) goto bad_index;
    for (Py_ssize_t k = 0; k < G * Tg; k++)
        if (g_idx[k] >= nm) goto bad_index;
    for (Py_ssize_t k = 0; k < D; k++)
        if (d_len[k] > Td) goto bad_index;
    for (Py_ssize_t k = 0; k < G; k++)
        if (g_len[k] > Tg) goto bad_index;
    int64_t *order = PyMem_Malloc(sizeof(int64_t) * (G + 1));
    uint8_t *reach = PyMem_Malloc(D + 1);
    if (!order || !reach) {
        PyMem_Free(order);
        PyMem_Free(reach);
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t c = 0; c < C; c++) {
        int64_t Dc = d_hi[c] - d_lo[c], Gc = g_hi[c] - g_lo[c];
        if (Dc == 0 || Gc == 0) continue;
        double *block = ious + iou_off[c];
        for (int64_t di = 0; di < Dc; di++) {
            int64_t d = d_lo[c] + di;
            for (int64_t gj = 0; gj < Gc; gj++) {
                int64_t g = g_lo[c] + gj;
                int64_t inter = 0, total = 0, n = d_len[d] < g_len[g] ? d_len[d] : g_len[g];
                for (int64_t t = 0; t < n; t++) {
                    int64_t a = d_idx[d * Td + t], bb = g_idx[g * Tg + t];
                    if (a >= 0) {
                        total += areas[a];
                        if (bb >= 0) inter += intersection(starts, ends, ivo, cols, a, bb);
                    }
                    if (bb >= 0) total += areas[bb];
                }
                int64_t uni = total - inter;
                block[di * Gc + gj] = uni > 0 ? (double)inter / (double)uni : 0.0;
            }
        }
        greedy(block, Dc, Gc, gt_ids + g_lo[c], crowd + g_lo[c], ignore + g_lo[c], G, A, thr, T, dt_match + d_lo[c],
               dt_ignore + d_lo[c], D, gmd + g_lo[c], G, order, reach);
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(order);
    PyMem_Free(reach);
    ret = Py_NewRef(Py_None);
    goto done;
bad_index:
    PyErr_SetString(PyExc_ValueError, "mask index outside the decoded table");
done:
    release(b, 22);
    return ret;
}

/* ------------------------------------------------------------------------------------------- accumulate */
static PyObject *accumulate(PyObject *self, PyObject *args) {
    /* lo_k, hi_k (K,), matched, ignored (A, T, N) b1, npig (K, A) i8, rec_thrs (R,), precision (T, R, K, A, M),
     * recall (T, K, A, M), areas (nA,) i8; m, sizes K, A, T, N, R, M (as rle_kernels.accumulate_kernel) */
    PyObject *o[9];
    Py_ssize_t m, K, A, T, N, R, M;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOnnnnnnn", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &m, &K, &A, &T, &N, &R, &M))
        return NULL;
    Buf b[9];
    memset(b, 0, sizeof b);
    PyObject *ret = NULL;
    const Py_ssize_t isz[9] = {8, 8, 1, 1, 8, 8, 8, 8, 8};
    const Py_ssize_t cnt[9] = {K, K, A * T * N, A * T * N, K * A, R, T * R * K * A * M, T * K * A * M, 0};
    const int wr[9] = {0, 0, 0, 0, 0, 0, 1, 1, 0};
    static const char *names[9] = {"lo_k", "hi_k", "matched", "ignored", "npig", "rec_thrs", "precision", "recall",
                                   "areas"};
    for (int i = 0; i < 9; i++)
        if (get_buf(o[i], &b[i], isz[i], cnt[i], wr[i], names[i])) goto done;
    const int64_t *lo_k = b[0].view.buf, *hi_k = b[1].view.buf, *npig = b[4].view.buf, *areas = b[8].view.buf;
    const uint8_t *matched = b[2].view.buf, *ignored = b[3].view.buf;
    const double *rec = b[5].view.buf;
    double *precision = b[6].view.buf, *recall = b[7].view.buf;
    int64_t n_areas = b[8].view.len / 8;
    if (m < 0 || m >= M) goto bad;
    for (int64_t i = 0; i < n_areas; i++)
        if (areas[i] < 0 || areas[i] >= A) goto bad;
    for (Py_ssize_t k = 0; k < K; k++)
        if (lo_k[k] >= 0 && (hi_k[k] < lo_k[k] || hi_k[k] > N)) goto bad;
    double *rc = PyMem_Malloc(sizeof(double) * (N + 1)), *pr = PyMem_Malloc(sizeof(double) * (N + 1));
    if (!rc || !pr) {
        PyMem_Free(rc);
        PyMem_Free(pr);
        PyErr_NoMemory();
        goto done;
    }
    const double eps = 2.220446049250313e-16; /* np.spacing(1.0) */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < K; k++) {
        int64_t lo = lo_k[k], hi = hi_k[k];
        if (lo < 0) continue;
        int64_t nd = hi - lo;
        for (int64_t ai = 0; ai < n_areas; ai++) {
            int64_t a = areas[ai];
            if (npig[k * A + a] == 0) continue;
            double n_pos = (double)npig[k * A + a];
            for (Py_ssize_t t = 0; t < T; t++) {
                const uint8_t *mt = matched + (a * T + t) * N + lo, *ig = ignored + (a * T + t) * N + lo;
                int64_t tp = 0, fp = 0;
                for (int64_t i = 0; i < nd; i++) {
                    if (!ig[i]) {
                        if (mt[i]) tp++; else fp++;
                    }
                    double tpf = (double)tp;
                    rc[i] = tpf / n_pos;
                    pr[i] = tpf / ((double)fp + tpf + eps);
                }
                for (int64_t i = nd - 1; i > 0; i--)
                    if (pr[i] > pr[i - 1]) pr[i - 1] = pr[i];
                int64_t i = 0;
                for (Py_ssize_t r = 0; r < R; r++) {
                    while (i < nd && rc[i] < rec[r]) i++;
                    precision[(((t * R + r) * K + k) * A + a) * M + m] = i < nd ? pr[i] : 0.0;
                }
                recall[((t * K + k) * A + a) * M + m] = nd ? rc[nd - 1] : 0.0;
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(rc);
    PyMem_Free(pr);
    ret = Py_NewRef(Py_None);
    goto done;
bad:
    PyErr_SetString(PyExc_ValueError, "accumulate: index outside the arrays");
done:
    release(b, 9);
    return ret;
}

static PyMethodDef methods[] = {
    {"scan_segmentations", scan_segmentations, METH_VARARGS, "Locate the compressed RLE strings of results."},
    {"decode", decode, METH_VARARGS, "Decode compressed RLE strings: areas, totals, foreground intervals."},
    {"greedy_match", greedy_match, METH_VARARGS, "The official greedy matching of one (D, G) IoU block."},
    {"video_match", video_match, METH_VARARGS, "Video IoU blocks and greedy matching of every category."},
    {"accumulate", accumulate, METH_VARARGS, "Precision / recall curves of every category."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rlec", "C kernels of the YouTube-VIS scorer.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__rlec(void) { return PyModule_Create(&module); }
