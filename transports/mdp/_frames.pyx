# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The MDP broker's frame loop in C (see frames.py, which loads it, and the pure-Python loop in
adapter.py that does the same where this was not built).

It calls the libzmq pyzmq itself loaded, through function pointers frames.py resolves from
pyzmq's own extension (no second libzmq is linked or loaded): a socket is passed as its
``Socket.underlying`` address. Nothing here blocks (every call is ZMQ_DONTWAIT), so the GIL is
kept. libzmq's headers are not needed to build it: the few declarations are below.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN
from libc.stdint cimport uintptr_t

cdef extern from *:
    """
    #include <stddef.h>
    /* zmq_msg_t as libzmq declares it: 64 bytes, aligned like a pointer */
    typedef union { unsigned char _[64]; void *p; double d; } mt_msg_t;
    typedef int (*mt_msg_fn)(mt_msg_t *);
    typedef int (*mt_msg_recv_fn)(mt_msg_t *, void *, int);
    typedef void *(*mt_msg_data_fn)(mt_msg_t *);
    typedef size_t (*mt_msg_size_fn)(const mt_msg_t *);
    typedef int (*mt_msg_more_fn)(const mt_msg_t *);
    typedef int (*mt_msg_get_fn)(const mt_msg_t *, int);
    typedef int (*mt_send_fn)(void *, const void *, size_t, int);
    typedef int (*mt_errno_fn)(void);
    """
    ctypedef struct mt_msg_t:
        pass
    ctypedef int (*mt_msg_fn)(mt_msg_t *)
    ctypedef int (*mt_msg_recv_fn)(mt_msg_t *, void *, int)
    ctypedef void *(*mt_msg_data_fn)(mt_msg_t *)
    ctypedef size_t (*mt_msg_size_fn)(const mt_msg_t *)
    ctypedef int (*mt_msg_more_fn)(const mt_msg_t *)
    ctypedef int (*mt_msg_get_fn)(const mt_msg_t *, int)
    ctypedef int (*mt_send_fn)(void *, const void *, size_t, int)
    ctypedef int (*mt_errno_fn)()

# libzmq's constants (zmq.h; stable since libzmq 3)
cdef int ZMQ_DONTWAIT = 1
cdef int ZMQ_SNDMORE = 2
cdef int ZMQ_SRCFD = 2

cdef mt_msg_fn msg_init = NULL
cdef mt_msg_fn msg_close = NULL
cdef mt_msg_recv_fn msg_recv = NULL
cdef mt_msg_data_fn msg_data = NULL
cdef mt_msg_size_fn msg_size = NULL
cdef mt_msg_more_fn msg_more = NULL
cdef mt_msg_get_fn msg_get = NULL
cdef mt_send_fn zsend = NULL
cdef mt_errno_fn zerrno = NULL

#: the ZMQError class (zmq.error), set by bind()
cdef object ZMQError = None


def bind(dict functions, object error_class):
    """Take libzmq's functions (name -> address, as ctypes resolved them from pyzmq's own
    library) and the exception to raise; until then every call below raises RuntimeError."""
    global msg_init, msg_close, msg_recv, msg_data, msg_size, msg_more, msg_get, zsend, zerrno
    global ZMQError
    cdef uintptr_t a
    a = functions["zmq_msg_init"]; msg_init = <mt_msg_fn>a
    a = functions["zmq_msg_close"]; msg_close = <mt_msg_fn>a
    a = functions["zmq_msg_recv"]; msg_recv = <mt_msg_recv_fn>a
    a = functions["zmq_msg_data"]; msg_data = <mt_msg_data_fn>a
    a = functions["zmq_msg_size"]; msg_size = <mt_msg_size_fn>a
    a = functions["zmq_msg_more"]; msg_more = <mt_msg_more_fn>a
    a = functions["zmq_msg_get"]; msg_get = <mt_msg_get_fn>a
    a = functions["zmq_send"]; zsend = <mt_send_fn>a
    a = functions["zmq_errno"]; zerrno = <mt_errno_fn>a
    ZMQError = error_class


