"""Sends numbered messages to alice@example.com over several SMTP sessions at once.

Usage: flood.py HOST:PORT COUNT SESSIONS ACKED_FILE

Each message carries `X-Seq: N` and ends with `end of message N`. N is appended to ACKED_FILE
(one line, flushed) only after the server answered 250 to its DATA, so the file lists exactly the
messages the server acknowledged. When the server goes away, the sessions stop quietly.
"""

import smtplib
import sys
import threading

host, port = sys.argv[1].rsplit(":", 1)
count, sessions, acked_path = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

lock = threading.Lock()
numbers = iter(range(count))
acked = open(acked_path, "a", buffering=1)


def take():
    with lock:
        return next(numbers, None)


def session():
    try:
        with smtplib.SMTP(host, int(port), timeout=20) as smtp:
            while (n := take()) is not None:
                body = f"Subject: message {n}\r\nX-Seq: {n}\r\n\r\n" + "filler line\r\n" * 20
                smtp.sendmail("flood@remote.test", ["alice@example.com"], body + f"end of message {n}\r\n")
                with lock:
                    acked.write(f"{n}\n")
                    acked.flush()
    except (OSError, smtplib.SMTPException):
        pass


threads = [threading.Thread(target=session) for _ in range(sessions)]
for t in threads:
    t.start()
for t in threads:
    t.join()
