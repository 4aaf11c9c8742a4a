# C types for bucket_c, the compiled twin of bucket_py.py.
#
# bucket_c.py is a symlink to bucket_py.py: Cython compiles the spec itself and this file adds
# the types (STYLE principle 3) and the lock primitives, which pure Python has no way to write:
#
# fastgw_spin_lock   compare-and-swap the lock cell from 0 to our pid. A waiter spins briefly,
#                    then yields the CPU; every 64 tries it asks the kernel whether the holder
#                    still exists (kill(pid, 0) -> ESRCH) and takes over a dead holder's lock.
#                    The critical sections are a few hundred nanoseconds of arithmetic, so a
#                    live holder releases long before a waiter gets there.
# fastgw_spin_unlock store 0 with release ordering (publishes the writes made under the lock).
# fastgw_release_if_owner  the master's clean-up after reaping a worker: pid -> 0, else nothing.

cimport cython

cdef extern from *:
    """
    #include <errno.h>
    #include <sched.h>
    #include <signal.h>
    #include <sys/types.h>

    static inline void fastgw_spin_lock(long long *word, long long pid) {
        unsigned int tries = 0;
        for (;;) {
            long long owner = 0;
            if (__atomic_compare_exchange_n(word, &owner, pid, 0,
                                            __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                return;
            }
            if (++tries % 64 == 0) {
                if (owner != 0 && kill((pid_t)owner, 0) == -1 && errno == ESRCH
                    && __atomic_compare_exchange_n(word, &owner, pid, 0,
                                                   __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                    return;  /* its holder died holding it */
                }
                sched_yield();
            } else {
    #if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
    #endif
            }
        }
    }

    static inline void fastgw_spin_unlock(long long *word) {
        __atomic_store_n(word, 0, __ATOMIC_RELEASE);
    }

    static inline int fastgw_release_if_owner(long long *word, long long pid) {
        long long expected = pid;
        /* read first: a compare-and-swap is a write, and would make every page of the
           table resident just to find the few cells a dead worker held */
        if (__atomic_load_n(word, __ATOMIC_RELAXED) != pid) {
            return 0;
        }
        return __atomic_compare_exchange_n(word, &expected, 0, 0,
                                           __ATOMIC_RELEASE, __ATOMIC_RELAXED);
    }
    """
    void fastgw_spin_lock(long long *word, long long pid) nogil
    void fastgw_spin_unlock(long long *word) nogil
    int fastgw_release_if_owner(long long *word, long long pid) nogil

cdef long long _WAYS, _SLOT_CELLS, _SET_CELLS, _HEADER_CELLS, _MAGIC, _LAYOUT_VERSION
cdef long long _H_MAGIC, _H_VERSION, _H_SETS, _H_BUILD
cdef long long _G_LOCK, _G_PRESENT, _G_TOKENS, _G_STAMP
cdef long long _G_WINDOW_US, _G_WINDOW, _G_COUNT, _G_PREVIOUS
cdef long long _UT, _DAY_US, _BUCKET_MARGIN_US, _QUOTA_MARGIN_US, _MAX_CLOCK_US
cdef long long _MAX_DAILY_QUOTA, _MAX_ENDPOINT_ID
cdef double _MAX_WAIT_US
cdef unsigned long long _MASK62, _MASK64, _MIX
cdef long long _CUSTOMER, _ENDPOINT, _QUOTA, _GLOBAL
cdef long long _KIND_BUCKET, _KIND_ENDPOINT, _KIND_QUOTA


cpdef long long table_bytes(long long sets)

cpdef long long sets_for_keys(long long max_keys)

cpdef long long customer_fingerprint(unsigned long long hash64_of_id)

@cython.locals(x=cython.ulonglong)
cdef long long _mix(unsigned long long base, unsigned long long salt) noexcept

cdef bint _longer(long long a, long long b) noexcept

cdef double _estimate(long long previous, long long current, long long elapsed_us,
                      long long window_us) noexcept

cdef long long _ceil_ms(double us) noexcept

cdef long long _refill_ms(double need_ut, double rate, double lag_us) noexcept


