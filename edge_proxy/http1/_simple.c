/* The edge's "simple message" recognizers in C: the same semantics as `scan_request_py` and
 * `rewrite_response_py` in simple.py (the reference, and the fallback when this module is not built).
 *
 * Both accept only a strict subset of RFC 9112 that every parser reads the same way (no obs-fold, no bare LF,
 * no framing fields but one plain Content-Length on responses, nothing before or after the message), and
 * answer None for anything else: such messages take the general path, parsed by httptools (llhttp). One call
 * here replaces a dozen httptools callbacks into Python per message, which is what the lane is for.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static unsigned char TCHAR[256];  /* RFC 9110 §5.6.2 tchar */
static unsigned char FIELD[256];  /* RFC 9110 §5.5 field-value bytes plus SP/HTAB: HTAB, SP, VCHAR, obs-text */
static unsigned char REGNAME[256];  /* the Host reg-name bytes edge_proxy.http1.head accepts */
static unsigned char HEX[256];  /* tables, not <ctype.h> calls: the process locale must not matter */
static PyObject *GET_BYTES, *HEAD_BYTES;

enum kind { KEEP, DROP, REJECT, HOST, LENGTH, CONNECTION };

static int ieq(const unsigned char *p, Py_ssize_t len, const char *lit, Py_ssize_t litlen) {
    if (len != litlen) return 0;
    for (Py_ssize_t k = 0; k < len; k++)
        if ((p[k] | 0x20) != (unsigned char)lit[k]) return 0;  /* lit is lower-case letters and '-' */
    return 1;
}

static int ipre(const unsigned char *p, Py_ssize_t len, const char *lit, Py_ssize_t litlen) {
    return len >= litlen && ieq(p, litlen, lit, litlen);
}

#define IS(lit) ieq(name, len, lit, (Py_ssize_t)sizeof(lit) - 1)
#define PRE(lit) ipre(name, len, lit, (Py_ssize_t)sizeof(lit) - 1)

/* What the lane does with a request field is not written here: it is edge_proxy/fields.py's LANE_REQUEST
 * (name -> kind) and LANE_PREFIXES (REJECT), read once when the module is loaded. Names are compared
 * lower-cased and with '_' read as '-' (NORM), so `X_Forwarded_For` is `x-forwarded-for`. Rules are grouped by
 * name length: a field costs the comparisons with the few rules of its own length. */
#define MAX_RULES 128
#define MAX_NAME 64
#define MAX_PREFIXES 8
struct rule { Py_ssize_t len; enum kind kind; unsigned char name[MAX_NAME]; };
static struct rule RULES[MAX_RULES];  /* sorted by len */
static int BY_LEN[MAX_NAME + 2];  /* RULES[BY_LEN[n] .. BY_LEN[n + 1]) have length n */
static struct rule PREFIXES[MAX_PREFIXES];
static int NPREFIXES;
static unsigned char NORM[256];
/* A filter before any comparison: bit (first byte & 63) set when some rule of that length (or some prefix)
 * starts with that byte, so most fields (accept*, cookie, user-agent, sec-*) cost one length and one bit test. */
static unsigned long long FIRST_BY_LEN[MAX_NAME + 1], PREFIX_FIRST;
#define FIRST_BIT(c) (1ULL << (NORM[(unsigned char)(c)] & 63))

static int neq(const unsigned char *p, Py_ssize_t len, const unsigned char *lit) {
    for (Py_ssize_t k = 0; k < len; k++)
        if (NORM[p[k]] != lit[k]) return 0;
    return 1;
}

static enum kind request_field(const unsigned char *name, Py_ssize_t len) {
    unsigned long long bit = FIRST_BIT(name[0]);  /* len >= 1: a field name is one tchar or more */
    if (len <= MAX_NAME && (FIRST_BY_LEN[len] & bit))
        for (int r = BY_LEN[len]; r < BY_LEN[len + 1]; r++)
            if (neq(name, len, RULES[r].name)) return RULES[r].kind;
    if (PREFIX_FIRST & bit)
        for (int r = 0; r < NPREFIXES; r++)
            if (len >= PREFIXES[r].len && neq(name, PREFIXES[r].len, PREFIXES[r].name)) return REJECT;
    return KEEP;
}

/* One table entry: a name as fields.py spells it (lower case, '-'), stored as NORM would read it. */
static int set_rule(struct rule *rule, PyObject *name, long kind) {
    if (!PyBytes_Check(name) || PyBytes_GET_SIZE(name) < 1 || PyBytes_GET_SIZE(name) > MAX_NAME
        || kind < KEEP || kind > CONNECTION) {
        PyErr_SetString(PyExc_ValueError, "edge_proxy.fields: a lane rule has a bad name or kind");
        return -1;
    }
    rule->len = PyBytes_GET_SIZE(name);
    rule->kind = (enum kind)kind;
    for (Py_ssize_t k = 0; k < rule->len; k++)
        rule->name[k] = NORM[(unsigned char)PyBytes_AS_STRING(name)[k]];
    return 0;
}

