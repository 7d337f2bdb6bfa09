# A tiny authoritative DNS server on 127.0.0.1 for the MX relay test (tests/mail_relay.rs).
# argv[1] is the zone as JSON: {"MX": {"name": [[preference, "host"], ...]}, "A": {"name":
# ["127.0.0.x", ...]}}; an MX host "" is RFC 7505's null MX. Prints its UDP port, then one
# line per query ("MX remote.test"). Names it knows get NOERROR (with no answer for a type it
# has none of), others NXDOMAIN. Written with struct alone: no DNS library needed.
import json
import socket
import struct
import sys

zone = json.loads(sys.argv[1])
TYPES = {1: 'A', 15: 'MX', 28: 'AAAA'}


def encode(name):
    labels = [label for label in name.rstrip('.').split('.') if label]
    return b''.join(bytes([len(l)]) + l.encode('ascii') for l in labels) + b'\0'


def question(data):
    """The question's name, type and raw bytes; raises on a malformed query."""
    pos, labels = 12, []
    while data[pos]:
        length = data[pos]
        if length > 63:
            raise ValueError('compressed or bad label')
        labels.append(data[pos + 1:pos + 1 + length].decode('ascii').lower())
        pos += 1 + length
    qtype, _ = struct.unpack('>HH', data[pos + 1:pos + 5])
    return '.'.join(labels), qtype, data[12:pos + 5]


sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(('127.0.0.1', 0))
print(sock.getsockname()[1], flush=True)
while True:
    data, peer = sock.recvfrom(4096)
    try:
        ident, flags, qdcount = struct.unpack('>HHH', data[:6])
        name, qtype, raw = question(data)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError):
        continue
    kind = TYPES.get(qtype, str(qtype))
    print(kind, name, flush=True)
    answers = []
    if kind == 'MX':
        for preference, host in zone.get('MX', {}).get(name, []):
            answers.append((15, struct.pack('>H', preference) + encode(host)))
    elif kind == 'A':
        for ip in zone.get('A', {}).get(name, []):
            answers.append((1, socket.inet_aton(ip)))
    known = name in zone.get('MX', {}) or name in zone.get('A', {})
    # QR, AA, the client's RD, RA; NXDOMAIN for names the zone does not have.
    flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | (0 if known else 3)
    reply = struct.pack('>HHHHHH', ident, flags, 1, len(answers), 0, 0) + raw
    for rtype, rdata in answers:
        reply += struct.pack('>HHHIH', 0xC00C, rtype, 1, 60, len(rdata)) + rdata
    sock.sendto(reply, peer)
