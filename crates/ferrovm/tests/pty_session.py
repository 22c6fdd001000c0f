#!/usr/bin/env python3
"""Runs `ferrovm run --raw IMAGE` (an echo guest) on a pseudo-terminal, as a person would:
types text, reads the echo, checks the terminal is in raw mode while the VM runs, quits
with Ctrl-A x, and checks the terminal settings are restored afterwards. Prints a report;
exits non-zero on failure."""
import os, pty, select, sys, termios, time

ferrovm, image = sys.argv[1], sys.argv[2]
master, slave = pty.openpty()
before = termios.tcgetattr(slave)
pid = os.fork()
if pid == 0:
    os.setsid()
    os.dup2(slave, 0); os.dup2(slave, 1); os.dup2(slave, 2)
    os.execv(ferrovm, [ferrovm, "run", "--raw", image])

def read_until(needle, timeout=30.0):
    buf = b""
    end = time.time() + timeout
    while time.time() < end and needle not in buf:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                buf += os.read(master, 4096)
            except OSError:
                break
    return buf

ok = True
time.sleep(0.5)
during = termios.tcgetattr(slave)
raw = not (during[3] & termios.ICANON) and not (during[3] & termios.ECHO)
print("raw mode during run:", "yes" if raw else "no")
ok &= raw
os.write(master, b"hi there")
echoed = read_until(b"hi there")
print("echo:", "ok" if b"hi there" in echoed else "missing (%r)" % echoed)
ok &= b"hi there" in echoed
os.write(master, b"\x01x")
deadline = time.time() + 30
status = None
while time.time() < deadline:
    wpid, st = os.waitpid(pid, os.WNOHANG)
    if wpid:
        status = os.waitstatus_to_exitcode(st)
        break
    read_until(b"\0", 0.05)
if status is None:
    os.kill(pid, 9)
    print("exit status: timeout")
    ok = False
else:
    print("exit status:", status)
    ok &= status == 0
after = termios.tcgetattr(slave)
restored = after == before
print("terminal restored:", "yes" if restored else "no")
ok &= restored
sys.exit(0 if ok else 1)