static int load_rules(void) {
    PyObject *fields = PyImport_ImportModule("edge_proxy.fields");
    if (fields == NULL) return -1;
    PyObject *table = PyObject_GetAttrString(fields, "LANE_REQUEST");
    PyObject *prefixes = PyObject_GetAttrString(fields, "LANE_PREFIXES");
    Py_DECREF(fields);
    int ok = -1, n = 0;
    if (table == NULL || prefixes == NULL || !PyDict_Check(table) || !PyTuple_Check(prefixes)
        || PyDict_Size(table) > MAX_RULES || PyTuple_GET_SIZE(prefixes) > MAX_PREFIXES) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "edge_proxy.fields: bad lane tables");
        goto done;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    struct rule rule;
    while (PyDict_Next(table, &pos, &key, &value)) {
        long kind = PyLong_AsLong(value);
        if (kind == -1 && PyErr_Occurred()) goto done;
        if (set_rule(&rule, key, kind) < 0) goto done;
        int at = n++;  /* insertion sort by length */
        while (at > 0 && RULES[at - 1].len > rule.len) {
            RULES[at] = RULES[at - 1];
            at--;
        }
        RULES[at] = rule;
        FIRST_BY_LEN[rule.len] |= FIRST_BIT(rule.name[0]);
    }
    for (Py_ssize_t len = 0, r = 0; len <= MAX_NAME + 1; len++) {
        while (r < n && RULES[r].len < len) r++;
        BY_LEN[len] = (int)r;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(prefixes); k++) {
        if (set_rule(&PREFIXES[k], PyTuple_GET_ITEM(prefixes, k), REJECT) < 0) goto done;
        PREFIX_FIRST |= FIRST_BIT(PREFIXES[k].name[0]);
    }
    NPREFIXES = (int)PyTuple_GET_SIZE(prefixes);
    ok = 0;
done:
    Py_XDECREF(table);
    Py_XDECREF(prefixes);
    return ok;
}

static enum kind response_field(const unsigned char *name, Py_ssize_t len) {
    if (IS("content-length")) return LENGTH;
    if (IS("connection")) return CONNECTION;
    if (IS("server") || IS("fly-request-id") || IS("keep-alive")) return DROP;
    if (IS("transfer-encoding") || IS("upgrade") || IS("te") || IS("trailer") || IS("via") || IS("fly-replay")
        || PRE("proxy-"))
        return REJECT;
    return KEEP;
}

typedef enum kind (*classifier)(const unsigned char *, Py_ssize_t);

/* One field line at d[i] (RFC 9112 §5): `name ":" OWS value OWS CRLF`. Returns the index after its CRLF, or
 * -1 when the line is not in the subset (obs-fold §5.2 starts with SP/HTAB and fails the name). */
static Py_ssize_t field_line(const unsigned char *d, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *name_end,
                             Py_ssize_t *value_start, Py_ssize_t *value_end) {
    Py_ssize_t start = i;
    while (i < n && TCHAR[d[i]]) i++;
    if (i == start || i >= n || d[i] != ':') return -1;
    *name_end = i++;
    while (i < n && (d[i] == ' ' || d[i] == '\t')) i++;
    Py_ssize_t vs = i;
    while (i < n && FIELD[d[i]]) i++;
    if (n - i < 2 || d[i] != '\r' || d[i + 1] != '\n') return -1;
    Py_ssize_t ve = i;
    while (ve > vs && (d[ve - 1] == ' ' || d[ve - 1] == '\t')) ve--;
    *value_start = vs;
    *value_end = ve;
    return i + 2;
}

static int keep_alive_value(const unsigned char *d, Py_ssize_t vs, Py_ssize_t ve) {
    return ieq(d + vs, ve - vs, "keep-alive", 10);
}

/* The Host value edge_proxy.http1.head accepts: `[v6]` or reg-name, then an optional `:port` (RFC 9110 §7.2). */
static int valid_host(const unsigned char *d, Py_ssize_t i, Py_ssize_t end) {
    if (i < end && d[i] == '[') {
        Py_ssize_t start = ++i;
        while (i < end && (HEX[d[i]] || d[i] == ':' || d[i] == '.')) i++;
        if (i == start || i >= end || d[i] != ']') return 0;
        i++;
    } else {
        while (i < end && REGNAME[d[i]]) i++;
    }
    if (i == end) return 1;
    if (d[i] != ':') return 0;
    Py_ssize_t digits = end - i - 1;
    if (digits < 1 || digits > 5) return 0;
    for (i++; i < end; i++)
        if (d[i] < '0' || d[i] > '9') return 0;
    return 1;
}

