# C types for bucket_c, the compiled twin of bucket_py.py.
#
# bucket_c.py is a symlink to bucket_py.py: Cython compiles the spec itself and this file only
# adds types (STYLE principle 3). A bucket becomes a C struct of two doubles, the clock and
# rate arithmetic runs on C doubles, and the helpers become inline C functions. The dict that
# keeps recency stays a dict in both builds.

cimport cython

cdef double _INF
cdef double _MIN_WAIT_S


cdef class _Bucket:
    cdef public double tokens
    cdef public double last_s


cdef class TokenBucketTable:
    cdef Py_ssize_t _max_keys
    cdef dict _entries

    @cython.locals(entries=dict, entry=_Bucket, tokens=double, wait=double)
    cpdef double take(self, object key, double now_s, double rate_per_s, double burst,
                      double cost) except? -1.0

    @cython.locals(entry=_Bucket)
    cpdef double peek(self, object key, double now_s, double rate_per_s, double burst) except? -1.0

    cpdef remove(self, object key)


cdef int _check(double now_s, double rate_per_s, double burst) except -1

@cython.locals(tokens=double, elapsed=double)
cdef double _refilled(_Bucket entry, double now_s, double rate_per_s, double burst) noexcept