cdef inline int _check() except -1:
    if zerrno == NULL:
        raise RuntimeError("maitred.transports.mdp._frames: bind() was not called")
    return 0


cdef inline bytes _take(mt_msg_t *msg):
    return PyBytes_FromStringAndSize(<char *>msg_data(msg), <Py_ssize_t>msg_size(msg))


def recv_batch(uintptr_t socket, Py_ssize_t limit, list out, list fds):
    """Read up to ``limit`` whole messages from a ROUTER socket without waiting; append each to
    ``out`` as a list of bytes (routing id first) and the fd of the connection it came on (-1:
    none, e.g. inproc) to ``fds``. Returns how many were read: fewer than ``limit`` when none
    waits (EAGAIN). Raises ZMQError on another error when nothing was read (when something
    was, it is returned and the error comes again on the next call)."""
    cdef mt_msg_t msg
    cdef Py_ssize_t n = 0
    cdef int err, fd
    cdef void *sock = <void *>socket
    cdef list frames
    _check()
    msg_init(&msg)
    try:
        while n < limit:
            if msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0:
                err = zerrno()
                if err == EAGAIN or n:
                    break
                raise ZMQError(err)
            frames = [_take(&msg)]
            if not msg_more(&msg):
                continue  # not a ROUTER's message (no routing id): nothing to route
            if msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0:
                err = zerrno()
                if n:
                    break
                raise ZMQError(err)
            frames.append(_take(&msg))
            fd = msg_get(&msg, ZMQ_SRCFD)
            while msg_more(&msg):
                if msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0:
                    err = zerrno()
                    if n:
                        return n
                    raise ZMQError(err)
                frames.append(_take(&msg))
            out.append(frames)
            fds.append(fd if fd >= 0 else -1)
            n += 1
        return n
    finally:
        msg_close(&msg)


cdef int _send_frame(void *sock, object frame, int flags) except? -2:
    """Send one frame (bytes, or any object with a contiguous buffer); libzmq's errno on a
    failure, else 0."""
    cdef Py_buffer view
    cdef int rc
    if type(frame) is bytes:
        rc = zsend(sock, PyBytes_AS_STRING(frame), <size_t>PyBytes_GET_SIZE(frame), flags)
    else:
        PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
        try:
            rc = zsend(sock, view.buf, <size_t>view.len, flags)
        finally:
            PyBuffer_Release(&view)
    if rc < 0:
        return zerrno()
    return 0


cdef int _send_message(void *sock, object rid, list frames) except? -2:
    """``rid`` (None: the first of ``frames`` is it) then ``frames``, the last without SNDMORE;
    0 or the errno of the frame that failed (the rest of the message is not sent)."""
    cdef Py_ssize_t i, last = len(frames) - 1
    cdef int err
    if rid is not None:
        err = _send_frame(sock, rid, ZMQ_DONTWAIT | ZMQ_SNDMORE)
        if err:
            return err
    for i in range(last + 1):
        err = _send_frame(sock, frames[i], ZMQ_DONTWAIT if i == last else ZMQ_DONTWAIT | ZMQ_SNDMORE)
        if err:
            return err
    return 0


def send_batch(uintptr_t socket, list queue):
    """Send each message of ``queue`` (a list of frames, routing id first, at least two) without
    waiting. Returns None when every one went, else a list of (routing id, errno) for those
    that did not (at the peer's high-water mark, gone, ...), in order."""
    cdef void *sock = <void *>socket
    cdef list failed = None
    cdef object frames
    cdef int err
    _check()
    for frames in queue:
        if type(frames) is not list:
            frames = list(frames)
        err = _send_message(sock, None, <list>frames)
        if err:
            if failed is None:
                failed = []
            failed.append((frames[0], err))
    return failed


def send(uintptr_t socket, bytes rid, object frames):
    """Send ``rid`` then ``frames`` (at least one) without waiting: 0, or the errno."""
    _check()
    if type(frames) is not list:
        frames = list(frames)
    return _send_message(<void *>socket, rid, <list>frames)