/* Copy d[from:to) minus the dropped field lines into out; returns the bytes written. */
static Py_ssize_t copy_kept(const unsigned char *d, Py_ssize_t from, Py_ssize_t to, classifier classify,
                            char *out) {
    Py_ssize_t written = 0, i = from, ne, vs, ve;
    while (i < to) {
        Py_ssize_t next = field_line(d, to, i, &ne, &vs, &ve);  /* validated already: never -1 here */
        enum kind k = classify(d + i, ne - i);
        if (k != DROP && !(k == CONNECTION && keep_alive_value(d, vs, ve))) {
            memcpy(out + written, d + i, (size_t)(next - i));
            written += next - i;
        }
        i = next;
    }
    return written;
}

/* scan_request(data, max_headers) -> (method, host, kept) | None: see simple.scan_request_py. */
static PyObject *scan_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan_request(data: bytes, max_headers: int)");
        return NULL;
    }
    long max_headers = PyLong_AsLong(args[1]);
    if (max_headers == -1 && PyErr_Occurred()) return NULL;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    PyObject *method;
    Py_ssize_t i;
    if (n >= 4 && memcmp(d, "GET ", 4) == 0) {  /* RFC 9112 §3: method SP request-target SP HTTP-version */
        method = GET_BYTES;
        i = 4;
    } else if (n >= 5 && memcmp(d, "HEAD ", 5) == 0) {
        method = HEAD_BYTES;
        i = 5;
    } else {
        Py_RETURN_NONE;
    }
    if (i >= n || d[i] != '/') Py_RETURN_NONE;  /* origin-form only (§3.2.1) */
    while (i < n && d[i] >= 0x21 && d[i] <= 0x7e) i++;
    if (n - i < 11 || memcmp(d + i, " HTTP/1.1\r\n", 11) != 0) Py_RETURN_NONE;
    i += 11;
    Py_ssize_t fields_start = i, host_start = 0, host_end = 0, dropped = 0, ne, vs, ve;
    long count = 0;
    int hosts = 0;
    for (;;) {
        if (n - i < 2) Py_RETURN_NONE;
        if (d[i] == '\r') {
            if (d[i + 1] != '\n' || i + 2 != n) Py_RETURN_NONE;  /* the head is all of `data` */
            break;
        }
        Py_ssize_t next = field_line(d, n, i, &ne, &vs, &ve);
        if (next < 0 || ++count > max_headers) Py_RETURN_NONE;
        switch (request_field(d + i, ne - i)) {
        case REJECT: Py_RETURN_NONE;
        case HOST: hosts++; host_start = vs; host_end = ve; break;
        case CONNECTION:
            if (!keep_alive_value(d, vs, ve)) Py_RETURN_NONE;
            dropped += next - i;
            break;
        case DROP: dropped += next - i; break;
        default: break;
        }
        i = next;
    }
    if (hosts != 1 || host_end == host_start || !valid_host(d, host_start, host_end)) Py_RETURN_NONE;
    PyObject *kept;
    if (!dropped) {
        kept = PyBytes_FromStringAndSize((const char *)d, n - 2);
    } else {
        kept = PyBytes_FromStringAndSize(NULL, n - 2 - dropped);
        if (kept != NULL) {
            char *out = PyBytes_AS_STRING(kept);
            memcpy(out, d, (size_t)fields_start);
            copy_kept(d, fields_start, n - 2, request_field, out + fields_start);
        }
    }
    if (kept == NULL) return NULL;
    PyObject *host = PyBytes_FromStringAndSize((const char *)d + host_start, host_end - host_start);
    if (host == NULL) {
        Py_DECREF(kept);
        return NULL;
    }
    Py_INCREF(method);
    PyObject *result = PyTuple_New(3);
    if (result == NULL) {
        Py_DECREF(method);
        Py_DECREF(host);
        Py_DECREF(kept);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, method);
    PyTuple_SET_ITEM(result, 1, host);
    PyTuple_SET_ITEM(result, 2, kept);
    return result;
}

