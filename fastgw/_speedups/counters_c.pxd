# C types for counters_c, the compiled twin of counters_py.py.
#
# counters_c.py is a symlink to counters_py.py: Cython compiles the spec itself and this file
# only adds types (STYLE principle 3). The six array('q') buffers stay Python objects for the
# caller (it copies them to shared memory) and are bumped here through typed memoryviews of
# the same memory, so a count is one C increment; the bucket scan is a loop of double
# compares; the code table is read as C bytes.

cimport cython


cdef class MetricCounters:
    cdef public object layout
    cdef dict _endpoints
    cdef Py_ssize_t _codes, _ucodes, _instances, _nbounds, _buckets, _other
    cdef const unsigned char[::1] _code_index
    cdef double[::1] _bounds
    cdef public object requests, request_buckets, request_sums
    cdef public object upstream, upstream_buckets, upstream_sums
    cdef long long[::1] _requests, _request_buckets, _request_sums
    cdef long long[::1] _upstream, _upstream_buckets, _upstream_sums

    @cython.locals(i=Py_ssize_t)
    cdef Py_ssize_t _bucket(self, double elapsed_s) noexcept

    @cython.locals(row=Py_ssize_t, code=Py_ssize_t, elapsed_s=double, bucket=Py_ssize_t)
    cpdef void on_request_done(self, object endpoint, long status, double started_s) except *

    @cython.locals(code=Py_ssize_t, bucket=Py_ssize_t)
    cpdef void on_upstream_status(self, Py_ssize_t index, long status, double elapsed_s) noexcept

    cpdef void on_upstream_failure(self, Py_ssize_t index, Py_ssize_t code, double elapsed_s) noexcept
