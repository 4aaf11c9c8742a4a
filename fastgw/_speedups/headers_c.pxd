# C types for headers_c, the compiled twin of headers_py.py.
#
# headers_c.py is a symlink to headers_py.py, so Cython compiles the spec itself and this file
# only adds types (STYLE principle 3): the head objects become cdef classes with C fields, the
# scanners become cpdef functions with C locals, and the module constants become C globals.
# Nothing here may change behaviour: tests/speedups runs both builds against each other.
# One visible difference is by design: argument types are checked at the call, so the C build
# raises TypeError for a tuple where the spec says list[bytes] or a set where it says
# frozenset[bytes] (mypy holds callers to the same types statically).

cimport cython


cdef class RequestHead:
    cdef public object host
    cdef public long long content_length
    cdef public bint chunked
    cdef public bint expect_continue
    cdef public object authorization
    cdef public object cookie
    cdef public object request_id
    cdef public object traceparent
    cdef public object tracestate
    cdef public object forwarded_for
    cdef public bint close
    cdef public bytes forward_block


cdef class ResponseHead:
    cdef public long long content_length
    cdef public bint chunked
    cdef public bint close
    cdef public bytes forward_block


cdef bytes _NAME_TABLE
cdef bytes _VALUE_TABLE
cdef bytes _OWS
cdef Py_ssize_t _MAX_CONTENT_LENGTH_DIGITS
cdef object _HOST_RE
cdef bytes _B64TOKEN_CHARS
cdef frozenset _BEARER_PREFIXES
cdef int _KEEP, _DROP, _HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _EXPECT
cdef int _AUTHORIZATION, _REQUEST_ID, _TRACEPARENT, _FORWARDED_FOR, _COOKIE, _TRACESTATE
cdef dict _REQUEST_ROLES
cdef dict _RESPONSE_ROLES
cdef tuple _DROPPED_PREFIXES


cpdef bytes lower_ascii(bytes name)

@cython.locals(token=bytes)
cpdef object extract_bearer(bytes value, Py_ssize_t max_len)

@cython.locals(count=Py_ssize_t, i=Py_ssize_t, role=int, name=bytes, value=bytes, lname=bytes,
               head=RequestHead, parts=list, kept=list, listed=set)
cpdef RequestHead scan_request_head(list fields, frozenset strip)

@cython.locals(count=Py_ssize_t, i=Py_ssize_t, role=int, name=bytes, value=bytes, lname=bytes,
               head=ResponseHead, parts=list, kept=list, listed=set)
cpdef ResponseHead scan_response_head(list fields)

@cython.locals(digits=bytes)
cdef long long _content_length(bytes value, long long previous) except? -2

cdef bint _chunked(bytes value, bint seen) except -1

@cython.locals(token=bytes, option=bytes)
cdef set _connection_tokens(bytes value, set listed)

@cython.locals(index=Py_ssize_t, lname=bytes, out=list)
cdef list _without_listed(list parts, list kept, set listed)
