# An SMTP server that breaks a session, for the relay tests (tests/mail_relay.rs). Prints its
# port, then each command it is sent. Usage: broken_smtp.py MODE, where MODE is
#   tls:  it offers STARTTLS and then breaks the handshake (it answers 220 and sends plain text
#         where the TLS ServerHello belongs), for --relay-tls may's fallback to plain text;
#   data: it takes the whole message and closes the connection without a reply to it.
import socket
import sys

mode = sys.argv[1]

listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(('127.0.0.1', 0))
listener.listen(8)
print(listener.getsockname()[1], flush=True)


def session(conn):
    f = conn.makefile('rb')
    conn.sendall(b'220 broken.test ESMTP\r\n')
    in_data = False
    while True:
        line = f.readline()
        if not line:
            return
        if in_data:
            if line == b'.\r\n':
                in_data = False
                print('MESSAGE', flush=True)
                if mode == 'data':
                    return
                conn.sendall(b'250 2.0.0 taken\r\n')
            continue
        command = line.decode('ascii', 'replace').strip()
        verb = command.split(' ', 1)[0].upper()
        print(command, flush=True)
        if verb == 'EHLO':
            if mode == 'tls':
                conn.sendall(b'250-broken.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n')
            else:
                conn.sendall(b'250-broken.test\r\n250 PIPELINING\r\n')
        elif verb == 'STARTTLS':
            conn.sendall(b'220 2.0.0 ready\r\n')
            conn.sendall(b'this is no TLS record at all\r\n' * 4)
            return
        elif verb == 'DATA':
            in_data = True
            conn.sendall(b'354 go on\r\n')
        elif verb == 'QUIT':
            conn.sendall(b'221 bye\r\n')
            return
        else:
            conn.sendall(b'250 ok\r\n')


while True:
    conn, _ = listener.accept()
    try:
        session(conn)
    except OSError:
        pass
    finally:
        conn.close()
