"""``scripts/bench profile``: which py-spy samples are work, and where they go."""

from __future__ import annotations

from bench.profile import classify, idle

LOOP = "run (asyncio/runners.py:190);BaseEventLoop._run_once (asyncio/base_events.py:1922)"


def test_a_waiting_thread_is_not_work() -> None:
    writer = ("Thread.run (threading.py:982);DecisionLog._run (extauthz/decisionlog.py:156);"
              "Event.wait (threading.py:629);Condition.wait (threading.py:331);"
              "lock_PyThread_acquire_lock (libpython3.11.so.1.0);"
              "PyThread_acquire_lock_timed (libpython3.11.so.1.0);0x7fc01 (libc.so.6)")
    loop_waiting = (LOOP + ";EpollSelector.select (selectors.py:468);"
                    "select_epoll_poll (selectmodule.c.h:841);"
                    "select_epoll_poll_impl (selectmodule.c:1598);epoll_wait (libc.so.6)")
    assert idle(writer) and idle(loop_waiting)


def test_work_is_bucketed_by_its_innermost_known_frame() -> None:
    check = (LOOP + ";_Connection._next (extauthz/http_authz.py:542);"
             "Engine._allow (extauthz/pipeline.py:303)")
    send = (LOOP + ";_Connection._answer (extauthz/http_authz.py:620);"
            "sock_send (socketmodule.c:4207);sock_call_ex (socketmodule.c:921);send (libc.so.6)")
    metrics = (LOOP + ";CheckRecorder.record (extauthz/metrics.py:200);"
               "Counter.inc (prometheus_client/metrics.py:342)")
    assert not idle(check) and not idle(send)
    assert classify(check) == "ours"
    assert classify(send) == "syscalls"
    assert classify(metrics) == "prometheus"


UVLOOP = ("run (extauthz/eventloop.py:78);Loop.run_forever (loop.c:30140);uv_run (core.c:464);"
          "uv__io_poll (linux.c:1452)")


def test_uvloop_samples_are_bucketed_like_asyncio_ones() -> None:
    waiting = UVLOOP + ";epoll_pwait (libc.so.6)"
    write = (UVLOOP + ";_Connection._answer (extauthz/http_authz.py:620);"
             "UVStream__exec_write (loop.c:107733);UVStream__try_write (loop.c:106818);"
             "write (libc.so.6)")
    read = UVLOOP + ";uv__stream_io (stream.c:1210);uv__read (stream.c:1063);read (libc.so.6)"
    check = (UVLOOP + ";_Connection._next (extauthz/http_authz.py:542);"
             "Engine._allow (extauthz/pipeline.py:303)")
    loop_itself = UVLOOP + ";uv__stream_io (stream.c:1210)"
    assert idle(waiting)
    assert not any(idle(s) for s in (write, read, check, loop_itself))
    assert classify(write) == classify(read) == "syscalls"
    assert classify(check) == "ours"
    assert classify(loop_itself) == "asyncio"