cdef class _Level:
    cdef public long long code
    cdef public bint on
    cdef public bint bucket
    cdef public long long fp
    cdef public long long set_index
    cdef public long long cell
    cdef public long long take
    cdef public long long have
    cdef public long long wait
    cdef public long long limit
    cdef public double rate
    cdef public long long stamp
    cdef public long long lag
    cdef public long long reset_ms
    cdef public long long window_us
    cdef public long long window
    cdef public long long previous
    cdef public long long elapsed


cdef class LimitTable:
    cdef int _fd
    cdef object _map
    cdef long long[::1] _cells
    cdef long long _sets
    cdef long long _pid
    cdef bint _closed
    cdef tuple _levels
    cdef public long long evictions
    cdef readonly long long would_refuse
    cdef readonly long long retry_after_ms
    cdef readonly long long header_level
    cdef readonly long long limit
    cdef readonly long long remaining
    cdef readonly long long reset_ms

    @cython.locals(customer=_Level, endpoint=_Level, quota=_Level, glob=_Level,
                   day=cython.longlong, a=cython.longlong, b=cython.longlong,
                   c=cython.longlong, held=cython.int)
    cpdef long long decide(self, long long now_us, long long customer_fp, long long cost,
                           double rate, long long burst, long long endpoint_id,
                           double endpoint_rate, long long endpoint_burst,
                           long long daily_quota, double global_rate, long long global_burst,
                           long long shadow, long long global_window_us=*) except? -1

    @cython.locals(level=_Level, refused=cython.longlong, refused_wait=cython.longlong,
                   mask=cython.longlong, shadow_wait=cython.longlong, bit=cython.longlong,
                   header=cython.longlong, limit=cython.longlong, remaining=cython.longlong,
                   reset_ms=cython.longlong, best_calls=cython.longlong,
                   best_reset=cython.longlong, shadowed=cython.longlong, fewer=bint, lim=cython.longlong,
                   rem=cython.longlong, res=cython.longlong, calls=cython.longlong,
                   estimate=cython.double,
                   i=cython.Py_ssize_t)
    cdef long long _decide_locked(self, long long now_us, long long day,
                                  long long shadow) except? -1

    @cython.locals(first=cython.longlong, way=cython.longlong, cell=cython.longlong)
    cdef void _find(self, _Level level, long long now_us) noexcept

    @cython.locals(burst_ut=cython.longlong, present=bint, tokens=cython.longlong,
                   stamp=cython.longlong, add=cython.double)
    cdef void _read_bucket(self, _Level level, long long now_us) noexcept

    @cython.locals(window_us=cython.longlong, number=cython.longlong, window=cython.longlong,
                   current=cython.longlong, previous=cython.longlong, elapsed=cython.longlong,
                   limit=cython.longlong, take=cython.longlong, wait=cython.longlong,
                   fade_us=cython.double, wait_us=cython.double)
    cdef void _read_window(self, _Level level, long long now_us) noexcept

    @cython.locals(used=cython.longlong)
    cdef void _read_quota(self, _Level level, long long now_us, long long day) noexcept

    @cython.locals(wait_us=cython.double, expires_us=cython.longlong)
    cdef void _take(self, _Level level, long long now_us, long long day) noexcept

    @cython.locals(cell=cython.longlong)
    cdef void _store(self, _Level level, long long now_us, long long a, long long b,
                     long long expires_us) noexcept

    @cython.locals(first=cython.longlong, victim=cython.longlong,
                   victim_expires=cython.longlong, way=cython.longlong, cell=cython.longlong,
                   expires=cython.longlong)
    cdef long long _place(self, _Level level, long long now_us) noexcept

    @cython.locals(level=_Level, i=cython.Py_ssize_t)
    cdef bint _claimed(self, long long cell) noexcept

    cdef long long _set_cell(self, long long set_index) noexcept

    cdef void _lock(self, long long cell) noexcept

    cdef void _unlock(self, long long cell) noexcept

    @cython.locals(freed=cython.longlong, set_index=cython.longlong)
    cpdef long long release_locks_of(self, long long pid)


cdef int _arm_bucket(_Level level, long long fp, double rate, long long burst,
                     long long take) except -1

cdef int _check_amount(long long value, long long low) except -1

cdef long long _build_code() noexcept