/* rewrite_response(data, tail) -> (status, out) | None: see simple.rewrite_response_py. */
static PyObject *rewrite_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "rewrite_response(data: bytes, tail: bytes)");
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    const char *tail = PyBytes_AS_STRING(args[1]);
    Py_ssize_t tail_len = PyBytes_GET_SIZE(args[1]);
    /* RFC 9112 §4: HTTP-version SP 3DIGIT SP [ reason-phrase ] CRLF */
    if (n < 15 || memcmp(d, "HTTP/1.1 ", 9) != 0 || d[12] != ' ') Py_RETURN_NONE;
    int status = 0;
    for (int k = 9; k < 12; k++) {
        if (d[k] < '0' || d[k] > '9') Py_RETURN_NONE;
        status = status * 10 + (d[k] - '0');
    }
    if (status < 200 || status > 599 || status == 204 || status == 304) Py_RETURN_NONE;
    Py_ssize_t i = 13;
    while (i < n && FIELD[d[i]]) i++;
    if (n - i < 2 || d[i] != '\r' || d[i + 1] != '\n') Py_RETURN_NONE;
    i += 2;
    Py_ssize_t fields_start = i, dropped = 0, ne, vs, ve;
    long long length = -1;
    int count = 0;
    for (;;) {
        if (n - i < 2) Py_RETURN_NONE;
        if (d[i] == '\r') {
            if (d[i + 1] != '\n') Py_RETURN_NONE;
            i += 2;
            break;
        }
        Py_ssize_t next = field_line(d, n, i, &ne, &vs, &ve);
        if (next < 0 || ++count > 100) Py_RETURN_NONE;
        switch (response_field(d + i, ne - i)) {
        case REJECT: Py_RETURN_NONE;
        case LENGTH:  /* §6.3: exactly one, plain digits; anything else is for llhttp and the general rules */
            if (length >= 0 || ve == vs || ve - vs > 15) Py_RETURN_NONE;
            length = 0;
            for (Py_ssize_t k = vs; k < ve; k++) {
                if (d[k] < '0' || d[k] > '9') Py_RETURN_NONE;
                length = length * 10 + (d[k] - '0');
            }
            break;
        case CONNECTION:
            if (!keep_alive_value(d, vs, ve)) Py_RETURN_NONE;
            dropped += next - i;
            break;
        case DROP: dropped += next - i; break;
        default: break;
        }
        i = next;
    }
    Py_ssize_t head_end = i;  /* after the empty line */
    if (length < 0 || n - head_end != length) Py_RETURN_NONE;
    Py_ssize_t fields_end = head_end - 2;
    Py_ssize_t size = fields_end - dropped + tail_len + 2 + (n - head_end);
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) return NULL;
    char *o = PyBytes_AS_STRING(out);
    memcpy(o, d, (size_t)fields_start);
    Py_ssize_t w = fields_start;
    if (dropped) {
        w += copy_kept(d, fields_start, fields_end, response_field, o + w);
    } else {
        memcpy(o + w, d + fields_start, (size_t)(fields_end - fields_start));
        w += fields_end - fields_start;
    }
    memcpy(o + w, tail, (size_t)tail_len);
    w += tail_len;
    o[w++] = '\r';
    o[w++] = '\n';
    memcpy(o + w, d + head_end, (size_t)(n - head_end));
    return Py_BuildValue("(iN)", status, out);
}

static PyMethodDef METHODS[] = {
    {"scan_request", (PyCFunction)(void (*)(void))scan_request, METH_FASTCALL,
     "scan_request(data, max_headers, /) -> (method, host, kept) | None"},
    {"rewrite_response", (PyCFunction)(void (*)(void))rewrite_response, METH_FASTCALL,
     "rewrite_response(data, tail, /) -> (status, out) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, .m_name = "_simple", .m_doc = NULL, .m_size = -1, .m_methods = METHODS,
};

#define ALNUM(c) (((c) >= '0' && (c) <= '9') || ((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))

PyMODINIT_FUNC PyInit__simple(void) {
    const char *tchar = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        TCHAR[c] = (unsigned char)ALNUM(c) || (c && strchr(tchar, c) != NULL);
        FIELD[c] = (unsigned char)(c == '\t' || (c >= 0x20 && c != 0x7f));
        REGNAME[c] = (unsigned char)ALNUM(c) || (c && strchr("._~%!$&'()*+,;=-", c) != NULL);
        HEX[c] = (unsigned char)((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'));
        NORM[c] = (unsigned char)(c == '_' ? '-' : (c >= 'A' && c <= 'Z') ? c | 0x20 : c);
    }
    if (load_rules() < 0) return NULL;
    GET_BYTES = PyBytes_FromString("GET");
    HEAD_BYTES = PyBytes_FromString("HEAD");
    if (GET_BYTES == NULL || HEAD_BYTES == NULL) return NULL;
    return PyModule_Create(&MODULE);
}
