# C types for hashring_c, the compiled twin of hashring_py.py.
#
# hashring_c.py is a symlink to hashring_py.py: Cython compiles the spec itself and this file
# only adds types (STYLE principle 3). The hash constants become uint64 globals, so the masks in
# the spec compile to no-ops and the multiplies wrap as C unsigned arithmetic does; the ring's
# array('Q') / array('i') buffers are read through typed memoryviews, so lookup is a binary
# search over a C array of uint64.

cimport cython
from libc.stdint cimport uint8_t, uint64_t

# array('Q') items are unsigned long long: the memoryview item type must say the same.
ctypedef unsigned long long point_t

cdef uint64_t _MASK64, _FNV_OFFSET, _FNV_PRIME, _FMIX_C1, _FMIX_C2


@cython.locals(h=uint64_t, byte=uint8_t)
cpdef uint64_t hash64(bytes data) except? 0

cdef uint64_t _fmix64(uint64_t k) noexcept


cdef class HashRing:
    cdef point_t[::1] _points  # sorted point hashes ('Q')
    cdef int[::1] _owners  # node index of each point ('i')
    cdef Py_ssize_t _size
    cdef Py_ssize_t _node_count
    cdef Py_ssize_t _nodes_with_points

    cpdef int lookup(self, bytes key) except? -2

    @cython.locals(size=Py_ssize_t, wanted=Py_ssize_t, i=Py_ssize_t, node=int, order=list,
                   seen=uint8_t[::1], owners=int[::1])
    cpdef list fallback_order(self, bytes key, Py_ssize_t limit=*)

    @cython.locals(points=point_t[::1], lo=Py_ssize_t, hi=Py_ssize_t, mid=Py_ssize_t)
    cdef Py_ssize_t _first_at_or_after(self, uint64_t point) noexcept
